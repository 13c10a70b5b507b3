//! The ops both devices share: each checks shapes, dtypes and devices, then runs the CPU kernel
//! (`crate::cpu`) or records the GPU kernel (`shaders/`). Forward ops return new tensors; backward ops
//! return activation gradients and accumulate (`+=`) into the parameter gradients they are given.

mod attention;
pub mod llama;
pub mod merge;
pub mod params;
pub mod qmatmul;
pub mod scalearn;

pub use attention::{attention, attention_backward, attention_masked, AttnMask};

use crate::cpu;
pub use crate::desc::{AdamWStep, MatmulDesc, RowMask, Strides};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::{DType, Device, Tensor};
use params::*;

// ---------------------------------------------------------------------------------------------
// helpers

fn device_of(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if !t.device().same(&d) {
            return Err(Error::shape(op, format!("tensors on different devices: {:?} and {:?}", ts[0], t)));
        }
    }
    Ok(d)
}

fn want_f32(op: &'static str, name: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("`{name}` must be f32, got {:?}", t.dtype())));
    }
    Ok(())
}

fn want_shape(op: &'static str, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(op, format!("`{name}` has shape {:?}, expected {shape:?}", t.shape())));
    }
    Ok(())
}

/// Splits a shape into (rows, last dimension); rejects zero-sized and rank-0 shapes.
fn rows_cols(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let s = t.shape();
    if s.is_empty() || s.contains(&0) {
        return Err(Error::shape(op, format!("needs a non-empty tensor, got shape {s:?}")));
    }
    let cols = *s.last().unwrap();
    Ok((t.numel() / cols, cols))
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Limit { op, msg: format!("{what} = {v} does not fit in 32 bits") })
}

/// Workgroups of `wg` invocations covering `n` items.
fn groups(n: usize, wg: usize) -> u64 {
    n.div_ceil(wg) as u64
}

/// The workgroups a kernel runs.
enum Grid {
    /// Enough `wg`-wide workgroups to cover `n` items (folded into 2-D past the per-dimension limit).
    Items(usize, usize),
    /// One workgroup per row (folded into 2-D past the limit).
    Rows(usize),
    /// Exactly these.
    Fixed([u32; 3]),
}

/// Records one GPU kernel: its uniform block, the tensors it reads and those it writes (in its
/// binding order), over `grid`.
fn launch<P: bytemuck::Pod>(
    g: &Gpu,
    op: &'static str,
    entry: &'static str,
    params: &P,
    reads: &[&Tensor],
    writes: &[&Tensor],
    grid: Grid,
) -> Result<()> {
    let grid = match grid {
        Grid::Items(n, wg) => g.grid(op, groups(n, wg))?,
        Grid::Rows(rows) => g.grid(op, rows as u64)?,
        Grid::Fixed(grid) => grid,
    };
    let reads: Vec<&wgpu::Buffer> = reads.iter().map(|t| t.buf()).collect();
    let writes: Vec<&wgpu::Buffer> = writes.iter().map(|t| t.buf()).collect();
    g.dispatch(entry, bytemuck::bytes_of(params), &reads, &writes, grid)
}

// ---------------------------------------------------------------------------------------------
// matmul

/// Which GPU matmul kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    Naive,
    Tiled,
}

/// Runs `d` writing into `c`: the general form every other matmul goes through.
pub fn matmul_into(c: &mut Tensor, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, d: &MatmulDesc) -> Result<()> {
    matmul_into_with(c, a, b, bias, d, MatmulKernel::Tiled)
}

/// `matmul_into` with a choice of GPU kernel (for tests and benchmarks).
pub fn matmul_into_with(
    c: &mut Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    d: &MatmulDesc,
    kernel: MatmulKernel,
) -> Result<()> {
    let op = "matmul";
    let mut ts = vec![&*c, a, b];
    ts.extend(bias);
    let dev = device_of(op, &ts)?;
    for (n, t) in [("A", a), ("B", b), ("C", &*c)] {
        want_f32(op, n, t)?;
    }
    d.check(a.numel(), b.numel(), c.numel())?;
    c.make_unique()?;
    if let Some(bias) = bias {
        want_f32(op, "bias", bias)?;
        want_shape(op, "bias", bias, &[d.n])?;
    }
    match dev {
        Device::Cpu => {
            let bias_v = bias.map(|t| t.cpu_f32().to_vec());
            cpu::matmul(c.cpu_f32_mut(), a.cpu_f32(), b.cpu_f32(), bias_v.as_deref(), d);
            Ok(())
        }
        Device::Gpu(g) => {
            let p = MatmulParams::new(d, bias.is_some())?;
            let entry = match kernel {
                MatmulKernel::Naive => "matmul_naive",
                MatmulKernel::Tiled => "matmul_tiled",
            };
            let tile = if kernel == MatmulKernel::Naive { 16 } else { 64 };
            let batch = u32_of(op, "batch", d.batch[0] * d.batch[1])?;
            let grid = [d.n.div_ceil(tile) as u32, d.m.div_ceil(tile) as u32, batch];
            // An unused bias binding still needs a buffer: bind A.
            let bias_t = bias.unwrap_or(a);
            launch(&g, op, entry, &p, &[a, b, bias_t], &[&*c], Grid::Fixed(grid))
        }
    }
}

