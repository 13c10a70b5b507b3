//! NF4 against bitsandbytes itself (tests/fixtures/nf4, made by scripts/make-nf4-fixtures.py with
//! bitsandbytes 0.50.2): the same 4-bit codes and absmax from `quantize_4bit`, the same de-quantised
//! weight as `dequantize_4bit` from bitsandbytes' own state (with and without double quantisation),
//! and the 4-bit linear's output of `matmul_4bit` on both devices.

mod common;

use localtune::ops::qmatmul::{qlinear, QWeight};
use localtune::quant::nf4::{dynamic_code, Nf4, Scales};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nf4/nf4.safetensors");

fn u8s(st: &safetensors::SafeTensors, name: &str) -> Vec<u8> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), safetensors::Dtype::U8, "{name}");
    v.data().to_vec()
}

fn bnb_state(st: &safetensors::SafeTensors, double: bool) -> Nf4 {
    let n = 24 * 768;
    if double {
        let scales = Scales::Double {
            codes: u8s(st, "double_absmax_codes"),
            scale: common::fixture_f32(st, "double_scale"),
            offset: common::fixture_f32(st, "double_offset")[0],
            code: common::fixture_f32(st, "dynamic_code"),
        };
        Nf4::from_parts(n, u8s(st, "double_packed"), scales, "double").unwrap()
    } else {
        let scales = Scales::F32(common::fixture_f32(st, "plain_absmax"));
        Nf4::from_parts(n, u8s(st, "plain_packed"), scales, "plain").unwrap()
    }
}

#[test]
fn the_dynamic_code_is_bitsandbytes_code() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Within one rounding: torch's linspace (vectorised) rounds some levels the other way.
    common::assert_close("dynamic code", &dynamic_code(), &common::fixture_f32(&st, "dynamic_code"), 0.0, 2e-7);
}

#[test]
fn quantize_gives_bitsandbytes_codes_and_absmax() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = common::fixture_f32(&st, "weight");
    let plain = Nf4::quantize(&w, false, "weight").unwrap();
    assert_eq!(plain, bnb_state(&st, false), "NF4 codes and absmax");
    let double = Nf4::quantize(&w, true, "weight").unwrap();
    let want = bnb_state(&st, true);
    assert_eq!(double.packed, want.packed, "the 4-bit codes do not depend on double quantisation");
    let (Scales::Double { codes, scale, offset, .. }, Scales::Double { codes: wc, scale: ws, offset: wo, .. }) =
        (&double.scales, &want.scales)
    else {
        panic!("double quantised scales")
    };
    // The offset is a mean (summation order may differ in the last bit); bitsandbytes' CPU picks each
    // absmax code through a 65 536-entry table where its CUDA kernel and this code take the nearest,
    // so a code may differ by one step where a value lies near the middle of two.
    assert!((offset - wo).abs() <= 1e-6 * wo.abs(), "offset {offset} vs {wo}");
    assert_eq!(scale, ws, "scale per 256 blocks");
    let differ = codes.iter().zip(wc).filter(|(a, b)| a != b).count();
    assert!(codes.iter().zip(wc).all(|(a, b)| a.abs_diff(*b) <= 1), "absmax codes within one step");
    assert!(differ * 50 <= codes.len(), "{differ} of {} absmax codes differ", codes.len());
    common::assert_close("double dequant", &double.dequantize(), &want.dequantize(), 2e-3, 1e-2);
}

#[test]
fn dequantize_and_matmul_give_bitsandbytes_values_on_both_devices() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = common::fixture_f32(&st, "x");
    for (name, double) in [("plain", false), ("double", true)] {
        let q = bnb_state(&st, double);
        let want = common::fixture_f32(&st, &format!("{name}_dequant"));
        assert_eq!(q.dequantize(), want, "{name}: de-quantised weight, bit for bit");
        let y_want = common::fixture_f32(&st, &format!("{name}_y"));
        for dev in common::devices() {
            let w = QWeight::from_nf4(&dev, 24, 768, &q).unwrap();
            let y = qlinear(&dev.tensor(&x, &[5, 768]).unwrap(), &w).unwrap();
            common::assert_close(&format!("{name} matmul_4bit on {dev:?}"), &common::host(&y), &y_want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn bad_states_are_refused_by_name() {
    let e = Nf4::from_parts(128, vec![0; 64], Scales::F32(vec![1.0]), "model.layers.0.mlp.up_proj.weight")
        .unwrap_err()
        .to_string();
    assert!(e.contains("up_proj") && e.contains("1 absmax values for 2 blocks"), "{e}");
    let e = Nf4::from_parts(100, vec![0; 50], Scales::F32(vec![1.0]), "w").unwrap_err().to_string();
    assert!(e.contains("whole blocks of 64"), "{e}");
}
