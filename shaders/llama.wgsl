// The Llama family's own kernels (CPU twins in src/cpu/llama.rs).
//
// llama_rmsnorm_forward:        y = x · rstd · γ, rstd = 1/√(mean(x²) + eps); saves rstd (rows)
// llama_rmsnorm_backward:       dx = rstd · (g − x̂ · mean(g ⊙ x̂)), g = dy ⊙ γ, x̂ = x · rstd
// llama_rmsnorm_param_backward: dγ += Σ_rows dy ⊙ x̂                   (one invocation per column)
// llama_rope:                   rotate-half rotary embedding of (rows, H·D), row r at position r mod t,
//                               angles from cos/sin tables (t, D/2); sign −1 is the backward
// llama_swiglu_forward:         y = silu(g) ⊙ u
// llama_swiglu_backward:        dg = dy ⊙ u ⊙ silu'(g), du = dy ⊙ silu(g)
// llama_repeat_kv_forward:      (rows, Hkv·D) → (rows, Hkv·g·D), head h reading head h / g
// llama_repeat_kv_backward:     the sum of each key/value head's g copies
// Row kernels run one 64-wide workgroup per row; the rest one invocation per value, 2-D grids.
//
// Params by kernel: rows, cols; a = t (rope) or D (repeat_kv); b = D (rope) or g (repeat_kv);
// eps (rmsnorm); sign (rope).

struct Params {
    rows: u32, cols: u32, a: u32, b: u32,
    eps: f32, sign: f32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// rmsnorm_forward bindings
@group(0) @binding(1) var<storage, read> nf_x: array<f32>;          // (rows, cols)
@group(0) @binding(2) var<storage, read> nf_gamma: array<f32>;      // (cols)
@group(0) @binding(3) var<storage, read_write> nf_y: array<f32>;    // (rows, cols)
@group(0) @binding(4) var<storage, read_write> nf_rstd: array<f32>; // (rows)

@compute @workgroup_size(64, 1, 1)
fn llama_rmsnorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    // Every invocation reaches the barriers of reduce_sum; rows past the end only skip the writes.
    let row = wg_index(wid, nwg);
    let live = row < p.rows;
    let base = select(0u, row * p.cols, live);
    var s = 0.0;
    if (live) {
        for (var c = t; c < p.cols; c = c + 64u) { let v = nf_x[base + c]; s = s + v * v; }
    }
    red[t] = s;
    let rstd = inverseSqrt(reduce_sum(t) / f32(p.cols) + p.eps);
    if (!live) { return; }
    for (var c = t; c < p.cols; c = c + 64u) {
        nf_y[base + c] = nf_x[base + c] * rstd * nf_gamma[c];
    }
    if (t == 0u) { nf_rstd[row] = rstd; }
}

// rmsnorm_backward bindings
@group(0) @binding(1) var<storage, read> nb_dy: array<f32>;        // (rows, cols)
@group(0) @binding(2) var<storage, read> nb_x: array<f32>;         // (rows, cols)
@group(0) @binding(3) var<storage, read> nb_rstd: array<f32>;      // (rows)
@group(0) @binding(4) var<storage, read> nb_gamma: array<f32>;     // (cols)
@group(0) @binding(5) var<storage, read_write> nb_dx: array<f32>;  // (rows, cols)

@compute @workgroup_size(64, 1, 1)
fn llama_rmsnorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wg_index(wid, nwg);
    let live = row < p.rows;
    let base = select(0u, row * p.cols, live);
    let rs = select(0.0, nb_rstd[select(0u, row, live)], live);
    var s = 0.0;
    if (live) {
        for (var c = t; c < p.cols; c = c + 64u) { s = s + nb_dy[base + c] * nb_gamma[c] * nb_x[base + c] * rs; }
    }
    red[t] = s;
    let m = reduce_sum(t) / f32(p.cols);
    if (!live) { return; }
    for (var c = t; c < p.cols; c = c + 64u) {
        let xh = nb_x[base + c] * rs;
        nb_dx[base + c] = rs * (nb_dy[base + c] * nb_gamma[c] - xh * m);
    }
}