/// (…, m, k)·(…, k, n) for 2-D tensors or 3-D batches, with op(·) = transpose when asked.
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let op = "matmul";
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != sb.len() || !(sa.len() == 2 || sa.len() == 3) {
        return Err(Error::shape(op, format!("needs two 2-D or two 3-D tensors, got {sa:?} and {sb:?}")));
    }
    let r = sa.len();
    let batch = if r == 3 { sa[0] } else { 1 };
    if r == 3 && sb[0] != batch {
        return Err(Error::shape(op, format!("batch sizes differ: {sa:?} and {sb:?}")));
    }
    let (m, ka) = if trans_a { (sa[r - 1], sa[r - 2]) } else { (sa[r - 2], sa[r - 1]) };
    let (kb, n) = if trans_b { (sb[r - 1], sb[r - 2]) } else { (sb[r - 2], sb[r - 1]) };
    if ka != kb {
        return Err(Error::shape(
            op,
            format!(
                "inner dimensions differ: {sa:?}{} · {sb:?}{}",
                if trans_a { "ᵀ" } else { "" },
                if trans_b { "ᵀ" } else { "" }
            ),
        ));
    }
    let out_shape: Vec<usize> = if r == 3 { vec![batch, m, n] } else { vec![m, n] };
    let dev = device_of(op, &[a, b])?;
    let mut c = dev.uninit(op, &out_shape)?;
    matmul_into(&mut c, a, b, None, &MatmulDesc::contiguous(batch, m, n, ka, trans_a, trans_b))?;
    Ok(c)
}

/// y = x Wᵀ + b for x (…, in), W (out, in), b (out) — a PyTorch Linear.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let op = "linear";
    let (rows, k) = rows_cols(op, x)?;
    if w.shape().len() != 2 || w.dim(1) != k {
        return Err(Error::shape(op, format!("input {:?} does not fit weight {:?} (out, in)", x.shape(), w.shape())));
    }
    let n = w.dim(0);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    let dev = device_of(op, &[x, w])?;
    let mut y = dev.uninit(op, &out_shape)?;
    matmul_into(&mut y, x, w, b, &MatmulDesc::contiguous(1, rows, n, k, false, true))?;
    Ok(y)
}

/// Backward of `linear`: accumulates dW += dyᵀ x and db += Σ_rows dy into the gradients given,
/// and returns dx = dy W (when `need_dx`).
pub fn linear_backward(
    dw: Option<&mut Tensor>,
    db: Option<&mut Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    need_dx: bool,
) -> Result<Option<Tensor>> {
    let op = "linear_backward";
    let (rows, k) = rows_cols(op, x)?;
    let n = w.dim(0);
    if w.shape() != [n, k] || dy.numel() != rows * n || dy.shape().last() != Some(&n) {
        return Err(Error::shape(
            op,
            format!("dy {:?}, x {:?} and W {:?} do not agree", dy.shape(), x.shape(), w.shape()),
        ));
    }
    if let Some(dw) = dw {
        want_shape(op, "dW", dw, &[n, k])?;
        let mut d = MatmulDesc::contiguous(1, n, k, rows, true, false);
        d.accumulate = true;
        matmul_into(dw, dy, x, None, &d)?;
    }
    if let Some(db) = db {
        want_shape(op, "db", db, &[n])?;
        sum_rows_into(db, dy, true)?;
    }
    if !need_dx {
        return Ok(None);
    }
    let dev = device_of(op, &[dy, x, w])?;
    let mut dx = dev.uninit(op, x.shape())?;
    matmul_into(&mut dx, dy, w, None, &MatmulDesc::contiguous(1, rows, k, n, false, false))?;
    Ok(Some(dx))
}

// ---------------------------------------------------------------------------------------------
// layer norm

/// Layer norm over the last dimension: returns (y, mean, rstd); mean and rstd (rows) feed the backward.
pub fn layernorm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layernorm";
    let (rows, cols) = rows_cols(op, x)?;
    let dev = device_of(op, &[x, gamma, beta])?;
    want_f32(op, "x", x)?;
    want_shape(op, "gamma", gamma, &[cols])?;
    want_shape(op, "beta", beta, &[cols])?;
    let mut y = dev.uninit(op, x.shape())?;
    let mut mean = dev.uninit(op, &[rows])?;
    let mut rstd = dev.uninit(op, &[rows])?;
    match &dev {
        Device::Cpu => {
            let (gv, bv) = (gamma.cpu_f32().to_vec(), beta.cpu_f32().to_vec());
            let xv = x.cpu_f32().to_vec();
            let (mut yv, mut mv, mut rv) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
            cpu::layernorm_forward(&mut yv, &mut mv, &mut rv, &xv, &gv, &bv, cols, eps);
            y.cpu_f32_mut().copy_from_slice(&yv);
            mean.cpu_f32_mut().copy_from_slice(&mv);
            rstd.cpu_f32_mut().copy_from_slice(&rv);
        }
        Device::Gpu(g) => {
            let p = LayerNormParams {
                rows: u32_of(op, "rows", rows)?,
                cols: u32_of(op, "cols", cols)?,
                eps,
                accumulate: 0,
            };
            let grid = g.grid(op, rows as u64)?;
            launch(g, op, "layernorm_forward", &p, &[x, gamma, beta], &[&y, &mean, &rstd], Grid::Fixed(grid))?;
        }
    }
    Ok((y, mean, rstd))
}

