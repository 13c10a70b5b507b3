//! Bad input returns an Err naming the op and the shapes; nothing panics or hangs the device.

mod common;

use localtune::ops::{self, MatmulDesc, Strides};
use localtune::{Device, Error};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(common::gpu());
    d
}

fn msg<T: std::fmt::Debug>(r: localtune::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn mismatched_shapes_name_the_op_and_shapes() {
    for dev in devices() {
        let a = dev.zeros(&[3, 4]).unwrap();
        let b = dev.zeros(&[5, 6]).unwrap();
        let e = msg(ops::matmul(&a, &b, false, false));
        assert!(e.starts_with("matmul:") && e.contains("[3, 4]") && e.contains("[5, 6]"), "{e}");

        let w = dev.zeros(&[2, 5]).unwrap();
        let e = msg(ops::linear(&a, &w, None));
        assert!(e.starts_with("linear:") && e.contains("[3, 4]") && e.contains("[2, 5]"), "{e}");

        let g = dev.zeros(&[5]).unwrap();
        let e = msg(ops::layernorm(&a, &g, &g, 1e-5));
        assert!(e.starts_with("layernorm:") && e.contains("gamma") && e.contains("[5]"), "{e}");

        let e = msg(ops::add(&a, &g));
        assert!(e.starts_with("add:") && e.contains("[5]") && e.contains("[3, 4]"), "{e}");

        let q = dev.zeros(&[2, 3, 6]).unwrap();
        let e = msg(ops::attention(&q, &q, &q, None, 4, None));
        assert!(e.starts_with("attention:") && e.contains("6 channels") && e.contains("4 heads"), "{e}");

        // A strided descriptor that reaches past the end of its operand.
        let mut c = dev.zeros(&[9]).unwrap();
        let d = MatmulDesc {
            a: Strides { offset: 2, ld: 4, bs: [0, 0] },
            ..MatmulDesc::contiguous(1, 3, 3, 4, false, false)
        };
        let e = msg(ops::matmul_into(&mut c, &a, &dev.zeros(&[4, 3]).unwrap(), None, &d));
        assert!(e.starts_with("matmul:") && e.contains("A:") && e.contains("of a tensor of 12"), "{e}");

        let logits = dev.zeros(&[2, 3]).unwrap();
        let labels = dev.tensor_u32(&[0, 3], &[2]).unwrap();
        let e = msg(ops::cross_entropy(&logits, &labels, &[0, 3], 0.5));
        assert!(e.starts_with("cross_entropy:") && e.contains("label 3 of row 1"), "{e}");
    }
}

#[test]
fn zero_sized_dimensions_are_refused() {
    for dev in devices() {
        assert!(matches!(dev.zeros(&[0, 4]), Err(Error::Shape { op: "zeros", .. })));
        assert!(dev.tensor(&[], &[0]).is_err());
        let e = msg(dev.tensor(&[1.0, 2.0], &[3]));
        assert!(e.contains("2 values do not fill shape [3]"), "{e}");
        let a = dev.zeros(&[3, 4]).unwrap();
        let mut c = dev.zeros(&[3, 4]).unwrap();
        let e = msg(ops::matmul_into(&mut c, &a, &a, None, &MatmulDesc::contiguous(1, 3, 4, 0, false, false)));
        assert!(e.contains("zero-sized"), "{e}");
    }
}

#[test]
fn tensors_on_different_devices_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    let a = Device::Cpu.zeros(&[2, 2]).unwrap();
    let b = gpu.zeros(&[2, 2]).unwrap();
    let e = msg(ops::add(&a, &b));
    assert!(e.contains("different devices"), "{e}");
}

#[test]
fn buffers_beyond_the_adapter_limits_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    let Device::Gpu(g) = &gpu else { unreachable!() };
    let max = g.limits().max_storage_buffer_binding_size.min(g.limits().max_buffer_size);
    let n = (max / 4 + 1024) as usize;
    let e = gpu.zeros(&[n]).expect_err("a buffer over the limit must be refused");
    assert!(matches!(e, Error::Limit { .. }), "{e}");
    assert!(e.to_string().contains("over this adapter's limit"), "{e}");
    // The device still works afterwards.
    let t = gpu.tensor(&[1.0, 2.0], &[2]).unwrap();
    assert_eq!(ops::scale(&t, 2.0).unwrap().to_vec_blocking().unwrap(), vec![2.0, 4.0]);
}
