//! Task arithmetic and the methods built on it (magnitude prune, TIES, DARE, breadcrumbs, DELLA):
//! τᵢ = θᵢ − θ0, trimmed by the method's sparsifier, combined, and θ* = θ0 + λ·combined.
//!
//! Combining, under PEFT's semantics: Σ wᵢ τᵢ; with sign election (TIES), the sign is elected on the
//! unweighted trimmed τᵢ and the kept wᵢ τᵢ are divided by their count. Under mergekit's: the sign is
//! elected on wᵢ τᵢ, and `normalize` divides by Σ wᵢ over the kept entries (TIES) or by Σ wᵢ (others).

use super::{sparsify, Method, Semantics, SignRule, TensorSettings};
use crate::error::Result;
use crate::ops;
use crate::ops::merge::{combine, CombineFlags, CombineMode};
use crate::tensor::Tensor;

/// θ* for the stack `x` (N, …) of fine-tuned weights over `base`.
pub async fn merge(method: Method, x: &Tensor, base: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let mut tau = ops::axpy(x, base, -1.0)?;
    if let Some(kind) = method.sparsifier() {
        sparsify::apply(kind, &mut tau, s).await?;
    }
    let merged = combine_deltas(method, &tau, s)?;
    let mut out = base.duplicate()?;
    ops::add_into(&mut out, &merged, s.lambda)?;
    Ok(out)
}

/// The merged task vector of the trimmed stack `tau` (N, …).
pub fn combine_deltas(method: Method, tau: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let frequency = s.sign == SignRule::Frequency;
    match (s.semantics, method.elects_sign()) {
        (Semantics::Peft, true) => {
            let flags = CombineFlags { frequency, div_count: true, ..Default::default() };
            combine(tau, &s.weights, None, None, CombineMode::Ties, flags)
        }
        (Semantics::Mergekit, true) => {
            let flags =
                CombineFlags { frequency, sign_weighted: true, div_weight_mask: s.normalize, ..Default::default() };
            combine(tau, &s.weights, None, None, CombineMode::Ties, flags)
        }
        (_, false) => {
            let sum: f32 = s.weights.iter().sum();
            let div = if s.normalize && sum.abs() >= 1e-8 { sum } else { 1.0 };
            let coef: Vec<f32> = s.weights.iter().map(|w| w / div).collect();
            combine(tau, &coef, None, None, CombineMode::Sum, CombineFlags::default())
        }
    }
}