/// Backward of `layernorm`: accumulates dgamma and dbeta when given; returns dx.
pub fn layernorm_backward(
    dgamma: Option<&mut Tensor>,
    dbeta: Option<&mut Tensor>,
    dy: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: &Tensor,
) -> Result<Tensor> {
    let op = "layernorm_backward";
    let (rows, cols) = rows_cols(op, x)?;
    let dev = device_of(op, &[dy, x, mean, rstd, gamma])?;
    want_shape(op, "dy", dy, x.shape())?;
    want_shape(op, "mean", mean, &[rows])?;
    want_shape(op, "rstd", rstd, &[rows])?;
    want_shape(op, "gamma", gamma, &[cols])?;
    if let Some(t) = &dgamma {
        want_shape(op, "dgamma", t, &[cols])?;
    }
    if let Some(t) = &dbeta {
        want_shape(op, "dbeta", t, &[cols])?;
    }
    let (mut dgamma, mut dbeta) = (dgamma, dbeta);
    if let Some(t) = dgamma.as_mut() {
        t.make_unique()?;
    }
    if let Some(t) = dbeta.as_mut() {
        t.make_unique()?;
    }
    let mut dx = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => {
            let mut dxv = vec![0.0; rows * cols];
            let mut dg = dgamma;
            let mut db = dbeta;
            cpu::layernorm_backward(
                &mut dxv,
                dg.as_mut().map(|t| t.cpu_f32_mut()),
                db.as_mut().map(|t| t.cpu_f32_mut()),
                dy.cpu_f32(),
                x.cpu_f32(),
                mean.cpu_f32(),
                rstd.cpu_f32(),
                gamma.cpu_f32(),
                cols,
                false,
            );
            dx.cpu_f32_mut().copy_from_slice(&dxv);
        }
        Device::Gpu(g) => {
            let p = LayerNormParams {
                rows: u32_of(op, "rows", rows)?,
                cols: u32_of(op, "cols", cols)?,
                eps: 0.0,
                accumulate: 0,
            };
            let grid = g.grid(op, rows as u64)?;
            launch(g, op, "layernorm_backward", &p, &[dy, x, mean, rstd, gamma], &[&dx], Grid::Fixed(grid))?;
            match (dgamma, dbeta) {
                (Some(dgm), Some(dbt)) => {
                    launch(
                        g,
                        op,
                        "layernorm_param_backward",
                        &p,
                        &[dy, x, mean, rstd],
                        &[&*dgm, &*dbt],
                        Grid::Fixed([groups(cols, 64) as u32, 1, 1]),
                    )?;
                }
                (Some(dgm), None) => {
                    let scratch = dev.zeros(&[cols])?;
                    launch(
                        g,
                        op,
                        "layernorm_param_backward",
                        &p,
                        &[dy, x, mean, rstd],
                        &[&*dgm, &scratch],
                        Grid::Fixed([groups(cols, 64) as u32, 1, 1]),
                    )?;
                }
                (None, Some(dbt)) => sum_rows_into(dbt, dy, true)?,
                (None, None) => {}
            }
        }
    }
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// elementwise

/// The output of an elementwise op: `out` (checked against x and made private before the write), or a
/// fresh tensor shaped like x held in `fresh`.
fn output<'a>(
    op: &'static str,
    out: Option<&'a mut Tensor>,
    x: &Tensor,
    fresh: &'a mut Option<Tensor>,
) -> Result<&'a mut Tensor> {
    match out {
        Some(o) => {
            want_shape(op, "out", o, x.shape())?;
            device_of(op, &[o, x])?;
            o.make_unique()?;
            Ok(o)
        }
        None => Ok(fresh.insert(x.device().uninit(op, x.shape())?)),
    }
}

/// out (+)= f(x); `out` None allocates a fresh output.
fn map(op: &'static str, out: Option<&mut Tensor>, x: &Tensor, code: u32, alpha: f32) -> Result<Option<Tensor>> {
    rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    let dev = x.device();
    let accumulate = out.is_some();
    let mut fresh = None;
    let out = output(op, out, x, &mut fresh)?;
    match &dev {
        Device::Cpu => {
            let mut r = vec![0.0; x.numel()];
            match code {
                MAP_RELU => cpu::relu_forward(&mut r, x.cpu_f32()),
                MAP_GELU => cpu::gelu_forward(&mut r, x.cpu_f32()),
                MAP_TANH => cpu::tanh_forward(&mut r, x.cpu_f32()),
                _ => cpu::scale(&mut r, x.cpu_f32(), alpha),
            }
            let o = out.cpu_f32_mut();
            if accumulate {
                o.iter_mut().zip(r).for_each(|(o, v)| *o += v);
            } else {
                o.copy_from_slice(&r);
            }
        }
        Device::Gpu(g) => {
            let n = x.numel();
            let p = ElementwiseParams {
                n: u32_of(op, "n", n)?,
                op: code,
                y_len: 1,
                accumulate: accumulate as u32,
                alpha,
                _pad: [0; 3],
            };
            launch(g, op, "elementwise_map", &p, &[x], &[&*out], Grid::Items(n, 256))?;
        }
    }
    Ok(fresh)
}

