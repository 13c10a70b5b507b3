//! Multi-source transfer: ranking source adapters on a target's local data before spending compute
//! on them, and distilling from the best of them (`distill`). ScaLearn, which trains on top of the
//! sources, is a fine-tuning method: `crate::peft::scalearn`.
//!
//! A source is scored on what it computes for the target's texts (`SourceOutputs`): LogME on the
//! features its classifier reads (the source-adapted encoder's pooled output), LEEP on its predicted
//! distribution over its own labels, NCE on its hard predictions — the last two work whatever the
//! source's label space. `greedy_ensemble` grows the best team of k sources on a score of their
//! combined outputs (concatenated features; predictions side by side), as Agostinelli et al.
//! ("How stable are Transferability Metrics evaluations?" / "Building a Winning Team") select
//! source ensembles.

pub mod distill;
pub mod leep;
pub mod logme;
pub mod nce;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::peft::format::AdapterFiles;
use crate::peft::{Adapted, Classifier, HeadKind};

/// A transferability score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    LogMe,
    Leep,
    Nce,
}

impl Score {
    pub const NAMES: &'static [&'static str] = &["logme", "leep", "nce"];

    pub fn parse(s: &str) -> Result<Score> {
        match s {
            "logme" => Ok(Score::LogMe),
            "leep" => Ok(Score::Leep),
            "nce" => Ok(Score::Nce),
            o => Err(Error::invalid(format!("score `{o}`: choose logme, leep or nce"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Score::LogMe => "logme",
            Score::Leep => "leep",
            Score::Nce => "nce",
        }
    }
}

/// What one source computes for n target texts.
#[derive(Clone, Debug, Default)]
pub struct SourceOutputs {
    /// The classifier's input (n × dim): the source-adapted model's features.
    pub features: Vec<f32>,
    pub dim: usize,
    /// The source's predicted distribution over its own labels (n × classes).
    pub probs: Vec<f32>,
    pub classes: usize,
}

impl SourceOutputs {
    pub fn len(&self) -> usize {
        self.features.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The argmax of each row of `probs`.
    pub fn hard(&self) -> Vec<u32> {
        crate::train::metrics::argmax_rows(&self.probs, self.classes)
    }

    /// Several sources side by side: features concatenated per row; predictions concatenated and
    /// divided by the number of sources (a distribution over (source, label)).
    pub fn concat(parts: &[&SourceOutputs]) -> SourceOutputs {
        let n = parts[0].len();
        let dim: usize = parts.iter().map(|p| p.dim).sum();
        let classes: usize = parts.iter().map(|p| p.classes).sum();
        let w = 1.0 / parts.len() as f32;
        let mut out = SourceOutputs {
            features: Vec::with_capacity(n * dim),
            dim,
            probs: Vec::with_capacity(n * classes),
            classes,
        };
        for i in 0..n {
            for p in parts {
                out.features.extend_from_slice(&p.features[i * p.dim..(i + 1) * p.dim]);
            }
            for p in parts {
                out.probs.extend(p.probs[i * p.classes..(i + 1) * p.classes].iter().map(|v| v * w));
            }
        }
        out
    }
}

/// Softmax of each row of `logits` (n × k).
pub fn softmax_rows(logits: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(k) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let e: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / s) as f32));
    }
    out
}

/// The features and predictions of `params` (a source adapter with its head) on `texts`.
pub async fn source_outputs(
    model: &Model,
    params: &Adapted,
    head: HeadKind,
    texts: &[&str],
    max_len: usize,
    batch: usize,
) -> Result<SourceOutputs> {
    let clf = Classifier { base: &model.encoder, params, head };
    let k = params.classes();
    let mut out = SourceOutputs { dim: model.encoder.config.hidden_size, classes: k, ..Default::default() };
    let mut logits = Vec::with_capacity(texts.len() * k);
    for chunk in texts.chunks(batch.max(1)) {
        let enc = model.encode(chunk, max_len)?;
        let (f, l) = clf.features_and_logits(&enc.inputs)?;
        out.features.extend(f.to_vec().await?);
        logits.extend(l.to_vec().await?);
    }
    out.probs = softmax_rows(&logits, k);
    Ok(out)
}

