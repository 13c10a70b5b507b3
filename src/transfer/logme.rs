//! LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"): the
//! log marginal evidence of a Bayesian linear model from features F (n × d) to each class's indicator,
//! maximised over the prior and noise precisions (α, β) by the fixed-point iteration on the SVD of F
//! ("Ranking and Tuning Pre-trained Models", as thuml/LogME computes it), averaged over classes and
//! divided by n. Higher is better.

use crate::linalg::thin_svd;

/// LogME of features `f` (n × d, row-major) for labels in 0..classes.
pub fn logme(f: &[f32], n: usize, d: usize, labels: &[u32], classes: usize) -> f64 {
    assert_eq!(f.len(), n * d);
    let f64s: Vec<f64> = f.iter().map(|&v| v as f64).collect();
    let (u, s, _v) = thin_svd(&f64s, n, d);
    // Keep the singular values above 1e-10 (the rank of F).
    let k = s.iter().take_while(|&&v| v > 1e-10).count();
    let sigma: Vec<f64> = s[..k].iter().map(|v| v * v).collect();
    let (nf, df) = (n as f64, d as f64);
    let mut total = 0.0;
    for class in 0..classes {
        let y: Vec<f64> = labels.iter().map(|&l| (l as usize == class) as u8 as f64).collect();
        let x2: Vec<f64> =
            u[..k].iter().map(|col| col.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>().powi(2)).collect();
        let res_x2 = y.iter().map(|v| v * v).sum::<f64>() - x2.iter().sum::<f64>();
        let (mut alpha, mut beta) = (1.0f64, 1.0f64);
        let (mut m2, mut res2) = (0.0, 0.0);
        for _ in 0..11 {
            let t = alpha / beta;
            let gamma: f64 = sigma.iter().map(|s| s / (s + t)).sum();
            m2 = sigma.iter().zip(&x2).map(|(s, x)| s * x / (t + s).powi(2)).sum();
            res2 = x2.iter().zip(&sigma).map(|(x, s)| x / (1.0 + s / t).powi(2)).sum::<f64>() + res_x2;
            alpha = gamma / (m2 + 1e-5);
            beta = (nf - gamma) / (res2 + 1e-5);
            let t_new = alpha / beta;
            if (t_new - t).abs() / t <= 1e-3 {
                break;
            }
        }
        let evidence = df / 2.0 * alpha.ln() + nf / 2.0 * beta.ln()
            - 0.5 * sigma.iter().map(|s| (alpha + beta * s).ln()).sum::<f64>()
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - nf / 2.0 * (2.0 * std::f64::consts::PI).ln();
        total += evidence / nf;
    }
    total / classes as f64
}