/// out (+)= g(x, y) with y broadcast by wrapping; `out` None allocates a fresh output.
fn zip(
    op: &'static str,
    out: Option<&mut Tensor>,
    x: &Tensor,
    y: &Tensor,
    code: u32,
    alpha: f32,
) -> Result<Option<Tensor>> {
    rows_cols(op, x)?;
    rows_cols(op, y)?;
    want_f32(op, "x", x)?;
    want_f32(op, "y", y)?;
    let (n, yl) = (x.numel(), y.numel());
    if n % yl != 0 || (yl != n && x.shape().last() != y.shape().last()) {
        return Err(Error::shape(op, format!("{:?} does not broadcast over {:?}", y.shape(), x.shape())));
    }
    let dev = device_of(op, &[x, y])?;
    let accumulate = out.is_some();
    let mut fresh = None;
    let out = output(op, out, x, &mut fresh)?;
    match &dev {
        Device::Cpu => {
            let (xv, yv) = (x.cpu_f32(), y.cpu_f32());
            let o = out.cpu_f32_mut();
            match code {
                ZIP_MUL => cpu::mul(o, xv, yv, accumulate),
                ZIP_GELU_BACKWARD => cpu::gelu_backward(o, xv, yv, accumulate),
                ZIP_TANH_BACKWARD => cpu::tanh_backward(o, xv, yv, accumulate),
                ZIP_RELU_BACKWARD => cpu::relu_backward(o, xv, yv, accumulate),
                _ => cpu::add(o, xv, yv, alpha, accumulate),
            }
        }
        Device::Gpu(g) => {
            let p = ElementwiseParams {
                n: u32_of(op, "n", n)?,
                op: code,
                y_len: yl as u32,
                accumulate: accumulate as u32,
                alpha,
                _pad: [0; 3],
            };
            launch(g, op, "elementwise_zip", &p, &[x, y], &[&*out], Grid::Items(n, 256))?;
        }
    }
    Ok(fresh)
}

/// GELU (erf form).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(map("gelu", None, x, MAP_GELU, 0.0)?.unwrap())
}
/// dx = dy * gelu'(x)
pub fn gelu_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    want_shape("gelu_backward", "x", x, dy.shape())?;
    Ok(zip("gelu_backward", None, dy, x, ZIP_GELU_BACKWARD, 0.0)?.unwrap())
}
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    Ok(map("tanh", None, x, MAP_TANH, 0.0)?.unwrap())
}
/// dx = dy * (1 - y²) for y = tanh(x)
pub fn tanh_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    want_shape("tanh_backward", "y", y, dy.shape())?;
    Ok(zip("tanh_backward", None, dy, y, ZIP_TANH_BACKWARD, 0.0)?.unwrap())
}
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(map("relu", None, x, MAP_RELU, 0.0)?.unwrap())
}
/// dx = dy where x > 0
pub fn relu_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    want_shape("relu_backward", "x", x, dy.shape())?;
    Ok(zip("relu_backward", None, dy, x, ZIP_RELU_BACKWARD, 0.0)?.unwrap())
}
/// alpha * x
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    Ok(map("scale", None, x, MAP_SCALE, alpha)?.unwrap())
}
/// x + y (y the same shape, or a bias broadcast over the last dimension)
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(zip("add", None, x, y, ZIP_ADD, 1.0)?.unwrap())
}
/// x + alpha * y (y the same shape, or broadcast over the leading dimensions: a base tensor taken
/// from each input of a merge stack)
pub fn axpy(x: &Tensor, y: &Tensor, alpha: f32) -> Result<Tensor> {
    Ok(zip("axpy", None, x, y, ZIP_ADD, alpha)?.unwrap())
}
/// x * y (y the same shape, or broadcast over the last dimension)
pub fn mul(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(zip("mul", None, x, y, ZIP_MUL, 0.0)?.unwrap())
}
/// out += alpha * x (same shapes): residual branches and gradient accumulation.
pub fn add_into(out: &mut Tensor, x: &Tensor, alpha: f32) -> Result<()> {
    map("add_into", Some(out), x, MAP_SCALE, alpha).map(|_| ())
}
/// out += x * y (y the same shape or broadcast over the last dimension).
pub fn mul_add_into(out: &mut Tensor, x: &Tensor, y: &Tensor) -> Result<()> {
    zip("mul_add_into", Some(out), x, y, ZIP_MUL, 0.0).map(|_| ())
}

/// Sets every value of an f32 tensor to zero, in place.
pub fn zero_(t: &mut Tensor) -> Result<()> {
    want_f32("zero_", "t", t)?;
    t.make_unique()?;
    match t.device() {
        Device::Cpu => t.cpu_f32_mut().fill(0.0),
        Device::Gpu(g) => g.clear(t.buf(), (t.numel() * 4) as u64),
    }
    Ok(())
}

/// The rows of `a` then those of `b`, each seen as (rows, C) with the same C; the leading dimensions
/// of the result are `shape` (a key/value cache growing by the new tokens' rows).
pub fn concat_rows(a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let op = "concat_rows";
    let ((ra, ca), (rb, cb)) = (rows_cols(op, a)?, rows_cols(op, b)?);
    want_f32(op, "a", a)?;
    want_f32(op, "b", b)?;
    if ca != cb || shape.iter().product::<usize>() != (ra + rb) * ca {
        return Err(Error::shape(op, format!("{:?} and {:?} do not join into {shape:?}", a.shape(), b.shape())));
    }
    let dev = device_of(op, &[a, b])?;
    let mut out = dev.uninit(op, shape)?;
    match &dev {
        Device::Cpu => {
            let o = out.cpu_f32_mut();
            o[..a.numel()].copy_from_slice(a.cpu_f32());
            o[a.numel()..].copy_from_slice(b.cpu_f32());
        }
        Device::Gpu(g) => {
            g.copy(a.buf(), 0, out.buf(), 0, (a.numel() * 4) as u64);
            g.copy(b.buf(), 0, out.buf(), (a.numel() * 4) as u64, (b.numel() * 4) as u64);
        }
    }
    Ok(out)
}

