//! The CPU kernels. Sizes are trusted: the ops layer (`crate::ops`) checks shapes before calling.

use super::{par_rows, Real};
use crate::desc::{AdamWStep, MatmulDesc, RowMask};

// ---------------------------------------------------------------------------------------------
// matmul

/// C[z] = alpha · op(A[z]) · op(B[z]) (+ bias) (+ C[z] if accumulate), see [`MatmulDesc`].
pub fn matmul<T: Real>(c: &mut [T], a: &[T], b: &[T], bias: Option<&[T]>, d: &MatmulDesc) {
    let (m, n, k) = (d.m, d.n, d.k);
    // Element (i, kk) of op(A) sits at i*rsa + kk*csa; element (kk, j) of op(B) at kk*rsb + j*csb.
    let (rsa, csa) = if d.trans_a { (1, d.a.ld as isize) } else { (d.a.ld as isize, 1) };
    let (rsb, csb) = if d.trans_b { (1, d.b.ld as isize) } else { (d.b.ld as isize, 1) };
    let beta = if d.accumulate { T::one() } else { T::zero() };
    for z0 in 0..d.batch[0] {
        for z1 in 0..d.batch[1] {
            let ao = d.a.offset + z0 * d.a.bs[0] + z1 * d.a.bs[1];
            let bo = d.b.offset + z0 * d.b.bs[0] + z1 * d.b.bs[1];
            let co = d.c.offset + z0 * d.c.bs[0] + z1 * d.c.bs[1];
            if k == 0 {
                // sgemm would leave C untouched; follow the definition instead.
                for i in 0..m {
                    for j in 0..n {
                        let x = &mut c[co + i * d.c.ld + j];
                        *x = if d.accumulate { *x } else { T::zero() };
                    }
                }
            } else {
                // SAFETY: MatmulDesc::check (called by ops::matmul) proved every addressed element
                // of A, B and C lies inside the slices; C does not alias A or B (distinct borrows).
                unsafe {
                    T::gemm(
                        m,
                        k,
                        n,
                        T::from_f64(d.alpha as f64),
                        a.as_ptr().add(ao),
                        rsa,
                        csa,
                        b.as_ptr().add(bo),
                        rsb,
                        csb,
                        beta,
                        c.as_mut_ptr().add(co),
                        d.c.ld as isize,
                        1,
                    );
                }
            }
            if let Some(bias) = bias {
                for i in 0..m {
                    let row = &mut c[co + i * d.c.ld..co + i * d.c.ld + n];
                    for (x, &bj) in row.iter_mut().zip(bias) {
                        *x += bj;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layer norm

/// y = (x - mean) * rstd * gamma + beta over rows of `cols`; saves mean and rstd per row.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Real>(
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    gamma: &[T],
    beta: &[T],
    cols: usize,
    eps: f32,
) {
    let n = T::from_f64(cols as f64);
    for (r, (xr, yr)) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)).enumerate() {
        let mut s = T::zero();
        for &v in xr {
            s += v;
        }
        let mu = s / n;
        let mut var = T::zero();
        for &v in xr {
            var += (v - mu) * (v - mu);
        }
        let rs = T::one() / (var / n + T::from_f64(eps as f64)).sqrt();
        for c in 0..cols {
            yr[c] = (xr[c] - mu) * rs * gamma[c] + beta[c];
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma (assigned, or added when
/// `accumulate`); dgamma += Σ dy * xhat and dbeta += Σ dy when given.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Real>(
    dx: &mut [T],
    dgamma: Option<&mut [T]>,
    dbeta: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    cols: usize,
    accumulate: bool,
) {
    let n = T::from_f64(cols as f64);
    let rows = x.len() / cols;
    for r in 0..rows {
        let (xr, dyr) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
        let (mu, rs) = (mean[r], rstd[r]);
        let mut sg = T::zero();
        let mut sgx = T::zero();
        for c in 0..cols {
            let g = dyr[c] * gamma[c];
            sg += g;
            sgx += g * (xr[c] - mu) * rs;
        }
        let (mg, mgx) = (sg / n, sgx / n);
        let dxr = &mut dx[r * cols..(r + 1) * cols];
        for c in 0..cols {
            let xhat = (xr[c] - mu) * rs;
            let d = rs * (dyr[c] * gamma[c] - mg - xhat * mgx);
            dxr[c] = if accumulate { dxr[c] + d } else { d };
        }
    }
    if let Some(dg) = dgamma {
        for r in 0..rows {
            for c in 0..cols {
                dg[c] += dy[r * cols + c] * (x[r * cols + c] - mean[r]) * rstd[r];
            }
        }
    }
    if let Some(db) = dbeta {
        sum_rows(db, dy, cols, true);
    }
}

// ---------------------------------------------------------------------------------------------
// elementwise

/// GELU, the exact erf form: 0.5 x (1 + erf(x / √2)).
pub fn gelu<T: Real>(v: T) -> T {
    T::from_f64(0.5) * v * (T::one() + (v * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// d gelu / dx = Φ(x) + x φ(x).
#[inline(always)]
pub fn gelu_grad<T: Real>(v: T) -> T {
    let cdf = T::from_f64(0.5) * (T::one() + (v * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::from_f64(0.398_942_280_401_432_7) * (T::from_f64(-0.5) * v * v).exp();
    cdf + v * pdf
}

pub fn gelu_forward<T: Real>(y: &mut [T], x: &[T]) {
    par_rows(y, 1, |first, block| {
        for (o, &v) in block.iter_mut().zip(&x[first..]) {
            *o = gelu(v);
        }
    });
}

/// dx (+)= dy * gelu'(x)
pub fn gelu_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], accumulate: bool) {
    par_rows(dx, 1, |first, block| {
        for ((o, &g), &v) in block.iter_mut().zip(&dy[first..]).zip(&x[first..]) {
            let d = g * gelu_grad(v);
            *o = if accumulate { *o + d } else { d };
        }
    });
}

pub fn tanh_forward<T: Real>(y: &mut [T], x: &[T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.tanh();
    }
}

/// dx (+)= dy * (1 - y²) where y = tanh(x).
pub fn tanh_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], accumulate: bool) {
    for ((o, &g), &t) in dx.iter_mut().zip(dy).zip(y) {
        let d = g * (T::one() - t * t);
        *o = if accumulate { *o + d } else { d };
    }
}

/// out (+)= x + alpha * y, y broadcast by wrapping (y.len() divides x.len()).
pub fn add<T: Real>(out: &mut [T], x: &[T], y: &[T], alpha: f32, accumulate: bool) {
    let a = T::from_f64(alpha as f64);
    for (i, (o, &u)) in out.iter_mut().zip(x).enumerate() {
        let r = u + a * y[i % y.len()];
        *o = if accumulate { *o + r } else { r };
    }
}

/// out (+)= x * y, y broadcast by wrapping.
pub fn mul<T: Real>(out: &mut [T], x: &[T], y: &[T], accumulate: bool) {
    for (i, (o, &u)) in out.iter_mut().zip(x).enumerate() {
        let r = u * y[i % y.len()];
        *o = if accumulate { *o + r } else { r };
    }
}

pub fn scale<T: Real>(out: &mut [T], x: &[T], alpha: f32) {
    let a = T::from_f64(alpha as f64);
    for (o, &u) in out.iter_mut().zip(x) {
        *o = a * u;
    }
}

// ---------------------------------------------------------------------------------------------
// softmax

/// y[r] = softmax(scale * x[r] + mask[r / mask_div]) over rows of `len` (a key mask).
pub fn softmax_forward<T: Real>(y: &mut [T], x: &[T], mask: Option<(&[T], usize)>, len: usize, scale: f32) {
    match mask {
        Some((m, div)) => softmax_masked(y, x, Some(m), RowMask::keys(div), len, scale),
        None => softmax_masked(y, x, None, RowMask::keys(1), len, scale),
    }
}

/// y[r] = softmax(scale * x[r] + mask[rows.row(r)]) over rows of `len`, with the causal masking
/// `rows` asks for (dropped columns get probability 0).
pub fn softmax_masked<T: Real>(y: &mut [T], x: &[T], mask: Option<&[T]>, rows: RowMask, len: usize, scale: f32) {
    let s = T::from_f64(scale as f64);
    let dropped = T::from_f64(-1e30);
    for (r, (xr, yr)) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)).enumerate() {
        match mask {
            Some(m) => {
                let mr = &m[rows.row(r) * len..][..len];
                for ((y, &x), &a) in yr.iter_mut().zip(xr).zip(mr) {
                    *y = s * x + a;
                }
            }
            None => {
                for (y, &x) in yr.iter_mut().zip(xr) {
                    *y = s * x;
                }
            }
        }
        // Columns after the query's own position (keys in front of the queries stay visible).
        for y in &mut yr[rows.last_visible(r, len) + 1..] {
            *y += dropped;
        }
        let mut mx = yr[0];
        for &v in yr.iter() {
            mx = mx.max(v);
        }
        let mut sum = T::zero();
        for v in yr.iter_mut() {
            *v = (*v - mx).exp();
            sum += *v;
        }
        for v in yr.iter_mut() {
            *v = *v / sum;
        }
    }
}

/// dx = scale * y * (dy - Σ dy·y) per row.
pub fn softmax_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T], len: usize, scale: f32) {
    let s = T::from_f64(scale as f64);
    for ((dxr, dyr), yr) in dx.chunks_exact_mut(len).zip(dy.chunks_exact(len)).zip(y.chunks_exact(len)) {
        let mut dot = T::zero();
        for j in 0..len {
            dot += dyr[j] * yr[j];
        }
        for j in 0..len {
            dxr[j] = s * yr[j] * (dyr[j] - dot);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// embedding

/// out[t] = table[ids[t]] (rows of `cols`; ids out of range give zeros, as on the GPU).
pub fn embedding_forward<T: Real>(out: &mut [T], ids: &[u32], table: &[T], cols: usize) {
    let vocab = table.len() / cols;
    for (t, &id) in ids.iter().enumerate() {
        let o = &mut out[t * cols..(t + 1) * cols];
        if (id as usize) < vocab {
            o.copy_from_slice(&table[id as usize * cols..(id as usize + 1) * cols]);
        } else {
            o.fill(T::zero());
        }
    }
}

/// dtable[ids[t]] += dout[t]
pub fn embedding_backward<T: Real>(dtable: &mut [T], dout: &[T], ids: &[u32], cols: usize) {
    let vocab = dtable.len() / cols;
    for (t, &id) in ids.iter().enumerate() {
        if (id as usize) < vocab {
            let row = &mut dtable[id as usize * cols..(id as usize + 1) * cols];
            for (d, &g) in row.iter_mut().zip(&dout[t * cols..(t + 1) * cols]) {
                *d += g;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pooling

fn token_count<T: Real>(mask: &[T]) -> T {
    let mut n = T::zero();
    for &m in mask {
        n += m;
    }
    n.max(T::from_f64(1e-9))
}

/// out[b] = Σ_t x[b, t] m[b, t] / max(Σ_t m[b, t], 1e-9) over (B, T, C).
pub fn mean_pool_forward<T: Real>(out: &mut [T], x: &[T], mask: &[T], tokens: usize, cols: usize) {
    for (b, o) in out.chunks_exact_mut(cols).enumerate() {
        let mb = &mask[b * tokens..(b + 1) * tokens];
        let n = token_count(mb);
        o.fill(T::zero());
        for (t, &m) in mb.iter().enumerate() {
            let xr = &x[(b * tokens + t) * cols..(b * tokens + t + 1) * cols];
            for (oc, &v) in o.iter_mut().zip(xr) {
                *oc += v * m;
            }
        }
        for oc in o.iter_mut() {
            *oc = *oc / n;
        }
    }
}

/// Pooling of (B, T, C) over tokens by `mode`: 0 masked mean, 1 masked sum / sqrt(count), 2 masked
/// max (padding counts as -1e9, as sentence-transformers does), 3 the first token.
pub fn pool_forward<T: Real>(out: &mut [T], x: &[T], mask: &[T], tokens: usize, cols: usize, mode: u32) {
    match mode {
        0 => mean_pool_forward(out, x, mask, tokens, cols),
        1 => {
            for (b, o) in out.chunks_exact_mut(cols).enumerate() {
                let mb = &mask[b * tokens..(b + 1) * tokens];
                o.fill(T::zero());
                for (t, &m) in mb.iter().enumerate() {
                    let xr = &x[(b * tokens + t) * cols..(b * tokens + t + 1) * cols];
                    for (oc, &v) in o.iter_mut().zip(xr) {
                        *oc += v * m;
                    }
                }
                let n = token_count(mb).sqrt();
                o.iter_mut().for_each(|v| *v = *v / n);
            }
        }
        2 => {
            for (b, o) in out.chunks_exact_mut(cols).enumerate() {
                o.fill(T::from_f64(-3.0e38));
                for t in 0..tokens {
                    let masked = mask[b * tokens + t] == T::zero();
                    let xr = &x[(b * tokens + t) * cols..(b * tokens + t + 1) * cols];
                    for (oc, &v) in o.iter_mut().zip(xr) {
                        let v = if masked { T::from_f64(-1e9) } else { v };
                        if v > *oc {
                            *oc = v;
                        }
                    }
                }
            }
        }
        _ => {
            for (b, o) in out.chunks_exact_mut(cols).enumerate() {
                o.copy_from_slice(&x[b * tokens * cols..b * tokens * cols + cols]);
            }
        }
    }
}

/// dx[b, t] = dout[b] m[b, t] / max(Σ_t m[b, t], 1e-9)
pub fn mean_pool_backward<T: Real>(dx: &mut [T], dout: &[T], mask: &[T], tokens: usize, cols: usize) {
    let batch = dout.len() / cols;
    for b in 0..batch {
        let mb = &mask[b * tokens..(b + 1) * tokens];
        let n = token_count(mb);
        for (t, &m) in mb.iter().enumerate() {
            let dr = &mut dx[(b * tokens + t) * cols..(b * tokens + t + 1) * cols];
            for (d, &g) in dr.iter_mut().zip(&dout[b * cols..(b + 1) * cols]) {
                *d = g * m / n;
            }
        }
    }
}

/// y[b] = x[b] / max(‖x[b]‖, 1e-12)
pub fn l2norm_forward<T: Real>(y: &mut [T], x: &[T], cols: usize) {
    for (yr, xr) in y.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        let mut s = T::zero();
        for &v in xr {
            s += v * v;
        }
        let norm = s.sqrt().max(T::from_f64(1e-12));
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = v / norm;
        }
    }
}

/// dx = (dy - y (dy·y)) / ‖x‖
pub fn l2norm_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], cols: usize) {
    let eps = T::from_f64(1e-12);
    for ((dxr, dyr), xr) in dx.chunks_exact_mut(cols).zip(dy.chunks_exact(cols)).zip(x.chunks_exact(cols)) {
        let mut s = T::zero();
        let mut dot = T::zero();
        for (&g, &v) in dyr.iter().zip(xr) {
            s += v * v;
            dot += g * v;
        }
        let norm = s.sqrt();
        for ((o, &g), &v) in dxr.iter_mut().zip(dyr).zip(xr) {
            *o = if norm > eps { (g - v / norm * dot / norm) / norm } else { g / eps };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// loss

/// loss[b] = logsumexp(logits[b]) - logits[b, label]; dlogits = grad_scale (softmax - onehot).
pub fn crossentropy<T: Real>(
    loss: &mut [T],
    dlogits: &mut [T],
    logits: &[T],
    labels: &[u32],
    classes: usize,
    grad_scale: f32,
) {
    let gs = T::from_f64(grad_scale as f64);
    for (b, (lr, dr)) in logits.chunks_exact(classes).zip(dlogits.chunks_exact_mut(classes)).enumerate() {
        let mut mx = lr[0];
        for &v in lr {
            mx = mx.max(v);
        }
        let mut s = T::zero();
        for &v in lr {
            s += (v - mx).exp();
        }
        let lse = mx + s.ln();
        let label = labels[b] as usize;
        loss[b] = lse - lr[label];
        for k in 0..classes {
            let p = (lr[k] - lse).exp();
            dr[k] = gs * (p - if k == label { T::one() } else { T::zero() });
        }
    }
}

/// Cross-entropy against target distributions `q` (B, K): the twin of `crossentropy_soft`.
pub fn crossentropy_soft<T: Real>(
    loss: &mut [T],
    dlogits: &mut [T],
    logits: &[T],
    q: &[T],
    classes: usize,
    grad_scale: f32,
) {
    let gs = T::from_f64(grad_scale as f64);
    for (b, ((lr, dr), qr)) in
        logits.chunks_exact(classes).zip(dlogits.chunks_exact_mut(classes)).zip(q.chunks_exact(classes)).enumerate()
    {
        let mut mx = lr[0];
        for &v in lr {
            mx = mx.max(v);
        }
        let mut s = T::zero();
        for &v in lr {
            s += (v - mx).exp();
        }
        let lse = mx + s.ln();
        let mut l = T::zero();
        for k in 0..classes {
            l += qr[k] * (lse - lr[k]);
            dr[k] = gs * ((lr[k] - lse).exp() - qr[k]);
        }
        loss[b] = l;
    }
}

// ---------------------------------------------------------------------------------------------
// optimiser and reductions

/// out[c] (+)= Σ_r x[r, c]
pub fn sum_rows<T: Real>(out: &mut [T], x: &[T], cols: usize, accumulate: bool) {
    if !accumulate {
        out.fill(T::zero());
    }
    for xr in x.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(xr) {
            *o += v;
        }
    }
}

/// Σ x², accumulated in f64.
pub fn sumsq<T: Real>(x: &[T]) -> T {
    let mut s = 0.0f64;
    for &v in x {
        s += v.to_f64() * v.to_f64();
    }
    T::from_f64(s)
}

// ---------------------------------------------------------------------------------------------
// relu, dropout, prefix

pub fn relu_forward<T: Real>(y: &mut [T], x: &[T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.max(T::zero());
    }
}

/// dx (+)= dy where x > 0
pub fn relu_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], accumulate: bool) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let d = if v > T::zero() { g } else { T::zero() };
        *o = if accumulate { *o + d } else { d };
    }
}

/// "lowbias32" (C. Wellons), as in shaders/dropout.wgsl.
pub fn hash32(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// Whether dropout with probability `p` keeps element `i` under `seed` (the GPU kernel's rule).
pub fn dropout_keep(seed: u32, i: u32, p: f32) -> bool {
    let u = (hash32(seed ^ hash32(i)) >> 8) as f32 * (1.0 / 16_777_216.0);
    u >= p
}

/// out = x * mask / (1 - p), the mask given by (seed, index).
pub fn dropout<T: Real>(out: &mut [T], x: &[T], seed: u32, p: f32) {
    let scale = T::from_f64((1.0 / (1.0 - p)) as f64);
    par_rows(out, 1, |first, block| {
        for (i, (o, &v)) in block.iter_mut().zip(&x[first..]).enumerate() {
            *o = if dropout_keep(seed, (first + i) as u32, p) { v * scale } else { T::zero() };
        }
    });
}

/// out[b] = [prefix; x[b]] over (B, T, C) → (B, P+T, C)
pub fn prefix_concat<T: Real>(out: &mut [T], prefix: &[T], x: &[T], batch: usize, tokens: usize, cols: usize) {
    let plen = prefix.len() / cols;
    let row = (plen + tokens) * cols;
    for b in 0..batch {
        out[b * row..b * row + plen * cols].copy_from_slice(prefix);
        out[b * row + plen * cols..(b + 1) * row].copy_from_slice(&x[b * tokens * cols..(b + 1) * tokens * cols]);
    }
}

/// dx[b] = dout[b, P..], dprefix += Σ_b dout[b, ..P]
pub fn prefix_split<T: Real>(dx: &mut [T], dprefix: &mut [T], dout: &[T], batch: usize, tokens: usize, cols: usize) {
    let plen = dprefix.len() / cols;
    let row = (plen + tokens) * cols;
    for b in 0..batch {
        for (d, &g) in dprefix.iter_mut().zip(&dout[b * row..b * row + plen * cols]) {
            *d += g;
        }
        dx[b * tokens * cols..(b + 1) * tokens * cols].copy_from_slice(&dout[b * row + plen * cols..(b + 1) * row]);
    }
}

/// One AdamW update of `param` in place (f32 state, as on the GPU).
pub fn adamw(param: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], norm_sq: f32, h: &AdamWStep) {
    let clip = h.clip_factor(norm_sq);
    for i in 0..param.len() {
        let g = clip * grad[i];
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
        let w = param[i];
        param[i] = w - h.lr * (m[i] / h.bc1) / ((v[i] / h.bc2).sqrt() + h.eps) - h.lr * h.weight_decay * w;
    }
}
