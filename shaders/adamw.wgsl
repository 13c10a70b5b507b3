// AdamW step with global-norm gradient clipping folded in (no readback of the norm).
//   s = grad_scale (1, or the correction of an epoch's last, shorter accumulation)
//   clip = max_norm > 0 ? min(1, max_norm / (s sqrt(norm_sq) + 1e-6)) : 1    (as torch clip_grad_norm_)
//   g = clip * s * grad
//   m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
//   param -= lr * (m / bc1) / (sqrt(v / bc2) + eps) + lr * wd * param         (as torch.optim.AdamW)
// bc1 = 1 - β1^t and bc2 = 1 - β2^t are computed on the host.

struct Params {
    n: u32, grad_scale: f32, _pad1: u32, _pad2: u32,
    lr: f32, beta1: f32, beta2: f32, eps: f32,
    weight_decay: f32, bc1: f32, bc2: f32, max_norm: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;           // (n)
@group(0) @binding(2) var<storage, read> norm_sq: array<f32>;        // (1): Σ g² over every trainable tensor
@group(0) @binding(3) var<storage, read_write> param: array<f32>;    // (n)
@group(0) @binding(4) var<storage, read_write> m: array<f32>;        // (n)
@group(0) @binding(5) var<storage, read_write> v: array<f32>;        // (n)

@compute @workgroup_size(256, 1, 1)
fn adamw_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 256u);
    if (i >= p.n) { return; }
    var clip = 1.0;
    if (p.max_norm > 0.0) { clip = min(1.0, p.max_norm / (sqrt(norm_sq[0]) * p.grad_scale + 1e-6)); }
    let g = clip * p.grad_scale * grad[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let w = param[i];
    param[i] = w - p.lr * (mi / p.bc1) / (sqrt(vi / p.bc2) + p.eps) - p.lr * p.weight_decay * w;
}
