// ScaLearn (Frohmann et al.): the outputs a_s (rows, cols) of S frozen source adapters combined with
// learned scales ω (S, cols), or (S, 1) with SCALAR (ScaLearnUniform):
//
// scalearn_scale: y[n, c] += ω[s, c] · x[n, c] with ACCUMULATE (once per source: the combination
//                 Σ_s ω_s ⊙ a_s added to the sub-layer output), else y = ω_s ⊙ x (the gradient
//                 ω_s ⊙ dout that flows into source s's output). c is read as 0 with SCALAR.
// scalearn_grad:  dω[s, c] += Σ_n dout[n, c] · a_s[n, c], one thread per column; with SCALAR one
//                 workgroup sums over every (n, c) into dω[s].

const SCALAR: u32 = 1u;
const ACCUMULATE: u32 = 2u;

struct Params {
    rows: u32, cols: u32, source: u32, flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn omega_index(c: u32) -> u32 {
    if ((p.flags & SCALAR) != 0u) { return p.source; }
    return p.source * p.cols + c;
}

// scalearn_scale bindings
@group(0) @binding(1) var<storage, read> w: array<f32>;            // (S, cols) or (S, 1)
@group(0) @binding(2) var<storage, read> x: array<f32>;            // (rows, cols)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // (rows, cols)

@compute @workgroup_size(256, 1, 1)
fn scalearn_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.rows * p.cols) { return; }
    let v = w[omega_index(i % p.cols)] * x[i];
    if ((p.flags & ACCUMULATE) != 0u) {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

// scalearn_grad bindings
@group(0) @binding(1) var<storage, read> gdout: array<f32>;        // (rows, cols)
@group(0) @binding(2) var<storage, read> ga: array<f32>;           // (rows, cols)
@group(0) @binding(3) var<storage, read_write> gw: array<f32>;     // (S, cols) or (S, 1)

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn scalearn_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    // No early return on a per-thread condition: the barriers below must stay in uniform control
    // flow (Tint, the browsers' WGSL compiler, refuses the shader otherwise; naga accepts it).
    if ((p.flags & SCALAR) == 0u) {
        let c = flat_index(wid, nwg, lid, 256u);
        if (c < p.cols) {
            var acc = 0.0;
            for (var n = 0u; n < p.rows; n = n + 1u) {
                acc = acc + gdout[n * p.cols + c] * ga[n * p.cols + c];
            }
            gw[p.source * p.cols + c] = gw[p.source * p.cols + c] + acc;
        }
        return;
    }
    // One workgroup: a strided sum per thread, then a tree in workgroup memory.
    let total = p.rows * p.cols;
    var acc = 0.0;
    for (var i = lid.x; i < total; i = i + 256u) {
        acc = acc + gdout[i] * ga[i];
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid.x < stride) {
            partial[lid.x] = partial[lid.x] + partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        gw[p.source] = gw[p.source] + partial[0];
    }
}
