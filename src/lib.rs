//! localtune: private on-device fine-tuning and merging of pretrained transformers, in Rust + WebGPU.
//!
//! Layout: `gpu` and `cpu` are the two devices; `ops` are the operations both share (shape checks,
//! then dispatch); `tensor` holds tensors and the `Device` enum; `model` loads and runs BERT-family
//! encoders;
//! `peft` the fine-tuning methods; `train` the loop; `merge` model and adapter merging; `transfer`
//! ranking sources and distilling from them; `linalg` small host linear algebra both share.

// Natively the GPU handles are Send + Sync and Arc shares them across threads; in the browser they are
// single-threaded JS objects and the Arc is only shared ownership.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod cpu;
pub mod desc;
pub mod error;
pub mod gpu;
pub mod linalg;
pub mod merge;
pub mod model;
pub mod ops;
pub mod peft;
pub mod quant;
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
pub mod tensor;
pub mod train;
pub mod transfer;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
