//! The Llama decoder on SmolLM2-135M-Instruct's GGUF (Q4_1 linears, Q8_0 tied embedding) against
//! transformers' own forward of the same file (which de-quantises to f32 and un-permutes q/k):
//! logits at every position within 1e-3 and the same greedy continuation
//! (tests/fixtures/llama, reference prompts 0 and 3); the weights' device memory against the file's
//! size; unsupported architectures and missing tensors refused by name.

mod common;

use common::*;
use localtune::model::gguf::Gguf;
use localtune::model::llama::Llama;
use localtune::Device;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/expected.safetensors");

fn load(dev: &Device) -> Option<(Llama, u64)> {
    let path = llm_file()?;
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, &path.display().to_string()).unwrap();
    Some((Llama::from_gguf(&g, &bytes, dev).unwrap(), bytes.len() as u64))
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn check_prompts(dev: &Device, atol: f32) {
    let Some((m, _)) = load(dev) else { return };
    let raw = std::fs::read(FIXTURE).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    for p in [0, 3] {
        let ids = fixture_ids(&st, &format!("prompt{p}_input_ids"));
        let want = fixture_f32(&st, &format!("prompt{p}_logits"));
        let got = host(&m.forward(&ids).unwrap());
        assert_eq!(got.len(), want.len(), "prompt {p}: logits");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("prompt {p} on {dev:?}: max |logit − transformers| = {worst:.2e}");
        assert!(worst <= atol, "prompt {p}: logits differ from transformers' by {worst} (> {atol})");
        // Greedy decoding, the whole sequence again at each step (no cache), for the first 6 tokens.
        let greedy = fixture_ids(&st, &format!("prompt{p}_greedy32"));
        let mut seq = ids.clone();
        for (i, &want_id) in greedy.iter().take(6).enumerate() {
            let logits = host(&m.forward(&seq).unwrap());
            let last = &logits[logits.len() - m.cfg.vocab..];
            let id = argmax(last);
            assert_eq!(id, want_id, "prompt {p}: greedy token {i}");
            seq.push(id);
        }
    }
}

#[test]
fn logits_and_greedy_tokens_match_transformers_on_the_cpu() {
    check_prompts(&Device::Cpu, 1e-3);
}

#[test]
fn logits_and_greedy_tokens_match_transformers_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    check_prompts(&gpu, 2e-3);
}

#[test]
fn the_weights_take_about_the_file_on_the_device() {
    let Some((m, file)) = load(&Device::Cpu) else { return };
    let dev = m.device_bytes() as u64;
    let c = &m.cfg;
    let per_layer = 2 * c.hidden * c.hidden + 2 * c.kv_heads * c.head_dim * c.hidden + 3 * c.hidden * c.ffn;
    let params = (c.layers * per_layer + c.vocab * c.hidden) as f64;
    eprintln!(
        "device: {:.1} MiB for {:.1} M parameters ({:.2} bytes each); file {:.1} MiB",
        dev as f64 / 1048576.0,
        params / 1e6,
        dev as f64 / params,
        file as f64 / 1048576.0
    );
    assert_eq!((c.layers, c.hidden, c.ffn, c.heads, c.kv_heads, c.vocab), (30, 576, 1536, 9, 3, 49152));
    assert!(dev <= file, "{dev} bytes on the device for a file of {file}");
    assert!(dev as f64 >= 0.9 * file as f64, "{dev} bytes on the device: a tensor is missing");
}

#[test]
fn other_architectures_and_missing_tensors_are_named() {
    let Some(path) = llm_file() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, "smollm2.gguf").unwrap();
    let mut other = g.clone();
    let arch = other.metadata.get_mut("general.architecture").unwrap();
    *arch = localtune::model::gguf::Value::Str("gpt2".into());
    let e = Llama::from_gguf(&other, &bytes, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("smollm2.gguf") && e.contains("gpt2"), "{e}");
    let mut missing = g.clone();
    missing.tensors.retain(|t| t.name != "blk.7.ffn_up.weight");
    let e = Llama::from_gguf(&missing, &bytes, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("blk.7.ffn_up.weight") && e.contains("missing"), "{e}");
    let mut bad = g.clone();
    for t in &mut bad.tensors {
        if t.name == "blk.3.attn_k.weight" {
            t.dims = vec![576, 64];
        }
    }
    let e = Llama::from_gguf(&bad, &bytes, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("blk.3.attn_k.weight") && e.contains("expected (192, 576)"), "{e}");
}
