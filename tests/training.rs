//! Training end to end: the loss falls for every method (tiny model), a resumed run ends where the
//! uninterrupted one does, the GPU follows the CPU on the real model, and a diverging run stops with
//! an error while its last checkpoint stays usable.

mod common;

use common::*;
use localtune::model::tiny::tiny_model;
use localtune::model::Model;
use localtune::peft::{
    Activation, AdapterConfig, BitfitConfig, HeadKind, HeadOnly, Ia3Config, LoraConfig, MamConfig, Method,
    ParallelConfig, Placement, PrefixConfig, Target,
};
use localtune::train::trainer::CheckpointFiles;
use localtune::train::{Examples, OptimConfig, TrainConfig, Trainer};
use localtune::Device;

/// A small separable task for the tiny model's vocabulary.
fn toy_data() -> (Examples, Examples) {
    let pos = ["good", "great", "love", "excellent", "best"];
    let neg = ["bad", "awful", "hate", "terrible", "worst"];
    let things = ["movie", "food", "service", "place", "phone", "film"];
    let mut texts = vec![];
    let mut labels = vec![];
    for (i, thing) in things.iter().enumerate() {
        for j in 0..5 {
            texts.push(format!("the {thing} was really {}", pos[(i + j) % 5]));
            labels.push(1);
            texts.push(format!("this {thing} is {} !", neg[(i + 2 * j) % 5]));
            labels.push(0);
        }
    }
    let valid = Examples { texts: texts.split_off(48), labels: labels.split_off(48) };
    (Examples { texts, labels }, valid)
}

fn config(method: Method, lr: f32, epochs: usize) -> TrainConfig {
    TrainConfig {
        method,
        head: HeadKind::Pooler,
        epochs,
        batch_size: 8,
        grad_accum: 1,
        max_len: 32,
        seed: 1,
        optim: OptimConfig { lr, warmup_ratio: 0.1, ..OptimConfig::default() },
        dropout: true,
    }
}

fn labels() -> Vec<String> {
    vec!["negative".into(), "positive".into()]
}

fn run_all(t: &mut Trainer) {
    while !t.finished() {
        futures::executor::block_on(t.step()).unwrap();
    }
}

#[test]
fn the_loss_falls_for_every_method() {
    let a = AdapterConfig {
        reduction_factor: 2,
        activation: Activation::Relu,
        scaling: 1.0,
        placement: Placement::Houlsby,
    };
    let methods = [
        (
            Method::Lora(LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.05 }),
            1e-2,
        ),
        (Method::Ia3(Ia3Config {}), 5e-2),
        (Method::Adapter(a.clone()), 1e-2),
        (
            Method::ParallelAdapter(ParallelConfig { reduction_factor: 2, activation: Activation::Relu, scaling: 4.0 }),
            1e-2,
        ),
        (Method::Adapter(AdapterConfig { placement: Placement::Pfeiffer, ..a.clone() }), 1e-2),
        (Method::Prefix(PrefixConfig { length: 4 }), 5e-2),
        (
            Method::Mam(MamConfig {
                prefix_length: 4,
                adapter: ParallelConfig { reduction_factor: 2, activation: Activation::Relu, scaling: 4.0 },
            }),
            1e-2,
        ),
        (Method::Bitfit(BitfitConfig {}), 1e-2),
        (Method::Head(HeadOnly {}), 5e-2),
    ];
    let mut devs = vec![Device::Cpu];
    devs.extend(gpu());
    for dev in devs {
        let model = std::rc::Rc::new(tiny_model(&dev, 3).unwrap());
        for (m, lr) in methods.iter().cloned() {
            let (train, valid) = toy_data();
            let mut t = Trainer::new(model.clone(), config(m.clone(), lr, 6), labels(), train, valid).unwrap();
            run_all(&mut t);
            let h = &t.state.history;
            let (first, last) = (h[0].train_loss, h[h.len() - 1].train_loss);
            assert!(last < first * 0.8, "{} on {}: train loss {first:.4} -> {last:.4}", m.name(), dev.describe());
        }
    }
}

