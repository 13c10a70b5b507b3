//! Every fine-tuning method on a tiny random BERT: the backward pass against central finite
//! differences of the loss (CPU), and the GPU against the CPU (logits, loss, every gradient).

mod common;

use common::*;
use localtune::model::hooks::Dropout;
use localtune::model::tiny::tiny_model;
use localtune::model::Model;
use localtune::ops;
use localtune::peft::scalearn::SourceFiles;
use localtune::peft::Classifier;
use localtune::peft::{
    Activation, Adapted, AdapterConfig, BitfitConfig, FullConfig, HeadKind, HeadOnly, Ia3Config, LoraConfig, MamConfig,
    Method, MethodOptions, ParallelConfig, Placement, PrefixConfig, Target,
};
use localtune::rng::Rng as LRng;
use localtune::Device;

/// The methods for the finite-difference checks: smooth activations only (a ReLU kink within the
/// step would spoil the difference quotient; ReLU adapters are covered by the GPU-vs-CPU test).
fn smooth_methods() -> Vec<(&'static str, Method)> {
    methods().into_iter().filter(|(n, _)| *n != "adapter" && !n.contains("relu")).collect()
}

fn methods() -> Vec<(&'static str, Method)> {
    let adapter = AdapterConfig {
        reduction_factor: 4,
        activation: Activation::Relu,
        scaling: 1.0,
        placement: Placement::Houlsby,
    };
    let gelu = AdapterConfig { activation: Activation::Gelu, ..adapter.clone() };
    let pfeiffer = Method::Adapter(AdapterConfig { placement: Placement::Pfeiffer, ..gelu.clone() });
    let houlsby = Method::Adapter(AdapterConfig { scaling: 2.0, ..gelu.clone() });
    let relu = Method::Adapter(AdapterConfig { placement: Placement::Pfeiffer, ..adapter.clone() });
    let lora = Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query, Target::Value, Target::Output]));
    vec![
        ("lora q,v", Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query, Target::Value]))),
        (
            "lora all, rslora",
            Method::Lora(LoraConfig { r: 3, alpha: 2.0, rslora: true, targets: Target::ALL.to_vec(), dropout: 0.0 }),
        ),
        ("ia3", Method::Ia3(Ia3Config {})),
        ("adapter", Method::Adapter(adapter.clone())),
        ("adapter gelu", Method::Adapter(AdapterConfig { activation: Activation::Gelu, ..adapter.clone() })),
        (
            "parallel-adapter tanh",
            Method::ParallelAdapter(ParallelConfig { reduction_factor: 4, activation: Activation::Tanh, scaling: 2.0 }),
        ),
        (
            "adapter pfeiffer gelu",
            Method::Adapter(AdapterConfig {
                activation: Activation::Gelu,
                placement: Placement::Pfeiffer,
                ..adapter.clone()
            }),
        ),
        ("prefix", Method::Prefix(PrefixConfig { length: 3 })),
        (
            "mam (prefix + parallel adapter) gelu",
            Method::Mam(MamConfig {
                prefix_length: 2,
                adapter: ParallelConfig { reduction_factor: 4, activation: Activation::Gelu, scaling: 4.0 },
            }),
        ),
        ("bitfit", Method::Bitfit(BitfitConfig {})),
        ("full", Method::Full(FullConfig {})),
        ("head", Method::Head(HeadOnly {})),
        ("scalearn over 2 pfeiffer gelu adapters", scalearn("scalearn", &[pfeiffer.clone(), pfeiffer.clone()])),
        ("scalearn-uniform over 3 LoRAs", scalearn("scalearn-uniform", &[lora.clone(), lora.clone(), lora.clone()])),
        ("scalearn++ over 2 houlsby gelu adapters", scalearn("scalearn++", &[houlsby.clone(), houlsby])),
        ("scalearn-uniform++ over 2 LoRAs", scalearn("scalearn-uniform++", &[lora.clone(), lora])),
        ("scalearn++ over 2 pfeiffer relu adapters", scalearn("scalearn++", &[relu.clone(), relu])),
    ]
}

/// A source adapter for ScaLearn: `method` on the tiny model with random (non-zero) tensors.
fn source(method: &Method, seed: u64) -> SourceFiles {
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 7).unwrap();
    let mut a = Adapted::init(&model.encoder, method, 2, seed).unwrap();
    randomise(&mut a, &cpu, seed);
    let t = futures::executor::block_on(a.params.to_host("source")).unwrap();
    let labels = vec!["neg".to_string(), "pos".to_string()];
    (format!("source {seed}"), method.clone(), labels, model.encoder.desc.arch.to_string(), t)
}

