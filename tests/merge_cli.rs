//! `localtune merge` and `localtune fold` run as a user would: model folders and adapters in, folders
//! out; checked against values computed here from the input files, and the fold against the logits
//! PEFT/transformers gave for the reference adapter (tests/fixtures/peft_lora).

mod common;

use common::*;
use localtune::model::weights::{HostTensor, NamedTensors};
use localtune::model::{Inputs, Model};
use localtune::peft::{Adapted, Classifier, HeadKind, HeadOnly, Method};
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft_lora");

fn lt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_localtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("localtune-merge-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny model and two variants of it with every weight moved by a seeded amount.
fn tiny_family(root: &Path) -> Vec<PathBuf> {
    let base = root.join("base");
    assert!(lt(&["tiny-model", "--out", s(&base), "--seed", "3"]).0);
    let mut dirs = vec![base.clone()];
    for (i, scale) in [(1u64, 0.05f64), (2, 0.08)] {
        let d = root.join(format!("ft{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(base.join(f), d.join(f)).unwrap();
        }
        let mut t = NamedTensors::load(&base.join("model.safetensors")).unwrap();
        let mut rng = Rng(100 + i);
        for v in t.tensors.values_mut() {
            v.data.iter_mut().for_each(|x| *x += (rng.uniform() * scale) as f32);
        }
        std::fs::write(d.join("model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
        dirs.push(d);
    }
    dirs
}

#[test]
fn linear_merge_of_model_folders_is_the_weighted_average() {
    let root = tmp("linear");
    let dirs = tiny_family(&root);
    let out = root.join("soup");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "linear",
        s(&dirs[1]),
        s(&dirs[2]),
        "--weights",
        "1,3",
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let a = NamedTensors::load(&dirs[1].join("model.safetensors")).unwrap();
    let b = NamedTensors::load(&dirs[2].join("model.safetensors")).unwrap();
    let m = NamedTensors::load(&out.join("model.safetensors")).unwrap();
    assert_eq!(m.tensors.len(), a.tensors.len());
    for (k, t) in &a.tensors {
        let want: Vec<f32> = t.data.iter().zip(&b.tensors[k].data).map(|(x, y)| (x + 3.0 * y) / 4.0).collect();
        assert_close(k, &m.tensors[k].data, &want, 1e-6, 1e-6);
    }
    // The folder around the weights is copied and the result loads as a model.
    assert!(out.join("config.json").exists() && out.join("tokenizer.json").exists());
    Model::load(&out, &localtune::Device::Cpu).unwrap();
    // The same merge as a mergekit recipe, in f16.
    let recipe = root.join("recipe.yml");
    std::fs::write(
        &recipe,
        "merge_method: linear\nmodels:\n  - model: ft1\n    parameters:\n      weight: 1.0\n  - model: ft2\n    parameters:\n      weight: 3.0\ndtype: float16\n",
    )
    .unwrap();
    let out2 = root.join("soup-recipe");
    let (ok, _, err) = lt(&["merge", "--recipe", s(&recipe), "--out", s(&out2), "--device", "cpu"]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(out2.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let m2 = NamedTensors::from_bytes(&bytes, "recipe output").unwrap();
    for (k, t) in &m.tensors {
        assert_eq!(st.tensor(k).unwrap().dtype(), safetensors::Dtype::F16);
        assert_close(k, &m2.tensors[k].data, &t.data, 2e-3, 2e-3);
    }
}

#[test]
fn task_vector_merges_run_on_both_devices_and_agree() {
    let root = tmp("ties");
    let dirs = tiny_family(&root);
    let mut outs = Vec::new();
    for dev in ["cpu", "gpu"] {
        if dev == "gpu" && gpu().is_none() {
            continue;
        }
        for m in ["ties", "dare-ties", "della", "breadcrumbs", "model-stock", "delta-guided", "slerp"] {
            let out = root.join(format!("{m}-{dev}"));
            let mut args = vec!["merge", "--method", m, "--base", s(&dirs[0]), s(&dirs[1])];
            if m != "slerp" {
                args.push(s(&dirs[2]));
            }
            args.extend(["--density", "0.5", "--out", s(&out), "--device", dev, "--seed", "4"]);
            let (ok, _, err) = lt(&args);
            assert!(ok, "{m} on {dev}: {err}");
            outs.push((m, dev, NamedTensors::load(&out.join("model.safetensors")).unwrap()));
        }
    }
    let base = NamedTensors::load(&dirs[0].join("model.safetensors")).unwrap();
    for (m, dev, t) in &outs {
        // Every merge moved the weights off the base, and stayed finite.
        let moved = t.tensors.iter().any(|(k, v)| v.data.iter().zip(&base.tensors[k].data).any(|(a, b)| a != b));
        assert!(moved, "{m} on {dev} returned the base");
        if *dev == "gpu" {
            let (_, _, c) = outs.iter().find(|(m2, d2, _)| m2 == m && *d2 == "cpu").unwrap();
            for (k, v) in &t.tensors {
                assert_close(&format!("{m} {k} gpu vs cpu"), &v.data, &c.tensors[k].data, 1e-5, 1e-4);
            }
        }
    }
}

#[test]
fn bad_merges_are_refused_and_leave_the_output_alone() {
    let root = tmp("bad");
    let dirs = tiny_family(&root);
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "old").unwrap();
    // A tensor of another shape in one input.
    let odd = root.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dirs[1].join(f), odd.join(f)).unwrap();
    }
    let mut t = NamedTensors::load(&dirs[1].join("model.safetensors")).unwrap();
    let key = t.tensors.keys().find(|k| k.ends_with("query.weight")).unwrap().clone();
    t.insert(key.clone(), HostTensor::new(vec![2, 3], vec![0.0; 6]));
    std::fs::write(odd.join("model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["merge", "--method", "linear", s(&dirs[1]), s(&odd)], vec![key.as_str(), "odd"]),
        (
            vec!["merge", "--method", "ties", "--base", s(&dirs[0]), s(&dirs[1]), s(&dirs[2]), "--density", "1.5"],
            vec!["density 1.5"],
        ),
        (
            vec!["merge", "--method", "linear", s(&dirs[1]), s(&dirs[2]), "--weights", "1,2,3"],
            vec!["3 values for 2 inputs"],
        ),
        (vec!["merge", "--method", "slerp", "--base", s(&dirs[0]), s(&dirs[1]), s(&dirs[2])], vec!["exactly two"]),
        (vec!["merge", "--method", "ties", s(&dirs[1]), s(&dirs[2])], vec!["needs a base model"]),
        (vec!["merge", "--method", "fisher", s(&dirs[1]), s(&dirs[2])], vec!["one Fisher per input"]),
        (vec!["merge", "--method", "soup", s(&dirs[1])], vec!["unknown merge method"]),
    ];
    for (mut args, wants) in cases {
        args.extend(["--out", s(&out), "--device", "cpu"]);
        let (ok, _, err) = lt(&args);
        assert!(!ok, "{args:?} succeeded");
        for w in wants {
            assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
        }
        assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "old", "{args:?} touched the output");
        assert!(!out.join("model.safetensors").exists());
    }
}

fn delta(t: &NamedTensors, module: &str, scaling: f32) -> Vec<f32> {
    let a = &t.tensors[&format!("{module}.lora_A.weight")];
    let b = &t.tensors[&format!("{module}.lora_B.weight")];
    let (out_d, r, in_d) = (b.shape[0], a.shape[0], a.shape[1]);
    let mut d = vec![0.0f32; out_d * in_d];
    for o in 0..out_d {
        for k in 0..r {
            for i in 0..in_d {
                d[o * in_d + i] += scaling * b.data[o * r + k] * a.data[k * in_d + i];
            }
        }
    }
    d
}

#[test]
fn lora_adapters_merge_exactly_in_delta_w_space() {
    let root = tmp("lora");
    // A second adapter: the reference one with B halved (ΔW halved).
    let second = root.join("half");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::copy(format!("{FIXTURE}/adapter_config.json"), second.join("adapter_config.json")).unwrap();
    let mut t = NamedTensors::load(&Path::new(FIXTURE).join("adapter_model.safetensors")).unwrap();
    for (k, v) in t.tensors.iter_mut() {
        if k.ends_with("lora_B.weight") {
            v.data.iter_mut().for_each(|x| *x *= 0.5);
        }
    }
    std::fs::write(second.join("adapter_model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
    let reference = NamedTensors::load(&Path::new(FIXTURE).join("adapter_model.safetensors")).unwrap();
    let module = "base_model.model.bert.encoder.layer.2.attention.self.value";
    // (ΔW + ΔW/2) / 2 = 0.75 ΔW, the reference scaling being alpha / r = 2.
    let want: Vec<f32> = delta(&reference, module, 2.0).iter().map(|v| v * 0.75).collect();
    for (output, extra) in [("cat", vec![]), ("svd", vec!["--rank", "4"])] {
        let out = root.join(output);
        let mut args = vec![
            "merge",
            "--method",
            "linear",
            FIXTURE,
            s(&second),
            "--out",
            s(&out),
            "--lora-output",
            output,
            "--device",
            "cpu",
            "--json",
        ];
        args.extend(extra);
        let (ok, stdout, err) = lt(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let merged = NamedTensors::load(&out.join("adapter_model.safetensors")).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
        let (r, alpha) = (cfg["r"].as_f64().unwrap(), cfg["lora_alpha"].as_f64().unwrap());
        assert_eq!(r, if output == "cat" { 8.0 } else { 4.0 });
        assert_close(&format!("{output} ΔW"), &delta(&merged, module, (alpha / r) as f32), &want, 1e-6, 1e-4);
        if output == "svd" {
            // Both updates span the same rank-4 space: the truncation loses nothing.
            assert!(v["svd_relative_error_max"].as_f64().unwrap() < 1e-5, "{v}");
        }
        assert_eq!(v["heads"], "merged");
    }
}

#[test]
fn a_folded_adapter_gives_the_logits_peft_gave() {
    let Some(model) = model_dir() else { return };
    let root = tmp("fold");
    let out = root.join("folded");
    let (ok, _, err) = lt(&["fold", "--adapter", FIXTURE, "--model", s(&model), "--out", s(&out)]);
    assert!(ok, "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    let bytes = std::fs::read(format!("{FIXTURE}/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = fixture_ids(&st, "input_ids");
    let mask = fixture_ids(&st, "attention_mask");
    let types = fixture_ids(&st, "token_type_ids");
    let (b, t) = (4, ids.len() / 4);
    let folded = NamedTensors::load(&out.join("model.safetensors")).unwrap();
    assert!(folded.tensors.keys().all(|k| k.starts_with("bert.") || k.starts_with("classifier.")));
    for dev in devices() {
        // The folded weights alone, no adapter: the classifier read from the folder.
        let m = Model::load(&out, &dev).unwrap();
        let mut head = Adapted::init(&m.encoder, &Method::Head(HeadOnly {}), 2, 0).unwrap();
        let (w, bias) = head.classifier;
        let cw = &folded.tensors["classifier.weight"];
        let cb = &folded.tensors["classifier.bias"];
        head.params.set(w, dev.tensor(&cw.data, &cw.shape).unwrap()).unwrap();
        head.params.set(bias, dev.tensor(&cb.data, &cb.shape).unwrap()).unwrap();
        let inputs = Inputs::new(&dev, &ids, &mask, &types, b, t).unwrap();
        let clf = Classifier { base: &m.encoder, params: &head, head: HeadKind::Pooler };
        let (logits, _) = clf.forward(&inputs, None, false).unwrap();
        assert_close(
            &format!("{} folded logits", dev.describe()),
            &host(&logits),
            &fixture_f32(&st, "logits_adapter"),
            1e-4,
            0.0,
        );
    }
    // transformers itself loads the folder as a BERT classifier, where the reference tools are installed
    // (scripts/make-arch-fixtures.sh makes that environment; a fresh CI machine does not have torch).
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/ref-venv/bin/python");
    if !py.exists() {
        eprintln!("skipping the transformers check: no {}", py.display());
        return;
    }
    let script = format!(
        "import torch, json, safetensors.torch as st\nfrom transformers import AutoModelForSequenceClassification\n\
         m = AutoModelForSequenceClassification.from_pretrained('{}', attn_implementation='eager').eval()\n\
         e = st.load_file('{FIXTURE}/expected.safetensors')\n\
         with torch.no_grad():\n    l = m(input_ids=e['input_ids'], attention_mask=e['attention_mask'], token_type_ids=e['token_type_ids']).logits\n\
         print(json.dumps({{'max_abs_diff': float((l - e['logits_adapter']).abs().max())}}))\n",
        out.display()
    );
    let r = Command::new(&py).args(["-c", &script]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim().lines().last().unwrap()).unwrap();
    assert!(v["max_abs_diff"].as_f64().unwrap() < 1e-4, "transformers on the folded folder: {v}");
}

#[test]
fn the_expected_fisher_of_the_head_bias_is_p_times_one_minus_p() {
    // ∂ log p_y / ∂b_c = [y = c] − p_c, so Σ_y p_y (∂ log p_y / ∂b_c)² = p_c (1 − p_c): checked against
    // the probabilities `predict` prints for the same texts.
    let Some(model) = model_dir() else { return };
    let root = tmp("fisher");
    let texts = ["The food was great", "Terrible service, never again.", "It was fine I guess", "Loved every minute"];
    let data = root.join("data.jsonl");
    std::fs::write(
        &data,
        texts.iter().map(|t| format!("{{\"text\": \"{t}\", \"label\": \"positive\"}}\n")).collect::<String>(),
    )
    .unwrap();
    let f = root.join("fisher.safetensors");
    let (ok, _, err) = lt(&[
        "fisher",
        "--adapter",
        FIXTURE,
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&f),
        "--include-head",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let fisher = NamedTensors::load(&f).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(["predict", "--adapter", FIXTURE, "--model", s(&model), "--device", "cpu", "--max-len", "64"])
        .stdin(
            std::fs::File::open({
                let p = root.join("texts.txt");
                std::fs::write(&p, texts.join("\n")).unwrap();
                p
            })
            .unwrap(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut want = [0.0f32; 2];
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let z: Vec<f64> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let p1 = 1.0 / (1.0 + (z[0] - z[1]).exp());
        for (c, p) in [(0, 1.0 - p1), (1, p1)] {
            want[c] += (p * (1.0 - p) / texts.len() as f64) as f32;
        }
    }
    assert_close("classifier bias Fisher", &fisher.tensors["base_model.model.classifier.bias"].data, &want, 1e-6, 1e-4);
    // Every LoRA tensor has a non-negative Fisher of its own shape, and some of it is non-zero.
    let adapter = NamedTensors::load(&Path::new(FIXTURE).join("adapter_model.safetensors")).unwrap();
    for (k, t) in &adapter.tensors {
        let f = &fisher.tensors[k];
        assert_eq!(f.shape, t.shape, "{k}");
        assert!(f.data.iter().all(|v| *v >= 0.0) && f.data.iter().any(|v| *v > 0.0), "{k}");
    }
    // Fisher-merging the adapter with itself gives it back.
    let merged = root.join("merged");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "fisher",
        FIXTURE,
        FIXTURE,
        "--fishers",
        s(&f),
        s(&f),
        "--out",
        s(&merged),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let m = NamedTensors::load(&merged.join("adapter_model.safetensors")).unwrap();
    for (k, t) in &adapter.tensors {
        assert_close(k, &m.tensors[k].data, &t.data, 1e-6, 1e-5);
    }
}

/// Solves A x = b (n × n, dense, f64) by Gaussian elimination with partial pivoting.
fn gauss(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, m: usize) -> Vec<f64> {
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap();
        for k in 0..n {
            a.swap(col * n + k, piv * n + k);
        }
        for k in 0..m {
            b.swap(col * m + k, piv * m + k);
        }
        for row in 0..n {
            if row != col {
                let f = a[row * n + col] / a[col * n + col];
                for k in 0..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
                for k in 0..m {
                    b[row * m + k] -= f * b[col * m + k];
                }
            }
        }
    }
    (0..n * m).map(|i| b[i] / a[(i / m) * n + i / m]).collect()
}

#[test]
fn regmean_solves_for_the_linear_weights_and_averages_the_rest() {
    let root = tmp("regmean");
    let dirs = tiny_family(&root);
    let texts = [
        ["the cat sat on the mat", "a dog ran", "hello world again"],
        ["quick brown fox", "lazy dog sleeps all day", "one two three"],
    ];
    let mut data = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let p = root.join(format!("data{i}.jsonl"));
        std::fs::write(&p, t.iter().map(|x| format!("{{\"text\": \"{x}\", \"label\": \"a\"}}\n")).collect::<String>())
            .unwrap();
        data.push(p);
    }
    let out = root.join("merged");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "regmean",
        s(&dirs[1]),
        s(&dirs[2]),
        "--regmean-data",
        s(&data[0]),
        s(&data[1]),
        "--alpha",
        "0.5",
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let merged = NamedTensors::load(&out.join("model.safetensors")).unwrap();
    // The reference: Gram matrices of layer 1's input (hidden_states[1]) for its query weight.
    let name = "encoder.layer.1.attention.self.query.weight";
    let mut g_sum: Option<Vec<f64>> = None;
    let mut r: Option<Vec<f64>> = None;
    for (i, dir) in dirs[1..].iter().enumerate() {
        let m = Model::load(dir, &localtune::Device::Cpu).unwrap();
        let c = m.encoder.config.hidden_size;
        let mut g = vec![0.0f64; c * c];
        for t in texts[i] {
            let enc = m.encode(&[t], 64).unwrap();
            let (_, _, states) =
                localtune::model::encoder::Hooks::none(|h| m.encoder.encode(&enc.inputs, h, None, false, true))
                    .unwrap();
            let x = host(&states[1]);
            for row in x.chunks(c) {
                for a in 0..c {
                    for b in 0..c {
                        g[a * c + b] += row[a] as f64 * row[b] as f64;
                    }
                }
            }
        }
        for a in 0..c {
            for b in 0..c {
                if a != b {
                    g[a * c + b] *= 0.5;
                }
            }
        }
        let w = &NamedTensors::load(&dir.join("model.safetensors")).unwrap().tensors[name];
        let out_d = w.shape[0];
        let gs = g_sum.get_or_insert(vec![0.0; c * c]);
        gs.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
        let rr = r.get_or_insert(vec![0.0; c * out_d]);
        for a in 0..c {
            for o in 0..out_d {
                rr[a * out_d + o] += (0..c).map(|b| g[a * c + b] * w.data[o * c + b] as f64).sum::<f64>();
            }
        }
    }
    let c = merged.tensors[name].shape[1];
    let out_d = merged.tensors[name].shape[0];
    let x = gauss(g_sum.unwrap(), r.unwrap(), c, out_d);
    let want: Vec<f32> = (0..out_d * c).map(|i| x[(i % c) * out_d + i / c] as f32).collect();
    assert_close("RegMean query weight", &merged.tensors[name].data, &want, 1e-4, 1e-3);
    // A LayerNorm weight is the plain average.
    let ln = "encoder.layer.1.output.LayerNorm.weight";
    let a = NamedTensors::load(&dirs[1].join("model.safetensors")).unwrap();
    let b = NamedTensors::load(&dirs[2].join("model.safetensors")).unwrap();
    let avg: Vec<f32> = a.tensors[ln].data.iter().zip(&b.tensors[ln].data).map(|(x, y)| (x + y) / 2.0).collect();
    assert_close(ln, &merged.tensors[ln].data, &avg, 1e-6, 1e-6);
    // And it differs from the average where the data says so.
    let q_avg: Vec<f32> = a.tensors[name].data.iter().zip(&b.tensors[name].data).map(|(x, y)| (x + y) / 2.0).collect();
    let diff = merged.tensors[name].data.iter().zip(&q_avg).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "RegMean gave the plain average (max diff {diff})");
}

/// Trains a full fine-tune of the tiny model at `model` on a few labelled phrases.
fn train_full(model: &Path, root: &Path, name: &str, seed: &str) -> PathBuf {
    let data = root.join("phrases.jsonl");
    if !data.exists() {
        let mut rows = String::new();
        for (i, (p, n)) in [("good", "bad"), ("great fun", "awful mess"), ("i love it", "i hate it")].iter().enumerate()
        {
            rows += &format!(
                "{{\"text\": \"{p} {i}\", \"label\": \"pos\"}}\n{{\"text\": \"{n} {i}\", \"label\": \"neg\"}}\n"
            );
        }
        std::fs::write(&data, rows).unwrap();
    }
    let out = root.join(name);
    let (ok, _, err) = lt(&[
        "train",
        "--model",
        s(model),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--device",
        "cpu",
        "--method",
        "full",
        "--epochs",
        "2",
        "--batch",
        "3",
        "--max-len",
        "16",
        "--valid-fraction",
        "0",
        "--lr",
        "1e-2",
        "--seed",
        seed,
    ]);
    assert!(ok, "train full: {err}");
    out
}

/// Where a BertForSequenceClassification folder holds an adapter key's tensor.
fn folder_key(k: &str) -> String {
    let n = k.strip_prefix("base_model.model.").unwrap();
    if n.starts_with("bert.") || n.starts_with("classifier.") {
        n.to_string()
    } else {
        format!("bert.{n}")
    }
}

#[test]
fn full_fine_tunes_merge_as_task_vectors_of_the_base_and_fold() {
    let root = tmp("full");
    let model = root.join("tiny");
    assert!(lt(&["tiny-model", "--out", s(&model), "--seed", "3"]).0);
    let (a, b) = (train_full(&model, &root, "a", "0"), train_full(&model, &root, "b", "1"));
    let base = NamedTensors::load(&model.join("model.safetensors")).unwrap();
    let ta = NamedTensors::load(&a.join("adapter_model.safetensors")).unwrap();
    let tb = NamedTensors::load(&b.join("adapter_model.safetensors")).unwrap();
    let body =
        |k: &str| k.strip_prefix("base_model.model.").filter(|n| !n.starts_with("classifier.")).map(str::to_string);
    // The base's tensor an adapter key trains: the checkpoint may or may not carry the `bert.` prefix.
    let base_of = |n: &str| {
        base.tensors.get(n).or_else(|| base.tensors.get(n.split_once('.').unwrap().1)).unwrap_or_else(|| panic!("{n}"))
    };
    assert!(ta.tensors.keys().filter_map(|k| body(k)).count() == base.tensors.len(), "every base weight trains");

    // Task arithmetic: θ0 + λ Σ wᵢ (θᵢ − θ0), computed here from the three files.
    let out = root.join("ta");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "task-arithmetic",
        "--base",
        s(&model),
        s(&a),
        s(&b),
        "--weights",
        "0.6,0.4",
        "--lambda",
        "0.8",
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let m = NamedTensors::load(&out.join("adapter_model.safetensors")).unwrap();
    for (k, x) in &ta.tensors {
        let Some(n) = body(k) else { continue };
        let t0 = &base_of(&n).data;
        let want: Vec<f32> = (0..x.data.len())
            .map(|i| t0[i] + 0.8 * (0.6 * (x.data[i] - t0[i]) + 0.4 * (tb.tensors[k].data[i] - t0[i])))
            .collect();
        assert_close(k, &m.tensors[k].data, &want, 1e-6, 1e-5);
    }
    // Without the base's weights, a task-vector merge is refused rather than merged over zeros, and
    // nothing is written.
    let refused = root.join("x");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "ties",
        "--base",
        s(&root.join("missing")),
        s(&a),
        s(&b),
        "--out",
        s(&refused),
        "--device",
        "cpu",
    ]);
    assert!(!ok && !refused.exists(), "{err}");

    // TIES and SLERP on both devices, agreeing; the TIES result as a standalone model folder equals the
    // adapter output's body.
    let mut outs = Vec::new();
    for dev in ["cpu", "gpu"] {
        if dev == "gpu" && gpu().is_none() {
            continue;
        }
        for method in ["ties", "slerp"] {
            let out = root.join(format!("{method}-{dev}"));
            let (ok, _, err) = lt(&[
                "merge",
                "--method",
                method,
                "--base",
                s(&model),
                s(&a),
                s(&b),
                "--density",
                "0.5",
                "--out",
                s(&out),
                "--device",
                dev,
            ]);
            assert!(ok, "{method} on {dev}: {err}");
            outs.push((method, dev, NamedTensors::load(&out.join("adapter_model.safetensors")).unwrap()));
        }
    }
    for (method, dev, t) in &outs {
        let moved = ta
            .tensors
            .keys()
            .filter_map(|k| body(k).map(|n| (k, n)))
            .any(|(k, n)| t.tensors[k].data != base_of(&n).data);
        assert!(moved, "{method} on {dev} returned the base");
        let (_, _, c) = outs.iter().find(|(m2, d2, _)| m2 == method && *d2 == "cpu").unwrap();
        for (k, v) in &t.tensors {
            assert_close(&format!("{method} {k} {dev} vs cpu"), &v.data, &c.tensors[k].data, 1e-5, 1e-4);
        }
    }
    let folder = root.join("ties-folder");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "ties",
        "--base",
        s(&model),
        s(&a),
        s(&b),
        "--density",
        "0.5",
        "--out",
        s(&folder),
        "--lora-output",
        "full",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let f = NamedTensors::load(&folder.join("model.safetensors")).unwrap();
    let ties = &outs[0].2;
    for (k, v) in &ties.tensors {
        let key = folder_key(k);
        assert_close(&format!("folder {key}"), &f.tensors[&key].data, &v.data, 1e-6, 1e-6);
    }

    // Folding one full fine-tune gives a folder holding exactly its weights.
    let folded = root.join("folded");
    let (ok, _, err) = lt(&["fold", "--adapter", s(&a), "--model", s(&model), "--out", s(&folded)]);
    assert!(ok, "{err}");
    let f = NamedTensors::load(&folded.join("model.safetensors")).unwrap();
    for (k, v) in &ta.tensors {
        let key = folder_key(k);
        assert_close(&format!("folded {key}"), &f.tensors[&key].data, &v.data, 1e-6, 1e-6);
    }

    // Fisher: the diagonal of every trained weight, and a Fisher merge of an adapter with itself
    // gives it back.
    let fisher = root.join("fisher.safetensors");
    let (ok, _, err) = lt(&[
        "fisher",
        "--adapter",
        s(&a),
        "--model",
        s(&model),
        "--data",
        s(&root.join("phrases.jsonl")),
        "--out",
        s(&fisher),
        "--device",
        "cpu",
        "--max-len",
        "16",
    ]);
    assert!(ok, "{err}");
    let fi = NamedTensors::load(&fisher).unwrap();
    assert!(fi.tensors.values().all(|t| t.data.iter().all(|v| *v >= 0.0)));
    assert!(fi.tensors.len() >= base.tensors.len(), "{} Fishers", fi.tensors.len());
    let merged = root.join("fisher-merged");
    let (ok, _, err) = lt(&[
        "merge",
        "--method",
        "fisher",
        s(&a),
        s(&a),
        "--fishers",
        s(&fisher),
        s(&fisher),
        "--out",
        s(&merged),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let m = NamedTensors::load(&merged.join("adapter_model.safetensors")).unwrap();
    for (k, t) in &ta.tensors {
        assert_close(k, &m.tensors[k].data, &t.data, 1e-6, 1e-5);
    }
}
