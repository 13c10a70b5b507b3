//! BERT WordPiece tokenizer, read from a Hugging Face `tokenizer.json` (or a plain `vocab.txt`).
//!
//! It reproduces the ids of the Hugging Face `tokenizers` library for BERT-style tokenizers:
//!
//! 1. **Added tokens.** Special tokens such as `[CLS]` or `[MASK]` written in the text are
//!    matched first (leftmost-longest), on the raw text for tokens with `normalized: false` and
//!    on the normalised text otherwise, and map straight to their ids.
//! 2. **`BertNormalizer`**, per character and in the library's order: `clean_text` drops
//!    control/format characters, NUL and U+FFFD and turns whitespace into a space;
//!    `handle_chinese_chars` puts spaces around CJK ideographs; `strip_accents` (which follows
//!    `lowercase` when null) takes the canonical decomposition (NFD) and drops non-spacing
//!    marks; `lowercase` applies the full Unicode lowercase mapping.
//! 3. **`BertPreTokenizer`**: split on whitespace and isolate every punctuation character.
//! 4. **`WordPiece`**: greedy longest-match-first with the continuing-subword prefix (`##`);
//!    a word that cannot be covered, or that has more than `max_input_chars_per_word`
//!    characters, becomes the unknown token.
//! 5. `[CLS] pieces [SEP]`, truncated on the right to `max_len` tokens in total.
//!
//! The padding and truncation settings stored in `tokenizer.json` are ignored: the `max_len`
//! argument of [`Tokenizer::encode`] and [`Tokenizer::encode_batch`] governs, and batches are
//! padded to their longest row.
//!
//! The Unicode tables in `unicode_tables.rs` were generated from the `tokenizers` library
//! itself, so character classes follow its (older) Unicode data rather than Python's or Rust's.
//! One known gap: canonical reordering of combining marks is not done during accent stripping.
//! It could only change the relative order of two marks that survive stripping, are adjacent
//! and are out of canonical order, which does not happen in real text.
//!
//! Parsing works on strings only, so the module builds for `wasm32`; only
//! [`Tokenizer::from_file`] touches the file system.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[path = "unicode_tables.rs"]
mod unicode_tables;

/// The token ids (and token strings) of one text: `[CLS] pieces [SEP]`, possibly truncated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, starting with `[CLS]` and ending with `[SEP]`.
    pub ids: Vec<u32>,
    /// The vocabulary string of each id (`##` marks word continuations).
    pub tokens: Vec<String>,
    /// Whether word pieces were dropped to fit `max_len`.
    pub truncated: bool,
    /// How many tokens (`[CLS]` and `[SEP]` included) the text has without truncation.
    pub num_tokens_untruncated: usize,
}

/// Several texts encoded together and right-padded to the longest one.
///
/// Every array is row-major with shape `[batch, seq_len]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Token ids; padding positions hold the pad id.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Segment ids: all 0, as every row is a single sentence.
    pub token_type_ids: Vec<u32>,
    /// Number of rows (texts).
    pub batch: usize,
    /// Length of every row: the longest encoding in the batch.
    pub seq_len: usize,
    /// The unpadded length of each row.
    pub lengths: Vec<usize>,
    /// How many texts were truncated to fit `max_len`.
    pub truncated: usize,
}

/// The `BertNormalizer` flags, with `strip_accents` already resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NormalizerConfig {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

impl NormalizerConfig {
    /// The flags of a standard BERT tokenizer, cased or uncased.
    fn bert(lowercase: bool) -> Self {
        NormalizerConfig { clean_text: true, handle_chinese_chars: true, strip_accents: lowercase, lowercase }
    }
}

/// A token that is matched in the text before WordPiece (special tokens such as `[CLS]`).
#[derive(Debug, Clone)]
struct AddedToken {
    /// The text to match (for normalised tokens: the normalised content).
    content: String,
    id: u32,
    /// Only match when not preceded or followed by a word character.
    single_word: bool,
    /// Swallow the whitespace on the left of a match.
    lstrip: bool,
    /// Swallow the whitespace on the right of a match.
    rstrip: bool,
}

