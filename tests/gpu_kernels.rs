//! Every GPU kernel against the CPU device, on shapes that are not multiples of the workgroup
//! sizes (1, 7, 33, 257) and on realistic BERT shapes; failures name the first bad index.
//! Without an adapter these skip, except under CI where they fail (see common::gpu).

mod common;

use common::*;
use localtune::ops::{self, MatmulDesc, MatmulKernel, Strides};
use localtune::{Device, Tensor};

const ODD: [usize; 4] = [1, 7, 33, 257];

/// The same data on both devices.
fn pair(cpu_data: &[f32], shape: &[usize], gpu: &Device) -> (Tensor, Tensor) {
    (Device::Cpu.tensor(cpu_data, shape).unwrap(), gpu.tensor(cpu_data, shape).unwrap())
}

fn compare(what: &str, g: &Tensor, c: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(g.shape(), c.shape(), "{what}: shapes");
    assert_close(what, &host(g), &host(c), atol, rtol);
}

#[test]
fn matmul_naive_and_tiled_all_layouts() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(1);
    let mut shapes: Vec<(usize, usize, usize, usize)> = vec![];
    for &m in &ODD {
        for &n in &[1, 33, 257] {
            shapes.push((1, m, n, [7, 257][(m + n) % 2]));
        }
    }
    shapes.push((3, 33, 7, 65));
    shapes.push((1, 64, 1536, 384)); // a BERT FFN up-projection
    for &(batch, m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let d = MatmulDesc::contiguous(batch, m, n, k, ta, tb);
            let a = r.vec(batch * m * k, 1.0);
            let b = r.vec(batch * k * n, 1.0);
            let bias = r.vec(n, 1.0);
            let c0 = r.vec(batch * m * n, 1.0);
            let ash = [batch * m * k];
            let bsh = [batch * k * n];
            let (ac, ag) = pair(&a, &ash, &gpu);
            let (bc, bg) = pair(&b, &bsh, &gpu);
            let (biasc, biasg) = pair(&bias, &[n], &gpu);
            for accumulate in [false, true] {
                let d = MatmulDesc { accumulate, alpha: if accumulate { 0.5 } else { 1.0 }, ..d };
                let (mut cc, _) = pair(&c0, &[batch * m * n], &gpu);
                ops::matmul_into(&mut cc, &ac, &bc, Some(&biasc), &d).unwrap();
                for kernel in [MatmulKernel::Naive, MatmulKernel::Tiled] {
                    let mut cg = gpu.tensor(&c0, &[batch * m * n]).unwrap();
                    ops::matmul_into_with(&mut cg, &ag, &bg, Some(&biasg), &d, kernel).unwrap();
                    let what = format!("matmul {kernel:?} b{batch} m{m} n{n} k{k} ta={ta} tb={tb} acc={accumulate}");
                    compare(&what, &cg, &cc, 1e-4 * (k as f32).sqrt(), 1e-4);
                }
            }
        }
    }
}

#[test]
fn matmul_strided_head_blocks() {
    // The attention layout: (B, T, H·D) read as (B, H) blocks of (T, D) with an offset.
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(2);
    let (b, t, h, dh) = (2, 7, 3, 5);
    let c = h * dh;
    let q = r.vec(b * t * c + 3, 1.0);
    let k = r.vec(b * t * c, 1.0);
    let heads = |off| Strides { offset: off, ld: c, bs: [t * c, dh] };
    let d = MatmulDesc {
        m: t,
        n: t,
        k: dh,
        batch: [b, h],
        trans_a: false,
        trans_b: true,
        a: heads(3),
        b: heads(0),
        c: Strides { offset: 0, ld: t, bs: [h * t * t, t * t] },
        alpha: 0.25,
        accumulate: false,
    };
    let (qc, qg) = pair(&q, &[q.len()], &gpu);
    let (kc, kg) = pair(&k, &[k.len()], &gpu);
    let mut sc = Device::Cpu.zeros(&[b * h * t * t]).unwrap();
    ops::matmul_into(&mut sc, &qc, &kc, None, &d).unwrap();
    for kernel in [MatmulKernel::Naive, MatmulKernel::Tiled] {
        let mut sg = gpu.zeros(&[b * h * t * t]).unwrap();
        ops::matmul_into_with(&mut sg, &qg, &kg, None, &d, kernel).unwrap();
        compare(&format!("strided {kernel:?}"), &sg, &sc, 1e-5, 1e-5);
    }
}

