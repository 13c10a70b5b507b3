//! mergekit recipes give what mergekit gives: each case of tests/fixtures/mergekit (made by
//! scripts/make-merge-fixtures.sh with mergekit 0.1.4 itself on tiny BERT models) merged by
//! `localtune merge --recipe`, on the CPU and the GPU.

mod common;

use common::*;
use localtune::model::weights::NamedTensors;
use std::path::Path;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mergekit");

#[test]
fn recipes_match_mergekit() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/meta.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_object().unwrap();
    assert!(cases.len() >= 8);
    let mut devices = vec!["cpu"];
    if gpu().is_some() {
        devices.push("gpu");
    }
    for dev in devices {
        for (name, case) in cases {
            let out = std::env::temp_dir().join(format!("localtune-recipe-{}-{name}-{dev}", std::process::id()));
            let recipe = Path::new(DIR).join(case["recipe"].as_str().unwrap());
            let r = Command::new(env!("CARGO_BIN_EXE_localtune"))
                .args(["merge", "--recipe", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", dev])
                .output()
                .unwrap();
            assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
            let got = NamedTensors::load(&out.join("model.safetensors")).unwrap();
            let want = NamedTensors::load(&Path::new(DIR).join(format!("expected/{name}.safetensors"))).unwrap();
            assert_eq!(
                got.tensors.keys().collect::<Vec<_>>(),
                want.tensors.keys().collect::<Vec<_>>(),
                "{name}: tensor names"
            );
            for (k, w) in &want.tensors {
                assert_eq!(got.tensors[k].shape, w.shape, "{name}: {k}");
                assert_close(&format!("{name} on {dev}: {k}"), &got.tensors[k].data, &w.data, 1e-5, 1e-5);
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
}