/// A piece of text after extracting added tokens: either plain text or one added token.
enum Segment<'t, 'a> {
    Text(&'t str),
    Added { token: &'a AddedToken, text: &'t str },
}

/// A BERT WordPiece tokenizer (normaliser, pre-tokenizer, WordPiece model and `[CLS]`/`[SEP]`
/// template).
#[derive(Clone)]
pub struct Tokenizer {
    /// WordPiece vocabulary: token string to id.
    vocab: HashMap<String, u32>,
    /// One more than the largest id in the vocabulary or among the added tokens.
    vocab_size: usize,
    /// `None` when `tokenizer.json` has no normaliser.
    normalizer: Option<NormalizerConfig>,
    /// Prefix of word-continuation pieces, usually `##`.
    continuing_subword_prefix: String,
    /// Words with more characters than this become the unknown token.
    max_input_chars_per_word: usize,
    unk_token: String,
    unk_id: u32,
    cls_token: String,
    cls_id: u32,
    sep_token: String,
    sep_id: u32,
    pad_id: u32,
    /// Added tokens matched against the raw text (`normalized: false`).
    raw_added: Vec<AddedToken>,
    /// Added tokens matched against the normalised text (`normalized: true`).
    normalized_added: Vec<AddedToken>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("normalizer", &self.normalizer)
            .field("continuing_subword_prefix", &self.continuing_subword_prefix)
            .field("max_input_chars_per_word", &self.max_input_chars_per_word)
            .field("unk", &(&self.unk_token, self.unk_id))
            .field("cls", &(&self.cls_token, self.cls_id))
            .field("sep", &(&self.sep_token, self.sep_id))
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

// ----------------------------------------------------------------------------------------------
// tokenizer.json schema (only the parts we use)
// ----------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct JsonTokenizer {
    model: JsonModel,
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
    #[serde(default)]
    post_processor: Option<serde_json::Value>,
    #[serde(default)]
    added_tokens: Vec<JsonAddedToken>,
    #[serde(default)]
    padding: Option<JsonPadding>,
}

#[derive(Deserialize)]
struct JsonModel {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    #[serde(default = "default_unk_token")]
    unk_token: String,
    #[serde(default = "default_continuing_subword_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_input_chars_per_word")]
    max_input_chars_per_word: usize,
}

#[derive(Deserialize)]
struct JsonBertNormalizer {
    #[serde(default = "default_true")]
    clean_text: bool,
    #[serde(default = "default_true")]
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "default_true")]
    lowercase: bool,
}

#[derive(Deserialize)]
struct JsonAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default = "default_true")]
    normalized: bool,
}

#[derive(Deserialize)]
struct JsonPadding {
    #[serde(default)]
    pad_id: Option<u32>,
    #[serde(default)]
    pad_token: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_unk_token() -> String {
    "[UNK]".to_string()
}
fn default_continuing_subword_prefix() -> String {
    "##".to_string()
}
fn default_max_input_chars_per_word() -> usize {
    100
}

/// The `type` field of a tagged JSON object, if any.
fn json_type(value: &serde_json::Value) -> Option<&str> {
    value.get("type").and_then(serde_json::Value::as_str)
}

/// The `[CLS]` and `[SEP]` token strings named by the post-processor.
fn special_tokens_from_post_processor(post: Option<&serde_json::Value>, origin: &str) -> Result<(String, String)> {
    let defaults = || Ok(("[CLS]".to_string(), "[SEP]".to_string()));
    let Some(post) = post.filter(|p| !p.is_null()) else {
        return defaults();
    };
    match json_type(post) {
        // {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}
        Some("BertProcessing" | "RobertaProcessing") => {
            let token = |key: &str| {
                post.get(key)
                    .and_then(|pair| pair.get(0))
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| Error::file(origin, format!("post_processor: missing `{key}`")))
            };
            Ok((token("cls")?, token("sep")?))
        }
        // {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]", ..}},
        //  {"Sequence": {"id": "A", ..}}, {"SpecialToken": {"id": "[SEP]", ..}}], ..}
        Some("TemplateProcessing") => {
            let pieces = post
                .get("single")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| Error::file(origin, "post_processor: missing `single` template"))?;
            let names: Vec<Option<&str>> = pieces
                .iter()
                .map(|piece| piece.get("SpecialToken").and_then(|s| s.get("id")).and_then(serde_json::Value::as_str))
                .collect();
            match names.as_slice() {
                [Some(cls), None, Some(sep)] if pieces[1].get("Sequence").is_some() => {
                    Ok((cls.to_string(), sep.to_string()))
                }
                _ => Err(Error::file(
                    origin,
                    "post_processor: only the `[CLS] $A [SEP]` single-sentence template is supported",
                )),
            }
        }
        Some(other) => Err(Error::file(origin, format!("unsupported post_processor type `{other}`"))),
        None => Err(Error::file(origin, "post_processor without a `type`")),
    }
}

