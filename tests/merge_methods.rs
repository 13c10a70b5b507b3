//! Merging methods against the reference cases made with PEFT's merge_utils and a port of mergekit's
//! SLERP (tests/fixtures/merge, see its cases.json), on the CPU device and on the GPU; and the GPU
//! kernels against the CPU on shapes that are not multiples of the workgroup size.

mod common;

use common::{assert_close, gpu, Rng};
use localtune::merge::{self, sparsify, task_arithmetic, Method, Semantics, SignRule, TensorInputs, TensorSettings};
use localtune::model::weights::NamedTensors;
use localtune::ops::merge as mops;
use localtune::{ops, Device, Tensor};

fn fixtures() -> (NamedTensors, serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/merge");
    let t = NamedTensors::load(&dir.join("cases.safetensors")).unwrap();
    let j = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (t, j)
}

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

fn stack(dev: &Device, t: &NamedTensors, names: &[serde_json::Value]) -> Tensor {
    let mut data = Vec::new();
    let mut shape = vec![names.len()];
    for n in names {
        let h = &t.tensors[n.as_str().unwrap()];
        if shape.len() == 1 {
            shape.extend(&h.shape);
        }
        data.extend_from_slice(&h.data);
    }
    dev.tensor(&data, &shape).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn settings(method: Method, case: &serde_json::Value, n: usize) -> TensorSettings {
    let mut s = TensorSettings::new(method, n, Semantics::Peft);
    if let Some(w) = case.get("weights").or(case.get("lambdas")) {
        s.weights = floats(w);
    }
    if let Some(d) = case.get("density") {
        s.density = vec![d.as_f64().unwrap() as f32; n];
    }
    if case.get("majority_sign_method").and_then(|m| m.as_str()) == Some("frequency") {
        s.sign = SignRule::Frequency;
    }
    s
}

fn method_of(name: &str) -> Method {
    Method::parse(name).unwrap()
}

/// Every case of cases.json, on each device, within the tolerance the fixtures suggest (1e-5).
#[test]
fn reference_cases() {
    let (t, j) = fixtures();
    for dev in devices() {
        let mut checked = 0;
        for case in j["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let method = method_of(case["method"].as_str().unwrap());
            let inputs = case["inputs"].as_array().unwrap();
            let x = stack(&dev, &t, inputs);
            let s = settings(method, case, inputs.len());
            let got = match case["input_kind"].as_str().unwrap() {
                // Task vectors in, a merged task vector out (PEFT's functions).
                "task_vectors" => {
                    let mut tau = x.clone();
                    if let Some(masks) = case.get("masks") {
                        // DARE with PEFT's own masks: τ·m / density.
                        let m = stack(&dev, &t, masks.as_array().unwrap());
                        tau = ops::mul(&tau, &m).unwrap();
                        let d = s.density.clone();
                        mops::scale_rows(&mut tau, &vec![1.0; d.len()], &d).unwrap();
                    } else if let Some(kind) = method.sparsifier() {
                        futures::executor::block_on(sparsify::apply(kind, &mut tau, &s)).unwrap();
                    }
                    task_arithmetic::combine_deltas(method, &tau, &s).unwrap()
                }
                _ => {
                    let mut s = s;
                    if let Some(tv) = case.get("t") {
                        s.t = tv.as_f64().unwrap() as f32;
                    }
                    let fisher = case.get("fisher_inputs").map(|f| stack(&dev, &t, f.as_array().unwrap()));
                    let x_in = TensorInputs { name, models: &x, base: None, fisher: fisher.as_ref() };
                    futures::executor::block_on(merge::merge_tensor(method, &s, &x_in)).unwrap()
                }
            };
            let want = &t.tensors[case["output"].as_str().unwrap()].data;
            assert_close(&format!("{name} on {}", dev.describe()), &got.to_vec_blocking().unwrap(), want, 1e-5, 1e-5);
            checked += 1;
        }
        assert_eq!(checked, 14, "every case ran");
    }
}

/// The whole path from fine-tuned weights: θ0 + TIES(θᵢ − θ0) equals base + PEFT's merged task vector.
#[test]
fn ties_from_weights_matches_reference() {
    let (t, _) = fixtures();
    for dev in devices() {
        let names: Vec<serde_json::Value> = (0..3).map(|i| format!("ft_{i}").into()).collect();
        let x = stack(&dev, &t, &names);
        let base = dev.tensor(&t.tensors["base"].data, &t.tensors["base"].shape).unwrap();
        let mut s = TensorSettings::new(Method::Ties, 3, Semantics::Peft);
        s.weights = vec![0.7, 0.5, 0.3];
        s.density = vec![0.2; 3];
        let inputs = TensorInputs { name: "w", models: &x, base: Some(&base), fisher: None };
        let got = futures::executor::block_on(merge::merge_tensor(Method::Ties, &s, &inputs)).unwrap();
        let want: Vec<f32> =
            t.tensors["base"].data.iter().zip(&t.tensors["out_ties_total_d0.2"].data).map(|(b, o)| b + o).collect();
        assert_close("ties from weights", &got.to_vec_blocking().unwrap(), &want, 1e-5, 1e-5);
    }
}

/// mergekit's generalized task arithmetic, written out here from its source in f64 (sign on the
/// weighted deltas, normalize by Σ w·mask, λ after normalize) for magnitude-trimmed TIES.
#[test]
fn mergekit_ties_matches_an_independent_implementation() {
    let mut rng = Rng(42);
    let (inputs, n) = (3, 7 * 33);
    let base = rng.vec(n, 1.0);
    let models: Vec<Vec<f32>> =
        (0..inputs).map(|_| base.iter().map(|b| b + (rng.uniform() * 0.1) as f32).collect()).collect();
    let weights = [0.9f32, -0.4, 0.6];
    let density = 0.4f32;
    let lambda = 1.3f32;
    // The reference.
    let k = (density as f64 * n as f64) as usize;
    let deltas: Vec<Vec<f64>> = models
        .iter()
        .map(|m| {
            let d: Vec<f64> = m.iter().zip(&base).map(|(a, b)| (a - b) as f64).collect();
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| d[b].abs().partial_cmp(&d[a].abs()).unwrap());
            let mut kept = vec![0.0; n];
            for &i in &idx[..k] {
                kept[i] = d[i];
            }
            kept
        })
        .collect();
    let want: Vec<f32> = (0..n)
        .map(|j| {
            let wd: Vec<f64> = (0..inputs).map(|i| deltas[i][j] * weights[i] as f64).collect();
            let maj = if wd.iter().sum::<f64>() >= 0.0 { 1.0 } else { -1.0 };
            let (mut mixed, mut div) = (0.0, 0.0);
            for i in 0..inputs {
                if wd[i] != 0.0 && wd[i].signum() == maj {
                    mixed += wd[i];
                    div += weights[i] as f64;
                }
            }
            if div == 0.0 {
                div = 1.0;
            }
            (base[j] as f64 + lambda as f64 * mixed / div) as f32
        })
        .collect();
    for dev in devices() {
        let flat: Vec<f32> = models.concat();
        let x = dev.tensor(&flat, &[inputs, 7, 33]).unwrap();
        let b = dev.tensor(&base, &[7, 33]).unwrap();
        let mut s = TensorSettings::new(Method::Ties, inputs, Semantics::Mergekit);
        assert!(s.normalize && !s.rescale, "mergekit's TIES defaults");
        s.weights = weights.to_vec();
        s.density = vec![density; inputs];
        s.lambda = lambda;
        let x_in = TensorInputs { name: "w", models: &x, base: Some(&b), fisher: None };
        let got = futures::executor::block_on(merge::merge_tensor(Method::Ties, &s, &x_in)).unwrap();
        assert_close(
            &format!("mergekit ties on {}", dev.describe()),
            &got.to_vec_blocking().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
}

/// The radix select finds the exact k-th largest |x| on the GPU, for sizes around the workgroup
/// width and with repeated values.
#[test]
fn gpu_kth_largest_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(7);
    for &n in &[1usize, 7, 33, 257, 5000] {
        let mut data = rng.vec(3 * n, 1.0);
        // Repeated magnitudes and signed zeros.
        for i in (0..data.len()).step_by(5) {
            data[i] = if i % 2 == 0 { 0.25 } else { -0.25 };
        }
        data[0] = -0.0;
        let ks = [1, n.div_ceil(2), n];
        let c = mops::kth_largest(&Device::Cpu.tensor(&data, &[3, n]).unwrap(), &ks).unwrap();
        let gt = mops::kth_largest(&g.tensor(&data, &[3, n]).unwrap(), &ks).unwrap();
        let col0 = |t: &Tensor| -> Vec<u32> {
            futures::executor::block_on(t.to_vec_u32()).unwrap().chunks(2).map(|c| c[0]).collect()
        };
        assert_eq!(col0(&gt), col0(&c), "n {n}");
    }
}

/// Every other trimming kernel and the combine modes: GPU against CPU.
#[test]
fn gpu_merge_kernels_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(11);
    for &(rows, cols) in &[(1usize, 1usize), (7, 33), (3, 257), (2, 300)] {
        let n = rows * cols;
        let data = rng.vec(3 * n, 1.0);
        let base = rng.vec(n, 1.0);
        let fisher: Vec<f32> = rng.vec(3 * n, 1.0).iter().map(|v| v.abs() * 1e-3).collect();
        let run = |dev: &Device, method: Method, semantics: Semantics| -> Vec<f32> {
            let x = dev.tensor(&data, &[3, rows, cols]).unwrap();
            let b = dev.tensor(&base, &[rows, cols]).unwrap();
            let f = dev.tensor(&fisher, &[3, rows, cols]).unwrap();
            let mut s = TensorSettings::new(method, 3, semantics);
            s.weights = vec![0.5, 1.5, 1.0];
            s.density = vec![0.5, 0.3, 1.0];
            s.gamma = 0.1;
            s.epsilon = 0.2;
            s.seed = 5;
            s.temperature = 0.7;
            let x_in = TensorInputs { name: "w", models: &x, base: Some(&b), fisher: Some(&f) };
            futures::executor::block_on(merge::merge_tensor(method, &s, &x_in)).unwrap().to_vec_blocking().unwrap()
        };
        for &(name, method) in merge::METHODS {
            if matches!(method, Method::Slerp | Method::RegMean) {
                continue;
            }
            for semantics in [Semantics::Peft, Semantics::Mergekit] {
                let (c, gv) = (run(&Device::Cpu, method, semantics), run(&g, method, semantics));
                assert_close(&format!("{name} {semantics:?} {rows}x{cols}"), &gv, &c, 1e-5, 1e-4);
            }
        }
    }
}

