//! Matmuls over a frozen weight in quantised blocks on the CPU device: the twins of
//! `shaders/qmatmul.wgsl`. `wq` holds W (rows, cols)'s blocks, row after row.
//!
//! Two paths. A few rows of x (generation: one token at a time) take dot products straight on the
//! blocks, each block de-quantised into registers, rows of W split over the threads, with an AVX2 +
//! FMA build of the same loop chosen at run time. More rows (training, a prompt) de-quantise W a
//! panel of rows at a time into a small f32 buffer and hand it to the f32 GEMM, so the cost is the
//! GEMM's with the weight never held in f32 whole.

use crate::quant::{dequantize_into, nf4, GgmlType};

/// Up to this many rows of x take the dot-product path.
const GEMV_MAX_N: usize = 4;

/// Rows of W de-quantised per panel: about 1 Mi values (4 MiB), in multiples of 16, so that every
/// linear of a small model is one panel (x packed once) while a vocabulary-wide head stays bounded.
fn panel_rows(cols: usize) -> usize {
    ((1usize << 20) / cols.max(1)).max(16) / 16 * 16
}

fn row_bytes(kind: GgmlType, cols: usize) -> usize {
    let (per, size) = kind.block();
    cols / per * size
}

/// Rows r0 .. r0 + out.len() / cols of W (rows, cols) into `out`.
fn dequantize_rows(kind: GgmlType, wq: &[u8], rows: usize, cols: usize, r0: usize, out: &mut [f32]) {
    if kind.is_nf4() {
        nf4::dequantize_range(wq, rows * cols, kind == GgmlType::Nf4Double, r0 * cols, out);
    } else {
        let rb = row_bytes(kind, cols);
        dequantize_into(kind, &wq[r0 * rb..r0 * rb + out.len() / cols * rb], out);
    }
}

/// y (n, rows) = x (n, cols) Wᵀ.
pub fn qmatmul_forward(y: &mut [f32], x: &[f32], wq: &[u8], kind: GgmlType, rows: usize, cols: usize) {
    let n = x.len() / cols;
    if n <= GEMV_MAX_N {
        return gemv(y, x, wq, kind, rows, cols, n);
    }
    let per_panel = panel_rows(cols).min(rows);
    let mut panel = vec![0f32; per_panel * cols];
    for p0 in (0..rows).step_by(per_panel) {
        let p = per_panel.min(rows - p0);
        let w = &mut panel[..p * cols];
        dequantize_rows(kind, wq, rows, cols, p0, w);
        // SAFETY: x is (n, cols) row-major, the panel (p, cols) row-major read as its transpose, and
        // C = y[:, p0..p0 + p] with row stride `rows`: every element addressed lies in its slice, and
        // y aliases neither input.
        unsafe {
            matrixmultiply::sgemm(
                n,
                cols,
                p,
                1.0,
                x.as_ptr(),
                cols as isize,
                1,
                w.as_ptr(),
                1,
                cols as isize,
                0.0,
                y.as_mut_ptr().add(p0),
                rows as isize,
                1,
            );
        }
    }
}

/// dx (n, cols) = dy (n, rows) W.
pub fn qmatmul_dx(dx: &mut [f32], dy: &[f32], wq: &[u8], kind: GgmlType, rows: usize, cols: usize) {
    let n = dy.len() / rows;
    let per_panel = panel_rows(cols).min(rows);
    let mut panel = vec![0f32; per_panel * cols];
    for p0 in (0..rows).step_by(per_panel) {
        let p = per_panel.min(rows - p0);
        let w = &mut panel[..p * cols];
        dequantize_rows(kind, wq, rows, cols, p0, w);
        let beta = if p0 == 0 { 0.0 } else { 1.0 };
        // SAFETY: A = dy[:, p0..p0 + p] (row stride `rows`), B = the panel (p, cols) row-major, C = dx
        // (n, cols) row-major; all in bounds, dx aliases neither input.
        unsafe {
            matrixmultiply::sgemm(
                n,
                p,
                cols,
                1.0,
                dy.as_ptr().add(p0),
                rows as isize,
                1,
                w.as_ptr(),
                cols as isize,
                1,
                beta,
                dx.as_mut_ptr(),
                cols as isize,
                1,
            );
        }
    }
}

/// A frozen weight's blocks and what they hold: W (rows, cols) of `kind`.
#[derive(Clone, Copy)]
struct Blocks<'a> {
    wq: &'a [u8],
    kind: GgmlType,
    rows: usize,
    cols: usize,
}