// ----------------------------------------------------------------------------------------------
// Construction
// ----------------------------------------------------------------------------------------------

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    ///
    /// # Errors
    ///
    /// [`Error::File`] when the file cannot be read or is not a supported tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        Self::from_json_str(&json, &path.display().to_string())
    }

    /// Parses the contents of a Hugging Face `tokenizer.json`; `origin` names the file in
    /// errors.
    ///
    /// Supports the WordPiece model with a `BertNormalizer` (or none), the `BertPreTokenizer`
    /// and a `[CLS] $A [SEP]` post-processor (template or `BertProcessing`); anything else is
    /// rejected rather than silently tokenised differently.
    ///
    /// # Errors
    ///
    /// [`Error::File`] (naming `origin`) when the JSON is malformed, describes an unsupported
    /// pipeline, or lacks the unknown, `[CLS]`, `[SEP]` or padding token.
    pub fn from_json_str(json: &str, origin: &str) -> Result<Self> {
        let file: JsonTokenizer =
            serde_json::from_str(json).map_err(|e| Error::file(origin, format!("invalid tokenizer.json: {e}")))?;

        let model = file.model;
        if let Some(kind) = model.kind.as_deref().filter(|k| *k != "WordPiece") {
            return Err(Error::file(origin, format!("unsupported model type `{kind}` (only WordPiece)")));
        }

        let normalizer = match file.normalizer.as_ref().filter(|n| !n.is_null()) {
            None => None,
            Some(value) if json_type(value) == Some("BertNormalizer") => {
                let n = JsonBertNormalizer::deserialize(value)
                    .map_err(|e| Error::file(origin, format!("normalizer: {e}")))?;
                Some(NormalizerConfig {
                    clean_text: n.clean_text,
                    handle_chinese_chars: n.handle_chinese_chars,
                    strip_accents: n.strip_accents.unwrap_or(n.lowercase),
                    lowercase: n.lowercase,
                })
            }
            Some(value) => {
                return Err(Error::file(
                    origin,
                    format!("unsupported normalizer type `{}` (only BertNormalizer)", json_type(value).unwrap_or("?")),
                ))
            }
        };

        let pre_tokenizer = file.pre_tokenizer.as_ref().and_then(json_type);
        if pre_tokenizer != Some("BertPreTokenizer") {
            return Err(Error::file(
                origin,
                format!("unsupported pre_tokenizer `{}` (only BertPreTokenizer)", pre_tokenizer.unwrap_or("null")),
            ));
        }

        let (cls_token, sep_token) = special_tokens_from_post_processor(file.post_processor.as_ref(), origin)?;
        let padding = file.padding.as_ref();
        let pad_token = padding.and_then(|p| p.pad_token.clone()).unwrap_or_else(|| "[PAD]".to_string());

        // Like Hugging Face, a token already in the WordPiece vocabulary keeps that id.
        let added: Vec<(AddedToken, bool)> = file
            .added_tokens
            .iter()
            .filter(|t| !t.content.is_empty())
            .map(|t| {
                let token = AddedToken {
                    content: t.content.clone(),
                    id: model.vocab.get(&t.content).copied().unwrap_or(t.id),
                    single_word: t.single_word,
                    lstrip: t.lstrip,
                    rstrip: t.rstrip,
                };
                (token, t.normalized)
            })
            .collect();

        let mut tokenizer = Tokenizer::assemble(
            model.vocab,
            normalizer,
            model.continuing_subword_prefix,
            model.max_input_chars_per_word,
            added,
        );

        let lookup = |name: &str, what: &str| {
            tokenizer
                .token_to_id(name)
                .ok_or_else(|| Error::file(origin, format!("{what} token `{name}` is not in the vocabulary")))
        };
        let unk_id = lookup(&model.unk_token, "unknown")?;
        let cls_id = lookup(&cls_token, "classifier")?;
        let sep_id = lookup(&sep_token, "separator")?;
        let pad_id = match padding.and_then(|p| p.pad_id) {
            Some(id) => id,
            None => lookup(&pad_token, "padding")?,
        };
        tokenizer.unk_token = model.unk_token;
        tokenizer.unk_id = unk_id;
        tokenizer.cls_token = cls_token;
        tokenizer.cls_id = cls_id;
        tokenizer.sep_token = sep_token;
        tokenizer.sep_id = sep_id;
        tokenizer.pad_id = pad_id;
        Ok(tokenizer)
    }

    /// Builds a standard BERT tokenizer from a `vocab.txt` (one token per line, the line
    /// number is the id), as Hugging Face's `BertTokenizerFast` would: `##` prefix,
    /// `[UNK]`, 100 characters per word, and the normaliser uncased (lowercase and strip
    /// accents) or cased.
    ///
    /// `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]` are matched as special tokens in the
    /// text. Any of the first four that the vocabulary lacks is appended with the next free
    /// id, so this never fails; it is meant for building tiny test models.
    pub fn from_vocab_txt(vocab: &str, lowercase: bool) -> Self {
        let mut map: HashMap<String, u32> = HashMap::new();
        for (index, line) in vocab.lines().enumerate() {
            // Like Hugging Face: a repeated token keeps its last line number.
            map.insert(line.to_string(), index as u32);
        }
        let mut next_id = map.values().max().map_or(0, |&max| max + 1);
        for name in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] {
            if !map.contains_key(name) {
                map.insert(name.to_string(), next_id);
                next_id += 1;
            }
        }

        let added: Vec<(AddedToken, bool)> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .into_iter()
            .filter_map(|name| {
                let id = *map.get(name)?;
                let token =
                    AddedToken { content: name.to_string(), id, single_word: false, lstrip: false, rstrip: false };
                Some((token, false))
            })
            .collect();

        let mut tokenizer = Tokenizer::assemble(
            map,
            Some(NormalizerConfig::bert(lowercase)),
            default_continuing_subword_prefix(),
            default_max_input_chars_per_word(),
            added,
        );
        let id_of = |name: &str| tokenizer.vocab[name];
        tokenizer.unk_id = id_of("[UNK]");
        tokenizer.cls_id = id_of("[CLS]");
        tokenizer.sep_id = id_of("[SEP]");
        tokenizer.pad_id = id_of("[PAD]");
        tokenizer
    }

    /// The shared part of both constructors; special-token ids are filled in by the caller.
    /// `added` pairs each added token with its `normalized` flag.
    fn assemble(
        vocab: HashMap<String, u32>,
        normalizer: Option<NormalizerConfig>,
        continuing_subword_prefix: String,
        max_input_chars_per_word: usize,
        added: Vec<(AddedToken, bool)>,
    ) -> Self {
        let largest_id = vocab.values().chain(added.iter().map(|(token, _)| &token.id)).max().copied();
        let mut tokenizer = Tokenizer {
            vocab,
            vocab_size: largest_id.map_or(0, |id| id as usize + 1),
            normalizer,
            continuing_subword_prefix,
            max_input_chars_per_word,
            unk_token: "[UNK]".to_string(),
            unk_id: 0,
            cls_token: "[CLS]".to_string(),
            cls_id: 0,
            sep_token: "[SEP]".to_string(),
            sep_id: 0,
            pad_id: 0,
            raw_added: Vec::new(),
            normalized_added: Vec::new(),
        };
        for (mut token, normalized) in added {
            if normalized {
                // Matched against normalised text, so match the normalised content.
                token.content = tokenizer.normalize(&token.content);
                if !token.content.is_empty() {
                    tokenizer.normalized_added.push(token);
                }
            } else {
                tokenizer.raw_added.push(token);
            }
        }
        tokenizer
    }
}

