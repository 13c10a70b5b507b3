//! Tensor types of llama.cpp's GGML and their block layouts (read by `model::gguf`, multiplied by
//! `ops::qmatmul`): a low floor that the CPU device, the ops and the model loader all share.
//!
//! | type | values per block | bytes | value |
//! | --- | --- | --- | --- |
//! | Q4_0 | 32 | 2 (f16 d) + 16 nibbles | (q − 8) · d |
//! | Q4_1 | 32 | 2 (f16 d) + 2 (f16 m) + 16 nibbles | q · d + m |
//! | Q8_0 | 32 | 2 (f16 d) + 32 i8 | q · d |
//!
//! In Q4 blocks byte j holds value j in its low nibble and value j + 16 in its high nibble.
//!
//! bitsandbytes' NF4 (blocks of 64 over the flat weight, absmax per block, optionally quantised
//! again) is kept the same way on the device, in the layout of `nf4`; it is not a GGML type, so its
//! kernel ids lie outside GGML's and no GGUF file names it.

pub mod nf4;

/// The tensor types this reader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    /// bitsandbytes' NF4 with an f32 absmax per block of 64.
    Nf4,
    /// NF4 with the absmax values quantised again (double quantisation).
    Nf4Double,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            // The nibbles only: the scales follow all the blocks (`nf4::device_len`).
            GgmlType::Nf4 | GgmlType::Nf4Double => (64, 32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::BF16 => "BF16",
            GgmlType::Nf4 => "NF4",
            GgmlType::Nf4Double => "NF4 (double quantised)",
        }
    }
}

impl GgmlType {
    /// GGML's id of the type (the kernels' `kind`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Nf4 => 100,
            GgmlType::Nf4Double => 101,
        }
    }

    /// Whether values come in quantised blocks (of 32, or 64 for NF4).
    pub fn is_quantised(self) -> bool {
        matches!(self, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Nf4 | GgmlType::Nf4Double)
    }

    /// Whether this is bitsandbytes' NF4 (scales stored after the blocks, not in them).
    pub fn is_nf4(self) -> bool {
        matches!(self, GgmlType::Nf4 | GgmlType::Nf4Double)
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The f32 values of a tensor of type `kind` from its bytes.
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (per, size) = kind.block();
    let mut out = vec![0f32; bytes.len() / size * per];
    dequantize_into(kind, bytes, &mut out);
    out
}

/// De-quantises `bytes` (whole blocks of `kind`) into `out`, which holds exactly their values. NF4
/// keeps its scales apart from its blocks: use `nf4::dequantize_range` on the whole weight.
#[inline]
pub fn dequantize_into(kind: GgmlType, bytes: &[u8], out: &mut [f32]) {
    assert!(!kind.is_nf4(), "NF4 blocks carry no scales: de-quantise with nf4::dequantize_range");
    let (per, size) = kind.block();
    debug_assert_eq!(out.len(), bytes.len() / size * per);
    match kind {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16(b);
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(size)) {
                let d = f16(&b[0..2]);
                let (m, qs) = if kind == GgmlType::Q4_1 { (f16(&b[2..4]), &b[4..20]) } else { (-8.0 * d, &b[2..18]) };
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = (qs[j] & 0x0F) as f32 * d + m;
                    hi[j] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(size)) {
                let d = f16(&b[0..2]);
                for j in 0..32 {
                    o[j] = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Nf4 | GgmlType::Nf4Double => unreachable!(),
    }
}
