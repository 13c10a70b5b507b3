//! PEFT interchange: the reference LoRA adapter made by Hugging Face PEFT loads and reproduces its
//! logits on both devices; every method's adapter round-trips through its files.

mod common;

use common::*;
use localtune::model::tiny::tiny_model;
use localtune::model::{Inputs, Model};
use localtune::peft::format::AdapterFiles;
use localtune::peft::Classifier;
use localtune::peft::{
    Activation, Adapted, AdapterConfig, BitfitConfig, HeadKind, HeadOnly, Ia3Config, LoraConfig, MamConfig, Method,
    ParallelConfig, Placement, PrefixConfig, Target,
};
use localtune::Device;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft_lora");

#[test]
fn peft_reference_adapter_reproduces_its_logits() {
    let Some(dir) = model_dir() else { return };
    let bytes = std::fs::read(format!("{FIXTURE}/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = fixture_ids(&st, "input_ids");
    let mask = fixture_ids(&st, "attention_mask");
    let types = fixture_ids(&st, "token_type_ids");
    let (b, t) = (4, ids.len() / 4);
    let adapter = AdapterFiles::load(std::path::Path::new(FIXTURE)).unwrap();
    match &adapter.method {
        Method::Lora(l) => {
            assert_eq!((l.r, l.alpha, l.scaling()), (4, 8.0, 2.0));
            assert_eq!(l.targets, vec![Target::Query, Target::Value]);
        }
        m => panic!("read as {m:?}"),
    }
    for dev in devices() {
        let model = Model::load(&dir, &dev).unwrap();
        let params = adapter.to_adapted(&model.encoder).unwrap();
        let inputs = Inputs::new(&dev, &ids, &mask, &types, b, t).unwrap();
        let clf = Classifier { base: &model.encoder, params: &params, head: HeadKind::Pooler };
        let (logits, _) = clf.forward(&inputs, None, false).unwrap();
        let name = dev.describe();
        assert_close(&format!("{name} logits_adapter"), &host(&logits), &fixture_f32(&st, "logits_adapter"), 1e-4, 0.0);
        // The same head without the adapter gives PEFT's logits_no_adapter.
        let mut head_only = Adapted::init(&model.encoder, &Method::Head(HeadOnly {}), 2, 0).unwrap();
        let (w, b) = head_only.classifier;
        head_only.params.set(w, params.params[params.classifier.0].clone()).unwrap();
        head_only.params.set(b, params.params[params.classifier.1].clone()).unwrap();
        let clf = Classifier { base: &model.encoder, params: &head_only, head: HeadKind::Pooler };
        let (logits, _) = clf.forward(&inputs, None, false).unwrap();
        assert_close(
            &format!("{name} logits_no_adapter"),
            &host(&logits),
            &fixture_f32(&st, "logits_no_adapter"),
            1e-4,
            0.0,
        );
    }
}

fn all_methods() -> Vec<Method> {
    let a = AdapterConfig {
        reduction_factor: 4,
        activation: Activation::Gelu,
        scaling: 1.0,
        placement: Placement::Houlsby,
    };
    vec![
        Method::Lora(LoraConfig { r: 2, alpha: 4.0, rslora: true, targets: Target::ALL.to_vec(), dropout: 0.1 }),
        Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query, Target::Value])),
        Method::Ia3(Ia3Config {}),
        Method::Adapter(a.clone()),
        Method::Adapter(AdapterConfig { placement: Placement::Pfeiffer, ..a.clone() }),
        Method::ParallelAdapter(ParallelConfig { reduction_factor: 4, activation: Activation::Gelu, scaling: 1.0 }),
        Method::Mam(MamConfig {
            prefix_length: 2,
            adapter: ParallelConfig { reduction_factor: 4, activation: Activation::Relu, scaling: 4.0 },
        }),
        Method::Prefix(PrefixConfig { length: 2 }),
        Method::Bitfit(BitfitConfig {}),
        Method::Head(HeadOnly {}),
    ]
}

