//! ScaLearn on the CPU device: the twins of `shaders/scalearn.wgsl`. `w` holds ω (S, cols), or (S, 1)
//! when `scalar`; `source` picks its row.

/// y (+)= ω_s ⊙ x over rows of `cols` values.
pub fn scalearn_scale(y: &mut [f32], x: &[f32], w: &[f32], cols: usize, source: usize, scalar: bool, acc: bool) {
    for (yr, xr) in y.chunks_mut(cols).zip(x.chunks(cols)) {
        for (c, (yv, &xv)) in yr.iter_mut().zip(xr).enumerate() {
            let v = w[if scalar { source } else { source * cols + c }] * xv;
            *yv = if acc { *yv + v } else { v };
        }
    }
}

/// dω[s, c] += Σ_n dout[n, c] · a[n, c], or dω[s] += Σ_{n, c} dout · a when `scalar`.
pub fn scalearn_grad(dw: &mut [f32], dout: &[f32], a: &[f32], cols: usize, source: usize, scalar: bool) {
    if scalar {
        // The kernel's order: 256 strided partial sums, then a tree.
        let mut partial = [0f32; 256];
        for (i, (&d, &v)) in dout.iter().zip(a).enumerate() {
            partial[i % 256] += d * v;
        }
        let mut stride = 128;
        while stride > 0 {
            for t in 0..stride {
                partial[t] += partial[t + stride];
            }
            stride >>= 1;
        }
        dw[source] += partial[0];
        return;
    }
    let mut acc = vec![0f32; cols];
    for (dr, ar) in dout.chunks(cols).zip(a.chunks(cols)) {
        for c in 0..cols {
            acc[c] += dr[c] * ar[c];
        }
    }
    for c in 0..cols {
        dw[source * cols + c] += acc[c];
    }
}
