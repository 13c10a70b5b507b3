//! Sentence-transformers folders bring their own pooling (modules.json, 1_Pooling/config.json,
//! 2_Normalize): `Model::load` reads it and `embed` applies it, matching what sentence-transformers'
//! `encode` gives for the same folders (tests/fixtures/arch/st, made with sentence-transformers 6.2).

mod common;

use common::*;
use localtune::model::{Model, Pooling};
use localtune::ops::{self, PoolMode};
use localtune::Device;

const ST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch/st");

const SENTENCES: [&str; 5] =
    ["the food was great !", "i hate this movie", "really really good service", "not bad", "the worst phone"];

#[test]
fn each_folder_pools_as_sentence_transformers_does() {
    let bytes = std::fs::read(format!("{ST}/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (folder, mode, normalize) in [
        ("cls_norm", PoolMode::Cls, true),
        ("max", PoolMode::Max, false),
        ("mean_sqrt_len_norm", PoolMode::MeanSqrtLen, true),
        ("mean", PoolMode::Mean, false),
    ] {
        for dev in devices() {
            let what = format!("{folder} on {}", dev.describe());
            let model = Model::load(std::path::Path::new(&format!("{ST}/{folder}")), &dev).unwrap();
            assert_eq!(model.pooling, Pooling { mode, normalize }, "{what}");
            let enc = model.encode(&SENTENCES, 40).unwrap();
            let ids: Vec<u32> = host(&enc.inputs.ids).iter().map(|&x| x as u32).collect();
            assert_eq!(ids, fixture_ids(&st, "input_ids"), "{what}: tokenization");
            let (embs, _) = futures::executor::block_on(model.embed(&SENTENCES, 40, 2)).unwrap();
            let got: Vec<f32> = embs.concat();
            assert_close(&what, &got, &fixture_f32(&st, &format!("embedding_{folder}")), 1e-5, 1e-4);
        }
    }
}

#[test]
fn a_plain_folder_keeps_mean_pooling_and_normalisation() {
    let none = |_: &str| Ok(None);
    assert_eq!(Pooling::from_folder(&none, "m").unwrap(), Pooling { mode: PoolMode::Mean, normalize: true });
}

#[test]
fn bad_pooling_configs_name_the_file_and_the_mode() {
    let modules = r#"[{"idx":0,"path":"","type":"sentence_transformers.models.Transformer"},
                     {"idx":1,"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    for (cfg, want) in [
        (r#"{"pooling_mode": "weightedmean"}"#, "weightedmean"),
        (r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#, "several pooling modes"),
        (r#"{"embedding_dimension": 32}"#, "no pooling mode"),
    ] {
        let read = |p: &str| Ok(if p == "modules.json" { Some(modules.to_string()) } else { Some(cfg.to_string()) });
        let e = Pooling::from_folder(&read, "m").unwrap_err().to_string();
        assert!(e.contains("m/1_Pooling/config.json") && e.contains(want), "{e}");
    }
    // The older boolean form reads as well.
    let read = |p: &str| {
        Ok(Some(if p == "modules.json" { modules.to_string() } else { r#"{"pooling_mode_max_tokens": true}"#.into() }))
    };
    assert_eq!(Pooling::from_folder(&read, "m").unwrap(), Pooling { mode: PoolMode::Max, normalize: false });
    let dense = r#"[{"idx":0,"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#;
    let read = |p: &str| Ok(if p == "modules.json" { Some(dense.to_string()) } else { None });
    let e = Pooling::from_folder(&read, "m").unwrap_err().to_string();
    assert!(e.contains("m/modules.json") && e.contains("Dense"), "{e}");
}

/// Every pooling mode on the GPU against the CPU, on odd shapes.
#[test]
fn gpu_pooling_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(5);
    for (b, t, c) in [(1, 1, 1), (3, 7, 33), (2, 33, 257)] {
        let x = rng.vec(b * t * c, 2.0);
        let mask: Vec<f32> = (0..b * t).map(|i| if i % t < t.div_ceil(2) || i % t == 0 { 1.0 } else { 0.0 }).collect();
        for mode in [PoolMode::Mean, PoolMode::MeanSqrtLen, PoolMode::Max, PoolMode::Cls] {
            let run = |d: &Device| {
                let xt = d.tensor(&x, &[b, t, c]).unwrap();
                let mt = d.tensor(&mask, &[b, t]).unwrap();
                host(&ops::pool(&xt, &mt, mode).unwrap())
            };
            assert_close(&format!("{mode:?} ({b}, {t}, {c})"), &run(&gpu), &run(&Device::Cpu), 1e-5, 1e-5);
        }
    }
}

/// The CPU pooling against the formulas, computed here in f64.
#[test]
fn cpu_pooling_follows_the_formulas() {
    let (b, t, c) = (2, 4, 3);
    let mut rng = Rng(8);
    let x = rng.vec(b * t * c, 1.0);
    let mask = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let cpu = Device::Cpu;
    let xt = cpu.tensor(&x, &[b, t, c]).unwrap();
    let mt = cpu.tensor(&mask, &[b, t]).unwrap();
    for mode in [PoolMode::Mean, PoolMode::MeanSqrtLen, PoolMode::Max, PoolMode::Cls] {
        let got = host(&ops::pool(&xt, &mt, mode).unwrap());
        let mut want = vec![];
        for bi in 0..b {
            let n: f64 = mask[bi * t..(bi + 1) * t].iter().map(|&m| m as f64).sum();
            for ci in 0..c {
                let vals: Vec<f64> =
                    (0..t).filter(|&ti| mask[bi * t + ti] == 1.0).map(|ti| x[(bi * t + ti) * c + ci] as f64).collect();
                let s: f64 = vals.iter().sum();
                want.push(match mode {
                    PoolMode::Mean => s / n,
                    PoolMode::MeanSqrtLen => s / n.sqrt(),
                    PoolMode::Max => vals.iter().cloned().fold(f64::MIN, f64::max),
                    PoolMode::Cls => x[bi * t * c + ci] as f64,
                } as f32);
            }
        }
        assert_close(&format!("{mode:?}"), &got, &want, 1e-6, 1e-6);
    }
}
