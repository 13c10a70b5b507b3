//! Finite-difference checks of every CPU backward, in f64.
//!
//! For an op y = f(x) and a random upstream gradient w, the scalar L = Σ w ⊙ f(x) has
//! dL/dx = backward(dy = w). Central differences (h = 1e-5) must agree with the analytic gradient to
//! |num - ana| <= 1e-7 + 1e-5 |num|. Composite ops (linear, attention) run on the f32 CPU device
//! and use a looser check.

mod common;

use common::Rng;
use localtune::cpu;
use localtune::ops::{self, MatmulDesc};
use localtune::Device;

const H: f64 = 1e-5;

/// Compares the analytic gradient with central differences of `loss` at every index of `x`.
fn check(name: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let fp = loss(&xp);
        xp[i] = x[i] - H;
        let fm = loss(&xp);
        xp[i] = x[i];
        let num = (fp - fm) / (2.0 * H);
        let err = (num - analytic[i]).abs();
        assert!(err <= 1e-7 + 1e-5 * num.abs(), "{name}: index {i}: finite difference {num}, analytic {}", analytic[i]);
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn matmul_gradients_all_transposes_and_batches() {
    let mut r = Rng(1);
    for &(batch, m, n, k) in &[(1, 1, 1, 1), (1, 3, 5, 4), (3, 7, 2, 5)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = r.vec64(batch * m * k, 1.0);
                let b = r.vec64(batch * k * n, 1.0);
                let w = r.vec64(batch * m * n, 1.0);
                let fwd = MatmulDesc::contiguous(batch, m, n, k, ta, tb);
                let f = |a: &[f64], b: &[f64]| {
                    let mut c = vec![0.0; batch * m * n];
                    cpu::matmul(&mut c, a, b, None, &fwd);
                    dot(&c, &w)
                };
                // dA: op(A) = dY op(B)ᵀ; stored A = transpose when trans_a.
                let mut da = vec![0.0; a.len()];
                let mut db = vec![0.0; b.len()];
                if ta {
                    // A stored (k, m): dA = op(B) dYᵀ  (k×n · n×m)
                    let d = MatmulDesc::contiguous(batch, k, m, n, tb, true);
                    cpu::matmul(&mut da, &b, &w, None, &d);
                } else {
                    // A stored (m, k): dA = dY op(B)ᵀ  (m×n · n×k)
                    let d = MatmulDesc::contiguous(batch, m, k, n, false, !tb);
                    cpu::matmul(&mut da, &w, &b, None, &d);
                }
                if tb {
                    // B stored (n, k): dB = dYᵀ op(A)  (n×m · m×k)
                    let d = MatmulDesc::contiguous(batch, n, k, m, true, ta);
                    cpu::matmul(&mut db, &w, &a, None, &d);
                } else {
                    // B stored (k, n): dB = op(A)ᵀ dY  (k×m · m×n)
                    let d = MatmulDesc::contiguous(batch, k, n, m, !ta, false);
                    cpu::matmul(&mut db, &a, &w, None, &d);
                }
                let name = format!("matmul b{batch} {m}x{n}x{k} ta={ta} tb={tb}");
                check(&format!("{name} dA"), &a, &da, |a| f(a, &b));
                check(&format!("{name} dB"), &b, &db, |b| f(&a, b));
            }
        }
    }
}

#[test]
fn matmul_bias_and_accumulate_follow_the_definition() {
    let mut r = Rng(2);
    let (m, n, k) = (4, 3, 5);
    let a = r.vec64(m * k, 1.0);
    let b = r.vec64(k * n, 1.0);
    let bias = r.vec64(n, 1.0);
    let c0 = r.vec64(m * n, 1.0);
    let mut d = MatmulDesc::contiguous(1, m, n, k, false, false);
    d.accumulate = true;
    d.alpha = 0.5;
    let mut c = c0.clone();
    cpu::matmul(&mut c, &a, &b, Some(&bias), &d);
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            let want = 0.5 * s + bias[j] + c0[i * n + j];
            assert!((c[i * n + j] - want).abs() < 1e-12, "({i},{j}): {} vs {want}", c[i * n + j]);
        }
    }
}

