//! Byte-level BPE (GPT-2's scheme, as SmolLM2, Llama 3 and most decoders use): text → special tokens
//! split out whole → pre-tokens (each digit alone, then GPT-2's pattern) → UTF-8 bytes mapped to
//! printable characters → merges applied by rank → ids. Read from a GGUF file's `tokenizer.ggml.*`
//! metadata or from a Hugging Face `tokenizer.json`; tested against transformers' ids
//! (tests/tokenizer_bpe.rs). Also the chat template of ChatML models.
//!
//! GPT-2's pattern, matched by hand (alternatives in order at each position):
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

use std::collections::HashMap;

use super::bpe_tables::{LETTERS, NUMBERS};
use super::gguf::{Gguf, Value};
use crate::error::{Error, Result};

/// How text is cut into pre-tokens before the merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's pattern alone.
    Gpt2,
    /// Every digit on its own, then GPT-2's pattern (GGUF `smollm`; HF `Digits(individual_digits)` +
    /// `ByteLevel`).
    DigitsThenGpt2,
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A byte-level BPE tokenizer.
pub struct BpeTokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Tokens matched whole in the text before anything else (control and user-defined), longest first.
    specials: Vec<(String, u32)>,
    is_special: Vec<bool>,
    /// Each byte's token; a byte the vocabulary lacks (bytes no UTF-8 text holds, some controls) is the
    /// unknown token where the file names one, else dropped, as HF's BPE does.
    byte_id: [Option<u32>; 256],
    char_byte: HashMap<char, u8>,
    byte_char: [char; 256],
    pre: PreTokenizer,
    /// A space put before each piece of text that does not start with one (HF ByteLevel's
    /// `add_prefix_space`, RoBERTa's tokenizers).
    prefix_space: bool,
    /// A pre-token found whole in the vocabulary is that token, merges unapplied (HF `ignore_merges`).
    ignore_merges: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Ids put before and after the text's own (BOS where the file adds it; a post-processor's
    /// `<s> $A </s>`), as transformers' `tok(text)` does.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// The chat template's text, when the file has one.
    pub chat_template: Option<String>,
    origin: String,
}

