// Layer normalisation over the last dimension C of (N, C) rows.
//
// layernorm_forward:        y = (x - mean) * rstd * gamma + beta; saves mean (N) and rstd (N)
//                           (two passes over the row: the mean, then the centred variance).
// layernorm_backward:       dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma
// layernorm_param_backward: dgamma += Σ_rows dy * xhat, dbeta += Σ_rows dy   (one invocation per column)
// One 128-wide workgroup per row for the row kernels; rows are laid out on a 2-D grid.

struct Params {
    rows: u32, cols: u32, eps: f32, accumulate: u32,
}

const WG: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> f_x: array<f32>;          // (N, C)
@group(0) @binding(2) var<storage, read> f_gamma: array<f32>;      // (C)
@group(0) @binding(3) var<storage, read> f_beta: array<f32>;       // (C)
@group(0) @binding(4) var<storage, read_write> f_y: array<f32>;    // (N, C)
@group(0) @binding(5) var<storage, read_write> f_mean: array<f32>; // (N)
@group(0) @binding(6) var<storage, read_write> f_rstd: array<f32>; // (N)

var<workgroup> red_a: array<f32, 128>;
var<workgroup> red_b: array<f32, 128>;

// Sums red_a (and red_b) across the workgroup; the totals end in slot 0.
fn reduce_two(t: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) {
            red_a[t] = red_a[t] + red_a[t + s];
            red_b[t] = red_b[t] + red_b[t + s];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(128, 1, 1)
fn layernorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wg_index(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = t; c < p.cols; c = c + WG) { s = s + f_x[base + c]; }
    red_a[t] = s;
    red_b[t] = 0.0;
    reduce_two(t);
    let mean = red_a[0] / f32(p.cols);
    workgroupBarrier();
    var v = 0.0;
    for (var c = t; c < p.cols; c = c + WG) { let d = f_x[base + c] - mean; v = v + d * d; }
    red_a[t] = v;
    reduce_two(t);
    let rstd = inverseSqrt(red_a[0] / f32(p.cols) + p.eps);
    for (var c = t; c < p.cols; c = c + WG) {
        f_y[base + c] = (f_x[base + c] - mean) * rstd * f_gamma[c] + f_beta[c];
    }
    if (t == 0u) {
        f_mean[row] = mean;
        f_rstd[row] = rstd;
    }
}

// backward bindings
@group(0) @binding(1) var<storage, read> b_dy: array<f32>;        // (N, C)
@group(0) @binding(2) var<storage, read> b_x: array<f32>;         // (N, C)
@group(0) @binding(3) var<storage, read> b_mean: array<f32>;      // (N)
@group(0) @binding(4) var<storage, read> b_rstd: array<f32>;      // (N)
@group(0) @binding(5) var<storage, read> b_gamma: array<f32>;     // (C)
@group(0) @binding(6) var<storage, read_write> b_dx: array<f32>;  // (N, C)

@compute @workgroup_size(128, 1, 1)
fn layernorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wg_index(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let mean = b_mean[row];
    let rstd = b_rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = t; c < p.cols; c = c + WG) {
        let g = b_dy[base + c] * b_gamma[c];
        let xhat = (b_x[base + c] - mean) * rstd;
        sg = sg + g;
        sgx = sgx + g * xhat;
    }
    red_a[t] = sg;
    red_b[t] = sgx;
    reduce_two(t);
    let mg = red_a[0] / f32(p.cols);
    let mgx = red_b[0] / f32(p.cols);
    for (var c = t; c < p.cols; c = c + WG) {
        let g = b_dy[base + c] * b_gamma[c];
        let xhat = (b_x[base + c] - mean) * rstd;
        var d = rstd * (g - mg - xhat * mgx);
        if (p.accumulate != 0u) { d = d + b_dx[base + c]; }
        b_dx[base + c] = d;
    }
}

// parameter-gradient bindings
@group(0) @binding(1) var<storage, read> g_dy: array<f32>;           // (N, C)
@group(0) @binding(2) var<storage, read> g_x: array<f32>;            // (N, C)
@group(0) @binding(3) var<storage, read> g_mean: array<f32>;         // (N)
@group(0) @binding(4) var<storage, read> g_rstd: array<f32>;         // (N)
@group(0) @binding(5) var<storage, read_write> g_dgamma: array<f32>; // (C), accumulated
@group(0) @binding(6) var<storage, read_write> g_dbeta: array<f32>;  // (C), accumulated

@compute @workgroup_size(64, 1, 1)
fn layernorm_param_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let dy = g_dy[r * p.cols + c];
        dg = dg + dy * (g_x[r * p.cols + c] - g_mean[r]) * g_rstd[r];
        db = db + dy;
    }
    g_dgamma[c] = g_dgamma[c] + dg;
    g_dbeta[c] = g_dbeta[c] + db;
}
