//! The byte-level BPE tokenizer read from SmolLM2's GGUF against transformers' tokenizer of the same
//! file (tests/fixtures/llama/meta.json): ids of texts with emoji, accents, CJK, code, whitespace runs
//! and a long input; the chat template's text and ids as `apply_chat_template` writes them; decoding
//! gives the text back.

mod common;

use localtune::model::bpe::{BpeTokenizer, Message};
use localtune::model::gguf::Gguf;

const META: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/meta.json");

fn tokenizer() -> Option<BpeTokenizer> {
    let path = common::llm_file()?;
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, &path.display().to_string()).unwrap();
    Some(BpeTokenizer::from_gguf(&g).unwrap())
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(META).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn ids_match_transformers_on_the_case_set() {
    let Some(tok) = tokenizer() else { return };
    let m = meta();
    let cases = m["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["input_ids"]);
        assert_eq!(tok.encode(text), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want, false), text, "decoding the ids of {text:?}");
    }
}

#[test]
fn the_chat_template_writes_what_transformers_writes() {
    let Some(tok) = tokenizer() else { return };
    let m = meta();
    for c in m["chats"].as_array().unwrap() {
        let msgs: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let text = tok.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text), ids(&c["input_ids_with_generation_prompt"]), "{text:?}");
    }
    assert_eq!(tok.stop_ids(), vec![2]);
    assert!(tok.is_special(1) && !tok.is_special(504));
}

#[test]
fn special_tokens_in_text_are_matched_whole() {
    let Some(tok) = tokenizer() else { return };
    let a = tok.encode("<|im_start|>user\nhi<|im_end|>");
    assert_eq!(a.first(), Some(&1));
    assert_eq!(a.last(), Some(&2));
    assert_eq!(tok.decode(&a, true), "user\nhi");
    // A broken special token is plain text.
    assert!(!tok.encode("<|im_star").contains(&1));
}

const BPE_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bpe_json");

fn folder_cases(name: &str) -> (BpeTokenizer, serde_json::Value) {
    let dir = std::path::Path::new(BPE_JSON).join(name);
    let tok = BpeTokenizer::from_folder(&dir).unwrap();
    let cases = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (tok, cases)
}

/// tokenizer.json folders written by transformers and `tokenizers` (scripts/make-bpe-json-fixtures.py):
/// SmolLM2's as transformers converts it from the GGUF, and two small trained ones with individual
/// digits, a prefix space and BOS/EOS post-processors. Ids as `AutoTokenizer(folder)(text).input_ids`.
#[test]
fn tokenizer_json_ids_match_transformers() {
    for name in ["smollm2", "digits", "prefix"] {
        let (tok, c) = folder_cases(name);
        let cases = c["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["input_ids"]);
            assert_eq!(tok.encode(text), want, "{name}: ids of {text:?}");
            if name != "prefix" {
                assert_eq!(tok.decode(&tok.encode_plain(text), false), text, "{name}: decoding {text:?}");
            }
        }
    }
}

#[test]
fn tokenizer_json_chat_template_matches_transformers_and_the_gguf() {
    let (tok, c) = folder_cases("smollm2");
    for chat in c["chats"].as_array().unwrap() {
        let msgs: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        assert_eq!(tok.apply_chat_template(&msgs, true).unwrap(), chat["text"].as_str().unwrap());
        assert_eq!(tok.encode_chat(&msgs, true).unwrap(), ids(&chat["input_ids"]));
    }
    assert_eq!(tok.stop_ids(), vec![2]);
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    // The same ids as the GGUF's own tokenizer on the GGUF's case set.
    if let Some(gguf) = tokenizer() {
        for case in meta()["tokenizer_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tok.encode(text), gguf.encode(text), "{text:?}");
        }
    }
}

#[test]
fn tokenizer_json_it_cannot_reproduce_is_refused_by_name() {
    let dir = std::path::Path::new(BPE_JSON).join("digits");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut j = base.clone();
        f(&mut j);
        BpeTokenizer::from_tokenizer_json(&j.to_string(), "my/tokenizer.json").err().map(|e| e.to_string())
    };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("normalizer `NFC`", Box::new(|j| j["normalizer"] = serde_json::json!({"type": "NFC"}))),
        ("model `WordPiece`", Box::new(|j| j["model"]["type"] = "WordPiece".into())),
        ("model.byte_fallback", Box::new(|j| j["model"]["byte_fallback"] = true.into())),
        ("pre_tokenizer `Metaspace`", Box::new(|j| j["pre_tokenizer"] = serde_json::json!({"type": "Metaspace"}))),
        ("sets lstrip", Box::new(|j| j["added_tokens"][0]["lstrip"] = true.into())),
        ("merge 3", Box::new(|j| j["model"]["merges"][3] = serde_json::json!(["Ġ"]))),
        ("not in the vocabulary", Box::new(|j| j["model"]["merges"][3] = serde_json::json!(["zz", "qq"]))),
        ("post_processor `Weird`", Box::new(|j| j["post_processor"] = serde_json::json!({"type": "Weird"}))),
    ];
    for (want, f) in cases {
        let e = edit(&*f).unwrap_or_else(|| panic!("{want}: accepted"));
        assert!(e.contains(want) && e.contains("my/tokenizer.json"), "{want}: {e}");
    }
    assert!(edit(&|_| {}).is_none());
}
