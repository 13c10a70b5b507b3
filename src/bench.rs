//! Benchmarks that print figures (`localtune bench …`). Each measures every device in one run so
//! the figures can be read as ratios on a shared, noisy machine.

use serde::Serialize;
use web_time::Instant;

use crate::error::Result;
use crate::ops::{self, MatmulDesc, MatmulKernel};
use crate::tensor::Device;

/// One measured matmul configuration.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulResult {
    pub kernel: &'static str,
    pub device: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gflops: f64,
    pub ms: f64,
    pub reps: usize,
}

/// The shapes `bench matmul` measures: square sizes and BERT-layer shapes (tokens × in × out).
pub const MATMUL_SHAPES: &[(usize, usize, usize)] = &[
    (1024, 1024, 1024),
    (512, 512, 512),
    (256, 256, 256),
    (128, 1536, 384), // FFN up-projection, 128 tokens
    (128, 384, 1536), // FFN down-projection
    (512, 384, 384),  // attention projection, batch 8 × 64 tokens
];

/// The CPU this benchmark ran on and the vector features it has (figures from one machine say
/// nothing about another: AVX-512 on some, only AVX2 on others).
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    #[cfg(target_arch = "x86_64")]
    let features = {
        let mut f = vec![];
        macro_rules! probe {
            ($($name:tt),*) => { $(if std::arch::is_x86_feature_detected!($name) { f.push($name); })* };
        }
        probe!("sse4.1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl");
        f.join(" ")
    };
    #[cfg(not(target_arch = "x86_64"))]
    let features = std::env::consts::ARCH.to_string();
    format!("{model}; {} threads; features: {features}", crate::cpu::threads())
}

/// Repeats `f` until `budget_s` seconds have passed (at least once, after one warm-up call),
/// returning (seconds per call, calls).
pub fn time_it(budget_s: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    f()?; // warm-up: pipeline compilation, pool fill
    let start = Instant::now();
    let mut reps = 0;
    loop {
        f()?;
        reps += 1;
        let el = start.elapsed().as_secs_f64();
        if el >= budget_s || reps >= 1000 {
            return Ok((el / reps as f64, reps));
        }
    }
}

/// Measures C = A·B for each shape on the CPU and, when `gpu` is given, with the naive and the tiled
/// GPU kernels. `budget_s` bounds the time spent per configuration (after one warm-up call).
pub fn matmul(
    gpu: Option<&Device>,
    shapes: &[(usize, usize, usize)],
    budget_s: f64,
    mut report: impl FnMut(&MatmulResult),
) -> Result<Vec<MatmulResult>> {
    let mut out = vec![];
    for &(m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let desc = MatmulDesc::contiguous(1, m, n, k, false, false);
        let flops = 2.0 * (m * n * k) as f64;
        let mut devices: Vec<(&'static str, Device, Option<MatmulKernel>)> = vec![("cpu", Device::Cpu, None)];
        if let Some(g) = gpu {
            devices.push(("naive", g.clone(), Some(MatmulKernel::Naive)));
            devices.push(("tiled", g.clone(), Some(MatmulKernel::Tiled)));
        }
        for (kernel, dev, which) in devices {
            let ta = dev.tensor(&a, &[m, k])?;
            let tb = dev.tensor(&b, &[k, n])?;
            let mut tc = dev.zeros(&[m, n])?;
            let (secs, reps) = time_it(budget_s, || {
                match (&dev, which) {
                    (Device::Gpu(g), Some(kind)) => {
                        ops::matmul_into_with(&mut tc, &ta, &tb, None, &desc, kind)?;
                        g.synchronize()?;
                    }
                    _ => ops::matmul_into(&mut tc, &ta, &tb, None, &desc)?,
                }
                Ok(())
            })?;
            let r = MatmulResult {
                kernel,
                device: dev.describe(),
                m,
                n,
                k,
                gflops: flops / secs / 1e9,
                ms: secs * 1e3,
                reps,
            };
            report(&r);
            out.push(r);
        }
    }
    Ok(out)
}

/// One measured forward configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardResult {
    pub device: String,
    pub batch: usize,
    pub tokens: usize,
    pub sentences_per_s: f64,
    pub ms_per_batch: f64,
    pub reps: usize,
    /// GPU only: bytes held by the weights.
    pub weight_bytes: Option<u64>,
    /// GPU only: peak bytes of activations during one forward (above the weights).
    pub activation_bytes: Option<u64>,
}

/// Synthetic inputs of exactly `tokens` tokens per sentence: [CLS] w… [SEP], no padding.
pub fn synthetic_ids(model: &crate::model::Model, batch: usize, tokens: usize) -> Vec<u32> {
    let tok = &model.tokenizer;
    let vocab = tok.vocab_size() as u32;
    let mut ids = Vec::with_capacity(batch * tokens);
    for b in 0..batch {
        ids.push(tok.cls_id());
        for t in 1..tokens.saturating_sub(1) {
            // ids from the ordinary word range (after the specials and unused tokens of BERT vocabularies)
            ids.push(2000 + ((b * 7919 + t * 104_729) as u32 % (vocab - 2000)));
        }
        ids.push(tok.sep_id());
    }
    ids
}