/// The ScaLearn variant `name` over `sources`.
fn scalearn(name: &str, sources: &[Method]) -> Method {
    let mut m = MethodOptions { method: name.into(), ..Default::default() }.build().unwrap();
    let files = sources.iter().enumerate().map(|(i, s)| source(s, 20 + i as u64)).collect();
    let c = m.scalearn().unwrap().clone().with_sources(files).unwrap();
    *m.scalearn_mut().unwrap() = c;
    m
}

const TEXTS: [&str; 3] = ["the movie was great!", "awful food", "i really love this place, it is the best"];
const LABELS: [u32; 3] = [1, 0, 1];

/// Randomises every trainable tensor (zero-initialised ones too, so every gradient path is exercised).
fn randomise(params: &mut Adapted, dev: &Device, seed: u64) {
    let mut rng = LRng::new(seed);
    for t in params.params.tensors_mut() {
        let shape = t.shape().to_vec();
        let n: usize = shape.iter().product();
        *t = dev.tensor(&rng.vec_normal(n, 0.3), &shape).unwrap();
    }
}

struct Run {
    logits: Vec<f32>,
    loss: f64,
    grads: Vec<(String, Vec<f32>)>,
}

fn run(model: &Model, _method: &Method, head: HeadKind, params: &Adapted, dropout: Option<&Dropout>) -> Run {
    let dev = &model.encoder.device;
    let enc = model.encode(&TEXTS, 32).unwrap();
    let clf = Classifier { base: &model.encoder, params, head };
    let (logits, acts) = clf.forward(&enc.inputs, dropout, true).unwrap();
    let labels = dev.tensor_u32(&LABELS, &[3]).unwrap();
    let (loss, dlogits) = ops::cross_entropy(&logits, &labels, &LABELS, 1.0 / 3.0).unwrap();
    let mut grads = params.params.zeros_like(dev).unwrap();
    clf.backward(&enc.inputs, acts.as_ref().unwrap(), &dlogits, &mut grads, dropout).unwrap();
    let loss = host(&loss).iter().map(|&x| x as f64).sum::<f64>() / 3.0;
    let grads = grads.iter().map(|(n, t)| (n.to_string(), host(t))).collect();
    Run { logits: host(&logits), loss, grads }
}

fn loss_only(model: &Model, _method: &Method, head: HeadKind, params: &Adapted, dropout: Option<&Dropout>) -> f64 {
    let dev = &model.encoder.device;
    let enc = model.encode(&TEXTS, 32).unwrap();
    let clf = Classifier { base: &model.encoder, params, head };
    let (logits, _) = clf.forward(&enc.inputs, dropout, false).unwrap();
    let labels = dev.tensor_u32(&LABELS, &[3]).unwrap();
    let (loss, _) = ops::cross_entropy(&logits, &labels, &LABELS, 1.0).unwrap();
    host(&loss).iter().map(|&x| x as f64).sum::<f64>() / 3.0
}

/// Rows of the position or token-type table that the encoded texts use.
fn types_or_positions(tname: &str, enc: &localtune::model::Encoded) -> Vec<usize> {
    let t = if tname.contains("position") { &enc.inputs.positions } else { &enc.inputs.types };
    host(t).iter().skip(1).map(|&x| x as usize).collect()
}

/// Central differences at a few elements of every trainable tensor.
fn check_method(name: &str, method: &Method, head: HeadKind, dropout: Option<&Dropout>) {
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 7).unwrap();
    let mut params = Adapted::init(&model.encoder, method, 2, 1).unwrap();
    randomise(&mut params, &cpu, 3);
    let r = run(&model, method, head, &params, dropout);
    let enc = model.encode(&TEXTS, 32).unwrap();
    let ids: Vec<usize> = host(&enc.inputs.ids).iter().skip(1).map(|&x| x as usize).collect();
    let names: Vec<String> = params.params.names().map(String::from).collect();
    let h = 2e-3f32;
    for (ti, (tname, grad)) in r.grads.iter().enumerate() {
        assert_eq!(&names[ti], tname);
        let scale = grad.iter().fold(0.0f32, |a, &g| a.max(g.abs()));
        let n = grad.len();
        // Fixed spots, the largest gradient, and for an embedding table elements of rows the texts
        // use (chosen from the inputs, not the analytic gradient, so a missing gradient still fails).
        let largest = (0..n).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
        let mut picks: Vec<usize> = vec![0, n / 3, n / 2, (2 * n) / 3, n - 1, largest];
        if tname.ends_with("embeddings.weight") {
            let shape = params.params.tensors()[ti].shape().to_vec();
            let table = if tname.contains("word_") { &ids } else { &types_or_positions(tname, &enc) };
            for &row in table.iter().take(3) {
                picks.extend([row * shape[1], row * shape[1] + shape[1] / 2]);
            }
        }
        for &i in &picks {
            let at = |delta: f32| {
                let mut p = params.clone();
                let t = &mut p.params.tensors_mut()[ti];
                let mut v = host(t);
                v[i] += delta;
                *t = cpu.tensor(&v, t.shape()).unwrap();
                loss_only(&model, method, head, &p, dropout)
            };
            let num = (at(h) - at(-h)) / (2.0 * h as f64);
            let ana = grad[i] as f64;
            let tol = 2e-3 * scale as f64 + 2e-4;
            assert!(
                (num - ana).abs() <= tol,
                "{name} ({head:?}): {tname}[{i}]: finite difference {num:.6}, analytic {ana:.6} (tolerance {tol:.1e})"
            );
        }
    }
}

