//! Fuzzing the readers of everything a user hands us: CSV/JSONL/JSON data, chat JSONL, safetensors
//! and GGUF headers, tokenizer.json, config.json and adapter configs. Each target feeds random bytes
//! and random mutations of a valid file; a reader must return Ok or an Err, never panic, hang or
//! allocate what a header merely claims. A corpus round-trip checks the CSV and JSONL readers give
//! back exactly what was written.
//!
//! Bounded for CI: `LOCALTUNE_FUZZ_CASES` cases per target (default 1000) from a fixed seed
//! (`LOCALTUNE_FUZZ_SEED` to explore others); each target prints how many cases it tried.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use localtune::model::gguf::Gguf;
use localtune::model::weights::NamedTensors;
use localtune::peft::format::AdapterFiles;
use localtune::train::data::parse_texts;
use localtune::train::Dataset;

fn cases() -> u32 {
    std::env::var("LOCALTUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn runner() -> TestRunner {
    let seed: u64 = std::env::var("LOCALTUNE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// Runs `check` on `strategy`'s values; a panic inside a reader fails the target with its input.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value)) {
    let started = std::time::Instant::now();
    let tried = std::sync::atomic::AtomicUsize::new(0);
    runner()
        .run(&strategy, |v| {
            tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            check(v);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("fuzz {name}: {} cases in {:.2?}", tried.into_inner(), started.elapsed());
}

/// Bytes from a valid `sample`, mutated: bytes flipped, runs deleted or duplicated, cut short.
fn mutations(sample: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = sample.len().max(1);
    prop::collection::vec((0..n, any::<u8>(), 0u8..4), 1..8).prop_map(move |edits| {
        let mut b = sample.clone();
        for (at, byte, kind) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match kind {
                0 if !b.is_empty() => b[at] = byte,
                1 => b.truncate(at),
                2 if at < b.len() => {
                    let end = (at + byte as usize).min(b.len());
                    b.drain(at..end);
                }
                _ => {
                    let end = (at + byte as usize).min(b.len());
                    let run = b[at..end].to_vec();
                    b.splice(at..at, run);
                }
            }
        }
        b
    })
}

/// A valid JSON `sample` with some of its values replaced (by nulls, wrong types, negative, huge or
/// fractional numbers, long strings, empty containers) or removed: past the JSON parser, into the
/// checks of what the values mean.
fn json_mutations(sample: serde_json::Value) -> impl Strategy<Value = String> {
    fn paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    at.push(k.clone());
                    paths(x, at, out);
                    at.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate().take(64) {
                    at.push(i.to_string());
                    paths(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut all = vec![];
    paths(&sample, &mut vec![], &mut all);
    let n = all.len();
    let odd = || -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(0),
            json!(1),
            json!(0.5),
            json!(1e300),
            json!(-1e300),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(""),
            json!("x".repeat(5000)),
            json!([]),
            json!({}),
            json!([1, 2, 3]),
            json!("LORA"),
            json!("F32"),
            json!([4294967296u64, 4294967296u64]),
        ]
    };
    let k = odd().len();
    prop::collection::vec((0..n, 0..k + 1), 1..4).prop_map(move |edits| {
        let mut v = sample.clone();
        for (p, what) in edits {
            let path = &all[p];
            let Some((last, parent)) = path.split_last() else { continue };
            // An earlier edit of this case may have replaced a container on the path: then skip.
            let mut at = Some(&mut v);
            for key in parent {
                at = match at {
                    Some(serde_json::Value::Object(m)) => m.get_mut(key),
                    Some(serde_json::Value::Array(a)) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                    _ => None,
                };
            }
            let Some(at) = at else { continue };
            match (at, what == k) {
                (serde_json::Value::Object(m), true) => {
                    m.remove(last);
                }
                (serde_json::Value::Object(m), false) => {
                    if let Some(x) = m.get_mut(last) {
                        *x = odd()[what].clone();
                    }
                }
                (serde_json::Value::Array(a), _) => {
                    if let Some(x) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                        *x = odd()[what.min(k - 1)].clone();
                    }
                }
                _ => {}
            }
        }
        v.to_string()
    })
}

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Text made of the characters that matter to the CSV and JSON readers.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(",".to_string()),
            Just("\"".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("\t".to_string()),
            Just("\\".to_string()),
            Just("{".to_string()),
            Just("é".to_string()),
            Just("👍🏽".to_string()),
            Just("\u{feff}".to_string()),
            "[a-z ]{1,6}",
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

const NAMES: [&str; 5] = ["d.csv", "d.tsv", "d.jsonl", "d.json", "d"];

#[test]
fn data_readers_take_any_bytes() {
    fuzz(
        "data: random bytes",
        (prop::collection::vec(any::<u8>(), 0..600), 0..5usize, any::<bool>()),
        |(b, n, skip)| {
            if let Ok(ds) = Dataset::parse(&b, NAMES[n], skip) {
                assert!(!ds.examples.is_empty() && ds.examples.iter().all(|e| !e.text.trim().is_empty()));
                let _ = ds.label_counts();
                let _ = ds.split(0.3, 1);
            }
            let _ = parse_texts(&b, NAMES[n]);
            let _ = parse_texts(&b, "d.txt");
        },
    );
    let sample = b"text,label\n\"a, \"\"quoted\"\" one\",pos\nplain,neg\n\"two\nlines\",pos\n".to_vec();
    fuzz("data: mutated CSV", (mutations(sample), any::<bool>()), |(b, skip)| {
        let _ = Dataset::parse(&b, "d.csv", skip);
    });
    let sample = b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b \\u00e9\", \"label\": \"x\"}\n[1]\n".to_vec();
    fuzz("data: mutated JSONL", (mutations(sample), any::<bool>()), |(b, skip)| {
        let _ = Dataset::parse(&b, "d.jsonl", skip);
        let _ = Dataset::parse(&b, "d.json", skip);
    });
}

#[test]
fn csv_and_jsonl_give_back_what_was_written() {
    let rows = prop::collection::vec((tricky_text(), "[a-z]{1,4}|[1-9][0-9]?|0"), 1..8);
    fuzz("data: CSV and JSONL round trip", rows, |rows| {
        let rows: Vec<(String, String)> =
            rows.into_iter().filter(|(t, _)| !t.trim().is_empty() && !t.starts_with('\u{feff}')).collect();
        if rows.is_empty() {
            return;
        }
        let mut csv = String::from("text,label\n");
        let mut jsonl = String::new();
        for (t, l) in &rows {
            csv.push_str(&format!("\"{}\",{l}\n", t.replace('"', "\"\"")));
            jsonl.push_str(&format!("{}\n", serde_json::json!({"text": t, "label": l})));
        }
        for (bytes, name) in [(csv, "r.csv"), (jsonl, "r.jsonl")] {
            let ds = Dataset::parse(bytes.as_bytes(), name, false).unwrap_or_else(|e| panic!("{name}: {e}\n{bytes:?}"));
            let got: Vec<(String, String)> = ds.examples.iter().map(|e| (e.text.clone(), e.label.clone())).collect();
            // Plain integers are their own canonical form: what is read is what was written.
            let want = rows.clone();
            assert_eq!(got, want, "{name}: {bytes:?}");
        }
    });
}

#[test]
fn safetensors_headers_take_any_bytes() {
    let f = localtune::model::tiny::tiny_files(1).unwrap();
    fuzz("safetensors: random bytes", prop::collection::vec(any::<u8>(), 0..300), |b| {
        let _ = NamedTensors::from_bytes(&b, "r.safetensors");
    });
    // Mutations inside the header (its first 2 KB), where lengths, offsets and dtypes live.
    let head = f.safetensors[..2048.min(f.safetensors.len())].to_vec();
    let tail = f.safetensors[head.len()..].to_vec();
    fuzz("safetensors: mutated header", mutations(head), move |mut b| {
        b.extend_from_slice(&tail);
        if let Ok(t) = NamedTensors::from_bytes(&b, "m.safetensors") {
            let _ = t.check_finite("fuzz");
        }
    });
    // Its header's values (dtypes, shapes, offsets) replaced, the file re-packed around it.
    let hlen = u64::from_le_bytes(f.safetensors[..8].try_into().unwrap()) as usize;
    let header = json_of(&f.safetensors[8..8 + hlen]);
    let data = f.safetensors[8 + hlen..].to_vec();
    fuzz("safetensors: header values", json_mutations(header), move |h| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&data);
        if let Ok(t) = NamedTensors::from_bytes(&b, "v.safetensors") {
            let _ = t.check_finite("fuzz");
        }
    });
    // A header claiming a huge length must not be allocated.
    fuzz("safetensors: claimed lengths", (any::<u64>(), prop::collection::vec(any::<u8>(), 0..64)), |(len, rest)| {
        let mut b = len.to_le_bytes().to_vec();
        b.extend(rest);
        let _ = NamedTensors::from_bytes(&b, "l.safetensors");
    });
}

#[test]
fn gguf_headers_take_any_bytes() {
    let file = localtune::model::tiny_llama::tiny_llama_gguf(1).unwrap();
    fuzz("gguf: random bytes", prop::collection::vec(any::<u8>(), 0..300), |b| {
        let _ = Gguf::from_bytes(&b, "r.gguf");
        let mut g = b"GGUF\x03\0\0\0".to_vec();
        g.extend(b);
        let _ = Gguf::from_bytes(&g, "r.gguf");
    });
    let head_len = 4096.min(file.len());
    let (head, tail) = (file[..head_len].to_vec(), file[head_len..].to_vec());
    fuzz("gguf: mutated header", mutations(head), move |mut b| {
        b.extend_from_slice(&tail);
        if let Ok(g) = Gguf::from_bytes(&b, "m.gguf") {
            let _ = localtune::model::bpe::BpeTokenizer::from_gguf(&g);
            for t in &g.tensors {
                let _ = g.tensor_bytes(&b, t);
            }
            // The model built from what the header now says (sizes, types, offsets).
            if let Ok(m) = localtune::model::llama::Llama::from_gguf(&g, &b, &localtune::Device::Cpu) {
                let _ = m.forward(&[1, 2, 3]);
            }
        }
    });
}

#[test]
fn json_configs_take_any_text() {
    let f = localtune::model::tiny::tiny_files(1).unwrap();
    let tok = f.tokenizer_json.clone().into_bytes();
    fuzz("tokenizer.json: mutated", mutations(tok), |b| {
        if let Ok(s) = std::str::from_utf8(&b) {
            if let Ok(t) = localtune::model::tokenizer::Tokenizer::from_json_str(s, "tokenizer.json") {
                let _ = t.encode("Hello, wörld! 👍", 16);
            }
        }
    });
    fuzz("tokenizer.json: values", json_mutations(json_of(f.tokenizer_json.as_bytes())), |s| {
        if let Ok(t) = localtune::model::tokenizer::Tokenizer::from_json_str(&s, "tokenizer.json") {
            let _ = t.encode("Hello, wörld! 👍", 16);
        }
    });
    let cfg = f.config_json.clone().into_bytes();
    fuzz("config.json: mutated", mutations(cfg), |b| {
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = localtune::model::arch::from_config_json(s, "config.json");
            let _ = localtune::model::llama_hf::config_from_json(s, "config.json");
        }
    });
    // Configs with their values replaced reach the model builder: a tiny model from each that parses.
    let (st, tj) = (f.safetensors.clone(), f.tokenizer_json.clone());
    fuzz("config.json: values, then the model", json_mutations(json_of(f.config_json.as_bytes())), move |s| {
        if localtune::model::arch::from_config_json(&s, "config.json").is_ok() {
            let _ = localtune::model::Model::from_bytes(&s, &st, &tj, "fuzz", &localtune::Device::Cpu);
        }
    });
    let llama_cfg =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama_st/model/config.json")).unwrap();
    fuzz("Llama config.json: values", json_mutations(json_of(&llama_cfg)), |s| {
        let _ = localtune::model::llama_hf::config_from_json(&s, "config.json");
    });
    let bpe =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bpe_json/digits/tokenizer.json")).unwrap();
    fuzz("BPE tokenizer.json: values", json_mutations(json_of(&bpe)), |s| {
        if let Ok(t) = localtune::model::bpe::BpeTokenizer::from_tokenizer_json(&s, "tokenizer.json") {
            let _ = t.encode_plain("Hello 123 wörld");
        }
    });
    fuzz("BPE tokenizer.json: mutated", mutations(bpe), |b| {
        if let Ok(s) = std::str::from_utf8(&b) {
            if let Ok(t) = localtune::model::bpe::BpeTokenizer::from_tokenizer_json(s, "tokenizer.json") {
                let _ = t.encode_plain("Hello 123 wörld");
            }
        }
    });
}

