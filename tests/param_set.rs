//! `ParamSet`, the named-tensor store that parameters, gradients, optimiser moments, adapter files
//! and (next) merging share: order and lookup, `zeros_like`, element-wise `zip` over several sets,
//! and safetensors round trips, on both devices.

mod common;

use common::*;
use localtune::model::ParamSet;
use localtune::ops;
use localtune::Device;

fn set(dev: &Device, names: &[&str], seed: u64) -> ParamSet {
    let mut rng = Rng(seed);
    let mut s = ParamSet::new();
    for (i, n) in names.iter().enumerate() {
        let shape = [i + 1, 3];
        s.push(*n, dev.tensor(&rng.vec(3 * (i + 1), 1.0), &shape).unwrap()).unwrap();
    }
    s
}

#[test]
fn order_lookup_and_zeros_like() {
    for dev in devices() {
        let s = set(&dev, &["b.weight", "a.weight", "c.bias"], 1);
        assert_eq!(s.names().collect::<Vec<_>>(), ["b.weight", "a.weight", "c.bias"], "insertion order is kept");
        assert_eq!(s.len(), 3);
        assert_eq!(s.count(), 3 + 6 + 9);
        assert_eq!(s.id("a.weight"), Some(1));
        assert_eq!(s.get("c.bias").unwrap().shape(), &[3, 3]);
        assert!(s.get("nope").is_none());
        let z = s.zeros_like(&dev).unwrap();
        assert_eq!(z.names().collect::<Vec<_>>(), s.names().collect::<Vec<_>>());
        for (_, t) in z.iter() {
            assert!(host(t).iter().all(|&x| x == 0.0));
        }
        let mut dup = ParamSet::new();
        dup.push("x", dev.zeros(&[1]).unwrap()).unwrap();
        let e = dup.push("x", dev.zeros(&[1]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("twice"), "{e}");
    }
}

#[test]
fn zip_combines_sets_by_name() {
    for dev in devices() {
        let names = ["w1", "w2", "w3"];
        let a = set(&dev, &names, 2);
        let b = set(&dev, &names, 3);
        // The same names in another order still line up by name.
        let mut c = ParamSet::new();
        let c_src = set(&dev, &names, 4);
        for n in ["w3", "w1", "w2"] {
            c.push(n, c_src.get(n).unwrap().clone()).unwrap();
        }
        let weights = [0.5f32, 0.3, 0.2];
        let merged = ParamSet::zip(&[&a, &b, &c], |_, ts| {
            let mut out = ops::scale(ts[0], weights[0])?;
            for (t, &w) in ts[1..].iter().zip(&weights[1..]) {
                ops::add_into(&mut out, t, w)?;
            }
            Ok(out)
        })
        .unwrap();
        for n in names {
            let want: Vec<f32> = host(a.get(n).unwrap())
                .iter()
                .zip(host(b.get(n).unwrap()))
                .zip(host(c.get(n).unwrap()))
                .map(|((x, y), z)| 0.5 * x + 0.3 * y + 0.2 * z)
                .collect();
            assert_close(&format!("{} {n}", dev.describe()), &host(merged.get(n).unwrap()), &want, 1e-6, 1e-6);
        }
        let short = set(&dev, &["w1", "w2"], 5);
        let e = ParamSet::zip(&[&a, &short], |_, ts| Ok(ts[0].clone())).unwrap_err().to_string();
        assert!(e.contains("`w3`"), "{e}");
        let other_shape = {
            let mut s = ParamSet::new();
            for (n, t) in a.iter() {
                let shape = if n == "w2" { vec![3, 2] } else { t.shape().to_vec() };
                s.push(n, dev.zeros(&shape).unwrap()).unwrap();
            }
            s
        };
        let e = ParamSet::zip(&[&a, &other_shape], |_, ts| Ok(ts[0].clone())).unwrap_err().to_string();
        assert!(e.contains("`w2`") && e.contains("[3, 2]"), "{e}");
    }
}

#[test]
fn safetensors_round_trip() {
    for dev in devices() {
        let s = set(&dev, &["layer.0.lora_A.weight", "layer.0.lora_B.weight"], 6);
        let bytes = futures::executor::block_on(s.to_safetensors(None)).unwrap();
        let back = ParamSet::from_safetensors(&bytes, "x.safetensors", &dev).unwrap();
        s.check_same_names(&back, "the round trip").unwrap();
        for (n, t) in s.iter() {
            assert_eq!(host(t), host(back.get(n).unwrap()), "{n}");
        }
        let e = ParamSet::from_safetensors(b"not safetensors", "bad.safetensors", &dev).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
    }
}
