// Elementwise maps and zips over flat f32 arrays of n values.
//
// elementwise_map:  out[i] (+)= f(x[i])                   (op: SCALE (alpha x), GELU, TANH, RELU)
// elementwise_zip:  out[i] (+)= g(x[i], y[i % y_len])      (op: ADD, MUL, GELU_BACKWARD, TANH_BACKWARD,
//                                                          RELU_BACKWARD)
//   y broadcasts by wrapping: a (C) bias over (N, C) rows, or y_len = n for same shapes.
//   ADD computes x + alpha*y; GELU_BACKWARD takes x = dout, y = the GELU input;
//   TANH_BACKWARD takes x = dout, y = the tanh output; RELU_BACKWARD x = dout, y = the relu input.
// GELU is the exact erf form BERT uses: 0.5 x (1 + erf(x / sqrt 2)).
// Both are launched as a 2-D grid of 256-wide workgroups so n may exceed 65535 × 256.

const MAP_SCALE: u32 = 0u;
const MAP_GELU: u32 = 1u;
const MAP_TANH: u32 = 2u;
const MAP_RELU: u32 = 3u;

const ZIP_ADD: u32 = 0u;
const ZIP_MUL: u32 = 1u;
const ZIP_GELU_BACKWARD: u32 = 2u;
const ZIP_TANH_BACKWARD: u32 = 3u;
const ZIP_RELU_BACKWARD: u32 = 4u;

struct Params {
    n: u32, op: u32, y_len: u32, accumulate: u32,
    alpha: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// elementwise_map bindings
@group(0) @binding(1) var<storage, read> map_x: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read_write> map_out: array<f32>;  // (n)

// elementwise_zip bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (n)
@group(0) @binding(2) var<storage, read> y: array<f32>;              // (y_len)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // (n)

// erf(x) from erfc by the Chebyshev fit of Numerical Recipes (fractional error < 1.2e-7).
fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(-z * z + poly);
    return select(erfc - 1.0, 1.0 - erfc, v >= 0.0);
}

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}

// d/dv gelu(v) = Φ(v) + v φ(v)
fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_approx(v * 0.70710678118654752));
    let pdf = 0.39894228040143268 * exp(-0.5 * v * v);
    return cdf + v * pdf;
}

@compute @workgroup_size(256, 1, 1)
fn elementwise_map(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.n) { return; }
    let v = map_x[i];
    var r: f32;
    switch p.op {
        case MAP_GELU: { r = gelu(v); }
        case MAP_TANH: { r = tanh(v); }
        case MAP_RELU: { r = max(v, 0.0); }
        default: { r = p.alpha * v; }
    }
    if (p.accumulate != 0u) { r = r + map_out[i]; }
    map_out[i] = r;
}

@compute @workgroup_size(256, 1, 1)
fn elementwise_zip(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.n) { return; }
    let u = x[i];
    let w = y[i % p.y_len];
    var r: f32;
    switch p.op {
        case ZIP_MUL: { r = u * w; }
        case ZIP_GELU_BACKWARD: { r = u * gelu_grad(w); }
        case ZIP_TANH_BACKWARD: { r = u * (1.0 - w * w); }
        case ZIP_RELU_BACKWARD: { r = select(0.0, u, w > 0.0); }
        default: { r = u + p.alpha * w; }
    }
    if (p.accumulate != 0u) { r = r + out[i]; }
    out[i] = r;
}
