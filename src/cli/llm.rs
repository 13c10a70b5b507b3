//! The chat-model commands over a GGUF decoder: `tokenize --model FILE.gguf`, `generate`, `logits` and
//! the interactive `chat`.

use super::{for_each_input, open_device, DeviceArg};
use futures::executor::block_on;
use localtune::model::bpe::{BpeTokenizer, Message};
use localtune::model::generate::{generate, Sampling};
use localtune::model::gguf::Gguf;
use localtune::model::llama::{KvCache, LinearDelta, Llama};
use localtune::model::llama_hf::Quantize;
use localtune::peft::causal_lora::CausalLora;
use localtune::{Device, Error, Result};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The GGUF model: --model, else $LOCALTUNE_LLM, else the SmolLM2 that scripts/fetch-assets.sh fetched.
pub fn llm_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("LOCALTUNE_LLM") {
        return Ok(PathBuf::from(p));
    }
    let rel = Path::new(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let candidates = [rel.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        Error::invalid("no GGUF model: pass --model FILE.gguf, set LOCALTUNE_LLM, or run scripts/fetch-assets.sh")
    })
}

fn read(path: &Path) -> Result<(Gguf, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let g = Gguf::from_bytes(&bytes, &path.display().to_string())?;
    Ok((g, bytes))
}

/// Whether `path` is a Hugging Face Llama folder (config.json with `model_type` llama).
pub fn is_llama_folder(path: &Path) -> bool {
    std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|j| j.get("model_type").and_then(|v| v.as_str()) == Some("llama"))
}

/// A GGUF file, or a Hugging Face folder whose linears are quantised as `quantize` says.
fn load(path: &Path, dev: &Device, quantize: Quantize) -> Result<(Llama, BpeTokenizer)> {
    if path.is_dir() {
        let tok = BpeTokenizer::from_folder(path)?;
        return Ok((Llama::from_hf_folder(path, quantize, dev)?, tok));
    }
    if quantize != Quantize::None {
        return Err(Error::invalid(format!(
            "--quantize applies to a Hugging Face folder; {} keeps the types it was saved with",
            path.display()
        )));
    }
    let (g, bytes) = read(path)?;
    let tok = BpeTokenizer::from_gguf(&g)?;
    Ok((Llama::from_gguf(&g, &bytes, dev)?, tok))
}

impl GenArgs {
    /// The model, its tokenizer and the adapter when one is given.
    fn load(&self) -> Result<(Llama, BpeTokenizer, Option<CausalLora>)> {
        let (model, tok) = load(&llm_path(&self.model)?, &open_device(self.device)?, self.quantize)?;
        let adapter = self.adapter.as_ref().map(|d| CausalLora::load(d, &model.cfg, &model.device)).transpose()?;
        Ok((model, tok, adapter))
    }
}

fn out_line(out: &mut impl Write, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}").map_err(|e| Error::file("<stdout>", e))
}