/// Sentences/s of the sentence-embedding forward (tokens in, normalised embeddings read back) for
/// each (batch, tokens) shape.
pub fn forward(model: &crate::model::Model, shapes: &[(usize, usize)], budget_s: f64) -> Result<Vec<ForwardResult>> {
    use crate::model::{Inputs, Mode};
    let dev = &model.encoder.device;
    let mut out = vec![];
    for &(batch, tokens) in shapes {
        let ids = synthetic_ids(model, batch, tokens);
        let ones = vec![1u32; ids.len()];
        let zeros = vec![0u32; ids.len()];
        let run = || -> Result<()> {
            let inputs = Inputs::new(dev, &ids, &ones, &zeros, batch, tokens)?;
            let o = model.encoder.forward(&inputs, Mode::Inference, false)?;
            let e = model.encoder.sentence_embedding(&o.hidden, &inputs)?;
            futures::executor::block_on(e.to_vec())?;
            Ok(())
        };
        let mut memory = (None, None);
        if let Device::Gpu(g) = dev {
            run()?; // fill the pool
            g.trim();
            g.reset_peak();
            let before = g.memory();
            run()?;
            let after = g.memory();
            memory = (Some(before.weight_bytes), Some(after.peak_bytes - before.live_bytes));
        }
        let (secs, reps) = time_it(budget_s, run)?;
        out.push(ForwardResult {
            device: dev.describe(),
            batch,
            tokens,
            sentences_per_s: batch as f64 / secs,
            ms_per_batch: secs * 1e3,
            reps,
            weight_bytes: memory.0,
            activation_bytes: memory.1,
        });
    }
    Ok(out)
}

/// One measured training configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TrainResult {
    pub method: String,
    pub device: String,
    pub batch: usize,
    pub tokens: usize,
    pub examples_per_s: f64,
    pub ms_per_step: f64,
    pub reps: usize,
    pub trainable: usize,
    /// Peak bytes above the loaded model during a step: activations, gradients, optimiser state.
    pub peak_bytes: Option<u64>,
}

/// Reads peak memory: `reset` starts a measurement, `peak` returns the bytes above the level at reset.
pub trait MemoryProbe {
    fn reset(&self);
    fn peak(&self) -> u64;
}

/// The GPU pool's figures as a probe.
pub struct GpuProbe(pub crate::gpu::Gpu);

impl MemoryProbe for GpuProbe {
    fn reset(&self) {
        self.0.reset_peak();
    }
    fn peak(&self) -> u64 {
        let m = self.0.memory();
        m.peak_bytes.saturating_sub(m.weight_bytes)
    }
}

/// Examples/s of full training steps (forward, backward, optimiser) at `batch` × `tokens` for each method.
pub fn train(
    model: &std::rc::Rc<crate::model::Model>,
    methods: &[crate::peft::Method],
    batch: usize,
    tokens: usize,
    budget_s: f64,
    probe: Option<&dyn MemoryProbe>,
) -> Result<Vec<TrainResult>> {
    use crate::peft::HeadKind;
    use crate::train::{Examples, OptimConfig, TrainConfig, Trainer};
    // Texts of exactly `tokens` tokens: [CLS] "the" × (tokens − 2) [SEP].
    let text = vec!["the"; tokens - 2].join(" ");
    let n = batch * 64;
    let data = Examples { texts: vec![text; n], labels: (0..n as u32).map(|i| i % 2).collect() };
    let mut out = vec![];
    for m in methods {
        let cfg = TrainConfig {
            method: m.clone(),
            head: HeadKind::Pooler,
            epochs: 1000,
            batch_size: batch,
            grad_accum: 1,
            max_len: tokens,
            seed: 0,
            optim: OptimConfig::default(),
            dropout: true,
        };
        let mut t = Trainer::new(model.clone(), cfg, vec!["a".into(), "b".into()], data.clone(), Examples::default())?;
        futures::executor::block_on(t.step())?; // warm-up
        let mut peak = None;
        if let Some(p) = probe {
            p.reset();
            futures::executor::block_on(t.step())?;
            peak = Some(p.peak());
        }
        let (secs, reps) = time_it(budget_s, || futures::executor::block_on(t.step()).map(|_| ()))?;
        out.push(TrainResult {
            method: match m.scalearn() {
                Some(c) => format!("{}@{}", m.name(), c.sources.len()),
                None => m.name().to_string(),
            },
            device: model.encoder.device.describe(),
            batch,
            tokens,
            examples_per_s: batch as f64 / secs,
            ms_per_step: secs * 1e3,
            reps,
            trainable: t.params.count(),
            peak_bytes: peak,
        });
    }
    Ok(out)
}
