//! Delta-guided fusion (after CoDiEmb, which gives no formula; this is this project's reading): each
//! parameter is averaged with weights from how far each model moved it from the base,
//!   aᵢ = wᵢ · |θᵢ − θ0|^(1/T),   θ* = Σ aᵢ θᵢ / Σ aᵢ   (the w-weighted average where no model moved it).
//! T = 1 weights by the deviation itself; T → ∞ gives the model soup; T → 0 takes the model that moved
//! the parameter most. The weights depend on ratios of deviations only, so no scale needs tuning.

use super::TensorSettings;
use crate::error::Result;
use crate::ops::merge::{combine, CombineFlags, CombineMode};
use crate::tensor::Tensor;

pub fn merge(x: &Tensor, base: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let mode = CombineMode::Delta { temperature: s.temperature };
    combine(x, &s.weights, None, Some(base), mode, CombineFlags::default())
}
