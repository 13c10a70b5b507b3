//! Linear layers over a frozen weight kept in llama.cpp's quantised blocks (Q4_0, Q4_1, Q8_0) or
//! bitsandbytes' NF4 (`quant::nf4`), de-quantised on the fly: the forward y = x Wᵀ and the input gradient dx = dy W (a frozen base needs no
//! dW). The kernels of `shaders/qmatmul.wgsl` and their CPU twins in `cpu::qmatmul`.

use super::{device_of, launch, rows_cols, u32_of, want_f32, Grid};
use crate::cpu::qmatmul as cpu;
use crate::error::{Error, Result};
use crate::ops::params::QMatmulParams;
use crate::quant::{nf4, GgmlType};
use crate::tensor::{DType, Device, Tensor};

/// A frozen (rows, cols) weight as its blocks' bytes on a device (packed in u32 words).
#[derive(Clone, Debug)]
pub struct QWeight {
    pub kind: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub words: Tensor,
}

impl QWeight {
    /// The weight from its blocks' bytes (row after row, `cols` a multiple of 32).
    pub fn new(dev: &Device, kind: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<QWeight> {
        let op = "qweight";
        if !kind.is_quantised() {
            return Err(Error::shape(op, format!("{} is not a block-quantised type", kind.name())));
        }
        let (per, size) = kind.block();
        if !cols.is_multiple_of(per) || rows == 0 {
            return Err(Error::shape(op, format!("({rows}, {cols}) is not rows of whole {per}-value blocks")));
        }
        let want = if kind.is_nf4() {
            nf4::device_len(rows * cols, kind == GgmlType::Nf4Double)
        } else {
            rows * cols / per * size
        };
        if bytes.len() != want {
            return Err(Error::shape(
                op,
                format!("{} bytes for ({rows}, {cols}) of {}, expected {want}", bytes.len(), kind.name()),
            ));
        }
        let mut words = vec![0u32; want.div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..want].copy_from_slice(bytes);
        let n = words.len();
        Ok(QWeight { kind, rows, cols, words: dev.tensor_u32(&words, &[n])? })
    }

    /// A weight quantised to NF4 (`Nf4::quantize` or bitsandbytes' state), (rows, cols) row-major.
    pub fn from_nf4(dev: &Device, rows: usize, cols: usize, w: &nf4::Nf4) -> Result<QWeight> {
        if w.n != rows * cols {
            return Err(Error::shape("qweight", format!("{} NF4 values for ({rows}, {cols})", w.n)));
        }
        let kind = if w.is_double() { GgmlType::Nf4Double } else { GgmlType::Nf4 };
        QWeight::new(dev, kind, rows, cols, &w.device_bytes())
    }

    /// Bytes the weight takes on its device.
    pub fn device_bytes(&self) -> usize {
        self.words.numel() * 4
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self.words.cpu_u32())
    }
}

fn params(op: &'static str, n: usize, w: &QWeight) -> Result<QMatmulParams> {
    Ok(QMatmulParams {
        n: u32_of(op, "rows of x", n)?,
        rows: u32_of(op, "rows of W", w.rows)?,
        cols: u32_of(op, "cols of W", w.cols)?,
        kind: w.kind.id(),
    })
}

/// y = x Wᵀ for x (…, cols) → (…, rows).
pub fn qlinear(x: &Tensor, w: &QWeight) -> Result<Tensor> {
    let op = "qmatmul_forward";
    let (n, k) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    if k != w.cols || w.words.dtype() != DType::U32 {
        return Err(Error::shape(op, format!("x {:?} against W ({}, {})", x.shape(), w.rows, w.cols)));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = w.rows;
    let dev = device_of(op, &[x, &w.words])?;
    let mut y = dev.uninit(op, &shape)?;
    match &dev {
        Device::Cpu => cpu::qmatmul_forward(y.cpu_f32_mut(), x.cpu_f32(), w.bytes(), w.kind, w.rows, w.cols),
        Device::Gpu(g) => {
            let p = params(op, n, w)?;
            launch(g, op, "qmatmul_forward", &p, &[x, &w.words], &[&y], Grid::Items(n * w.rows, 64))?;
        }
    }
    Ok(y)
}

/// dx = dy W for dy (…, rows) → (…, cols).
pub fn qlinear_dx(dy: &Tensor, w: &QWeight) -> Result<Tensor> {
    let op = "qmatmul_dx";
    let (n, r) = rows_cols(op, dy)?;
    want_f32(op, "dy", dy)?;
    if r != w.rows {
        return Err(Error::shape(op, format!("dy {:?} against W ({}, {})", dy.shape(), w.rows, w.cols)));
    }
    let mut shape = dy.shape().to_vec();
    *shape.last_mut().unwrap() = w.cols;
    let dev = device_of(op, &[dy, &w.words])?;
    let mut dx = dev.uninit(op, &shape)?;
    match &dev {
        Device::Cpu => cpu::qmatmul_dx(dx.cpu_f32_mut(), dy.cpu_f32(), w.bytes(), w.kind, w.rows, w.cols),
        Device::Gpu(g) => {
            let p = params(op, n, w)?;
            launch(g, op, "qmatmul_dx", &p, &[dy, &w.words], &[&dx], Grid::Items(n * w.cols, 64))?;
        }
    }
    Ok(dx)
}
