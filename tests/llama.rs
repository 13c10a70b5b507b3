//! The Llama decoder on SmolLM2-135M-Instruct's GGUF (Q4_1 linears, Q8_0 tied embedding) against
//! transformers' own forward of the same file (which de-quantises to f32 and un-permutes q/k):
//! logits at every position within 1e-3 and the same greedy continuation
//! (tests/fixtures/llama, reference prompts 0 and 3); the weights' device memory against the file's
//! size; unsupported architectures and missing tensors refused by name.

mod common;

use common::*;
use localtune::model::generate::{generate, pick, Sampling};
use localtune::model::gguf::Gguf;
use localtune::model::llama::{KvCache, Llama};
use localtune::Device;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/expected.safetensors");

fn load(dev: &Device) -> Option<(Llama, u64)> {
    let path = llm_file()?;
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, &path.display().to_string()).unwrap();
    Some((Llama::from_gguf(&g, &bytes, dev).unwrap(), bytes.len() as u64))
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
        // Greedy generation with the key/value cache: transformers' whole continuation (≤ 32 tokens,
        // ending at its end-of-text).
        let greedy = fixture_ids(&st, &format!("prompt{p}_greedy32"));
        let stop = [2];
        let got =
            futures::executor::block_on(generate(&m, None, &ids, 32, &Sampling::greedy(), &stop, |_| true)).unwrap();
        assert_eq!(got, greedy, "prompt {p}: greedy continuation");
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

#[test]
fn the_cache_gives_the_logits_of_the_whole_sequence() {
    let Some((m, _)) = load(&Device::Cpu) else { return };
    let ids = [504, 3575, 282, 4649, 314, 7042, 30];
    let whole = host(&m.forward(&ids).unwrap());
    let mut cache = KvCache::default();
    let first = host(&m.forward_cached(&ids[..4], &mut cache, false, None).unwrap());
    let next = host(&m.forward_cached(&ids[4..6], &mut cache, false, None).unwrap());
    let last = host(&m.forward_cached(&ids[6..], &mut cache, true, None).unwrap());
    let v = m.cfg.vocab;
    assert_eq!(cache.len, 7);
    assert_close("first 4", &first, &whole[..4 * v], 1e-4, 1e-4);
    assert_close("next 2", &next, &whole[4 * v..6 * v], 1e-4, 1e-4);
    assert_close("last", &last, &whole[6 * v..], 1e-4, 1e-4);
    let e = m.forward_cached(&vec![1; m.cfg.context], &mut cache, true, None).err().unwrap().to_string();
    assert!(e.contains("context"), "{e}");
}

#[test]
fn sampling_follows_temperature_top_k_and_top_p() {
    let logits = [1.0f32, 3.0, 2.0, -1.0, 2.5];
    let mut rng = localtune::rng::Rng::new(1);
    let greedy = Sampling::greedy();
    assert_eq!(pick(&logits, &greedy, &mut rng), 1);
    let k1 = Sampling { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 0 };
    let p_small = Sampling { temperature: 1.0, top_k: 0, top_p: 0.01, seed: 0 };
    for _ in 0..50 {
        assert_eq!(pick(&logits, &k1, &mut rng), 1);
        assert_eq!(pick(&logits, &p_small, &mut rng), 1);
    }
    // Top-k 2 keeps tokens 1 and 4 (softmax 0.62 / 0.38 at temperature 1).
    let k2 = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0 };
    let n = 20000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[pick(&logits, &k2, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[0] + counts[2] + counts[3], 0, "{counts:?}");
    let p1 = counts[1] as f64 / n as f64;
    let want = 1.0 / (1.0 + (-0.5f64).exp());
    assert!((p1 - want).abs() < 0.02, "{p1} vs {want}");
    // Top-p over softmax (0.064, 0.470, 0.173, 0.009, 0.285): 0.7 is reached by tokens 1 and 4, 0.8 needs 2 too.
    let p7 = Sampling { temperature: 1.0, top_k: 0, top_p: 0.7, seed: 0 };
    let mut seen = [false; 5];
    for _ in 0..2000 {
        seen[pick(&logits, &p7, &mut rng) as usize] = true;
    }
    assert_eq!(seen, [false, true, false, false, true]);
    let p7 = Sampling { temperature: 1.0, top_k: 0, top_p: 0.8, seed: 0 };
    let mut seen = [false; 5];
    for _ in 0..2000 {
        seen[pick(&logits, &p7, &mut rng) as usize] = true;
    }
    assert_eq!(seen, [false, true, true, false, true]);
    // A high temperature flattens: every token comes up.
    let hot = Sampling { temperature: 100.0, top_k: 0, top_p: 1.0, seed: 0 };
    let mut seen = [false; 5];
    for _ in 0..2000 {
        seen[pick(&logits, &hot, &mut rng) as usize] = true;
    }
    assert_eq!(seen, [true; 5]);
    assert!(Sampling { temperature: -1.0, ..greedy.clone() }.check().is_err());
    assert!(Sampling { top_p: 0.0, ..greedy }.check().is_err());
}
