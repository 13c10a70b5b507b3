//! Multi-source transfer: LogME, LEEP and NCE against the numpy reference
//! (tests/fixtures/transfer, made by scripts/make-transfer-fixtures.sh), the greedy team and Kendall's
//! τ on cases worked by hand, and the commands — `train --method scalearn …`, `rank-sources`,
//! `distill` — run as a user would on a tiny model, with the bad sources they must refuse without
//! writing anything.

mod common;

use localtune::model::weights::NamedTensors;
use localtune::transfer::{self, distill, Score, SourceOutputs};
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transfer/scores.json");

#[test]
fn scores_match_the_numpy_reference() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (n, d, k, cs) = (u("n"), u("d"), u("classes"), u("source_classes"));
        let f32s =
            |k: &str| -> Vec<f32> { c[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
        let labels: Vec<u32> = c["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let o = SourceOutputs { features: f32s("features"), dim: d, probs: f32s("probs"), classes: cs };
        assert_eq!(o.len(), n);
        let what = format!("case n {n}, d {d}, {k} classes, {cs} source classes");
        let want = |s: &str| c[s].as_f64().unwrap();
        let got = transfer::all_scores(&o, &labels, k).unwrap();
        assert!((got[0] - want("logme")).abs() < 1e-5, "{what}: LogME {} vs numpy {}", got[0], want("logme"));
        assert!((got[1] - want("leep")).abs() < 1e-6, "{what}: LEEP {} vs numpy {}", got[1], want("leep"));
        assert!((got[2] - want("nce")).abs() < 1e-9, "{what}: NCE {} vs numpy {}", got[2], want("nce"));
    }
}

#[test]
fn greedy_team_starts_from_the_best_source_and_kendall_tau_counts_pairs() {
    // Source 0's features carry the label, source 1's are noise: LogME ranks 0 first.
    let mut r = common::Rng(5);
    let n = 80;
    let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let mk = |signal: f32, r: &mut common::Rng| SourceOutputs {
        features: (0..n * 4)
            .map(|i| r.vec(1, 1.0)[0] + if i % 4 == 0 { signal * (labels[i / 4] as f32 * 2.0 - 1.0) } else { 0.0 })
            .collect(),
        dim: 4,
        probs: (0..n)
            .flat_map(|i| if labels[i] == 1 { [0.2 - signal * 0.1, 0.8 + signal * 0.1] } else { [0.5, 0.5] })
            .collect(),
        classes: 2,
    };
    let outs = vec![mk(0.0, &mut r), mk(2.0, &mut r), mk(0.1, &mut r)];
    let team = transfer::greedy_ensemble(Score::LogMe, &outs, &labels, 2, 2).unwrap();
    assert_eq!(team[0].0, 1, "{team:?}");
    let single = transfer::score(Score::LogMe, &outs[1], &labels, 2).unwrap();
    assert!((team[0].1 - single).abs() < 1e-12);
    assert!(team.len() == 1 || team[1].1 > team[0].1, "a member is added only when it improves the team: {team:?}");
    assert_eq!(transfer::kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
    assert_eq!(transfer::kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
    // 5 concordant pairs, 1 discordant: (5 - 1) / 6.
    assert!((transfer::kendall_tau(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]) - 4.0 / 6.0).abs() < 1e-12);
}

#[test]
fn distillation_targets_weigh_teachers_and_map_label_spaces() {
    // Nearest: all weight on the best score; weighted: a softmax of standardised scores.
    assert_eq!(distill::weights(&[0.1, 0.3, 0.2], distill::Weighting::Nearest), vec![0.0, 1.0, 0.0]);
    let w = distill::weights(&[1.0, 3.0], distill::Weighting::Weighted);
    assert!((w[1] - 1.0f64.exp() / (1.0f64.exp() + (-1.0f64).exp())).abs() < 1e-12, "{w:?}");
    assert_eq!(distill::weights(&[2.0, 2.0], distill::Weighting::Weighted), vec![0.5, 0.5]);
    // Same label names in another order: used as they are, reordered.
    let t = ["neg".to_string(), "pos".to_string()];
    let same = distill::to_target_labels(&[0.9, 0.1], &["pos".into(), "neg".into()], &t, &[0], &[1]);
    assert_eq!(same, vec![0.1, 0.9]);
    // Another label space (3 source labels): through P(y | z) from the labelled rows.
    let probs = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let src: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mapped = distill::to_target_labels(&probs, &src, &t, &[0, 1, 2], &[1, 0, 0]);
    assert_eq!(mapped, vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    let q = distill::targets(&[vec![0.2, 0.8, 0.6, 0.4]], &[1.0], &[Some(0), None], 2, 0.5);
    assert_eq!(q, vec![0.6, 0.4, 0.6, 0.4]);
}

fn lt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_localtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("localtune-transfer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const POS: [&str; 6] = ["good", "great fun", "i love it", "wonderful day", "very good", "nice and great"];
const NEG: [&str; 6] = ["bad", "awful mess", "i hate it", "terrible day", "very bad", "sad and awful"];

fn data(dir: &Path) -> PathBuf {
    let p = dir.join("data.jsonl");
    let mut rows = String::new();
    for i in 0..4 {
        for (a, b) in POS.iter().zip(NEG) {
            rows += &format!(
                "{{\"text\": \"{a} {i}\", \"label\": \"pos\"}}\n{{\"text\": \"{b} {i}\", \"label\": \"neg\"}}\n"
            );
        }
    }
    std::fs::write(&p, rows).unwrap();
    p
}

/// `train` on the tiny model at `model` with `args`; panics with the output when it fails.
fn train(model: &Path, data: &Path, out: &Path, args: &[&str]) -> String {
    let mut a = vec!["train", "--model", s(model), "--data", s(data), "--out", s(out), "--device", "cpu"];
    a.extend_from_slice(&["--epochs", "2", "--batch", "8", "--max-len", "16", "--valid-fraction", "0.25"]);
    a.extend_from_slice(args);
    let (ok, o, e) = lt(&a);
    assert!(ok, "train {args:?}: {e}");
    o + &e
}

#[test]
fn scalearn_rank_and_distill_run_end_to_end_and_refuse_bad_sources() {
    let root = tmp("e2e");
    let model = root.join("tiny");
    assert!(lt(&["tiny-model", "--out", s(&model), "--seed", "3"]).0);
    let d = data(&root);
    let src = |n: &str| root.join(n);
    let pfeiffer =
        ["--method", "adapter", "--adapter-placement", "pfeiffer", "--reduction-factor", "4", "--lr", "1e-2"];
    train(&model, &d, &src("a"), &pfeiffer);
    train(&model, &d, &src("b"), &[&pfeiffer[..], &["--seed", "1"]].concat());
    train(&model, &d, &src("lora"), &["--method", "lora", "--lr", "1e-2"]);
    train(&model, &d, &src("houlsby"), &["--method", "adapter", "--reduction-factor", "4"]);

    // ScaLearn over the two adapters; its folder predicts on its own, as the run measured.
    let out = root.join("scalearn");
    let log = train(
        &model,
        &d,
        &out,
        &["--method", "scalearn", "--sources", s(&src("a")), s(&src("b")), "--eval", s(&d), "--json"],
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("localtune.json")).unwrap()).unwrap();
    assert_eq!(meta["method"], "scalearn");
    assert_eq!(meta["sources"].as_array().unwrap().len(), 2);
    let eval_line = log.lines().find(|l| l.contains("\"eval\"")).unwrap();
    let during: serde_json::Value = serde_json::from_str(eval_line).unwrap();
    let (ok, again, e) = lt(&[
        "eval",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--data",
        s(&d),
        "--device",
        "cpu",
        "--max-len",
        "16",
        "--json",
    ]);
    assert!(ok, "{e}");
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    let (l1, l2) = (during["metrics"]["loss"].as_f64().unwrap(), again["loss"].as_f64().unwrap());
    assert!((l1 - l2).abs() < 1e-5, "the saved folder gives loss {l2}, the run {l1}");
    // Its trainable values: ω of the hidden size per layer for two sources, and the head.
    let hidden = 16;
    let n: usize = log.split(" trainable values").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, 2 * 2 * hidden + (2 * hidden + 2), "{log}");
    // Each variant's count: scalar ω, shared ω.
    for (m, want) in [("scalearn-uniform", 2 * 2), ("scalearn++", 2 * hidden), ("scalearn-uniform++", 2)] {
        let o = root.join(m);
        let log = train(&model, &d, &o, &["--method", m, "--sources", s(&src("a")), s(&src("b"))]);
        assert!(log.contains(&format!(" {} trainable values", want + 2 * hidden + 2)), "{m}: {log}");
    }
    // LoRA sources, and resuming a ScaLearn run from its checkpoint (the sources travel in it).
    let lo = root.join("scalearn-lora");
    train(
        &model,
        &d,
        &lo,
        &["--method", "scalearn", "--sources", s(&src("lora")), s(&src("lora")), "--save-every", "1"],
    );
    let ck = lo.join("checkpoint");
    assert!(ck.join("trainer_state.json").exists());
    train(&model, &d, &lo, &["--method", "scalearn", "--resume", s(&ck)]);

    // Bad sources: refused with the source named, nothing written.
    let bad_out = root.join("never");
    let other = root.join("other-model");
    assert!(lt(&["tiny-model", "--out", s(&other), "--seed", "4"]).0);
    train(&other, &d, &src("foreign"), &pfeiffer);
    let holed = src("holed");
    std::fs::create_dir_all(&holed).unwrap();
    for f in ["adapter_config.json", "localtune.json"] {
        std::fs::copy(src("a").join(f), holed.join(f)).unwrap();
    }
    let mut t = NamedTensors::load(&src("a").join("adapter_model.safetensors")).unwrap();
    let key = t.tensors.keys().find(|k| k.contains("layer.1.") && k.ends_with("adapter.up.weight")).unwrap().clone();
    t.tensors.remove(&key);
    std::fs::write(holed.join("adapter_model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
    let p = |n: &str| root.join(n).display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec![], "at least one source".into()),
        (vec![p("a"), p("lora")], p("lora")),
        (vec![p("a"), p("houlsby")], p("houlsby")),
        (vec![p("a"), p("foreign")], format!("{}: this source was trained on base model", p("foreign"))),
        (vec![p("a"), p("holed")], key.clone()),
        (vec![p("missing")], p("missing")),
    ];
    for (sources, want) in cases {
        let mut a = vec!["train", "--model", s(&model), "--data", s(&d), "--out", s(&bad_out), "--device", "cpu"];
        a.extend_from_slice(&["--method", "scalearn", "--max-len", "16"]);
        if !sources.is_empty() {
            a.push("--sources");
            a.extend(sources.iter().map(|x| x.as_str()));
        }
        let (ok, _, e) = lt(&a);
        assert!(!ok && e.contains(&want), "sources {sources:?}: expected an error with `{want}`, got: {e}");
        assert!(!bad_out.exists(), "a refused run wrote {}", bad_out.display());
    }

    // rank-sources: every score finite, best first by the chosen one.
    let (ok, o, e) = lt(&[
        "rank-sources",
        "--model",
        s(&model),
        "--sources",
        s(&src("a")),
        s(&src("b")),
        s(&src("lora")),
        "--data",
        s(&d),
        "--device",
        "cpu",
        "--max-len",
        "16",
        "--ensemble",
        "2",
        "--json",
    ]);
    assert!(ok, "{e}");
    let r: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    let rows = r["sources"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for w in rows.windows(2) {
        assert!(w[0]["logme"].as_f64().unwrap() >= w[1]["logme"].as_f64().unwrap());
    }
    assert!(rows.iter().all(|x| ["logme", "leep", "nce"].iter().all(|k| x[k].as_f64().unwrap().is_finite())));
    assert_eq!(r["ensemble"][0]["source"], rows[0]["source"]);

    // distill: teachers weighed, a student adapter written that evaluates.
    let unl = root.join("unlabelled.txt");
    std::fs::write(&unl, "good fun\nawful\ngreat\nterrible\n").unwrap();
    for w in ["nearest", "weighted"] {
        let o = root.join(format!("distill-{w}"));
        let (ok, _, e) = lt(&[
            "distill",
            "--model",
            s(&model),
            "--data",
            s(&d),
            "--unlabelled",
            s(&unl),
            "--sources",
            s(&src("a")),
            s(&src("lora")),
            "--weighting",
            w,
            "--out",
            s(&o),
            "--device",
            "cpu",
            "--max-len",
            "16",
            "--epochs",
            "1",
        ]);
        assert!(ok, "distill {w}: {e}");
        let weights: Vec<f64> = e
            .lines()
            .filter_map(|l| {
                l.strip_prefix("teacher ").and_then(|l| l.rsplit("weight ").next()).and_then(|x| x.trim().parse().ok())
            })
            .collect();
        assert_eq!(weights.len(), 2, "{e}");
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 2e-3, "{e}");
        if w == "nearest" {
            assert!(weights.contains(&1.0), "{e}");
        }
        assert!(o.join("adapter_model.safetensors").exists());
    }
}
