//! safetensors files as plain named f32 tensors on the host: the form that loading, adapters and
//! merging all share. f16 and bf16 are widened to f32; non-float tensors are skipped.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A host tensor: shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

/// Named tensors read from (or to be written to) one safetensors file.
#[derive(Debug, Clone, Default)]
pub struct NamedTensors {
    /// The file they came from, for error messages.
    pub origin: String,
    pub tensors: BTreeMap<String, HostTensor>,
    /// Tensors skipped because they are not floating point (e.g. `embeddings.position_ids`), with
    /// their dtype.
    pub skipped: Vec<(String, String)>,
}

/// Reads one little-endian value as f32.
type Decode = fn(&[u8]) -> f32;

/// How a float dtype's values are read: bytes per value and the little-endian decoding to f32 (f16
/// and bf16 widened, f64 narrowed); None for the dtypes that are not floats.
fn float_decoder(dtype: Dtype) -> Option<(usize, Decode)> {
    Some(match dtype {
        Dtype::F32 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F16 => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => (2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::F64 => (8, |b| f64::from_le_bytes(b[..8].try_into().unwrap()) as f32),
        _ => return None,
    })
}

/// Refuses safetensors bytes about to be written whose float tensors hold NaN or infinity, naming
/// the tensor and index; `origin` is where they would go. Reads the bytes in place (a full model's
/// checkpoint is not copied into f32 to be checked).
pub fn check_finite_to_save(bytes: &[u8], origin: &str) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(origin, format!("not a valid safetensors file: {e}")))?;
    for (name, view) in st.tensors() {
        let raw = view.data();
        let Some((width, decode)) = float_decoder(view.dtype()) else { continue };
        let bad = raw.chunks_exact(width).position(|b| !decode(b).is_finite());
        if let Some(i) = bad {
            let v = decode(&raw[i * width..]);
            return Err(Error::tensor(
                origin,
                &name,
                format!("holds {v} at index {i}: not saved, and what the folder held is kept"),
            ));
        }
    }
    Ok(())
}

impl NamedTensors {
    /// Parses safetensors bytes; `origin` names the file in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::file(origin, format!("not a valid safetensors file: {e}")))?;
        let mut out = NamedTensors { origin: origin.to_string(), ..Default::default() };
        for (name, view) in st.tensors() {
            let raw = view.data();
            let Some((width, decode)) = float_decoder(view.dtype()) else {
                out.skipped.push((name.to_string(), format!("{:?}", view.dtype())));
                continue;
            };
            let data: Vec<f32> = raw.chunks_exact(width).map(decode).collect();
            out.tensors.insert(name.to_string(), HostTensor::new(view.shape().to_vec(), data));
        }
        Ok(out)
    }

    /// The first NaN or infinite value: its tensor, index and value.
    fn first_non_finite(&self) -> Option<(&str, usize, f32)> {
        self.tensors
            .iter()
            .find_map(|(name, t)| t.data.iter().position(|v| !v.is_finite()).map(|i| (name.as_str(), i, t.data[i])))
    }

    /// Refuses the first NaN or infinite value, naming its tensor and index; `what` says whose weights
    /// they are ("the adapter", "a base weight"), so that a damaged file is not taken for a bad run.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        match self.first_non_finite() {
            Some((name, i, v)) => Err(Error::tensor(
                &self.origin,
                name,
                format!("{what} holds {v} at index {i}: the file is damaged (or was saved from a diverged run)"),
            )),
            None => Ok(()),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Removes and returns `name`, checking its shape; the error names the tensor, the file and both shapes.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.remove(name).ok_or_else(|| self.missing(name, &format!("expected shape {shape:?}")))?;
        if t.shape != shape {
            return Err(Error::tensor(&self.origin, name, format!("has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t.data)
    }

    /// The error for a tensor that is not here as floats: stored with another dtype (say which), or
    /// absent. `expected` says what was wanted ("expected shape [8, 384]").
    pub fn missing(&self, name: &str, expected: &str) -> Error {
        match self.skipped.iter().find(|(n, _)| n == name) {
            Some((_, dtype)) => Error::tensor(
                &self.origin,
                name,
                format!("is stored as {dtype}, where floats (F32, F16, BF16 or F64) are expected ({expected})"),
            ),
            None => Error::tensor(&self.origin, name, format!("missing ({expected})")),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }

    /// Serialises as safetensors (F32, names in sorted order), with optional string metadata.
    pub fn to_bytes(&self, metadata: Option<std::collections::HashMap<String, String>>) -> Result<Vec<u8>> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes: &[u8] = bytemuck::cast_slice(&t.data);
                safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::tensor(&self.origin, name, e.to_string()))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, metadata).map_err(|e| Error::file(&self.origin, e))
    }
}
