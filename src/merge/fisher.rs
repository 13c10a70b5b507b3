//! Fisher-weighted averaging (Matena & Raffel): θ* = Σ λᵢ Fᵢ θᵢ / Σ λᵢ Fᵢ elementwise, with each
//! diagonal Fisher raised to a floor (1e-6 by default) so that entries no model is sure of fall back
//! to the λ-weighted average. The Fisher diagonals come from `crate::merge::fisher_estimate`.

use super::TensorSettings;
use crate::error::Result;
use crate::ops::merge::{combine, CombineFlags, CombineMode};
use crate::tensor::Tensor;

/// x: the stack (N, …) of the models' values; fisher: their Fisher diagonals, stacked the same way.
pub fn merge(x: &Tensor, fisher: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let mode = CombineMode::Fisher { floor: s.fisher_floor };
    combine(x, &s.weights, Some(fisher), None, mode, CombineFlags::default())
}
