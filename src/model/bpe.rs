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
    pre: PreTokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
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
    #[allow(clippy::too_many_arguments)]
    fn build(
        tokens: Vec<String>,
        merges: &[(String, String)],
        special: Vec<bool>,
        pre: PreTokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        add_bos: bool,
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
            .filter(|(i, t)| special[*i] && !t.is_empty())
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
            pre,
            bos,
            eos,
            add_bos,
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
        let add_bos = matches!(g.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        BpeTokenizer::build(
            tokens,
            &merges,
            special,
            pre,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.unknown_token_id"),
            add_bos,
            s("tokenizer.chat_template").map(str::to_string),
            o,
        )
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

    /// The ids of `text` (special tokens in it matched whole), with BOS first when the file says so.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if self.add_bos {
            out.extend(self.bos);
        }
        let mut rest = text;
        let mut pieces = Vec::new();
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
            pieces.clear();
            self.pre_tokens(plain, &mut pieces);
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
