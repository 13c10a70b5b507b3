//! The real all-MiniLM-L6-v2 against PyTorch/transformers reference outputs (tests/fixtures/encoder),
//! on both devices: per-token states on valid positions within 1e-4, sentence embeddings with cosine
//! ≥ 0.99999 (and within 1e-5), pooler output within 1e-4.

mod common;

use common::*;
use localtune::model::{Inputs, Mode, Model};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/encoder");

struct Reference {
    bytes: Vec<u8>,
    sentences: Vec<String>,
}

fn reference() -> Reference {
    let bytes = std::fs::read(format!("{FIXTURE}/outputs.safetensors")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE}/meta.json")).unwrap()).unwrap();
    let sentences = meta["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    Reference { bytes, sentences }
}

/// Compares (B, T, C) states on the positions where mask == 1.
fn compare_valid(what: &str, got: &[f32], want: &[f32], mask: &[u32], c: usize, atol: f32) {
    let mut worst = 0.0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m == 0 {
            continue;
        }
        for j in 0..c {
            let (g, w) = (got[pos * c + j], want[pos * c + j]);
            let err = (g - w).abs();
            assert!(
                err <= atol,
                "{what}: first bad index {} (position {pos}, channel {j}): got {g}, want {w}",
                pos * c + j
            );
            worst = worst.max(err);
        }
    }
    eprintln!("{what}: max abs diff on valid positions {worst:.2e}");
}

#[test]
fn encoder_matches_pytorch_on_both_devices() {
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let st = safetensors::SafeTensors::deserialize(&r.bytes).unwrap();
    let ids = fixture_ids(&st, "input_ids");
    let mask = fixture_ids(&st, "attention_mask");
    let types = fixture_ids(&st, "token_type_ids");
    let (b, t) = (4, ids.len() / 4);
    for dev in devices() {
        let model = Model::load(&dir, &dev).unwrap();
        let c = model.encoder.config.hidden_size;
        let name = dev.describe();
        let inputs = Inputs::new(&dev, &ids, &mask, &types, b, t).unwrap();
        let out = model.encoder.forward(&inputs, Mode::Inference, true).unwrap();
        assert_eq!(out.hidden_states.len(), 7);
        compare_valid(
            &format!("{name} embeddings_output"),
            &host(&out.hidden_states[0]),
            &fixture_f32(&st, "embeddings_output"),
            &mask,
            c,
            1e-4,
        );
        compare_valid(
            &format!("{name} hidden_state_layer0"),
            &host(&out.hidden_states[1]),
            &fixture_f32(&st, "hidden_state_layer0"),
            &mask,
            c,
            1e-4,
        );
        compare_valid(
            &format!("{name} last_hidden_state"),
            &host(&out.hidden),
            &fixture_f32(&st, "last_hidden_state"),
            &mask,
            c,
            1e-4,
        );

        let pooled = localtune::ops::mean_pool(&out.hidden, &inputs.mask).unwrap();
        assert_close(&format!("{name} mean_pooled"), &host(&pooled), &fixture_f32(&st, "mean_pooled"), 1e-4, 0.0);
        let emb = host(&model.encoder.sentence_embedding(&out.hidden, &inputs).unwrap());
        let want = fixture_f32(&st, "sentence_embedding");
        for i in 0..b {
            let cos = cosine(&emb[i * c..(i + 1) * c], &want[i * c..(i + 1) * c]);
            assert!(cos >= 0.99999, "{name}: sentence {i}: cosine {cos}");
        }
        assert_close(&format!("{name} sentence_embedding"), &emb, &want, 1e-5, 0.0);
        let pooler = host(&model.encoder.pool_cls(&out.hidden).unwrap());
        assert_close(&format!("{name} pooler_output"), &pooler, &fixture_f32(&st, "pooler_output"), 1e-4, 0.0);

        // A training-mode forward keeps the activations and gives the same output.
        let tr = model.encoder.forward(&inputs, Mode::Training, false).unwrap();
        let acts = tr.acts.expect("training mode keeps activations");
        assert_eq!(acts.len(), 6);
        assert_eq!(host(&tr.hidden), host(&out.hidden));
    }
}

