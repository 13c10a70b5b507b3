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