#[test]
fn every_method_matches_finite_differences_pooler_head() {
    for (name, m) in smooth_methods() {
        check_method(name, &m, HeadKind::Pooler, None);
    }
}

#[test]
fn every_method_matches_finite_differences_mean_head() {
    for (name, m) in smooth_methods() {
        check_method(name, &m, HeadKind::Mean, None);
    }
}

#[test]
fn gradients_with_dropout_match_finite_differences() {
    // With a fixed seed the masks are fixed, so the loss is a smooth function of the parameters.
    let d = Dropout { seed: 11, step: 5, hidden: 0.2, attention: 0.2, lora: 0.3 };
    let lora =
        Method::Lora(LoraConfig { r: 2, alpha: 4.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.3 });
    check_method("lora with dropout", &lora, HeadKind::Pooler, Some(&d));
    check_method("prefix with dropout", &Method::Prefix(PrefixConfig { length: 2 }), HeadKind::Mean, Some(&d));
    check_method("bitfit with dropout", &Method::Bitfit(BitfitConfig {}), HeadKind::Pooler, Some(&d));
    check_method("full with dropout", &Method::Full(FullConfig {}), HeadKind::Pooler, Some(&d));
    // ScaLearn's dropout on ω (0.3 by default) is on whenever a step has dropout.
    for (name, m) in smooth_methods().into_iter().filter(|(n, _)| n.starts_with("scalearn")) {
        check_method(&format!("{name} with dropout on ω"), &m, HeadKind::Mean, Some(&d));
    }
}

#[test]
fn gpu_matches_cpu_for_every_method() {
    let Some(gpu) = gpu() else { return };
    let d = Dropout { seed: 3, step: 1, hidden: 0.1, attention: 0.1, lora: 0.1 };
    for (name, m) in methods() {
        for head in [HeadKind::Pooler, HeadKind::Mean] {
            let mut r = vec![];
            for dev in [Device::Cpu, gpu.clone()] {
                let model = tiny_model(&dev, 7).unwrap();
                let mut params = Adapted::init(&model.encoder, &m, 2, 1).unwrap();
                randomise(&mut params, &dev, 3);
                r.push(run(&model, &m, head, &params, Some(&d)));
            }
            let what = format!("{name} {head:?}");
            assert_close(&format!("{what} logits"), &r[1].logits, &r[0].logits, 1e-5, 1e-4);
            assert!((r[1].loss - r[0].loss).abs() < 1e-5, "{what}: loss {} vs {}", r[1].loss, r[0].loss);
            for ((n, g), (_, c)) in r[1].grads.iter().zip(&r[0].grads) {
                let scale = c.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
                assert_close(&format!("{what} grad {n}"), g, c, 1e-5 + 1e-4 * scale, 1e-3);
            }
        }
    }
}

#[test]
fn fresh_adapters_leave_the_model_unchanged() {
    // PEFT's initialisations make a new adapter the identity: LoRA B = 0, (IA)³ = 1, adapter up = 0.
    let cpu = Device::Cpu;
    let model = tiny_model(&cpu, 7).unwrap();
    let head_only = Adapted::init(&model.encoder, &Method::Head(HeadOnly {}), 2, 1).unwrap();
    let base = run(&model, &Method::Head(HeadOnly {}), HeadKind::Pooler, &head_only, None).logits;
    for (name, m) in methods() {
        if matches!(m, Method::Prefix(_) | Method::Mam(_)) || m.scalearn().is_some() {
            continue; // prefix rows change attention from the start; ScaLearn starts from its sources
        }
        let p = Adapted::init(&model.encoder, &m, 2, 1).unwrap();
        let got = run(&model, &m, HeadKind::Pooler, &p, None).logits;
        assert_close(name, &got, &base, 1e-6, 1e-6);
    }
}
