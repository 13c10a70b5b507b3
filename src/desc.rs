//! Descriptors of the work both devices do, on the lowest floor so that the CPU kernels, the GPU
//! parameter blocks and the ops above them share one definition: where a matmul's operands live
//! (`Strides`, `MatmulDesc`) and the settings of one optimiser step (`AdamWStep`).

use crate::error::{Error, Result};

/// Where one operand lives in its buffer: element (r, c) of batch (z0, z1) of the stored matrix is at
/// `offset + z0*bs[0] + z1*bs[1] + r*ld + c`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strides {
    pub offset: usize,
    pub ld: usize,
    pub bs: [usize; 2],
}

impl Strides {
    /// A contiguous stack of (rows, cols) matrices.
    pub fn contiguous(rows: usize, cols: usize) -> Self {
        Strides { offset: 0, ld: cols, bs: [rows * cols, 0] }
    }
}

/// A batched, strided matmul: C[z] = alpha · op(A[z]) · op(B[z]) (+ bias) (+ C[z] if accumulate),
/// op(A) is (m, k), op(B) is (k, n), C is (m, n); z runs over batch[0] × batch[1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatmulDesc {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: [usize; 2],
    pub trans_a: bool,
    pub trans_b: bool,
    pub a: Strides,
    pub b: Strides,
    pub c: Strides,
    pub alpha: f32,
    pub accumulate: bool,
}

impl MatmulDesc {
    /// A plain contiguous (batch, m, k)·(batch, k, n) product, with op(·) = transpose when asked.
    pub fn contiguous(batch: usize, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
        let (br, bc) = if trans_b { (n, k) } else { (k, n) };
        MatmulDesc {
            m,
            n,
            k,
            batch: [batch, 1],
            trans_a,
            trans_b,
            a: Strides::contiguous(ar, ac),
            b: Strides::contiguous(br, bc),
            c: Strides::contiguous(m, n),
            alpha: 1.0,
            accumulate: false,
        }
    }

    /// Proves every addressed element of A, B and C lies within buffers of the given lengths.
    pub fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        let op = "matmul";
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch[0] == 0 || self.batch[1] == 0 {
            return Err(Error::shape(
                op,
                format!("zero-sized dimension in m={} n={} k={} batch={:?}", self.m, self.n, self.k, self.batch),
            ));
        }
        let (ar, ac) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        let (br, bc) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        let span = |s: &Strides, rows: usize, cols: usize, len: usize, name: &str| -> Result<()> {
            if s.ld < cols {
                return Err(Error::shape(op, format!("{name}: row stride {} is shorter than a row of {cols}", s.ld)));
            }
            let last = s.offset
                + (self.batch[0] - 1) * s.bs[0]
                + (self.batch[1] - 1) * s.bs[1]
                + (rows - 1) * s.ld
                + (cols - 1);
            if last >= len {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name}: a {rows}×{cols} operand (batch {:?}, strides {s:?}) reaches element {last} of a tensor of {len}",
                        self.batch
                    ),
                ));
            }
            Ok(())
        };
        span(&self.a, ar, ac, a_len, "A")?;
        span(&self.b, br, bc, b_len, "B")?;
        span(&self.c, self.m, self.n, c_len, "C")
    }
}

/// AdamW hyper-parameters for one step (bias corrections precomputed for the step number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 - beta1^t
    pub bc1: f32,
    /// 1 - beta2^t
    pub bc2: f32,
    /// Global-norm clipping threshold; 0 disables clipping.
    pub max_norm: f32,
    /// Factor applied to the gradient before clipping (1 normally; it corrects an epoch's last,
    /// shorter gradient accumulation).
    pub grad_scale: f32,
}

impl AdamWStep {
    /// The step `t` (1-based) of AdamW with these hyper-parameters.
    pub fn new(lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, max_norm: f32, t: u64) -> Self {
        let bc1 = 1.0 - (beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (beta2 as f64).powi(t as i32);
        AdamWStep { lr, beta1, beta2, eps, weight_decay, bc1: bc1 as f32, bc2: bc2 as f32, max_norm, grad_scale: 1.0 }
    }

    /// The same step with the gradient multiplied by `s`.
    pub fn with_grad_scale(self, s: f32) -> Self {
        AdamWStep { grad_scale: s, ..self }
    }

    /// The factor applied to the raw gradient: `grad_scale`, times the clipping factor of torch's
    /// clip_grad_norm_ for the scaled gradient's global norm (`norm_sq` is that of the raw gradient).
    pub fn clip_factor(&self, norm_sq: f32) -> f32 {
        if self.max_norm > 0.0 {
            self.grad_scale * (self.max_norm / (norm_sq.sqrt() * self.grad_scale + 1e-6)).min(1.0)
        } else {
            self.grad_scale
        }
    }
}

/// Which rows of an additive mask the rows of a softmax read, and causal masking: softmax row `r`
/// adds mask row `(r / div) * modulo + r % modulo`, so a key mask (B, Tk) over attention scores
/// (B, H, Tq, Tk) has `div = H·Tq, modulo = 1`, and a full mask (B, Tq, Tk) `div = H·Tq, modulo = Tq`.
/// With `causal = Tq > 0`, column j of row r is dropped when j > r % Tq + (len − Tq) (a query sees
/// the keys up to its own position, after any keys in front of the queries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMask {
    pub div: usize,
    pub modulo: usize,
    pub causal: usize,
}

impl RowMask {
    /// One mask row per `div` consecutive rows (a key mask).
    pub fn keys(div: usize) -> Self {
        RowMask { div, modulo: 1, causal: 0 }
    }

    /// The mask row of softmax row `r`.
    pub fn row(&self, r: usize) -> usize {
        (r / self.div) * self.modulo + r % self.modulo
    }

    /// The last column row `r` (of `len` columns) may see under causal masking; `len - 1` without.
    pub fn last_visible(&self, r: usize, len: usize) -> usize {
        if self.causal > 0 {
            r % self.causal + (len - self.causal)
        } else {
            len - 1
        }
    }
}