#[test]
fn layernorm_gradients() {
    let mut r = Rng(3);
    for &(rows, cols) in &[(1, 1), (1, 7), (3, 33)] {
        let x = r.vec64(rows * cols, 2.0);
        let gamma = r.vec64(cols, 1.0);
        let beta = r.vec64(cols, 1.0);
        let w = r.vec64(rows * cols, 1.0);
        let eps = 1e-5;
        let fwd = |x: &[f64], g: &[f64], b: &[f64]| {
            let mut y = vec![0.0; rows * cols];
            let (mut mu, mut rs) = (vec![0.0; rows], vec![0.0; rows]);
            cpu::layernorm_forward(&mut y, &mut mu, &mut rs, x, g, b, cols, eps);
            (y, mu, rs)
        };
        let (_, mu, rs) = fwd(&x, &gamma, &beta);
        let mut dx = vec![0.0; rows * cols];
        let mut dg = vec![0.0; cols];
        let mut db = vec![0.0; cols];
        cpu::layernorm_backward(&mut dx, Some(&mut dg), Some(&mut db), &w, &x, &mu, &rs, &gamma, cols, false);
        if cols > 1 {
            check("layernorm dx", &x, &dx, |x| dot(&fwd(x, &gamma, &beta).0, &w));
        }
        check("layernorm dgamma", &gamma, &dg, |g| dot(&fwd(&x, g, &beta).0, &w));
        check("layernorm dbeta", &beta, &db, |b| dot(&fwd(&x, &gamma, b).0, &w));
    }
}

#[test]
fn gelu_and_tanh_gradients() {
    let mut r = Rng(4);
    let x = r.vec64(257, 4.0);
    let w = r.vec64(257, 1.0);
    let mut dx = vec![0.0; 257];
    cpu::gelu_backward(&mut dx, &w, &x, false);
    check("gelu", &x, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        cpu::gelu_forward(&mut y, x);
        dot(&y, &w)
    });
    let mut y = vec![0.0; 257];
    cpu::tanh_forward(&mut y, &x);
    cpu::tanh_backward(&mut dx, &w, &y, false);
    check("tanh", &x, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        cpu::tanh_forward(&mut y, x);
        dot(&y, &w)
    });
}

