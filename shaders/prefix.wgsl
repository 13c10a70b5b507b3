// Prefix tuning: learned key/value rows put in front of every sequence.
//
// prefix_concat: out[b, j] = prefix[j] for j < P, x[b, j - P] otherwise        (B, P+T, C)
// prefix_split:  dx[b, t] = dout[b, P + t]                                      (B, T, C)
// prefix_grad:   dprefix[j] += Σ_b dout[b, j]                                   (P, C), one invocation each

struct Params {
    batch: u32, plen: u32, tokens: u32, cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> c_prefix: array<f32>;      // (P, C)
@group(0) @binding(2) var<storage, read> c_x: array<f32>;           // (B, T, C)
@group(0) @binding(3) var<storage, read_write> c_out: array<f32>;   // (B, P+T, C)

@compute @workgroup_size(256, 1, 1)
fn prefix_concat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, nwg, lid, 256u);
    let len = p.plen + p.tokens;
    if (i >= p.batch * len * p.cols) { return; }
    let c = i % p.cols;
    let j = (i / p.cols) % len;
    let b = i / (p.cols * len);
    if (j < p.plen) {
        c_out[i] = c_prefix[j * p.cols + c];
    } else {
        c_out[i] = c_x[(b * p.tokens + j - p.plen) * p.cols + c];
    }
}

@group(0) @binding(1) var<storage, read> s_dout: array<f32>;        // (B, P+T, C)
@group(0) @binding(2) var<storage, read_write> s_dx: array<f32>;    // (B, T, C)

@compute @workgroup_size(256, 1, 1)
fn prefix_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.batch * p.tokens * p.cols) { return; }
    let c = i % p.cols;
    let t = (i / p.cols) % p.tokens;
    let b = i / (p.cols * p.tokens);
    s_dx[i] = s_dout[(b * (p.plen + p.tokens) + p.plen + t) * p.cols + c];
}

@group(0) @binding(1) var<storage, read> g_dout: array<f32>;         // (B, P+T, C)
@group(0) @binding(2) var<storage, read_write> g_dprefix: array<f32>; // (P, C), accumulated

@compute @workgroup_size(64, 1, 1)
fn prefix_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.plen * p.cols) { return; }
    let c = i % p.cols;
    let j = i / p.cols;
    var s = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        s = s + g_dout[(b * (p.plen + p.tokens) + j) * p.cols + c];
    }
    g_dprefix[i] = g_dprefix[i] + s;
}