#[test]
fn every_method_round_trips_through_its_files() {
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 5).unwrap();
    let enc = model.encode(&["a good movie", "the worst food, really"], 16).unwrap();
    let labels = vec!["neg".to_string(), "pos".to_string(), "zzz".to_string()];
    let dir = std::env::temp_dir().join(format!("localtune-roundtrip-{}", std::process::id()));
    for method in all_methods() {
        let mut params = Adapted::init(&model.encoder, &method, 3, 4).unwrap();
        let mut rng = localtune::rng::Rng::new(9);
        for t in params.params.tensors_mut() {
            let shape = t.shape().to_vec();
            *t = cpu.tensor(&rng.vec_normal(t.numel(), 0.2), &shape).unwrap();
        }
        let files = futures::executor::block_on(AdapterFiles::from_adapted(
            &params,
            &model.encoder,
            HeadKind::Pooler,
            &labels,
            "tiny",
        ))
        .unwrap();
        files.save(&dir, &model.encoder.desc).unwrap();
        let back = AdapterFiles::load(&dir).unwrap();
        assert_eq!(back.method, method);
        assert_eq!(back.labels, labels);
        assert_eq!(back.head, HeadKind::Pooler);
        let loaded = back.to_adapted(&model.encoder).unwrap();
        let run = |p: &Adapted| {
            let clf = Classifier { base: &model.encoder, params: p, head: HeadKind::Pooler };
            host(&clf.forward(&enc.inputs, None, false).unwrap().0)
        };
        assert_eq!(run(&loaded), run(&params), "{}", method.name());
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["task_type"], "SEQ_CLS");
        assert_eq!(config["modules_to_save"], serde_json::json!(["classifier", "score"]));
        match &method {
            Method::Lora(l) => {
                assert_eq!(config["peft_type"], "LORA");
                assert_eq!(config["r"], l.r);
                assert_eq!(config["use_rslora"], l.rslora);
                // Without localtune.json the adapter reads as PEFT's, targets taken from the tensors.
                let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
                let peft = AdapterFiles::from_files(&serde_json::to_string(&config).unwrap(), &st, None, "x").unwrap();
                match peft.method {
                    Method::Lora(p) => assert_eq!(
                        (p.r, p.alpha, p.rslora, p.targets.clone()),
                        (l.r, l.alpha, l.rslora, l.targets.clone())
                    ),
                    m => panic!("{m:?}"),
                }
            }
            Method::Ia3(Ia3Config {}) => {
                assert_eq!(config["peft_type"], "IA3");
                let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
                let st = safetensors::SafeTensors::deserialize(&st).unwrap();
                assert_eq!(
                    st.tensor("base_model.model.bert.encoder.layer.0.attention.self.key.ia3_l").unwrap().shape(),
                    &[16, 1]
                );
                assert_eq!(
                    st.tensor("base_model.model.bert.encoder.layer.0.output.dense.ia3_l").unwrap().shape(),
                    &[1, 24]
                );
            }
            m => assert!(config["peft_type"].as_str().unwrap().starts_with("LOCALTUNE_"), "{m:?}"),
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_misshapen_adapter_names_the_tensor() {
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 5).unwrap();
    let method = Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query]));
    let params = Adapted::init(&model.encoder, &method, 2, 4).unwrap();
    let mut files = futures::executor::block_on(AdapterFiles::from_adapted(
        &params,
        &model.encoder,
        HeadKind::Pooler,
        &["a".into(), "b".into()],
        "tiny",
    ))
    .unwrap();
    let key = "base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight";
    files.tensors.tensors.get_mut(key).unwrap().shape = vec![4, 8];
    let e = files.to_adapted(&model.encoder).unwrap_err().to_string();
    assert!(e.contains(key) && e.contains("[4, 8]") && e.contains("[2, 16]"), "{e}");
}

#[test]
fn a_mean_head_adapter_is_not_labelled_as_peft() {
    // PEFT would put the classifier on the pooler and predict wrongly: such files get our own type.
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 5).unwrap();
    for (method, want) in [
        (Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query])), "LOCALTUNE_LORA_MEAN_HEAD"),
        (Method::Ia3(Ia3Config {}), "LOCALTUNE_IA3_MEAN_HEAD"),
    ] {
        let params = Adapted::init(&model.encoder, &method, 2, 4).unwrap();
        let files = futures::executor::block_on(AdapterFiles::from_adapted(
            &params,
            &model.encoder,
            HeadKind::Mean,
            &["a".into(), "b".into()],
            "tiny",
        ))
        .unwrap();
        assert_eq!(files.peft_config(&model.encoder.desc)["peft_type"], want);
    }
}