// ----------------------------------------------------------------------------------------------
// Encoding
// ----------------------------------------------------------------------------------------------

impl Tokenizer {
    /// Number of ids: one more than the largest id in the vocabulary or the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of the padding token (`[PAD]`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of the classifier token (`[CLS]`) that starts every encoding.
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    /// Id of the separator token (`[SEP]`) that ends every encoding.
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Id of a token string (added tokens included), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.raw_added
            .iter()
            .chain(&self.normalized_added)
            .find(|t| t.content == token)
            .map(|t| t.id)
            .or_else(|| self.vocab.get(token).copied())
    }

    /// Applies the normaliser alone (the text WordPiece sees, before splitting into words).
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        match self.normalizer {
            Some(config) => normalize_into(config, text, &mut out),
            None => out.push_str(text),
        }
        out
    }

    /// Encodes one text as `[CLS] pieces [SEP]`.
    ///
    /// When the text has more than `max_len - 2` word pieces, only the first `max_len - 2` are
    /// kept, followed by `[SEP]`, so the encoding has exactly `max_len` tokens. `max_len`
    /// below 2 is treated as 2 (`[CLS] [SEP]`).
    pub fn encode(&self, text: &str, max_len: usize) -> Encoding {
        let (mut ids, mut tokens) = self.word_pieces(text);
        let num_pieces = ids.len();
        let keep = num_pieces.min(max_len.saturating_sub(2));
        ids.truncate(keep);
        tokens.truncate(keep);

        ids.insert(0, self.cls_id);
        tokens.insert(0, self.cls_token.clone());
        ids.push(self.sep_id);
        tokens.push(self.sep_token.clone());
        Encoding { ids, tokens, truncated: keep < num_pieces, num_tokens_untruncated: num_pieces + 2 }
    }

    /// Encodes several texts (each as in [`Tokenizer::encode`]) and right-pads them with the
    /// pad id to the longest one; the attention mask is 0 on padding.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Batch {
        let encodings: Vec<Encoding> = texts.iter().map(|t| self.encode(t, max_len)).collect();
        let seq_len = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let batch = encodings.len();

        let mut input_ids = vec![self.pad_id; batch * seq_len];
        let mut attention_mask = vec![0; batch * seq_len];
        for (row, encoding) in encodings.iter().enumerate() {
            let start = row * seq_len;
            let len = encoding.ids.len();
            input_ids[start..start + len].copy_from_slice(&encoding.ids);
            attention_mask[start..start + len].fill(1);
        }
        Batch {
            input_ids,
            attention_mask,
            token_type_ids: vec![0; batch * seq_len],
            batch,
            seq_len,
            lengths: encodings.iter().map(|e| e.ids.len()).collect(),
            truncated: encodings.iter().filter(|e| e.truncated).count(),
        }
    }

    /// The word pieces of a text (ids and token strings), without `[CLS]`/`[SEP]`.
    fn word_pieces(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let mut ids = Vec::new();
        let mut tokens = Vec::new();
        let mut normalized = String::new();
        let mut word_buffer = String::new();

        for raw in split_added_tokens(text, &self.raw_added) {
            let raw_text = match raw {
                Segment::Added { token, text } => {
                    ids.push(token.id);
                    tokens.push(text.to_string());
                    continue;
                }
                Segment::Text(raw_text) => raw_text,
            };
            normalized.clear();
            match self.normalizer {
                Some(config) => normalize_into(config, raw_text, &mut normalized),
                None => normalized.push_str(raw_text),
            }
            for segment in split_added_tokens(&normalized, &self.normalized_added) {
                match segment {
                    Segment::Added { token, text } => {
                        ids.push(token.id);
                        tokens.push(text.to_string());
                    }
                    Segment::Text(words) => for_each_word(words, |word| {
                        self.word_piece(word, &mut word_buffer, &mut ids, &mut tokens);
                    }),
                }
            }
        }
        (ids, tokens)
    }

    /// WordPiece on one word: greedy longest-match-first, or the unknown token when the word
    /// is too long or cannot be covered by the vocabulary. `buffer` is scratch space.
    fn word_piece(&self, word: &str, buffer: &mut String, ids: &mut Vec<u32>, tokens: &mut Vec<String>) {
        if word.chars().count() > self.max_input_chars_per_word {
            ids.push(self.unk_id);
            tokens.push(self.unk_token.clone());
            return;
        }

        let first_piece = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                buffer.clear();
                if start > 0 {
                    buffer.push_str(&self.continuing_subword_prefix);
                }
                buffer.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(buffer.as_str()) {
                    found = Some(id);
                    break;
                }
                // Drop the last character of the candidate.
                let last = word[start..end].chars().next_back().map_or(1, char::len_utf8);
                end -= last;
            }
            let Some(id) = found else {
                // The word cannot be covered: it becomes a single unknown token.
                ids.truncate(first_piece);
                tokens.truncate(first_piece);
                ids.push(self.unk_id);
                tokens.push(self.unk_token.clone());
                return;
            };
            ids.push(id);
            tokens.push(buffer.clone());
            start = end;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Added tokens