#[test]
fn layernorm_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(3);
    let mut shapes: Vec<(usize, usize)> = ODD.iter().flat_map(|&a| ODD.iter().map(move |&b| (a, b))).collect();
    shapes.push((64 * 8, 384));
    for (rows, cols) in shapes {
        let x = r.vec(rows * cols, 2.0);
        let gm = r.vec(cols, 1.0);
        let bt = r.vec(cols, 1.0);
        let dy = r.vec(rows * cols, 1.0);
        let (xc, xg) = pair(&x, &[rows, cols], &gpu);
        let (gc, gg) = pair(&gm, &[cols], &gpu);
        let (bc, bg) = pair(&bt, &[cols], &gpu);
        let (dyc, dyg) = pair(&dy, &[rows, cols], &gpu);
        let what = format!("layernorm {rows}x{cols}");
        let (yc, mc, rc) = ops::layernorm(&xc, &gc, &bc, 1e-12).unwrap();
        let (yg, mg, rg) = ops::layernorm(&xg, &gg, &bg, 1e-12).unwrap();
        compare(&format!("{what} y"), &yg, &yc, 1e-5, 1e-4);
        compare(&format!("{what} mean"), &mg, &mc, 1e-5, 1e-5);
        // rstd of a 1-wide row is 1/sqrt(eps): compare relatively.
        compare(&format!("{what} rstd"), &rg, &rc, 1e-5, 1e-4);
        if cols == 1 {
            continue;
        }
        let (mut dgc, mut dbc) = (Device::Cpu.zeros(&[cols]).unwrap(), Device::Cpu.zeros(&[cols]).unwrap());
        let (mut dgg, mut dbg) = (gpu.zeros(&[cols]).unwrap(), gpu.zeros(&[cols]).unwrap());
        let dxc = ops::layernorm_backward(Some(&mut dgc), Some(&mut dbc), &dyc, &xc, &mc, &rc, &gc).unwrap();
        let dxg = ops::layernorm_backward(Some(&mut dgg), Some(&mut dbg), &dyg, &xg, &mg, &rg, &gg).unwrap();
        compare(&format!("{what} dx"), &dxg, &dxc, 1e-4, 1e-3);
        compare(&format!("{what} dgamma"), &dgg, &dgc, 1e-4 * (rows as f32).sqrt(), 1e-3);
        compare(&format!("{what} dbeta"), &dbg, &dbc, 1e-4 * (rows as f32).sqrt(), 1e-3);
    }
}

#[test]
fn elementwise_ops() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(4);
    for n in ODD.into_iter().chain([64 * 1536, 300_000]) {
        let x = r.vec(n, 5.0);
        let y = r.vec(n, 1.0);
        let (xc, xg) = pair(&x, &[n], &gpu);
        let (yc, yg) = pair(&y, &[n], &gpu);
        // Both sides compute 1 + erf(x/√2), which cancels for x ≪ 0: absolute errors of a few 1e-7·|x|.
        compare(&format!("gelu {n}"), &ops::gelu(&xg).unwrap(), &ops::gelu(&xc).unwrap(), 3e-6, 1e-5);
        compare(
            &format!("gelu_backward {n}"),
            &ops::gelu_backward(&yg, &xg).unwrap(),
            &ops::gelu_backward(&yc, &xc).unwrap(),
            1e-6,
            1e-5,
        );
        compare(&format!("tanh {n}"), &ops::tanh(&xg).unwrap(), &ops::tanh(&xc).unwrap(), 1e-6, 1e-5);
        let tc = ops::tanh(&xc).unwrap();
        let tg = ops::tanh(&xg).unwrap();
        compare(
            &format!("tanh_backward {n}"),
            &ops::tanh_backward(&yg, &tg).unwrap(),
            &ops::tanh_backward(&yc, &tc).unwrap(),
            1e-6,
            1e-5,
        );
        compare(&format!("scale {n}"), &ops::scale(&xg, -0.3).unwrap(), &ops::scale(&xc, -0.3).unwrap(), 0.0, 1e-6);
        compare(&format!("add {n}"), &ops::add(&xg, &yg).unwrap(), &ops::add(&xc, &yc).unwrap(), 0.0, 1e-6);
        compare(&format!("mul {n}"), &ops::mul(&xg, &yg).unwrap(), &ops::mul(&xc, &yc).unwrap(), 0.0, 1e-6);
        let (mut oc, mut og) = (xc.clone(), gpu.tensor(&x, &[n]).unwrap());
        ops::add_into(&mut oc, &yc, 0.7).unwrap();
        ops::add_into(&mut og, &yg, 0.7).unwrap();
        compare(&format!("add_into {n}"), &og, &oc, 1e-6, 1e-6);
        ops::mul_add_into(&mut oc, &xc, &yc).unwrap();
        ops::mul_add_into(&mut og, &xg, &yg).unwrap();
        compare(&format!("mul_add_into {n}"), &og, &oc, 1e-5, 1e-6);
    }
    // A bias broadcast over rows.
    let (rows, cols) = (33, 7);
    let x = r.vec(rows * cols, 1.0);
    let b = r.vec(cols, 1.0);
    let (xc, xg) = pair(&x, &[rows, cols], &gpu);
    let (bc, bg) = pair(&b, &[cols], &gpu);
    compare("bias add", &ops::add(&xg, &bg).unwrap(), &ops::add(&xc, &bc).unwrap(), 0.0, 1e-6);
    // The kept input is not modified by add_into on a shared CPU tensor (copy-on-write).
    let mut shared = xc.clone();
    ops::add_into(&mut shared, &xc, 1.0).unwrap();
    assert_eq!(host(&xc), x);
}

