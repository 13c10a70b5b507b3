//! Causal-LM fine-tuning of a chat model (QLoRA over the frozen, quantised base): chat data turned
//! into token ids with the positions that train (only the assistant's tokens), and the training loop
//! (seeded shuffles, AdamW with warm-up and clipping, a held-out loss per epoch).

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::bpe::{BpeTokenizer, Message};
use crate::model::llama::{LinearDelta, Llama};
use crate::peft::causal_lora::CausalLora;
use crate::rng::Rng;
use crate::tensor::Device;
use crate::train::optim::{explosion, AdamW, OptimConfig};
use crate::train::trainer::{MAX_BATCH, MAX_EPOCHS};

/// One training sequence: its ids and the positions p whose next token ids[p + 1] trains.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatExample {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
}

impl ChatExample {
    /// A chat as the model's template writes it; each assistant message's content and its
    /// end-of-turn token train, everything else (system, user, the template's own tokens) does not.
    pub fn from_messages(tok: &BpeTokenizer, messages: &[Message]) -> Result<ChatExample> {
        let ids = tok.encode_chat(messages, false)?;
        let end = tok.token_to_id("<|im_end|>");
        let mut positions = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = tok.encode_chat(&messages[..i], true)?;
            let upto = tok.encode_chat(&messages[..=i], false)?;
            if i == 0 || !ids.starts_with(&upto) || !upto.starts_with(&before) {
                return Err(Error::invalid(format!(
                    "message {} (assistant) does not follow a user or system message in the chat template",
                    i + 1
                )));
            }
            // The answer's tokens through its end-of-turn token (the newline after it does not train).
            let stop =
                upto[before.len()..].iter().position(|&t| Some(t) == end).map_or(upto.len(), |e| before.len() + e + 1);
            positions.extend((before.len()..stop).map(|j| j as u32 - 1));
        }
        if positions.is_empty() {
            return Err(Error::invalid("the chat has no assistant message to learn"));
        }
        Ok(ChatExample { ids, positions })
    }
}

/// Reads chat data: JSONL with `{"messages": [{"role", "content"}, …]}` or `{"prompt", "completion"}`
/// per line (a prompt/completion pair is one user turn and its answer). Sequences longer than
/// `max_len` tokens are refused by line.
pub fn load_chats(path: &Path, tok: &BpeTokenizer, max_len: usize) -> Result<Vec<ChatExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    parse_chats(&text, path, tok, max_len)
}

/// The same from a file's text (`path` names it in errors).
pub fn parse_chats(text: &str, path: &Path, tok: &BpeTokenizer, max_len: usize) -> Result<Vec<ChatExample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::file(path, format!("line {}: {msg}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("is not JSON: {e}")))?;
        let messages: Vec<Message> = if let Some(ms) = v.get("messages") {
            let ms = ms.as_array().ok_or_else(|| at("`messages` must be a list".into()))?;
            ms.iter()
                .enumerate()
                .map(|(j, m)| {
                    let field = |k: &str| {
                        m.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| {
                            at(format!("message {} has no `{k}` (each message needs a role and a content)", j + 1))
                        })
                    };
                    let role = field("role")?;
                    if !["system", "user", "assistant"].contains(&role.as_str()) {
                        return Err(at(format!(
                            "message {} has role `{}` (system, user or assistant)",
                            j + 1,
                            crate::error::excerpt(&role, 40)
                        )));
                    }
                    Ok(Message { role, content: field("content")? })
                })
                .collect::<Result<_>>()?
        } else {
            let field = |k: &str| {
                v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| {
                    at(format!("has no `{k}`: a line is {{\"messages\": […]}} or {{\"prompt\", \"completion\"}}"))
                })
            };
            vec![
                Message { role: "user".into(), content: field("prompt")? },
                Message { role: "assistant".into(), content: field("completion")? },
            ]
        };
        let ex = ChatExample::from_messages(tok, &messages).map_err(|e| at(e.to_string()))?;
        if ex.ids.len() > max_len {
            return Err(at(format!("is {} tokens, longer than --max-len {max_len}", ex.ids.len())));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::file(path, "holds no chats"));
    }
    Ok(out)
}

/// Settings of a causal-LM run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CausalSettings {
    pub epochs: usize,
    /// Sequences per optimiser step.
    pub batch: usize,
    pub seed: u64,
    pub optim: OptimConfig,
}

