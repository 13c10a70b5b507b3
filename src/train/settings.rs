//! The settings of a training run as the command line and the web app give them — flat, with the
//! same defaults and the same checks in both — and the `TrainConfig` they make.

use super::optim::OptimConfig;
use super::trainer::TrainConfig;
use crate::error::Result;
use crate::peft::{HeadKind, MethodOptions};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunSettings {
    #[serde(flatten)]
    pub method: MethodOptions,
    pub epochs: usize,
    pub batch: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate; the method's default when absent.
    pub lr: Option<f32>,
    pub max_len: usize,
    pub seed: u64,
    /// Fraction of the data held out for validation (seeded split).
    pub valid_fraction: f64,
    /// pooler | mean
    pub head: String,
    /// The model's hidden and attention dropout during training.
    pub dropout: bool,
    /// Fraction of optimiser steps of linear warm-up (then linear decay to 0).
    pub warmup: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f32,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            method: MethodOptions::default(),
            epochs: 3,
            batch: 16,
            grad_accum: 1,
            lr: None,
            max_len: 64,
            seed: 0,
            valid_fraction: 0.2,
            head: "pooler".into(),
            dropout: true,
            warmup: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

impl RunSettings {
    /// The run these settings describe; unknown methods, heads and options are refused by name.
    pub fn train_config(&self) -> Result<TrainConfig> {
        let method = self.method.build()?;
        let lr = self.lr.unwrap_or(method.default_lr());
        Ok(TrainConfig {
            head: HeadKind::parse(&self.head)?,
            epochs: self.epochs,
            batch_size: self.batch,
            grad_accum: self.grad_accum,
            max_len: self.max_len,
            seed: self.seed,
            optim: OptimConfig {
                lr,
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                warmup_ratio: self.warmup,
                ..OptimConfig::default()
            },
            dropout: self.dropout,
            method,
        })
    }
}