/// Every source's outputs on `texts`; an adapter that does not fit the model is an error naming it.
pub async fn outputs_of(
    model: &Model,
    sources: &[(String, AdapterFiles)],
    texts: &[&str],
    max_len: usize,
) -> Result<Vec<SourceOutputs>> {
    let mut out = Vec::with_capacity(sources.len());
    for (name, f) in sources {
        let a = f.to_adapted(&model.encoder).map_err(|e| Error::file(name, e.to_string()))?;
        out.push(source_outputs(model, &a, f.head, texts, max_len, 32).await?);
    }
    Ok(out)
}

/// The first `n` rows of `o`.
pub fn head_rows(o: &SourceOutputs, n: usize) -> SourceOutputs {
    SourceOutputs {
        features: o.features[..n * o.dim].to_vec(),
        dim: o.dim,
        probs: o.probs[..n * o.classes].to_vec(),
        classes: o.classes,
    }
}

/// (LogME, LEEP, NCE) of one source's outputs.
pub fn all_scores(o: &SourceOutputs, labels: &[u32], classes: usize) -> Result<[f64; 3]> {
    Ok([
        score(Score::LogMe, o, labels, classes)?,
        score(Score::Leep, o, labels, classes)?,
        score(Score::Nce, o, labels, classes)?,
    ])
}

impl Score {
    /// This score's place in `all_scores`.
    pub fn column(self) -> usize {
        match self {
            Score::LogMe => 0,
            Score::Leep => 1,
            Score::Nce => 2,
        }
    }
}

/// `score` of one source's outputs for target labels in 0..classes.
pub fn score(score: Score, o: &SourceOutputs, labels: &[u32], classes: usize) -> Result<f64> {
    if o.len() != labels.len() {
        return Err(Error::invalid(format!("{} outputs for {} labels", o.len(), labels.len())));
    }
    if labels.is_empty() {
        return Err(Error::invalid("no labelled target examples to score sources on"));
    }
    Ok(match score {
        Score::LogMe => logme::logme(&o.features, o.len(), o.dim, labels, classes),
        Score::Leep => leep::leep(&o.probs, o.classes, labels, classes),
        Score::Nce => {
            // Hard predictions of several sources at once (a concatenation) are their tuple; one
            // source's are its argmax.
            nce::nce(&o.hard(), o.classes, labels, classes)
        }
    })
}

/// The best team of up to `k` sources: the best-scoring source first, then repeatedly the source
/// whose addition scores the ensemble highest, stopping early when no addition improves it.
/// Returns (indices in order of selection, the ensemble's score after each).
pub fn greedy_ensemble(
    s: Score,
    outputs: &[SourceOutputs],
    labels: &[u32],
    classes: usize,
    k: usize,
) -> Result<Vec<(usize, f64)>> {
    let mut chosen: Vec<(usize, f64)> = vec![];
    while chosen.len() < k.min(outputs.len()) {
        let mut best: Option<(usize, f64)> = None;
        for i in 0..outputs.len() {
            if chosen.iter().any(|(c, _)| *c == i) {
                continue;
            }
            let team: Vec<&SourceOutputs> = chosen.iter().map(|(c, _)| &outputs[*c]).chain([&outputs[i]]).collect();
            let v = if s == Score::Nce && team.len() > 1 {
                nce_of_team(&team, labels, classes)
            } else {
                score(s, &SourceOutputs::concat(&team), labels, classes)?
            };
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        let (i, v) = best.unwrap();
        if chosen.last().is_some_and(|(_, prev)| v <= *prev) {
            break;
        }
        chosen.push((i, v));
    }
    Ok(chosen)
}

/// NCE of the tuple of several sources' hard predictions.
fn nce_of_team(team: &[&SourceOutputs], labels: &[u32], classes: usize) -> f64 {
    let mut z = vec![0u32; labels.len()];
    let mut cs = 1usize;
    for o in team {
        for (zi, h) in z.iter_mut().zip(o.hard()) {
            *zi = *zi * o.classes as u32 + h;
        }
        cs *= o.classes;
    }
    nce::nce(&z, cs, labels, classes)
}

/// Kendall's τ-b between two rankings' values (ties counted as neither concordant nor discordant).
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    let (mut conc, mut disc, mut ta, mut tb) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            if da == 0.0 && db == 0.0 {
                continue;
            } else if da == 0.0 {
                ta += 1;
            } else if db == 0.0 {
                tb += 1;
            } else if (da > 0.0) == (db > 0.0) {
                conc += 1;
            } else {
                disc += 1;
            }
        }
    }
    let denom = (((conc + disc + ta) * (conc + disc + tb)) as f64).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (conc - disc) as f64 / denom
    }
}
