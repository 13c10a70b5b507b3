//! The training loop, one micro-batch at a time so that a caller (the CLI's progress bar, the web
//! app's worker) stays in control between steps. Every random choice is a function of the seed, the
//! epoch and the step — the data order of an epoch, the dropout masks — so a run resumed from a
//! checkpoint continues exactly as the uninterrupted run would have.

use super::data::Dataset;
use super::metrics::{argmax_rows, Metrics};
use super::optim::{explosion, AdamW, OptimConfig};
use crate::error::{Error, Result};
use crate::model::hooks::Dropout;
use crate::model::{Model, ParamSet};
use crate::ops;
use crate::peft::format::AdapterFiles;
use crate::peft::{Adapted, Classifier, HeadKind, Method};
use crate::rng::Rng;
use std::rc::Rc;

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    pub head: HeadKind,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub max_len: usize,
    pub seed: u64,
    pub optim: OptimConfig,
    /// Dropout as the model's config says (hidden and attention), in training only.
    pub dropout: bool,
}

/// Texts with label ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Examples {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
}

impl Examples {
    pub fn from_dataset(ds: &Dataset, labels: &[String]) -> Result<Examples> {
        Ok(Examples { texts: ds.examples.iter().map(|e| e.text.clone()).collect(), labels: ds.label_ids(labels)? })
    }
    pub fn len(&self) -> usize {
        self.texts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
    /// A fingerprint of the texts and labels, to check that a resumed run sees the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for (t, &l) in self.texts.iter().zip(&self.labels) {
            for b in t.bytes().chain(l.to_le_bytes()) {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
        h
    }
}

/// Validation figures at the end of an epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
    pub valid_accuracy: Option<f64>,
    pub valid_macro_f1: Option<f64>,
}

/// Where a run stands; saved in checkpoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub epoch: usize,
    /// Micro-batches of this epoch done.
    pub batch_in_epoch: usize,
    /// Micro-batches done in the run.
    pub micro_step: u64,
    /// This epoch's example order.
    pub order: Vec<usize>,
    /// Sum and count of this epoch's losses so far.
    pub epoch_loss_sum: f64,
    pub epoch_loss_n: usize,
    pub history: Vec<EpochRecord>,
    /// Loss of every micro-batch so far.
    pub losses: Vec<f32>,
    pub train_fingerprint: u64,
    pub valid_fingerprint: u64,
}

/// What one call of `Trainer::step` did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f32,
    pub lr: f32,
    pub epoch: usize,
    pub micro_step: u64,
    /// Set when the step finished an epoch (after its validation).
    pub epoch_end: Option<EpochRecord>,
    pub done: bool,
}

pub struct Trainer {
    /// Shared so that a long-lived owner (the web app's session) can hold the trainer and the model.
    pub model: Rc<Model>,
    pub config: TrainConfig,
    pub labels: Vec<String>,
    pub train: Examples,
    pub valid: Examples,
    pub params: Adapted,
    grads: ParamSet,
    pub opt: AdamW,
    pub state: TrainState,
    accumulated: usize,
    /// Distillation: a target distribution (n × K) per training example instead of its label.
    soft_targets: Option<Vec<f32>>,
}

/// The most epochs a run may ask for (more is a typo, and would overflow the step count).
pub const MAX_EPOCHS: usize = 10_000;
/// The largest batch (and accumulation) a run may ask for.
pub const MAX_BATCH: usize = 65_536;

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ (0xE90C_0000 + epoch as u64)).shuffle(&mut order);
    order
}

