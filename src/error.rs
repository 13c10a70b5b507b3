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

    /// A training run whose loss or gradient went non-finite or exploded: its latest weights are
    /// not to be kept.
    #[error("{0}")]
    Diverged(String),
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

/// At most `max` characters of `text`, with "…" when cut: error messages quote inputs, never whole
/// megabyte lines.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut it = text.chars();
    let head: String = it.by_ref().take(max).collect();
    if it.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// Refuses outputs (`rows` of `width` values for `texts`, the first being text number `first`) that
/// hold NaN or infinity, naming the text: a model or adapter that computes them must not print
/// `null` and go on.
pub fn check_rows_finite(rows: &[f32], width: usize, first: usize, texts: &[&str], what: &str) -> Result<()> {
    for (i, row) in rows.chunks_exact(width.max(1)).enumerate() {
        if let Some(v) = row.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "{what} of text {} ({:?}): {v}, where the model or adapter should give a finite number",
                first + i + 1,
                excerpt(texts.get(i).copied().unwrap_or(""), 80)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_excerpt_is_cut_on_characters() {
        assert_eq!(super::excerpt("héllo", 3), "hél…");
        assert_eq!(super::excerpt("héllo", 5), "héllo");
        assert_eq!(super::excerpt(&"x".repeat(5_000_000), 80).chars().count(), 81);
    }
}
