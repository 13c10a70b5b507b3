// Reductions.
//
// reduce_sum_rows: out[c] (+)= Σ_r x[r, c] over (R, C)   bias gradients; one invocation per column
// reduce_sumsq:    out[0] += Σ_i x[i]²                    global-norm clipping; one 256-wide workgroup

struct Params {
    rows: u32, cols: u32, accumulate: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn reduce_sum_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) { s = s + x[r * p.cols + c]; }
    if (p.accumulate != 0u) { s = s + out[c]; }
    out[c] = s;
}

var<workgroup> red256: array<f32, 256>;

// Sums rows*cols values of x.
@compute @workgroup_size(256, 1, 1)
fn reduce_sumsq(@builtin(local_invocation_index) t: u32) {
    let n = p.rows * p.cols;
    var s = 0.0;
    for (var i = t; i < n; i = i + 256u) { let v = x[i]; s = s + v * v; }
    red256[t] = s;
    for (var k = 128u; k > 0u; k = k / 2u) {
        workgroupBarrier();
        if (t < k) { red256[t] = red256[t] + red256[t + k]; }
    }
    if (t == 0u) { out[0] = out[0] + red256[0]; }
}