#[test]
fn adapter_configs_take_any_text() {
    let fx = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft_lora"));
    let config = std::fs::read(fx.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(fx.join("adapter_model.safetensors")).unwrap();
    let meta = r#"{"format": 1, "method": "lora", "r": 4, "alpha": 8.0, "rslora": false, "targets": ["query", "value"], "dropout": 0.0, "head": "pooler", "labels": ["neg", "pos"], "base_model": "m", "arch": "bert"}"#;
    let c = String::from_utf8(config.clone()).unwrap();
    AdapterFiles::from_files(&c, &weights, Some(meta), "a").expect("the seeds are a valid adapter");
    let w = weights.clone();
    fuzz("adapter_config.json: values", json_mutations(json_of(&config)), move |s| {
        if let Ok(a) = AdapterFiles::from_files(&s, &w, None, "a") {
            let _ = a.labels.len();
        }
    });
    let w = weights.clone();
    fuzz("adapter_config.json: mutated", mutations(config.clone()), move |b| {
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = AdapterFiles::from_files(s, &w, None, "a");
        }
    });
    let (c, w) = (String::from_utf8(config.clone()).unwrap(), weights.clone());
    fuzz("localtune.json: values", json_mutations(json_of(meta.as_bytes())), move |s| {
        let _ = AdapterFiles::from_files(&c, &w, Some(&s), "a");
    });
    let (c, w) = (String::from_utf8(config).unwrap(), weights.clone());
    fuzz("localtune.json: mutated", mutations(meta.as_bytes().to_vec()), move |b| {
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = AdapterFiles::from_files(&c, &w, Some(s), "a");
        }
    });
    // The weights' header values (shapes, dtypes, offsets) replaced: a scalar lora_A panicked.
    let hlen = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let (header, data) = (json_of(&weights[8..8 + hlen]), weights[8 + hlen..].to_vec());
    let (c, m) =
        (std::str::from_utf8(&std::fs::read(fx.join("adapter_config.json")).unwrap()).unwrap().to_string(), meta);
    fuzz("adapter weights: header values", json_mutations(header), move |h| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&data);
        let _ = AdapterFiles::from_files(&c, &b, None, "a");
        let _ = AdapterFiles::from_files(&c, &b, Some(m), "a");
    });
    let c = std::str::from_utf8(&std::fs::read(fx.join("adapter_config.json")).unwrap()).unwrap().to_string();
    fuzz("adapter weights: mutated header", mutations(weights[..1024.min(weights.len())].to_vec()), move |mut b| {
        b.extend_from_slice(&weights[1024.min(weights.len())..]);
        let _ = AdapterFiles::from_files(&c, &b, None, "a");
    });
}
