//! Model merging on the CPU device: the twins of `shaders/merge.wgsl`, entry for entry, in f32 and in
//! the same order of operations. `x` is always a stack (N, n) of the N inputs of one tensor.
#![allow(clippy::needless_range_loop)] // i indexes both the stack and the weights, as in the kernel

use super::{hash32, par_rows};

/// How `combine` merges the stack at each position (the kernel's `mode`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CombineMode {
    /// Σ c_i x_i
    Sum,
    /// TIES' sign election and disjoint merge.
    Ties,
    /// Σ c_i f_i x_i / Σ c_i f_i with f_i = max(aux_i, floor)
    Fisher { floor: f32 },
    /// weights c_i |x_i - base|^(1/T), normalised over the inputs
    Delta { temperature: f32 },
}

/// Flags of `combine` (the kernel's `flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CombineFlags {
    /// TIES: elect the sign by the count of signs, not by the sum of values.
    pub frequency: bool,
    /// TIES: elect the sign on c_i x_i (mergekit) instead of x_i (PEFT).
    pub sign_weighted: bool,
    /// TIES: divide by the number of kept entries (at least 1), PEFT's disjoint mean.
    pub div_count: bool,
    /// TIES: divide by Σ c_i over the kept entries (a zero divisor counts as 1): mergekit's `normalize`.
    pub div_weight_mask: bool,
}

fn sgn(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// out[j] = the merge of x[·, j] (see `shaders/merge.wgsl`, merge_combine).
pub fn merge_combine(
    out: &mut [f32],
    x: &[f32],
    coef: &[f32],
    aux: Option<&[f32]>,
    base: Option<&[f32]>,
    mode: CombineMode,
    flags: CombineFlags,
) {
    let n = out.len();
    let inputs = coef.len();
    let at = |j: usize| -> f32 {
        let v = |i: usize| x[i * n + j];
        let (mut num, mut den) = (0.0f32, 0.0f32);
        match mode {
            CombineMode::Ties => {
                let s = |i: usize| if flags.sign_weighted { v(i) * coef[i] } else { v(i) };
                let mut score = 0.0f32;
                for i in 0..inputs {
                    score += if flags.frequency { sgn(s(i)) } else { s(i) };
                }
                let elected = if score >= 0.0 { 1.0 } else { -1.0 };
                for i in 0..inputs {
                    if sgn(s(i)) == elected {
                        num += coef[i] * v(i);
                        den += if flags.div_weight_mask { coef[i] } else { 1.0 };
                    }
                }
                if flags.div_count {
                    num / den.max(1.0)
                } else if flags.div_weight_mask {
                    num / if den == 0.0 { 1.0 } else { den }
                } else {
                    num
                }
            }
            CombineMode::Fisher { floor } => {
                let aux = aux.expect("Fisher needs the Fisher stack");
                for i in 0..inputs {
                    let f = coef[i] * aux[i * n + j].max(floor);
                    num += f * v(i);
                    den += f;
                }
                num / den
            }
            CombineMode::Delta { temperature } => {
                let base = base.expect("delta-guided needs the base");
                let (mut plain, mut plain_den) = (0.0f32, 0.0f32);
                for i in 0..inputs {
                    let a = coef[i] * (v(i) - base[j]).abs().powf(1.0 / temperature);
                    num += a * v(i);
                    den += a;
                    plain += coef[i] * v(i);
                    plain_den += coef[i];
                }
                if den > 0.0 {
                    num / den
                } else {
                    plain / plain_den
                }
            }
            CombineMode::Sum => {
                for i in 0..inputs {
                    num += coef[i] * v(i);
                }
                num
            }
        }
    };
    par_rows(out, 1, |first, block| {
        for (o, j) in block.iter_mut().zip(first..) {
            *o = at(j);
        }
    });
}

/// The bit pattern of the k-th largest |v| (1 <= k <= len): what the four radix-select passes of
/// merge_hist / merge_select find.
pub fn merge_kth_largest_bits(values: &[f32], k: usize) -> u32 {
    assert!(k >= 1 && k <= values.len());
    let mut bits: Vec<u32> = values.iter().map(|v| v.abs().to_bits()).collect();
    let idx = values.len() - k;
    *bits.select_nth_unstable(idx).1
}

/// x_ij = 0 unless lo_i <= bits(|x_ij|) (< hi_i), in place.
pub fn merge_trim(x: &mut [f32], lo: &[u32], hi: Option<&[u32]>) {
    let n = x.len() / lo.len();
    for (i, row) in x.chunks_mut(n).enumerate() {
        for v in row {
            let b = v.abs().to_bits();
            let keep = b >= lo[i] && hi.is_none_or(|h| b < h[i]);
            if !keep {
                *v = 0.0;
            }
        }
    }
}

/// The uniform in [0, 1) that decides whether DARE keeps element j of input i under `seed`.
pub fn dare_uniform(seed: u32, i: u32, j: u32) -> f32 {
    let s = hash32(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9)));
    (hash32(s ^ hash32(j)) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// x_ij = 0 unless u(seed, i, j) < q (q = prob_i, or prob_ij when `prob` has N·n values); kept values
/// are divided by q when `rescale`.
pub fn merge_dare(x: &mut [f32], inputs: usize, prob: &[f32], seed: u32, rescale: bool) {
    let n = x.len() / inputs;
    let per_element = prob.len() == x.len();
    for (i, row) in x.chunks_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let q = if per_element { prob[i * n + j] } else { prob[i] };
            let u = dare_uniform(seed, i as u32, j as u32);
            *v = if u < q {
                if rescale {
                    *v / q
                } else {
                    *v
                }
            } else {
                0.0
            };
        }
    }
}

/// DELLA's keep probabilities: d_i - e_i + 2 e_i · rank / (cols - 1), rank the ascending position
/// of |x| within its row of `cols` values (ties broken by index), d_i and e_i input i's density and
/// epsilon.
pub fn merge_rank(out: &mut [f32], x: &[f32], cols: usize, density: &[f32], eps: &[f32]) {
    let n = x.len() / density.len();
    for (r, (o_row, x_row)) in out.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
        let (density, eps) = (density[r * cols / n], eps[r * cols / n]);
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| x_row[a].abs().total_cmp(&x_row[b].abs()).then(a.cmp(&b)));
        for (rank, &c) in order.iter().enumerate() {
            let norm = if cols == 1 { 0.0 } else { rank as f32 / (cols - 1) as f32 };
            o_row[c] = density - eps + 2.0 * eps * norm;
        }
    }
}

/// For each (a, b) in `pairs`: Σ_j x_aj x_bj, or Σ_j |x_aj| when `abs` (in f64).
pub fn merge_dots(x: &[f32], inputs: usize, pairs: &[(usize, usize)], abs: bool) -> Vec<f64> {
    let n = x.len() / inputs;
    pairs
        .iter()
        .map(|&(a, b)| {
            let (ra, rb) = (&x[a * n..(a + 1) * n], &x[b * n..(b + 1) * n]);
            if abs {
                ra.iter().map(|&u| u.abs() as f64).sum()
            } else {
                ra.iter().zip(rb).map(|(&u, &v)| u as f64 * v as f64).sum()
            }
        })
        .collect()
}

/// x_i *= num_i / den_i where den_i > 0, in place.
pub fn merge_scale(x: &mut [f32], num: &[f32], den: &[f32]) {
    let n = x.len() / num.len();
    for (i, row) in x.chunks_mut(n).enumerate() {
        if den[i] > 0.0 {
            let f = num[i] / den[i];
            row.iter_mut().for_each(|v| *v *= f);
        }
    }
}
