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
//   matmul_tiled: 64×64 output tile per workgroup, 16×16 invocations, each holding a 4×4 block of C
//                 in registers; A and B tiles of depth 16 staged in workgroup memory.

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

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let z0 = wid.z / p.batch1;
    let z1 = wid.z % p.batch1;
    let a_base = p.a_off + z0 * p.a_bs0 + z1 * p.a_bs1;
    let b_base = p.b_off + z0 * p.b_bs0 + z1 * p.b_bs1;
    let c_base = p.c_off + z0 * p.c_bs0 + z1 * p.c_bs1;
    let trans_a = (p.flags & TRANS_A) != 0u;
    let trans_b = (p.flags & TRANS_B) != 0u;

    var acc: array<f32, 16>;
    for (var t = 0u; t < 16u; t = t + 1u) { acc[t] = 0.0; }
    var ra: array<f32, 4>;
    var rb: array<f32, 4>;

    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        // Stage A (BM×BK) and B (BK×BN): 1024 values each, 4 per invocation.
        // The fast-moving index follows the stored layout so neighbours read neighbours.
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = tid + r * 256u;
            var i: u32; var kk: u32;
            if (trans_a) { kk = e / BM; i = e % BM; } else { i = e / BK; kk = e % BK; }
            var va = 0.0;
            if (row0 + i < p.m && k0 + kk < p.k) { va = a[a_index(a_base, row0 + i, k0 + kk)]; }
            tile_a[kk * BM + i] = va;

            var j: u32; var kb: u32;
            if (trans_b) { j = e / BK; kb = e % BK; } else { kb = e / BN; j = e % BN; }
            var vb = 0.0;
            if (k0 + kb < p.k && col0 + j < p.n) { vb = b[b_index(b_base, k0 + kb, col0 + j)]; }
            tile_b[kb * BN + j] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            for (var r = 0u; r < TM; r = r + 1u) { ra[r] = tile_a[kk * BM + lid.y + r * 16u]; }
            for (var q = 0u; q < TN; q = q + 1u) { rb[q] = tile_b[kk * BN + lid.x + q * 16u]; }
            for (var r = 0u; r < TM; r = r + 1u) {
                for (var q = 0u; q < TN; q = q + 1u) {
                    acc[r * TN + q] = fma(ra[r], rb[q], acc[r * TN + q]);
                }
            }
        }
        workgroupBarrier();
    }

    // Invocation (x, y) owns rows y + 16r and columns x + 16q of the tile.
    for (var r = 0u; r < TM; r = r + 1u) {
        let i = row0 + lid.y + r * 16u;
        if (i >= p.m) { continue; }
        for (var q = 0u; q < TN; q = q + 1u) {
            let j = col0 + lid.x + q * 16u;
            if (j < p.n) { store(c_base, i, j, acc[r * TN + q]); }
        }
    }
}
