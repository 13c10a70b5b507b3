// Softmax cross-entropy over K classes for B rows, loss and gradient in one pass.
//   loss[b]       = logsumexp(logits[b, :]) - logits[b, label[b]]
//   dlogits[b, k] = grad_scale * (softmax(logits[b, :])_k - [k == label[b]])
// grad_scale is 1/B for a mean loss (times any loss scale). One invocation per row: K is small.

struct Params {
    batch: u32, classes: u32, grad_scale: f32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;          // (B, K)
@group(0) @binding(2) var<storage, read> labels: array<u32>;          // (B)
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;      // (B)
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;   // (B, K)

@compute @workgroup_size(64, 1, 1)
fn crossentropy_forward_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.batch) { return; }
    let base = b * p.classes;
    var m = -3.0e38;
    for (var k = 0u; k < p.classes; k = k + 1u) { m = max(m, logits[base + k]); }
    var s = 0.0;
    for (var k = 0u; k < p.classes; k = k + 1u) { s = s + exp(logits[base + k] - m); }
    let lse = m + log(s);
    let label = labels[b];
    loss[b] = lse - logits[base + label];
    for (var k = 0u; k < p.classes; k = k + 1u) {
        let prob = exp(logits[base + k] - lse);
        dlogits[base + k] = p.grad_scale * (prob - select(0.0, 1.0, k == label));
    }
}

// crossentropy_soft: the same against a target distribution q (B, K) (distillation):
//   loss[b] = -Σ_k q[b, k] log softmax(logits[b, :])_k,  dlogits[b, k] = grad_scale * (softmax_k - q[b, k])
@group(0) @binding(2) var<storage, read> targets: array<f32>;         // (B, K)

@compute @workgroup_size(64, 1, 1)
fn crossentropy_soft(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.batch) { return; }
    let base = b * p.classes;
    var m = -3.0e38;
    for (var k = 0u; k < p.classes; k = k + 1u) { m = max(m, logits[base + k]); }
    var s = 0.0;
    for (var k = 0u; k < p.classes; k = k + 1u) { s = s + exp(logits[base + k] - m); }
    let lse = m + log(s);
    var l = 0.0;
    for (var k = 0u; k < p.classes; k = k + 1u) {
        let q = targets[base + k];
        l = l + q * (lse - logits[base + k]);
        dlogits[base + k] = p.grad_scale * (exp(logits[base + k] - lse) - q);
    }
    loss[b] = l;
}
