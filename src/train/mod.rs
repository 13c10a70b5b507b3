//! Training: data, the optimiser, the training loop with checkpoints, and metrics.

pub mod data;
pub mod metrics;
pub mod optim;
pub mod trainer;

pub use data::Dataset;
pub use metrics::Metrics;
pub use optim::OptimConfig;
pub use trainer::{Examples, TrainConfig, Trainer};
