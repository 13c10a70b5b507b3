//! Scaled dot-product attention over heads, composed from strided batched matmuls and the masked
//! softmax, reading Q, K, V in their (B, T, H·D) layout without permutes.
//!
//! Forward, per batch b and head h (blocks Q_bh = q[b, :, h·D..(h+1)·D]):
//!   S_bh = Q_bh K_bhᵀ                              (Tq, Tk)
//!   P_bh = softmax(S_bh / √D + mask[b])            mask additive: (B, Tk) keys or (B, Tq, Tk) full,
//!                                                   optionally causal
//!   O_bh = P_bh V_bh                               (Tq, D)
//! Backward:
//!   dP = dO Vᵀ;  dV = Pᵀ dO;  dS = softmax_backward(dP, P) / √D;  dQ = dS K;  dK = dSᵀ Q
//! With attention dropout (training) P is replaced by drop(P) in O and dV, and dP is dropped alike.

use super::{device_of, matmul_into, softmax_backward, softmax_masked, MatmulDesc, RowMask, Strides};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

struct Dims {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn c(&self) -> usize {
        self.h * self.d
    }
    /// A (B, T, H·D) activation seen as (B, H) blocks of (T, D).
    fn heads(&self, t: usize) -> Strides {
        Strides { offset: 0, ld: self.c(), bs: [t * self.c(), self.d] }
    }
    /// A contiguous (B, H, Tq, Tk) score tensor seen as (B, H) blocks of (Tq, Tk).
    fn scores(&self) -> Strides {
        Strides { offset: 0, ld: self.tk, bs: [self.h * self.tq * self.tk, self.tq * self.tk] }
    }
    #[allow(clippy::too_many_arguments)]
    fn desc(&self, m: usize, n: usize, k: usize, ta: bool, tb: bool, a: Strides, b: Strides, c: Strides) -> MatmulDesc {
        MatmulDesc {
            m,
            n,
            k,
            batch: [self.b, self.h],
            trans_a: ta,
            trans_b: tb,
            a,
            b,
            c,
            alpha: 1.0,
            accumulate: false,
        }
    }
}

fn dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Dims> {
    let (sq, sk) = (q.shape(), k.shape());
    if sq.len() != 3 || sk.len() != 3 || v.shape() != sk || sq[0] != sk[0] || sq[2] != sk[2] {
        return Err(Error::shape(
            op,
            format!("q {sq:?}, k {sk:?} and v {:?} must be (B, T, C) with equal B and C", v.shape()),
        ));
    }
    if heads == 0 || sq[2] % heads != 0 {
        return Err(Error::shape(op, format!("{} channels do not split into {heads} heads", sq[2])));
    }
    Ok(Dims { b: sq[0], tq: sq[1], tk: sk[1], h: heads, d: sq[2] / heads })
}

