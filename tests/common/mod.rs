//! Shared test helpers: device acquisition, seeded random data, tolerant comparison.
#![allow(dead_code)]

use localtune::{Device, Tensor};

/// The GPU device, or None (with a note) when this machine has no adapter. Under CI (CI set)
/// "no adapter" fails the test: CI installs lavapipe so the GPU path is always exercised.
pub fn gpu() -> Option<Device> {
    static GPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    match GPU.get_or_init(|| futures::executor::block_on(Device::gpu()).map_err(|e| e.to_string()))
    {
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
        if !(err <= atol + rtol * w.abs()) {
            panic!("{what}: first bad index {i}: got {g}, want {w} (|diff| {err}, atol {atol}, rtol {rtol})");
        }
        worst = worst.max(err);
    }
    let _ = worst;
}

pub fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_blocking().unwrap()
}