#[test]
fn gelu_matches_reference_values() {
    // GELU(x) = x Φ(x); Φ(1) = 0.8413447460685429, Φ(-2) = 0.022750131948179195
    assert!((cpu::gelu(1.0f64) - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((cpu::gelu(-2.0f64) - (-2.0 * 0.022_750_131_948_179_195)).abs() < 1e-15);
}

#[test]
fn softmax_gradients_with_mask_and_scale() {
    let mut r = Rng(5);
    let (groups, per, len) = (2, 3, 7);
    let rows = groups * per;
    let x = r.vec64(rows * len, 3.0);
    let mut mask = vec![0.0; groups * len];
    mask[len - 1] = -1e30; // drop the last key of group 0
    mask[len + 2] = -1e30; // and the third of group 1
    let w = r.vec64(rows * len, 1.0);
    let scale = 0.37;
    let fwd = |x: &[f64]| {
        let mut y = vec![0.0; rows * len];
        cpu::softmax_forward(&mut y, x, Some((&mask, per)), len, scale as f32);
        y
    };
    let y = fwd(&x);
    for r in 0..rows {
        let s: f64 = y[r * len..(r + 1) * len].iter().sum();
        assert!((s - 1.0).abs() < 1e-12);
    }
    assert_eq!(y[len - 1], 0.0, "masked key must get zero probability");
    let mut dx = vec![0.0; rows * len];
    cpu::softmax_backward(&mut dx, &w, &y, len, scale as f32);
    check("softmax", &x, &dx, |x| dot(&fwd(x), &w));
}

#[test]
fn embedding_gradient() {
    let mut r = Rng(6);
    let (vocab, cols) = (11, 5);
    let ids: Vec<u32> = vec![3, 0, 3, 10, 7, 3];
    let table = r.vec64(vocab * cols, 1.0);
    let w = r.vec64(ids.len() * cols, 1.0);
    let mut dt = vec![0.0; vocab * cols];
    cpu::embedding_backward(&mut dt, &w, &ids, cols);
    check("embedding", &table, &dt, |t| {
        let mut y = vec![0.0; ids.len() * cols];
        cpu::embedding_forward(&mut y, &ids, t, cols);
        dot(&y, &w)
    });
}

#[test]
fn pooling_gradients() {
    let mut r = Rng(7);
    let (b, t, c) = (3, 5, 4);
    let x = r.vec64(b * t * c, 1.0);
    let mask: Vec<f64> = (0..b * t).map(|i| if i % t < 2 + i / t { 1.0 } else { 0.0 }).collect();
    let w = r.vec64(b * c, 1.0);
    let mut dx = vec![0.0; b * t * c];
    cpu::mean_pool_backward(&mut dx, &w, &mask, t, c);
    check("mean_pool", &x, &dx, |x| {
        let mut y = vec![0.0; b * c];
        cpu::mean_pool_forward(&mut y, x, &mask, t, c);
        dot(&y, &w)
    });

    let x = r.vec64(b * c, 1.0);
    let mut dx = vec![0.0; b * c];
    cpu::l2norm_backward(&mut dx, &w, &x, c);
    check("l2_normalize", &x, &dx, |x| {
        let mut y = vec![0.0; b * c];
        cpu::l2norm_forward(&mut y, x, c);
        dot(&y, &w)
    });
}

#[test]
fn crossentropy_gradient() {
    let mut r = Rng(8);
    let (b, k) = (4, 3);
    let logits = r.vec64(b * k, 3.0);
    let labels = vec![0u32, 2, 1, 2];
    let grad_scale = 1.0 / b as f64;
    let mut loss = vec![0.0; b];
    let mut dl = vec![0.0; b * k];
    cpu::crossentropy(&mut loss, &mut dl, &logits, &labels, k, grad_scale as f32);
    check("crossentropy", &logits, &dl, |z| {
        let mut l = vec![0.0; b];
        let mut d = vec![0.0; b * k];
        cpu::crossentropy(&mut l, &mut d, z, &labels, k, 1.0);
        l.iter().sum::<f64>() * grad_scale
    });
}

#[test]
fn bias_gradient_is_sum_over_rows() {
    let mut r = Rng(9);
    let (rows, cols) = (5, 3);
    let x = r.vec64(rows * cols, 1.0);
    let bias = r.vec64(cols, 1.0);
    let w = r.vec64(rows * cols, 1.0);
    let mut db = vec![0.0; cols];
    cpu::sum_rows(&mut db, &w, cols, false);
    check("bias add", &bias, &db, |bv| {
        let mut y = vec![0.0; rows * cols];
        cpu::add(&mut y, &x, bv, 1.0, false);
        dot(&y, &w)
    });
}

#[test]
fn adamw_matches_torch_formula_with_clipping() {
    // torch.optim.AdamW step t, written out in f64, after clip_grad_norm_(max_norm).
    let mut r = Rng(10);
    let n = 9;
    let p0 = r.vec(n, 1.0);
    let g = r.vec(n, 3.0);
    let norm_sq: f32 = g.iter().map(|v| v * v).sum();
    let (lr, b1, b2, eps, wd, max_norm) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32, 1.0f32);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.1f32; n], vec![0.2f32; n]);
    let t = 3;
    let h = localtune::desc::AdamWStep::new(lr, b1, b2, eps, wd, max_norm, t);
    cpu::adamw(&mut p, &mut m, &mut v, &g, norm_sq, &h);
    let clip = (max_norm as f64 / ((norm_sq as f64).sqrt() + 1e-6)).min(1.0);
    assert!(clip < 1.0, "the test gradient should be clipped");
    for i in 0..n {
        let gi = g[i] as f64 * clip;
        let mi = 0.9 * 0.1 + 0.1 * gi;
        let vi = 0.999 * 0.2 + 0.001 * gi * gi;
        let mhat = mi / (1.0 - 0.9f64.powi(t as i32));
        let vhat = vi / (1.0 - 0.999f64.powi(t as i32));
        let w = p0[i] as f64 * (1.0 - 1e-2 * 0.01);
        let want = w - 1e-2 * mhat / (vhat.sqrt() + 1e-8);
        assert!((p[i] as f64 - want).abs() < 1e-6, "param {i}: {} vs {want}", p[i]);
        assert!((m[i] as f64 - mi).abs() < 1e-6 && (v[i] as f64 - vi).abs() < 1e-6);
    }
}