#[test]
fn softmax_masked_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(5);
    let mut cases: Vec<(usize, usize, usize)> = vec![];
    for &rows in &ODD {
        for &len in &ODD {
            cases.push((rows, len, 1));
        }
    }
    cases.push((2 * 12 * 64, 64, 12 * 64)); // attention: (B, H, T, T) with a (B, T) key mask
    for (rows, len, div) in cases {
        let x = r.vec(rows * len, 4.0);
        let dy = r.vec(rows * len, 1.0);
        let mask: Vec<f32> =
            (0..(rows / div) * len).map(|i| if i % len == len - 1 && len > 1 { -1e30 } else { 0.0 }).collect();
        let (xc, xg) = pair(&x, &[rows, len], &gpu);
        let (mc, mg) = pair(&mask, &[rows / div, len], &gpu);
        let (dyc, dyg) = pair(&dy, &[rows, len], &gpu);
        let what = format!("softmax {rows}x{len}");
        let yc = ops::softmax(&xc, Some((&mc, div)), 0.125).unwrap();
        let yg = ops::softmax(&xg, Some((&mg, div)), 0.125).unwrap();
        compare(&what, &yg, &yc, 1e-6, 1e-5);
        let yc2 = ops::softmax(&xc, None, 1.0).unwrap();
        let yg2 = ops::softmax(&xg, None, 1.0).unwrap();
        compare(&format!("{what} unmasked"), &yg2, &yc2, 1e-6, 1e-5);
        let dxc = ops::softmax_backward(&dyc, &yc, 0.125).unwrap();
        let dxg = ops::softmax_backward(&dyg, &yg, 0.125).unwrap();
        compare(&format!("{what} backward"), &dxg, &dxc, 1e-6, 1e-4);
    }
}

#[test]
fn attention_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(6);
    for &(b, tq, tk, h, d) in &[(1, 1, 1, 1, 1), (2, 7, 7, 3, 5), (1, 33, 40, 2, 7), (2, 64, 64, 12, 32)] {
        let c = h * d;
        let q = r.vec(b * tq * c, 1.0);
        let k = r.vec(b * tk * c, 1.0);
        let v = r.vec(b * tk * c, 1.0);
        let dout = r.vec(b * tq * c, 1.0);
        let mask: Vec<f32> = (0..b * tk).map(|i| if i >= tk && i % tk > tk / 2 { -1e30 } else { 0.0 }).collect();
        let (qc, qg) = pair(&q, &[b, tq, c], &gpu);
        let (kc, kg) = pair(&k, &[b, tk, c], &gpu);
        let (vc, vg) = pair(&v, &[b, tk, c], &gpu);
        let (mc, mg) = pair(&mask, &[b, tk], &gpu);
        let (dc, dg) = pair(&dout, &[b, tq, c], &gpu);
        let what = format!("attention b{b} tq{tq} tk{tk} h{h} d{d}");
        let (oc, pc) = ops::attention(&qc, &kc, &vc, Some(&mc), h, None).unwrap();
        let (og, pg) = ops::attention(&qg, &kg, &vg, Some(&mg), h, None).unwrap();
        compare(&format!("{what} out"), &og, &oc, 1e-5, 1e-4);
        compare(&format!("{what} probs"), &pg, &pc, 1e-6, 1e-4);
        let (dqc, dkc, dvc) = ops::attention_backward(&dc, &qc, &kc, &vc, &pc, h, None).unwrap();
        let (dqg, dkg, dvg) = ops::attention_backward(&dg, &qg, &kg, &vg, &pg, h, None).unwrap();
        compare(&format!("{what} dq"), &dqg, &dqc, 1e-5, 1e-3);
        compare(&format!("{what} dk"), &dkg, &dkc, 1e-5, 1e-3);
        compare(&format!("{what} dv"), &dvg, &dvc, 1e-5, 1e-3);
    }
}

