//! LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
//! Representations"): the mean log-likelihood of the target labels under the "expected empirical
//! predictor" Σ_z P̂(y | z) θ(x)_z, where θ(x) is the source model's predicted distribution over its own
//! labels z and P̂(y | z) the empirical conditional from the joint Σ_x θ(x)_z [y(x) = y] / n. Source
//! and target label spaces may differ. Higher (closer to 0) is better.

/// P̂(y | z) (classes × source_classes, row y) from the source's predictions `probs` (n × cs).
pub fn conditional(probs: &[f32], cs: usize, labels: &[u32], classes: usize) -> Vec<f64> {
    let n = labels.len();
    let mut joint = vec![0.0f64; classes * cs];
    for (row, &y) in probs.chunks_exact(cs).zip(labels) {
        for (z, &p) in row.iter().enumerate() {
            joint[y as usize * cs + z] += p as f64 / n as f64;
        }
    }
    for z in 0..cs {
        let col: f64 = (0..classes).map(|y| joint[y * cs + z]).sum();
        for y in 0..classes {
            joint[y * cs + z] = if col > 0.0 { joint[y * cs + z] / col } else { 0.0 };
        }
    }
    joint
}

/// The target-label distribution of the expected empirical predictor for one prediction row.
pub fn predict(row: &[f32], cond: &[f64], classes: usize) -> Vec<f64> {
    let cs = row.len();
    (0..classes).map(|y| (0..cs).map(|z| cond[y * cs + z] * row[z] as f64).sum()).collect()
}

/// LEEP of source predictions `probs` (n × cs, rows summing to 1) for target labels in 0..classes.
pub fn leep(probs: &[f32], cs: usize, labels: &[u32], classes: usize) -> f64 {
    let cond = conditional(probs, cs, labels, classes);
    let n = labels.len();
    probs.chunks_exact(cs).zip(labels).map(|(row, &y)| predict(row, &cond, classes)[y as usize].ln()).sum::<f64>()
        / n as f64
}
