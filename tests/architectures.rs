//! The architecture seam: BERT, RoBERTa, XLM-R, DistilBERT and ELECTRA load through the same encoder
//! and reproduce what transformers computes on small random models (tests/fixtures/arch, made by
//! scripts/make-arch-fixtures.py with transformers and PEFT), on both devices: the embedding output,
//! the first layer, the last hidden state, the pooler where there is one, the position ids, and the
//! last hidden state under a LoRA adapter that PEFT wrote.

mod common;

use common::*;
use localtune::model::arch::{self, Target};
use localtune::model::encoder::{Encoder, Mode};
use localtune::model::NamedTensors;
use localtune::peft::{peft_prefix, Adapted, LoraConfig, Method};
use localtune::Device;

const ARCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch");

struct Case {
    name: &'static str,
    /// The architecture file the model_type must pick.
    arch: &'static str,
    pooler: bool,
}

const CASES: &[Case] = &[
    Case { name: "bert", arch: "bert", pooler: true },
    Case { name: "roberta", arch: "roberta", pooler: true },
    Case { name: "xlm-roberta", arch: "roberta", pooler: true },
    Case { name: "distilbert", arch: "distilbert", pooler: false },
    Case { name: "electra", arch: "electra", pooler: false },
];

fn load(name: &str, dev: &Device) -> Encoder {
    let dir = format!("{ARCH}/{name}");
    let cfg = std::fs::read_to_string(format!("{dir}/config.json")).unwrap();
    let (config, desc) = arch::from_config_json(&cfg, &format!("{dir}/config.json")).unwrap();
    let w = NamedTensors::load(std::path::Path::new(&format!("{dir}/model.safetensors"))).unwrap();
    Encoder::from_named(config, desc, w, dev).unwrap()
}

/// (input ids, attention mask, token types — zeros where the architecture has none).
fn fixture_inputs(st: &safetensors::SafeTensors) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let ids = fixture_ids(st, "input_ids");
    let mask = fixture_ids(st, "attention_mask");
    let types =
        if st.names().contains(&"token_type_ids") { fixture_ids(st, "token_type_ids") } else { vec![0; ids.len()] };
    (ids, mask, types)
}

