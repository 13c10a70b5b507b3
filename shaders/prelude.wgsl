// Helpers every shader file shares: prepended to each shaders/*.wgsl before it is compiled (and
// before naga validates it in tests/shaders.rs), so that none is copied between files.

// The index of a workgroup on a 2-D grid that folds a long 1-D range past the per-dimension limit
// (one workgroup per row, or per block of items).
fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// The flat index of an invocation on that grid of `wg`-wide workgroups.
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>, wg: u32) -> u32 {
    return wg_index(wid, nwg) * wg + lid.x;
}

// "lowbias32" (C. Wellons): a 32-bit integer hash with good avalanche (dropout masks,
// DARE keep masks; the CPU device has the same function as cpu::hash32).
fn hash(v: u32) -> u32 {
    var h = v;
    h = h ^ (h >> 16u);
    h = h * 0x7feb352du;
    h = h ^ (h >> 15u);
    h = h * 0x846ca68bu;
    h = h ^ (h >> 16u);
    return h;
}

// Tree reductions over a 64-wide workgroup: each invocation t writes its partial value to red[t],
// then every invocation gets the total (the barrier after the read lets `red` be reused).
var<workgroup> red: array<f32, 64>;

fn reduce_sum(t: u32) -> f32 {
    for (var s = 32u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) { red[t] = red[t] + red[t + s]; }
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(t: u32) -> f32 {
    for (var s = 32u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) { red[t] = max(red[t], red[t + s]); }
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}