/// Rows `first .. first + count` of x seen as (rows, C): a (count, C) tensor.
pub fn slice_rows(x: &Tensor, first: usize, count: usize) -> Result<Tensor> {
    let op = "slice_rows";
    let (rows, cols) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    if count == 0 || first + count > rows {
        return Err(Error::shape(op, format!("rows {first}..{} of {rows}", first + count)));
    }
    let dev = x.device();
    let mut out = dev.uninit(op, &[count, cols])?;
    match &dev {
        Device::Cpu => out.cpu_f32_mut().copy_from_slice(&x.cpu_f32()[first * cols..(first + count) * cols]),
        Device::Gpu(g) => g.copy(x.buf(), (first * cols * 4) as u64, out.buf(), 0, (count * cols * 4) as u64),
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// dropout

/// Inverted dropout: x * mask / (1 - p) with the mask a function of (seed, index), identical on both
/// devices. Applying it to a gradient with the same seed is its backward. p = 0 returns x itself.
pub fn dropout(x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    let op = "dropout";
    rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    if !(0.0..1.0).contains(&p) {
        return Err(Error::shape(op, format!("probability {p} is not in [0, 1)")));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let dev = x.device();
    let mut y = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => cpu::dropout(y.cpu_f32_mut(), x.cpu_f32(), seed, p),
        Device::Gpu(g) => {
            let n = x.numel();
            let prm = DropoutParams { n: u32_of(op, "n", n)?, seed, p, scale: 1.0 / (1.0 - p) };
            launch(g, op, "dropout_apply", &prm, &[x], &[&y], Grid::Items(n, 256))?;
        }
    }
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// prefix tuning

/// [prefix; x[b]] for every b: prefix (P, C), x (B, T, C) → (B, P+T, C).
pub fn prefix_concat(prefix: &Tensor, x: &Tensor) -> Result<Tensor> {
    let op = "prefix_concat";
    let s = x.shape();
    if s.len() != 3 || prefix.shape().len() != 2 || prefix.dim(1) != s[2] {
        return Err(Error::shape(op, format!("prefix {:?} does not fit x {s:?} (B, T, C)", prefix.shape())));
    }
    let (b, t, c, plen) = (s[0], s[1], s[2], prefix.dim(0));
    let dev = device_of(op, &[prefix, x])?;
    let mut out = dev.uninit(op, &[b, plen + t, c])?;
    match &dev {
        Device::Cpu => cpu::prefix_concat(out.cpu_f32_mut(), prefix.cpu_f32(), x.cpu_f32(), b, t, c),
        Device::Gpu(g) => {
            let n = u32_of(op, "elements", out.numel())? as usize;
            let p = PrefixParams { batch: b as u32, plen: plen as u32, tokens: t as u32, cols: c as u32 };
            launch(g, op, "prefix_concat", &p, &[prefix, x], &[&out], Grid::Items(n, 256))?;
        }
    }
    Ok(out)
}

/// Backward of `prefix_concat`: accumulates Σ_b dout[b, ..P] into dprefix and returns dx (B, T, C).
pub fn prefix_split(dprefix: &mut Tensor, dout: &Tensor) -> Result<Tensor> {
    let op = "prefix_split";
    let s = dout.shape();
    if s.len() != 3 || dprefix.shape().len() != 2 || dprefix.dim(1) != s[2] || dprefix.dim(0) >= s[1] {
        return Err(Error::shape(op, format!("dprefix {:?} does not fit dout {s:?}", dprefix.shape())));
    }
    let (b, c, plen) = (s[0], s[2], dprefix.dim(0));
    let t = s[1] - plen;
    let dev = device_of(op, &[dout, dprefix])?;
    dprefix.make_unique()?;
    let mut dx = dev.uninit(op, &[b, t, c])?;
    match &dev {
        Device::Cpu => {
            let mut dxv = vec![0.0; b * t * c];
            cpu::prefix_split(&mut dxv, dprefix.cpu_f32_mut(), dout.cpu_f32(), b, t, c);
            dx.cpu_f32_mut().copy_from_slice(&dxv);
        }
        Device::Gpu(g) => {
            let p = PrefixParams { batch: b as u32, plen: plen as u32, tokens: t as u32, cols: c as u32 };
            launch(g, op, "prefix_split", &p, &[dout], &[&dx], Grid::Items(b * t * c, 256))?;
            launch(g, op, "prefix_grad", &p, &[dout], &[&*dprefix], Grid::Fixed([groups(plen * c, 64) as u32, 1, 1]))?;
        }
    }
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// softmax

/// softmax(scale * x + mask[row / mask_div]) over the last dimension; `mask` is additive,
/// shaped (rows / mask_div, len).
pub fn softmax(x: &Tensor, mask: Option<(&Tensor, usize)>, scale: f32) -> Result<Tensor> {
    match mask {
        Some((m, div)) => softmax_masked(x, Some(m), RowMask::keys(div), scale),
        None => softmax_masked(x, None, RowMask::keys(1), scale),
    }
}

/// softmax(scale * x + mask[rows.row(r)]) over the last dimension, with the causal masking `rows`
/// asks for (see `RowMask`); `mask` is additive, one row of `len` per mask row.
pub fn softmax_masked(x: &Tensor, mask: Option<&Tensor>, rows_of: RowMask, scale: f32) -> Result<Tensor> {
    let op = "softmax";
    let (rows, len) = rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    let RowMask { div, modulo, causal } = rows_of;
    if div == 0 || modulo == 0 || rows % div != 0 || causal > len || (causal > 0 && rows % causal != 0) {
        return Err(Error::shape(op, format!("{rows_of:?} does not fit x {:?}", x.shape())));
    }
    let mut ts = vec![x];
    if let Some(m) = mask {
        if m.numel() != (rows / div) * modulo * len {
            return Err(Error::shape(
                op,
                format!("mask {:?} with rows {rows_of:?} does not fit x {:?}", m.shape(), x.shape()),
            ));
        }
        want_f32(op, "mask", m)?;
        ts.push(m);
    }
    let dev = device_of(op, &ts)?;
    let mut y = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => {
            cpu::softmax_masked(y.cpu_f32_mut(), x.cpu_f32(), mask.map(|m| m.cpu_f32()), rows_of, len, scale);
        }
        Device::Gpu(g) => {
            let p = SoftmaxParams {
                rows: u32_of(op, "rows", rows)?,
                len: u32_of(op, "len", len)?,
                mask_div: u32_of(op, "mask_div", div)?,
                has_mask: mask.is_some() as u32,
                scale,
                mask_mod: u32_of(op, "mask_mod", modulo)?,
                causal: u32_of(op, "causal", causal)?,
                _pad: 0,
            };
            // An unused mask binding still needs a buffer: bind x.
            launch(g, op, "softmax_forward", &p, &[x, mask.unwrap_or(x)], &[&y], Grid::Rows(rows))?;
        }
    }
    Ok(y)
}

/// dx = scale * y * (dy - Σ dy·y) over the last dimension.
pub fn softmax_backward(dy: &Tensor, y: &Tensor, scale: f32) -> Result<Tensor> {
    let op = "softmax_backward";
    let (rows, len) = rows_cols(op, y)?;
    want_shape(op, "dy", dy, y.shape())?;
    let dev = device_of(op, &[dy, y])?;
    let mut dx = dev.uninit(op, y.shape())?;
    match &dev {
        Device::Cpu => cpu::softmax_backward(dx.cpu_f32_mut(), dy.cpu_f32(), y.cpu_f32(), len, scale),
        Device::Gpu(g) => {
            let p = SoftmaxParams {
                rows: u32_of(op, "rows", rows)?,
                len: u32_of(op, "len", len)?,
                mask_div: 1,
                has_mask: 0,
                scale,
                mask_mod: 1,
                causal: 0,
                _pad: 0,
            };
            launch(g, op, "softmax_backward", &p, &[dy, y], &[&dx], Grid::Rows(rows))?;
        }
    }
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// embedding

/// out[t] = table[ids[t]]: ids (…) u32, table (V, C) → (…, C).
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let op = "embedding";
    if ids.dtype() != DType::U32 {
        return Err(Error::shape(op, "ids must be u32"));
    }
    let (_, cols) = rows_cols(op, table)?;
    if table.shape().len() != 2 {
        return Err(Error::shape(op, format!("table must be (vocab, dim), got {:?}", table.shape())));
    }
    let dev = device_of(op, &[ids, table])?;
    let mut shape = ids.shape().to_vec();
    shape.push(cols);
    let mut out = dev.uninit(op, &shape)?;
    match &dev {
        Device::Cpu => {
            let ids_v = ids.cpu_u32();
            let vocab = table.dim(0);
            if let Some((t, &id)) = ids_v.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                return Err(Error::shape(op, format!("id {id} at position {t} is outside the vocabulary of {vocab}")));
            }
            cpu::embedding_forward(out.cpu_f32_mut(), ids_v, table.cpu_f32(), cols);
        }
        Device::Gpu(g) => {
            let n = ids.numel() * cols;
            let p = EmbeddingParams {
                tokens: u32_of(op, "tokens", ids.numel())?,
                cols: cols as u32,
                vocab: u32_of(op, "vocab", table.dim(0))?,
                _pad: 0,
            };
            launch(g, op, "embedding_forward", &p, &[ids, table], &[&out], Grid::Items(n, 256))?;
        }
    }
    Ok(out)
}

/// dtable[ids[t]] += dout[t]
pub fn embedding_backward(dtable: &mut Tensor, dout: &Tensor, ids: &Tensor) -> Result<()> {
    let op = "embedding_backward";
    let (_, cols) = rows_cols(op, dtable)?;
    if dout.numel() != ids.numel() * cols || ids.dtype() != DType::U32 {
        return Err(Error::shape(
            op,
            format!("dout {:?} does not match ids {:?} and table {:?}", dout.shape(), ids.shape(), dtable.shape()),
        ));
    }
    let dev = device_of(op, &[dtable, dout, ids])?;
    dtable.make_unique()?;
    match &dev {
        Device::Cpu => {
            let ids_v = ids.cpu_u32().to_vec();
            let dv = dout.cpu_f32().to_vec();
            cpu::embedding_backward(dtable.cpu_f32_mut(), &dv, &ids_v, cols);
        }
        Device::Gpu(g) => {
            let p = EmbeddingParams {
                tokens: u32_of(op, "tokens", ids.numel())?,
                cols: cols as u32,
                vocab: u32_of(op, "vocab", dtable.dim(0))?,
                _pad: 0,
            };
            launch(
                g,
                op,
                "embedding_backward",
                &p,
                &[ids, dout],
                &[&*dtable],
                Grid::Fixed([groups(cols, 64) as u32, 1, 1]),
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pooling

fn pool_dims(op: &'static str, x: &Tensor, mask: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() != 3 || s.contains(&0) {
        return Err(Error::shape(op, format!("x must be (batch, tokens, dim), got {s:?}")));
    }
    want_shape(op, "mask", mask, &[s[0], s[1]])?;
    want_f32(op, "mask", mask)?;
    Ok((s[0], s[1], s[2]))
}

/// How `pool` reduces the tokens of a sequence (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// Masked mean.
    Mean,
    /// Masked sum divided by the square root of the token count.
    MeanSqrtLen,
    /// Masked maximum (padding counts as -1e9).
    Max,
    /// The first token ([CLS]).
    Cls,
}

impl PoolMode {
    fn code(self) -> u32 {
        match self {
            PoolMode::Mean => 0,
            PoolMode::MeanSqrtLen => 1,
            PoolMode::Max => 2,
            PoolMode::Cls => 3,
        }
    }
}

/// Pools tokens: x (B, T, C), mask (B, T) of 0/1 → (B, C).
pub fn pool(x: &Tensor, mask: &Tensor, mode: PoolMode) -> Result<Tensor> {
    let op = "pool";
    let (b, t, c) = pool_dims(op, x, mask)?;
    let dev = device_of(op, &[x, mask])?;
    let mut out = dev.uninit(op, &[b, c])?;
    match &dev {
        Device::Cpu => cpu::pool_forward(out.cpu_f32_mut(), x.cpu_f32(), mask.cpu_f32(), t, c, mode.code()),
        Device::Gpu(g) => {
            let p = PoolParams { batch: b as u32, tokens: t as u32, cols: c as u32, mode: mode.code() };
            let grid = Grid::Fixed([groups(c, 64) as u32, b as u32, 1]);
            launch(g, op, "pool_forward", &p, &[x, mask], &[&out], grid)?;
        }
    }
    Ok(out)
}

/// Masked mean over tokens: x (B, T, C), mask (B, T) of 0/1 → (B, C).
pub fn mean_pool(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    pool(x, mask, PoolMode::Mean)
}

/// Backward of `mean_pool`: dout (B, C) → dx (B, T, C).
pub fn mean_pool_backward(dout: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let op = "mean_pool_backward";
    if dout.shape().len() != 2 || mask.shape().len() != 2 || dout.dim(0) != mask.dim(0) {
        return Err(Error::shape(op, format!("dout {:?} does not match mask {:?}", dout.shape(), mask.shape())));
    }
    let (b, t, c) = (dout.dim(0), mask.dim(1), dout.dim(1));
    let dev = device_of(op, &[dout, mask])?;
    let mut dx = dev.uninit(op, &[b, t, c])?;
    match &dev {
        Device::Cpu => cpu::mean_pool_backward(dx.cpu_f32_mut(), dout.cpu_f32(), mask.cpu_f32(), t, c),
        Device::Gpu(g) => {
            let p = PoolParams { batch: b as u32, tokens: t as u32, cols: c as u32, mode: 0 };
            let n = b * t * c;
            u32_of(op, "elements", n)?;
            let grid = g.grid(op, groups(n, 256))?;
            launch(g, op, "pool_mean_backward", &p, &[dout, mask], &[&dx], Grid::Fixed(grid))?;
        }
    }
    Ok(dx)
}

/// Rows scaled to unit L2 norm: x / max(‖x‖, 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let op = "l2_normalize";
    let (rows, cols) = rows_cols(op, x)?;
    let dev = x.device();
    let mut y = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => cpu::l2norm_forward(y.cpu_f32_mut(), x.cpu_f32(), cols),
        Device::Gpu(g) => {
            let p = PoolParams { batch: u32_of(op, "rows", rows)?, tokens: 1, cols: cols as u32, mode: 0 };
            launch(g, op, "pool_l2norm_forward", &p, &[x], &[&y], Grid::Rows(rows))?;
        }
    }
    Ok(y)
}

/// Backward of `l2_normalize`.
pub fn l2_normalize_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let op = "l2_normalize_backward";
    let (rows, cols) = rows_cols(op, x)?;
    want_shape(op, "dy", dy, x.shape())?;
    let dev = device_of(op, &[dy, x])?;
    let mut dx = dev.uninit(op, x.shape())?;
    match &dev {
        Device::Cpu => cpu::l2norm_backward(dx.cpu_f32_mut(), dy.cpu_f32(), x.cpu_f32(), cols),
        Device::Gpu(g) => {
            let p = PoolParams { batch: u32_of(op, "rows", rows)?, tokens: 1, cols: cols as u32, mode: 0 };
            launch(g, op, "pool_l2norm_backward", &p, &[dy, x], &[&dx], Grid::Rows(rows))?;
        }
    }
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// loss

/// Softmax cross-entropy: logits (B, K), labels (B) u32 → (per-row loss (B), dlogits (B, K)) with
/// dlogits scaled by `grad_scale` (1/B for the mean loss). Labels are checked on the host.
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    labels_host: &[u32],
    grad_scale: f32,
) -> Result<(Tensor, Tensor)> {
    let op = "cross_entropy";
    let (b, k) = rows_cols(op, logits)?;
    if labels.dtype() != DType::U32 || labels.numel() != b || labels_host.len() != b {
        return Err(Error::shape(op, format!("labels {:?} do not match logits {:?}", labels.shape(), logits.shape())));
    }
    if let Some((i, &l)) = labels_host.iter().enumerate().find(|(_, &l)| l as usize >= k) {
        return Err(Error::shape(op, format!("label {l} of row {i} is not one of the {k} classes")));
    }
    let dev = device_of(op, &[logits, labels])?;
    let mut loss = dev.uninit(op, &[b])?;
    let mut dlogits = dev.uninit(op, &[b, k])?;
    match &dev {
        Device::Cpu => {
            let mut lv = vec![0.0; b];
            cpu::crossentropy(&mut lv, dlogits.cpu_f32_mut(), logits.cpu_f32(), labels.cpu_u32(), k, grad_scale);
            loss.cpu_f32_mut().copy_from_slice(&lv);
        }
        Device::Gpu(g) => {
            let p = CrossEntropyParams { batch: b as u32, classes: k as u32, grad_scale, _pad: 0 };
            launch(
                g,
                op,
                "crossentropy_forward_backward",
                &p,
                &[logits, labels],
                &[&loss, &dlogits],
                Grid::Fixed([groups(b, 64) as u32, 1, 1]),
            )?;
        }
    }
    Ok((loss, dlogits))
}

/// Cross-entropy against target distributions: logits (B, K), targets (B, K) with rows summing to 1
/// → (per-row loss (B), dlogits (B, K) scaled by `grad_scale`). Distillation's loss.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, grad_scale: f32) -> Result<(Tensor, Tensor)> {
    let op = "soft_cross_entropy";
    let (b, k) = rows_cols(op, logits)?;
    want_f32(op, "logits", logits)?;
    want_f32(op, "targets", targets)?;
    if targets.shape() != logits.shape() {
        return Err(Error::shape(
            op,
            format!("targets {:?} do not match logits {:?}", targets.shape(), logits.shape()),
        ));
    }
    let dev = device_of(op, &[logits, targets])?;
    let mut loss = dev.uninit(op, &[b])?;
    let mut dlogits = dev.uninit(op, &[b, k])?;
    match &dev {
        Device::Cpu => {
            let mut lv = vec![0.0; b];
            cpu::crossentropy_soft(&mut lv, dlogits.cpu_f32_mut(), logits.cpu_f32(), targets.cpu_f32(), k, grad_scale);
            loss.cpu_f32_mut().copy_from_slice(&lv);
        }
        Device::Gpu(g) => {
            let p = CrossEntropyParams { batch: b as u32, classes: k as u32, grad_scale, _pad: 0 };
            let grid = Grid::Fixed([groups(b, 64) as u32, 1, 1]);
            launch(g, op, "crossentropy_soft", &p, &[logits, targets], &[&loss, &dlogits], grid)?;
        }
    }
    Ok((loss, dlogits))
}

