//! AdamW with a linear warm-up and linear decay (Hugging Face's get_linear_schedule_with_warmup) and
//! global-norm gradient clipping (torch's clip_grad_norm_), computed on the device without a readback.

use crate::error::Result;
use crate::model::weights::NamedTensors;
use crate::model::ParamSet;
use crate::ops::{self, AdamWStep};
use crate::tensor::{Device, Tensor};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global-norm clipping threshold; 0 disables clipping.
    pub max_grad_norm: f32,
    /// Fraction of the optimiser steps spent warming up.
    pub warmup_ratio: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            warmup_ratio: 0.0,
        }
    }
}

/// The optimiser state: moments shaped like the parameters, and the step count.
pub struct AdamW {
    pub config: OptimConfig,
    pub m: ParamSet,
    pub v: ParamSet,
    /// Optimiser steps taken.
    pub step: u64,
    pub total_steps: u64,
    norm_sq: Tensor,
}

impl AdamW {
    pub fn new(config: OptimConfig, params: &ParamSet, total_steps: u64, device: &Device) -> Result<AdamW> {
        Ok(AdamW {
            config,
            m: params.zeros_like(device)?,
            v: params.zeros_like(device)?,
            step: 0,
            total_steps: total_steps.max(1),
            norm_sq: device.zeros(&[1])?,
        })
    }

    pub fn warmup_steps(&self) -> u64 {
        (self.total_steps as f64 * self.config.warmup_ratio as f64).ceil() as u64
    }

    /// The learning rate of optimiser step `k` (0-based), as HF's linear schedule with warm-up.
    pub fn lr_at(&self, k: u64) -> f32 {
        let w = self.warmup_steps();
        let f = if k < w {
            k as f64 / w.max(1) as f64
        } else {
            ((self.total_steps.saturating_sub(k)) as f64 / (self.total_steps - w).max(1) as f64).max(0.0)
        };
        (self.config.lr as f64 * f) as f32
    }

    /// The global squared norm of `grads`, computed on the device (kept for `apply`).
    pub fn compute_norm(&mut self, grads: &ParamSet) -> Result<&Tensor> {
        ops::zero_(&mut self.norm_sq)?;
        for g in grads.tensors() {
            ops::sumsq_into(&mut self.norm_sq, g)?;
        }
        Ok(&self.norm_sq)
    }

    /// One update of `params` from `grads` (times `grad_scale`), clipped by the norm that
    /// `compute_norm` left.
    pub fn apply(&mut self, params: &mut ParamSet, grads: &ParamSet, grad_scale: f32) -> Result<()> {
        let c = &self.config;
        let h = AdamWStep::new(
            self.lr_at(self.step),
            c.beta1,
            c.beta2,
            c.eps,
            c.weight_decay,
            c.max_grad_norm,
            self.step + 1,
        )
        .with_grad_scale(grad_scale);
        // The moments were made by `zeros_like` of the parameters: aligned entry by entry.
        let ps = params.tensors_mut();
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for (((p, g), m), v) in ps.iter_mut().zip(grads.tensors()).zip(ms).zip(vs) {
            ops::adamw(p, m, v, g, &self.norm_sq, &h)?;
        }
        self.step += 1;
        Ok(())
    }

    /// `compute_norm` then `apply` with no scaling.
    pub fn step(&mut self, params: &mut ParamSet, grads: &ParamSet) -> Result<()> {
        self.compute_norm(grads)?;
        self.apply(params, grads, 1.0)
    }

    /// The moments as optimizer.safetensors of a checkpoint (`m.<name>`, `v.<name>`).
    pub async fn moments_to_bytes(&self) -> Result<Vec<u8>> {
        let mut opt = NamedTensors { origin: "optimizer.safetensors".into(), ..Default::default() };
        for (which, t) in [("m", &self.m), ("v", &self.v)] {
            for (name, x) in t.to_host("optimizer.safetensors").await?.tensors {
                opt.insert(format!("{which}.{name}"), x);
            }
        }
        opt.to_bytes(None)
    }

    /// Restores the moments from `moments_to_bytes`'s file (`origin` names it in errors).
    pub fn load_moments(&mut self, bytes: &[u8], origin: &str, device: &Device) -> Result<()> {
        let mut opt = NamedTensors::from_bytes(bytes, origin)?;
        for (which, target) in [("m", &mut self.m), ("v", &mut self.v)] {
            for id in 0..target.len() {
                let shape = target[id].shape().to_vec();
                let key = format!("{which}.{}", target.name(id));
                // Checkpoints before the parameters kept PEFT's shapes stored (IA)³'s moments flat.
                if let Some(t) = opt.tensors.get_mut(&key) {
                    if t.shape != shape && t.shape.iter().product::<usize>() == shape.iter().product::<usize>() {
                        t.shape = shape.clone();
                    }
                }
                let data = opt.take(&key, &shape)?;
                target.set(id, device.tensor(&data, &shape)?)?;
            }
        }
        Ok(())
    }
}