// ----------------------------------------------------------------------------------------------

/// Splits `text` around occurrences of the added tokens, as Hugging Face's `AddedVocabulary`
/// does: non-overlapping leftmost-longest matches, honouring `single_word`, `lstrip` and
/// `rstrip`. Returns the whole text as one segment when there are no tokens.
fn split_added_tokens<'t, 'a>(text: &'t str, added: &'a [AddedToken]) -> Vec<Segment<'t, 'a>> {
    if added.is_empty() || text.is_empty() {
        return vec![Segment::Text(text)];
    }
    let mut segments = Vec::new();
    // End of the last emitted segment.
    let mut emitted = 0;
    // Where the search for the next match resumes.
    let mut search = 0;
    while let Some((token, mut start, mut stop)) = find_longest_match(text, search, added) {
        search = stop;
        if token.single_word {
            let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
            let word_after = text[stop..].chars().next().is_some_and(is_word_char);
            if word_before || word_after {
                continue;
            }
        }
        if token.lstrip {
            let trimmed = text[..start].trim_end_matches(char::is_whitespace).len();
            start = trimmed.max(emitted);
        }
        if token.rstrip {
            stop = text.len() - text[stop..].trim_start_matches(char::is_whitespace).len();
            search = stop;
        }
        if emitted < start {
            segments.push(Segment::Text(&text[emitted..start]));
        }
        segments.push(Segment::Added { token, text: &text[start..stop] });
        emitted = stop;
    }
    if emitted < text.len() {
        segments.push(Segment::Text(&text[emitted..]));
    }
    segments
}

