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
use crate::train::optim::{AdamW, OptimConfig};

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
        let ids = tok.encode(&tok.apply_chat_template(messages, false)?);
        let end = tok.token_to_id("<|im_end|>");
        let mut positions = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = tok.encode(&tok.apply_chat_template(&messages[..i], true)?);
            let upto = tok.encode(&tok.apply_chat_template(&messages[..=i], false)?);
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
                        return Err(at(format!("message {} has role `{role}` (system, user or assistant)", j + 1)));
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
#[derive(Clone, Debug)]
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

/// A causal-LM run taken one optimiser step at a time (the page's progress, a Stop between steps):
/// the optimiser, the gradients, the seeded order and where the run is in it.
pub struct CausalRun {
    pub settings: CausalSettings,
    opt: AdamW,
    grads: crate::model::ParamSet,
    rng: Rng,
    order: Vec<usize>,
    epoch: usize,
    /// The next batch's start in `order`.
    at: usize,
    epoch_start: web_time::Instant,
    loss_sum: f64,
    tokens: usize,
    seen: usize,
}

impl CausalRun {
    pub fn new(adapter: &CausalLora, train: &[ChatExample], s: &CausalSettings, device: &Device) -> Result<CausalRun> {
        if s.batch == 0 || s.epochs == 0 || train.is_empty() {
            return Err(Error::invalid("training needs a batch and epochs of at least 1, and data"));
        }
        let steps_per_epoch = train.len().div_ceil(s.batch) as u64;
        let total = steps_per_epoch.checked_mul(s.epochs as u64).ok_or_else(|| Error::invalid("too many epochs"))?;
        Ok(CausalRun {
            settings: s.clone(),
            opt: AdamW::new(s.optim.clone(), &adapter.params, total, device)?,
            grads: adapter.params.zeros_like(device)?,
            rng: Rng::new(s.seed),
            order: (0..train.len()).collect(),
            epoch: 0,
            at: 0,
            epoch_start: web_time::Instant::now(),
            loss_sum: 0.0,
            tokens: 0,
            seen: 0,
        })
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
        if self.at == 0 {
            self.epoch += 1;
            self.rng.shuffle(&mut self.order);
            self.epoch_start = web_time::Instant::now();
            (self.loss_sum, self.tokens, self.seen) = (0.0, 0, 0);
        }
        let chunk = &self.order[self.at..(self.at + self.settings.batch).min(self.order.len())];
        self.grads.zero()?;
        let n_tok: usize = chunk.iter().map(|&i| train[i].positions.len()).sum();
        let mut losses = Vec::new();
        for &i in chunk {
            let ex = &train[i];
            losses.push(model.loss_backward(&ex.ids, &ex.positions, &*adapter, &mut self.grads, 1.0 / n_tok as f32)?);
            self.seen += ex.ids.len();
        }
        self.opt.step(&mut adapter.params, &self.grads)?;
        let mut loss = 0.0;
        for l in losses {
            loss += l.to_vec().await?.iter().map(|&x| x as f64).sum::<f64>();
        }
        self.loss_sum += loss;
        self.tokens += n_tok;
        self.at += chunk.len();
        let loss = loss / n_tok.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "the loss diverged at step {} ({loss}); lower the learning rate",
                self.opt.step
            )));
        }
        let epoch_end = if self.at >= self.order.len() {
            self.at = 0;
            let secs = self.epoch_start.elapsed().as_secs_f64();
            let valid_loss = if valid.is_empty() { None } else { Some(mean_loss(model, &*adapter, valid).await?) };
            Some(EpochReport {
                epoch: self.epoch,
                train_loss: self.loss_sum / self.tokens.max(1) as f64,
                valid_loss,
                steps: self.opt.step,
                tokens_per_s: self.seen as f64 / secs.max(1e-9),
            })
        } else {
            None
        };
        Ok(StepReport {
            epoch: self.epoch,
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