#[test]
fn embedding_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(7);
    for &(vocab, cols, tokens) in &[(1, 1, 1), (7, 33, 7), (257, 7, 33), (30522, 384, 8 * 64)] {
        let table = r.vec(vocab * cols, 1.0);
        let ids: Vec<u32> = (0..tokens).map(|_| r.below(vocab as u32)).collect();
        let dout = r.vec(tokens * cols, 1.0);
        let (tc, tg) = pair(&table, &[vocab, cols], &gpu);
        let ic = Device::Cpu.tensor_u32(&ids, &[tokens]).unwrap();
        let ig = gpu.tensor_u32(&ids, &[tokens]).unwrap();
        let what = format!("embedding V{vocab} C{cols} T{tokens}");
        compare(&what, &ops::embedding(&ig, &tg).unwrap(), &ops::embedding(&ic, &tc).unwrap(), 0.0, 0.0);
        let (dc, dg) = pair(&dout, &[tokens, cols], &gpu);
        let mut dtc = Device::Cpu.zeros(&[vocab, cols]).unwrap();
        let mut dtg = gpu.zeros(&[vocab, cols]).unwrap();
        ops::embedding_backward(&mut dtc, &dc, &ic).unwrap();
        ops::embedding_backward(&mut dtg, &dg, &ig).unwrap();
        compare(&format!("{what} backward"), &dtg, &dtc, 1e-6, 1e-6);
    }
}

#[test]
fn pooling_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(8);
    for &(b, t, c) in &[(1, 1, 1), (7, 7, 33), (3, 33, 257), (8, 64, 384)] {
        let x = r.vec(b * t * c, 1.0);
        let mask: Vec<f32> = (0..b * t).map(|i| if i % t <= (i / t) % t { 1.0 } else { 0.0 }).collect();
        let dout = r.vec(b * c, 1.0);
        let (xc, xg) = pair(&x, &[b, t, c], &gpu);
        let (mc, mg) = pair(&mask, &[b, t], &gpu);
        let (dc, dg) = pair(&dout, &[b, c], &gpu);
        let what = format!("pool b{b} t{t} c{c}");
        let pc = ops::mean_pool(&xc, &mc).unwrap();
        let pg = ops::mean_pool(&xg, &mg).unwrap();
        compare(&format!("{what} mean"), &pg, &pc, 1e-6, 1e-5);
        compare(
            &format!("{what} mean backward"),
            &ops::mean_pool_backward(&dg, &mg).unwrap(),
            &ops::mean_pool_backward(&dc, &mc).unwrap(),
            1e-7,
            1e-5,
        );
        compare(&format!("{what} l2"), &ops::l2_normalize(&pg).unwrap(), &ops::l2_normalize(&pc).unwrap(), 1e-6, 1e-5);
        compare(
            &format!("{what} l2 backward"),
            &ops::l2_normalize_backward(&dg, &pg).unwrap(),
            &ops::l2_normalize_backward(&dc, &pc).unwrap(),
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn cross_entropy_loss_and_gradient() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(9);
    for &(b, k) in &[(1, 1), (7, 2), (33, 7), (257, 3)] {
        let logits = r.vec(b * k, 5.0);
        let labels: Vec<u32> = (0..b).map(|_| r.below(k as u32)).collect();
        let (lc, lg) = pair(&logits, &[b, k], &gpu);
        let yc = Device::Cpu.tensor_u32(&labels, &[b]).unwrap();
        let yg = gpu.tensor_u32(&labels, &[b]).unwrap();
        let (losc, dc) = ops::cross_entropy(&lc, &yc, &labels, 1.0 / b as f32).unwrap();
        let (losg, dg) = ops::cross_entropy(&lg, &yg, &labels, 1.0 / b as f32).unwrap();
        compare(&format!("ce loss {b}x{k}"), &losg, &losc, 1e-5, 1e-5);
        compare(&format!("ce dlogits {b}x{k}"), &dg, &dc, 1e-6, 1e-5);
    }
}

#[test]
fn reductions_and_adamw() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(10);
    for &(rows, cols) in &[(1, 1), (7, 33), (257, 7), (512, 384)] {
        let x = r.vec(rows * cols, 1.0);
        let (xc, xg) = pair(&x, &[rows, cols], &gpu);
        let mut sc = Device::Cpu.tensor(&vec![1.0; cols], &[cols]).unwrap();
        let mut sg = gpu.tensor(&vec![1.0; cols], &[cols]).unwrap();
        ops::sum_rows_into(&mut sc, &xc, true).unwrap();
        ops::sum_rows_into(&mut sg, &xg, true).unwrap();
        compare(&format!("sum_rows {rows}x{cols}"), &sg, &sc, 1e-4, 1e-5);

        let mut nc = Device::Cpu.tensor(&[0.5], &[1]).unwrap();
        let mut ng = gpu.tensor(&[0.5], &[1]).unwrap();
        ops::sumsq_into(&mut nc, &xc).unwrap();
        ops::sumsq_into(&mut ng, &xg).unwrap();
        compare(&format!("sumsq {rows}x{cols}"), &ng, &nc, 1e-3, 1e-5);

        // Two AdamW steps, clipped by the norm just computed.
        let g = r.vec(rows * cols, 2.0);
        let (gc, gg) = pair(&g, &[rows, cols], &gpu);
        let (mut pc, mut pg) = (xc.clone(), gpu.tensor(&x, &[rows, cols]).unwrap());
        let (mut mc, mut mg) = (Device::Cpu.zeros(&[rows, cols]).unwrap(), gpu.zeros(&[rows, cols]).unwrap());
        let (mut vc, mut vg) = (Device::Cpu.zeros(&[rows, cols]).unwrap(), gpu.zeros(&[rows, cols]).unwrap());
        for t in 1..=2 {
            let h = ops::AdamWStep::new(1e-2, 0.9, 0.999, 1e-8, 0.01, 1.0, t);
            ops::adamw(&mut pc, &mut mc, &mut vc, &gc, &nc, &h).unwrap();
            ops::adamw(&mut pg, &mut mg, &mut vg, &gg, &ng, &h).unwrap();
        }
        compare(&format!("adamw param {rows}x{cols}"), &pg, &pc, 1e-6, 1e-5);
        compare(&format!("adamw m {rows}x{cols}"), &mg, &mc, 1e-7, 1e-5);
        compare(&format!("adamw v {rows}x{cols}"), &vg, &vc, 1e-7, 1e-5);
    }
}