#[test]
fn a_resumed_run_ends_where_the_uninterrupted_one_does() {
    let cpu = Device::Cpu;
    let model = std::rc::Rc::new(tiny_model(&cpu, 3).unwrap());
    let method = Method::Lora(LoraConfig {
        r: 2,
        alpha: 4.0,
        rslora: false,
        targets: vec![Target::Query, Target::Value],
        dropout: 0.1,
    });
    let (train, valid) = toy_data();
    let mut cfg = config(method, 1e-2, 3);
    cfg.grad_accum = 2;
    let mut full = Trainer::new(model.clone(), cfg.clone(), labels(), train.clone(), valid.clone()).unwrap();
    run_all(&mut full);

    // Stop after 7 micro-steps (mid-epoch, mid-accumulation is avoided by checkpointing after an
    // optimiser step: step 8), save, drop everything, resume from the files.
    let dir = std::env::temp_dir().join(format!("localtune-resume-{}", std::process::id()));
    let mut part = Trainer::new(model.clone(), cfg.clone(), labels(), train.clone(), valid.clone()).unwrap();
    for _ in 0..8 {
        futures::executor::block_on(part.step()).unwrap();
    }
    let files = futures::executor::block_on(part.checkpoint_files("tiny")).unwrap();
    localtune::train::trainer::save_checkpoint(&dir, &files).unwrap();
    drop(part);
    let mut resumed =
        Trainer::resume(model.clone(), &CheckpointFiles::load(&dir).unwrap(), train.clone(), valid.clone(), Some(&cfg))
            .unwrap();
    run_all(&mut resumed);
    assert_eq!(resumed.state.losses, full.state.losses, "per-step losses");
    assert_eq!(resumed.state.history, full.state.history);
    for ((n, a), (_, b)) in resumed.params.params.iter().zip(full.params.params.iter()) {
        assert_eq!(host(a), host(b), "{n}");
    }
    // Other data is refused.
    let mut other = train.clone();
    other.labels[0] = 1 - other.labels[0];
    let e = Trainer::resume(model.clone(), &CheckpointFiles::load(&dir).unwrap(), other, valid.clone(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("other data"), "{e}");
    // Other settings are refused, each named (they were silently ignored).
    let mut asked = cfg.clone();
    asked.optim.lr = 2e-2;
    asked.epochs = 5;
    if let Method::Lora(l) = &mut asked.method {
        l.r = 4;
    }
    let ck = CheckpointFiles::load(&dir).unwrap();
    let e = Trainer::resume(model.clone(), &ck, train.clone(), valid.clone(), Some(&asked)).err().unwrap().to_string();
    assert!(e.contains("--epochs 3 (asked: 5)") && e.contains("--lr 0.01 (asked: 0.02)"), "{e}");
    assert!(e.contains("lora `r` 2 (asked: 4)"), "{e}");
    let mut asked = cfg.clone();
    asked.method = Method::Ia3(Ia3Config {});
    let e = Trainer::resume(model.clone(), &ck, train.clone(), valid.clone(), Some(&asked)).err().unwrap().to_string();
    assert!(e.contains("--method lora (asked: ia3)"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gpu_losses_follow_the_cpu_on_the_real_model() {
    // LoRA r=8 alpha=16 on query,value, batch 16 × max-len 64, dropout on: the first steps' losses
    // on both devices agree within 1e-3.
    let Some(dir) = model_dir() else { return };
    let Some(gpu) = gpu() else { return };
    let Some(data) = data_dir() else { return };
    let ds = localtune::train::Dataset::load(&data.join("yelp.jsonl"), false).unwrap();
    let (tr, va) = ds.split(0.2, 0).unwrap();
    let labels = tr.labels();
    let train = Examples::from_dataset(&tr, &labels).unwrap();
    let valid = Examples::from_dataset(&va, &labels).unwrap();
    let method = Method::Lora(LoraConfig::new(8, 16.0, &[Target::Query, Target::Value]));
    let cfg = TrainConfig {
        method,
        head: HeadKind::Pooler,
        epochs: 1,
        batch_size: 16,
        grad_accum: 1,
        max_len: 64,
        seed: 0,
        optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
        dropout: true,
    };
    let mut losses = vec![];
    for dev in [Device::Cpu, gpu] {
        let model = std::rc::Rc::new(Model::load(&dir, &dev).unwrap());
        let mut t = Trainer::new(model.clone(), cfg.clone(), labels.clone(), train.clone(), valid.clone()).unwrap();
        let l: Vec<f32> = (0..3).map(|_| futures::executor::block_on(t.step()).unwrap().loss).collect();
        losses.push(l);
    }
    eprintln!("cpu losses {:?}\ngpu losses {:?}", losses[0], losses[1]);
    for (c, g) in losses[0].iter().zip(&losses[1]) {
        assert!((c - g).abs() <= 1e-3, "cpu {c} vs gpu {g}");
    }
}

#[test]
fn an_absurd_learning_rate_is_refused_before_any_work() {
    let dir = std::env::temp_dir().join(format!("localtune-absurd-lr-{}", std::process::id()));
    let model_dir = dir.join("model");
    write_tiny_model(&model_dir, 3);
    std::fs::write(dir.join("d.csv"), "text,label\ngood,pos\nbad,neg\nfine,pos\npoor,neg\n").unwrap();
    // 1e9 ended "successfully" with a loss of 1.86e9; 3e38 made weights of 1e38; 1e39 is infinity.
    for lr in ["1e9", "3e38", "1e39", "1.5"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_localtune"))
            .args(["train", "--model", model_dir.to_str().unwrap(), "--data", dir.join("d.csv").to_str().unwrap()])
            .args(["--out", dir.join("out").to_str().unwrap(), "--device", "cpu", "--method", "head", "--lr", lr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--lr {lr}: {err}");
        assert!(err.contains("--lr") && err.contains("at most 1"), "--lr {lr}: {err}");
        assert!(!dir.join("out/adapter_model.safetensors").exists());
    }
    // The library refuses it too (the web app's runs do not pass through the command line).
    let model = std::rc::Rc::new(tiny_model(&Device::Cpu, 3).unwrap());
    let (train, valid) = toy_data();
    let e = Trainer::new(model, config(Method::Head(HeadOnly {}), 1e9, 1), labels(), train, valid).err().unwrap();
    assert!(e.to_string().contains("learning rate 1000000000: must be above 0 and at most 1"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A step whose update blew the weights up: the run stops at the next step, on the loss measured
/// against its start, and the checkpoint of the exploded weights is never written — the one left
/// on disk is the step before, which loads and is finite.
#[test]
fn an_exploding_run_stops_and_never_checkpoints_the_exploded_weights() {
    let cpu = Device::Cpu;
    let model = std::rc::Rc::new(tiny_model(&cpu, 3).unwrap());
    let (train, valid) = toy_data();
    let mut t = Trainer::new(model, config(Method::Head(HeadOnly {}), 1e-2, 2), labels(), train, valid).unwrap();
    let dir = std::env::temp_dir().join(format!("localtune-explode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut ck = localtune::train::trainer::Checkpointer::new(dir.clone(), Some(1), 0);
    let step = |t: &mut Trainer, ck: &mut localtune::train::trainer::Checkpointer| {
        let r = futures::executor::block_on(t.step()).map_err(|e| ck.failed(e));
        if r.is_ok() {
            ck.step_ok().unwrap();
        }
        r
    };
    step(&mut t, &mut ck).unwrap();
    assert!(ck.due(t.opt.step, t.finished()));
    ck.hold(futures::executor::block_on(t.checkpoint_files("tiny")).unwrap());
    assert!(!dir.exists(), "a checkpoint was written before a step vouched for its weights");
    step(&mut t, &mut ck).unwrap();
    assert!(dir.exists(), "step 2 ran on step 1's weights: step 1's checkpoint is written");
    let good = host(&t.params.params.tensors()[0]);
    // Step 2's update "explodes" (as Adam with an absurd learning rate did): every weight × 1e6.
    for tensor in t.params.params.tensors_mut() {
        let big: Vec<f32> = host(tensor).iter().map(|v| v * 1e6).collect();
        *tensor = cpu.tensor(&big, tensor.shape()).unwrap();
    }
    assert!(ck.due(t.opt.step, t.finished()));
    ck.hold(futures::executor::block_on(t.checkpoint_files("tiny")).unwrap());
    let e = step(&mut t, &mut ck).expect_err("the exploded loss must stop the run").to_string();
    assert!(e.contains("training diverged: the loss is") && e.contains("× its start"), "{e}");
    assert!(e.contains("at step 3") && e.contains("last good checkpoint"), "{e}");
    let files = CheckpointFiles::load(&dir).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&files.trainer_state).unwrap();
    assert_eq!(state["optimizer_step"], 1, "the checkpoint on disk is step 1's");
    let weights = localtune::model::weights::NamedTensors::from_bytes(&files.adapter_weights, "ck").unwrap();
    weights.check_finite("the checkpoint").unwrap();
    let biggest = weights.tensors.values().flat_map(|t| t.data.iter()).fold(0f32, |m, v| m.max(v.abs()));
    assert!(biggest < 100.0, "the checkpoint holds weights up to {biggest}");
    assert!(good.iter().all(|v| v.abs() < 100.0));
    // A step that fails otherwise (a lost device, a full disk) keeps the held checkpoint: its weights
    // came from a sane step, and dropping them would lose the work since the last one.
    let other = dir.with_extension("other");
    let mut ck = localtune::train::trainer::Checkpointer::new(other.clone(), Some(1), 0);
    ck.hold(futures::executor::block_on(t.checkpoint_files("tiny")).unwrap());
    let e = ck.failed(localtune::Error::invalid("the device was lost")).to_string();
    assert!(e.contains("the device was lost") && e.contains("last good checkpoint"), "{e}");
    assert!(CheckpointFiles::load(&other).is_ok());
    std::fs::remove_dir_all(&other).ok();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_training_step_allocates_no_gpu_buffers_once_warm() {
    // Same-shaped batches: after the first steps every buffer comes from the pool.
    if gpu().is_none() {
        return;
    }
    let dev = futures::executor::block_on(Device::gpu()).unwrap(); // a device of its own
    let Device::Gpu(g) = &dev else { unreachable!() };
    let model = std::rc::Rc::new(tiny_model(&dev, 3).unwrap());
    let text = "the movie was really good".to_string();
    let data = Examples { texts: vec![text; 32], labels: (0..32).map(|i| i % 2).collect() };
    let method = Method::Lora(LoraConfig {
        r: 2,
        alpha: 4.0,
        rslora: false,
        targets: vec![Target::Query, Target::Value],
        dropout: 0.1,
    });
    let mut t = Trainer::new(model, config(method, 1e-2, 2), labels(), data, Examples::default()).unwrap();
    for _ in 0..2 {
        futures::executor::block_on(t.step()).unwrap();
    }
    let warm = g.memory().allocations;
    for _ in 0..3 {
        futures::executor::block_on(t.step()).unwrap();
    }
    assert_eq!(g.memory().allocations, warm, "training steps allocated GPU buffers");
}

#[test]
fn a_short_last_accumulation_is_rescaled_to_a_full_mean() {
    // One micro-batch per epoch: with grad_accum 2 the epoch ends after half an accumulation. The
    // update must equal that of grad_accum 1 (same data, same seeds).
    let cpu = Device::Cpu;
    let model = std::rc::Rc::new(tiny_model(&cpu, 3).unwrap());
    let (train, _) = toy_data();
    let train = Examples { texts: train.texts[..8].to_vec(), labels: train.labels[..8].to_vec() };
    let method = Method::Lora(LoraConfig::new(2, 4.0, &[Target::Query]));
    let run = |accum: usize| {
        let mut cfg = config(method.clone(), 1e-2, 1);
        cfg.grad_accum = accum;
        let mut t = Trainer::new(model.clone(), cfg, labels(), train.clone(), Examples::default()).unwrap();
        run_all(&mut t);
        assert_eq!(t.opt.step, 1);
        t.params.params.iter().map(|(n, x)| (n.to_string(), host(x))).collect::<Vec<_>>()
    };
    let (a, b) = (run(1), run(2));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_close(n, y, x, 1e-7, 1e-6);
    }
}