/// GPT-2's map of bytes to printable characters: printable Latin-1 stays, the rest go to 256 + n.
pub(crate) fn bytes_to_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let keep = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    for b in 0..256u32 {
        out[b as usize] = if keep(b) {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    out
}

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let cp = c as u32;
    table
        .binary_search_by(|&(a, b)| {
            if b < cp {
                std::cmp::Ordering::Less
            } else if a > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || (!c.is_ascii() && in_ranges(LETTERS, c))
}

fn is_number(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && in_ranges(NUMBERS, c))
}

fn is_other(c: char) -> bool {
    !c.is_whitespace() && !is_letter(c) && !is_number(c)
}

/// Cuts `s` by GPT-2's pattern into `out`.
fn gpt2_split<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let ch: Vec<(usize, char)> = s.char_indices().collect();
    let n = ch.len();
    let at = |i: usize| if i < n { ch[i].0 } else { s.len() };
    let run = |mut i: usize, f: fn(char) -> bool| {
        while i < n && f(ch[i].1) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < n {
        let c = ch[i].1;
        let next = if i + 1 < n { Some(ch[i + 1].1) } else { None };
        let end = if c == '\'' && next.is_some() {
            let rest = &s[at(i + 1)..];
            if ["re", "ve", "ll"].iter().any(|p| rest.starts_with(p)) {
                Some(i + 3)
            } else if ["s", "t", "m", "d"].iter().any(|p| rest.starts_with(p)) {
                Some(i + 2)
            } else {
                None
            }
        } else {
            None
        };
        let end = end.unwrap_or_else(|| {
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class.
            let start = if c == ' ' && next.is_some_and(|d| !d.is_whitespace()) { i + 1 } else { i };
            let first = ch.get(start).map(|x| x.1);
            match first {
                Some(f) if is_letter(f) => run(start, is_letter),
                Some(f) if is_number(f) => run(start, is_number),
                Some(f) if is_other(f) => run(start, is_other),
                _ => {
                    // `\s+(?!\S)`, else `\s+`: a whitespace run, leaving its last character to the next
                    // token when a non-space follows.
                    let k = run(i, char::is_whitespace);
                    if k < n && k - i >= 2 {
                        k - 1
                    } else {
                        k
                    }
                }
            }
        });
        out.push(&s[at(i)..at(end)]);
        i = end;
    }
}

impl BpeTokenizer {
    /// `whole`: tokens matched whole in the text (added tokens); `special`: those dropped by a decode
    /// that skips special tokens.
    #[allow(clippy::too_many_arguments)]
    fn build(
        tokens: Vec<String>,
        merges: &[(String, String)],
        whole: &[bool],
        special: Vec<bool>,
        pre: PreTokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        chat_template: Option<String>,
        origin: &str,
    ) -> Result<BpeTokenizer> {
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |t: &str| {
                ids.get(t).copied().ok_or_else(|| {
                    Error::file(origin, format!("merge {rank} (`{a} {b}`) names `{t}`, which is not in the vocabulary"))
                })
            };
            let merged = id(&format!("{a}{b}"))?;
            merge_map.entry((id(a)?, id(b)?)).or_insert((rank as u32, merged));
        }
        let chars = bytes_to_chars();
        let mut byte_id = [None; 256];
        let mut char_byte = HashMap::with_capacity(256);
        for (b, &c) in chars.iter().enumerate() {
            byte_id[b] = ids.get(&c.to_string()).copied().or(unk);
            char_byte.insert(c, b as u8);
        }
        if byte_id.iter().filter(|b| b.is_some()).count() < 128 {
            return Err(Error::file(origin, "the vocabulary lacks most byte tokens: not a byte-level BPE"));
        }
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| whole[*i] && !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        for (what, id) in [("bos", bos), ("eos", eos), ("unknown", unk)] {
            if id.is_some_and(|i| i as usize >= tokens.len()) {
                return Err(Error::file(origin, format!("the {what} token id {} is past the vocabulary", id.unwrap())));
            }
        }
        Ok(BpeTokenizer {
            tokens,
            ids,
            merges: merge_map,
            specials,
            is_special: special,
            byte_id,
            char_byte,
            byte_char: chars,
            pre,
            prefix_space: false,
            ignore_merges: false,
            bos,
            eos,
            prefix: Vec::new(),
            suffix: Vec::new(),
            chat_template,
            origin: origin.to_string(),
        })
    }

    /// From a GGUF file's `tokenizer.ggml.*` metadata (model `gpt2`, pre-tokenizer `smollm`, `gpt2`,
    /// `starcoder` or `default`).
    pub fn from_gguf(g: &Gguf) -> Result<BpeTokenizer> {
        let o = &g.origin;
        let s = |k: &str| g.get(k).and_then(|v| v.as_str());
        let model = s("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(Error::file(o, format!("tokenizer `{model}` is not supported (byte-level BPE `gpt2` is)")));
        }
        let pre = match s("tokenizer.ggml.pre").unwrap_or("default") {
            "smollm" | "starcoder" | "refact" | "codeshell" => PreTokenizer::DigitsThenGpt2,
            "gpt2" | "default" => PreTokenizer::Gpt2,
            other => {
                return Err(Error::file(
                    o,
                    format!("pre-tokenizer `{other}` is not supported (smollm, starcoder, gpt2)"),
                ))
            }
        };
        let strings = |k: &str| -> Result<Vec<String>> {
            g.get(k)
                .and_then(|v| v.as_array())
                .ok_or_else(|| Error::file(o, format!("metadata `{k}` is missing")))?
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| Error::file(o, format!("`{k}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::file(o, format!("merge {i} `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        // Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let special = match g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(types) if types.len() == tokens.len() => {
                types.iter().map(|t| matches!(t, Value::I32(3) | Value::I32(4))).collect()
            }
            Some(types) => {
                return Err(Error::file(o, format!("{} token types for {} tokens", types.len(), tokens.len())))
            }
            None => vec![false; tokens.len()],
        };
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let flag = |k: &str| matches!(g.get(k), Some(Value::Bool(true)));
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let mut t = BpeTokenizer::build(
            tokens,
            &merges,
            &special.clone(),
            special,
            pre,
            bos,
            eos,
            id("tokenizer.ggml.unknown_token_id"),
            s("tokenizer.chat_template").map(str::to_string),
            o,
        )?;
        if flag("tokenizer.ggml.add_bos_token") {
            t.prefix.extend(bos);
        }
        if flag("tokenizer.ggml.add_eos_token") {
            t.suffix.extend(eos);
        }
        Ok(t)
    }

    /// From a Hugging Face `tokenizer.json` (`text`, read from `origin`): a byte-level BPE model with
    /// the ByteLevel pre-tokenizer (or individual Digits then ByteLevel), its added tokens and the
    /// post-processor's special tokens. What it cannot reproduce exactly (a normalizer, other
    /// pre-tokenizers, dropout, byte fallback, stripping added tokens) is refused by name.
    pub fn from_tokenizer_json(text: &str, origin: &str) -> Result<BpeTokenizer> {
        use serde_json::Value as J;
        let bad = |m: String| Error::file(origin, m);
        let j: J = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let ty = |v: &J| v.get("type").and_then(J::as_str).unwrap_or("?").to_string();
        let model = j.get("model").ok_or_else(|| bad("no `model`".into()))?;
        if ty(model) != "BPE" {
            return Err(bad(format!("model `{}` is not supported (byte-level `BPE` is)", ty(model))));
        }
        for (key, ok) in [
            ("dropout", model.get("dropout").is_none_or(J::is_null)),
            ("byte_fallback", !model.get("byte_fallback").and_then(J::as_bool).unwrap_or(false)),
            (
                "continuing_subword_prefix",
                model.get("continuing_subword_prefix").is_none_or(|v| v.is_null() || v == ""),
            ),
            ("end_of_word_suffix", model.get("end_of_word_suffix").is_none_or(|v| v.is_null() || v == "")),
        ] {
            if !ok {
                return Err(bad(format!("model.{key} = {} is not supported", model[key])));
            }
        }
        if let Some(n) = j.get("normalizer").filter(|v| !v.is_null()) {
            return Err(bad(format!("normalizer `{}` is not supported (byte-level BPE has none)", ty(n))));
        }
        let byte_level = |p: &J| -> Result<bool> {
            if p.get("use_regex").and_then(J::as_bool) == Some(false) {
                return Err(bad("pre_tokenizer ByteLevel without use_regex is not supported".into()));
            }
            Ok(p.get("add_prefix_space").and_then(J::as_bool).unwrap_or(false))
        };
        let pre_j = j.get("pre_tokenizer").unwrap_or(&J::Null);
        let (pre, prefix_space) = match ty(pre_j).as_str() {
            "ByteLevel" => (PreTokenizer::Gpt2, byte_level(pre_j)?),
            "Sequence" => {
                let parts = pre_j.get("pretokenizers").and_then(J::as_array).cloned().unwrap_or_default();
                let names: Vec<String> = parts.iter().map(ty).collect();
                let digits = parts.first().and_then(|d| d.get("individual_digits")).and_then(J::as_bool);
                if names != ["Digits", "ByteLevel"] || digits != Some(true) || byte_level(&parts[1])? {
                    return Err(bad(format!(
                        "pre_tokenizer Sequence {names:?} is not supported (ByteLevel, or Digits with \
                         individual_digits then ByteLevel without add_prefix_space)"
                    )));
                }
                (PreTokenizer::DigitsThenGpt2, false)
            }
            other => return Err(bad(format!("pre_tokenizer `{other}` is not supported (ByteLevel is)"))),
        };
        // Tokens by id: the vocabulary, then the added tokens (which may extend it).
        let mut by_id: Vec<Option<String>> = Vec::new();
        let mut put = |id: u64, t: &str| -> Result<()> {
            let id = id as usize;
            if id >= 1 << 24 {
                return Err(bad(format!("token `{t}` has id {id}, past any vocabulary")));
            }
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(t.to_string());
            Ok(())
        };
        let vocab = model.get("vocab").and_then(J::as_object).ok_or_else(|| bad("model.vocab is not a map".into()))?;
        for (t, id) in vocab {
            put(id.as_u64().ok_or_else(|| bad(format!("vocab entry `{t}` has no integer id")))?, t)?;
        }
        let added = j.get("added_tokens").and_then(J::as_array).cloned().unwrap_or_default();
        let mut added_ids = Vec::new();
        for a in &added {
            let (Some(id), Some(t)) = (a.get("id").and_then(J::as_u64), a.get("content").and_then(J::as_str)) else {
                return Err(bad(format!("added token {a} has no id or content")));
            };
            for flag in ["lstrip", "rstrip", "single_word"] {
                if a.get(flag).and_then(J::as_bool) == Some(true) {
                    return Err(bad(format!("added token `{t}` sets {flag}, which is not supported")));
                }
            }
            put(id, t)?;
            added_ids.push((id as usize, a.get("special").and_then(J::as_bool).unwrap_or(false)));
        }
        let tokens = by_id
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| bad(format!("no token has id {i} (ids must run 0..{})", vocab.len()))))
            .collect::<Result<Vec<_>>>()?;
        let (mut whole, mut special) = (vec![false; tokens.len()], vec![false; tokens.len()]);
        for (id, sp) in added_ids {
            whole[id] = true;
            special[id] = sp;
        }
        let merges = model
            .get("merges")
            .and_then(J::as_array)
            .ok_or_else(|| bad("model.merges is not a list".into()))?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let pair = match m {
                    J::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                    J::Array(v) if v.len() == 2 => v[0].as_str().zip(v[1].as_str()).map(|(a, b)| (a.into(), b.into())),
                    _ => None,
                };
                pair.ok_or_else(|| bad(format!("merge {i} {m} is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let unk = match model.get("unk_token").and_then(J::as_str) {
            Some(u) => Some(
                vocab
                    .get(u)
                    .and_then(J::as_u64)
                    .ok_or_else(|| bad(format!("unk_token `{u}` is not in the vocabulary")))? as u32,
            ),
            None => None,
        };
        let mut t = BpeTokenizer::build(tokens, &merges, &whole, special, pre, None, None, unk, None, origin)?;
        t.prefix_space = prefix_space;
        t.ignore_merges = model.get("ignore_merges").and_then(J::as_bool).unwrap_or(false);
        let (prefix, suffix) = post_processor(j.get("post_processor").unwrap_or(&J::Null), &t, origin)?;
        t.prefix = prefix;
        t.suffix = suffix;
        Ok(t)
    }

    /// From a Hugging Face tokenizer folder: `tokenizer.json`, with BOS, EOS and the chat template from
    /// `tokenizer_config.json` and `chat_template.jinja` where they are.
    pub fn from_folder(dir: &std::path::Path) -> Result<BpeTokenizer> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let mut t = BpeTokenizer::from_tokenizer_json(&text, &path.display().to_string())?;
        let cfg_path = dir.join("tokenizer_config.json");
        if let Ok(c) = std::fs::read_to_string(&cfg_path) {
            let c: serde_json::Value = serde_json::from_str(&c).map_err(|e| Error::file(&cfg_path, e))?;
            // A special token is a string, or {"content": …} in older files.
            let named = |k: &str| {
                let v = c.get(k)?;
                v.as_str().or_else(|| v.get("content").and_then(|x| x.as_str())).map(str::to_string)
            };
            let id_of = |k: &str| -> Result<Option<u32>> {
                match named(k) {
                    None => Ok(None),
                    Some(n) => t
                        .token_to_id(&n)
                        .map(Some)
                        .ok_or_else(|| Error::file(&cfg_path, format!("{k} `{n}` is not in the vocabulary"))),
                }
            };
            let (bos, eos) = (id_of("bos_token")?, id_of("eos_token")?);
            (t.bos, t.eos) = (bos, eos);
            t.chat_template = c.get("chat_template").and_then(|v| v.as_str()).map(str::to_string);
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            t.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::file(&jinja, e))?);
        }
        Ok(t)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.ids.get(t).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The merges applied to one pre-token, appended to `out` as ids.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return;
            }
        }
        let mut sym: Vec<u32> = piece.bytes().filter_map(|b| self.byte_id[b as usize]).collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..sym.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(sym[i], sym[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            sym[i] = merged;
            sym.remove(i + 1);
        }
        out.extend(sym);
    }

    /// Pre-tokens of a text without special tokens.
    fn pre_tokens<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        match self.pre {
            PreTokenizer::Gpt2 => gpt2_split(text, out),
            PreTokenizer::DigitsThenGpt2 => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if is_number(c) {
                        if start < i {
                            gpt2_split(&text[start..i], out);
                        }
                        out.push(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                if start < text.len() {
                    gpt2_split(&text[start..], out);
                }
            }
        }
    }

    /// The ids of `text` (added tokens in it matched whole) as transformers' `tok(text).input_ids`:
    /// with the special tokens the file puts around a text (BOS where it adds one).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = self.prefix.clone();
        out.extend(self.encode_plain(text));
        out.extend(&self.suffix);
        out
    }

    /// The chat as the template writes it, as ids (no BOS or EOS around it: the template writes its
    /// own, as `apply_chat_template(tokenize=True)` does).
    pub fn encode_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        Ok(self.encode_plain(&self.apply_chat_template(messages, add_generation_prompt)?))
    }

    /// The ids of `text` alone (`add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token, the longest at that place.
            let mut hit: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials {
                if let Some(p) = rest.find(s.as_str()) {
                    if hit.is_none_or(|(q, t, _)| p < q || (p == q && s.len() > t.len())) {
                        hit = Some((p, s, *id));
                    }
                }
            }
            let (plain, special) = match hit {
                Some((p, s, id)) => (&rest[..p], Some((s.len(), id))),
                None => (rest, None),
            };
            let spaced = if self.prefix_space && !plain.is_empty() && !plain.starts_with(' ') {
                format!(" {plain}")
            } else {
                plain.to_string()
            };
            let mut pieces = Vec::new();
            self.pre_tokens(&spaced, &mut pieces);
            for p in &pieces {
                self.bpe(p, &mut out);
            }
            match special {
                Some((len, id)) => {
                    out.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => break,
            }
        }
        out
    }

    /// The text of `ids`; special tokens are dropped when `skip_special`, else written as they are.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else { continue };
            if self.is_special[id as usize] {
                if !skip_special {
                    bytes.extend_from_slice(t.as_bytes());
                }
                continue;
            }
            for c in t.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.to_string().as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// The ids that end a turn: `<|im_end|>` where the vocabulary has it, and EOS.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.token_to_id("<|im_end|>").into_iter().collect();
        v.extend(self.eos.filter(|e| !v.contains(e)));
        v
    }

    /// The chat as the model's template writes it. The ChatML template (`<|im_start|>role\n…<|im_end|>\n`)
    /// is written in code, with the default system prompt the file's template adds when the chat has
    /// none; other templates are refused by name.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::file(&self.origin, "the model has no chat template (tokenizer.chat_template)"))?;
        if !t.contains("<|im_start|>") {
            return Err(Error::file(&self.origin, "the chat template is not ChatML (<|im_start|>…<|im_end|>)"));
        }
        let default_system = if t.contains("messages[0]['role'] != 'system'") {
            let key = "<|im_start|>system\n";
            t.find(key).and_then(|p| {
                let rest = &t[p + key.len()..];
                rest.find("<|im_end|>").map(|e| rest[..e].to_string())
            })
        } else {
            None
        };
        let mut out = String::new();
        if let (Some(sys), Some(first)) = (&default_system, messages.first()) {
            if first.role != "system" {
                out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
            }
        }
        for m in messages {
            out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        Ok(out)
    }
}

/// The ids a post-processor puts before and after a single text: TemplateProcessing's special tokens
/// around `$A`, RoBERTa's and BERT's `cls … sep`, each part of a Sequence; ByteLevel adds none.
fn post_processor(p: &serde_json::Value, t: &BpeTokenizer, origin: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    use serde_json::Value as J;
    let bad = |m: String| Error::file(origin, m);
    let id_of = |v: &J| -> Result<u32> {
        // ["<s>", 0] pairs (RoBERTa, BERT) carry their id.
        v.get(1).and_then(J::as_u64).map(|i| i as u32).ok_or_else(|| bad(format!("post_processor token {v} has no id")))
    };
    match p.get("type").and_then(J::as_str) {
        None | Some("ByteLevel") => Ok((vec![], vec![])),
        Some("RobertaProcessing") | Some("BertProcessing") => Ok((vec![id_of(&p["cls"])?], vec![id_of(&p["sep"])?])),
        Some("Sequence") => {
            let (mut a, mut b) = (vec![], vec![]);
            for q in p.get("processors").and_then(J::as_array).into_iter().flatten() {
                let (x, y) = post_processor(q, t, origin)?;
                a.extend(x);
                b.extend(y);
            }
            Ok((a, b))
        }
        Some("TemplateProcessing") => {
            let (mut before, mut after, mut seen) = (vec![], vec![], false);
            for piece in p.get("single").and_then(J::as_array).into_iter().flatten() {
                if piece.get("Sequence").is_some() {
                    seen = true;
                    continue;
                }
                let name = piece
                    .pointer("/SpecialToken/id")
                    .and_then(J::as_str)
                    .ok_or_else(|| bad(format!("post_processor piece {piece} is not supported")))?;
                let ids: Vec<u32> =
                    match p.pointer(&format!("/special_tokens/{}", name.replace('~', "~0").replace('/', "~1"))) {
                        Some(s) => s
                            .get("ids")
                            .and_then(J::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(J::as_u64)
                            .map(|i| i as u32)
                            .collect(),
                        None => t.token_to_id(name).into_iter().collect(),
                    };
                if ids.is_empty() {
                    return Err(bad(format!("post_processor names `{name}`, which has no id")));
                }
                if seen {
                    after.extend(ids)
                } else {
                    before.extend(ids)
                }
            }
            Ok((before, after))
        }
        Some(other) => Err(bad(format!("post_processor `{other}` is not supported"))),
    }
}