/// The leftmost match of any added token at or after byte `from`, the longest one when several
/// start there: `(token, start, stop)`.
fn find_longest_match<'a>(text: &str, from: usize, added: &'a [AddedToken]) -> Option<(&'a AddedToken, usize, usize)> {
    let rest = &text[from..];
    for (offset, _) in rest.char_indices() {
        let here = &rest[offset..];
        let best = added
            .iter()
            .filter(|token| here.starts_with(token.content.as_str()))
            .max_by_key(|token| token.content.len());
        if let Some(token) = best {
            let start = from + offset;
            return Some((token, start, start + token.content.len()));
        }
    }
    None
}

/// A regex `\w` character, for `single_word` added tokens (alphanumeric or `_`).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

// ----------------------------------------------------------------------------------------------
// Normaliser and pre-tokenizer
// ----------------------------------------------------------------------------------------------

/// `BertNormalizer`: appends the normalised `text` to `out`. Every step works on single
/// characters, so they run in one pass, in the library's order (clean, CJK, accents, case).
fn normalize_into(config: NormalizerConfig, text: &str, out: &mut String) {
    for c in text.chars() {
        let c = if config.clean_text {
            if is_removed_by_clean_text(c) {
                continue;
            }
            if c.is_whitespace() {
                ' '
            } else {
                c
            }
        } else {
            c
        };
        let pad = config.handle_chinese_chars && is_chinese_char(c);
        if pad {
            out.push(' ');
        }
        if config.strip_accents {
            strip_accents(c, |d| push_cased(out, d, config.lowercase));
        } else {
            push_cased(out, c, config.lowercase);
        }
        if pad {
            out.push(' ');
        }
    }
}

