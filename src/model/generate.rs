//! Text generation with a decoder and its key/value cache: greedy, or sampled with temperature,
//! top-k and top-p (nucleus) as transformers' `generate` applies them (temperature, then top-k, then
//! top-p), stopping after a stop token (kept in the output, as transformers does) or at the limit.

use super::llama::{KvCache, LinearDelta, Llama};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// How the next token is picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }

    /// Refuses settings that mean nothing, naming the flag.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(format!("--temperature {} must be 0 (greedy) or positive", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!("--top-p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The next token from one row of logits.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    if s.top_k > 0 {
        order.truncate(s.top_k.min(order.len()));
    }
    let top = logits[order[0] as usize] / s.temperature;
    let mut p: Vec<f64> = order.iter().map(|&i| ((logits[i as usize] / s.temperature - top) as f64).exp()).collect();
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= total);
    if s.top_p < 1.0 {
        // The smallest prefix whose mass reaches top_p (at least one token).
        let mut acc = 0.0;
        let mut keep = p.len();
        for (i, v) in p.iter().enumerate() {
            acc += v;
            if acc >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        order.truncate(keep);
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= total);
    }
    let mut u = rng.uniform();
    for (i, v) in p.iter().enumerate() {
        if u < *v {
            return order[i];
        }
        u -= v;
    }
    *order.last().unwrap()
}

/// A generation in progress, one token per `next` call (the page streams them and can stop between
/// any two): the key/value cache, the sampler's random state and the tokens so far.
pub struct Generator {
    cache: KvCache,
    rng: Rng,
    sampling: Sampling,
    stop: Vec<u32>,
    max_new: usize,
    /// The ids the next forward takes: the prompt first, then the last token.
    next: Vec<u32>,
    pub out: Vec<u32>,
    finished: bool,
}

impl Generator {
    pub fn new(prompt: &[u32], max_new: usize, s: &Sampling, stop: &[u32]) -> Result<Generator> {
        s.check()?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt has no tokens"));
        }
        Ok(Generator {
            cache: KvCache::default(),
            rng: Rng::new(s.seed),
            sampling: s.clone(),
            stop: stop.to_vec(),
            max_new,
            next: prompt.to_vec(),
            out: Vec::new(),
            finished: max_new == 0,
        })
    }

    /// Whether a stop token, the limit or the model's context ended the generation.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next token, or None once finished. `model` and `adapter` must be the same on every call.
    pub async fn next(&mut self, model: &Llama, adapter: Option<&dyn LinearDelta>) -> Result<Option<u32>> {
        if self.finished || self.cache.len + self.next.len() > model.cfg.context {
            self.finished = true;
            return Ok(None);
        }
        let logits = model.forward_cached(&self.next, &mut self.cache, true, adapter)?.to_vec().await?;
        let id = pick(&logits, &self.sampling, &mut self.rng);
        self.out.push(id);
        self.next = vec![id];
        self.finished = self.out.len() >= self.max_new || self.stop.contains(&id);
        Ok(Some(id))
    }
}

/// Up to `max_new` tokens after `prompt`, each passed to `on_token` as it comes (return false to stop).
/// Async for the browser's read-back; native code blocks on it (`futures::executor::block_on`).
pub async fn generate(
    model: &Llama,
    adapter: Option<&dyn LinearDelta>,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    stop: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut g = Generator::new(prompt, max_new, s, stop)?;
    while let Some(id) = g.next(model, adapter).await? {
        if !on_token(id) {
            break;
        }
    }
    Ok(g.out)
}
