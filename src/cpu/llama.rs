//! The Llama family's own kernels on the CPU device, twins of `shaders/llama.wgsl`: RMSNorm, rotary
//! position embedding in the rotate-half layout, the SwiGLU gate and the repetition of key/value
//! heads for grouped-query attention, each with its backward.

use super::Real;

/// y = x · rstd · γ with rstd = 1/√(mean(x²) + eps) per row of `cols`; saves rstd per row.
pub fn rmsnorm_forward<T: Real>(y: &mut [T], rstd: &mut [T], x: &[T], gamma: &[T], cols: usize, eps: f32) {
    for (r, (yr, xr)) in y.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
        let mut ss = T::default();
        for &v in xr {
            ss += v * v;
        }
        let s = T::from_f64(1.0) / (ss / T::from_f64(cols as f64) + T::from_f64(eps as f64)).sqrt();
        rstd[r] = s;
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
            *o = v * s * g;
        }
    }
}

/// dx = rstd · (g − x̂ · mean(g ⊙ x̂)), g = dy ⊙ γ, x̂ = x · rstd; dγ += Σ_rows dy ⊙ x̂ when given.
pub fn rmsnorm_backward<T: Real>(
    dx: &mut [T],
    mut dgamma: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    rstd: &[T],
    gamma: &[T],
    cols: usize,
) {
    let n = T::from_f64(cols as f64);
    for (r, ((dxr, dyr), xr)) in dx.chunks_mut(cols).zip(dy.chunks(cols)).zip(x.chunks(cols)).enumerate() {
        let s = rstd[r];
        let mut m = T::default();
        for c in 0..cols {
            m += dyr[c] * gamma[c] * xr[c] * s;
        }
        let m = m / n;
        for c in 0..cols {
            let xh = xr[c] * s;
            dxr[c] = s * (dyr[c] * gamma[c] - xh * m);
        }
        if let Some(dg) = dgamma.as_deref_mut() {
            for c in 0..cols {
                dg[c] += dyr[c] * xr[c] * s;
            }
        }
    }
}

/// Rotary embedding of x (rows of `cols` = H·D, row r at position r mod t) into `out`, HF's
/// rotate-half layout: for each head and i < D/2, (x_i, x_{i+D/2}) turns by the angle of that position
/// and i, read from the tables cos, sin (t, D/2). `sign` −1 turns backwards: the backward of the
/// rotation (its transpose).
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Real>(out: &mut [T], x: &[T], cos: &[T], sin: &[T], cols: usize, t: usize, d: usize, sign: f32) {
    let half = d / 2;
    let sg = T::from_f64(sign as f64);
    for (r, (or, xr)) in out.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
        let pos = r % t;
        let (cr, sr) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        for h in 0..cols / d {
            let (o, v) = (&mut or[h * d..(h + 1) * d], &xr[h * d..(h + 1) * d]);
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                let (c, s) = (cr[i], sg * sr[i]);
                o[i] = a * c - b * s;
                o[i + half] = b * c + a * s;
            }
        }
    }
}

/// The SwiGLU gate: y = silu(g) ⊙ u, silu(g) = g · σ(g).
pub fn swiglu_forward<T: Real>(y: &mut [T], g: &[T], u: &[T]) {
    for ((o, &a), &b) in y.iter_mut().zip(g).zip(u) {
        *o = silu(a) * b;
    }
}

/// dg = dy ⊙ u ⊙ silu'(g), du = dy ⊙ silu(g), silu'(g) = σ(g) (1 + g (1 − σ(g))).
pub fn swiglu_backward<T: Real>(dg: &mut [T], du: &mut [T], dy: &[T], g: &[T], u: &[T]) {
    let one = T::from_f64(1.0);
    for i in 0..dy.len() {
        let s = sigmoid(g[i]);
        dg[i] = dy[i] * u[i] * s * (one + g[i] * (one - s));
        du[i] = dy[i] * g[i] * s;
    }
}

fn sigmoid<T: Real>(v: T) -> T {
    T::from_f64(1.0) / (T::from_f64(1.0) + (-v).exp())
}

fn silu<T: Real>(v: T) -> T {
    v * sigmoid(v)
}

/// Key/value heads repeated for grouped-query attention: x (rows, Hkv·D) → out (rows, Hkv·g·D),
/// query head h reading key/value head h / g.
pub fn repeat_kv_forward<T: Real>(out: &mut [T], x: &[T], kv_cols: usize, d: usize, g: usize) {
    let cols = kv_cols * g;
    for (or, xr) in out.chunks_mut(cols).zip(x.chunks(kv_cols)) {
        for h in 0..cols / d {
            let k = h / g;
            or[h * d..(h + 1) * d].copy_from_slice(&xr[k * d..(k + 1) * d]);
        }
    }
}

/// Backward of `repeat_kv_forward`: dx (rows, Hkv·D) = the sum over each key/value head's g copies.
pub fn repeat_kv_backward<T: Real>(dx: &mut [T], dout: &[T], kv_cols: usize, d: usize, g: usize) {
    let cols = kv_cols * g;
    for (xr, or) in dx.chunks_mut(kv_cols).zip(dout.chunks(cols)) {
        xr.fill(T::default());
        for h in 0..cols / d {
            let k = h / g;
            for i in 0..d {
                xr[k * d + i] += or[h * d + i];
            }
        }
    }
}
