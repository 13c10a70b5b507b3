//! safetensors read and written one tensor at a time, so that merging holds one tensor per input in
//! memory rather than whole models: an index of the header, tensors read by byte range (from a file
//! natively, or from bytes already in memory in the web app), and a writer that lays out the header
//! first and then takes the tensors in order.

use std::collections::BTreeMap;

use safetensors::Dtype;

use super::weights::HostTensor;
use crate::error::{Error, Result};

/// One tensor's place in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: usize,
    pub end: usize,
}

impl Entry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }
}

/// The header of a safetensors file: its tensors by name and where the data begins.
#[derive(Debug, Clone)]
pub struct Index {
    pub origin: String,
    pub entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
    /// Byte offset of the data section in the file.
    pub data_start: usize,
}

fn dtype_of(s: &str) -> Option<Dtype> {
    Some(match s {
        "F32" => Dtype::F32,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F64" => Dtype::F64,
        "I64" => Dtype::I64,
        "I32" => Dtype::I32,
        "I16" => Dtype::I16,
        "I8" => Dtype::I8,
        "U8" => Dtype::U8,
        "BOOL" => Dtype::BOOL,
        _ => return None,
    })
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::F64 => "F64",
        _ => "?",
    }
}

/// Bytes per value of a float dtype.
pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::F64 => 8,
        _ => 4,
    }
}

impl Index {
    /// Parses the header from the first bytes of a file (at least 8 + the header length).
    pub fn parse(head: &[u8], origin: &str) -> Result<Index> {
        let bad = |msg: String| Error::file(origin, format!("not a valid safetensors file: {msg}"));
        if head.len() < 8 {
            return Err(bad("shorter than 8 bytes".into()));
        }
        let n = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        if n > 100 << 20 || head.len() < 8 + n {
            return Err(bad(format!("header of {n} bytes does not fit")));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&head[8..8 + n]).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let obj = json.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, v) in m {
                        metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
                continue;
            }
            let field =
                |f: &str| v.get(f).ok_or_else(|| Error::tensor(origin, name, format!("no `{f}` in the header")));
            let dtype_s = field("dtype")?.as_str().unwrap_or_default();
            let dtype = dtype_of(dtype_s).ok_or_else(|| Error::tensor(origin, name, format!("dtype {dtype_s}")))?;
            let nums = |f: &str| -> Result<Vec<usize>> {
                field(f)?
                    .as_array()
                    .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| Error::tensor(origin, name, format!("`{f}` is not a list of integers")))
            };
            let shape = nums("shape")?;
            let off = nums("data_offsets")?;
            if off.len() != 2 || off[1] < off[0] {
                return Err(Error::tensor(origin, name, format!("data_offsets {off:?}")));
            }
            let e = Entry { name: name.clone(), dtype, shape, start: off[0], end: off[1] };
            if e.is_float() && e.numel() * dtype_size(dtype) != e.end - e.start {
                return Err(Error::tensor(origin, name, "data_offsets do not match its shape and dtype"));
            }
            entries.insert(name.clone(), e);
        }
        Ok(Index { origin: origin.to_string(), entries, metadata, data_start: 8 + n })
    }

    /// Reads the header of a file without reading its data.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Index> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        let n = u64::from_le_bytes(len) as usize;
        if n > 100 << 20 {
            return Err(Error::file(path, format!("not a valid safetensors file: header of {n} bytes")));
        }
        let mut head = vec![0u8; 8 + n];
        head[..8].copy_from_slice(&len);
        f.read_exact(&mut head[8..]).map_err(|e| Error::file(path, format!("header cut short: {e}")))?;
        let idx = Index::parse(&head, &path.display().to_string())?;
        let size = f.metadata().map_err(|e| Error::file(path, e))?.len() as usize;
        if let Some(e) = idx.entries.values().find(|e| idx.data_start + e.end > size) {
            return Err(Error::tensor(path, &e.name, format!("data past the end of the file ({size} bytes)")));
        }
        Ok(idx)
    }

    /// The floating-point tensors (the others, such as position-id buffers, are not merged).
    pub fn floats(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().filter(|e| e.is_float())
    }

    /// Decodes one tensor's bytes (its byte range of the data section) to f32.
    pub fn decode(&self, e: &Entry, raw: &[u8]) -> Result<HostTensor> {
        if raw.len() != e.end - e.start {
            return Err(Error::tensor(&self.origin, &e.name, "cut short"));
        }
        let data: Vec<f32> = match e.dtype {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            d => return Err(Error::tensor(&self.origin, &e.name, format!("dtype {d:?} is not floating point"))),
        };
        Ok(HostTensor::new(e.shape.clone(), data))
    }

    /// One tensor from the whole file's bytes in memory.
    pub fn read_from_bytes(&self, bytes: &[u8], name: &str) -> Result<HostTensor> {
        let e = self.entry(name)?;
        let (s, t) = (self.data_start + e.start, self.data_start + e.end);
        let raw = bytes.get(s..t).ok_or_else(|| Error::tensor(&self.origin, name, "data past the end"))?;
        self.decode(e, raw)
    }

    /// One tensor read from an open file by its byte range.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_from_file(&self, f: &mut std::fs::File, name: &str) -> Result<HostTensor> {
        use std::io::{Read, Seek, SeekFrom};
        let e = self.entry(name)?;
        let mut raw = vec![0u8; e.end - e.start];
        f.seek(SeekFrom::Start((self.data_start + e.start) as u64))
            .and_then(|_| f.read_exact(&mut raw))
            .map_err(|err| Error::tensor(&self.origin, name, format!("cannot read: {err}")))?;
        self.decode(e, &raw)
    }

    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::tensor(&self.origin, name, "missing"))
    }
}