#[test]
fn embed_from_text_matches_sentence_transformers() {
    // End to end: our tokenizer, padding, forward, pooling and normalisation against encode().
    let Some(dir) = model_dir() else { return };
    let r = reference();
    let st = safetensors::SafeTensors::deserialize(&r.bytes).unwrap();
    let want = fixture_f32(&st, "sentence_embedding");
    let texts: Vec<&str> = r.sentences.iter().map(|s| s.as_str()).collect();
    for dev in devices() {
        let model = Model::load(&dir, &dev).unwrap();
        let c = model.encoder.config.hidden_size;
        let enc = model.encode(&texts, 128).unwrap();
        assert_eq!(host(&enc.inputs.ids).iter().map(|&x| x as u32).collect::<Vec<_>>(), fixture_ids(&st, "input_ids"));
        // One batch, and one text at a time (no padding): both match.
        for batch in [4, 1] {
            let (emb, truncated) = futures::executor::block_on(model.embed(&texts, 128, batch)).unwrap();
            assert_eq!(truncated, 0);
            for (i, e) in emb.iter().enumerate() {
                let cos = cosine(e, &want[i * c..(i + 1) * c]);
                assert!(cos >= 0.99999, "{}: batch {batch}: sentence {i}: cosine {cos}", dev.describe());
            }
        }
    }
}

#[test]
fn bad_model_folders_are_refused_clearly() {
    let Some(dir) = model_dir() else { return };
    let tmp = std::env::temp_dir().join(format!("localtune-badmodel-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let tokenizer = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();

    // Missing file.
    std::fs::write(tmp.join("config.json"), &config).unwrap();
    std::fs::write(tmp.join("tokenizer.json"), &tokenizer).unwrap();
    let e = Model::load(&tmp, &localtune::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("missing"), "{e}");

    // Another architecture, refused by name.
    let gpt2 = config.replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"");
    let e = Model::from_bytes(&gpt2, &[], &tokenizer, "m", &localtune::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("m/config.json") && e.contains("gpt2") && e.contains("unsupported architecture"), "{e}");

    // A misshapen tensor names the tensor, the file and both shapes.
    let mut named = localtune::model::NamedTensors::load(&dir.join("model.safetensors")).unwrap();
    let t = named.tensors.get_mut("encoder.layer.3.attention.self.key.weight").unwrap();
    t.shape = vec![384, 383];
    t.data.truncate(384 * 383);
    let bytes = named.to_bytes(None).unwrap();
    let e = Model::from_bytes(&config, &bytes, &tokenizer, "m", &localtune::Device::Cpu).err().unwrap().to_string();
    assert!(
        e.contains("m/model.safetensors")
            && e.contains("encoder.layer.3.attention.self.key.weight")
            && e.contains("[384, 383]")
            && e.contains("[384, 384]"),
        "{e}"
    );

    // A missing tensor.
    named.tensors.remove("encoder.layer.3.attention.self.key.weight");
    let bytes = named.to_bytes(None).unwrap();
    let e = Model::from_bytes(&config, &bytes, &tokenizer, "m", &localtune::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("encoder.layer.3.attention.self.key.weight") && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn f16_bf16_and_prefixed_checkpoints_load() {
    // The same weights stored as f16 / bf16 and with a `bert.` prefix give nearly the same embedding.
    let Some(dir) = model_dir() else { return };
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let tokenizer = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let named = localtune::model::NamedTensors::load(&dir.join("model.safetensors")).unwrap();
    assert_eq!(named.skipped, vec![("embeddings.position_ids".to_string(), "I64".to_string())]);
    let base = Model::load(&dir, &localtune::Device::Cpu).unwrap();
    let text = ["a small test sentence"];
    let (want, _) = futures::executor::block_on(base.embed(&text, 64, 1)).unwrap();
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let converted: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .tensors
            .iter()
            .map(|(n, t)| {
                let bytes: Vec<u8> = match dtype {
                    safetensors::Dtype::F16 => {
                        t.data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
                    }
                    _ => t.data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                };
                (format!("bert.{n}"), t.shape.clone(), bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = converted
            .iter()
            .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let m = Model::from_bytes(&config, &bytes, &tokenizer, "converted", &localtune::Device::Cpu).unwrap();
        let (got, _) = futures::executor::block_on(m.embed(&text, 64, 1)).unwrap();
        let cos = cosine(&got[0], &want[0]);
        assert!(cos > 0.999, "{dtype:?}: cosine {cos}");
    }
}

#[test]
fn a_repeated_forward_allocates_no_gpu_buffers() {
    // The buffer pool: once a shape has run, running it again creates no buffer (readback included).
    let Some(dir) = model_dir() else { return };
    if gpu().is_none() {
        return;
    }
    // A device of its own: tests running in parallel on the shared one would allocate meanwhile.
    let gpu = futures::executor::block_on(localtune::Device::gpu()).unwrap();
    let localtune::Device::Gpu(g) = &gpu else { unreachable!() };
    let model = Model::load(&dir, &gpu).unwrap();
    let texts = ["first sentence here", "and a second, longer one for padding"];
    let run = || futures::executor::block_on(model.embed(&texts, 64, 2)).unwrap();
    let first = run();
    let after_first = g.memory().allocations;
    let second = run();
    assert_eq!(g.memory().allocations, after_first, "the second forward allocated buffers");
    assert_eq!(first, second);
}