impl Trainer {
    /// A fresh run of `config` on `model` with `labels` (the sorted training labels).
    pub fn new(
        model: Rc<Model>,
        config: TrainConfig,
        labels: Vec<String>,
        train: Examples,
        valid: Examples,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid("no training examples"));
        }
        if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
            return Err(Error::invalid("epochs, batch size and gradient accumulation must be at least 1"));
        }
        for (what, v, max) in [
            ("epochs", config.epochs, MAX_EPOCHS),
            ("batch size", config.batch_size, MAX_BATCH),
            ("gradient accumulation", config.grad_accum, MAX_BATCH),
        ] {
            if v > max {
                return Err(Error::invalid(format!("{what} {v} is more than this trainer takes ({max})")));
            }
        }
        if !(2..=model.encoder.max_len()).contains(&config.max_len) {
            return Err(Error::invalid(format!(
                "max length {} must be between 2 and {}",
                config.max_len,
                model.encoder.max_len()
            )));
        }
        if config.head == HeadKind::Pooler && model.encoder.pooler.is_none() {
            return Err(Error::invalid(format!(
                "this {} model has no pooler: use the mean head (--head mean)",
                model.encoder.desc.arch
            )));
        }
        let dev = &model.encoder.device;
        let params = Adapted::init(&model.encoder, &config.method, labels.len(), config.seed)?;
        let grads = params.params.zeros_like(dev)?;
        let micro = train.len().div_ceil(config.batch_size);
        let total = (config.epochs * micro.div_ceil(config.grad_accum)) as u64;
        let opt = AdamW::new(config.optim.clone(), &params.params, total, dev)?;
        let state = TrainState {
            epoch: 0,
            batch_in_epoch: 0,
            micro_step: 0,
            order: epoch_order(train.len(), config.seed, 0),
            epoch_loss_sum: 0.0,
            epoch_loss_n: 0,
            history: vec![],
            losses: vec![],
            train_fingerprint: train.fingerprint(),
            valid_fingerprint: valid.fingerprint(),
        };
        Ok(Trainer {
            model,
            config,
            labels,
            train,
            valid,
            params,
            grads,
            opt,
            state,
            accumulated: 0,
            soft_targets: None,
        })
    }

    /// Trains against a distribution over the labels per training example (n × K, rows summing to
    /// 1) instead of the labels: distillation.
    pub fn set_soft_targets(&mut self, targets: Vec<f32>) -> Result<()> {
        let (n, k) = (self.train.len(), self.labels.len());
        if targets.len() != n * k {
            return Err(Error::invalid(format!("{} soft targets for {n} examples of {k} labels", targets.len())));
        }
        if let Some(i) = targets.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::invalid(format!("soft target {} of example {} is {}", i % k, i / k, targets[i])));
        }
        self.soft_targets = Some(targets);
        Ok(())
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.config.batch_size)
    }

    pub fn total_micro_steps(&self) -> u64 {
        (self.batches_per_epoch() * self.config.epochs) as u64
    }

    pub fn finished(&self) -> bool {
        self.state.epoch >= self.config.epochs
    }

    fn classifier(&self) -> Classifier<'_> {
        Classifier { base: &self.model.encoder, params: &self.params, head: self.config.head }
    }

    fn dropout(&self) -> Option<Dropout> {
        let c = &self.model.encoder.config;
        let lora = self.config.method.kind().input_dropout();
        let on = self.config.dropout;
        Some(Dropout {
            seed: (self.config.seed as u32) ^ ((self.config.seed >> 32) as u32),
            step: self.state.micro_step as u32,
            hidden: if on { c.hidden_dropout_prob as f32 } else { 0.0 },
            attention: if on { c.attention_probs_dropout_prob as f32 } else { 0.0 },
            lora,
        })
    }

    /// Runs one micro-batch (and the optimiser step that completes an accumulation), and the
    /// validation that ends an epoch.
    pub async fn step(&mut self) -> Result<StepOutcome> {
        if self.finished() {
            return Err(Error::invalid("training is already finished"));
        }
        let bs = self.config.batch_size;
        let start = self.state.batch_in_epoch * bs;
        let idx: Vec<usize> = self.state.order[start..(start + bs).min(self.train.len())].to_vec();
        let texts: Vec<&str> = idx.iter().map(|&i| self.train.texts[i].as_str()).collect();
        let labels: Vec<u32> = idx.iter().map(|&i| self.train.labels[i]).collect();
        let enc = self.model.encode(&texts, self.config.max_len)?;
        let dev = &self.model.encoder.device;
        let dropout = self.dropout();
        let (logits, acts) = self.classifier().forward(&enc.inputs, dropout.as_ref(), true)?;
        let label_t = dev.tensor_u32(&labels, &[labels.len()])?;
        let grad_scale = 1.0 / (labels.len() * self.config.grad_accum) as f32;
        let (loss, dlogits) = match &self.soft_targets {
            Some(q) => {
                let k = self.labels.len();
                let rows: Vec<f32> = idx.iter().flat_map(|&i| q[i * k..(i + 1) * k].iter().copied()).collect();
                ops::soft_cross_entropy(&logits, &dev.tensor(&rows, &[idx.len(), k])?, grad_scale)?
            }
            None => ops::cross_entropy(&logits, &label_t, &labels, grad_scale)?,
        };
        let acts = acts.expect("forward keeps activations");
        let clf = Classifier { base: &self.model.encoder, params: &self.params, head: self.config.head };
        clf.backward(&enc.inputs, &acts, &dlogits, &mut self.grads, dropout.as_ref())?;
        let epoch_done = self.state.batch_in_epoch + 1 == self.batches_per_epoch();
        let update = self.accumulated + 1 == self.config.grad_accum || epoch_done;
        // The global gradient norm is read back with the loss: a non-finite one must not reach the
        // parameters (nor, through them, a checkpoint).
        let norm_sq = if update { Some(self.opt.compute_norm(&self.grads)?.clone()) } else { None };
        let losses = loss.to_vec().await?;
        let loss = losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64;
        let norm = match &norm_sq {
            Some(n) => n.to_vec().await?[0] as f64,
            None => 0.0,
        };
        let start = self.state.losses.first().map(|&l| l as f64);
        let chance = (self.labels.len().max(2) as f64).ln();
        let why = explosion(loss, start, chance)
            .or_else(|| (!norm.is_finite()).then(|| format!("the gradient norm is {}", norm.sqrt())));
        if let Some(what) = why {
            self.grads.zero()?;
            self.accumulated = 0;
            return Err(Error::Diverged(format!(
                "training diverged: {what} at step {} (epoch {}); try a lower learning rate",
                self.state.micro_step + 1,
                self.state.epoch + 1
            )));
        }
        let lr = self.opt.lr_at(self.opt.step);
        self.accumulated += 1;
        self.state.batch_in_epoch += 1;
        self.state.micro_step += 1;
        if update {
            // An epoch's last accumulation may be shorter: its gradient is rescaled to a full mean.
            let scale = self.config.grad_accum as f32 / self.accumulated as f32;
            self.opt.apply(&mut self.params.params, &self.grads, scale)?;
            self.grads.zero()?;
            self.accumulated = 0;
        }
        self.state.losses.push(loss as f32);
        self.state.epoch_loss_sum += loss;
        self.state.epoch_loss_n += 1;
        let epoch = self.state.epoch;
        let mut epoch_end = None;
        if epoch_done {
            let (vl, va, vf) = if self.valid.is_empty() {
                (None, None, None)
            } else {
                let m = self.evaluate(&self.valid, 64).await?;
                (m.loss, Some(m.accuracy), Some(m.macro_f1))
            };
            let rec = EpochRecord {
                epoch: epoch + 1,
                train_loss: self.state.epoch_loss_sum / self.state.epoch_loss_n.max(1) as f64,
                valid_loss: vl,
                valid_accuracy: va,
                valid_macro_f1: vf,
            };
            self.state.history.push(rec.clone());
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.epoch_loss_sum = 0.0;
            self.state.epoch_loss_n = 0;
            self.state.order = epoch_order(self.train.len(), self.config.seed, self.state.epoch);
            epoch_end = Some(rec);
        }
        Ok(StepOutcome {
            loss: loss as f32,
            lr,
            epoch,
            micro_step: self.state.micro_step,
            epoch_end,
            done: self.finished(),
        })
    }

    /// Logits (n, K) of `texts` in evaluation mode.
    pub async fn logits(&self, texts: &[&str], batch: usize) -> Result<Vec<f32>> {
        predict_logits(&self.model, &self.params, self.config.head, texts, self.config.max_len, batch).await
    }

    /// Accuracy, macro-F1, confusion matrix and mean loss on `data`.
    pub async fn evaluate(&self, data: &Examples, batch: usize) -> Result<Metrics> {
        let texts: Vec<&str> = data.texts.iter().map(|s| s.as_str()).collect();
        let logits = self.logits(&texts, batch).await?;
        Ok(metrics_from_logits(&logits, &data.labels, self.labels.len()))
    }

    /// The adapter as files (host copies).
    pub async fn adapter(&self, base_model: &str) -> Result<AdapterFiles> {
        AdapterFiles::from_adapted(&self.params, &self.model.encoder, self.config.head, &self.labels, base_model).await
    }

    /// Everything a checkpoint holds: the adapter files, optimizer.safetensors (the moments under the
    /// parameters' names) and trainer_state.json.
    pub async fn checkpoint_files(&self, base_model: &str) -> Result<Vec<(String, Vec<u8>)>> {
        if self.accumulated != 0 {
            return Err(Error::invalid(
                "a checkpoint is taken after an optimiser step, not in the middle of an accumulation",
            ));
        }
        let mut files: Vec<(String, Vec<u8>)> = self
            .adapter(base_model)
            .await?
            .to_files(&self.model.encoder.desc)?
            .into_iter()
            .map(|(n, b)| (n.to_string(), b))
            .collect();
        files.push(("optimizer.safetensors".into(), self.opt.moments_to_bytes().await?));
        let state = serde_json::json!({
            "config": self.config,
            "labels": self.labels,
            "optimizer_step": self.opt.step,
            "total_steps": self.opt.total_steps,
            "state": self.state,
        });
        files.push(("trainer_state.json".into(), serde_json::to_vec_pretty(&state).unwrap()));
        Ok(files)
    }

    /// Restores a run from checkpoint files (as `checkpoint_files` wrote them), on the same data.
    /// With `asked`, the settings the resume was given: a checkpoint made with others is refused,
    /// naming each (a resumed run cannot change its lr, epochs or method halfway and stay one run).
    pub fn resume(
        model: Rc<Model>,
        files: &CheckpointFiles,
        train: Examples,
        valid: Examples,
        asked: Option<&TrainConfig>,
    ) -> Result<Self> {
        let origin = &files.origin;
        let st: serde_json::Value = serde_json::from_slice(&files.trainer_state)
            .map_err(|e| Error::file(format!("{origin}/trainer_state.json"), e))?;
        let bad =
            |what: &str| Error::file(format!("{origin}/trainer_state.json"), format!("missing or invalid `{what}`"));
        let mut config: TrainConfig = serde_json::from_value(st["config"].clone()).map_err(|_| bad("config"))?;
        if let Some(asked) = asked {
            let differ = settings_differ(&config, asked);
            if !differ.is_empty() {
                return Err(Error::invalid(format!(
                    "{origin}: this checkpoint was made with {}; resume with the settings it was made with",
                    differ.join(", ")
                )));
            }
        }
        let labels: Vec<String> = serde_json::from_value(st["labels"].clone()).map_err(|_| bad("labels"))?;
        let state: TrainState = serde_json::from_value(st["state"].clone()).map_err(|_| bad("state"))?;
        if state.train_fingerprint != train.fingerprint() || state.valid_fingerprint != valid.fingerprint() {
            return Err(Error::invalid(format!(
                "{origin}: this checkpoint was made on other data (or another split): resume with the same --data, --valid-fraction and --seed"
            )));
        }
        let adapter = AdapterFiles::from_files(
            std::str::from_utf8(&files.adapter_config)
                .map_err(|_| Error::file(origin, "adapter_config.json is not UTF-8"))?,
            &files.adapter_weights,
            Some(std::str::from_utf8(&files.meta).map_err(|_| Error::file(origin, "localtune.json is not UTF-8"))?),
            origin,
        )?;
        // ScaLearn's sources travel in the adapter's weights, not in trainer_state.json.
        if config.method.scalearn().is_some() {
            config.method = adapter.method.clone();
        }
        let mut t = Trainer::new(model.clone(), config, labels, train, valid)?;
        t.params = adapter.to_adapted(&model.encoder)?;
        let dev = model.encoder.device.clone();
        t.opt.load_moments(&files.optimizer, &format!("{origin}/optimizer.safetensors"), &dev)?;
        t.opt.step = st["optimizer_step"].as_u64().ok_or_else(|| bad("optimizer_step"))?;
        t.state = state;
        Ok(t)
    }
}

