// Softmax over the last dimension L of (R, L) rows, with a scale and an additive mask:
//   y[r, :] = softmax(scale * x[r, :] + mask[(r / mask_div) * mask_mod + r % mask_mod, :])
// For attention scores (B, H, Tq, Tk): a key mask (B, Tk) has mask_div = H * Tq, mask_mod = 1; a full
// mask (B, Tq, Tk) has mask_div = H * Tq, mask_mod = Tq. has_mask = 0 ignores the mask binding.
// causal = Tq > 0 also drops column j of row r when j > r % Tq + (L - Tq).
//
// softmax_forward:  as above
// softmax_backward: dx = scale * y * (dy - Σ_j dy_j y_j)
// One 64-wide workgroup per row on a 2-D grid.

struct Params {
    rows: u32, len: u32, mask_div: u32, has_mask: u32,
    scale: f32, mask_mod: u32, causal: u32, _pad0: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> f_x: array<f32>;        // (R, L)
@group(0) @binding(2) var<storage, read> f_mask: array<f32>;     // (R / mask_div, L)
@group(0) @binding(3) var<storage, read_write> f_y: array<f32>;  // (R, L)

fn logit(row: u32, base: u32, mbase: u32, j: u32) -> f32 {
    var v = p.scale * f_x[base + j];
    if (p.has_mask != 0u) { v = v + f_mask[mbase + j]; }
    if (p.causal != 0u && j > row % p.causal + (p.len - p.causal)) { v = v - 1e30; }
    return v;
}

@compute @workgroup_size(64, 1, 1)
fn softmax_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wg_index(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.len;
    let mbase = ((row / p.mask_div) * p.mask_mod + row % p.mask_mod) * p.len;
    var m = -3.0e38;
    for (var j = t; j < p.len; j = j + WG) { m = max(m, logit(row, base, mbase, j)); }
    red[t] = m;
    let row_max = reduce_max(t);
    var s = 0.0;
    for (var j = t; j < p.len; j = j + WG) { s = s + exp(logit(row, base, mbase, j) - row_max); }
    red[t] = s;
    let inv = 1.0 / reduce_sum(t);
    for (var j = t; j < p.len; j = j + WG) {
        f_y[base + j] = exp(logit(row, base, mbase, j) - row_max) * inv;
    }
}

@group(0) @binding(1) var<storage, read> b_dy: array<f32>;        // (R, L)
@group(0) @binding(2) var<storage, read> b_y: array<f32>;         // (R, L)
@group(0) @binding(3) var<storage, read_write> b_dx: array<f32>;  // (R, L)

@compute @workgroup_size(64, 1, 1)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wg_index(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.len;
    var s = 0.0;
    for (var j = t; j < p.len; j = j + WG) { s = s + b_dy[base + j] * b_y[base + j]; }
    red[t] = s;
    let dot = reduce_sum(t);
    for (var j = t; j < p.len; j = j + WG) {
        b_dx[base + j] = p.scale * b_y[base + j] * (b_dy[base + j] - dot);
    }
}
