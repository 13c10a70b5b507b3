//! Training: data, the optimiser, the training loop with checkpoints, and metrics.

pub mod data;