// ---------------------------------------------------------------------------------------------
// reductions and the optimiser

/// out (+)= Σ_rows x: x (…, C) → out (C).
pub fn sum_rows_into(out: &mut Tensor, x: &Tensor, accumulate: bool) -> Result<()> {
    let op = "sum_rows";
    let (rows, cols) = rows_cols(op, x)?;
    want_shape(op, "out", out, &[cols])?;
    let dev = device_of(op, &[out, x])?;
    out.make_unique()?;
    match &dev {
        Device::Cpu => {
            let xv = x.cpu_f32().to_vec();
            cpu::sum_rows(out.cpu_f32_mut(), &xv, cols, accumulate);
        }
        Device::Gpu(g) => {
            let p = ReduceParams {
                rows: u32_of(op, "rows", rows)?,
                cols: cols as u32,
                accumulate: accumulate as u32,
                _pad: 0,
            };
            launch(g, op, "reduce_sum_rows", &p, &[x], &[&*out], Grid::Fixed([groups(cols, 64) as u32, 1, 1]))?;
        }
    }
    Ok(())
}

/// acc[0] += Σ x² (acc is a (1) tensor): the global gradient norm, kept on the device.
pub fn sumsq_into(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    let op = "sumsq";
    rows_cols(op, x)?;
    want_shape(op, "acc", acc, &[1])?;
    let dev = device_of(op, &[acc, x])?;
    acc.make_unique()?;
    match &dev {
        Device::Cpu => {
            let s = cpu::sumsq(x.cpu_f32());
            acc.cpu_f32_mut()[0] += s;
        }
        Device::Gpu(g) => {
            let p = ReduceParams { rows: 1, cols: u32_of(op, "n", x.numel())?, accumulate: 1, _pad: 0 };
            launch(g, op, "reduce_sumsq", &p, &[x], &[&*acc], Grid::Fixed([1, 1, 1]))?;
        }
    }
    Ok(())
}

