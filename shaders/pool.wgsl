// Sentence pooling.
//
// pool_forward:         out[b, c] = Σ_t x[b, t, c] m[b, t] / max(Σ_t m[b, t], 1e-9) (mean; other modes below)
// pool_mean_backward:   dx[b, t, c] = dout[b, c] m[b, t] / max(Σ_t m[b, t], 1e-9)
// pool_l2norm_forward:  y[b, :] = x[b, :] / max(‖x[b, :]‖, 1e-12)
// pool_l2norm_backward: dx = (dy - y (dy · y)) / ‖x‖  when ‖x‖ > 1e-12, else dy / 1e-12

struct Params {
    batch: u32, tokens: u32, cols: u32, mode: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> mf_x: array<f32>;        // (B, T, C)
@group(0) @binding(2) var<storage, read> mf_mask: array<f32>;     // (B, T)
@group(0) @binding(3) var<storage, read_write> mf_out: array<f32>; // (B, C)

fn token_count(b: u32) -> f32 {
    var n = 0.0;
    for (var t = 0u; t < p.tokens; t = t + 1u) { n = n + mf_mask[b * p.tokens + t]; }
    return max(n, 1e-9);
}

// mode 0: masked mean; 1: masked sum / sqrt(count); 2: masked max (padding as -1e9); 3: the first token.
@compute @workgroup_size(64, 1, 1)
fn pool_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let b = gid.y;
    if (c >= p.cols || b >= p.batch) { return; }
    if (p.mode == 3u) {
        mf_out[b * p.cols + c] = mf_x[b * p.tokens * p.cols + c];
        return;
    }
    if (p.mode == 2u) {
        var m = -3.0e38;
        for (var t = 0u; t < p.tokens; t = t + 1u) {
            var v = mf_x[(b * p.tokens + t) * p.cols + c];
            if (mf_mask[b * p.tokens + t] == 0.0) { v = -1e9; }
            m = max(m, v);
        }
        mf_out[b * p.cols + c] = m;
        return;
    }
    var s = 0.0;
    for (var t = 0u; t < p.tokens; t = t + 1u) {
        s = s + mf_x[(b * p.tokens + t) * p.cols + c] * mf_mask[b * p.tokens + t];
    }
    var n = token_count(b);
    if (p.mode == 1u) { n = sqrt(n); }
    mf_out[b * p.cols + c] = s / n;
}

@group(0) @binding(1) var<storage, read> mb_dout: array<f32>;      // (B, C)
@group(0) @binding(2) var<storage, read> mb_mask: array<f32>;      // (B, T)
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;  // (B, T, C)

// One invocation per element of dx, on a 2-D grid of 256-wide workgroups.
@compute @workgroup_size(256, 1, 1)
fn pool_mean_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.batch * p.tokens * p.cols) { return; }
    let c = i % p.cols;
    let bt = i / p.cols;
    let b = bt / p.tokens;
    var n = 0.0;
    for (var t = 0u; t < p.tokens; t = t + 1u) { n = n + mb_mask[b * p.tokens + t]; }
    mb_dx[i] = mb_dout[b * p.cols + c] * mb_mask[bt] / max(n, 1e-9);
}

@group(0) @binding(1) var<storage, read> nf_x: array<f32>;         // (B, C)
@group(0) @binding(2) var<storage, read_write> nf_y: array<f32>;   // (B, C)

@compute @workgroup_size(64, 1, 1)
fn pool_l2norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let b = wg_index(wid, nwg);
    if (b >= p.batch) { return; }
    var s = 0.0;
    for (var c = t; c < p.cols; c = c + 64u) { let v = nf_x[b * p.cols + c]; s = s + v * v; }
    red[t] = s;
    let inv = 1.0 / max(sqrt(reduce_sum(t)), 1e-12);
    for (var c = t; c < p.cols; c = c + 64u) { nf_y[b * p.cols + c] = nf_x[b * p.cols + c] * inv; }
}

@group(0) @binding(1) var<storage, read> nb_dy: array<f32>;        // (B, C)
@group(0) @binding(2) var<storage, read> nb_x: array<f32>;         // (B, C)
@group(0) @binding(3) var<storage, read_write> nb_dx: array<f32>;  // (B, C)

@compute @workgroup_size(64, 1, 1)
fn pool_l2norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let b = wg_index(wid, nwg);
    if (b >= p.batch) { return; }
    var s = 0.0;
    for (var c = t; c < p.cols; c = c + 64u) { let v = nb_x[b * p.cols + c]; s = s + v * v; }
    red[t] = s;
    let norm = sqrt(reduce_sum(t));
    var d = 0.0;
    for (var c = t; c < p.cols; c = c + 64u) { d = d + nb_dy[b * p.cols + c] * nb_x[b * p.cols + c]; }
    red[t] = d;
    let dot = reduce_sum(t);
    for (var c = t; c < p.cols; c = c + 64u) {
        let i = b * p.cols + c;
        if (norm > 1e-12) {
            let y = nb_x[i] / norm;
            nb_dx[i] = (nb_dy[i] - y * dot / norm) / norm;
        } else {
            nb_dx[i] = nb_dy[i] / 1e-12;
        }
    }
}