/// What an epoch reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    /// Mean loss per trained token over the epoch's steps.
    pub train_loss: f64,
    /// Mean loss per trained token on the held-out chats (None without any).
    pub valid_loss: Option<f64>,
    pub steps: u64,
    pub tokens_per_s: f64,
}

/// The mean loss per trained token of `model` with `delta` over `data`.
pub async fn mean_loss(model: &Llama, delta: &dyn LinearDelta, data: &[ChatExample]) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for ex in data {
        let l = model.loss(&ex.ids, &ex.positions, delta)?.to_vec().await?;
        sum += l.iter().map(|&x| x as f64).sum::<f64>();
        n += l.len();
    }
    Ok(sum / n.max(1) as f64)
}

/// What one optimiser step reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub epoch: usize,
    /// Optimiser steps taken so far, and in the whole run.
    pub step: u64,
    pub total_steps: u64,
    /// Mean loss per trained token of this step's batch.
    pub loss: f64,
    /// Set on the last step of an epoch.
    pub epoch_end: Option<EpochReport>,
    pub done: bool,
}

/// Where a causal-LM run stands between steps; saved in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunState {
    /// The order of the current epoch (each epoch shuffles the previous one) and the generator.
    order: Vec<usize>,
    rng: Rng,
    epoch: usize,
    /// The next batch's start in `order`.
    at: usize,
    /// This epoch's sum of token losses, trained tokens and tokens seen so far.
    loss_sum: f64,
    tokens: usize,
    seen: usize,
    /// A hash of the training ids and trained positions, to check that a resumed run has the same data.
    data: u64,
    /// The run's first step loss, which an exploding loss is measured against.
    #[serde(default)]
    first_loss: Option<f64>,
}