/// The header of a file to be written tensor by tensor in the given order, as f32, f16 or bf16.
pub struct Layout {
    pub entries: Vec<(String, Vec<usize>)>,
    pub dtype: Dtype,
    pub metadata: BTreeMap<String, String>,
}

impl Layout {
    /// The header bytes (length prefix and JSON, padded to 8 bytes).
    pub fn header(&self) -> Vec<u8> {
        let mut obj = serde_json::Map::new();
        if !self.metadata.is_empty() {
            obj.insert("__metadata__".into(), serde_json::json!(self.metadata));
        }
        let size = dtype_size(self.dtype);
        let mut at = 0usize;
        for (name, shape) in &self.entries {
            let bytes = shape.iter().product::<usize>() * size;
            obj.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype_name(self.dtype), "shape": shape, "data_offsets": [at, at + bytes]}),
            );
            at += bytes;
        }
        let mut json = serde_json::to_vec(&obj).unwrap();
        while !(json.len() + 8).is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out
    }

    /// One tensor's values in the file's dtype.
    pub fn encode(&self, data: &[f32]) -> Vec<u8> {
        match self.dtype {
            Dtype::F16 => data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            Dtype::BF16 => data.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            _ => bytemuck::cast_slice(data).to_vec(),
        }
    }
}

/// Writes a safetensors file tensor by tensor into `path` + ".partial", renamed over `path` by
/// `finish`; dropping it unfinished removes the partial file, so a failed write never leaves a
/// broken file or touches an existing one.
#[cfg(not(target_arch = "wasm32"))]
pub struct Writer {
    layout: Layout,
    next: usize,
    file: Option<std::io::BufWriter<std::fs::File>>,
    path: std::path::PathBuf,
    partial: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl Writer {
    pub fn create(path: &std::path::Path, layout: Layout) -> Result<Writer> {
        use std::io::Write;
        let partial = path.with_extension("safetensors.partial");
        let f = std::fs::File::create(&partial).map_err(|e| Error::file(&partial, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, f);
        file.write_all(&layout.header()).map_err(|e| Error::file(&partial, e))?;
        Ok(Writer { layout, next: 0, file: Some(file), path: path.to_path_buf(), partial })
    }

    /// The next tensor, in layout order.
    pub fn write(&mut self, name: &str, data: &[f32]) -> Result<()> {
        use std::io::Write;
        let (want, shape) = self
            .layout
            .entries
            .get(self.next)
            .ok_or_else(|| Error::tensor(&self.path, name, "more tensors than the layout holds"))?;
        if want != name || shape.iter().product::<usize>() != data.len() {
            return Err(Error::tensor(&self.path, name, format!("written out of order (expected {want} {shape:?})")));
        }
        let bytes = self.layout.encode(data);
        self.file.as_mut().unwrap().write_all(&bytes).map_err(|e| Error::file(&self.partial, e))?;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        use std::io::Write;
        if self.next != self.layout.entries.len() {
            return Err(Error::file(
                &self.path,
                format!("only {} of {} tensors written", self.next, self.layout.entries.len()),
            ));
        }
        let mut file = self.file.take().unwrap();
        file.flush().map_err(|e| Error::file(&self.partial, e))?;
        let f = file.into_inner().map_err(|e| Error::file(&self.partial, e.to_string()))?;
        f.sync_all().map_err(|e| Error::file(&self.partial, e))?;
        std::fs::rename(&self.partial, &self.path).map_err(|e| Error::file(&self.path, e))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