/// One AdamW step on `param` with moments `m`, `v`; the gradient is clipped by the global squared
/// norm held in `norm_sq` (1) when `h.max_norm > 0`.
pub fn adamw(
    param: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    grad: &Tensor,
    norm_sq: &Tensor,
    h: &AdamWStep,
) -> Result<()> {
    let op = "adamw";
    rows_cols(op, param)?;
    for (name, t) in [("m", &*m), ("v", &*v), ("grad", grad)] {
        want_shape(op, name, t, param.shape())?;
    }
    want_shape(op, "norm_sq", norm_sq, &[1])?;
    let dev = device_of(op, &[param, m, v, grad, norm_sq])?;
    for t in [&mut *param, &mut *m, &mut *v] {
        t.make_unique()?;
    }
    match &dev {
        Device::Cpu => {
            let (g, ns) = (grad.cpu_f32().to_vec(), norm_sq.cpu_f32()[0]);
            let mut mv = m.cpu_f32().to_vec();
            let mut vv = v.cpu_f32().to_vec();
            cpu::adamw(param.cpu_f32_mut(), &mut mv, &mut vv, &g, ns, h);
            m.cpu_f32_mut().copy_from_slice(&mv);
            v.cpu_f32_mut().copy_from_slice(&vv);
        }
        Device::Gpu(g) => {
            let n = param.numel();
            let p = AdamWParams {
                n: u32_of(op, "n", n)?,
                grad_scale: h.grad_scale,
                _pad: [0; 2],
                lr: h.lr,
                beta1: h.beta1,
                beta2: h.beta2,
                eps: h.eps,
                weight_decay: h.weight_decay,
                bc1: h.bc1,
                bc2: h.bc2,
                max_norm: h.max_norm,
            };
            launch(g, op, "adamw_update", &p, &[grad, norm_sq], &[&*param, &*m, &*v], Grid::Items(n, 256))?;
        }
    }
    Ok(())
}
