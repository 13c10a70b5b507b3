//! Merging ops over a stack `x` (N, …) holding one tensor of each of N inputs: the kernels of
//! `shaders/merge.wgsl` and their CPU twins in `cpu::merge`. The methods in `crate::merge` chain them.

use super::{device_of, launch, rows_cols, u32_of, want_f32, Grid};
use crate::cpu::merge as cpu;
pub use crate::cpu::merge::{CombineFlags, CombineMode};
use crate::error::{Error, Result};
use crate::ops::params::*;
use crate::tensor::{DType, Device, Tensor};

/// (N, n) of a stack: inputs and values per input.
fn stack_dims(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    rows_cols(op, x)?;
    want_f32(op, "x", x)?;
    if x.shape().len() < 2 {
        return Err(Error::shape(op, format!("needs a stack (N, …) of inputs, got shape {:?}", x.shape())));
    }
    let inputs = x.dim(0);
    Ok((inputs, x.numel() / inputs))
}

/// Workgroups of a grid-stride loop over n values for each of `rows` inputs.
fn stride_grid(n: usize, rows: usize) -> Grid {
    Grid::Fixed([n.div_ceil(256).clamp(1, 4096) as u32, rows as u32, 1])
}

fn params(n: usize, inputs: usize, op: &'static str) -> Result<MergeParams> {
    Ok(MergeParams {
        n: u32_of(op, "values per input", n)?,
        inputs: u32_of(op, "inputs", inputs)?,
        mode: 0,
        flags: 0,
        shift: 0,
        seed: 0,
        scale: 0.0,
        aux: 0.0,
    })
}

/// N tensors of one shape as a stack (N, shape…) on their device.
pub fn stack(ts: &[&Tensor]) -> Result<Tensor> {
    let op = "merge_stack";
    let first = ts.first().ok_or_else(|| Error::shape(op, "no tensors to stack"))?;
    let dev = device_of(op, ts)?;
    for t in ts {
        want_f32(op, "input", t)?;
        if t.shape() != first.shape() {
            return Err(Error::shape(op, format!("shapes {:?} and {:?} differ", first.shape(), t.shape())));
        }
    }
    let mut shape = vec![ts.len()];
    shape.extend_from_slice(first.shape());
    let n = first.numel();
    match &dev {
        Device::Cpu => {
            let mut data = Vec::with_capacity(n * ts.len());
            for t in ts {
                data.extend_from_slice(t.cpu_f32());
            }
            dev.tensor(&data, &shape)
        }
        Device::Gpu(g) => {
            let out = dev.uninit(op, &shape)?;
            let bytes = (n * 4) as u64;
            for (i, t) in ts.iter().enumerate() {
                g.copy(t.buf(), 0, out.buf(), i as u64 * bytes, bytes);
            }
            Ok(out)
        }
    }
}

/// The merge of a stack at each position: `x` (N, …) → (…). `coef` holds the N per-input weights;
/// `aux` (N, …) the Fisher diagonals for `Fisher`; `base` (…) the base weights for `Delta`.
pub fn combine(
    x: &Tensor,
    coef: &[f32],
    aux: Option<&Tensor>,
    base: Option<&Tensor>,
    mode: CombineMode,
    flags: CombineFlags,
) -> Result<Tensor> {
    let op = "merge_combine";
    let (inputs, n) = stack_dims(op, x)?;
    if coef.len() != inputs {
        return Err(Error::shape(op, format!("{} weights for {inputs} inputs", coef.len())));
    }
    let mut ts = vec![x];
    if let Some(a) = aux {
        want_f32(op, "aux", a)?;
        if a.shape() != x.shape() {
            return Err(Error::shape(op, format!("Fisher stack {:?} for inputs {:?}", a.shape(), x.shape())));
        }
        ts.push(a);
    }
    if let Some(b) = base {
        want_f32(op, "base", b)?;
        if b.shape() != &x.shape()[1..] {
            return Err(Error::shape(op, format!("base {:?} for inputs {:?}", b.shape(), x.shape())));
        }
        ts.push(b);
    }
    let dev = device_of(op, &ts)?;
    if matches!(mode, CombineMode::Fisher { .. }) && aux.is_none() {
        return Err(Error::shape(op, "a Fisher merge needs the Fisher stack"));
    }
    if matches!(mode, CombineMode::Delta { .. }) && base.is_none() {
        return Err(Error::shape(op, "a delta-guided merge needs the base"));
    }
    let shape = &x.shape()[1..];
    match &dev {
        Device::Cpu => {
            let mut out = vec![0.0; n];
            cpu::merge_combine(
                &mut out,
                x.cpu_f32(),
                coef,
                aux.map(|a| a.cpu_f32()),
                base.map(|b| b.cpu_f32()),
                mode,
                flags,
            );
            dev.tensor(&out, shape)
        }
        Device::Gpu(g) => {
            let out = dev.uninit(op, shape)?;
            let coef_t = dev.tensor(coef, &[inputs])?;
            let mut p = params(n, inputs, op)?;
            (p.mode, p.scale) = match mode {
                CombineMode::Sum => (MERGE_SUM, 0.0),
                CombineMode::Ties => (MERGE_TIES, 0.0),
                CombineMode::Fisher { floor } => (MERGE_FISHER, floor),
                CombineMode::Delta { temperature } => (MERGE_DELTA, temperature),
            };
            p.flags = (flags.frequency as u32 * MERGE_FREQUENCY)
                | (flags.sign_weighted as u32 * MERGE_SIGN_WEIGHTED)
                | (flags.div_count as u32 * MERGE_DIV_COUNT)
                | (flags.div_weight_mask as u32 * MERGE_DIV_WEIGHT_MASK);
            let reads = [x, &coef_t, aux.unwrap_or(x), base.unwrap_or(x)];
            launch(g, op, "merge_combine", &p, &reads, &[&out], stride_grid(n, 1))?;
            Ok(out)
        }
    }
}

