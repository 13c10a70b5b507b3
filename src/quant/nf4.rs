//! bitsandbytes' NF4 (QLoRA's 4-bit NormalFloat): a weight cut into blocks of 64 values in its flat
//! row-major order, each block scaled by its largest magnitude (absmax) and every value replaced by
//! the nearest of 16 fixed levels (`CODE`, bitsandbytes' table in its order), two values a byte (the
//! first in the high nibble). With double quantisation the absmax values themselves are kept in 8
//! bits: their mean is taken off (`offset`) and the rest quantised in blocks of 256 with bitsandbytes'
//! signed dynamic code (`dynamic_code`), one f32 scale per block of 256.
//!
//! On the device a weight of n values is one byte buffer:
//!
//! | part | bytes |
//! | --- | --- |
//! | packed nibbles | n / 2 |
//! | NF4: absmax per block | 4 · n/64 (f32) |
//! | NF4 + double: absmax codes per block, then zeros to a multiple of 4 | n/64 → ⌈n/64⌉₄ |
//! | NF4 + double: absmax scale per 256 blocks, the offset, the 256-value code | 4 · ⌈n/16384⌉ + 4 + 1024 |
//!
//! Value i = CODE[q(i)] · s(i / 64), with s = absmax, or s = dyn[c] · scale(b / 256) + offset, each
//! product and sum rounded to f32 as bitsandbytes rounds it.

use crate::error::{Error, Result};

/// Values per block.
pub const BLOCK: usize = 64;
/// Blocks per scale of the absmax values when they are quantised again.
pub const DQ_BLOCK: usize = 256;

/// The 16 NF4 levels in bitsandbytes' order (code q ↦ CODE[q]).
pub const CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// torch.linspace(start, end, steps) in f32 as PyTorch's CPU kernel computes it (from both ends).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`: 256 sorted
/// values in [-1, 1], dense near zero, used to keep the absmax values in 8 bits. Equal to
/// bitsandbytes' within one rounding (torch's vectorised linspace rounds differently per CPU), so a
/// state made by bitsandbytes carries its own code.
pub fn dynamic_code() -> [f32; 256] {
    let (max_exp, non_sign) = (7i32, 7i32);
    let mut data: Vec<f64> = Vec::with_capacity(256);
    let push_means = |data: &mut Vec<f64>, items: usize, scale: f64| {
        let b = linspace(0.1, 1.0, items);
        let means: Vec<f32> = b.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|&m| scale * m as f64));
        data.extend(means.iter().map(|&m| -scale * m as f64));
    };
    for i in 0..max_exp {
        let items = 2usize.pow((i + non_sign - max_exp) as u32) + 1;
        push_means(&mut data, items, 10f64.powi(-(max_exp - 1) + i));
    }
    // 2^(non_sign − max_exp) − 1 = 0 additional items.
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    let mut out: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out.try_into().unwrap()
}

/// A weight in NF4.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4 {
    /// The number of values (a multiple of 64).
    pub n: usize,
    /// Two codes a byte, the first value in the high nibble.
    pub packed: Vec<u8>,
    pub scales: Scales,
}

/// Each block's absmax, as it is or quantised again.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    F32(Vec<f32>),
    /// `code`: the 256 levels of the absmax codes (bitsandbytes' `state2.code`; `dynamic_code()` when
    /// quantised here).
    Double {
        codes: Vec<u8>,
        scale: Vec<f32>,
        offset: f32,
        code: Vec<f32>,
    },
}

/// The index of the first of `bounds` (sorted) that is ≥ v: torch.bucketize(v, bounds).
fn bucket(bounds: &[f32], v: f32) -> usize {
    bounds.partition_point(|&b| b < v)
}

/// Each block's largest magnitude, and the block's values scaled by its reciprocal into [-1, 1].
fn scaled_blocks(values: &[f32], block: usize, mut each: impl FnMut(f32)) -> Vec<f32> {
    values
        .chunks(block)
        .map(|b| {
            let absmax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = 1.0 / absmax.max(1e-38);
            for v in b {
                each((v * inv).clamp(-1.0, 1.0));
            }
            absmax
        })
        .collect()
}