/// Pushes `c`, lowercased (full Unicode mapping, which may give several characters) if asked.
fn push_cased(out: &mut String, c: char, lowercase: bool) {
    if !lowercase {
        out.push(c);
    } else if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

/// Calls `emit` with each character of NFD(`c`) that is not a non-spacing mark.
fn strip_accents(c: char, mut emit: impl FnMut(char)) {
    use unicode_tables::{ACCENT_BASE, ACCENT_MARKS, ACCENT_MULTI};

    if c.is_ascii() {
        emit(c);
        return;
    }
    let cp = c as u32;
    if let Some(jamo) = decompose_hangul(cp) {
        jamo.into_iter().flatten().for_each(emit);
    } else if in_ranges(ACCENT_MARKS, c) {
        // A combining mark on its own: dropped.
    } else if let Ok(i) = ACCENT_BASE.binary_search_by_key(&cp, |&(from, _)| from) {
        emit(char::from_u32(ACCENT_BASE[i].1).unwrap_or(c));
    } else if let Ok(i) = ACCENT_MULTI.binary_search_by_key(&cp, |&(from, _)| from) {
        ACCENT_MULTI[i].1.chars().for_each(emit);
    } else {
        emit(c);
    }
}

/// The canonical decomposition of a precomposed Hangul syllable into two or three jamo.
fn decompose_hangul(cp: u32) -> Option<[Option<char>; 3]> {
    const SYLLABLE_BASE: u32 = 0xAC00;
    const LEAD_BASE: u32 = 0x1100;
    const VOWEL_BASE: u32 = 0x1161;
    const TRAIL_BASE: u32 = 0x11A7;
    const VOWELS: u32 = 21;
    const TRAILS: u32 = 28;
    const SYLLABLES: u32 = 19 * VOWELS * TRAILS;

    let index = cp.checked_sub(SYLLABLE_BASE).filter(|&i| i < SYLLABLES)?;
    let lead = LEAD_BASE + index / (VOWELS * TRAILS);
    let vowel = VOWEL_BASE + (index % (VOWELS * TRAILS)) / TRAILS;
    let trail = index % TRAILS;
    Some([
        char::from_u32(lead),
        char::from_u32(vowel),
        (trail > 0).then(|| char::from_u32(TRAIL_BASE + trail)).flatten(),
    ])
}

/// Characters that `clean_text` drops: NUL, U+FFFD and control/format/private-use characters
/// other than `\t`, `\n`, `\r`.
fn is_removed_by_clean_text(c: char) -> bool {
    in_ranges(unicode_tables::CLEAN_TEXT_REMOVED, c)
}

/// CJK ideographs, which `handle_chinese_chars` turns into words of their own.
fn is_chinese_char(c: char) -> bool {
    (c as u32) >= 0x3400 && in_ranges(unicode_tables::CHINESE, c)
}

/// Punctuation as the `BertPreTokenizer` sees it: ASCII punctuation or Unicode category P*.
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation()
    } else {
        in_ranges(unicode_tables::PUNCTUATION, c)
    }
}

