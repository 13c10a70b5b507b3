// Inverted dropout with a counter-based mask: element i is kept when
//   u = (hash(seed ^ hash(i)) >> 8) / 2^24  >=  p,
// and scaled by 1 / (1 - p). The mask is recomputed from (seed, i), never stored: the backward pass
// applies the same function to the gradient. The CPU device uses the same hash, so both devices drop
// the same elements.

struct Params {
    n: u32, seed: u32, p: f32, scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (n)

@compute @workgroup_size(256, 1, 1)
fn dropout_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.n) { return; }
    let u = f32(hash(p.seed ^ hash(i)) >> 8u) * (1.0 / 16777216.0);
    out[i] = select(0.0, x[i] * p.scale, u >= p.p);
}
