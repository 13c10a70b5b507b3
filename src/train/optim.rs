//! AdamW with a linear warm-up and linear decay (Hugging Face's get_linear_schedule_with_warmup) and
//! global-norm gradient clipping (torch's clip_grad_norm_), computed on the device without a readback.

use crate::error::{Error, Result};
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

/// `x` as the f64 with the same shortest decimal (0.02f32 → 0.02, not 0.019999999552965164): for
/// showing an f32 setting through JSON, which widens it to f64 digit for digit.
pub fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The largest learning rate accepted. Adam moves every weight by about the learning rate each step,
/// whatever the gradient's size, so above 1 a run is destroyed in its first steps (1e-5 to 1e-2 are
/// the usual range).
pub const MAX_LR: f32 = 1.0;

/// A loss this many times its start is an explosion, not learning: the run stops there. For two
/// classes that is a mean of 69 nats, a true label given probability e^-69 ≈ 1e-30: no healthy
/// batch, even of one mislabelled example, gets there.
pub const EXPLOSION_FACTOR: f64 = 100.0;

/// Whether `loss` has exploded against the run's first loss `start`; `floor` is the smallest start to
/// measure against (a classifier's chance level ln K), so a run that starts near 0 is not stopped by
/// noise.
pub fn exploded(loss: f64, start: Option<f64>, floor: f64) -> bool {
    explosion(loss, start, floor).is_some()
}

/// `exploded`, said: "the loss is NaN", "the loss is 1.8600e9, over 100× its start (0.6931)".
pub fn explosion(loss: f64, start: Option<f64>, floor: f64) -> Option<String> {
    let base = start.filter(|s| s.is_finite()).unwrap_or(floor).max(floor);
    if !loss.is_finite() {
        Some(format!("the loss is {loss}"))
    } else if loss > EXPLOSION_FACTOR * base {
        Some(format!("the loss is {loss:.4e}, over {EXPLOSION_FACTOR}× its start ({base:.4})"))
    } else {
        None
    }
}

/// Why `lr` cannot train, or None: the one rule for the command line's `--lr` and every run.
pub fn lr_problem(lr: f32) -> Option<&'static str> {
    (!(lr > 0.0 && lr <= MAX_LR)).then_some(
        "must be above 0 and at most 1 (Adam moves each weight by about this much per step; 1e-5 to 1e-2 are usual)",
    )
}

impl OptimConfig {
    /// Refuses settings no run can learn with, naming the setting.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str, v: f32, want: &str| Err(Error::invalid(format!("{what} {v}: {want}")));
        if let Some(why) = lr_problem(self.lr) {
            return bad("learning rate", self.lr, why);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight decay", self.weight_decay, "must be a finite number ≥ 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("max gradient norm", self.max_grad_norm, "must be a finite number ≥ 0 (0 turns clipping off)");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warm-up", self.warmup_ratio, "is a fraction of the steps, in [0, 1]");
        }
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2) && self.eps > 0.0) {
            return Err(Error::invalid("Adam's betas must be in [0, 1) and eps above 0"));
        }
        Ok(())
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
        config.check()?;
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

#[cfg(test)]
mod explosion_tests {
    use super::exploded;

    #[test]
    fn an_f32_setting_shows_as_written() {
        assert_eq!(super::as_written(0.02).to_string(), "0.02");
        assert_eq!(super::as_written(1e-3).to_string(), "0.001");
        assert_eq!(serde_json::json!(super::as_written(3e-4)).to_string(), "0.0003");
        assert_ne!(serde_json::json!(0.02f32).to_string(), "0.02", "what the page showed");
    }

    #[test]
    fn a_loss_far_above_its_start_is_an_explosion() {
        let ln2 = 2f64.ln();
        assert!(!exploded(0.7, None, ln2));
        assert!(!exploded(30.0, Some(0.69), ln2), "noisy but not exploded");
        assert!(!exploded(60.0, Some(0.69), ln2), "one confidently wrong example in a batch of 1");
        assert!(exploded(1.86e9, Some(0.69), ln2));
        assert!(exploded(f64::NAN, Some(0.69), ln2));
        assert!(exploded(f64::INFINITY, None, ln2));
        // A start near 0 is measured against the floor, not against itself.
        assert!(!exploded(0.5, Some(1e-4), ln2));
        assert!(exploded(400.0, Some(3.0), 1.0) && !exploded(200.0, Some(3.0), 1.0));
    }
}