/// `tokenize --model FILE.gguf|DIR`: ids as transformers' `tok(text).input_ids`.
pub fn tokenize(path: &Path, jsonl: bool) -> Result<()> {
    let tok = if path.is_dir() { BpeTokenizer::from_folder(path)? } else { BpeTokenizer::from_gguf(&read(path)?.0)? };
    let mut out = std::io::stdout().lock();
    for_each_input(jsonl, 256, |texts| {
        for t in texts {
            out_line(&mut out, serde_json::json!({ "input_ids": tok.encode(t) }))?;
        }
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct GenArgs {
    /// The GGUF model file, or a Hugging Face Llama folder (config.json, model.safetensors,
    /// tokenizer.json) (default: $LOCALTUNE_LLM, else SmolLM2-135M-Instruct from scripts/fetch-assets.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// For a Hugging Face folder: keep its linears as none (f32), nf4 or nf4-double (bitsandbytes'
    /// NF4, the absmax quantised again), quantised as the model loads.
    #[arg(long, default_value = "none")]
    quantize: Quantize,
    /// A PEFT LoRA folder (CAUSAL_LM) for this model, trained here or by PEFT, applied over the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Wrap each prompt in the model's chat template as one user turn (and answer as the assistant).
    #[arg(long)]
    chat: bool,
    /// Read one JSON value per line: a string, or an object with a "text" field.
    #[arg(long)]
    jsonl: bool,
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
}

impl GenArgs {
    fn prompt_ids(&self, tok: &BpeTokenizer, text: &str) -> Result<Vec<u32>> {
        if self.chat {
            let m = [Message { role: "user".into(), content: text.to_string() }];
            tok.encode_chat(&m, true)
        } else {
            Ok(tok.encode(text))
        }
    }
}

#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Pick the most likely token each time (the default unless --temperature is given).
    #[arg(long)]
    greedy: bool,
    /// Sample with this temperature (> 0).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The most tokens generated per prompt (generation also stops at the end of the turn).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

impl SamplingArgs {
    fn sampling(&self) -> Result<Sampling> {
        let temperature = match (self.greedy, self.temperature) {
            (true, Some(_)) => return Err(Error::invalid("--greedy and --temperature exclude each other")),
            (_, Some(t)) if t <= 0.0 => {
                return Err(Error::invalid(format!("--temperature {t} must be positive (or use --greedy)")))
            }
            (_, t) => t.unwrap_or(0.0),
        };
        let s = Sampling { temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        s.check()?;
        Ok(s)
    }
}

/// `generate`: one `{"ids", "text"}` line per prompt.
pub fn generate_cmd(a: &GenArgs, s: &SamplingArgs) -> Result<()> {
    let sampling = s.sampling()?;
    let (model, tok, adapter) = a.load()?;
    let delta = adapter.as_ref().map(|a| a as &dyn LinearDelta);
    let stop = tok.stop_ids();
    let mut out = std::io::stdout().lock();
    for_each_input(a.jsonl, 1, |texts| {
        for t in texts {
            let prompt = a.prompt_ids(&tok, t)?;
            let ids = block_on(generate(&model, delta, &prompt, s.max_new_tokens, &sampling, &stop, |_| true))?;
            let text = tok.decode(&ids, true);
            out_line(&mut out, serde_json::json!({ "ids": ids, "text": text }))?;
        }
        Ok(())
    })
}

/// `logits`: per prompt, the last position's K largest logits, best first.
pub fn logits_cmd(a: &GenArgs, top: usize) -> Result<()> {
    if top == 0 {
        return Err(Error::invalid("--top must be at least 1"));
    }
    let (model, tok, adapter) = a.load()?;
    let delta = adapter.as_ref().map(|a| a as &dyn LinearDelta);
    let mut out = std::io::stdout().lock();
    for_each_input(a.jsonl, 1, |texts| {
        for t in texts {
            let prompt = a.prompt_ids(&tok, t)?;
            if prompt.is_empty() {
                return Err(Error::invalid(format!("{t:?} has no tokens")));
            }
            let row = model.forward_cached(&prompt, &mut KvCache::default(), true, delta)?.to_vec_blocking()?;
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
            order.truncate(top);
            let logits: Vec<f32> = order.iter().map(|&i| row[i]).collect();
            out_line(&mut out, serde_json::json!({ "ids": order, "logits": logits }))?;
        }
        Ok(())
    })
}

/// `chat`: an interactive conversation on stdin/stdout, the answer streamed token by token.
pub fn chat_cmd(a: &GenArgs, s: &SamplingArgs, system: Option<String>) -> Result<()> {
    let sampling = s.sampling()?;
    let (model, tok, adapter) = a.load()?;
    let delta = adapter.as_ref().map(|a| a as &dyn LinearDelta);
    let stop = tok.stop_ids();
    let mut messages: Vec<Message> =
        system.into_iter().map(|c| Message { role: "system".into(), content: c }).collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("chatting with {} (an empty line or end of input quits)", llm_path(&a.model)?.display());
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Error::file("<stdin>", e))?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(Message { role: "user".into(), content: line });
        let prompt = tok.encode_chat(&messages, true)?;
        let mut shown = String::new();
        let mut ids = Vec::new();
        let mut err = None;
        block_on(generate(&model, delta, &prompt, s.max_new_tokens, &sampling, &stop, |id| {
            ids.push(id);
            // Print what the ids decode to so far beyond what is shown (a character may span tokens).
            let text = tok.decode(&ids, true);
            if text.len() > shown.len() && !text.ends_with('\u{FFFD}') {
                if let Err(e) = write!(out, "{}", &text[shown.len()..]).and_then(|_| out.flush()) {
                    err = Some(e);
                    return false;
                }
                shown = text;
            }
            true
        }))?;
        if let Some(e) = err {
            return Err(Error::file("<stdout>", e));
        }
        writeln!(out).map_err(|e| Error::file("<stdout>", e))?;
        messages.push(Message { role: "assistant".into(), content: tok.decode(&ids, true) });
    }
    Ok(())
}

/// `train --task causal-lm`: the settings it reads from `train`'s arguments.
pub struct CausalTrainArgs<'a> {
    pub model: Option<PathBuf>,
    pub quantize: Quantize,
    pub data: PathBuf,
    pub out: PathBuf,
    pub device: DeviceArg,
    pub eval: Option<PathBuf>,
    pub max_len: usize,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub valid_fraction: f64,
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    /// Comma-separated modules (q_proj … down_proj, or q … down); None: all seven.
    pub targets: Option<&'a str>,
    pub optim: localtune::train::OptimConfig,
    pub json: bool,
    /// A checkpoint into OUT/checkpoint every N optimiser steps.
    pub save_every: Option<u64>,
    /// A checkpoint folder to continue from.
    pub resume: Option<PathBuf>,
}

/// QLoRA: LoRA over the frozen (quantised) model on chat data, written as a PEFT CAUSAL_LM folder.
pub fn train_causal(a: &CausalTrainArgs) -> Result<()> {
    use localtune::train::causal::{load_chats, mean_loss, CausalCheckpoint, CausalRun, CausalSettings};
    use localtune::train::trainer::Checkpointer;
    let path = llm_path(&a.model)?;
    let dev = open_device(a.device)?;
    let (model, tok) = load(&path, &dev, a.quantize)?;
    let max_len = a.max_len.min(model.cfg.context);
    let mut data = load_chats(&a.data, &tok, max_len)?;
    let mut rng = localtune::rng::Rng::new(a.seed ^ 0x5eed);
    rng.shuffle(&mut data);
    let valid = match &a.eval {
        Some(p) => load_chats(p, &tok, max_len)?,
        None => {
            if !(0.0..1.0).contains(&a.valid_fraction) {
                return Err(Error::invalid(format!("--valid-fraction {} must be in [0, 1)", a.valid_fraction)));
            }
            let n = (data.len() as f64 * a.valid_fraction).round() as usize;
            data.split_off(data.len() - n.min(data.len().saturating_sub(1)))
        }
    };
    let targets: Vec<usize> = match a.targets {
        None => (0..7).collect(),
        Some(t) => t.split(',').map(localtune::peft::causal_lora::parse_module).collect::<Result<_>>()?,
    };
    let mut lora = CausalLora::new(&model.cfg, a.r, a.alpha, a.rslora, &targets, a.seed, &dev)?;
    lora.base = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    if a.out.is_file() {
        return Err(Error::file(&a.out, "is a file; --out is the adapter folder to write"));
    }
    let tokens: usize = data.iter().map(|e| e.positions.len()).sum();
    eprintln!(
        "QLoRA on {} ({}, {:.1} MiB of weights on the device): {} trainable values, {} training chats \
         ({tokens} answer tokens) / {} held out",
        path.display(),
        dev.describe(),
        model.device_bytes() as f64 / (1 << 20) as f64,
        lora.params.count(),
        data.len(),
        valid.len()
    );
    let s = CausalSettings { epochs: a.epochs, batch: a.batch, seed: a.seed, optim: a.optim.clone() };
    let mut run = match &a.resume {
        Some(dir) => {
            let (run, adapter) = CausalRun::resume(&CausalCheckpoint::load(dir)?, &lora, &model.cfg, &data, &s, &dev)?;
            lora = adapter;
            eprintln!("resuming {} at step {} of {}", dir.display(), run.step_count(), run.total_steps());
            run
        }
        None => {
            if !valid.is_empty() {
                let before = block_on(mean_loss(&model, &lora, &valid))?;
                if a.json {
                    println!("{}", serde_json::json!({ "epoch": 0, "valid_loss": before }));
                } else {
                    eprintln!("held-out loss before training: {before:.4}");
                }
            }
            CausalRun::new(&lora, &data, &s, &dev)?
        }
    };
    let checkpoint_dir = a.out.join("checkpoint");
    // On the GPU device: the most bytes live during training above what the model and adapter hold.
    let live_before = match &dev {
        Device::Gpu(g) => {
            g.reset_peak();
            Some(g.memory().live_bytes)
        }
        Device::Cpu => None,
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = std::time::Instant::now();
    let mut ck = Checkpointer::new(checkpoint_dir, a.save_every, 0);
    while !run.done() {
        let r = block_on(run.step(&model, &mut lora, &data, &valid)).map_err(|e| ck.failed(e))?;
        ck.step_ok()?;
        if !a.json && (tty || r.step % 10 == 0) && r.epoch_end.is_none() {
            let line = format!(
                "epoch {} step {}/{} loss {:.4} ({:.0} s)",
                r.epoch,
                r.step,
                r.total_steps,
                r.loss,
                start.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        if let Some(e) = &r.epoch_end {
            if tty && !a.json {
                eprint!("\r\x1b[K");
            }
            if a.json {
                println!("{}", serde_json::to_string(e).unwrap());
            } else {
                eprintln!(
                    "epoch {}: train loss {:.4}{}, {:.0} tokens/s",
                    e.epoch,
                    e.train_loss,
                    e.valid_loss.map(|v| format!(", held-out loss {v:.4}")).unwrap_or_default(),
                    e.tokens_per_s
                );
            }
        }
        if ck.due(r.step, r.done) {
            ck.hold(block_on(run.checkpoint_files(&lora))?);
        }
    }
    if let (Device::Gpu(g), Some(before)) = (&dev, live_before) {
        let longest = data.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        eprintln!(
            "device memory: {:.1} MiB live before training, peak {:.1} MiB above it (batch {}, longest chat {longest} tokens)",
            before as f64 / (1 << 20) as f64,
            (g.memory().peak_bytes - before) as f64 / (1 << 20) as f64,
            a.batch
        );
    }
    block_on(lora.save(&a.out))?;
    eprintln!("adapter written to {}", a.out.display());
    Ok(())
}