#[test]
fn relu_dropout_and_prefix() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(11);
    for n in ODD.into_iter().chain([300_000]) {
        let x = r.vec(n, 2.0);
        let y = r.vec(n, 1.0);
        let (xc, xg) = pair(&x, &[n], &gpu);
        let (yc, yg) = pair(&y, &[n], &gpu);
        compare(&format!("relu {n}"), &ops::relu(&xg).unwrap(), &ops::relu(&xc).unwrap(), 0.0, 0.0);
        compare(
            &format!("relu_backward {n}"),
            &ops::relu_backward(&yg, &xg).unwrap(),
            &ops::relu_backward(&yc, &xc).unwrap(),
            0.0,
            0.0,
        );
        // The same elements are dropped on both devices.
        compare(
            &format!("dropout {n}"),
            &ops::dropout(&xg, 0.25, 1234).unwrap(),
            &ops::dropout(&xc, 0.25, 1234).unwrap(),
            0.0,
            1e-6,
        );
    }
    for &(b, t, c, p) in &[(1, 1, 1, 1), (3, 7, 33, 5), (8, 64, 384, 10)] {
        let prefix = r.vec(p * c, 1.0);
        let x = r.vec(b * t * c, 1.0);
        let (pc, pg) = pair(&prefix, &[p, c], &gpu);
        let (xc, xg) = pair(&x, &[b, t, c], &gpu);
        let what = format!("prefix b{b} t{t} c{c} p{p}");
        let oc = ops::prefix_concat(&pc, &xc).unwrap();
        let og = ops::prefix_concat(&pg, &xg).unwrap();
        compare(&what, &og, &oc, 0.0, 0.0);
        let d = r.vec(b * (p + t) * c, 1.0);
        let (dc, dg) = pair(&d, &[b, p + t, c], &gpu);
        let (mut gc, mut gg) =
            (Device::Cpu.tensor(&vec![0.5; p * c], &[p, c]).unwrap(), gpu.tensor(&vec![0.5; p * c], &[p, c]).unwrap());
        let dxc = ops::prefix_split(&mut gc, &dc).unwrap();
        let dxg = ops::prefix_split(&mut gg, &dg).unwrap();
        compare(&format!("{what} dx"), &dxg, &dxc, 0.0, 0.0);
        compare(&format!("{what} dprefix"), &gg, &gc, 1e-5, 1e-5);
    }
}

