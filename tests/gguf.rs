//! The GGUF reader against the `gguf` Python package (llama.cpp's reader): header, metadata, tensor
//! table and de-quantised values of the SmolLM2 file, llama.cpp's Q4_0 / Q4_1 / Q8_0 blocks as
//! gguf.quants wrote them (tests/fixtures/gguf, made by scripts/make-gguf-fixtures.sh), and the errors a
//! truncated or corrupt file gets.

mod common;

use localtune::model::gguf::{dequantize, GgmlType, Gguf, Value};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/smollm2.json");

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

fn kind(name: &str) -> GgmlType {
    match name {
        "F32" => GgmlType::F32,
        "F16" => GgmlType::F16,
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q8_0" => GgmlType::Q8_0,
        "BF16" => GgmlType::BF16,
        o => panic!("type {o}"),
    }
}

#[test]
fn blocks_dequantise_as_llama_cpp_writes_them() {
    let f = fixture();
    for (name, b) in f["blocks"].as_object().unwrap() {
        let hex = b["bytes"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let want: Vec<f32> = b["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = dequantize(kind(name), &bytes);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs gguf {w}");
        }
    }
}

#[test]
fn the_smollm2_file_reads_as_the_gguf_package_reads_it() {
    let Some(path) = common::llm_file() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, &path.display().to_string()).unwrap();
    let f = fixture();
    assert_eq!(g.version as u64, f["version"].as_u64().unwrap());
    assert_eq!(g.tensors.len() as u64, f["tensor_count"].as_u64().unwrap());
    assert_eq!(g.metadata.len() as u64, f["kv_count"].as_u64().unwrap());
    for (k, want) in f["metadata"].as_object().unwrap() {
        let got = g.get(k).unwrap_or_else(|| panic!("no `{k}`"));
        match want {
            serde_json::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{k}"),
            serde_json::Value::Number(n) => {
                let w = n.as_f64().unwrap();
                assert!((got.as_f64().unwrap() - w).abs() <= 1e-9 * w.abs().max(1.0), "{k}: {got:?} vs {w}");
            }
            o => panic!("{k}: {o}"),
        }
    }
    let list = |k: &str| g.get(k).and_then(Value::as_array).unwrap().to_vec();
    let tokens = list("tokenizer.ggml.tokens");
    assert_eq!(tokens.len() as u64, f["tokens"]["count"].as_u64().unwrap());
    for (i, w) in f["tokens"]["first"].as_array().unwrap().iter().enumerate() {
        assert_eq!(tokens[i].as_str(), w.as_str());
    }
    let last = f["tokens"]["last"].as_array().unwrap();
    for (j, w) in last.iter().enumerate() {
        assert_eq!(tokens[tokens.len() - last.len() + j].as_str(), w.as_str());
    }
    let merges = list("tokenizer.ggml.merges");
    assert_eq!(merges.len() as u64, f["merges"]["count"].as_u64().unwrap());
    assert_eq!(merges[0].as_str(), f["merges"]["first"][0].as_str());
    for (t, w) in g.tensors.iter().zip(f["tensors"].as_array().unwrap()) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        assert_eq!(t.kind, kind(w["type"].as_str().unwrap()), "{}", t.name);
        let dims: Vec<u64> = w["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(g.data_start + t.offset, w["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.bytes(), w["bytes"].as_u64().unwrap(), "{}", t.name);
        let Some(s) = w.get("samples") else { continue };
        let x = dequantize(t.kind, g.tensor_bytes(&bytes, t).unwrap());
        assert_eq!(x.len() as u64, t.numel());
        for (i, v) in s["index"].as_array().unwrap().iter().zip(s["value"].as_array().unwrap()) {
            let (i, v) = (i.as_u64().unwrap() as usize, v.as_f64().unwrap());
            assert!((x[i] as f64 - v).abs() <= 1e-6 * v.abs().max(1.0), "{}[{i}]: {} vs gguf {v}", t.name, x[i]);
        }
        let sum: f64 = x.iter().map(|&v| v as f64).sum();
        let abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        let (ws, wa) = (w["sum"].as_f64().unwrap(), w["abs_sum"].as_f64().unwrap());
        assert!((abs - wa).abs() <= 1e-6 * wa, "{}: Σ|x| {abs} vs gguf {wa}", t.name);
        assert!((sum - ws).abs() <= 1e-6 * wa, "{}: Σx {sum} vs gguf {ws}", t.name);
    }
}

#[test]
fn truncated_and_corrupt_files_name_what_is_wrong() {
    let Some(path) = common::llm_file() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, "m.gguf").unwrap();
    let err = |b: &[u8]| Gguf::from_bytes(b, "m.gguf").unwrap_err().to_string();
    assert!(err(b"GGUX\x03\0\0\0").contains("not a GGUF file"));
    assert!(err(&bytes[..6]).contains("truncated: the version"), "{}", err(&bytes[..6]));
    let e = err(&bytes[..5000]);
    assert!(e.starts_with("m.gguf") && e.contains("truncated"), "{e}");
    // Cut inside the data: the header reads, the last tensor does not fit.
    let last = g.tensors.iter().max_by_key(|t| t.offset).unwrap();
    let e = err(&bytes[..bytes.len() - 10]);
    assert!(e.contains(&last.name) && e.contains("truncated"), "{e}");
    // An unknown tensor type: the first tensor's type field set to 99.
    let mut b = bytes.clone();
    let first = &g.tensors[0];
    let name = first.name.as_bytes();
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 8 * first.dims.len();
    b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = err(&b);
    assert!(e.contains(&first.name) && e.contains("tensor type 99 is not supported"), "{e}");
    let mut b = bytes.clone();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert!(err(&b).contains("version 7 is not supported"));
}

#[test]
fn real_quantised_weights_multiply_as_their_dequantised_values() {
    use localtune::ops::{self, qmatmul};
    let Some(path) = common::llm_file() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, "m.gguf").unwrap();
    let mut r = common::Rng(4);
    for name in ["blk.0.attn_k.weight", "blk.7.ffn_down.weight"] {
        let t = g.tensor(name).unwrap();
        let (rows, cols) = t.rows_cols();
        let raw = g.tensor_bytes(&bytes, t).unwrap();
        let w = dequantize(t.kind, raw);
        for dev in common::devices() {
            let q = qmatmul::QWeight::new(&dev, t.kind, rows, cols, raw).unwrap();
            // The device holds the blocks as they are: the file's bytes, not 4 bytes per value.
            assert_eq!(q.device_bytes(), raw.len().div_ceil(4) * 4);
            // 3 rows: one token's dot products; 9: a prompt's, through the GEMM.
            for n in [3, 9] {
                let x = dev.tensor(&r.vec(n * cols, 1.0), &[n, cols]).unwrap();
                let want = ops::matmul(&x, &dev.tensor(&w, &[rows, cols]).unwrap(), false, true).unwrap();
                common::assert_close(
                    &format!("{name} × {n} rows"),
                    &common::host(&qmatmul::qlinear(&x, &q).unwrap()),
                    &common::host(&want),
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}
