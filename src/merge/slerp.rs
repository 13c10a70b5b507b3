//! Spherical interpolation between two models (mergekit's definition), per tensor: with the whole
//! tensor flattened, dot = ⟨v0/‖v0‖, v1/‖v1‖⟩ clamped to [−1, 1] (a norm ≤ 1e-8 counts as 1); where
//! |dot| > 0.9995 the two are nearly parallel and the result is the lerp (1−t)v0 + t v1, else with
//! θ = acos(dot): sin((1−t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1, on the unnormalised tensors. t = 0 gives v0.

use crate::error::Result;
use crate::ops::merge::{combine, dots, CombineFlags, CombineMode};
use crate::tensor::Tensor;

/// The interpolation coefficients of v0 and v1 from their squared norms and dot product.
pub fn coefficients(n00: f64, n11: f64, n01: f64, t: f64) -> (f64, f64) {
    let norm = |q: f64| if q.sqrt() > 1e-8 { q.sqrt() } else { 1.0 };
    let dot = (n01 / (norm(n00) * norm(n11))).clamp(-1.0, 1.0);
    if dot.abs() > 0.9995 {
        return (1.0 - t, t);
    }
    let theta = dot.acos();
    let s = theta.sin();
    (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
}

/// x: the stack (2, …) of v0 (the base) and v1.
pub async fn merge(x: &Tensor, t: f32) -> Result<Tensor> {
    let d = dots(x, &[(0, 0), (1, 1), (0, 1)], false).await?;
    let (c0, c1) = coefficients(d[0], d[1], d[2], t as f64);
    combine(x, &[c0 as f32, c1 as f32], None, None, CombineMode::Sum, CombineFlags::default())
}