/// The bit patterns of the k_i-th largest |x_i| of each input (1 <= k_i <= n), as a u32 tensor (N, 2)
/// whose column 0 holds them (column 1 is the radix select's scratch): entries with bits(|x|) >= it
/// are the top k_i (more only where |x| ties at the threshold). `trim` takes it as it is.
pub fn kth_largest(x: &Tensor, ks: &[usize]) -> Result<Tensor> {
    let op = "merge_kth_largest";
    let (inputs, n) = stack_dims(op, x)?;
    if ks.len() != inputs || ks.iter().any(|&k| k == 0 || k > n) {
        return Err(Error::shape(op, format!("k {ks:?} for {inputs} inputs of {n} values (each in 1..={n})")));
    }
    let dev = x.device();
    match &dev {
        Device::Cpu => {
            let data = x.cpu_f32();
            let bits: Vec<u32> = ks
                .iter()
                .enumerate()
                .map(|(i, &k)| cpu::merge_kth_largest_bits(&data[i * n..(i + 1) * n], k))
                .collect();
            let state: Vec<u32> = bits.iter().flat_map(|&b| [b, 0]).collect();
            dev.tensor_u32(&state, &[inputs, 2])
        }
        Device::Gpu(g) => {
            let state: Vec<u32> = ks.iter().flat_map(|&k| [0, k as u32]).collect();
            let state = dev.tensor_u32(&state, &[inputs, 2])?;
            let hist = dev.tensor_u32(&vec![0; inputs * 256], &[inputs, 256])?;
            let mut p = params(n, inputs, op)?;
            for shift in [24, 16, 8, 0] {
                p.shift = shift;
                launch(g, op, "merge_hist", &p, &[x, &state], &[&hist], stride_grid(n, inputs))?;
                launch(g, op, "merge_select", &p, &[], &[&state, &hist], Grid::Fixed([inputs as u32, 1, 1]))?;
            }
            Ok(state)
        }
    }
}

/// Thresholds (N, 2) for `trim` from host bit patterns.
pub fn thresholds(dev: &Device, bits: &[u32]) -> Result<Tensor> {
    let state: Vec<u32> = bits.iter().flat_map(|&b| [b, 0]).collect();
    dev.tensor_u32(&state, &[bits.len(), 2])
}

/// Zeroes, in place, every x_ij with bits(|x_ij|) < lo_i or (with `hi`) >= hi_i; `lo` and `hi` are
/// (N, 2) as `kth_largest` returns them.
pub fn trim(x: &mut Tensor, lo: &Tensor, hi: Option<&Tensor>) -> Result<()> {
    let op = "merge_trim";
    let (inputs, n) = stack_dims(op, x)?;
    for t in [Some(lo), hi].into_iter().flatten() {
        if t.dtype() != DType::U32 || t.shape() != [inputs, 2] {
            return Err(Error::shape(op, format!("thresholds must be u32 ({inputs}, 2), got {t:?}")));
        }
    }
    let mut ts = vec![&*x, lo];
    ts.extend(hi);
    let dev = device_of(op, &ts)?;
    x.make_unique()?;
    match &dev {
        Device::Cpu => {
            let col0 = |t: &Tensor| t.cpu_u32().iter().step_by(2).copied().collect::<Vec<u32>>();
            let (lo, hi) = (col0(lo), hi.map(col0));
            cpu::merge_trim(x.cpu_f32_mut(), &lo, hi.as_deref());
        }
        Device::Gpu(g) => {
            let mut p = params(n, inputs, op)?;
            p.flags = hi.is_some() as u32 * MERGE_HAS_HI;
            launch(g, op, "merge_trim", &p, &[lo, hi.unwrap_or(lo)], &[&*x], stride_grid(n, inputs))?;
        }
    }
    Ok(())
}

