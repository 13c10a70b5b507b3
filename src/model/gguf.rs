//! GGUF files (llama.cpp's format, version 2 and 3): the header, the metadata key/values, the tensor
//! table, and the tensors' bytes, with every read bounds-checked so that a truncated or corrupt file
//! is an error naming the file and what was being read. Quantised blocks are llama.cpp's layouts
//! (`crate::quant`). Dimensions
//! are GGML's order: `dims[0]` is the innermost (a row's length), so a (rows, cols) weight has
//! dims [cols, rows].

use std::collections::BTreeMap;

use crate::error::{Error, Result};
pub use crate::quant::{dequantize, GgmlType};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// An unsigned integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: dims[0] innermost.
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    /// Offset of the tensor's bytes from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the tensor in the file.
    pub fn bytes(&self) -> u64 {
        let (per, bytes) = self.kind.block();
        self.numel() / per as u64 * bytes as u64
    }

    /// (rows, cols) in row-major terms: cols = dims[0], rows = the product of the rest.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        (self.numel() as usize / cols.max(1), cols)
    }
}

/// A parsed GGUF header: metadata, tensor table and where the data starts.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub origin: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section in the file.
    pub data_start: u64,
    pub alignment: u64,
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    origin: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() - self.pos < n {
            return Err(Error::file(
                self.origin,
                format!("truncated: {what} needs {n} bytes at offset {}, the file has {}", self.pos, self.b.len()),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > (self.b.len() - self.pos) as u64 {
            return Err(Error::file(
                self.origin,
                format!("truncated or corrupt: {what} of {n} bytes at offset {}", self.pos),
            ));
        }
        let s = self.take(n as usize, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| Error::file(self.origin, format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(Error::file(self.origin, format!("{what}: arrays nested too deep")));
                }
                let inner = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the file is corrupt.
                if n > (self.b.len() - self.pos) as u64 {
                    return Err(Error::file(self.origin, format!("truncated or corrupt: {what} claims {n} elements")));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(Error::file(self.origin, format!("{what} has an unknown value type {t}"))),
        })
    }
}

impl Gguf {
    /// Parses the header of a GGUF file from its first bytes (all of the header must be there; the
    /// tensors' bytes may follow or not). `file_len` is the whole file's length, to check that every
    /// tensor lies inside it.
    pub fn parse(head: &[u8], file_len: u64, origin: &str) -> Result<Gguf> {
        let mut r = Reader { b: head, pos: 0, origin };
        let magic = r.take(4, "the magic")?;
        if magic != b"GGUF" {
            return Err(Error::file(origin, "not a GGUF file (no `GGUF` magic)"));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::file(origin, format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&format!("the type of `{key}`"))?;
            let v = r.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let nd = r.u32(&format!("the dimensions of `{name}`"))?;
            if nd == 0 || nd > 4 {
                return Err(Error::tensor(origin, &name, format!("{nd} dimensions (1 to 4 expected)")));
            }
            let dims = (0..nd).map(|_| r.u64(&format!("the shape of `{name}`"))).collect::<Result<Vec<_>>>()?;
            let id = r.u32(&format!("the type of `{name}`"))?;
            let kind = GgmlType::from_id(id).ok_or_else(|| {
                Error::tensor(
                    origin,
                    &name,
                    format!("tensor type {id} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0 are)"),
                )
            })?;
            let offset = r.u64(&format!("the offset of `{name}`"))?;
            let t = TensorInfo { name, dims, kind, offset };
            if t.dims.contains(&0) || !t.numel().is_multiple_of(kind.block().0 as u64) {
                return Err(Error::tensor(
                    origin,
                    &t.name,
                    format!("shape {:?} is not a whole number of {} blocks", t.dims, kind.name()),
                ));
            }
            tensors.push(t);
        }
        let alignment = metadata.get("general.alignment").and_then(|v| v.as_u64()).unwrap_or(32);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(Error::file(origin, format!("general.alignment {alignment} is not a power of two")));
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            let end = data_start + t.offset + t.bytes();
            if end > file_len {
                return Err(Error::tensor(
                    origin,
                    &t.name,
                    format!("truncated: its bytes end at {end}, the file has {file_len}"),
                ));
            }
        }
        Ok(Gguf { origin: origin.to_string(), version, metadata, tensors, data_start, alignment })
    }

    /// Parses a whole file in memory.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Gguf> {
        Self::parse(bytes, bytes.len() as u64, origin)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `t` in `file` (the whole file).
    pub fn tensor_bytes<'a>(&self, file: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
        let start = (self.data_start + t.offset) as usize;
        file.get(start..start + t.bytes() as usize)
            .ok_or_else(|| Error::tensor(&self.origin, &t.name, "truncated: its bytes are past the end of the file"))
    }
}

impl Value {
    /// The GGUF type id of this value.
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(*v as u8),
            Value::Str(s) => write_string(out, s),
            Value::Array(a) => {
                // An empty array is written as one of strings.
                out.extend(a.first().map_or(8, Value::type_id).to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|v| v.write(out));
            }
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF version 3 file: the metadata, then each tensor (name, GGML dims with dims[0] innermost, type,
/// its bytes in that type's layout), aligned to 32 bytes. Refuses a tensor whose bytes do not fit its
/// shape, or an array mixing value types.
pub fn write_gguf(metadata: &[(&str, Value)], tensors: &[(&str, Vec<u64>, GgmlType, &[u8])]) -> Result<Vec<u8>> {
    const ALIGN: usize = 32;
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        if let Value::Array(a) = v {
            if a.iter().any(|x| x.type_id() != a[0].type_id()) {
                return Err(Error::invalid(format!("metadata `{key}`: an array mixes value types")));
            }
        }
        write_string(&mut out, key);
        out.extend(v.type_id().to_le_bytes());
        v.write(&mut out);
    }
    let mut offset = 0usize;
    for (name, dims, kind, bytes) in tensors {
        let t = TensorInfo { name: name.to_string(), dims: dims.clone(), kind: *kind, offset: offset as u64 };
        if !t.numel().is_multiple_of(kind.block().0 as u64) || t.bytes() != bytes.len() as u64 {
            return Err(Error::tensor(
                "<new GGUF>",
                name,
                format!("{} bytes do not make a {} tensor of shape {dims:?}", bytes.len(), kind.name()),
            ));
        }
        write_string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(kind.id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset += bytes.len().div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    for (_, _, _, bytes) in tensors {
        out.extend(*bytes);
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    Ok(out)
}
