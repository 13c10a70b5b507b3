//! ScaLearn's ops: the scaled combination of source adapters' outputs and its backward, the kernels
//! of `shaders/scalearn.wgsl` and their CPU twins in `cpu::scalearn`.

use super::{device_of, launch, rows_cols, u32_of, want_f32, Grid};
use crate::cpu::scalearn as cpu;
use crate::error::{Error, Result};
use crate::ops::params::ScaLearnParams;
use crate::tensor::{Device, Tensor};

const SCALAR: u32 = 1;
const ACCUMULATE: u32 = 2;

/// (sources, scalar) of ω for outputs `cols` wide: (S, cols) is ScaLearn's vector, (S, 1) the scalar.
fn omega_dims(op: &'static str, w: &Tensor, cols: usize) -> Result<(usize, bool)> {
    want_f32(op, "omega", w)?;
    match w.shape() {
        [s, c] if *c == cols => Ok((*s, false)),
        [s, 1] => Ok((*s, true)),
        other => Err(Error::shape(op, format!("omega {other:?} fits neither (S, {cols}) nor (S, 1)"))),
    }
}

fn params(op: &'static str, rows: usize, cols: usize, source: usize, flags: u32) -> Result<ScaLearnParams> {
    Ok(ScaLearnParams {
        rows: u32_of(op, "rows", rows)?,
        cols: u32_of(op, "cols", cols)?,
        source: u32_of(op, "source", source)?,
        flags,
    })
}

/// `y (+)= ω_s ⊙ x` for x (…, cols): accumulating into `y` (the combination, one call per source) or
/// into a fresh tensor (returned) when `y` is `None` (the gradient of source s's output).
pub fn scale(y: Option<&mut Tensor>, x: &Tensor, w: &Tensor, source: usize) -> Result<Option<Tensor>> {
    let op = "scalearn_scale";
    let (rows, cols) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    let (sources, scalar) = omega_dims(op, w, cols)?;
    if source >= sources {
        return Err(Error::shape(op, format!("source {source} of {sources}")));
    }
    device_of(op, &[x, w])?;
    let acc = y.is_some();
    let mut fresh = None;
    let y = match y {
        Some(y) => {
            if y.shape() != x.shape() {
                return Err(Error::shape(op, format!("y {:?} and x {:?} differ", y.shape(), x.shape())));
            }
            y.make_unique()?;
            y
        }
        None => fresh.insert(x.device().uninit(op, x.shape())?),
    };
    match x.device() {
        Device::Cpu => cpu::scalearn_scale(y.cpu_f32_mut(), x.cpu_f32(), w.cpu_f32(), cols, source, scalar, acc),
        Device::Gpu(g) => {
            let flags = if scalar { SCALAR } else { 0 } | if acc { ACCUMULATE } else { 0 };
            let p = params(op, rows, cols, source, flags)?;
            launch(&g, op, "scalearn_scale", &p, &[w, x], &[&*y], Grid::Items(rows * cols, 256))?;
        }
    }
    Ok(fresh)
}

/// `dω_s += Σ_rows dout ⊙ a` (summed over the columns too for a scalar ω), into row `source` of `dw`.
pub fn grad(dw: &mut Tensor, dout: &Tensor, a: &Tensor, source: usize) -> Result<()> {
    let op = "scalearn_grad";
    let (rows, cols) = rows_cols(op, a)?;
    want_f32(op, "a", a)?;
    want_f32(op, "dout", dout)?;
    if dout.shape() != a.shape() {
        return Err(Error::shape(op, format!("dout {:?} and a {:?} differ", dout.shape(), a.shape())));
    }
    let (sources, scalar) = omega_dims(op, dw, cols)?;
    if source >= sources {
        return Err(Error::shape(op, format!("source {source} of {sources}")));
    }
    device_of(op, &[dout, a, dw])?;
    dw.make_unique()?;
    match a.device() {
        Device::Cpu => cpu::scalearn_grad(dw.cpu_f32_mut(), dout.cpu_f32(), a.cpu_f32(), cols, source, scalar),
        Device::Gpu(g) => {
            let p = params(op, rows, cols, source, if scalar { SCALAR } else { 0 })?;
            let grid = if scalar { Grid::Fixed([1, 1, 1]) } else { Grid::Items(cols, 256) };
            launch(&g, op, "scalearn_grad", &p, &[dout, a], &[&*dw], grid)?;
        }
    }
    Ok(())
}