/// Which keys each query may attend to.
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a> {
    /// Every key.
    None,
    /// An additive key mask (B, Tk): 0 to keep a key, a large negative number (-1e30) to drop it.
    Keys(&'a Tensor),
    /// An additive mask per query (B, Tq, Tk).
    Full(&'a Tensor),
    /// Query i sees keys up to i + (Tk − Tq) (keys in front of the queries, such as prefix rows or
    /// a cache, stay visible), with an optional key mask (B, Tk) on top.
    Causal(Option<&'a Tensor>),
}

/// Returns (out (B, Tq, C), probs (B, H, Tq, Tk)). `mask` is additive, (B, Tk): 0 to keep a key,
/// a large negative number (-1e30) to drop it. `dropout` = (p, seed) drops attention probabilities
/// (training): out = drop(P) V; the returned probs are P before dropout.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
    dropout: Option<(f32, u32)>,
) -> Result<(Tensor, Tensor)> {
    attention_masked(q, k, v, mask.map_or(AttnMask::None, AttnMask::Keys), heads, dropout)
}

/// `attention` with any `AttnMask`.
pub fn attention_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask,
    heads: usize,
    dropout: Option<(f32, u32)>,
) -> Result<(Tensor, Tensor)> {
    let op = "attention";
    let n = dims(op, q, k, v, heads)?;
    let dev = device_of(op, &[q, k, v])?;
    let per_batch = n.h * n.tq;
    let want = |m: &Tensor, shape: &[usize], what: &str| -> Result<()> {
        if m.shape() != shape {
            return Err(Error::shape(op, format!("mask {:?} must be {what} = {shape:?}", m.shape())));
        }
        Ok(())
    };
    let (mask_t, rows) = match mask {
        AttnMask::None => (None, RowMask::keys(per_batch)),
        AttnMask::Keys(m) => {
            want(m, &[n.b, n.tk], "(B, Tk)")?;
            (Some(m), RowMask::keys(per_batch))
        }
        AttnMask::Full(m) => {
            want(m, &[n.b, n.tq, n.tk], "(B, Tq, Tk)")?;
            (Some(m), RowMask { div: per_batch, modulo: n.tq, causal: 0 })
        }
        AttnMask::Causal(m) => {
            if let Some(m) = m {
                want(m, &[n.b, n.tk], "(B, Tk)")?;
            }
            if n.tq > n.tk {
                return Err(Error::shape(op, format!("causal attention needs Tq {} ≤ Tk {}", n.tq, n.tk)));
            }
            (m, RowMask { div: per_batch, modulo: 1, causal: n.tq })
        }
    };
    let mut scores = dev.uninit(op, &[n.b, n.h, n.tq, n.tk])?;
    matmul_into(
        &mut scores,
        q,
        k,
        None,
        &n.desc(n.tq, n.tk, n.d, false, true, n.heads(n.tq), n.heads(n.tk), n.scores()),
    )?;
    let scale = 1.0 / (n.d as f32).sqrt();
    let probs = softmax_masked(&scores, mask_t, rows, scale)?;
    drop(scores);
    let kept = match dropout {
        Some((p, seed)) => super::dropout(&probs, p, seed)?,
        None => probs.clone(),
    };
    let mut out = dev.uninit(op, &[n.b, n.tq, n.c()])?;
    matmul_into(
        &mut out,
        &kept,
        v,
        None,
        &n.desc(n.tq, n.d, n.tk, false, false, n.scores(), n.heads(n.tk), n.heads(n.tq)),
    )?;
    Ok((out, probs))
}

/// Backward of `attention` (with the same `dropout`): returns (dq, dk, dv).
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    heads: usize,
    dropout: Option<(f32, u32)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "attention_backward";
    let n = dims(op, q, k, v, heads)?;
    let dev = device_of(op, &[dout, q, k, v, probs])?;
    if dout.shape() != q.shape() || probs.shape() != [n.b, n.h, n.tq, n.tk] {
        return Err(Error::shape(
            op,
            format!(
                "dout {:?} / probs {:?} do not match q {:?}, k {:?}",
                dout.shape(),
                probs.shape(),
                q.shape(),
                k.shape()
            ),
        ));
    }
    // With P' = drop(P) (P' = P without dropout): dP' = dO Vᵀ, dV = P'ᵀ dO, dP = drop(dP').
    let kept = match dropout {
        Some((p, seed)) => super::dropout(probs, p, seed)?,
        None => probs.clone(),
    };
    let mut dprobs = dev.uninit(op, probs.shape())?;
    matmul_into(
        &mut dprobs,
        dout,
        v,
        None,
        &n.desc(n.tq, n.tk, n.d, false, true, n.heads(n.tq), n.heads(n.tk), n.scores()),
    )?;
    let dprobs = match dropout {
        Some((p, seed)) => super::dropout(&dprobs, p, seed)?,
        None => dprobs,
    };
    let mut dv = dev.uninit(op, v.shape())?;
    matmul_into(
        &mut dv,
        &kept,
        dout,
        None,
        &n.desc(n.tk, n.d, n.tq, true, false, n.scores(), n.heads(n.tq), n.heads(n.tk)),
    )?;
    let scale = 1.0 / (n.d as f32).sqrt();
    let dscores = softmax_backward(&dprobs, probs, scale)?;
    drop(dprobs);
    let mut dq = dev.uninit(op, q.shape())?;
    matmul_into(
        &mut dq,
        &dscores,
        k,
        None,
        &n.desc(n.tq, n.d, n.tk, false, false, n.scores(), n.heads(n.tk), n.heads(n.tq)),
    )?;
    let mut dk = dev.uninit(op, k.shape())?;
    matmul_into(
        &mut dk,
        &dscores,
        q,
        None,
        &n.desc(n.tk, n.d, n.tq, true, false, n.scores(), n.heads(n.tq), n.heads(n.tk)),
    )?;
    Ok((dq, dk, dv))
}
