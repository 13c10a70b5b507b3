//! Classification metrics.

/// Accuracy, macro-F1 and the confusion matrix of predictions against labels.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    /// Mean over classes of F1 (a class with neither predictions nor examples counts 0, as scikit-learn).
    pub macro_f1: f64,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
    /// Mean cross-entropy loss, when logits were given.
    pub loss: Option<f64>,
}

impl Metrics {
    pub fn new(truth: &[u32], predicted: &[u32], classes: usize, loss: Option<f64>) -> Metrics {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t as usize][p as usize] += 1;
        }
        let n = truth.len();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let f1 = |c: usize| {
            let tp = confusion[c][c] as f64;
            let pred: usize = (0..classes).map(|t| confusion[t][c]).sum();
            let actual: usize = confusion[c].iter().sum();
            if pred + actual == 0 {
                0.0
            } else {
                2.0 * tp / (pred + actual) as f64
            }
        };
        let macro_f1 = (0..classes).map(f1).sum::<f64>() / classes.max(1) as f64;
        Metrics { n, accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 }, macro_f1, confusion, loss }
    }
}

/// The index of the largest value of each row of `classes` logits.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks_exact(classes)
        .map(|r| {
            r.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
                as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        // truth 0,0,1,1,2 ; predicted 0,1,1,1,0
        let m = Metrics::new(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3, None);
        assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        // F1: class0 = 2·1/(2+2) = 0.5, class1 = 2·2/(3+2) = 0.8, class2 = 0
        assert!((m.macro_f1 - (0.5 + 0.8) / 3.0).abs() < 1e-12);
        assert_eq!(argmax_rows(&[0.1, 0.9, 3.0, -1.0], 2), vec![1, 0]);
    }
}
