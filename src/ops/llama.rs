//! Ops of the Llama family: RMSNorm, rotary position embedding (HF's rotate-half layout), the SwiGLU
//! gate and the key/value head repetition of grouped-query attention, forward and backward; the
//! kernels of `shaders/llama.wgsl` and their CPU twins in `cpu::llama`.

use super::{device_of, launch, rows_cols, u32_of, want_f32, want_shape, Grid};
use crate::cpu::llama as cpu;
use crate::error::{Error, Result};
use crate::ops::params::LlamaParams;
use crate::tensor::{Device, Tensor};

fn params(op: &'static str, rows: usize, cols: usize, a: usize, b: usize) -> Result<LlamaParams> {
    Ok(LlamaParams {
        rows: u32_of(op, "rows", rows)?,
        cols: u32_of(op, "cols", cols)?,
        a: u32_of(op, "a", a)?,
        b: u32_of(op, "b", b)?,
        eps: 0.0,
        sign: 1.0,
        _pad0: 0,
        _pad1: 0,
    })
}

/// RMSNorm over the last dimension: (y, rstd), rstd (rows) for the backward.
pub fn rmsnorm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "rmsnorm";
    let (rows, cols) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    want_shape(op, "gamma", gamma, &[cols])?;
    let dev = device_of(op, &[x, gamma])?;
    let mut y = dev.uninit(op, x.shape())?;
    let mut rstd = dev.uninit(op, &[rows])?;
    match &dev {
        Device::Cpu => {
            cpu::rmsnorm_forward(y.cpu_f32_mut(), rstd.cpu_f32_mut(), x.cpu_f32(), gamma.cpu_f32(), cols, eps)
        }
        Device::Gpu(g) => {
            let p = LlamaParams { eps, ..params(op, rows, cols, 0, 0)? };
            launch(g, op, "llama_rmsnorm_forward", &p, &[x, gamma], &[&y, &rstd], Grid::Rows(rows))?;
        }
    }
    Ok((y, rstd))
}

/// Backward of `rmsnorm`: returns dx; accumulates dγ when given.
pub fn rmsnorm_backward(
    dgamma: Option<&mut Tensor>,
    dy: &Tensor,
    x: &Tensor,
    rstd: &Tensor,
    gamma: &Tensor,
) -> Result<Tensor> {
    let op = "rmsnorm_backward";
    let (rows, cols) = rows_cols(op, x)?;
    want_shape(op, "dy", dy, x.shape())?;
    want_shape(op, "rstd", rstd, &[rows])?;
    want_shape(op, "gamma", gamma, &[cols])?;
    let dev = device_of(op, &[dy, x, rstd, gamma])?;
    let mut dgamma = dgamma;
    if let Some(t) = dgamma.as_mut() {
        want_shape(op, "dgamma", t, &[cols])?;
        t.make_unique()?;
    }
    let mut dx = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => cpu::rmsnorm_backward(
            dx.cpu_f32_mut(),
            dgamma.map(|t| t.cpu_f32_mut()),
            dy.cpu_f32(),
            x.cpu_f32(),
            rstd.cpu_f32(),
            gamma.cpu_f32(),
            cols,
        ),
        Device::Gpu(g) => {
            let p = params(op, rows, cols, 0, 0)?;
            launch(g, op, "llama_rmsnorm_backward", &p, &[dy, x, rstd, gamma], &[&dx], Grid::Rows(rows))?;
            if let Some(dg) = dgamma {
                launch(g, op, "llama_rmsnorm_param_backward", &p, &[dy, x, rstd], &[&*dg], Grid::Items(cols, 64))?;
            }
        }
    }
    Ok(dx)
}

/// Rotary embedding of x (…, T, H·D) with heads of `head_dim`, the position of each row read from the
/// tables cos, sin (T, D/2) (see `rope_tables`); `backward` turns the other way (the gradient).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, head_dim: usize, backward: bool) -> Result<Tensor> {
    let op = "rope";
    let (rows, cols) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    let s = x.shape();
    let t = if s.len() >= 2 { s[s.len() - 2] } else { 1 };
    if head_dim == 0 || !head_dim.is_multiple_of(2) || !cols.is_multiple_of(head_dim) {
        return Err(Error::shape(op, format!("{cols} channels are not heads of an even size {head_dim}")));
    }
    want_shape(op, "cos", cos, &[t, head_dim / 2])?;
    want_shape(op, "sin", sin, &[t, head_dim / 2])?;
    let dev = device_of(op, &[x, cos, sin])?;
    let sign = if backward { -1.0 } else { 1.0 };
    let mut out = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => cpu::rope(out.cpu_f32_mut(), x.cpu_f32(), cos.cpu_f32(), sin.cpu_f32(), cols, t, head_dim, sign),
        Device::Gpu(g) => {
            let p = LlamaParams { sign, ..params(op, rows, cols, t, head_dim)? };
            launch(g, op, "llama_rope", &p, &[x, cos, sin], &[&out], Grid::Items(rows * cols / 2, 64))?;
        }
    }
    Ok(out)
}