/// A hash (FNV-1a) of the training sequences.
fn fingerprint(train: &[ChatExample]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for ex in train {
        for x in ex.ids.iter().chain([&u32::MAX]).chain(&ex.positions).chain([&u32::MAX]) {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// The files of a causal-LM checkpoint (`CausalRun::checkpoint_files` writes them).
pub struct CausalCheckpoint {
    /// The folder (or other origin) for errors.
    pub origin: String,
    pub adapter_config: Vec<u8>,
    pub adapter_weights: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub trainer_state: Vec<u8>,
}

impl CausalCheckpoint {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &Path) -> Result<CausalCheckpoint> {
        let dir = &crate::peft::format::readable_folder(dir);
        let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| Error::file(dir.join(n), e));
        Ok(CausalCheckpoint {
            origin: dir.display().to_string(),
            adapter_config: read("adapter_config.json")?,
            adapter_weights: read("adapter_model.safetensors")?,
            optimizer: read("optimizer.safetensors")?,
            trainer_state: read("trainer_state.json")?,
        })
    }
}

/// A causal-LM run taken one optimiser step at a time (the page's progress, a Stop between steps,
/// checkpoints): the optimiser, the gradients, the seeded order and where the run is in it.
pub struct CausalRun {
    pub settings: CausalSettings,
    opt: AdamW,
    grads: crate::model::ParamSet,
    st: RunState,
    epoch_start: web_time::Instant,
}

impl CausalRun {
    pub fn new(adapter: &CausalLora, train: &[ChatExample], s: &CausalSettings, device: &Device) -> Result<CausalRun> {
        if s.batch == 0 || s.epochs == 0 || train.is_empty() {
            return Err(Error::invalid("training needs a batch and epochs of at least 1, and data"));
        }
        if s.epochs > MAX_EPOCHS || s.batch > MAX_BATCH {
            return Err(Error::invalid(format!(
                "{} epochs of batch {}: at most {MAX_EPOCHS} epochs and batch {MAX_BATCH}",
                s.epochs, s.batch
            )));
        }
        let steps_per_epoch = train.len().div_ceil(s.batch) as u64;
        let total = steps_per_epoch.checked_mul(s.epochs as u64).ok_or_else(|| Error::invalid("too many epochs"))?;
        Ok(CausalRun {
            settings: s.clone(),
            opt: AdamW::new(s.optim.clone(), &adapter.params, total, device)?,
            grads: adapter.params.zeros_like(device)?,
            st: RunState {
                order: (0..train.len()).collect(),
                rng: Rng::new(s.seed),
                epoch: 0,
                at: 0,
                loss_sum: 0.0,
                tokens: 0,
                seen: 0,
                data: fingerprint(train),
                first_loss: None,
            },
            epoch_start: web_time::Instant::now(),
        })
    }

    /// Everything a checkpoint holds: the adapter's PEFT files, optimizer.safetensors (the moments) and
    /// trainer_state.json (settings, step, position in the data). Taken between steps.
    pub async fn checkpoint_files(&self, adapter: &CausalLora) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files: Vec<(String, Vec<u8>)> =
            adapter.to_files().await?.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
        files.push(("optimizer.safetensors".into(), self.opt.moments_to_bytes().await?));
        let state = serde_json::json!({
            "task": "causal-lm",
            "settings": self.settings,
            "optimizer_step": self.opt.step,
            "total_steps": self.opt.total_steps,
            "state": self.st,
        });
        files.push(("trainer_state.json".into(), serde_json::to_vec_pretty(&state).unwrap()));
        Ok(files)
    }

    /// Restores a run and its adapter from a checkpoint. `fresh` is the adapter the caller would have
    /// started with and `s` its settings: a checkpoint made with another rank, alpha, targets or settings,
    /// or on other data, is refused (naming what differs) rather than silently continued otherwise.
    pub fn resume(
        ck: &CausalCheckpoint,
        fresh: &CausalLora,
        cfg: &crate::model::llama::LlamaConfig,
        train: &[ChatExample],
        s: &CausalSettings,
        device: &Device,
    ) -> Result<(CausalRun, CausalLora)> {
        let origin = &ck.origin;
        let state_file = format!("{origin}/trainer_state.json");
        let v: serde_json::Value =
            serde_json::from_slice(&ck.trainer_state).map_err(|e| Error::file(&state_file, e))?;
        let bad = |what: &str| Error::file(&state_file, format!("missing or invalid `{what}`"));
        if v["task"] != "causal-lm" {
            return Err(Error::file(&state_file, "is not the checkpoint of a causal-lm run"));
        }
        let saved: CausalSettings = serde_json::from_value(v["settings"].clone()).map_err(|_| bad("settings"))?;
        let st: RunState = serde_json::from_value(v["state"].clone()).map_err(|_| bad("state"))?;
        let mut differ = vec![];
        let o = (&saved.optim, &s.optim);
        for (name, a, b) in [
            ("epochs", saved.epochs.to_string(), s.epochs.to_string()),
            ("batch", saved.batch.to_string(), s.batch.to_string()),
            ("seed", saved.seed.to_string(), s.seed.to_string()),
            ("lr", o.0.lr.to_string(), o.1.lr.to_string()),
            ("weight-decay", o.0.weight_decay.to_string(), o.1.weight_decay.to_string()),
            ("max-grad-norm", o.0.max_grad_norm.to_string(), o.1.max_grad_norm.to_string()),
            ("warmup", o.0.warmup_ratio.to_string(), o.1.warmup_ratio.to_string()),
        ] {
            if a != b {
                differ.push(format!("--{name} {a} (asked: {b})"));
            }
        }
        if saved.optim != s.optim && differ.is_empty() {
            differ.push("the optimiser's betas or eps".into());
        }
        let config_file = format!("{origin}/adapter_config.json");
        let text = std::str::from_utf8(&ck.adapter_config).map_err(|_| Error::file(&config_file, "is not UTF-8"))?;
        let weights_file = format!("{origin}/adapter_model.safetensors");
        let mut adapter = CausalLora::from_files(text, &config_file, &ck.adapter_weights, &weights_file, cfg, device)?;
        for (name, a, b) in [
            ("r", adapter.r.to_string(), fresh.r.to_string()),
            ("alpha", adapter.alpha.to_string(), fresh.alpha.to_string()),
            ("rslora", adapter.rslora.to_string(), fresh.rslora.to_string()),
            ("targets", format!("{:?}", adapter.targets), format!("{:?}", fresh.targets)),
        ] {
            if a != b {
                differ.push(format!("--{name} {a} (asked: {b})"));
            }
        }
        if !differ.is_empty() {
            return Err(Error::invalid(format!(
                "{origin}: this checkpoint was made with {}; resume with the settings it was made with",
                differ.join(", ")
            )));
        }
        if st.data != fingerprint(train) || st.order.len() != train.len() {
            return Err(Error::invalid(format!(
                "{origin}: this checkpoint was made on other data (or another split): resume with the same --data, --eval, --valid-fraction, --max-len and --seed"
            )));
        }
        adapter.base = fresh.base.clone();
        let mut run = CausalRun::new(&adapter, train, s, device)?;
        run.opt.load_moments(&ck.optimizer, &format!("{origin}/optimizer.safetensors"), device)?;
        run.opt.step = v["optimizer_step"].as_u64().ok_or_else(|| bad("optimizer_step"))?;
        if run.opt.step > run.opt.total_steps {
            return Err(bad("optimizer_step"));
        }
        run.st = st;
        Ok((run, adapter))
    }

    /// Optimiser steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    pub fn total_steps(&self) -> u64 {
        self.opt.total_steps
    }

    pub fn done(&self) -> bool {
        self.opt.step >= self.opt.total_steps
    }

    /// One optimiser step on the next batch; at an epoch's end, the held-out loss too.
    pub async fn step(
        &mut self,
        model: &Llama,
        adapter: &mut CausalLora,
        train: &[ChatExample],
        valid: &[ChatExample],
    ) -> Result<StepReport> {
        if self.done() {
            return Err(Error::invalid("the run is finished"));
        }
        let st = &mut self.st;
        if st.at == 0 {
            st.epoch += 1;
            st.rng.shuffle(&mut st.order);
            self.epoch_start = web_time::Instant::now();
            (st.loss_sum, st.tokens, st.seen) = (0.0, 0, 0);
        }
        let chunk = &st.order[st.at..(st.at + self.settings.batch).min(st.order.len())];
        self.grads.zero()?;
        let n_tok: usize = chunk.iter().map(|&i| train[i].positions.len()).sum();
        let mut losses = Vec::new();
        for &i in chunk {
            let ex = &train[i];
            losses.push(model.loss_backward(&ex.ids, &ex.positions, &*adapter, &mut self.grads, 1.0 / n_tok as f32)?);
            st.seen += ex.ids.len();
        }
        // The loss is read before the update: an exploded one must not reach the weights.
        let mut loss = 0.0;
        for l in losses {
            loss += l.to_vec().await?.iter().map(|&x| x as f64).sum::<f64>();
        }
        let mean = loss / n_tok.max(1) as f64;
        if let Some(why) = explosion(mean, st.first_loss, 1.0) {
            return Err(Error::Diverged(format!(
                "training diverged: {why} at step {}; lower the learning rate",
                self.opt.step + 1
            )));
        }
        st.first_loss.get_or_insert(mean);
        self.opt.step(&mut adapter.params, &self.grads)?;
        st.loss_sum += loss;
        st.tokens += n_tok;
        st.at += chunk.len();
        let loss = mean;
        let epoch_end = if st.at >= st.order.len() {
            st.at = 0;
            let secs = self.epoch_start.elapsed().as_secs_f64();
            let valid_loss = if valid.is_empty() { None } else { Some(mean_loss(model, &*adapter, valid).await?) };
            Some(EpochReport {
                epoch: st.epoch,
                train_loss: st.loss_sum / st.tokens.max(1) as f64,
                valid_loss,
                steps: self.opt.step,
                tokens_per_s: st.seen as f64 / secs.max(1e-9),
            })
        } else {
            None
        };
        Ok(StepReport {
            epoch: self.st.epoch,
            step: self.opt.step,
            total_steps: self.opt.total_steps,
            loss,
            epoch_end,
            done: self.done(),
        })
    }
}

/// Trains `adapter` on `train`; `on_epoch` sees each
/// epoch's report. The loss of a step is the mean over its trained tokens, as transformers computes it.
pub async fn train(
    model: &Llama,
    adapter: &mut CausalLora,
    train: &[ChatExample],
    valid: &[ChatExample],
    s: &CausalSettings,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    let mut run = CausalRun::new(adapter, train, s, &model.device)?;
    let mut reports = Vec::new();
    while !run.done() {
        if let Some(r) = run.step(model, adapter, train, valid).await?.epoch_end {
            on_epoch(&r);
            reports.push(r);
        }
    }
    Ok(reports)
}