// rmsnorm_param_backward bindings
@group(0) @binding(1) var<storage, read> np_dy: array<f32>;          // (rows, cols)
@group(0) @binding(2) var<storage, read> np_x: array<f32>;           // (rows, cols)
@group(0) @binding(3) var<storage, read> np_rstd: array<f32>;        // (rows)
@group(0) @binding(4) var<storage, read_write> np_dgamma: array<f32>; // (cols), accumulated

@compute @workgroup_size(64, 1, 1)
fn llama_rmsnorm_param_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = flat_index(wid, nwg, lid, 64u);
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        s = s + np_dy[r * p.cols + c] * np_x[r * p.cols + c] * np_rstd[r];
    }
    np_dgamma[c] = np_dgamma[c] + s;
}

// rope bindings
@group(0) @binding(1) var<storage, read> r_x: array<f32>;         // (rows, cols)
@group(0) @binding(2) var<storage, read> r_cos: array<f32>;       // (t, D/2)
@group(0) @binding(3) var<storage, read> r_sin: array<f32>;       // (t, D/2)
@group(0) @binding(4) var<storage, read_write> r_out: array<f32>; // (rows, cols)

// One invocation per pair (row, head, i < D/2).
@compute @workgroup_size(64, 1, 1)
fn llama_rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let half = p.b / 2u;
    let per_row = p.cols / 2u;
    let idx = flat_index(wid, nwg, lid, 64u);
    if (idx >= p.rows * per_row) { return; }
    let row = idx / per_row;
    let j = idx % per_row;
    let h = j / half;
    let i = j % half;
    let at = row * p.cols + h * p.b + i;
    let tab = (row % p.a) * half + i;
    let c = r_cos[tab];
    let s = p.sign * r_sin[tab];
    let a = r_x[at];
    let b = r_x[at + half];
    r_out[at] = a * c - b * s;
    r_out[at + half] = b * c + a * s;
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// swiglu_forward bindings
@group(0) @binding(1) var<storage, read> sf_g: array<f32>;         // (n)
@group(0) @binding(2) var<storage, read> sf_u: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read_write> sf_y: array<f32>;   // (n)

@compute @workgroup_size(256, 1, 1)
fn llama_swiglu_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.rows) { return; }
    let g = sf_g[i];
    sf_y[i] = g * sigmoid(g) * sf_u[i];
}

// swiglu_backward bindings
@group(0) @binding(1) var<storage, read> sb_dy: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> sb_g: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read> sb_u: array<f32>;         // (n)
@group(0) @binding(4) var<storage, read_write> sb_dg: array<f32>;  // (n)
@group(0) @binding(5) var<storage, read_write> sb_du: array<f32>;  // (n)

@compute @workgroup_size(256, 1, 1)
fn llama_swiglu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.rows) { return; }
    let g = sb_g[i];
    let s = sigmoid(g);
    sb_dg[i] = sb_dy[i] * sb_u[i] * s * (1.0 + g * (1.0 - s));
    sb_du[i] = sb_dy[i] * g * s;
}

// repeat_kv bindings: cols = Hkv·D of the input, a = D, b = g
@group(0) @binding(1) var<storage, read> k_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_out: array<f32>;

// One invocation per output value (rows, Hkv·g·D).
@compute @workgroup_size(256, 1, 1)
fn llama_repeat_kv_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let wide = p.cols * p.b;
    let idx = flat_index(wid, nwg, lid, 256u);
    if (idx >= p.rows * wide) { return; }
    let row = idx / wide;
    let c = idx % wide;
    let h = c / p.a;
    k_out[idx] = k_in[row * p.cols + (h / p.b) * p.a + c % p.a];
}

// One invocation per input value (rows, Hkv·D): the sum over its g copies.
@compute @workgroup_size(256, 1, 1)
fn llama_repeat_kv_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let wide = p.cols * p.b;
    let idx = flat_index(wid, nwg, lid, 256u);
    if (idx >= p.rows * p.cols) { return; }
    let row = idx / p.cols;
    let c = idx % p.cols;
    let k = c / p.a;
    var s = 0.0;
    for (var j = 0u; j < p.b; j = j + 1u) {
        s = s + k_in[row * wide + (k * p.b + j) * p.a + c % p.a];
    }
    k_out[idx] = s;
}
