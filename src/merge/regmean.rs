//! RegMean (Jin et al.): each linear weight merged as the least-squares fit of all models' outputs on
//! their own inputs, W* = (Σᵢ Gᵢ)⁻¹ Σᵢ Gᵢ Wᵢᵀ with Gᵢ = XᵢᵀXᵢ the Gram matrix of that linear's inputs
//! on model i's local data, its off-diagonal entries scaled by `alpha` (0.1 by default) so the sum is
//! well conditioned; the other tensors are averaged. `grams` collects the Gram matrices with a hook on
//! every target linear's input (one text at a time, so no padding enters them); the solve runs on the
//! host in f64.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::arch::Target;
use crate::model::encoder::Hooks;
use crate::model::hooks::{Cx, Hook, Saved};
use crate::model::param_set::ParamSet;
use crate::model::weights::HostTensor;
use crate::model::Model;
use crate::ops;
use crate::tensor::Tensor;

/// Sums XᵀX (C, C) of every target linear's input, per (layer, target).
struct GramHook {
    grams: RefCell<BTreeMap<(usize, usize), Tensor>>,
}

impl Hook for GramHook {
    fn linear_input(&self, cx: Cx, t: Target, x: &Tensor) -> Result<Option<(Tensor, Saved)>> {
        let c = *x.shape().last().unwrap();
        let x2 = x.reshape(&[x.numel() / c, c])?;
        let g = ops::matmul(&x2, &x2, true, false)?;
        let mut grams = self.grams.borrow_mut();
        match grams.get_mut(&(cx.layer, t.index())) {
            Some(acc) => ops::add_into(acc, &g, 1.0)?,
            None => {
                grams.insert((cx.layer, t.index()), g);
            }
        }
        Ok(None)
    }
}

/// The Gram matrices of every target linear's inputs over `texts` (one at a time, truncated to
/// `max_len` tokens), under the weight names of the model's layer description
/// (`encoder.layer.0.attention.self.query.weight`).
pub async fn grams(model: &Model, texts: &[&str], max_len: usize) -> Result<BTreeMap<String, HostTensor>> {
    if texts.is_empty() {
        return Err(Error::invalid("RegMean needs some local texts for each model"));
    }
    let hook = GramHook { grams: RefCell::new(BTreeMap::new()) };
    let empty = ParamSet::new();
    for text in texts {
        let enc = model.encode(&[text], max_len)?;
        let hooks = Hooks { hooks: &[&hook], params: &empty };
        model.encoder.encode(&enc.inputs, hooks, None, false, false)?;
    }
    let desc = &model.encoder.desc;
    let mut out = BTreeMap::new();
    for ((l, t), g) in hook.grams.into_inner() {
        let name = format!("{}.{}.weight", desc.layer(l), desc.module(Target::ALL[t]));
        out.insert(name, HostTensor::new(g.shape().to_vec(), g.to_vec().await?));
    }
    Ok(out)
}

/// The Gram matrix for weight `name` (a key that `name` ends with, so that `bert.`-prefixed folders match).
pub fn gram_for<'a>(grams: &'a BTreeMap<String, HostTensor>, name: &str) -> Option<&'a HostTensor> {
    grams.iter().find(|(k, _)| name == k.as_str() || name.ends_with(&format!(".{k}"))).map(|(_, g)| g)
}

/// W* = (Σ Gᵢ')⁻¹ Σ Gᵢ' Wᵢᵀ for weights Wᵢ (out × in, row-major) and Grams Gᵢ (in × in), Gᵢ' with its
/// off-diagonal entries times `alpha`. `name` is for errors.
pub fn solve(
    name: &str,
    weights: &[&[f32]],
    grams: &[&HostTensor],
    out_d: usize,
    in_d: usize,
    alpha: f64,
) -> Result<Vec<f32>> {
    let mut g_sum = vec![0.0f64; in_d * in_d];
    let mut r = vec![0.0f64; in_d * out_d];
    for (w, g) in weights.iter().zip(grams) {
        if g.shape != [in_d, in_d] {
            return Err(Error::invalid(format!(
                "{name}: a Gram matrix of shape {:?} for a {out_d}x{in_d} weight",
                g.shape
            )));
        }
        let gi = |a: usize, b: usize| g.data[a * in_d + b] as f64 * if a == b { 1.0 } else { alpha };
        for a in 0..in_d {
            for b in 0..in_d {
                g_sum[a * in_d + b] += gi(a, b);
            }
        }
        // R += G' Wᵀ: R[a, o] = Σ_b G'[a, b] W[o, b].
        for a in 0..in_d {
            for b in 0..in_d {
                let gab = gi(a, b);
                if gab != 0.0 {
                    for o in 0..out_d {
                        r[a * out_d + o] += gab * w[o * in_d + b] as f64;
                    }
                }
            }
        }
    }
    let x = crate::linalg::spd_solve(&g_sum, in_d, &r, out_d).ok_or_else(|| {
        Error::invalid(format!("{name}: the summed Gram matrix is not positive definite (too little data?)"))
    })?;
    // W* = Xᵀ.
    let mut w = vec![0.0f32; out_d * in_d];
    for a in 0..in_d {
        for o in 0..out_d {
            w[o * in_d + a] = x[a * out_d + o] as f32;
        }
    }
    Ok(w)
}