// ---- composites on the f32 CPU device ----

/// Central differences in f32 with a larger step; tolerance relative to the gradient scale.
fn check_f32(name: &str, x: &[f32], analytic: &[f32], loss: impl Fn(&[f32]) -> f64) {
    let h = 1e-2f32;
    let scale = analytic.iter().fold(0.0f32, |a, &b| a.max(b.abs())).max(1e-3);
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + h;
        let fp = loss(&xp);
        xp[i] = x[i] - h;
        let fm = loss(&xp);
        xp[i] = x[i];
        let num = ((fp - fm) / (2.0 * h as f64)) as f32;
        assert!(
            (num - analytic[i]).abs() <= 2e-3 * scale,
            "{name}: index {i}: finite difference {num}, analytic {}",
            analytic[i]
        );
    }
}

fn dot32(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn linear_gradients() {
    let cpu = Device::Cpu;
    let mut r = Rng(11);
    let (n, k, o) = (5, 4, 3);
    let x = r.vec(n * k, 1.0);
    let w = r.vec(o * k, 1.0);
    let b = r.vec(o, 1.0);
    let up = r.vec(n * o, 1.0);
    let f = |x: &[f32], w: &[f32], b: &[f32]| {
        let y = ops::linear(
            &cpu.tensor(x, &[n, k]).unwrap(),
            &cpu.tensor(w, &[o, k]).unwrap(),
            Some(&cpu.tensor(b, &[o]).unwrap()),
        )
        .unwrap();
        dot32(&y.to_vec_blocking().unwrap(), &up)
    };
    let mut dw = cpu.zeros(&[o, k]).unwrap();
    let mut db = cpu.zeros(&[o]).unwrap();
    let dx = ops::linear_backward(
        Some(&mut dw),
        Some(&mut db),
        &cpu.tensor(&up, &[n, o]).unwrap(),
        &cpu.tensor(&x, &[n, k]).unwrap(),
        &cpu.tensor(&w, &[o, k]).unwrap(),
        true,
    )
    .unwrap()
    .unwrap();
    check_f32("linear dx", &x, &dx.to_vec_blocking().unwrap(), |x| f(x, &w, &b));
    check_f32("linear dW", &w, &dw.to_vec_blocking().unwrap(), |w| f(&x, w, &b));
    check_f32("linear db", &b, &db.to_vec_blocking().unwrap(), |b| f(&x, &w, b));
}

#[test]
fn attention_gradients_with_padding_mask() {
    let cpu = Device::Cpu;
    let mut r = Rng(12);
    let (b, tq, tk, heads, d) = (2, 3, 4, 2, 3);
    let c = heads * d;
    let q = r.vec(b * tq * c, 1.0);
    let k = r.vec(b * tk * c, 1.0);
    let v = r.vec(b * tk * c, 1.0);
    let mut mask = vec![0.0f32; b * tk];
    mask[tk - 1] = -1e30; // batch 0: last key is padding
    let up = r.vec(b * tq * c, 1.0);
    let t = |data: &[f32], s: &[usize]| cpu.tensor(data, s).unwrap();
    let mut dv_last = vec![];
    // Without and with dropout on the attention probabilities (a fixed seed fixes the mask).
    for dropout in [None, Some((0.3f32, 7u32))] {
        let f = |q: &[f32], k: &[f32], v: &[f32]| {
            let mask_t = t(&mask, &[b, tk]);
            let (o, _) = ops::attention(
                &t(q, &[b, tq, c]),
                &t(k, &[b, tk, c]),
                &t(v, &[b, tk, c]),
                Some(&mask_t),
                heads,
                dropout,
            )
            .unwrap();
            dot32(&o.to_vec_blocking().unwrap(), &up)
        };
        let mask_t = t(&mask, &[b, tk]);
        let (_, probs) = ops::attention(
            &t(&q, &[b, tq, c]),
            &t(&k, &[b, tk, c]),
            &t(&v, &[b, tk, c]),
            Some(&mask_t),
            heads,
            dropout,
        )
        .unwrap();
        let (dq, dk, dv) = ops::attention_backward(
            &t(&up, &[b, tq, c]),
            &t(&q, &[b, tq, c]),
            &t(&k, &[b, tk, c]),
            &t(&v, &[b, tk, c]),
            &probs,
            heads,
            dropout,
        )
        .unwrap();
        let what = if dropout.is_some() { "attention (dropout)" } else { "attention" };
        check_f32(&format!("{what} dq"), &q, &dq.to_vec_blocking().unwrap(), |q| f(q, &k, &v));
        check_f32(&format!("{what} dk"), &k, &dk.to_vec_blocking().unwrap(), |k| f(&q, k, &v));
        check_f32(&format!("{what} dv"), &v, &dv.to_vec_blocking().unwrap(), |v| f(&q, &k, v));
        dv_last = dv.to_vec_blocking().unwrap();
    }
    let dv = dv_last;
    // The masked key receives no attention and so no gradient through its value.
    assert!(dv[(tk - 1) * c..tk * c].iter().all(|&g| g == 0.0));
}

#[test]
fn relu_dropout_and_prefix_gradients() {
    let mut r = Rng(13);
    // ReLU away from its kink.
    let x: Vec<f64> = r.vec64(64, 2.0).into_iter().map(|v| if v.abs() < 0.05 { 0.5 } else { v }).collect();
    let w = r.vec64(64, 1.0);
    let mut dx = vec![0.0; 64];
    cpu::relu_backward(&mut dx, &w, &x, false);
    check("relu", &x, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        cpu::relu_forward(&mut y, x);
        dot(&y, &w)
    });
    // Dropout is linear in x for a fixed mask; its backward is itself.
    let mut dx = vec![0.0; 64];
    cpu::dropout(&mut dx, &w, 77, 0.3);
    check("dropout", &x, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        cpu::dropout(&mut y, x, 77, 0.3);
        dot(&y, &w)
    });
    let kept = (0..64u32).filter(|&i| cpu::dropout_keep(77, i, 0.3)).count();
    assert!((30..=60).contains(&kept), "about 70% kept, got {kept}/64");
    // Prefix concatenation: gradients of the prefix (summed over the batch) and of x.
    let (b, t, c, p) = (3, 4, 5, 2);
    let prefix = r.vec64(p * c, 1.0);
    let xs = r.vec64(b * t * c, 1.0);
    let w = r.vec64(b * (p + t) * c, 1.0);
    let (mut dxs, mut dp) = (vec![0.0; b * t * c], vec![0.0; p * c]);
    cpu::prefix_split(&mut dxs, &mut dp, &w, b, t, c);
    let f = |pre: &[f64], xs: &[f64]| {
        let mut y = vec![0.0; b * (p + t) * c];
        cpu::prefix_concat(&mut y, pre, xs, b, t, c);
        dot(&y, &w)
    };
    check("prefix dprefix", &prefix, &dp, |pre| f(pre, &xs));
    check("prefix dx", &xs, &dxs, |xs| f(&prefix, xs));
}

