//! Fisher-weighted averaging (Matena & Raffel): θ* = Σ λᵢ Fᵢ θᵢ / Σ λᵢ Fᵢ elementwise, with each
//! diagonal Fisher raised to a floor (1e-6 by default) so that entries no model is sure of fall back
//! to the λ-weighted average. The Fisher diagonals come from `crate::merge::fisher_estimate`.

use super::TensorSettings;
use crate::error::Result;
use crate::ops::merge::{combine, CombineFlags, CombineMode};
use crate::tensor::Tensor;

/// x: the stack (N, …) of the models' values; fisher: their Fisher diagonals, stacked the same way.
pub fn merge(x: &Tensor, fisher: &Tensor, s: &TensorSettings) -> Result<Tensor> {
    let mode = CombineMode::Fisher { floor: s.fisher_floor };
    combine(x, &s.weights, Some(fisher), None, mode, CombineFlags::default())
}

/// Which diagonal Fisher `estimate` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherKind {
    /// E_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)², over the model's own predicted distribution (the
    /// paper's default).
    Expected,
    /// E_x (∂ log p(y*|x) / ∂θ)² at the true labels y*.
    Empirical,
}

/// The diagonal Fisher of a classifier's trainable parameters on local texts, one example at a time
/// (each needs its own squared gradient): a set of named tensors like the parameters, under their
/// names. The classifier head is left out unless `include_head` (as in Matena & Raffel).
#[allow(clippy::too_many_arguments)]
pub async fn estimate(
    model: &crate::model::Model,
    params: &crate::peft::Adapted,
    head: crate::peft::HeadKind,
    texts: &[&str],
    labels: &[u32],
    max_len: usize,
    kind: FisherKind,
    include_head: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<crate::model::weights::NamedTensors> {
    use crate::error::Error;
    use crate::ops;
    use crate::peft::Classifier;
    if texts.is_empty() {
        return Err(Error::invalid("no examples to estimate a Fisher on"));
    }
    if kind == FisherKind::Empirical && labels.len() != texts.len() {
        return Err(Error::invalid("the empirical Fisher needs a label per example"));
    }
    let dev = &model.encoder.device;
    let clf = Classifier { base: &model.encoder, params, head };
    let mut fisher = params.params.zeros_like(dev)?;
    let mut grads = params.params.zeros_like(dev)?;
    let k = params.classes();
    for (i, text) in texts.iter().enumerate() {
        let enc = model.encode(&[text], max_len)?;
        let (logits, acts) = clf.forward(&enc.inputs, None, true)?;
        let acts = acts.expect("kept activations");
        let z = logits.to_vec().await?;
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - m) as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
        let ys: Vec<(usize, f64)> = match kind {
            FisherKind::Expected => (0..k).map(|y| (y, p[y])).collect(),
            FisherKind::Empirical => vec![(labels[i] as usize, 1.0)],
        };
        for (y, weight) in ys {
            grads.zero()?;
            // ∂(−log p_y)/∂z = p − e_y; its square is that of ∂ log p_y.
            let d: Vec<f32> = (0..k).map(|c| (p[c] - (c == y) as u8 as f64) as f32).collect();
            let dlogits = dev.tensor(&d, &[1, k])?;
            clf.backward(&enc.inputs, &acts, &dlogits, &mut grads, None)?;
            for (f, g) in fisher.tensors_mut().iter_mut().zip(grads.tensors()) {
                let g2 = ops::mul(g, g)?;
                ops::add_into(f, &g2, (weight / texts.len() as f64) as f32)?;
            }
        }
        progress(i + 1, texts.len());
    }
    let mut host = fisher.to_host("fisher").await?;
    if !include_head {
        let (w, b) = params.classifier;
        host.tensors.remove(params.params.name(w));
        host.tensors.remove(params.params.name(b));
    }
    Ok(host)
}