impl Nf4 {
    /// Quantises `values` (a multiple of 64 of them, all finite), with the absmax values quantised
    /// again when `double`. `what` names the tensor in errors.
    pub fn quantize(values: &[f32], double: bool, what: &str) -> Result<Nf4> {
        if values.is_empty() || !values.len().is_multiple_of(BLOCK) {
            return Err(Error::invalid(format!(
                "{what}: NF4 needs whole blocks of {BLOCK} values, the tensor has {}",
                values.len()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("{what}: value {i} is {}, which NF4 cannot hold", values[i])));
        }
        let bounds: Vec<f32> = CODE.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let mut codes = Vec::with_capacity(values.len());
        let absmax = scaled_blocks(values, BLOCK, |s| codes.push(bucket(&bounds, s) as u8));
        let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
        let scales = if double { double_quantize(&absmax) } else { Scales::F32(absmax) };
        Ok(Nf4 { n: values.len(), packed, scales })
    }

    /// The weight's values.
    pub fn dequantize(&self) -> Vec<f32> {
        let bytes = self.device_bytes();
        let mut out = vec![0f32; self.n];
        dequantize_range(&bytes, self.n, self.is_double(), 0, &mut out);
        out
    }

    pub fn is_double(&self) -> bool {
        matches!(self.scales, Scales::Double { .. })
    }

    /// The device layout (see the module's table).
    pub fn device_bytes(&self) -> Vec<u8> {
        let mut out = self.packed.clone();
        match &self.scales {
            Scales::F32(a) => a.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Scales::Double { codes, scale, offset, code } => {
                out.extend(codes);
                out.resize(out.len().next_multiple_of(4), 0);
                scale.iter().for_each(|v| out.extend(v.to_le_bytes()));
                out.extend(offset.to_le_bytes());
                code.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
        out
    }

    /// From bitsandbytes' quantised state: the packed bytes, and the absmax as f32 or (codes, the f32
    /// scale per 256 blocks, offset). Sizes are checked against `n`.
    pub fn from_parts(n: usize, packed: Vec<u8>, scales: Scales, what: &str) -> Result<Nf4> {
        let nb = n / BLOCK;
        let bad = |m: String| Error::invalid(format!("{what}: {m}"));
        if n == 0 || !n.is_multiple_of(BLOCK) {
            return Err(bad(format!("NF4 needs whole blocks of {BLOCK} values, the tensor has {n}")));
        }
        if packed.len() != n / 2 {
            return Err(bad(format!("{} packed bytes for {n} values, expected {}", packed.len(), n / 2)));
        }
        match &scales {
            Scales::F32(a) if a.len() != nb => return Err(bad(format!("{} absmax values for {nb} blocks", a.len()))),
            Scales::Double { codes, scale, code, .. }
                if codes.len() != nb || scale.len() != nb.div_ceil(DQ_BLOCK) || code.len() != 256 =>
            {
                return Err(bad(format!(
                    "{} absmax codes, {} scales and a code of {} levels for {nb} blocks (expected {nb}, {} and 256)",
                    codes.len(),
                    scale.len(),
                    code.len(),
                    nb.div_ceil(DQ_BLOCK)
                )))
            }
            _ => {}
        }
        Ok(Nf4 { n, packed, scales })
    }
}

/// bitsandbytes' `quantize_blockwise(absmax − mean, blocksize=256)` with the dynamic code, each value
/// going to its nearest level (ties to the lower).
fn double_quantize(absmax: &[f32]) -> Scales {
    let offset = (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len() as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
    let dynamic = dynamic_code();
    let mut codes = Vec::with_capacity(absmax.len());
    let scale = scaled_blocks(&centred, DQ_BLOCK, |s| {
        let right = dynamic.partition_point(|&c| c < s).min(255);
        let pick =
            if right == 0 || (dynamic[right] - s).abs() < (s - dynamic[right - 1]).abs() { right } else { right - 1 };
        codes.push(pick as u8);
    });
    Scales::Double { codes, scale, offset, code: dynamic.to_vec() }
}

/// Byte offsets in the device layout of a weight of n values: (absmax or codes, scales, offset, code).
pub fn layout(n: usize) -> (usize, usize, usize, usize) {
    let nb = n / BLOCK;
    let codes = n / 2;
    let scales = codes + nb.next_multiple_of(4);
    let offset = scales + 4 * nb.div_ceil(DQ_BLOCK);
    (codes, scales, offset, offset + 4)
}

/// Bytes of the device layout of n values.
pub fn device_len(n: usize, double: bool) -> usize {
    if double {
        layout(n).3 + 4 * 256
    } else {
        n / 2 + 4 * (n / BLOCK)
    }
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// De-quantises values start .. start + out.len() of a weight of n values from its device bytes
/// (`start` and the length multiples of 64).
pub fn dequantize_range(bytes: &[u8], n: usize, double: bool, start: usize, out: &mut [f32]) {
    debug_assert!(start.is_multiple_of(BLOCK) && out.len().is_multiple_of(BLOCK) && start + out.len() <= n);
    let (codes_at, scales_at, offset_at, code_at) = layout(n);
    let dynamic: Option<[f32; 256]> = double.then(|| std::array::from_fn(|i| f32_at(bytes, code_at + 4 * i)));
    let offset = if double { f32_at(bytes, offset_at) } else { 0.0 };
    for (k, o) in out.chunks_exact_mut(BLOCK).enumerate() {
        let b = start / BLOCK + k;
        let s = match &dynamic {
            None => f32_at(bytes, n / 2 + 4 * b),
            Some(d) => d[bytes[codes_at + b] as usize] * f32_at(bytes, scales_at + 4 * (b / DQ_BLOCK)) + offset,
        };
        let packed = &bytes[b * BLOCK / 2..(b + 1) * BLOCK / 2];
        for (pair, &byte) in o.chunks_exact_mut(2).zip(packed) {
            pair[0] = CODE[(byte >> 4) as usize] * s;
            pair[1] = CODE[(byte & 0x0F) as usize] * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dynamic_code_is_sorted_symmetric_and_spans_minus_one_to_one() {
        let d = dynamic_code();
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(d[255], 1.0);
        assert!(d[0] < -0.99 && d[0] > -1.0);
        assert!(d.contains(&0.0));
    }

    #[test]
    fn quantizing_the_levels_gives_them_back() {
        let mut v: Vec<f32> = (0..64).map(|i| CODE[i % 16]).collect();
        v[0] = -1.0;
        let q = Nf4::quantize(&v, false, "t").unwrap();
        assert_eq!(q.dequantize(), v);
        assert!(Nf4::quantize(&v[..63], false, "t").is_err());
        let mut bad = v.clone();
        bad[5] = f32::NAN;
        assert!(Nf4::quantize(&bad, false, "t").unwrap_err().to_string().contains("value 5"));
    }
}