/// What differs between the settings a checkpoint was made with and those a resume asks for, as
/// the command line's flags (`--lr 0.001 (asked: 0.01)`); empty when they agree.
pub fn settings_differ(saved: &TrainConfig, asked: &TrainConfig) -> Vec<String> {
    let mut differ = vec![];
    let (o, p) = (&saved.optim, &asked.optim);
    for (name, a, b) in [
        ("method", saved.method.name().to_string(), asked.method.name().to_string()),
        ("epochs", saved.epochs.to_string(), asked.epochs.to_string()),
        ("batch", saved.batch_size.to_string(), asked.batch_size.to_string()),
        ("grad-accum", saved.grad_accum.to_string(), asked.grad_accum.to_string()),
        ("max-len", saved.max_len.to_string(), asked.max_len.to_string()),
        ("seed", saved.seed.to_string(), asked.seed.to_string()),
        ("head", format!("{:?}", saved.head).to_lowercase(), format!("{:?}", asked.head).to_lowercase()),
        ("lr", o.lr.to_string(), p.lr.to_string()),
        ("weight-decay", o.weight_decay.to_string(), p.weight_decay.to_string()),
        ("max-grad-norm", o.max_grad_norm.to_string(), p.max_grad_norm.to_string()),
        ("warmup", o.warmup_ratio.to_string(), p.warmup_ratio.to_string()),
    ] {
        if a != b {
            differ.push(format!("--{name} {a} (asked: {b})"));
        }
    }
    if saved.dropout != asked.dropout {
        differ.push(format!("dropout {} (asked: {})", saved.dropout, asked.dropout));
    }
    // The method's own options (rank, alpha, targets, …); ScaLearn's sources travel in the weights.
    if saved.method.name() == asked.method.name() && saved.method.scalearn().is_none() {
        let (a, b) = (serde_json::to_value(&saved.method).unwrap(), serde_json::to_value(&asked.method).unwrap());
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                let vb = b.get(k).cloned().unwrap_or_default();
                if *va != vb {
                    differ.push(format!("{} `{k}` {va} (asked: {vb})", saved.method.name()));
                }
            }
        }
    }
    differ
}

