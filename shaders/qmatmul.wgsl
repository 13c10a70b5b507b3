// Matmuls over a frozen weight kept in llama.cpp's quantised blocks (Q4_0, Q4_1, Q8_0; see
// src/model/gguf.rs), de-quantised on the fly. W is (rows, cols) row-major as blocks of 32 values,
// a row being cols / 32 consecutive blocks; its bytes are packed little-endian in array<u32> (blocks of
// 18 and 34 bytes are not word-aligned, so bytes are read by index).
//
// qmatmul_forward: y[n, r] = Σ_c x[n, c] W[r, c]        (y = x Wᵀ; one invocation per output)
// qmatmul_dx:      dx[n, c] = Σ_r dy[n, r] W[r, c]      (dx = dy W; the frozen base needs no dW)
//
// Q4_0 block: f16 d, 16 bytes; byte j holds value j (low nibble) and j + 16 (high): (q − 8) · d.
// Q4_1 block: f16 d, f16 m, 16 bytes as Q4_0: q · d + m.      Q8_0 block: f16 d, 32 i8: q · d.
// NF4 (bitsandbytes; src/quant/nf4.rs): over the flat weight, two codes a byte (the first in the high
// nibble), n / 2 bytes; then an f32 absmax per 64 values, or (double) a u8 code per 64 values padded to
// a word, an f32 scale per 256 codes, the f32 offset and the 256-value f32 code: NF4[q] · s.

const Q4_0: u32 = 2u;
const Q4_1: u32 = 3u;
const Q8_0: u32 = 8u;
const NF4: u32 = 100u;
const NF4_DOUBLE: u32 = 101u;

const NF4_CODE = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0);

struct Params {
    n: u32, rows: u32, cols: u32, kind: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xin: array<f32>;           // (n, cols) or dy (n, rows)
@group(0) @binding(2) var<storage, read> wq: array<u32>;           // the blocks' bytes
@group(0) @binding(3) var<storage, read_write> out: array<f32>;    // (n, rows) or dx (n, cols)

fn byte_at(i: u32) -> u32 {
    return (wq[i >> 2u] >> ((i & 3u) * 8u)) & 0xFFu;
}

// An IEEE half from its bits, by hand (unpack2x16float needs a capability not every adapter has).
fn f16_at(i: u32) -> f32 {
    let h = byte_at(i) | (byte_at(i + 1u) << 8u);
    let sign = (h >> 15u) << 31u;
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    if (e == 0u) {
        // zero or subnormal: m · 2^-24
        return select(1.0, -1.0, sign != 0u) * f32(m) * 5.9604645e-8;
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7F800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn block_bytes() -> u32 {
    if (p.kind == Q4_0) { return 18u; }
    if (p.kind == Q4_1) { return 20u; }
    return 34u;
}

fn f32_at(i: u32) -> f32 {
    return bitcast<f32>(wq[i >> 2u]);
}

// NF4's W[r, c].
fn weight_nf4(r: u32, c: u32) -> f32 {
    let n = p.rows * p.cols;
    let i = r * p.cols + c;
    let byte = byte_at(i >> 1u);
    let q = select(byte >> 4u, byte & 0xFu, (i & 1u) == 1u);
    let b = i / 64u;
    var s: f32;
    if (p.kind == NF4) {
        s = f32_at(n / 2u + 4u * b);
    } else {
        let nb = n / 64u;
        let scales = n / 2u + ((nb + 3u) & ~3u);
        let offset_at = scales + 4u * ((nb + 255u) / 256u);
        let code = byte_at(n / 2u + b);
        s = f32_at(offset_at + 4u + 4u * code) * f32_at(scales + 4u * (b / 256u)) + f32_at(offset_at);
    }
    var levels = NF4_CODE;
    return levels[q] * s;
}

// W[r, c].
fn weight(r: u32, c: u32) -> f32 {
    if (p.kind >= NF4) { return weight_nf4(r, c); }
    let blocks = p.cols / 32u;
    let base = (r * blocks + c / 32u) * block_bytes();
    let j = c % 32u;
    let d = f16_at(base);
    if (p.kind == Q8_0) {
        let q = i32(byte_at(base + 2u + j) << 24u) >> 24u;
        return f32(q) * d;
    }
    let qs = select(base + 2u, base + 4u, p.kind == Q4_1);
    let byte = byte_at(qs + (j % 16u));
    let q = f32(select(byte & 0xFu, byte >> 4u, j >= 16u));
    if (p.kind == Q4_1) {
        return q * d + f16_at(base + 2u);
    }
    return (q - 8.0) * d;
}

@compute @workgroup_size(64, 1, 1)
fn qmatmul_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 64u);
    if (i >= p.n * p.rows) { return; }
    let n = i / p.rows;
    let r = i % p.rows;
    var acc = 0.0;
    for (var c = 0u; c < p.cols; c = c + 1u) {
        acc = acc + xin[n * p.cols + c] * weight(r, c);
    }
    out[i] = acc;
}

@compute @workgroup_size(64, 1, 1)
fn qmatmul_dx(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid, 64u);
    if (i >= p.n * p.cols) { return; }
    let n = i / p.cols;
    let c = i % p.cols;
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        acc = acc + xin[n * p.rows + r] * weight(r, c);
    }
    out[i] = acc;
}
