//! Multi-source distillation (Borup et al., "Distilling from Similar Tasks for Transfer Learning on a
//! Budget"): the student trains on the target's texts — its few labelled ones and any unlabelled
//! ones — against the soft predictions of source models. DistillNearest takes the best-ranked source
//! alone; DistillWeighted averages every source's predictions with weights from their
//! transferability scores: a softmax of the scores standardised over the sources (w ∝ exp(z), z the
//! score minus the mean, over the standard deviation), so that the weights do not depend on the
//! score's scale (this project's reading; identical scores weigh equally).
//!
//! A source's prediction is over its own labels: when they are the target's labels (the same names)
//! it is used as it is, else it is mapped to the target's labels by LEEP's empirical conditional
//! P̂(y | z) estimated on the labelled examples. A labelled example's target is
//! (1 − α) · one-hot(label) + α · teacher, an unlabelled one's the teacher's; the loss is the
//! cross-entropy against that distribution.

use super::{head_rows, leep, outputs_of, score, Score};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::peft::format::AdapterFiles;
use crate::train::Examples;

/// How the teachers are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// The best-ranked source alone (DistillNearest).
    Nearest,
    /// Every source, weighted by its score (DistillWeighted).
    Weighted,
}

impl Weighting {
    pub fn parse(s: &str) -> Result<Weighting> {
        match s {
            "nearest" => Ok(Weighting::Nearest),
            "weighted" => Ok(Weighting::Weighted),
            o => Err(Error::invalid(format!("weighting `{o}`: choose nearest or weighted"))),
        }
    }
}

/// The teachers' weights for their scores.
pub fn weights(scores: &[f64], w: Weighting) -> Vec<f64> {
    let n = scores.len();
    match w {
        Weighting::Nearest => {
            let best = (0..n).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap_or(0);
            (0..n).map(|i| (i == best) as u8 as f64).collect()
        }
        Weighting::Weighted => {
            let mean = scores.iter().sum::<f64>() / n as f64;
            let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let z: Vec<f64> = scores.iter().map(|s| if sd > 0.0 { (s - mean) / sd } else { 0.0 }).collect();
            let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
            let t: f64 = e.iter().sum();
            e.iter().map(|v| v / t).collect()
        }
    }
}

/// A source's predictions `probs` (n × cs) over `source_labels` as distributions over
/// `target_labels`: as they are when the label names agree (in any order), else through P̂(y | z)
/// estimated from the rows `labelled` whose target labels are `labels`.
pub fn to_target_labels(
    probs: &[f32],
    source_labels: &[String],
    target_labels: &[String],
    labelled: &[usize],
    labels: &[u32],
) -> Vec<f32> {
    let (cs, k) = (source_labels.len(), target_labels.len());
    let mut same: Vec<usize> = vec![];
    for t in target_labels {
        if let Some(i) = source_labels.iter().position(|s| s == t) {
            same.push(i);
        }
    }
    if cs == k && same.len() == k {
        return probs.chunks_exact(cs).flat_map(|row| same.iter().map(|&i| row[i]).collect::<Vec<_>>()).collect();
    }
    let sub: Vec<f32> = labelled.iter().flat_map(|&i| probs[i * cs..(i + 1) * cs].to_vec()).collect();
    let cond = leep::conditional(&sub, cs, labels, k);
    probs.chunks_exact(cs).flat_map(|row| leep::predict(row, &cond, k).into_iter().map(|v| v as f32)).collect()
}

/// The training targets (n × k): Σ_s w_s teacher_s, mixed with the one-hot label where there is one.
pub fn targets(teachers: &[Vec<f32>], w: &[f64], labels: &[Option<u32>], k: usize, alpha: f32) -> Vec<f32> {
    let n = labels.len();
    let mut out = vec![0f32; n * k];
    for (t, &ws) in teachers.iter().zip(w) {
        for (o, v) in out.iter_mut().zip(t) {
            *o += ws as f32 * v;
        }
    }
    for (i, l) in labels.iter().enumerate() {
        if let Some(l) = l {
            for c in 0..k {
                let hot = (c as u32 == *l) as u8 as f32;
                out[i * k + c] = (1.0 - alpha) * hot + alpha * out[i * k + c];
            }
        }
    }
    out
}

/// One teacher as the distillation used it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Teacher {
    pub name: String,
    pub score: f64,
    pub weight: f64,
}

/// The soft targets of a distillation: the teachers `sources` scored by `s` on the labelled `train`
/// examples, weighted by `w`, predicting on `train`'s texts then `unlabelled`; one row of `labels.len()`
/// values per text, labelled rows mixed with their label by `alpha`.
#[allow(clippy::too_many_arguments)]
pub async fn teacher_targets(
    model: &Model,
    sources: &[(String, AdapterFiles)],
    train: &Examples,
    labels: &[String],
    unlabelled: &[String],
    s: Score,
    w: Weighting,
    alpha: f32,
    max_len: usize,
) -> Result<(Vec<Teacher>, Vec<f32>)> {
    if sources.is_empty() {
        return Err(Error::invalid("no teachers: choose at least one source adapter"));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid(format!("distillation alpha {alpha}: must be between 0 and 1")));
    }
    let texts: Vec<&str> = train.texts.iter().chain(unlabelled).map(|t| t.as_str()).collect();
    let (n_l, k) = (train.len(), labels.len());
    let outs = outputs_of(model, sources, &texts, max_len).await?;
    let labelled: Vec<usize> = (0..n_l).collect();
    let mut scores = vec![];
    let mut dists = vec![];
    for ((_, f), o) in sources.iter().zip(&outs) {
        scores.push(score(s, &head_rows(o, n_l), &train.labels, k)?);
        dists.push(to_target_labels(&o.probs, &f.labels, labels, &labelled, &train.labels));
    }
    let ws = weights(&scores, w);
    let per: Vec<Option<u32>> =
        train.labels.iter().map(|&l| Some(l)).chain(std::iter::repeat_n(None, unlabelled.len())).collect();
    let teachers = sources
        .iter()
        .zip(scores.iter().zip(&ws))
        .map(|((name, _), (&score, &weight))| Teacher { name: name.clone(), score, weight })
        .collect();
    Ok((teachers, targets(&dists, &ws, &per, k, alpha)))
}
