//! Attention masks beyond the key mask: a full (B, Tq, Tk) mask and causal masking (with keys in
//! front of the queries, as prefix rows or a cache put them), against attention written out here in
//! f64, and the GPU against the CPU on shapes that are not multiples of the workgroup size.

mod common;

use common::*;
use localtune::ops::{self, AttnMask};
use localtune::Device;

/// softmax(q kᵀ / √D + mask) v per batch and head, in f64. `allowed(b, i, j)` gives the mask.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, tq, tk, h, d): (usize, usize, usize, usize, usize),
    add: &dyn Fn(usize, usize, usize) -> f64,
) -> Vec<f32> {
    let c = h * d;
    let mut out = vec![0.0f32; b * tq * c];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..tq {
                let s: Vec<f64> = (0..tk)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|e| {
                                q[(bi * tq + i) * c + hi * d + e] as f64 * k[(bi * tk + j) * c + hi * d + e] as f64
                            })
                            .sum();
                        dot / (d as f64).sqrt() + add(bi, i, j)
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for dd in 0..d {
                    let o: f64 = (0..tk).map(|j| e[j] / z * v[(bi * tk + j) * c + hi * d + dd] as f64).sum();
                    out[(bi * tq + i) * c + hi * d + dd] = o as f32;
                }
            }
        }
    }
    out
}

fn shapes() -> Vec<(usize, usize, usize, usize, usize)> {
    vec![(1, 1, 1, 1, 1), (2, 7, 7, 3, 5), (2, 5, 9, 2, 4), (1, 33, 40, 4, 8)]
}

#[test]
fn full_and_causal_masks_match_the_formula() {
    let cpu = Device::Cpu;
    let mut rng = Rng(3);
    for (b, tq, tk, h, d) in shapes() {
        let c = h * d;
        let (q, k, v) = (rng.vec(b * tq * c, 1.0), rng.vec(b * tk * c, 1.0), rng.vec(b * tk * c, 1.0));
        let keys: Vec<f32> = (0..b * tk).map(|i| if i % tk == tk - 1 && tk > 1 { -1e30 } else { 0.0 }).collect();
        let full: Vec<f32> =
            (0..b * tq * tk).map(|i| if (i * 7) % 5 == 0 && i % tk != 0 { -1e30 } else { 0.0 }).collect();
        let qt = cpu.tensor(&q, &[b, tq, c]).unwrap();
        let kt = cpu.tensor(&k, &[b, tk, c]).unwrap();
        let vt = cpu.tensor(&v, &[b, tk, c]).unwrap();
        let dims = (b, tq, tk, h, d);
        let what = format!("b{b} tq{tq} tk{tk} h{h} d{d}");
        // Full mask.
        let ft = cpu.tensor(&full, &[b, tq, tk]).unwrap();
        let (o, _) = ops::attention_masked(&qt, &kt, &vt, AttnMask::Full(&ft), h, None).unwrap();
        let want = reference(&q, &k, &v, dims, &|bi, i, j| full[(bi * tq + i) * tk + j] as f64);
        assert_close(&format!("full {what}"), &host(&o), &want, 1e-5, 1e-4);
        // Causal, with the keys in front of the queries always visible, and a key mask on top.
        let off = tk - tq;
        let causal = |bi: usize, i: usize, j: usize| if j > i + off { -1e30 } else { keys[bi * tk + j] as f64 };
        let kmt = cpu.tensor(&keys, &[b, tk]).unwrap();
        let (o, p) = ops::attention_masked(&qt, &kt, &vt, AttnMask::Causal(Some(&kmt)), h, None).unwrap();
        let want = reference(&q, &k, &v, dims, &causal);
        assert_close(&format!("causal {what}"), &host(&o), &want, 1e-5, 1e-4);
        // No probability reaches a key after the query's position.
        let probs = host(&p);
        for (r, row) in probs.chunks(tk).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if j > r % tq + off {
                    assert_eq!(x, 0.0, "{what}: row {r} attends to future key {j}");
                }
            }
        }
        // The same causal mask written out as a full mask gives the same result.
        let as_full: Vec<f32> = (0..b * tq * tk)
            .map(|x| {
                let (bi, i, j) = (x / (tq * tk), (x / tk) % tq, x % tk);
                causal(bi, i, j) as f32
            })
            .collect();
        let aft = cpu.tensor(&as_full, &[b, tq, tk]).unwrap();
        let (o2, _) = ops::attention_masked(&qt, &kt, &vt, AttnMask::Full(&aft), h, None).unwrap();
        assert_close(&format!("causal as full {what}"), &host(&o2), &host(&o), 1e-6, 1e-6);
    }
}

#[test]
fn gpu_masks_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(4);
    for (b, tq, tk, h, d) in shapes() {
        let c = h * d;
        let (q, k, v) = (rng.vec(b * tq * c, 1.0), rng.vec(b * tk * c, 1.0), rng.vec(b * tk * c, 1.0));
        let full: Vec<f32> = (0..b * tq * tk).map(|i| if i % 3 == 1 { -1e30 } else { 0.0 }).collect();
        let keys: Vec<f32> = (0..b * tk).map(|i| if i % tk == 1 { -1e30 } else { 0.0 }).collect();
        let run = |dev: &Device, which: u8| {
            let qt = dev.tensor(&q, &[b, tq, c]).unwrap();
            let kt = dev.tensor(&k, &[b, tk, c]).unwrap();
            let vt = dev.tensor(&v, &[b, tk, c]).unwrap();
            let ft = dev.tensor(&full, &[b, tq, tk]).unwrap();
            let kmt = dev.tensor(&keys, &[b, tk]).unwrap();
            let mask = match which {
                0 => AttnMask::Full(&ft),
                1 => AttnMask::Causal(None),
                _ => AttnMask::Causal(Some(&kmt)),
            };
            let (o, p) = ops::attention_masked(&qt, &kt, &vt, mask, h, None).unwrap();
            (host(&o), host(&p))
        };
        for which in 0..3u8 {
            let (oc, pc) = run(&Device::Cpu, which);
            let (og, pg) = run(&gpu, which);
            let what = format!("mask {which} b{b} tq{tq} tk{tk} h{h} d{d}");
            assert_close(&format!("{what} probs"), &pg, &pc, 1e-6, 1e-4);
            assert_close(&format!("{what} out"), &og, &oc, 1e-5, 1e-4);
        }
    }
}

#[test]
fn bad_masks_are_refused_by_shape() {
    let cpu = Device::Cpu;
    let q = cpu.tensor(&[0.0; 2 * 3 * 4], &[2, 3, 4]).unwrap();
    let k = cpu.tensor(&[0.0; 2 * 2 * 4], &[2, 2, 4]).unwrap();
    let m = cpu.tensor(&[0.0; 2 * 3], &[2, 3]).unwrap();
    let e = ops::attention_masked(&q, &q, &q, AttnMask::Full(&m), 2, None).unwrap_err().to_string();
    assert!(e.contains("(B, Tq, Tk)"), "{e}");
    let e = ops::attention_masked(&q, &k, &k, AttnMask::Causal(None), 2, None).unwrap_err().to_string();
    assert!(e.contains("Tq 3 ≤ Tk 2"), "{e}");
}