/// The files of a checkpoint.
pub struct CheckpointFiles {
    pub origin: String,
    pub adapter_config: Vec<u8>,
    pub adapter_weights: Vec<u8>,
    pub meta: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub trainer_state: Vec<u8>,
}

impl CheckpointFiles {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<CheckpointFiles> {
        let dir = &crate::peft::format::readable_folder(dir);
        let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| Error::file(dir.join(n), e));
        Ok(CheckpointFiles {
            origin: dir.display().to_string(),
            adapter_config: read(crate::peft::format::CONFIG_FILE)?,
            adapter_weights: read(crate::peft::format::WEIGHTS_FILE)?,
            meta: read(crate::peft::format::META_FILE)?,
            optimizer: read("optimizer.safetensors")?,
            trainer_state: read("trainer_state.json")?,
        })
    }
}

/// Writes a checkpoint folder atomically (`peft::format::write_folder_atomic`): a reader finds the
/// previous checkpoint or the new one, and `DIR.old` when a kill fell between the two renames.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_checkpoint(dir: &std::path::Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    crate::peft::format::write_folder_atomic(dir, files)
}

/// Checkpoints every `every` optimiser steps, written one step late: a checkpoint is held until the
/// next step's forward pass, on exactly its weights, gave a finite loss that has not exploded, so
/// that weights an absurd step made never become "the last good checkpoint". The checkpoint of a
/// run's last step is never written (the run's own output is). Used by both trainers' loops.
#[cfg(not(target_arch = "wasm32"))]
pub struct Checkpointer {
    pub dir: std::path::PathBuf,
    every: Option<u64>,
    pending: Option<Vec<(String, Vec<u8>)>>,
    last_step: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl Checkpointer {
    /// `step` is the optimiser step the run starts at (not 0 on a resumed run).
    pub fn new(dir: std::path::PathBuf, every: Option<u64>, step: u64) -> Checkpointer {
        Checkpointer { dir, every: every.map(|e| e.max(1)), pending: None, last_step: step }
    }

    /// After a step that succeeded: the held checkpoint, whose weights that step just checked, is written.
    pub fn step_ok(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(files) => save_checkpoint(&self.dir, &files),
            None => Ok(()),
        }
    }

