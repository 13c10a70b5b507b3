// Embedding lookup and its gradient.
//
// embedding_forward:  out[t, c] = table[ids[t], c]            (ids out of range give 0)
// embedding_backward: dtable[ids[t], c] += dout[t, c]         one invocation per column c walks the
//                     tokens in order: deterministic, no float atomics (WGSL has none).

struct Params {
    tokens: u32, cols: u32, vocab: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> f_ids: array<u32>;        // (T)
@group(0) @binding(2) var<storage, read> f_table: array<f32>;      // (V, C)
@group(0) @binding(3) var<storage, read_write> f_out: array<f32>;  // (T, C)

@compute @workgroup_size(256, 1, 1)
fn embedding_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.tokens * p.cols) { return; }
    let t = i / p.cols;
    let c = i % p.cols;
    let id = f_ids[t];
    var v = 0.0;
    if (id < p.vocab) { v = f_table[id * p.cols + c]; }
    f_out[i] = v;
}

@group(0) @binding(1) var<storage, read> b_ids: array<u32>;          // (T)
@group(0) @binding(2) var<storage, read> b_dout: array<f32>;         // (T, C)
@group(0) @binding(3) var<storage, read_write> b_dtable: array<f32>; // (V, C), accumulated

@compute @workgroup_size(64, 1, 1)
fn embedding_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    for (var t = 0u; t < p.tokens; t = t + 1u) {
        let id = b_ids[t];
        if (id < p.vocab) {
            b_dtable[id * p.cols + c] = b_dtable[id * p.cols + c] + b_dout[t * p.cols + c];
        }
    }
}
