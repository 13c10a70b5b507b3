//! NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks"): the negative
//! conditional entropy −H(Y | Z) of the target labels given the source model's hard predictions z
//! (argmax over its own labels), from their empirical joint; 0 log 0 counts as 0. Higher (closer to 0)
//! is better.

/// NCE of source hard labels `z` (in 0..cs) for target labels in 0..classes.
pub fn nce(z: &[u32], cs: usize, labels: &[u32], classes: usize) -> f64 {
    let n = labels.len() as f64;
    let mut joint = vec![0.0f64; classes * cs];
    for (&z, &y) in z.iter().zip(labels) {
        joint[y as usize * cs + z as usize] += 1.0 / n;
    }
    let mut h = 0.0;
    for zc in 0..cs {
        let pz: f64 = (0..classes).map(|y| joint[y * cs + zc]).sum();
        if pz <= 0.0 {
            continue;
        }
        for y in 0..classes {
            let p = joint[y * cs + zc] / pz;
            if p > 0.0 {
                h -= pz * p * p.ln();
            }
        }
    }
    -h
}