    /// Whether a checkpoint is due after reaching optimiser step `step` (`done`: the run is finished).
    pub fn due(&mut self, step: u64, done: bool) -> bool {
        let due = self.every.is_some_and(|e| step != self.last_step && step.is_multiple_of(e)) && !done;
        self.last_step = step;
        due
    }

    /// Holds the checkpoint of the step just taken until the next one vouches for it.
    pub fn hold(&mut self, files: Vec<(String, Vec<u8>)>) {
        self.pending = Some(files);
    }

    /// A step failed: what it says, and where the last good checkpoint is when there is one. A
    /// held checkpoint is dropped when the run diverged (its weights are what the next step could
    /// not use), and written when the step failed otherwise (a lost device, a full disk): its weights
    /// are finite and came from a sane step, and dropping them would lose up to `every` steps.
    pub fn failed(&mut self, e: Error) -> Error {
        if let Some(files) = self.pending.take() {
            if !matches!(e, Error::Diverged(_)) {
                if let Err(save) = save_checkpoint(&self.dir, &files) {
                    return Error::invalid(format!("{e}; saving the checkpoint failed too: {save}"));
                }
            }
        }
        if self.every.is_some() && self.dir.exists() {
            Error::invalid(format!("{e}; the last good checkpoint is in {}", self.dir.display()))
        } else {
            e
        }
    }
}

