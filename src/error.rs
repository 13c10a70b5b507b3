//! One error type for the whole crate. Variants carry the op, tensor, file or line at fault.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was called with shapes it cannot take.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A request that exceeds what the device can do (buffer size, workgroup count, ...).
    #[error("{op}: {msg}")]
    Limit { op: &'static str, msg: String },

    /// No usable GPU adapter was found.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// Any other failure reported by the GPU runtime.
    #[error("GPU: {0}")]
    Gpu(String),

    /// A file that could not be read, written or parsed.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },

    /// A tensor missing from, or misshapen in, a weights file.
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor { path: String, name: String, msg: String },

    /// A bad argument or configuration value.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn file(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::File { path: path.as_ref().display().to_string(), msg: msg.to_string() }
    }
    pub fn tensor(path: impl AsRef<Path>, name: &str, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().display().to_string(), name: name.to_string(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
