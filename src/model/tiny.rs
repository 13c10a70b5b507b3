//! A tiny randomly initialised BERT with its own small WordPiece vocabulary: real files in the real
//! formats (config.json, model.safetensors, tokenizer.json), small enough for gradient checks and for
//! browser tests on software WebGPU.

use std::collections::HashMap;

use super::weights::{HostTensor, NamedTensors};
use super::Model;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Device;

/// The three files of a tiny model.
pub struct TinyFiles {
    pub config_json: String,
    pub safetensors: Vec<u8>,
    pub tokenizer_json: String,
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "is",
    "was",
    "it",
    "this",
    "i",
    "not",
    "very",
    "and",
    "good",
    "great",
    "love",
    "excellent",
    "best",
    "bad",
    "awful",
    "hate",
    "terrible",
    "worst",
    "movie",
    "food",
    "service",
    "place",
    "phone",
    "film",
    "really",
    "so",
];

/// The vocabulary: specials, punctuation, letters and word pieces, a few whole words.
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    v.extend([".", ",", "!", "?", "'", "-"].iter().map(|s| s.to_string()));
    v.extend(('0'..='9').map(|c| c.to_string()));
    v.extend(('a'..='z').map(|c| c.to_string()));
    v.extend(('a'..='z').map(|c| format!("##{c}")));
    v.extend(WORDS.iter().map(|s| s.to_string()));
    v
}

pub const TINY_HIDDEN: usize = 16;
pub const TINY_HEADS: usize = 2;
pub const TINY_LAYERS: usize = 2;
pub const TINY_FFN: usize = 24;
pub const TINY_MAX_POS: usize = 64;

/// Generates the files of a tiny model from `seed`.
pub fn tiny_files(seed: u64) -> Result<TinyFiles> {
    let vocab = tiny_vocab();
    let (c, f, v) = (TINY_HIDDEN, TINY_FFN, vocab.len());
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": v,
        "hidden_size": c,
        "num_hidden_layers": TINY_LAYERS,
        "num_attention_heads": TINY_HEADS,
        "intermediate_size": f,
        "hidden_act": "gelu",
        "max_position_embeddings": TINY_MAX_POS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
    });
    let mut rng = Rng::new(seed);
    let mut w = NamedTensors { origin: "tiny/model.safetensors".into(), ..Default::default() };
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| w.insert(name, HostTensor::new(shape, data));
    let mut normal = |n: usize, std: f64| rng.vec_normal(n, std);
    put("embeddings.word_embeddings.weight".into(), vec![v, c], normal(v * c, 0.5));
    put("embeddings.position_embeddings.weight".into(), vec![TINY_MAX_POS, c], normal(TINY_MAX_POS * c, 0.1));
    put("embeddings.token_type_embeddings.weight".into(), vec![2, c], normal(2 * c, 0.1));
    let ln = |normal: &mut dyn FnMut(usize, f64) -> Vec<f32>| -> (Vec<f32>, Vec<f32>) {
        (normal(c, 0.1).iter().map(|x| 1.0 + x).collect(), normal(c, 0.1))
    };
    let (g, b) = ln(&mut normal);
    put("embeddings.LayerNorm.weight".into(), vec![c], g);
    put("embeddings.LayerNorm.bias".into(), vec![c], b);
    for l in 0..TINY_LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", c, c),
            ("attention.self.key", c, c),
            ("attention.self.value", c, c),
            ("attention.output.dense", c, c),
            ("intermediate.dense", f, c),
            ("output.dense", c, f),
        ] {
            let std = 1.0 / (inp as f64).sqrt();
            put(format!("{p}.{name}.weight"), vec![out, inp], normal(out * inp, std));
            put(format!("{p}.{name}.bias"), vec![out], normal(out, 0.1));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            let (g, b) = ln(&mut normal);
            put(format!("{p}.{name}.weight"), vec![c], g);
            put(format!("{p}.{name}.bias"), vec![c], b);
        }
    }
    put("pooler.dense.weight".into(), vec![c, c], normal(c * c, 1.0 / (c as f64).sqrt()));
    put("pooler.dense.bias".into(), vec![c], normal(c, 0.1));
    let safetensors = w.to_bytes(None)?;

    let ids: HashMap<&str, usize> = vocab.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let added: Vec<serde_json::Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|t| serde_json::json!({"id": ids[t], "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": ids},
    });
    Ok(TinyFiles {
        config_json: serde_json::to_string_pretty(&config).unwrap(),
        safetensors,
        tokenizer_json: serde_json::to_string(&tokenizer).unwrap(),
    })
}

/// A tiny model on `device`.
pub fn tiny_model(device: &Device, seed: u64) -> Result<Model> {
    let f = tiny_files(seed)?;
    Model::from_bytes(&f.config_json, &f.safetensors, &f.tokenizer_json, "tiny", device)
}