#[test]
fn every_architecture_matches_transformers() {
    for case in CASES {
        let bytes = std::fs::read(format!("{ARCH}/{}/expected.safetensors", case.name)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (ids, mask, types) = fixture_inputs(&st);
        let (b, t) = (3, 9);
        for dev in devices() {
            let what = format!("{} on {}", case.name, dev.describe());
            let enc = load(case.name, &dev);
            assert_eq!(enc.desc.arch, case.arch, "{what}");
            assert_eq!(enc.pooler.is_some(), case.pooler, "{what}: pooler");
            let inputs = enc.inputs(&ids, &mask, &types, b, t).unwrap();
            let positions: Vec<u32> = host(&inputs.positions).iter().map(|&p| p as u32).collect();
            assert_eq!(positions, fixture_ids(&st, "position_ids"), "{what}: position ids");
            let out = enc.forward(&inputs, Mode::Inference, true).unwrap();
            assert_eq!(out.hidden_states.len(), 3);
            // Padded positions too: padded queries attend to the real keys, as in transformers.
            for (k, name) in [(0, "embeddings_output"), (1, "hidden_state_layer0"), (2, "last_hidden_state")] {
                let got = host(&out.hidden_states[k]);
                assert_close(&format!("{what} {name}"), &got, &fixture_f32(&st, name), 1e-4, 1e-4);
            }
            if case.pooler {
                let got = host(&enc.pool_cls(&out.hidden).unwrap());
                assert_close(&format!("{what} pooler_output"), &got, &fixture_f32(&st, "pooler_output"), 1e-4, 1e-4);
            }
        }
    }
}

/// PEFT's LoRA adapter on each architecture's base model: its keys name the layers without the task
/// model's prefix (`base_model.model.encoder.layer.0…`, DistilBERT's `…transformer.layer.0…attention.q_lin…`).
#[test]
fn peft_lora_reproduces_transformers_on_every_architecture() {
    for case in CASES {
        let dir = format!("{ARCH}/{}", case.name);
        let bytes = std::fs::read(format!("{dir}/expected.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (ids, mask, types) = fixture_inputs(&st);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/peft_lora/adapter_config.json")).unwrap())
                .unwrap();
        let file =
            NamedTensors::load(std::path::Path::new(&format!("{dir}/peft_lora/adapter_model.safetensors"))).unwrap();
        for dev in devices() {
            let what = format!("{} on {}", case.name, dev.describe());
            let enc = load(case.name, &dev);
            let mut targets: Vec<Target> = cfg["target_modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| enc.desc.parse_target(m.as_str().unwrap()).unwrap())
                .collect();
            targets.sort_by_key(|t| t.index());
            assert_eq!(targets, vec![Target::Query, Target::Value], "{what}");
            let lora = LoraConfig::new(
                cfg["r"].as_u64().unwrap() as usize,
                cfg["lora_alpha"].as_f64().unwrap() as f32,
                &targets,
            );
            assert_eq!(lora.scaling(), 2.0);
            let mut a = Adapted::init(&enc, &Method::Lora(lora), 2, 0).unwrap();
            // Our keys carry the task model's prefix (`bert.`); PEFT's on a base model do not.
            let ours = peft_prefix(&enc.desc);
            let mut loaded = 0;
            for id in 0..a.params.len() {
                let name = a.params.name(id).to_string();
                let Some(rest) = name.strip_prefix(&ours) else { continue };
                let key = format!("base_model.model.{rest}");
                let t = &file.tensors[&key];
                assert_eq!(t.shape, a.params[id].shape(), "{what}: {key}");
                a.params.set(id, dev.weight(&t.data, &t.shape).unwrap()).unwrap();
                loaded += 1;
            }
            assert_eq!(loaded, file.tensors.len(), "{what}: every PEFT tensor has a place");
            let inputs = enc.inputs(&ids, &mask, &types, 3, 9).unwrap();
            let (hidden, _, _) = a.with_hooks(|h| enc.encode(&inputs, h, None, false, false)).unwrap();
            assert_close(
                &format!("{what} last_hidden_state_lora"),
                &host(&hidden),
                &fixture_f32(&st, "last_hidden_state_lora"),
                1e-4,
                1e-4,
            );
        }
    }
}

#[test]
fn layer_descriptions_name_peft_modules() {
    let cpu = Device::Cpu;
    let bert = load("bert", &cpu);
    let distil = load("distilbert", &cpu);
    assert_eq!(bert.desc.module(Target::AttnOut), "attention.output.dense");
    assert_eq!(distil.desc.module(Target::Query), "attention.q_lin");
    assert_eq!(distil.desc.parse_target("q_lin").unwrap(), Target::Query);
    assert_eq!(bert.desc.peft_module_name(Target::Query), "query");
    // BERT's FFN output "output.dense" is a suffix of "attention.output.dense": PEFT needs a regex.
    assert!(bert.desc.ambiguous_suffix(Target::Output));
    assert!(!distil.desc.ambiguous_suffix(Target::Output));
    assert_eq!(arch::target_of_module_path("x.transformer.layer.1.ffn.lin2"), Some(Target::Output));
    assert_eq!(arch::target_of_module_path("bert.encoder.layer.0.attention.output.dense"), Some(Target::AttnOut));
    assert_eq!(arch::target_of_module_path("bert.encoder.layer.0.output.dense"), Some(Target::Output));
}

#[test]
fn an_unsupported_architecture_names_model_type_and_lists_the_supported() {
    let cfg = r#"{"model_type": "gpt2", "n_embd": 32}"#;
    let e = arch::from_config_json(cfg, "m/config.json").unwrap_err().to_string();
    assert!(e.contains("m/config.json") && e.contains("`gpt2`"), "{e}");
    for t in ["bert", "roberta", "xlm-roberta", "distilbert", "electra"] {
        assert!(e.contains(t), "{e} should list {t}");
    }
    let e = arch::from_config_json("{}", "m/config.json").unwrap_err().to_string();
    assert!(e.contains("no model_type"), "{e}");
}

/// A model folder of `name` with the tiny WordPiece tokenizer of the sentence-transformers fixture
/// (same 99-token vocabulary).
fn model_with_tokenizer(name: &str, dev: &Device) -> localtune::model::Model {
    let dir = format!("{ARCH}/{name}");
    localtune::model::Model::from_bytes(
        &std::fs::read_to_string(format!("{dir}/config.json")).unwrap(),
        &std::fs::read(format!("{dir}/model.safetensors")).unwrap(),
        &std::fs::read_to_string(format!("{ARCH}/st/mean/tokenizer.json")).unwrap(),
        name,
        dev,
    )
    .unwrap()
}

/// DistilBERT (other module names, no token types, no pooler) and ELECTRA (projected embeddings)
/// fine-tune end to end: the pooler head is refused by name where there is none, LoRA on the
/// architecture's own query/value modules and BitFit (the projection bias too) lower the loss.
#[test]
fn other_architectures_train() {
    use localtune::peft::{BitfitConfig, HeadKind};
    use localtune::train::{Examples, OptimConfig, TrainConfig, Trainer};
    let pos = ["good", "great", "love", "excellent", "best"];
    let neg = ["bad", "awful", "hate", "terrible", "worst"];
    let mut texts = vec![];
    let mut labels = vec![];
    for (i, thing) in ["movie", "food", "service", "place", "phone", "film"].iter().enumerate() {
        for j in 0..4 {
            texts.push(format!("the {thing} was really {}", pos[(i + j) % 5]));
            labels.push(1);
            texts.push(format!("this {thing} is {} !", neg[(i + 2 * j) % 5]));
            labels.push(0);
        }
    }
    let data = Examples { texts, labels };
    let names = vec!["negative".to_string(), "positive".to_string()];
    let config = |method: Method, head: HeadKind, lr: f32| TrainConfig {
        method,
        head,
        epochs: 5,
        batch_size: 8,
        grad_accum: 1,
        max_len: 16,
        seed: 2,
        optim: OptimConfig { lr, ..OptimConfig::default() },
        dropout: false,
    };
    let lora = Method::Lora(LoraConfig::new(4, 8.0, &[Target::Query, Target::Value]));
    for name in ["distilbert", "electra"] {
        let model = std::rc::Rc::new(model_with_tokenizer(name, &Device::Cpu));
        let e = Trainer::new(
            model.clone(),
            config(lora.clone(), HeadKind::Pooler, 1e-2),
            names.clone(),
            data.clone(),
            Examples::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("no pooler") && e.contains("--head mean"), "{name}: {e}");
        for (method, lr) in [(lora.clone(), 2e-2), (Method::Bitfit(BitfitConfig {}), 2e-2)] {
            let mut t = Trainer::new(
                model.clone(),
                config(method.clone(), HeadKind::Mean, lr),
                names.clone(),
                data.clone(),
                Examples::default(),
            )
            .unwrap();
            if name == "electra" && matches!(method, Method::Bitfit(_)) {
                assert!(t.params.params.get("base_model.model.electra.embeddings_project.bias").is_some());
            }
            while !t.finished() {
                futures::executor::block_on(t.step()).unwrap();
            }
            let h = &t.state.history;
            assert!(
                h.last().unwrap().train_loss < h[0].train_loss * 0.8,
                "{name} {}: loss {} -> {}",
                method.name(),
                h[0].train_loss,
                h.last().unwrap().train_loss
            );
        }
    }
}

/// The gradient of ELECTRA's embeddings-projection bias (BitFit) against central differences.
#[test]
fn electra_projection_bias_gradient_matches_finite_differences() {
    use localtune::peft::{BitfitConfig, Classifier, HeadKind};
    let cpu = Device::Cpu;
    let model = model_with_tokenizer("electra", &cpu);
    let enc = model.encode(&["the food was great !", "i hate this movie"], 16).unwrap();
    let labels = [1u32, 0];
    let lt = cpu.tensor_u32(&labels, &[2]).unwrap();
    let a = Adapted::init(&model.encoder, &Method::Bitfit(BitfitConfig {}), 2, 3).unwrap();
    let id = a.params.id("base_model.model.electra.embeddings_project.bias").unwrap();
    let loss = |a: &Adapted| {
        let clf = Classifier { base: &model.encoder, params: a, head: HeadKind::Mean };
        let (logits, _) = clf.forward(&enc.inputs, None, false).unwrap();
        let (l, _) = localtune::ops::cross_entropy(&logits, &lt, &labels, 0.5).unwrap();
        host(&l).iter().map(|&x| x as f64).sum::<f64>() / 2.0
    };
    let clf = Classifier { base: &model.encoder, params: &a, head: HeadKind::Mean };
    let (logits, acts) = clf.forward(&enc.inputs, None, true).unwrap();
    let (_, dlogits) = localtune::ops::cross_entropy(&logits, &lt, &labels, 0.5).unwrap();
    let mut grads = a.params.zeros_like(&cpu).unwrap();
    clf.backward(&enc.inputs, acts.as_ref().unwrap(), &dlogits, &mut grads, None).unwrap();
    let g = host(&grads[id]);
    let h = 1e-2f32;
    let scale = g.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    assert!(scale > 0.0, "the projection bias gets a gradient");
    for i in [0, 7, 31] {
        let at = |delta: f32| {
            let mut p = a.clone();
            let mut v = host(&p.params[id]);
            v[i] += delta;
            p.params.set(id, cpu.tensor(&v, &[32]).unwrap()).unwrap();
            loss(&p)
        };
        let num = (at(h) - at(-h)) / (2.0 * h as f64);
        let tol = 2e-3 * scale as f64 + 2e-4;
        assert!((num - g[i] as f64).abs() <= tol, "bias[{i}]: finite difference {num}, analytic {}", g[i]);
    }
}