#[test]
fn scalearn_combination_and_gradient() {
    use localtune::ops::scalearn;
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(21);
    // Odd shapes; vector ω (S, cols) and scalar ω (S, 1); more than one workgroup of rows and columns.
    for &(rows, cols, sources) in &[(1, 1, 1), (3, 5, 2), (37, 300, 3), (130, 7, 4), (5, 257, 1)] {
        for scalar in [false, true] {
            let wcols = if scalar { 1 } else { cols };
            let w = r.vec(sources * wcols, 1.0);
            let (wc, wg) = pair(&w, &[sources, wcols], &gpu);
            let y0 = r.vec(rows * cols, 1.0);
            let (mut yc, mut yg) = pair(&y0, &[rows, cols], &gpu);
            let mut ac = vec![];
            let mut ag = vec![];
            for s in 0..sources {
                let (a_c, a_g) = pair(&r.vec(rows * cols, 1.0), &[rows, cols], &gpu);
                scalearn::scale(Some(&mut yc), &a_c, &wc, s).unwrap();
                scalearn::scale(Some(&mut yg), &a_g, &wg, s).unwrap();
                ac.push(a_c);
                ag.push(a_g);
            }
            let what = format!("{rows}x{cols}, {sources} sources, scalar {scalar}");
            compare(&format!("combination {what}"), &yg, &yc, 1e-5, 1e-5);
            // The CPU twin against the definition y0 + Σ_s ω_s ⊙ a_s.
            let want: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let c = i % cols;
                    y0[i]
                        + (0..sources).map(|s| w[s * wcols + if scalar { 0 } else { c }] * host(&ac[s])[i]).sum::<f32>()
                })
                .collect();
            assert_close(&format!("definition {what}"), &host(&yc), &want, 1e-5, 1e-5);
            let dout = r.vec(rows * cols, 1.0);
            let (dc, dg) = pair(&dout, &[rows, cols], &gpu);
            let da_c = scalearn::scale(None, &dc, &wc, sources - 1).unwrap().unwrap();
            let da_g = scalearn::scale(None, &dg, &wg, sources - 1).unwrap().unwrap();
            compare(&format!("source gradient {what}"), &da_g, &da_c, 1e-6, 1e-6);
            let (mut gwc, mut gwg) = pair(&r.vec(sources * wcols, 1.0), &[sources, wcols], &gpu);
            let before = host(&gwc);
            for s in 0..sources {
                scalearn::grad(&mut gwc, &dc, &ac[s], s).unwrap();
                scalearn::grad(&mut gwg, &dg, &ag[s], s).unwrap();
            }
            compare(&format!("omega gradient {what}"), &gwg, &gwc, 1e-4, 1e-4);
            let want: Vec<f32> = (0..sources * wcols)
                .map(|j| {
                    let (s, c) = (j / wcols, j % wcols);
                    let a = host(&ac[s]);
                    before[j]
                        + (0..rows * cols)
                            .filter(|i| scalar || i % cols == c)
                            .map(|i| (dout[i] as f64 * a[i] as f64) as f32)
                            .sum::<f32>()
                })
                .collect();
            assert_close(&format!("omega gradient definition {what}"), &host(&gwc), &want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn soft_cross_entropy_loss_and_gradient() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(23);
    for &(b, k) in &[(1, 2), (7, 3), (65, 5)] {
        let logits = r.vec(b * k, 4.0);
        let mut q: Vec<f32> = (0..b * k).map(|_| r.uniform() as f32).collect();
        for row in q.chunks_mut(k) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        let (lc, lg) = pair(&logits, &[b, k], &gpu);
        let (qc, qg) = pair(&q, &[b, k], &gpu);
        let (losc, dc) = ops::soft_cross_entropy(&lc, &qc, 0.5).unwrap();
        let (losg, dg) = ops::soft_cross_entropy(&lg, &qg, 0.5).unwrap();
        compare(&format!("soft ce loss {b}x{k}"), &losg, &losc, 1e-5, 1e-5);
        compare(&format!("soft ce dlogits {b}x{k}"), &dg, &dc, 1e-6, 1e-5);
        // A one-hot target is the ordinary cross-entropy.
        let labels: Vec<u32> = (0..b).map(|_| r.below(k as u32)).collect();
        let hot: Vec<f32> = (0..b * k).map(|i| (labels[i / k] as usize == i % k) as u8 as f32).collect();
        let hc = Device::Cpu.tensor(&hot, &[b, k]).unwrap();
        let yc = Device::Cpu.tensor_u32(&labels, &[b]).unwrap();
        let (l1, d1) = ops::soft_cross_entropy(&lc, &hc, 0.5).unwrap();
        let (l2, d2) = ops::cross_entropy(&lc, &yc, &labels, 0.5).unwrap();
        assert_close("one-hot loss", &host(&l1), &host(&l2), 1e-5, 1e-5);
        assert_close("one-hot dlogits", &host(&d1), &host(&d2), 1e-6, 1e-5);
    }
}

/// Random blocks of `kind` for a (rows, cols) weight: small f16 scales, random quants.
fn random_blocks(kind: localtune::quant::GgmlType, rows: usize, cols: usize, r: &mut Rng) -> Vec<u8> {
    let (per, size) = kind.block();
    let mut out = vec![];
    for _ in 0..rows * cols / per {
        let mut b = vec![0u8; size];
        b[..2].copy_from_slice(&half::f16::from_f32(r.vec(1, 0.1)[0]).to_le_bytes());
        let start = if kind == localtune::quant::GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&half::f16::from_f32(r.vec(1, 0.5)[0]).to_le_bytes());
            4
        } else {
            2
        };
        for v in &mut b[start..] {
            *v = r.below(256) as u8;
        }
        out.extend(b);
    }
    out
}