/// Logits (n, K) of `texts` under trained parameters, in evaluation mode, `batch` texts at a time.
pub async fn predict_logits(
    model: &Model,
    params: &Adapted,
    head: HeadKind,
    texts: &[&str],
    max_len: usize,
    batch: usize,
) -> Result<Vec<f32>> {
    let clf = Classifier { base: &model.encoder, params, head };
    let mut out = Vec::with_capacity(texts.len() * params.classes());
    for chunk in texts.chunks(batch.max(1)) {
        let enc = model.encode(chunk, max_len)?;
        let (logits, _) = clf.forward(&enc.inputs, None, false)?;
        let rows = logits.to_vec().await?;
        crate::error::check_rows_finite(&rows, params.classes(), out.len() / params.classes().max(1), chunk, "logits")?;
        out.extend(rows);
    }
    Ok(out)
}

/// Metrics of logits (n, K) against label ids, with the mean cross-entropy loss.
pub fn metrics_from_logits(logits: &[f32], labels: &[u32], classes: usize) -> Metrics {
    let pred = argmax_rows(logits, classes);
    let mut loss = 0.0f64;
    for (row, &l) in logits.chunks_exact(classes).zip(labels) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[l as usize] as f64;
    }
    let n = labels.len().max(1);
    Metrics::new(labels, &pred, classes, Some(loss / n as f64))
}
