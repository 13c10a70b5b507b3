//! Bad settings and data are refused before the work starts, and labels and adapter files mean one
//! thing each (issue 15, items 4–6): each test reproduces what used to go wrong.

mod common;

use localtune::model::weights::NamedTensors;
use localtune::peft::format::AdapterFiles;
use localtune::train::Dataset;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("localtune-checked-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_model(dir: &Path) {
    common::write_tiny_model(dir, 2);
}

fn localtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_localtune")).args(args).stdin(std::process::Stdio::null()).output().unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = localtune(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "localtune {args:?} should have failed: {err}");
    err
}

const DATA: &str =
    "text,label\ngood film,pos\nbad film,neg\ngreat food,pos\nawful food,neg\nnice place,pos\npoor place,neg\n";

#[test]
fn settings_that_cannot_run_are_refused_before_training() {
    let d = tmp("settings");
    let m = d.join("m");
    tiny_model(&m);
    std::fs::write(d.join("d.csv"), DATA).unwrap();
    let (ms, ds, out) = (m.to_str().unwrap(), d.join("d.csv"), d.join("out"));
    let base = ["train", "--model", ms, "--data", ds.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let run = |extra: &[&str]| fails(&[&base[..], &["--device", "cpu", "--max-len", "16"], extra].concat());
    // A missing --eval file was found only after the training it follows.
    let e = run(&["--eval", d.join("nope.csv").to_str().unwrap()]);
    assert!(e.contains("nope.csv") && !e.contains("adapter written"), "{e}");
    // An eval file with a label the training data lacks, likewise.
    std::fs::write(d.join("e.csv"), "text,label\nok,maybe\n").unwrap();
    let e = run(&["--eval", d.join("e.csv").to_str().unwrap()]);
    assert!(
        e.contains("e.csv:2") && e.contains("label `maybe` was not seen in training") && !e.contains("written"),
        "{e}"
    );
    // A rank larger than the target's dimensions (--r 100000 ran out of memory).
    let e = run(&["--method", "lora", "--r", "100000"]);
    assert!(e.contains("LoRA rank r=100000") && e.contains("at most 16"), "{e}");
    // An epoch count that overflows the step count (it panicked in trainer.rs).
    let e = run(&["--epochs", "18446744073709551615"]);
    assert!(e.contains("epochs 18446744073709551615") && !e.contains("panicked"), "{e}");
    let e = run(&["--method", "prefix", "--prefix-length", "1000000"]);
    assert!(e.contains("prefix length 1000000"), "{e}");
    assert!(!out.join("adapter_model.safetensors").exists());
    // Resuming with other settings was silently ignored: now refused, naming each.
    let ok =
        localtune(&[&base[..], &["--device", "cpu", "--max-len", "16", "--save-every", "1", "--epochs", "2"]].concat());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let ck = out.join("checkpoint");
    let again = |extra: &[&str]| {
        let o = d.join("out2");
        fails(
            &[
                &["train", "--model", ms, "--data", ds.to_str().unwrap(), "--out", o.to_str().unwrap()][..],
                &["--device", "cpu", "--max-len", "16", "--resume", ck.to_str().unwrap()],
                extra,
            ]
            .concat(),
        )
    };
    let e = again(&["--epochs", "2", "--lr", "0.05"]);
    assert!(e.contains("--lr 0.001 (asked: 0.05)") && e.contains("resume with the settings"), "{e}");
    let e = again(&["--epochs", "4"]);
    assert!(e.contains("--epochs 2 (asked: 4)"), "{e}");
    let e = again(&["--epochs", "2", "--method", "ia3"]);
    assert!(e.contains("--method lora (asked: ia3)"), "{e}");
    let e = again(&["--epochs", "2", "--r", "4"]);
    assert!(e.contains("lora `r` 8 (asked: 4)"), "{e}");
    let resumed = localtune(
        &[
            &["train", "--model", ms, "--data", ds.to_str().unwrap(), "--out", d.join("out3").to_str().unwrap()][..],
            &["--device", "cpu", "--max-len", "16", "--epochs", "2", "--resume", ck.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(resumed.status.success(), "the same settings resume: {}", String::from_utf8_lossy(&resumed.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn numeric_labels_are_one_class_each_and_ordered_by_value() {
    // They sorted as strings (0, 1, 10, 11, 2) and `1` / `1.0` were two classes.
    let rows: String = ["0", "1", "2", "10", "11", "1.0", "2e0", " 10 "]
        .iter()
        .enumerate()
        .map(|(i, l)| format!("t{i},{l}\n"))
        .collect();
    let ds = Dataset::parse(format!("text,label\n{rows}").as_bytes(), "n.csv", false).unwrap();
    assert_eq!(ds.labels(), ["0", "1", "2", "10", "11"]);
    assert_eq!(ds.examples[5].label, "1");
    let ds = Dataset::parse(b"{\"text\":\"a\",\"label\":1.0}\n{\"text\":\"b\",\"label\":1}\n{\"text\":\"c\",\"label\":-3}\n{\"text\":\"d\",\"label\":0.5}\n", "n.jsonl", false).unwrap();
    assert_eq!(ds.labels(), ["-3", "0.5", "1"]);
    // Text labels, and a mix, stay text, sorted as text.
    let ds = Dataset::parse(b"text,label\na,10\nb,2\nc,x\n", "m.csv", false).unwrap();
    assert_eq!(ds.labels(), ["10", "2", "x"]);
    let ds = Dataset::parse(b"text,label\na,007\nb,pos\n", "z.csv", false).unwrap();
    assert_eq!(ds.examples[0].label, "007", "a label in a text column keeps its spelling");
    // Codes written with leading zeros or a sign are not numbers: kept as written, as text.
    let ds = Dataset::parse(b"text,label\na,007\nb,010\nc,+1\n", "z.csv", false).unwrap();
    assert_eq!(ds.labels(), ["+1", "007", "010"]);
    // Integers beyond 2^53 would round into one class: such a file stays text.
    let ds = Dataset::parse(b"text,label\na,9007199254740993\nb,9007199254740992\n", "b.csv", false).unwrap();
    assert_eq!(ds.labels().len(), 2);
    // An adapter trained before normalisation knows `0.0` and `1.0`: a file saying `1` still matches.
    let ds = Dataset::parse(b"text,label\na,1\nb,0\n", "e.csv", false).unwrap();
    assert_eq!(ds.label_ids(&["0.0".into(), "1.0".into()]).unwrap(), [1, 0]);
}

#[test]
fn the_split_that_lacks_a_second_label_is_named() {
    let rows: String = (0..10).map(|i| format!("t{i},{}\n", if i < 9 { "a" } else { "b" })).collect();
    let ds = Dataset::parse(format!("text,label\n{rows}").as_bytes(), "one.csv", false).unwrap();
    // Find a seed that holds the only `b` out for validation.
    let (seed, (tr, va)) =
        (0..100).map(|s| (s, ds.split(0.1, s).unwrap())).find(|(_, (tr, _))| tr.labels().len() == 1).unwrap();
    let e = ds.training_labels(&tr, &va).unwrap_err().to_string();
    assert!(e.starts_with("one.csv: the training split (9 rows, 1 held out for validation)"), "seed {seed}: {e}");
    assert!(e.contains("only label `a`, where the file has `a`, `b`") && e.contains("hold out less"), "{e}");
    let ds = Dataset::parse(b"text,label\nx,a\ny,a\n", "same.csv", false).unwrap();
    let (tr, va) = ds.split(0.0, 0).unwrap();
    let e = ds.training_labels(&tr, &va).unwrap_err().to_string();
    assert!(e.contains("same.csv: needs at least 2 distinct labels, found `a`"), "{e}");
}

#[test]
fn row_errors_quote_short_excerpts_and_tensors_say_their_dtype() {
    // A 5 MB label that training never saw: quoted in 40 characters, not 5 MB.
    let big = "y".repeat(5_000_000);
    let ds = Dataset::parse(format!("text,label\nok,{big}\n").as_bytes(), "big.csv", false).unwrap();
    let e = ds.label_ids(&["a".into(), "b".into()]).unwrap_err().to_string();
    assert!(
        e.len() < 200 && e.contains("big.csv:2") && e.contains("…"),
        "{} bytes: {}",
        e.len(),
        &e[..200.min(e.len())]
    );
    // A chat line with a 5 MB role: the error quotes 40 characters of it.
    let d = tmp("excerpt");
    let (gguf, chats) = (d.join("t.gguf"), d.join("c.jsonl"));
    assert!(localtune(&["tiny-llama", "--out", gguf.to_str().unwrap()]).status.success());
    std::fs::write(&chats, format!("{{\"messages\": [{{\"role\": \"{big}\", \"content\": \"x\"}}]}}\n")).unwrap();
    let args = ["train", "--task", "causal-lm", "--model", gguf.to_str().unwrap(), "--data", chats.to_str().unwrap()];
    let e = fails(&[&args[..], &["--out", d.join("o").to_str().unwrap(), "--device", "cpu"]].concat());
    assert!(e.len() < 400 && e.contains("c.jsonl") && e.contains("has role `yyy"), "{} bytes", e.len());
    std::fs::remove_dir_all(&d).unwrap();
    // An I32 tensor where floats are expected was reported as missing.
    let mut raw = vec![];
    let header = br#"{"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
    raw.extend_from_slice(&(header.len() as u64).to_le_bytes());
    raw.extend_from_slice(header);
    raw.extend_from_slice(&[0u8; 8]);
    let mut t = NamedTensors::from_bytes(&raw, "w.safetensors").unwrap();
    let e = t.take("w", &[2]).unwrap_err().to_string();
    assert!(e.contains("w.safetensors: tensor `w`: is stored as I32"), "{e}");
    let e = t.take("v", &[2]).unwrap_err().to_string();
    assert!(e.contains("tensor `v`: missing"), "{e}");
}

#[test]
fn adapter_files_that_disagree_are_refused_naming_both() {
    let d = tmp("disagree");
    let m = d.join("m");
    tiny_model(&m);
    std::fs::write(d.join("d.csv"), DATA).unwrap();
    let a = d.join("a");
    let o = localtune(&[
        "train",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.join("d.csv").to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-len",
        "16",
        "--epochs",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    AdapterFiles::load(&a).unwrap();
    let config = std::fs::read_to_string(a.join("adapter_config.json")).unwrap();
    let edit = |from: &str, to: &str| {
        assert!(config.contains(from), "{from} not in {config}");
        std::fs::write(a.join("adapter_config.json"), config.replace(from, to)).unwrap();
    };
    for (from, to, says) in [
        ("\"r\": 8", "\"r\": 4", "`r` 4 where"),
        ("\"lora_alpha\": 16.0", "\"lora_alpha\": 32.0", "`lora_alpha` 32.0 where"),
        ("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "`peft_type` \"IA3\" where"),
    ] {
        edit(from, to);
        let e = AdapterFiles::load(&a).err().unwrap_or_else(|| panic!("{to} was accepted")).to_string();
        assert!(e.contains("adapter_config.json: disagrees with") && e.contains("localtune.json"), "{e}");
        assert!(e.contains(says), "{e}");
        // predict, which exited 0 on such a folder, now fails.
        let err =
            fails(&["predict", "--model", m.to_str().unwrap(), "--adapter", a.to_str().unwrap(), "--device", "cpu"]);
        assert!(err.contains("disagrees with"), "{err}");
    }
    // Without localtune.json (a PEFT folder), a config whose r is not the tensors' rank.
    edit("\"r\": 8", "\"r\": 4");
    std::fs::remove_file(a.join("localtune.json")).unwrap();
    let e = AdapterFiles::load(&a).err().unwrap().to_string();
    assert!(e.contains("adapter_model.safetensors: tensor") && e.contains("has shape [8, 16]"), "{e}");
    assert!(e.contains("not of rank 4 as") && e.contains("adapter_config.json says"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