/// DARE's random drop, in place: keeps x_ij with probability q (prob (N) per input, or (N, …) per
/// element), decided by a hash of (seed, i, j) that both devices share; kept values ÷ q when `rescale`.
pub fn dare(x: &mut Tensor, prob: &Tensor, seed: u32, rescale: bool) -> Result<()> {
    let op = "merge_dare";
    let (inputs, n) = stack_dims(op, x)?;
    want_f32(op, "prob", prob)?;
    let per_element = prob.shape() == x.shape();
    if !per_element && prob.shape() != [inputs] {
        return Err(Error::shape(op, format!("probabilities {:?} for inputs {:?}", prob.shape(), x.shape())));
    }
    let dev = device_of(op, &[&*x, prob])?;
    x.make_unique()?;
    match &dev {
        Device::Cpu => {
            let q = prob.cpu_f32().to_vec();
            cpu::merge_dare(x.cpu_f32_mut(), inputs, &q, seed, rescale);
        }
        Device::Gpu(g) => {
            let mut p = params(n, inputs, op)?;
            p.seed = seed;
            p.flags = (per_element as u32 * MERGE_PER_ELEMENT) | (rescale as u32 * MERGE_RESCALE);
            launch(g, op, "merge_dare", &p, &[prob], &[&*x], stride_grid(n, inputs))?;
        }
    }
    Ok(())
}

/// DELLA's keep probabilities (N, …): d_i - e_i + 2 e_i · (ascending rank of |x| in its row of the
/// last dimension) / (cols - 1), with input i's density d_i and epsilon e_i. A 1-D tensor is one row.
pub fn rank_prob(x: &Tensor, density: &[f32], eps: &[f32]) -> Result<Tensor> {
    let op = "merge_rank";
    let (inputs, n) = stack_dims(op, x)?;
    if density.len() != inputs || eps.len() != inputs {
        return Err(Error::shape(
            op,
            format!("{} densities, {} epsilons for {inputs} inputs", density.len(), eps.len()),
        ));
    }
    let cols = *x.shape().last().unwrap();
    let dev = x.device();
    match &dev {
        Device::Cpu => {
            let mut out = vec![0.0; x.numel()];
            cpu::merge_rank(&mut out, x.cpu_f32(), cols, density, eps);
            dev.tensor(&out, x.shape())
        }
        Device::Gpu(g) => {
            let out = dev.uninit(op, x.shape())?;
            let mut p = params(n, inputs, op)?;
            p.shift = u32_of(op, "row length", cols)?;
            let (d, e) = (dev.tensor(density, &[inputs])?, dev.tensor(eps, &[inputs])?);
            let grid = Grid::Fixed([u32_of(op, "rows", n / cols)?, inputs as u32, 1]);
            launch(g, op, "merge_rank", &p, &[x, &d, &e], &[&out], grid)?;
            Ok(out)
        }
    }
}

/// For each (a, b) of `pairs`: Σ x_a·x_b over the two inputs' values, or Σ |x_a| when `abs`; summed in
/// f64 (over per-block partials on the GPU).
pub async fn dots(x: &Tensor, pairs: &[(usize, usize)], abs: bool) -> Result<Vec<f64>> {
    let op = "merge_dots";
    let (inputs, n) = stack_dims(op, x)?;
    if pairs.iter().any(|&(a, b)| a >= inputs || b >= inputs) || pairs.is_empty() {
        return Err(Error::shape(op, format!("pairs {pairs:?} for {inputs} inputs")));
    }
    let dev = x.device();
    match &dev {
        Device::Cpu => Ok(cpu::merge_dots(x.cpu_f32(), inputs, pairs, abs)),
        Device::Gpu(g) => {
            let blocks = n.div_ceil(4096);
            let flat: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a as u32, b as u32]).collect();
            let pairs_t = dev.tensor_u32(&flat, &[pairs.len(), 2])?;
            let partial = dev.uninit(op, &[pairs.len(), blocks])?;
            let mut p = params(n, inputs, op)?;
            p.flags = abs as u32 * MERGE_ABS;
            let grid = Grid::Fixed([u32_of(op, "blocks", blocks)?, pairs.len() as u32, 1]);
            launch(g, op, "merge_dots", &p, &[x, &pairs_t], &[&partial], grid)?;
            let v = partial.to_vec().await?;
            Ok(v.chunks(blocks).map(|c| c.iter().map(|&s| s as f64).sum()).collect())
        }
    }
}

/// x_i *= num_i / den_i for each input with den_i > 0, in place.
pub fn scale_rows(x: &mut Tensor, num: &[f32], den: &[f32]) -> Result<()> {
    let op = "merge_scale";
    let (inputs, n) = stack_dims(op, x)?;
    if num.len() != inputs || den.len() != inputs {
        return Err(Error::shape(op, format!("{} / {} factors for {inputs} inputs", num.len(), den.len())));
    }
    x.make_unique()?;
    match x.device() {
        Device::Cpu => cpu::merge_scale(x.cpu_f32_mut(), num, den),
        Device::Gpu(g) => {
            let dev = x.device();
            let (num_t, den_t) = (dev.tensor(num, &[inputs])?, dev.tensor(den, &[inputs])?);
            let p = params(n, inputs, op)?;
            launch(&g, op, "merge_scale", &p, &[&num_t, &den_t], &[&*x], stride_grid(n, inputs))?;
        }
    }
    Ok(())
}