/// The dot-product path: rows of W split over the threads, each thread writing its rows of yᵀ.
fn gemv(y: &mut [f32], x: &[f32], wq: &[u8], kind: GgmlType, rows: usize, cols: usize, n: usize) {
    const MIN_VALUES_PER_THREAD: usize = 1 << 16;
    let w = Blocks { wq, kind, rows, cols };
    let threads = super::threads().min(rows * cols * n / MIN_VALUES_PER_THREAD).clamp(1, rows);
    let mut yt = vec![0f32; rows * n];
    if threads == 1 || cfg!(target_arch = "wasm32") {
        gemv_rows(&mut yt, 0, x, w, n);
    } else {
        let per = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, block) in yt.chunks_mut(per * n).enumerate() {
                s.spawn(move || gemv_rows(block, i * per, x, w, n));
            }
        });
    }
    for r in 0..rows {
        for t in 0..n {
            y[t * rows + r] = yt[r * n + t];
        }
    }
}

/// yt (rows', n) for W's rows r0.. (as many as `yt` holds), with the widest instructions this CPU has.
fn gemv_rows(yt: &mut [f32], r0: usize, x: &[f32], w: Blocks, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is built for (checked just above).
        unsafe { gemv_rows_avx2(yt, r0, x, w, n) };
        return;
    }
    gemv_rows_impl::<false>(yt, r0, x, w, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_rows_avx2(yt: &mut [f32], r0: usize, x: &[f32], w: Blocks, n: usize) {
    gemv_rows_impl::<true>(yt, r0, x, w, n)
}

/// One block's 32 values (a quantised `kind`).
#[inline(always)]
fn block_values(kind: GgmlType, b: &[u8], w: &mut [f32; 32]) {
    let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        GgmlType::Q8_0 => {
            let q: &[u8; 32] = b[2..34].try_into().unwrap();
            for j in 0..32 {
                w[j] = q[j] as i8 as f32 * d;
            }
        }
        _ => {
            let (m, q): (f32, &[u8; 16]) = if kind == GgmlType::Q4_1 {
                (half::f16::from_le_bytes([b[2], b[3]]).to_f32(), b[4..20].try_into().unwrap())
            } else {
                (-8.0 * d, b[2..18].try_into().unwrap())
            };
            for j in 0..16 {
                w[j] = (q[j] & 0x0F) as f32 * d + m;
                w[j + 16] = (q[j] >> 4) as f32 * d + m;
            }
        }
    }
}

/// NF4 rows de-quantised together on the dot-product path (their scales lie apart from the blocks,
/// so rows are unpacked into f32 a few at a time and read 32 values at a time from there).
const NF4_ROWS: usize = 16;

#[inline(always)]
fn gemv_rows_impl<const FMA: bool>(yt: &mut [f32], r0: usize, x: &[f32], w: Blocks, n: usize) {
    let (kind, cols) = (w.kind, w.cols);
    let (_, size) = kind.block();
    let rb = row_bytes(kind, cols);
    let mut vals = [0f32; 32];
    let mut unpacked = if kind.is_nf4() { vec![0f32; NF4_ROWS * cols] } else { Vec::new() };
    for (i, out) in yt.chunks_mut(n).enumerate() {
        let r = r0 + i;
        if kind.is_nf4() && i % NF4_ROWS == 0 {
            let k = NF4_ROWS.min(w.rows - r);
            dequantize_rows(kind, w.wq, w.rows, cols, r, &mut unpacked[..k * cols]);
        }
        let row = &w.wq[r * rb..(r + 1) * rb];
        let mut acc = [[0f32; 32]; GEMV_MAX_N];
        for b in 0..cols / 32 {
            if kind.is_nf4() {
                let at = (i % NF4_ROWS) * cols + b * 32;
                vals.copy_from_slice(&unpacked[at..at + 32]);
            } else {
                block_values(kind, &row[b * size..(b + 1) * size], &mut vals);
            }
            for (t, a) in acc.iter_mut().enumerate().take(n) {
                let xs: &[f32; 32] = x[t * cols + b * 32..t * cols + b * 32 + 32].try_into().unwrap();
                for j in 0..32 {
                    a[j] = if FMA { vals[j].mul_add(xs[j], a[j]) } else { a[j] + vals[j] * xs[j] };
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = a.iter().sum();
        }
    }
}
