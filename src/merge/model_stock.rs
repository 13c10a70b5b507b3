//! Model stock (Jang et al., mergekit's definition), per tensor: with τᵢ = θᵢ − θ0 flattened,
//! cos = the mean over pairs i < j of ⟨τᵢ, τⱼ⟩ / max(‖τᵢ‖‖τⱼ‖, 1e-6) clamped to [−1, 1];
//! t = N·cos / (1 + (N−1)·cos); θ* = t · mean(θᵢ) + (1 − t) · θ0.

use crate::error::Result;
use crate::ops;
use crate::ops::merge::{combine, dots, CombineFlags, CombineMode};
use crate::tensor::Tensor;

/// The interpolation factor t from the Gram matrix of the task vectors (`gram(i, j)`).
pub fn factor(n: usize, gram: impl Fn(usize, usize) -> f64) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..n {
        for j in i + 1..n {
            let c = gram(i, j) / (gram(i, i).sqrt() * gram(j, j).sqrt()).max(1e-6);
            sum += c.clamp(-1.0, 1.0);
            pairs += 1;
        }
    }
    let cos = sum / pairs as f64;
    n as f64 * cos / (1.0 + (n as f64 - 1.0) * cos)
}

pub async fn merge(x: &Tensor, base: &Tensor) -> Result<Tensor> {
    let n = x.dim(0);
    let tau = ops::axpy(x, base, -1.0)?;
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i..n).map(move |j| (i, j))).collect();
    let d = dots(&tau, &pairs, false).await?;
    let at = |i: usize, j: usize| {
        let (a, b) = (i.min(j), i.max(j));
        d[pairs.iter().position(|&p| p == (a, b)).unwrap()]
    };
    let t = factor(n, at);
    let mut out = combine(x, &vec![(t / n as f64) as f32; n], None, None, CombineMode::Sum, CombineFlags::default())?;
    ops::add_into(&mut out, base, (1.0 - t) as f32)?;
    Ok(out)
}
