//! Training: data, the optimiser, the training loop with checkpoints, and metrics.

pub mod causal;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod settings;
pub mod trainer;

pub use data::Dataset;
pub use metrics::Metrics;
pub use optim::OptimConfig;
pub use settings::RunSettings;
pub use trainer::{Examples, TrainConfig, Trainer};
