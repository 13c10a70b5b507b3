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
