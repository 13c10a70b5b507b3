//! The Llama decoder from a Hugging Face folder (tests/fixtures/llama_st, made by transformers and
//! bitsandbytes: scripts/make-llama-st-fixtures.py): logits and greedy tokens as transformers' in f32,
//! and as transformers' 4-bit model (BitsAndBytesConfig nf4, with and without double quantisation)
//! when our loader quantises the same folder to NF4; on both devices. Bad folders are refused by name.

mod common;

use common::{fixture_f32, fixture_ids, host};
use localtune::model::bpe::BpeTokenizer;
use localtune::model::generate::{generate, Sampling};
use localtune::model::llama::Llama;
use localtune::model::llama_hf::{config_from_json, Quantize};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama_st");

fn check(quantize: Quantize, name: &str, atol: f32, greedy: bool) {
    let raw = std::fs::read(format!("{DIR}/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/meta.json")).unwrap()).unwrap();
    let dir = std::path::Path::new(DIR).join("model");
    let tok = BpeTokenizer::from_folder(&dir).unwrap();
    for dev in common::devices() {
        let m = Llama::from_hf_folder(&dir, quantize, &dev).unwrap();
        for (i, p) in meta["prompts"].as_array().unwrap().iter().enumerate() {
            let ids = tok.encode(p.as_str().unwrap());
            let want_ids: Vec<u32> =
                meta["ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, want_ids, "prompt {i}: ids");
            let got = host(&m.forward(&ids).unwrap());
            let want = fixture_f32(&st, &format!("{name}_logits{i}"));
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{name} prompt {i} on {dev:?}: max |logit − transformers| = {worst:.2e}");
            assert!(worst <= atol, "{name} prompt {i} on {dev:?}: logits differ by {worst} (> {atol})");
            if greedy {
                let want = fixture_ids(&st, &format!("{name}_greedy{i}"));
                let got = futures::executor::block_on(generate(&m, None, &ids, 12, &Sampling::greedy(), &[], |_| true))
                    .unwrap();
                assert_eq!(got, want, "{name} prompt {i} on {dev:?}: greedy tokens");
            }
        }
    }
}

#[test]
fn f32_logits_and_greedy_tokens_match_transformers() {
    check(Quantize::None, "f32", 1e-4, true);
}

#[test]
fn nf4_logits_and_greedy_tokens_match_transformers_with_bitsandbytes() {
    check(Quantize::Nf4, "nf4", 1e-3, true);
}

#[test]
fn nf4_double_logits_match_transformers_with_bitsandbytes() {
    // bitsandbytes' CPU rounds some absmax codes of double quantisation the other way (see
    // tests/nf4.rs), which moves those blocks' scales by one 8-bit step.
    check(Quantize::Nf4Double, "nf4dq", 3e-3, false);
}

#[test]
fn nf4_keeps_the_linears_in_about_4_bits() {
    let dir = std::path::Path::new(DIR).join("model");
    let dev = localtune::Device::Cpu;
    let f = Llama::from_hf_folder(&dir, Quantize::None, &dev).unwrap();
    let q = Llama::from_hf_folder(&dir, Quantize::Nf4, &dev).unwrap();
    let lin = |m: &Llama| -> usize {
        m.blocks.iter().map(|b| (0..7).map(|i| b.linear(i).device_bytes()).sum::<usize>()).sum()
    };
    // f32: 32 bits a value; NF4: 4 + 32/64 = 4.5. (Double quantisation adds a 1 KiB code per weight,
    // which pays from 2^16 values a weight: BENCHMARKS.md has SmolLM2's figures.)
    let values = lin(&f) / 4;
    let bits = lin(&q) as f64 * 8.0 / values as f64;
    assert!((bits - 4.5).abs() < 1e-9, "nf4: {bits} bits a value");
}

#[test]
fn folders_it_cannot_run_are_refused_by_name() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/model/config.json")).unwrap()).unwrap();
    let edit = |k: &str, v: serde_json::Value| {
        let mut j = base.clone();
        j[k] = v;
        config_from_json(&j.to_string(), "m/config.json").err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(edit("model_type", "mistral".into()).contains("model_type `mistral`"));
    assert!(edit("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0})).contains("llama3"));
    assert!(edit("attention_bias", true.into()).contains("attention_bias"));
    assert!(edit("hidden_act", "gelu".into()).contains("gelu"));
    assert!(edit("head_dim", 32.into()).contains("head_dim 32"));
    assert!(config_from_json(&base.to_string(), "m").is_ok());
    // A tensor missing from the weights is named.
    let tmp = std::env::temp_dir().join(format!("localtune-llama-st-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(format!("{DIR}/model/{f}"), tmp.join(f)).unwrap();
    }
    let raw = std::fs::read(format!("{DIR}/model/model.safetensors")).unwrap();
    let mut t = localtune::model::weights::NamedTensors::from_bytes(&raw, "x").unwrap();
    t.tensors.remove("model.layers.1.mlp.up_proj.weight");
    std::fs::write(tmp.join("model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
    let e = Llama::from_hf_folder(&tmp, Quantize::Nf4, &localtune::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
