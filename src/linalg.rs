//! Small dense linear algebra on the host in f64: a truncated SVD (for writing merged LoRA updates
//! back as a low-rank adapter), the thin SVD of a feature matrix (LogME) and a symmetric
//! positive-definite solve (RegMean). Matrices are
//! row-major `Vec<f64>`.

use crate::rng::Rng;

/// Orthonormalises the columns (each a Vec of length m) by modified Gram–Schmidt, twice.
fn orthonormalize(cols: &mut [Vec<f64>]) {
    for _ in 0..2 {
        for j in 0..cols.len() {
            for i in 0..j {
                let d: f64 = cols[i].iter().zip(&cols[j]).map(|(a, b)| a * b).sum();
                let ci = cols[i].clone();
                cols[j].iter_mut().zip(&ci).for_each(|(b, a)| *b -= d * a);
            }
            let n = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
            if n > 1e-300 {
                cols[j].iter_mut().for_each(|v| *v /= n);
            }
        }
    }
}

/// One-sided Jacobi on the columns of M (m × p, given as p columns): M = U S Vᵀ. Returns the columns
/// of U (unit, or zero where σ = 0), σ, and V (p × p, columns), sorted by σ descending.
fn jacobi(mut cols: Vec<Vec<f64>>) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
    let p = cols.len();
    let mut v: Vec<Vec<f64>> = (0..p).map(|i| (0..p).map(|j| (i == j) as u8 as f64).collect()).collect();
    for _sweep in 0..60 {
        let mut off = 0.0f64;
        for a in 0..p {
            for b in a + 1..p {
                let alpha: f64 = cols[a].iter().map(|x| x * x).sum();
                let beta: f64 = cols[b].iter().map(|x| x * x).sum();
                let gamma: f64 = cols[a].iter().zip(&cols[b]).map(|(x, y)| x * y).sum();
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut cols, &mut v] {
                    let (ca, cb) = (m[a].clone(), m[b].clone());
                    for k in 0..ca.len() {
                        m[a][k] = c * ca[k] - s * cb[k];
                        m[b][k] = s * ca[k] + c * cb[k];
                    }
                }
            }
        }
        if off < 1e-14 {
            break;
        }
    }
    let sig: Vec<f64> = cols.iter().map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| sig[b].total_cmp(&sig[a]));
    let u =
        order.iter().map(|&j| cols[j].iter().map(|x| if sig[j] > 0.0 { x / sig[j] } else { 0.0 }).collect()).collect();
    (u, order.iter().map(|&j| sig[j]).collect(), order.iter().map(|&j| v[j].clone()).collect())
}

/// The thin SVD of F (n × d, row-major): (U as columns of length n, σ descending, V as columns of
/// length d), min(n, d) of each, by one-sided Jacobi on the smaller side.
pub fn thin_svd(f: &[f64], n: usize, d: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
    if n >= d {
        let cols: Vec<Vec<f64>> = (0..d).map(|j| (0..n).map(|i| f[i * d + j]).collect()).collect();
        jacobi(cols)
    } else {
        // Fᵀ = V S Uᵀ: Jacobi on the n columns of Fᵀ (the rows of F).
        let cols: Vec<Vec<f64>> = (0..n).map(|i| f[i * d..(i + 1) * d].to_vec()).collect();
        let (v, s, u) = jacobi(cols);
        (u, s, v)
    }
}

/// A rank-k factorisation of A (m × n, row-major): (B (m × k) = U_k S_k, Aᵀ-side V_kᵀ (k × n), the
/// relative Frobenius error ‖A − B V_kᵀ‖ / ‖A‖). Randomised subspace iteration with oversampling and
/// power steps, then an exact SVD of the small projected matrix.
pub fn truncated_svd(a: &[f64], m: usize, n: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>, f64) {
    let k = k.min(m).min(n).max(1);
    let p = (2 * k).max(k + 16).min(m.min(n));
    let mut rng = Rng::new(seed);
    // Y = A Ω, columns of length m.
    let mul_a = |x: &[Vec<f64>]| -> Vec<Vec<f64>> {
        x.iter().map(|col| (0..m).map(|i| (0..n).map(|j| a[i * n + j] * col[j]).sum()).collect()).collect()
    };
    let mul_at = |y: &[Vec<f64>]| -> Vec<Vec<f64>> {
        y.iter()
            .map(|col| {
                let mut out = vec![0.0; n];
                for i in 0..m {
                    let c = col[i];
                    if c != 0.0 {
                        out.iter_mut().zip(&a[i * n..(i + 1) * n]).for_each(|(o, v)| *o += c * v);
                    }
                }
                out
            })
            .collect()
    };
    let omega: Vec<Vec<f64>> = (0..p).map(|_| (0..n).map(|_| rng.normal()).collect()).collect();
    let mut q = mul_a(&omega);
    orthonormalize(&mut q);
    for _ in 0..6 {
        let mut z = mul_at(&q);
        orthonormalize(&mut z);
        q = mul_a(&z);
        orthonormalize(&mut q);
    }
    // C = Qᵀ A (p × n); Cᵀ as p columns of length n; Cᵀ = U' S V'ᵀ so A ≈ Q C = (Q V') S U'ᵀ.
    let ct = mul_at(&q);
    let (u_c, sig, v_c) = jacobi(ct);
    let mut b = vec![0.0; m * k];
    let mut vt = vec![0.0; k * n];
    for r in 0..k {
        // Left vector: Q · v_c[r]; the singular value goes into B, as PEFT does.
        for i in 0..m {
            let l: f64 = (0..p).map(|c| q[c][i] * v_c[r][c]).sum();
            b[i * k + r] = l * sig[r];
        }
        vt[r * n..(r + 1) * n].copy_from_slice(&u_c[r]);
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    let mut resid = 0.0;
    for i in 0..m {
        for j in 0..n {
            let approx: f64 = (0..k).map(|r| b[i * k + r] * vt[r * n + j]).sum();
            resid += (a[i * n + j] - approx).powi(2);
        }
    }
    let err = if total > 0.0 { (resid / total).sqrt() } else { 0.0 };
    (b, vt, err)
}

/// Solves G X = R for symmetric positive-definite G (d × d) and R (d × c), by Cholesky. Returns None
/// when G is not positive definite.
pub fn spd_solve(g: &[f64], d: usize, r: &[f64], c: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = g[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    let mut x = r.to_vec();
    for col in 0..c {
        for i in 0..d {
            let mut s = x[i * c + col];
            for k in 0..i {
                s -= l[i * d + k] * x[k * c + col];
            }
            x[i * c + col] = s / l[i * d + i];
        }
        for i in (0..d).rev() {
            let mut s = x[i * c + col];
            for k in i + 1..d {
                s -= l[k * d + i] * x[k * c + col];
            }
            x[i * c + col] = s / l[i * d + i];
        }
    }
    Some(x)
}