#[test]
fn quantised_matmuls_match_the_dequantised_weight() {
    use localtune::ops::qmatmul::{qlinear, qlinear_dx, QWeight};
    use localtune::quant::{dequantize, nf4::Nf4, GgmlType};
    let gpu = gpu();
    let mut r = Rng(31);
    for kind in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Nf4, GgmlType::Nf4Double] {
        // Rows of x up to 4 take the CPU's dot-product path (threaded from 2048 × 64 values), more take
        // de-quantised panels through the f32 GEMM (two panels at 16 500 rows of 64; NF4's absmax
        // codes then span 65 blocks of 256).
        for &(n, rows, cols) in &[(1, 1, 64), (3, 5, 64), (17, 33, 192), (2, 70, 64), (1, 2048, 64), (6, 16_500, 64)] {
            let (bytes, w) = if kind.is_nf4() {
                let values = r.vec(rows * cols, 0.1);
                let q = Nf4::quantize(&values, kind == GgmlType::Nf4Double, "w").unwrap();
                (q.device_bytes(), q.dequantize())
            } else {
                let bytes = random_blocks(kind, rows, cols, &mut r);
                let w = dequantize(kind, &bytes);
                (bytes, w)
            };
            let x = r.vec(n * cols, 1.0);
            let dy = r.vec(n * rows, 1.0);
            let cpu = Device::Cpu;
            let qw = QWeight::new(&cpu, kind, rows, cols, &bytes).unwrap();
            let (xc, dyc) = (cpu.tensor(&x, &[n, cols]).unwrap(), cpu.tensor(&dy, &[n, rows]).unwrap());
            let wc = cpu.tensor(&w, &[rows, cols]).unwrap();
            let what = format!("{kind:?} n {n} W ({rows}, {cols})");
            let y = qlinear(&xc, &qw).unwrap();
            compare(
                &format!("{what} forward vs dequantised"),
                &y,
                &ops::matmul(&xc, &wc, false, true).unwrap(),
                1e-5,
                1e-5,
            );
            let dx = qlinear_dx(&dyc, &qw).unwrap();
            // dx sums over W's rows: rounding grows with the square root of their number.
            let dx_tol = 1e-5 * (rows as f32 / 100.0).sqrt().max(1.0);
            compare(
                &format!("{what} dx vs dequantised"),
                &dx,
                &ops::matmul(&dyc, &wc, false, false).unwrap(),
                dx_tol,
                dx_tol,
            );
            let Some(g) = &gpu else { continue };
            let qg = QWeight::new(g, kind, rows, cols, &bytes).unwrap();
            let yg = qlinear(&g.tensor(&x, &[n, cols]).unwrap(), &qg).unwrap();
            compare(&format!("{what} forward GPU vs CPU"), &yg, &y, 1e-5, 1e-5);
            let dxg = qlinear_dx(&g.tensor(&dy, &[n, rows]).unwrap(), &qg).unwrap();
            // Summed in another order over up to 16 500 rows: rounding scales with the largest value.
            let big = host(&dx).iter().fold(1f32, |m, v| m.max(v.abs()));
            compare(&format!("{what} dx GPU vs CPU"), &dxg, &dx, dx_tol * big, dx_tol);
        }
    }
}

