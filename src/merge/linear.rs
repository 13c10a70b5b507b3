//! Weighted averaging (model soups): θ* = Σ wᵢ θᵢ / Σ wᵢ, or Σ wᵢ θᵢ without `normalize`.

use super::TensorSettings;
use crate::error::Result;
use crate::ops::merge::{combine, CombineFlags, CombineMode};
use crate::tensor::Tensor;

pub fn merge(x: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let div = if s.normalize { s.weights.iter().sum::<f32>() } else { 1.0 };
    let coef: Vec<f32> = s.weights.iter().map(|w| w / div).collect();
    combine(x, &coef, None, None, CombineMode::Sum, CombineFlags::default())
}
