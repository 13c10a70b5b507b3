//! Matmuls over a frozen weight in quantised blocks on the CPU device: the twins of
//! `shaders/qmatmul.wgsl`. `wq` holds W (rows, cols)'s blocks, row after row.

use crate::quant::{dequantize, GgmlType};

/// W's row `r` as f32.
fn row(wq: &[u8], kind: GgmlType, cols: usize, r: usize) -> Vec<f32> {
    let (per, size) = kind.block();
    let bytes = cols / per * size;
    dequantize(kind, &wq[r * bytes..(r + 1) * bytes])
}

/// y (n, rows) = x (n, cols) Wᵀ.
pub fn qmatmul_forward(y: &mut [f32], x: &[f32], wq: &[u8], kind: GgmlType, rows: usize, cols: usize) {
    let n = x.len() / cols;
    // One de-quantised row of W at a time, against every row of x.
    let mut out = vec![0f32; rows * n];
    super::par_rows(&mut out, n, |r0, block| {
        for (i, yr) in block.chunks_mut(n).enumerate() {
            let w = row(wq, kind, cols, r0 + i);
            for (t, v) in yr.iter_mut().enumerate() {
                let xr = &x[t * cols..(t + 1) * cols];
                let mut acc = 0f32;
                for c in 0..cols {
                    acc += xr[c] * w[c];
                }
                *v = acc;
            }
        }
    });
    for r in 0..rows {
        for t in 0..n {
            y[t * rows + r] = out[r * n + t];
        }
    }
}

/// dx (n, cols) = dy (n, rows) W.
pub fn qmatmul_dx(dx: &mut [f32], dy: &[f32], wq: &[u8], kind: GgmlType, rows: usize, cols: usize) {
    let n = dy.len() / rows;
    dx.fill(0.0);
    for r in 0..rows {
        let w = row(wq, kind, cols, r);
        for t in 0..n {
            let g = dy[t * rows + r];
            let d = &mut dx[t * cols..(t + 1) * cols];
            for c in 0..cols {
                d[c] += g * w[c];
            }
        }
    }
}
