//! The WordPiece tokenizer against Hugging Face's output for all-MiniLM-L6-v2
//! (`tests/fixtures/tokenizer_cases.json`): ids, tokens, truncation and the padded batch.
//!
//! The tokenizer is read from `$LOCALTUNE_MODEL/tokenizer.json`, or from
//! `.cache/models/all-MiniLM-L6-v2` in the crate root. Without it the tests are skipped,
//! except under CI where they fail.

use std::path::{Path, PathBuf};

use localtune::model::tokenizer::Tokenizer;
use serde_json::Value;

/// The `max_length` the fixtures were produced with.
const MAX_LEN: usize = 128;

/// The model directory, or `None` (after printing why) when it is missing outside CI.
fn model_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("LOCALTUNE_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2"),
    };
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{}/tokenizer.json is missing: run scripts/fetch-assets.sh", dir.display());
    }
    eprintln!(
        "skipping: {}/tokenizer.json not found (run scripts/fetch-assets.sh or set LOCALTUNE_MODEL)",
        dir.display()
    );
    None
}

fn fixtures() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("tokenizer_cases.json is not valid JSON")
}

fn u32s(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("expected an array")
        .iter()
        .map(|v| v.as_u64().expect("expected an integer") as u32)
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("expected an array")
        .iter()
        .map(|v| v.as_str().expect("expected a string").to_string())
        .collect()
}

/// A batch array of the fixture (`[batch][seq_len]`), flattened row-major.
fn flat(rows: &Value) -> Vec<u32> {
    rows.as_array().expect("expected rows").iter().flat_map(u32s).collect()
}

fn texts(fixtures: &Value) -> Vec<String> {
    fixtures["cases"]
        .as_array()
        .expect("`cases` is not an array")
        .iter()
        .map(|case| case["text"].as_str().expect("case without text").to_string())
        .collect()
}

#[test]
fn special_ids_and_vocab_size() {
    let Some(dir) = model_dir() else { return };
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let fixtures = fixtures();
    let special = &fixtures["special_ids"];
    assert_eq!(tokenizer.pad_id() as u64, special["[PAD]"].as_u64().unwrap());
    assert_eq!(tokenizer.cls_id() as u64, special["[CLS]"].as_u64().unwrap());
    assert_eq!(tokenizer.sep_id() as u64, special["[SEP]"].as_u64().unwrap());

    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(tokenizer.vocab_size() as u64, config["vocab_size"].as_u64().unwrap());
}

#[test]
fn every_case_matches_hugging_face() {
    let Some(dir) = model_dir() else { return };
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let fixtures = fixtures();
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(!cases.is_empty());

    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let label = format!("case {} ({})", case["index"], case["category"]);
        let encoding = tokenizer.encode(text, MAX_LEN);

        let expected_ids = u32s(&case["input_ids"]);
        let expected_tokens = strings(&case["tokens"]);
        if encoding.ids != expected_ids || encoding.tokens != expected_tokens {
            failures.push(format!(
                "{label}: text {text:?}\n  got      {:?}\n  expected {:?}",
                encoding.tokens, expected_tokens
            ));
            continue;
        }
        assert_eq!(encoding.ids.len() as u64, case["num_tokens"].as_u64().unwrap(), "{label}: num_tokens");
        assert_eq!(encoding.truncated, case["truncated"].as_bool().unwrap(), "{label}: truncated");
        assert_eq!(
            encoding.num_tokens_untruncated as u64,
            case["num_tokens_untruncated"].as_u64().unwrap(),
            "{label}: num_tokens_untruncated"
        );
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn padded_batch_matches_hugging_face() {
    let Some(dir) = model_dir() else { return };
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let fixtures = fixtures();
    let texts = texts(&fixtures);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = &fixtures["batch"];

    let batch = tokenizer.encode_batch(&texts, MAX_LEN);
    let shape = u32s(&expected["shape"]);
    assert_eq!([batch.batch as u32, batch.seq_len as u32], shape[..]);
    assert_eq!(batch.input_ids, flat(&expected["input_ids"]), "input_ids");
    assert_eq!(batch.attention_mask, flat(&expected["attention_mask"]), "attention_mask");
    assert_eq!(batch.token_type_ids, flat(&expected["token_type_ids"]), "token_type_ids");

    let cases = fixtures["cases"].as_array().unwrap();
    let lengths: Vec<usize> = cases.iter().map(|c| c["num_tokens"].as_u64().unwrap() as usize).collect();
    assert_eq!(batch.lengths, lengths);
    let truncated = cases.iter().filter(|c| c["truncated"].as_bool().unwrap()).count();
    assert_eq!(batch.truncated, truncated);
}

/// `vocab.txt` with the uncased BERT settings tokenizes like `tokenizer.json`.
#[test]
fn vocab_txt_agrees_with_tokenizer_json() {
    let Some(dir) = model_dir() else { return };
    let vocab_path = dir.join("vocab.txt");
    if !vocab_path.is_file() {
        eprintln!("skipping: {} not found", vocab_path.display());
        return;
    }
    let from_json = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let from_txt = Tokenizer::from_vocab_txt(&std::fs::read_to_string(vocab_path).unwrap(), true);
    assert_eq!(from_txt.vocab_size(), from_json.vocab_size());
    for text in texts(&fixtures()) {
        assert_eq!(from_txt.encode(&text, MAX_LEN), from_json.encode(&text, MAX_LEN), "{text:?}");
    }
}
