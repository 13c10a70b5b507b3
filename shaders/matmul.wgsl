// Batched, strided matrix multiply:  C[z] = alpha * op(A[z]) · op(B[z]) (+ bias) (+ C[z] if accumulate)
//
//   op(A) is (M, K): A stored (M, K) row-major, or (K, M) when TRANS_A (so op(A) = Aᵀ)
//   op(B) is (K, N): B stored (K, N) row-major, or (N, K) when TRANS_B (so op(B) = Bᵀ)
//   C is (M, N) with row stride c_ld.
// The batch index z = z0 * batch1 + z1 is split in two so that attention can address
// (batch, head) blocks of a (B, T, H·D) tensor without a permute: offset = off + z0*bs0 + z1*bs1.
//
// Two kernels with the same bindings:
//   matmul_naive: one invocation per output element (kept for tests and benchmarks);
//   matmul_tiled: 64×64 output tile per workgroup, each invocation holding a 4×4 block of C in registers.

const TRANS_A: u32 = 1u;
const TRANS_B: u32 = 2u;
const ACCUMULATE: u32 = 4u;
const HAS_BIAS: u32 = 8u;

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_ld: u32, a_bs0: u32, a_bs1: u32,
    b_off: u32, b_ld: u32, b_bs0: u32, b_bs1: u32,
    c_off: u32, c_ld: u32, c_bs0: u32, c_bs1: u32,
    batch1: u32, alpha: f32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;      // op(A): (batch, M, K)
@group(0) @binding(2) var<storage, read> b: array<f32>;      // op(B): (batch, K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), read only when HAS_BIAS
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (batch, M, N)

fn a_index(base: u32, i: u32, kk: u32) -> u32 {
    if ((p.flags & TRANS_A) != 0u) { return base + kk * p.a_ld + i; }
    return base + i * p.a_ld + kk;
}

fn b_index(base: u32, kk: u32, j: u32) -> u32 {
    if ((p.flags & TRANS_B) != 0u) { return base + j * p.b_ld + kk; }
    return base + kk * p.b_ld + j;
}

fn store(base: u32, i: u32, j: u32, value: f32) {
    var v = p.alpha * value;
    if ((p.flags & HAS_BIAS) != 0u) { v = v + bias[j]; }
    let idx = base + i * p.c_ld + j;
    if ((p.flags & ACCUMULATE) != 0u) { v = v + c[idx]; }
    c[idx] = v;
}

@compute @workgroup_size(16, 16, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let z0 = gid.z / p.batch1;
    let z1 = gid.z % p.batch1;
    if (i >= p.m || j >= p.n) { return; }
    let a_base = p.a_off + z0 * p.a_bs0 + z1 * p.a_bs1;
    let b_base = p.b_off + z0 * p.b_bs0 + z1 * p.b_bs1;
    let c_base = p.c_off + z0 * p.c_bs0 + z1 * p.c_bs1;
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        acc = acc + a[a_index(a_base, i, kk)] * b[b_index(b_base, kk, j)];
    }
    store(c_base, i, j, acc);
}

// matmul_tiled: each workgroup owns a 64×64 tile of C; invocation (x, y) of the 16×16 workgroup
// keeps rows 4y..4y+3 and columns x, x+16, x+32, x+48 of the tile in four vec4 accumulators.
// Per step of k it loads 4 values of A (shared by the 16 invocations of a row: a broadcast) and 4 of B
// (consecutive across neighbouring invocations), for 16 FMAs. No workgroup memory and no barriers:
// on CPU adapters (lavapipe, SwiftShader) barriers cost more than the loads they save, and on GPUs the
// caches serve the reuse. Clamped indices keep loads in bounds without branches in the inner loop.
@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * 64u + lid.y * 4u;
    let col0 = wid.x * 64u + lid.x;
    let z0 = wid.z / p.batch1;
    let z1 = wid.z % p.batch1;
    let a_base = p.a_off + z0 * p.a_bs0 + z1 * p.a_bs1;
    let b_base = p.b_off + z0 * p.b_bs0 + z1 * p.b_bs1;
    let c_base = p.c_off + z0 * p.c_bs0 + z1 * p.c_bs1;
    var a_rs = p.a_ld; var a_cs = 1u;
    if ((p.flags & TRANS_A) != 0u) { a_rs = 1u; a_cs = p.a_ld; }
    var b_rs = p.b_ld; var b_cs = 1u;
    if ((p.flags & TRANS_B) != 0u) { b_rs = 1u; b_cs = p.b_ld; }
    // Clamped rows and columns keep every load in bounds; the extra results are not stored.
    let a0 = a_base + min(row0, p.m - 1u) * a_rs;
    let a1 = a_base + min(row0 + 1u, p.m - 1u) * a_rs;
    let a2 = a_base + min(row0 + 2u, p.m - 1u) * a_rs;
    let a3 = a_base + min(row0 + 3u, p.m - 1u) * a_rs;
    let b0 = b_base + min(col0, p.n - 1u) * b_cs;
    let b1 = b_base + min(col0 + 16u, p.n - 1u) * b_cs;
    let b2 = b_base + min(col0 + 32u, p.n - 1u) * b_cs;
    let b3 = b_base + min(col0 + 48u, p.n - 1u) * b_cs;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let ka = kk * a_cs;
        let kb = kk * b_rs;
        let bv = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);
        c0 = fma(vec4<f32>(a[a0 + ka]), bv, c0);
        c1 = fma(vec4<f32>(a[a1 + ka]), bv, c1);
        c2 = fma(vec4<f32>(a[a2 + ka]), bv, c2);
        c3 = fma(vec4<f32>(a[a3 + ka]), bv, c3);
    }
    var rows = array<vec4<f32>, 4>(c0, c1, c2, c3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let i = row0 + r;
        if (i >= p.m) { continue; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let j = col0 + q * 16u;
            if (j < p.n) { store(c_base, i, j, rows[r][q]); }
        }
    }
}

