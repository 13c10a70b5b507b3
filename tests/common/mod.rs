//! Shared test helpers: device acquisition, seeded random data, tolerant comparison.
#![allow(dead_code)]

use localtune::{Device, Tensor};

/// The GPU device, or None (with a note) when this machine has no adapter. Under CI (CI set)
/// "no adapter" fails the test: CI installs lavapipe so the GPU path is always exercised.
pub fn gpu() -> Option<Device> {
    static GPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    match GPU.get_or_init(|| futures::executor::block_on(Device::gpu()).map_err(|e| e.to_string())) {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and there is no GPU adapter: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// A small deterministic generator (SplitMix64) for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.uniform() * scale) as f32).collect()
    }
    pub fn vec64(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Asserts |a - b| <= atol + rtol |b| elementwise, naming the first bad index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        // Written so that a NaN fails too.
        let within = err <= atol + rtol * w.abs();
        if !within {
            panic!("{what}: first bad index {i}: got {g}, want {w} (|diff| {err}, atol {atol}, rtol {rtol})");
        }
        worst = worst.max(err);
    }
    let _ = worst;
}

pub fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_blocking().unwrap()
}

/// The default model folder (LOCALTUNE_MODEL or .cache/models/all-MiniLM-L6-v2), or None with a note
/// when it is missing; under CI a missing model fails the test.
pub fn model_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("LOCALTUNE_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the model is missing at {}: run scripts/fetch-assets.sh", dir.display());
    }
    eprintln!("skipping: no model at {} (run scripts/fetch-assets.sh)", dir.display());
    None
}

/// Both devices: the CPU, and the GPU when there is one.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

/// Reads an I64 tensor of a fixture as u32.
pub fn fixture_ids(st: &safetensors::SafeTensors, name: &str) -> Vec<u32> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), safetensors::Dtype::I64, "{name}");
    v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

/// Reads an F32 tensor of a fixture.
pub fn fixture_f32(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The example data folder (LOCALTUNE_DATA or .cache/data/sentiment), or None with a note when
/// missing; under CI a missing folder fails the test.
pub fn data_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("LOCALTUNE_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/data/sentiment"));
    if dir.join("yelp.jsonl").exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the example data is missing at {}: run scripts/fetch-assets.sh", dir.display());
    }
    eprintln!("skipping: no example data at {} (run scripts/fetch-assets.sh)", dir.display());
    None
}

/// The SmolLM2 GGUF (LOCALTUNE_LLM or .cache/models/smollm2/…), or None with a note when it is missing;
/// under CI a missing file fails the test.
pub fn llm_file() -> Option<std::path::PathBuf> {
    let f = std::env::var_os("LOCALTUNE_LLM").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if f.exists() {
        return Some(f);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the GGUF model is missing at {}: run scripts/fetch-assets.sh", f.display());
    }
    eprintln!("skipping: no GGUF model at {} (run scripts/fetch-assets.sh)", f.display());
    None
}

/// Writes the tiny random BERT of `seed` (config.json, model.safetensors, tokenizer.json) into `dir`,
/// for tests that run the command line on a model.
pub fn write_tiny_model(dir: &std::path::Path, seed: u64) {
    let f = localtune::model::tiny::tiny_files(seed).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), &f.config_json).unwrap();
    std::fs::write(dir.join("model.safetensors"), &f.safetensors).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &f.tokenizer_json).unwrap();
}