/// DARE keeps about density of the entries, and the same ones on both devices.
#[test]
fn dare_keeps_density_and_is_seeded() {
    let n = 20_000;
    let data = vec![1.0f32; 2 * n];
    let mut results = Vec::new();
    for dev in devices() {
        let mut x = dev.tensor(&data, &[2, n]).unwrap();
        let p = dev.tensor(&[0.3, 0.8], &[2]).unwrap();
        mops::dare(&mut x, &p, 9, true).unwrap();
        let v = x.to_vec_blocking().unwrap();
        for (i, &d) in [0.3f32, 0.8].iter().enumerate() {
            let kept = v[i * n..(i + 1) * n].iter().filter(|&&x| x != 0.0).count() as f32 / n as f32;
            assert!((kept - d).abs() < 0.02, "input {i}: kept {kept}, density {d}");
            assert!(v[i * n..(i + 1) * n].iter().all(|&x| x == 0.0 || (x - 1.0 / d).abs() < 1e-6));
        }
        results.push(v);
    }
    if results.len() == 2 {
        assert_eq!(results[0], results[1], "GPU and CPU masks agree");
    }
}

/// Breadcrumbs drops the largest gamma·n and keeps the next density·n, exactly.
#[test]
fn breadcrumbs_keeps_the_middle_band() {
    let n = 200;
    // |τ| = 1..=200 in a shuffled order with alternating signs.
    let vals: Vec<f32> = (0..n).map(|i| ((i * 37) % n + 1) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    for dev in devices() {
        let mut x = dev.tensor(&vals, &[1, n]).unwrap();
        let mut s = TensorSettings::new(Method::Breadcrumbs, 1, Semantics::Peft);
        s.density = vec![0.3];
        s.gamma = 0.05;
        futures::executor::block_on(sparsify::apply(sparsify::Kind::Breadcrumbs, &mut x, &s)).unwrap();
        let v = x.to_vec_blocking().unwrap();
        for (i, (&got, &orig)) in v.iter().zip(&vals).enumerate() {
            // Kept: magnitudes 131..=190 (the 10 largest dropped, then 60 kept).
            let keep = (131.0..=190.0).contains(&orig.abs());
            assert_eq!(got, if keep { orig } else { 0.0 }, "index {i} (|τ| {})", orig.abs());
        }
    }
}

/// Bad settings name the tensor.
#[test]
fn bad_settings_are_refused() {
    let x = Device::Cpu.tensor(&[1.0; 6], &[3, 2]).unwrap();
    let b = Device::Cpu.tensor(&[0.0; 2], &[2]).unwrap();
    let x_in =
        TensorInputs { name: "encoder.layer.0.attention.self.query.weight", models: &x, base: Some(&b), fisher: None };
    let mut s = TensorSettings::new(Method::Ties, 3, Semantics::Peft);
    s.density = vec![1.5; 3];
    let e = futures::executor::block_on(merge::merge_tensor(Method::Ties, &s, &x_in)).unwrap_err().to_string();
    assert!(e.contains("query.weight") && e.contains("density 1.5"), "{e}");
    let s = TensorSettings::new(Method::Slerp, 3, Semantics::Peft);
    let e = futures::executor::block_on(merge::merge_tensor(Method::Slerp, &s, &x_in)).unwrap_err().to_string();
    assert!(e.contains("exactly two"), "{e}");
    let mut s = TensorSettings::new(Method::Linear, 3, Semantics::Peft);
    s.weights = vec![1.0, 2.0];
    let e = futures::executor::block_on(merge::merge_tensor(Method::Linear, &s, &x_in)).unwrap_err().to_string();
    assert!(e.contains("2 weights for 3 inputs"), "{e}");
}