#[test]
fn llama_kernel_gradients() {
    use localtune::cpu::llama as l;
    let mut r = Rng(21);
    // RMSNorm: dx and dγ.
    for &(rows, cols) in &[(1, 2), (3, 7), (2, 33)] {
        let x = r.vec64(rows * cols, 2.0);
        let gamma = r.vec64(cols, 1.0);
        let w = r.vec64(rows * cols, 1.0);
        let fwd = |x: &[f64], g: &[f64]| {
            let (mut y, mut rs) = (vec![0.0; rows * cols], vec![0.0; rows]);
            l::rmsnorm_forward(&mut y, &mut rs, x, g, cols, 1e-5);
            (y, rs)
        };
        let (_, rs) = fwd(&x, &gamma);
        let (mut dx, mut dg) = (vec![0.0; rows * cols], vec![0.0; cols]);
        l::rmsnorm_backward(&mut dx, Some(&mut dg), &w, &x, &rs, &gamma, cols);
        check("rmsnorm dx", &x, &dx, |x| dot(&fwd(x, &gamma).0, &w));
        check("rmsnorm dgamma", &gamma, &dg, |g| dot(&fwd(&x, g).0, &w));
    }
    // RoPE: the backward is the rotation turned back.
    let (t, d, heads, batch) = (5, 6, 3, 2);
    let cols = heads * d;
    let ang: Vec<f64> = (0..t * d / 2).map(|i| 0.3 * i as f64 + 0.1).collect();
    let (cos, sin): (Vec<f64>, Vec<f64>) = ang.iter().map(|a| (a.cos(), a.sin())).unzip();
    let x = r.vec64(batch * t * cols, 1.0);
    let w = r.vec64(batch * t * cols, 1.0);
    let fwd = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        l::rope(&mut y, x, &cos, &sin, cols, t, d, 1.0);
        y
    };
    let mut dx = vec![0.0; x.len()];
    l::rope(&mut dx, &w, &cos, &sin, cols, t, d, -1.0);
    check("rope dx", &x, &dx, |x| dot(&fwd(x), &w));
    // SwiGLU: dg and du.
    let g = r.vec64(33, 3.0);
    let u = r.vec64(33, 2.0);
    let w = r.vec64(33, 1.0);
    let fwd = |g: &[f64], u: &[f64]| {
        let mut y = vec![0.0; 33];
        l::swiglu_forward(&mut y, g, u);
        dot(&y, &w)
    };
    let (mut dg, mut du) = (vec![0.0; 33], vec![0.0; 33]);
    l::swiglu_backward(&mut dg, &mut du, &w, &g, &u);
    check("swiglu dg", &g, &dg, |g| fwd(g, &u));
    check("swiglu du", &u, &du, |u| fwd(&g, u));
    // Key/value heads repeated: the backward sums the copies.
    let (rows, kv_heads, d, groups) = (3, 2, 4, 3);
    let x = r.vec64(rows * kv_heads * d, 1.0);
    let w = r.vec64(rows * kv_heads * d * groups, 1.0);
    let fwd = |x: &[f64]| {
        let mut y = vec![0.0; w.len()];
        l::repeat_kv_forward(&mut y, x, kv_heads * d, d, groups);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; x.len()];
    l::repeat_kv_backward(&mut dx, &w, kv_heads * d, d, groups);
    check("repeat_kv dx", &x, &dx, fwd);
}