/// Whether `c` falls in one of the sorted, disjoint, inclusive `ranges`.
fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let cp = c as u32;
    ranges
        .binary_search_by(|&(first, last)| {
            if last < cp {
                std::cmp::Ordering::Less
            } else if first > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `BertPreTokenizer`: calls `emit` with each word of `text`, splitting on whitespace and
/// making every punctuation character a word of its own.
fn for_each_word(text: &str, mut emit: impl FnMut(&str)) {
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if is_space || is_punctuation(c) {
            if let Some(start) = word_start.take() {
                emit(&text[start..i]);
            }
            if !is_space {
                emit(&text[i..i + c.len_utf8()]);
            }
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if let Some(start) = word_start {
        emit(&text[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny uncased vocabulary: ids are line numbers.
    const VOCAB: &str =
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n,\n!\nplay\n##ing\n##s\nun\n##believ\n##able\ncafe\na\n";

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_vocab_txt(VOCAB, true)
    }

    fn tokens(encoding: &Encoding) -> Vec<&str> {
        encoding.tokens.iter().map(String::as_str).collect()
    }

    #[test]
    fn special_ids_and_vocab_size() {
        let t = tokenizer();
        assert_eq!((t.pad_id(), t.cls_id(), t.sep_id()), (0, 2, 3));
        assert_eq!(t.vocab_size(), 17);
        assert_eq!(t.token_to_id("##ing"), Some(10));
    }

    #[test]
    fn splits_punctuation_and_lowercases() {
        let e = tokenizer().encode("Hello, WORLD!", 16);
        assert_eq!(tokens(&e), ["[CLS]", "hello", ",", "world", "!", "[SEP]"]);
        assert_eq!(e.ids, [2, 5, 7, 6, 8, 3]);
        assert!(!e.truncated);
        assert_eq!(e.num_tokens_untruncated, 6);
    }

    #[test]
    fn continuation_pieces() {
        let e = tokenizer().encode("playing unbelievable plays", 16);
        assert_eq!(tokens(&e), ["[CLS]", "play", "##ing", "un", "##believ", "##able", "play", "##s", "[SEP]"]);
    }

    #[test]
    fn unknown_words() {
        let t = tokenizer();
        // A word WordPiece cannot cover becomes one [UNK], even if a prefix matched.
        let e = t.encode("playx hello", 16);
        assert_eq!(tokens(&e), ["[CLS]", "[UNK]", "hello", "[SEP]"]);
        // Over 100 characters is [UNK] even when the pieces exist; exactly 100 is fine.
        let long = "a".repeat(101);
        assert_eq!(tokens(&t.encode(&long, 16)), ["[CLS]", "[UNK]", "[SEP]"]);
        let vocab = format!("{VOCAB}{}\n", "a".repeat(100));
        let t = Tokenizer::from_vocab_txt(&vocab, true);
        assert_eq!(t.encode(&"a".repeat(100), 16).ids, [2, 17, 3]);
    }

    #[test]
    fn accents_and_whitespace() {
        let t = tokenizer();
        assert_eq!(t.normalize("Café\u{200B}\tA\u{0301}"), "cafe a");
        assert_eq!(tokens(&t.encode(" \tCAFÉ\n ", 8)), ["[CLS]", "cafe", "[SEP]"]);
        assert_eq!(t.normalize("東京"), " 東  京 ");
    }

    #[test]
    fn special_tokens_in_text() {
        let e = tokenizer().encode("hello[SEP]world [mask]", 16);
        // Special tokens match case-sensitively on the raw text: `[mask]` is three words.
        assert_eq!(e.ids, [2, 5, 3, 6, 1, 1, 1, 3]);
    }

    #[test]
    fn empty_text() {
        let t = tokenizer();
        for text in ["", "   ", "\u{200B}"] {
            let e = t.encode(text, 8);
            assert_eq!(tokens(&e), ["[CLS]", "[SEP]"]);
            assert_eq!(e.num_tokens_untruncated, 2);
        }
    }

    #[test]
    fn truncation_keeps_sep() {
        let e = tokenizer().encode("hello world hello world", 4);
        assert_eq!(tokens(&e), ["[CLS]", "hello", "world", "[SEP]"]);
        assert!(e.truncated);
        assert_eq!(e.num_tokens_untruncated, 6);
        assert_eq!(tokenizer().encode("hello", 0).ids, [2, 3]);
    }

    #[test]
    fn batch_padding() {
        let b = tokenizer().encode_batch(&["hello world", "", "hello world hello world"], 5);
        assert_eq!((b.batch, b.seq_len), (3, 5));
        assert_eq!(b.lengths, [4, 2, 5]);
        assert_eq!(b.truncated, 1);
        #[rustfmt::skip]
        assert_eq!(b.input_ids, [
            2, 5, 6, 3, 0,
            2, 3, 0, 0, 0,
            2, 5, 6, 5, 3,
        ]);
        #[rustfmt::skip]
        assert_eq!(b.attention_mask, [
            1, 1, 1, 1, 0,
            1, 1, 0, 0, 0,
            1, 1, 1, 1, 1,
        ]);
        assert_eq!(b.token_type_ids, [0; 15]);
        let empty = tokenizer().encode_batch(&[], 5);
        assert_eq!((empty.batch, empty.seq_len, empty.input_ids.len()), (0, 0, 0));
    }

    #[test]
    fn missing_special_tokens_are_appended() {
        let t = Tokenizer::from_vocab_txt("hello\nworld", false);
        assert_eq!(t.vocab_size(), 6);
        assert_eq!((t.pad_id(), t.cls_id(), t.sep_id()), (2, 4, 5));
        assert_eq!(t.encode("Hello world", 8).ids, [4, 3, 1, 5]);
    }

    #[test]
    fn hangul_decomposes_to_jamo() {
        assert_eq!(tokenizer().normalize("한"), "\u{1112}\u{1161}\u{11AB}");
    }

    #[test]
    fn rejects_unsupported_json() {
        let err = Tokenizer::from_json_str(r#"{"model": {"type": "BPE", "vocab": {}}}"#, "x.json");
        assert!(err.unwrap_err().to_string().starts_with("x.json: unsupported model type"));
        assert!(Tokenizer::from_json_str("{", "y.json").is_err());
    }
}
