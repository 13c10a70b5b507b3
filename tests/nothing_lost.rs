//! Saves that cannot leave a mix of old and new files, a lock per output folder, and learning rates
//! that cannot train refused up front, non-finite weights never saved, non-finite outputs never
//! printed (issue 15, items 1–3).

mod common;

use localtune::peft::format::{readable_folder, write_folder_atomic, AdapterFiles, OutputLock};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("localtune-nothing-lost-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn a_folder_save_swaps_the_whole_set_and_keeps_what_else_was_there() {
    let d = tmp("swap");
    let out = d.join("adapter");
    write_folder_atomic(&out, &[("adapter_config.json", b"old config".as_slice()), ("w.bin", b"old w")]).unwrap();
    std::fs::create_dir_all(out.join("checkpoint")).unwrap();
    std::fs::write(out.join("checkpoint/state"), b"ck").unwrap();
    std::fs::write(out.join("README.md"), b"mine").unwrap();
    write_folder_atomic(&out, &[("adapter_config.json", b"new config".as_slice()), ("w.bin", b"new w")]).unwrap();
    assert_eq!(std::fs::read(out.join("adapter_config.json")).unwrap(), b"new config");
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), b"new w");
    assert_eq!(std::fs::read(out.join("checkpoint/state")).unwrap(), b"ck");
    assert_eq!(std::fs::read(out.join("README.md")).unwrap(), b"mine");
    assert_eq!(names(&d), vec!["adapter"], "nothing left beside the folder");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_save_that_fails_halfway_leaves_the_old_folder_whole() {
    let d = tmp("half");
    let out = d.join("adapter");
    write_folder_atomic(&out, &[("adapter_config.json", b"r=8".as_slice()), ("w.bin", b"rank 8")]).unwrap();
    // The second file cannot be written (its folder does not exist): the first one was, in the new set.
    let e = write_folder_atomic(&out, &[("adapter_config.json", b"r=16".as_slice()), ("no/such/w.bin", b"rank 16")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("w.bin"), "{e}");
    assert_eq!(std::fs::read(out.join("adapter_config.json")).unwrap(), b"r=8");
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), b"rank 8");
    assert_eq!(names(&d), vec!["adapter"], "the half-written set is cleaned away");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_kill_between_the_two_renames_leaves_dot_old_which_is_read() {
    let d = tmp("kill");
    let out = d.join("checkpoint");
    write_folder_atomic(&out, &[("a", b"complete".as_slice())]).unwrap();
    // What a kill right after `DIR → DIR.old` leaves: no DIR, DIR.old whole, a new set half made.
    std::fs::rename(&out, d.join("checkpoint.old")).unwrap();
    std::fs::create_dir_all(d.join("checkpoint.tmp-1")).unwrap();
    let r = readable_folder(&out);
    assert_eq!(r, d.join("checkpoint.old"));
    assert_eq!(std::fs::read(r.join("a")).unwrap(), b"complete");
    // The next save puts DIR back and clears DIR.old.
    write_folder_atomic(&out, &[("a", b"newer".as_slice())]).unwrap();
    assert_eq!(readable_folder(&out), out);
    assert!(!d.join("checkpoint.old").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_adapter_is_read_from_dot_old_when_its_folder_is_gone() {
    // A real adapter (PEFT's fixture), left as only ADAPTER.old.
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft_lora"));
    let want = AdapterFiles::load(&src).unwrap();
    let d = tmp("adapter-old");
    let old = d.join("a.old");
    std::fs::create_dir_all(&old).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), old.join(e.file_name())).unwrap();
        }
    }
    let got = AdapterFiles::load(&d.join("a")).unwrap();
    assert_eq!(got.method, want.method);
    assert_eq!(got.tensors.tensors.len(), want.tensors.tensors.len());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_second_run_into_the_same_out_is_refused_while_the_first_lives() {
    let d = tmp("lock");
    let out = d.join("out");
    let first = OutputLock::take(&out).unwrap();
    let e = OutputLock::take(&out).err().unwrap().to_string();
    assert!(e.contains("another localtune run") && e.contains(&std::process::id().to_string()), "{e}");
    // The CLI refuses before any work, naming the holder.
    let (model, data) = (d.join("nomodel"), d.join("nodata.csv"));
    let o = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("another localtune run"), "{err}");
    drop(first);
    assert!(!d.join("out.lock").exists(), "the lock goes with its run");
    // A lock left by a run that was killed (its process is gone) is taken over.
    std::fs::write(d.join("out.lock"), "4194303").unwrap();
    if cfg!(target_os = "linux") && !Path::new("/proc/4194303").exists() {
        let again = OutputLock::take(&out).unwrap();
        drop(again);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn learning_rates_that_cannot_train_are_refused_up_front() {
    let d = tmp("lr");
    for lr in ["-1", "0", "nan", "inf"] {
        let o = Command::new(env!("CARGO_BIN_EXE_localtune"))
            .args(["train", "--data", "x.csv", "--out", d.join("o").to_str().unwrap(), &format!("--lr={lr}")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--lr") && err.contains("above 0"), "--lr {lr}: {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn nan_in_an_adapter_or_a_base_weight_is_refused_naming_the_tensor() {
    let fx = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft_lora"));
    let d = tmp("nan");
    let bad = d.join("adapter");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(fx.join("adapter_config.json"), bad.join("adapter_config.json")).unwrap();
    let raw = std::fs::read(fx.join("adapter_model.safetensors")).unwrap();
    let mut t = localtune::model::weights::NamedTensors::from_bytes(&raw, "x").unwrap();
    let name = t.tensors.keys().nth(1).unwrap().clone();
    t.tensors.get_mut(&name).unwrap().data[3] = f32::NAN;
    std::fs::write(bad.join("adapter_model.safetensors"), t.to_bytes(None).unwrap()).unwrap();
    let e = AdapterFiles::load(&bad).err().unwrap().to_string();
    assert!(e.contains(&name) && e.contains("NaN at index 3") && e.contains("the adapter"), "{e}");
    // The same through predict: a non-zero exit naming the tensor, no label printed.
    let o = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(["predict", "--adapter", bad.to_str().unwrap(), "--device", "cpu"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&name), "{err}");
    // A base model weight: reported as the model file's, not as a learning-rate problem.
    let f = localtune::model::tiny::tiny_files(1).unwrap();
    let mut w = localtune::model::weights::NamedTensors::from_bytes(&f.safetensors, "m").unwrap();
    let wname = w.tensors.keys().next().unwrap().clone();
    w.tensors.get_mut(&wname).unwrap().data[0] = f32::INFINITY;
    let e = localtune::model::Model::from_bytes(
        &f.config_json,
        &w.to_bytes(None).unwrap(),
        &f.tokenizer_json,
        "tiny",
        &localtune::Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(&wname) && e.contains("a base weight holds inf"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The tiny model's files with one base weight replaced by `f(weight)`.
fn tiny_model_with(dir: &Path, tensor: &str, f: impl Fn(f32) -> f32) {
    common::write_tiny_model(dir, 1);
    let weights = dir.join("model.safetensors");
    let mut w = localtune::model::weights::NamedTensors::from_bytes(&std::fs::read(&weights).unwrap(), "m").unwrap();
    let x = w.tensors.get_mut(tensor).unwrap_or_else(|| panic!("no {tensor}"));
    x.data.iter_mut().for_each(|v| *v = f(*v));
    std::fs::write(&weights, w.to_bytes(None).unwrap()).unwrap();
}

fn localtune(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn weights_that_are_not_finite_are_never_saved_over_a_good_folder() {
    let d = tmp("save-nan");
    let out = d.join("adapter");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("adapter_model.safetensors"), b"old weights").unwrap();
    let mut t = localtune::model::weights::NamedTensors::default();
    t.insert(
        "base_model.model.x.lora_A.weight",
        localtune::model::weights::HostTensor::new(vec![2], vec![1.0, f32::NAN]),
    );
    let bytes = t.to_bytes(None).unwrap();
    let e = write_folder_atomic(&out, &[("adapter_config.json", &b"{}"[..]), ("adapter_model.safetensors", &bytes)])
        .expect_err("NaN weights were saved")
        .to_string();
    assert!(e.contains("x.lora_A.weight") && e.contains("NaN at index 1") && e.contains("not saved"), "{e}");
    assert_eq!(names(&out), ["adapter_model.safetensors"]);
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).unwrap(), b"old weights");
    assert_eq!(names(&d), ["adapter"], "no temporary folder left behind");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn outputs_that_are_not_finite_fail_embed_eval_and_predict_naming_the_text() {
    // Finite weights so large that the forward overflows: the files load, the outputs are inf/NaN.
    let d = tmp("outputs");
    let m = d.join("model");
    tiny_model_with(&m, "embeddings.word_embeddings.weight", |v| if v >= 0.0 { 3e38 } else { -3e38 });
    let o = localtune(&["embed", "--model", m.to_str().unwrap(), "--device", "cpu"], "fine\nthe food was good\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("embedding of text 1 (\"fine\")") && err.contains("finite"), "{err}");
    assert!(o.stdout.is_empty(), "embed printed {}", String::from_utf8_lossy(&o.stdout));
    // A head trained on the sound tiny model, then its weights blown up (still finite).
    let good = d.join("good");
    tiny_model_with(&good, "embeddings.word_embeddings.weight", |v| v);
    std::fs::write(d.join("d.csv"), "text,label\ngood,pos\nbad,neg\nfine,pos\npoor,neg\n").unwrap();
    let csv = d.join("d.csv");
    let (g, c, a) = (good.to_str().unwrap(), csv.to_str().unwrap(), d.join("a"));
    let o = localtune(
        &[
            "train",
            "--model",
            g,
            "--data",
            c,
            "--out",
            a.to_str().unwrap(),
            "--device",
            "cpu",
            "--method",
            "head",
            "--max-len",
            "32",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wfile = a.join("adapter_model.safetensors");
    let mut w = localtune::model::weights::NamedTensors::from_bytes(&std::fs::read(&wfile).unwrap(), "a").unwrap();
    for t in w.tensors.values_mut() {
        t.data.iter_mut().for_each(|v| *v = if *v >= 0.0 { 3e38 } else { -3e38 });
    }
    std::fs::write(&wfile, w.to_bytes(None).unwrap()).unwrap();
    let o = localtune(
        &["predict", "--model", g, "--adapter", a.to_str().unwrap(), "--device", "cpu", "--max-len", "32"],
        "fine\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("logits of text 1 (\"fine\")"), "{err}");
    assert!(o.stdout.is_empty());
    let o = localtune(
        &["eval", "--model", g, "--adapter", a.to_str().unwrap(), "--data", c, "--device", "cpu", "--max-len", "32"],
        "",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("logits of text 1"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("accuracy"));
    std::fs::remove_dir_all(&d).unwrap();
}