#[test]
fn llama_kernels() {
    use localtune::ops::llama as l;
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(22);
    let mut shapes: Vec<(usize, usize)> = ODD.iter().flat_map(|&a| ODD.iter().map(move |&b| (a, b))).collect();
    shapes.push((40, 576));
    for (rows, cols) in shapes {
        let what = format!("rmsnorm {rows}x{cols}");
        let (xc, xg) = pair(&r.vec(rows * cols, 2.0), &[rows, cols], &gpu);
        let (gc, gg) = pair(&r.vec(cols, 1.0), &[cols], &gpu);
        let (dyc, dyg) = pair(&r.vec(rows * cols, 1.0), &[rows, cols], &gpu);
        let (yc, rc) = l::rmsnorm(&xc, &gc, 1e-5).unwrap();
        let (yg, rg) = l::rmsnorm(&xg, &gg, 1e-5).unwrap();
        compare(&format!("{what} y"), &yg, &yc, 1e-5, 1e-4);
        compare(&format!("{what} rstd"), &rg, &rc, 1e-5, 1e-4);
        let (mut dgc, mut dgg) = (Device::Cpu.zeros(&[cols]).unwrap(), gpu.zeros(&[cols]).unwrap());
        let dxc = l::rmsnorm_backward(Some(&mut dgc), &dyc, &xc, &rc, &gc).unwrap();
        let dxg = l::rmsnorm_backward(Some(&mut dgg), &dyg, &xg, &rg, &gg).unwrap();
        compare(&format!("{what} dx"), &dxg, &dxc, 1e-4, 1e-3);
        compare(&format!("{what} dgamma"), &dgg, &dgc, 1e-4 * (rows as f32).sqrt(), 1e-3);
        let (ac, ag) = pair(&r.vec(rows * cols, 3.0), &[rows, cols], &gpu);
        let (bc, bg) = pair(&r.vec(rows * cols, 1.0), &[rows, cols], &gpu);
        let what = format!("swiglu {rows}x{cols}");
        compare(&what, &l::swiglu(&ag, &bg).unwrap(), &l::swiglu(&ac, &bc).unwrap(), 1e-5, 1e-4);
        let (dgc, duc) = l::swiglu_backward(&dyc, &ac, &bc).unwrap();
        let (dgg, dug) = l::swiglu_backward(&dyg, &ag, &bg).unwrap();
        compare(&format!("{what} dg"), &dgg, &dgc, 1e-5, 1e-4);
        compare(&format!("{what} du"), &dug, &duc, 1e-5, 1e-4);
    }
    // RoPE and repeat_kv on odd head counts and lengths, and SmolLM2's (9 heads of 64, 3 kv heads).
    for &(b, t, heads, d, groups) in &[(1, 1, 1, 2, 1), (2, 7, 3, 6, 3), (3, 33, 2, 10, 2), (1, 40, 3, 64, 3)] {
        let cols = heads * d;
        let what = format!("rope b{b} t{t} {heads}x{d}");
        let (cos, sin) = l::rope_tables(3, t, d, 100000.0);
        let (cc, cg) = pair(&cos, &[t, d / 2], &gpu);
        let (sc, sg) = pair(&sin, &[t, d / 2], &gpu);
        let (xc, xg) = pair(&r.vec(b * t * cols, 1.0), &[b, t, cols], &gpu);
        for back in [false, true] {
            let yc = l::rope(&xc, &cc, &sc, d, back).unwrap();
            let yg = l::rope(&xg, &cg, &sg, d, back).unwrap();
            compare(&format!("{what} backward={back}"), &yg, &yc, 1e-6, 1e-5);
        }
        // Turning forward then back gives the input.
        let round = l::rope(&l::rope(&xc, &cc, &sc, d, false).unwrap(), &cc, &sc, d, true).unwrap();
        compare(&format!("{what} round trip"), &round, &xc, 1e-5, 1e-5);
        let what = format!("repeat_kv b{b} t{t} {heads}x{d} g{groups}");
        let yc = l::repeat_kv(&xc, d, groups).unwrap();
        let yg = l::repeat_kv(&xg, d, groups).unwrap();
        compare(&what, &yg, &yc, 0.0, 0.0);
        let (wc, wg) = pair(&r.vec(b * t * cols * groups, 1.0), &[b, t, cols * groups], &gpu);
        let dc = l::repeat_kv_backward(&wc, d, groups).unwrap();
        let dg = l::repeat_kv_backward(&wg, d, groups).unwrap();
        compare(&format!("{what} backward"), &dg, &dc, 1e-6, 1e-5);
    }
}