/// The cos and sin tables (T, D/2) of positions `first .. first + T` as HF's Llama computes them in
/// f32: inverse frequencies base^(−2i/D), angles position · frequency.
pub fn rope_tables(first: usize, t: usize, head_dim: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
    let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
    for pos in first..first + t {
        for &f in &inv {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// The SwiGLU gate silu(g) ⊙ u.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let op = "swiglu";
    rows_cols(op, g)?;
    want_f32(op, "g", g)?;
    want_shape(op, "u", u, g.shape())?;
    let dev = device_of(op, &[g, u])?;
    let mut y = dev.uninit(op, g.shape())?;
    match &dev {
        Device::Cpu => cpu::swiglu_forward(y.cpu_f32_mut(), g.cpu_f32(), u.cpu_f32()),
        Device::Gpu(gp) => {
            let n = g.numel();
            let p = params(op, n, 0, 0, 0)?;
            launch(gp, op, "llama_swiglu_forward", &p, &[g, u], &[&y], Grid::Items(n, 256))?;
        }
    }
    Ok(y)
}

/// Backward of `swiglu`: (dg, du).
pub fn swiglu_backward(dy: &Tensor, g: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "swiglu_backward";
    rows_cols(op, g)?;
    want_shape(op, "dy", dy, g.shape())?;
    want_shape(op, "u", u, g.shape())?;
    let dev = device_of(op, &[dy, g, u])?;
    let mut dg = dev.uninit(op, g.shape())?;
    let mut du = dev.uninit(op, g.shape())?;
    match &dev {
        Device::Cpu => cpu::swiglu_backward(dg.cpu_f32_mut(), du.cpu_f32_mut(), dy.cpu_f32(), g.cpu_f32(), u.cpu_f32()),
        Device::Gpu(gp) => {
            let n = g.numel();
            let p = params(op, n, 0, 0, 0)?;
            launch(gp, op, "llama_swiglu_backward", &p, &[dy, g, u], &[&dg, &du], Grid::Items(n, 256))?;
        }
    }
    Ok((dg, du))
}

/// Key/value heads of size `head_dim` repeated `groups` times: (…, Hkv·D) → (…, Hkv·groups·D), query
/// head h reading key/value head h / groups (grouped-query attention).
pub fn repeat_kv(x: &Tensor, head_dim: usize, groups: usize) -> Result<Tensor> {
    let op = "repeat_kv";
    let (rows, cols) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    if head_dim == 0 || groups == 0 || cols % head_dim != 0 {
        return Err(Error::shape(op, format!("{cols} channels are not heads of {head_dim} (groups {groups})")));
    }
    if groups == 1 {
        return Ok(x.clone());
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = cols * groups;
    let dev = x.device();
    let mut out = dev.uninit(op, &shape)?;
    match &dev {
        Device::Cpu => cpu::repeat_kv_forward(out.cpu_f32_mut(), x.cpu_f32(), cols, head_dim, groups),
        Device::Gpu(g) => {
            let p = params(op, rows, cols, head_dim, groups)?;
            launch(g, op, "llama_repeat_kv_forward", &p, &[x], &[&out], Grid::Items(rows * cols * groups, 256))?;
        }
    }
    Ok(out)
}

/// Backward of `repeat_kv`: (…, Hkv·groups·D) → (…, Hkv·D), each head's copies summed.
pub fn repeat_kv_backward(dout: &Tensor, head_dim: usize, groups: usize) -> Result<Tensor> {
    let op = "repeat_kv_backward";
    let (rows, wide) = rows_cols(op, dout)?;
    want_f32(op, "dout", dout)?;
    if head_dim == 0 || groups == 0 || wide % (head_dim * groups) != 0 {
        return Err(Error::shape(op, format!("{wide} channels are not {groups} groups of heads of {head_dim}")));
    }
    if groups == 1 {
        return Ok(dout.clone());
    }
    let cols = wide / groups;
    let mut shape = dout.shape().to_vec();
    *shape.last_mut().unwrap() = cols;
    let dev = dout.device();
    let mut dx = dev.uninit(op, &shape)?;
    match &dev {
        Device::Cpu => cpu::repeat_kv_backward(dx.cpu_f32_mut(), dout.cpu_f32(), cols, head_dim, groups),
        Device::Gpu(g) => {
            let p = params(op, rows, cols, head_dim, groups)?;
            launch(g, op, "llama_repeat_kv_backward", &p, &[dout], &[&dx], Grid::Items(rows * cols, 256))?;
        }
    }
    Ok(dx)
}
