//! The only `#[wasm_bindgen]` surface: what the web app's worker calls. One session per worker holds
//! the device, the model, the data and the run; every call takes the state out for its duration and
//! puts it back, so a call that arrives while another is running gets a clear "busy" error instead of
//! a panic. Errors cross the boundary as `JsError` with the library's message. Results are JSON strings.
//!
//! Saved adapters come in as a JS array of `{name, config, weights: Uint8Array, meta?}` (a saved
//! adapter's adapter_config.json, adapter_model.safetensors and localtune.json): the inputs of
//! `mergeAdapters`, and the sources of the multi-source transfer calls (`rankSources`, ScaLearn
//! through `startTraining`, `startDistill`).

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::error::{Error, Result};
use crate::model::bpe::{BpeTokenizer, Message};
use crate::model::generate::{Generator, Sampling};
use crate::model::gguf::Gguf;
use crate::model::llama::{LinearDelta, Llama};
use crate::model::{Model, Pooling};
use crate::peft::causal_lora::CausalLora;
use crate::peft::format::AdapterFiles;
use crate::peft::{Adapted, HeadKind, LoraConfig, Method, Target};
use crate::tensor::Device;
use crate::train::causal::{parse_chats, CausalRun, CausalSettings, ChatExample};
use crate::train::trainer::{metrics_from_logits, predict_logits};
use crate::train::{Dataset, Examples, OptimConfig, RunSettings, TrainConfig, Trainer};
use crate::transfer::{self, distill::Weighting, Score};

#[derive(Default)]
struct State {
    device: Option<Device>,
    model: Option<Rc<Model>>,
    model_name: String,
    data: Option<Dataset>,
    trainer: Option<Trainer>,
    /// The adapter used by predict/evaluate when no run is active (loaded from storage).
    adapter: Option<(AdapterFiles, Adapted)>,
    valid: Option<Examples>,
    /// Unlabelled target texts for distillation (`loadUnlabelled`).
    unlabelled: Vec<String>,
    /// The chat model mode: its own model, data, run and adapter, beside the classifier's.
    chat: Option<Chat>,
}

/// The chat model, its tokenizer, the chat data and the QLoRA run or adapter on it.
struct Chat {
    model: Llama,
    tok: BpeTokenizer,
    name: String,
    train: Vec<ChatExample>,
    valid: Vec<ChatExample>,
    /// The trained (or loaded) adapter, applied when a reply asks for it.
    adapter: Option<CausalLora>,
    run: Option<CausalRun>,
    /// The reply being generated.
    reply: Option<Reply>,
}

struct Reply {
    gen: Generator,
    use_adapter: bool,
    start: web_time::Instant,
}

thread_local! {
    static STATE: RefCell<Option<State>> = RefCell::new(Some(State::default()));
}

fn take() -> std::result::Result<State, JsError> {
    STATE
        .with(|s| s.borrow_mut().take())
        .ok_or_else(|| JsError::new("busy: the previous request to the worker has not finished"))
}

fn put(s: State) {
    STATE.with(|c| *c.borrow_mut() = Some(s));
}

/// Runs `f` on the taken state and puts it back, whatever `f` returns.
async fn with_state<T, F, Fut>(f: F) -> std::result::Result<T, JsError>
where
    F: FnOnce(State) -> Fut,
    Fut: std::future::Future<Output = (State, Result<T>)>,
{
    let s = take()?;
    let (s, r) = f(s).await;
    put(s);
    r.map_err(|e| JsError::new(&e.to_string()))
}

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Opens the device. `prefer`: "gpu" uses WebGPU whenever it opens; "auto" (the page's default) too,
/// except that a software WebGPU adapter (device type Cpu) gives way to the WebAssembly CPU path, which
/// is faster there; "cpu" uses the CPU. A missing or failing WebGPU falls back to the CPU.
/// Returns {device: "gpu"|"cpu", adapter?: {...}, fallback_reason?: "..."}.
#[wasm_bindgen(js_name = initDevice)]
pub async fn init_device(prefer: String) -> std::result::Result<String, JsError> {
    with_state(|mut s| async move {
        let (dev, info) = if prefer == "cpu" {
            (Device::Cpu, serde_json::json!({"device": "cpu", "fallback_reason": "the CPU was chosen"}))
        } else {
            match crate::gpu::Gpu::new().await {
                Ok(g) if prefer == "auto" && g.info().device_type == "Cpu" => {
                    let reason = format!(
                        "this browser's WebGPU adapter{} is a software renderer, slower here than the WebAssembly CPU path (add ?device=gpu to the address to use it anyway)",
                        if g.info().name.is_empty() { String::new() } else { format!(" ({})", g.info().name) }
                    );
                    (Device::Cpu, serde_json::json!({"device": "cpu", "fallback_reason": reason, "adapter": g.info()}))
                }
                Ok(g) => {
                    let info = serde_json::json!({"device": "gpu", "adapter": g.info()});
                    (Device::Gpu(g), info)
                }
                Err(e) => (Device::Cpu, serde_json::json!({"device": "cpu", "fallback_reason": e.to_string()})),
            }
        };
        s.device = Some(dev);
        s.model = None;
        s.trainer = None;
        s.adapter = None;
        (s, Ok(json(info)))
    })
    .await
}

/// Loads a model from its three files, with a sentence-transformers folder's `modules.json` and
/// `1_Pooling/config.json` when it has them (its pooling is then used by `embed`). Returns {name,
/// architecture, parameters, hidden, layers, heads, vocab, bytes, pooling}.
#[wasm_bindgen(js_name = loadModel)]
pub async fn load_model(
    config_json: String,
    weights: Vec<u8>,
    tokenizer_json: String,
    name: String,
    modules_json: Option<String>,
    pooling_json: Option<String>,
) -> std::result::Result<String, JsError> {
    with_state(|mut s| async move {
        let r = (|| {
            let dev = s.device.clone().ok_or_else(|| Error::invalid("call initDevice first"))?;
            let mut m = Model::from_bytes(&config_json, &weights, &tokenizer_json, &name, &dev)?;
            let read = |path: &str| -> Result<Option<String>> {
                Ok(match path {
                    "modules.json" => modules_json.clone(),
                    p if p.ends_with("config.json") => pooling_json.clone(),
                    _ => None,
                })
            };
            m.pooling = Pooling::from_folder(&read, &name)?;
            let c = &m.encoder.config;
            let info = serde_json::json!({
                "name": name,
                "architecture": m.encoder.desc.arch,
                "pooling": m.pooling,
                "parameters": m.encoder.num_parameters(),
                "hidden": c.hidden_size,
                "layers": c.num_hidden_layers,
                "heads": c.num_attention_heads,
                "vocab": c.vocab_size,
                "max_positions": c.max_position_embeddings,
                "bytes": weights.len(),
                "device": dev.describe(),
            });
            Ok((m, info))
        })();
        match r {
            Ok((m, info)) => {
                s.model = Some(Rc::new(m));
                s.model_name = name;
                s.trainer = None;
                s.adapter = None;
                (s, Ok(json(info)))
            }
            Err(e) => (s, Err(e)),
        }
    })
    .await
}

/// Parses a data file (CSV with text,label columns; JSONL; JSON array). Returns {rows, labels:
/// [[label, count]…], bad_rows: [{line, reason}…] (with skip_bad_rows), preview: [{text, label}…]}.
#[wasm_bindgen(js_name = loadData)]
pub fn load_data(bytes: Vec<u8>, name: String, skip_bad_rows: bool) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = Dataset::parse_with_hint(
        &bytes,
        &name,
        skip_bad_rows,
        "tick “skip rows that cannot be read” to skip such rows",
    );
    let out = r.map(|ds| {
        let v = serde_json::json!({
            "name": name,
            "rows": ds.examples.len(),
            "labels": ds.label_counts(),
            "bad_rows": ds.skipped.iter().take(50).map(|b| serde_json::json!({"line": b.line, "reason": b.reason})).collect::<Vec<_>>(),
            "bad_row_count": ds.skipped.len(),
            "preview": ds.examples.iter().take(20).map(|e| serde_json::json!({"text": e.text, "label": e.label})).collect::<Vec<_>>(),
        });
        s.data = Some(ds);
        json(v)
    });
    put(s);
    out.map_err(|e| JsError::new(&e.to_string()))
}

/// Starts a run on the loaded data with `settings` (JSON). `sources`: for a ScaLearn method
/// (`scalearn`, `scalearn-uniform`, `scalearn++`, `scalearn-uniform++`), the source adapters it
/// combines, an array of saved adapters (ignored by the other methods; may be undefined). Returns
/// {method, train, valid, labels, total_steps, trainable, lr, sources?: [names], frozen_source_values?}.
#[wasm_bindgen(js_name = startTraining)]
pub fn start_training(settings: String, sources: JsValue) -> std::result::Result<String, JsError> {
    let sources = adapters_from_js(&sources).map_err(js_error)?;
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let run = run_parts(&s, &settings, sources)?;
        Ok(json(start_run(&mut s, run, None)?))
    })();
    put(s);
    r.map_err(js_error)
}

fn js_error(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

/// What a run is made of before its trainer exists.
struct RunParts {
    model: Rc<Model>,
    config: TrainConfig,
    labels: Vec<String>,
    train: Examples,
    valid: Examples,
}

/// The run `settings` describe on the loaded data's seeded training split, with `sources` attached
/// when the method is a ScaLearn variant.
fn run_parts(s: &State, settings: &str, sources: Vec<(String, AdapterFiles)>) -> Result<RunParts> {
    let st: RunSettings = serde_json::from_str(settings).map_err(|e| Error::invalid(format!("settings: {e}")))?;
    let mut config = st.train_config()?;
    let model = s.model.clone().ok_or_else(|| Error::invalid("load a model first"))?;
    if let Some(c) = config.method.scalearn_mut() {
        if sources.is_empty() {
            return Err(Error::invalid(format!("{}: choose at least one source adapter", c.name())));
        }
        check_base(s, &sources)?;
        let files = sources.into_iter().map(|(name, f)| (name, f.method, f.labels, f.arch, f.tensors)).collect();
        *c = c.clone().with_sources(files)?;
    }
    let data = s.data.as_ref().ok_or_else(|| Error::invalid("load a data file first"))?;
    let (tr, va) = data.split(st.valid_fraction, st.seed)?;
    let labels = data.training_labels(&tr, &va)?;
    let train = Examples::from_dataset(&tr, &labels)?;
    let valid = Examples::from_dataset(&va, &labels)?;
    Ok(RunParts { model, config, labels, train, valid })
}

/// Makes `run` the session's run (training against `soft` targets when given); returns its summary.
fn start_run(s: &mut State, run: RunParts, soft: Option<Vec<f32>>) -> Result<serde_json::Value> {
    let lr = run.config.optim.lr;
    let mut t = Trainer::new(run.model, run.config, run.labels.clone(), run.train, run.valid.clone())?;
    if let Some(targets) = soft {
        t.set_soft_targets(targets)?;
    }
    let mut info = serde_json::json!({
        "method": t.config.method.name(),
        "train": t.train.len(),
        "valid": t.valid.len(),
        "labels": run.labels,
        "total_steps": t.total_micro_steps(),
        "trainable": t.params.count(),
        "lr": crate::train::optim::as_written(lr),
    });
    if let Some(c) = t.config.method.scalearn_mut() {
        // The sources' own values: frozen, used as they are (their classifiers are not).
        let frozen: usize = c.loaded.0.as_ref().map_or(0, |l| {
            l.iter()
                .flat_map(|t| t.tensors.iter())
                .filter(|(k, _)| !k.starts_with("base_model.model.classifier."))
                .map(|(_, v)| v.shape.iter().product::<usize>())
                .sum()
        });
        info["sources"] = serde_json::json!(c.sources.iter().map(|x| x.name.clone()).collect::<Vec<_>>());
        info["frozen_source_values"] = serde_json::json!(frozen);
    }
    s.valid = Some(run.valid);
    s.trainer = Some(t);
    s.adapter = None;
    Ok(info)
}

/// The name the page gives a model picked as loose files, whose folder it does not know.
const UNNAMED_MODEL: &str = "local model";

/// The last component of a model's path or name, lower-cased: a base model recorded as a folder, a
/// hub id or the page's model name compares equal to another form of the same name (as the CLI does).
fn model_name(s: &str) -> String {
    s.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or("").to_lowercase()
}

/// Refuses a source made for another base model than the loaded one (by name, as the CLI's
/// `load_sources` does); a model whose name is not known is not compared (shapes are checked later).
fn check_base(s: &State, sources: &[(String, AdapterFiles)]) -> Result<()> {
    let want = model_name(&s.model_name);
    for (name, f) in sources {
        let got = model_name(&f.base_model);
        let unknown = |n: &str| n.is_empty() || n == UNNAMED_MODEL;
        if !unknown(&got) && !unknown(&want) && got != want {
            return Err(Error::file(
                name,
                format!(
                    "this source was trained on base model `{}`, the loaded model is `{}`",
                    f.base_model, s.model_name
                ),
            ));
        }
    }
    Ok(())
}

/// Saved adapters as the page passes them (an array of {name, config, weights: Uint8Array, meta?};
/// undefined or null is none), read into adapter files; an error names the adapter at fault.
fn adapters_from_js(list: &JsValue) -> Result<Vec<(String, AdapterFiles)>> {
    if list.is_undefined() || list.is_null() {
        return Ok(vec![]);
    }
    if !js_sys::Array::is_array(list) {
        return Err(Error::invalid("adapters: expected an array of {name, config, weights, meta}"));
    }
    js_sys::Array::from(list)
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = js_string(&a, "name").unwrap_or_else(|| format!("adapter {}", i + 1));
            let config =
                js_string(&a, "config").ok_or_else(|| Error::invalid(format!("{name}: no adapter_config.json")))?;
            let weights = js_sys::Reflect::get(&a, &JsValue::from_str("weights"))
                .ok()
                .filter(|w| w.is_instance_of::<js_sys::Uint8Array>())
                .map(|w| js_sys::Uint8Array::new(&w).to_vec())
                .ok_or_else(|| Error::invalid(format!("{name}: no adapter_model.safetensors")))?;
            let files = AdapterFiles::from_files(&config, &weights, js_string(&a, "meta").as_deref(), &name)?;
            Ok((name, files))
        })
        .collect()
}

/// Scores source adapters on the whole loaded data file (every labelled row, as `localtune
/// rank-sources --data` does), each source's texts cut at `max_len` tokens (0: 64). `sources`: an
/// array of saved adapters, of any method and label set. Returns {examples, labels, sources: [{name,
/// logme, leep, nce, labels, method}…] in the order given (higher is better for all three), ensemble:
/// {logme, leep, nce: [{name, score}…]}: the best team of up to 2 sources by each score, grown
/// greedily}.
#[wasm_bindgen(js_name = rankSources)]
pub async fn rank_sources(sources: JsValue, max_len: u32) -> std::result::Result<String, JsError> {
    let sources = adapters_from_js(&sources).map_err(js_error)?;
    with_state(|s| async move {
        let r = async {
            let model = s.model.as_ref().ok_or_else(|| Error::invalid("load a model first"))?;
            let ds = s.data.as_ref().ok_or_else(|| Error::invalid("load a labelled data file first (step 2)"))?;
            if sources.is_empty() {
                return Err(Error::invalid("choose at least one source adapter to rank"));
            }
            check_base(&s, &sources)?;
            let labels = ds.labels();
            if labels.len() < 2 {
                return Err(Error::invalid(format!(
                    "the data needs at least 2 distinct labels to score sources, found {labels:?}"
                )));
            }
            let ex = Examples::from_dataset(ds, &labels)?;
            let texts: Vec<&str> = ex.texts.iter().map(|t| t.as_str()).collect();
            let max_len = if max_len == 0 { 64 } else { max_len as usize };
            let outs = transfer::outputs_of(model, &sources, &texts, max_len).await?;
            let k = labels.len();
            let mut rows = vec![];
            for ((name, f), o) in sources.iter().zip(&outs) {
                let [logme, leep, nce] = transfer::all_scores(o, &ex.labels, k)?;
                rows.push(serde_json::json!({"name": name, "logme": logme, "leep": leep, "nce": nce,
                    "labels": f.labels, "method": f.method.name()}));
            }
            let mut ensemble = serde_json::Map::new();
            for name in Score::NAMES {
                let score = Score::parse(name)?;
                let team = transfer::greedy_ensemble(score, &outs, &ex.labels, k, 2)?;
                let team: Vec<_> =
                    team.iter().map(|(i, v)| serde_json::json!({"name": sources[*i].0, "score": v})).collect();
                ensemble.insert(name.to_string(), serde_json::json!(team));
            }
            Ok(json(serde_json::json!({"examples": ex.len(), "labels": labels, "sources": rows, "ensemble": ensemble})))
        }
        .await;
        (s, r)
    })
    .await
}

/// Keeps unlabelled target texts for `startDistill`: .txt (one per line), JSONL/JSON with "text",
/// or CSV with a text column. Returns {name, texts, preview: [first texts]}.
#[wasm_bindgen(js_name = loadUnlabelled)]
pub fn load_unlabelled(bytes: Vec<u8>, name: String) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = crate::train::data::parse_texts(&bytes, &name).map(|texts| {
        let v = serde_json::json!({"name": name, "texts": texts.len(), "preview": texts.iter().take(5).collect::<Vec<_>>()});
        s.unlabelled = texts;
        json(v)
    });
    put(s);
    r.map_err(js_error)
}

/// Forgets the unlabelled texts.
#[wasm_bindgen(js_name = clearUnlabelled)]
pub fn clear_unlabelled() -> std::result::Result<(), JsError> {
    let mut s = take()?;
    s.unlabelled.clear();
    put(s);
    Ok(())
}

/// Starts a distillation run (Borup et al.): the student (any method of `settings`; a ScaLearn one
/// combines `sources` too) trains on the loaded data's training split and the unlabelled texts of
/// `loadUnlabelled` against the soft predictions of the teachers `sources`. `weighting`: nearest
/// (the best source by `score` alone) | weighted (every source, by its standardised score); `score`:
/// logme | leep | nce, on the training split; `alpha`: the teachers' share of a labelled example's
/// target. Then `trainStep` as for any run. Returns startTraining's summary with {teachers: [{name,
/// score, weight}…], labelled, unlabelled, weighting, score, alpha}.
#[wasm_bindgen(js_name = startDistill)]
pub async fn start_distill(
    settings: String,
    sources: JsValue,
    weighting: String,
    score: String,
    alpha: f32,
) -> std::result::Result<String, JsError> {
    let sources = adapters_from_js(&sources).map_err(js_error)?;
    with_state(|mut s| async move {
        let r = async {
            let w = Weighting::parse(&weighting)?;
            let sc = Score::parse(&score)?;
            if sources.is_empty() {
                return Err(Error::invalid("choose at least one source adapter to distill from"));
            }
            check_base(&s, &sources)?;
            let mut run = run_parts(&s, &settings, sources.clone())?;
            let (teachers, targets) = transfer::distill::teacher_targets(
                &run.model,
                &sources,
                &run.train,
                &run.labels,
                &s.unlabelled,
                sc,
                w,
                alpha,
                run.config.max_len,
            )
            .await?;
            // The unlabelled texts join the training split; their label is their target's argmax
            // (only the targets train), as in the CLI's distill.
            let (k, labelled) = (run.labels.len(), run.train.len());
            run.train.texts.extend(s.unlabelled.iter().cloned());
            for i in labelled..run.train.texts.len() {
                let row = &targets[i * k..(i + 1) * k];
                run.train.labels.push(crate::train::metrics::argmax_rows(row, k)[0]);
            }
            let unlabelled = s.unlabelled.len();
            let mut info = start_run(&mut s, run, Some(targets))?;
            info["teachers"] = serde_json::json!(teachers);
            info["labelled"] = serde_json::json!(labelled);
            info["unlabelled"] = serde_json::json!(unlabelled);
            info["weighting"] = serde_json::json!(w);
            info["score"] = serde_json::json!(sc.name());
            info["alpha"] = serde_json::json!(alpha);
            Ok(json(info))
        }
        .await;
        (s, r)
    })
    .await
}

/// One training step. Returns {loss, lr, epoch, step, total, epoch_end?: {...}, done}.
#[wasm_bindgen(js_name = trainStep)]
pub async fn train_step() -> std::result::Result<String, JsError> {
    with_state(|mut s| async move {
        let Some(mut t) = s.trainer.take() else {
            return (s, Err(Error::invalid("no training run: start one first")));
        };
        let r = t.step().await.map(|o| {
            json(serde_json::json!({
                "loss": o.loss,
                "lr": crate::train::optim::as_written(o.lr),
                "epoch": o.epoch,
                "step": o.micro_step,
                "total": t.total_micro_steps(),
                "epoch_end": o.epoch_end,
                "done": o.done,
            }))
        });
        s.trainer = Some(t);
        (s, r)
    })
    .await
}

/// Metrics on the held-out split of the current run (or of the data, for a loaded adapter):
/// {n, accuracy, macro_f1, loss, confusion, labels}.
#[wasm_bindgen]
pub async fn evaluate() -> std::result::Result<String, JsError> {
    with_state(|s| async move {
        let r = evaluate_inner(&s).await;
        (s, r)
    })
    .await
}

async fn evaluate_inner(s: &State) -> Result<String> {
    let model = s.model.as_ref().ok_or_else(|| Error::invalid("load a model first"))?;
    let (params, head, labels, max_len) = active(s)?;
    let data: Examples = match (&s.trainer, &s.data) {
        (Some(_), _) => s.valid.clone().unwrap_or_default(),
        (None, Some(ds)) => Examples::from_dataset(ds, labels)?,
        _ => return Err(Error::invalid("load a data file to evaluate on")),
    };
    if data.is_empty() {
        return Err(Error::invalid("nothing to evaluate: the held-out split is empty"));
    }
    let texts: Vec<&str> = data.texts.iter().map(|t| t.as_str()).collect();
    let logits = predict_logits(model, params, head, &texts, max_len, 32).await?;
    let m = metrics_from_logits(&logits, &data.labels, labels.len());
    Ok(json(
        serde_json::json!({"n": m.n, "accuracy": m.accuracy, "macro_f1": m.macro_f1, "loss": m.loss, "confusion": m.confusion, "labels": labels}),
    ))
}

/// The parameters predictions use: the current run's, else the loaded adapter's.
fn active(s: &State) -> Result<(&Adapted, HeadKind, &Vec<String>, usize)> {
    if let Some(t) = &s.trainer {
        return Ok((&t.params, t.config.head, &t.labels, t.config.max_len));
    }
    if let Some((f, p)) = &s.adapter {
        return Ok((p, f.head, &f.labels, 128));
    }
    Err(Error::invalid("train or load an adapter first"))
}

/// Classifies one text: {label, probabilities: [...], labels}.
#[wasm_bindgen]
pub async fn predict(text: String) -> std::result::Result<String, JsError> {
    with_state(|s| async move {
        let r = async {
            let model = s.model.as_ref().ok_or_else(|| Error::invalid("load a model first"))?;
            let (params, head, labels, max_len) = active(&s)?;
            let logits = predict_logits(model, params, head, &[text.as_str()], max_len, 1).await?;
            let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let probs: Vec<f32> = e.iter().map(|x| x / z).collect();
            let best = crate::train::metrics::argmax_rows(&logits, labels.len())[0] as usize;
            Ok(json(serde_json::json!({"label": labels[best], "probabilities": probs, "labels": labels})))
        }
        .await;
        (s, r)
    })
    .await
}

/// The current adapter as files: an array of [name, Uint8Array] pairs (adapter_config.json,
/// adapter_model.safetensors, localtune.json).
#[wasm_bindgen(js_name = exportAdapter)]
pub async fn export_adapter() -> std::result::Result<js_sys::Array, JsError> {
    let files = with_state(|s| async move {
        let r = async {
            let model = s.model.as_ref().ok_or_else(|| Error::invalid("load a model first"))?;
            let (params, head, labels, _) = active(&s)?;
            AdapterFiles::from_adapted(params, &model.encoder, head, labels, &s.model_name)
                .await?
                .to_files(&model.encoder.desc)
        }
        .await;
        (s, r)
    })
    .await?;
    Ok(files_to_js(&files))
}

/// Loads a saved adapter for evaluation and prediction. Returns {method, labels, head}.
#[wasm_bindgen(js_name = loadAdapter)]
pub fn load_adapter(
    config_json: String,
    weights: Vec<u8>,
    meta_json: Option<String>,
    name: String,
) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let model = s.model.clone().ok_or_else(|| Error::invalid("load a model first"))?;
        let files = AdapterFiles::from_files(&config_json, &weights, meta_json.as_deref(), &name)?;
        let params = files.to_adapted(&model.encoder)?;
        let info = serde_json::json!({"method": files.method.name(), "labels": files.labels, "head": files.head});
        s.trainer = None;
        s.adapter = Some((files, params));
        Ok(json(info))
    })();
    put(s);
    r.map_err(|e| JsError::new(&e.to_string()))
}

/// Settings of `mergeAdapters`; absent values take the method's defaults.
#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MergeSettings {
    /// One per input, in input order.
    weights: Option<Vec<f64>>,
    density: Option<f64>,
    lambda: Option<f64>,
    temperature: Option<f64>,
    /// The merged LoRA's rank (default: the largest input rank).
    rank: Option<usize>,
    seed: Option<u32>,
}

/// A string property of a JS object, if it has one.
fn js_string(o: &JsValue, key: &str) -> Option<String> {
    js_sys::Reflect::get(o, &JsValue::from_str(key)).ok().and_then(|v| v.as_string())
}

/// Files as an array of [name, Uint8Array] pairs.
fn files_to_js(files: &[(&str, Vec<u8>)]) -> js_sys::Array {
    let out = js_sys::Array::new();
    for (name, bytes) in files {
        let pair = js_sys::Array::new();
        pair.push(&JsValue::from_str(name));
        pair.push(&js_sys::Uint8Array::from(bytes.as_slice()).into());
        out.push(&pair);
    }
    out
}

/// Merges saved adapters (of one method, for the loaded model) on the session's device. `adapters`:
/// an array of {name, config, weights: Uint8Array, meta?} (a saved adapter's adapter_config.json,
/// adapter_model.safetensors and localtune.json); `method`: a name of `merge::METHODS`; `settings`:
/// JSON {weights?: […], density?, lambda?, temperature?, rank?, seed?}. LoRA updates are merged as
/// ΔW and written back by truncated SVD. Returns {report: JSON {method, inputs, heads, adapters,
/// labels, svd_relative_error_max, svd_relative_error_mean}, adapters: [files…]}, one array of
/// [name, Uint8Array] pairs per merged adapter (one per task when the label sets differ).
#[wasm_bindgen(js_name = mergeAdapters)]
pub async fn merge_adapters(
    adapters: js_sys::Array,
    method: String,
    settings: String,
) -> std::result::Result<JsValue, JsError> {
    use crate::merge::adapters::{merge_adapters, LoraOutput};
    use crate::merge::folder::Recipe;
    use crate::merge::params::Setting;
    use crate::merge::{Method as MergeMethod, Semantics};
    let (names, inputs): (Vec<String>, Vec<AdapterFiles>) =
        adapters_from_js(&JsValue::from(adapters)).map_err(js_error)?.into_iter().unzip();
    let (report, merged) = with_state(|s| async move {
        let r = async {
            let model = s.model.clone().ok_or_else(|| Error::invalid("load the model the adapters were trained on first"))?;
            if inputs.len() < 2 {
                return Err(Error::invalid("choose at least two adapters to merge"));
            }
            let st: MergeSettings =
                serde_json::from_str(&settings).map_err(|e| Error::invalid(format!("merge settings: {e}")))?;
            let method = MergeMethod::parse(&method)?;
            let mut recipe = Recipe::new(method, inputs.len(), Semantics::Peft);
            recipe.layers = model.encoder.config.num_hidden_layers;
            recipe.seed = st.seed.unwrap_or(0);
            if let Some(ws) = &st.weights {
                if ws.len() != inputs.len() {
                    return Err(Error::invalid(format!("{} weights for {} adapters", ws.len(), inputs.len())));
                }
                for (m, &w) in recipe.models.iter_mut().zip(ws) {
                    m.insert("weight".into(), Setting::Number(w));
                }
            }
            for (k, v) in [("density", st.density), ("lambda", st.lambda), ("temperature", st.temperature)] {
                if let Some(v) = v {
                    recipe.global.insert(k.into(), Setting::Number(v));
                }
            }
            let dev = model.encoder.device.clone();
            // Full fine-tunes and BitFit are task vectors of the loaded model's own weights.
            let base = if crate::merge::adapters::needs_base(&inputs, method) {
                let mut b = crate::model::weights::NamedTensors { origin: "the loaded model".into(), ..Default::default() };
                for (name, t) in model.encoder.named_weights() {
                    b.insert(name, crate::model::weights::HostTensor::new(t.shape().to_vec(), t.to_vec().await?));
                }
                Some(b)
            } else {
                None
            };
            let m = merge_adapters(&recipe, &dev, &inputs, LoraOutput::Svd(st.rank), false, &[], base.as_ref()).await?;
            let files = m.adapters.iter().map(|a| a.to_files(&model.encoder.desc)).collect::<Result<Vec<_>>>()?;
            let errs: Vec<f64> = m.svd_errors.iter().map(|e| e.1).collect();
            let report = serde_json::json!({
                "method": method.name(),
                "inputs": names,
                "heads": m.heads,
                "adapters": m.adapters.len(),
                "labels": m.adapters.iter().map(|a| a.labels.clone()).collect::<Vec<_>>(),
                "svd_relative_error_max": errs.iter().copied().fold(0.0f64, f64::max),
                "svd_relative_error_mean": if errs.is_empty() { 0.0 } else { errs.iter().sum::<f64>() / errs.len() as f64 },
            });
            Ok((json(report), files))
        }
        .await;
        (s, r)
    })
    .await?;
    let out = js_sys::Object::new();
    let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&out, &JsValue::from_str(k), v);
    let list = js_sys::Array::new();
    for files in &merged {
        list.push(&files_to_js(files));
    }
    set("report", &JsValue::from_str(&report))
        .and(set("adapters", &list))
        .map_err(|_| JsError::new("merge: could not build the result"))?;
    Ok(out.into())
}

/// Sentence embeddings of `texts` (a JSON array of strings) under the model's own pooling:
/// {embeddings: [[…], …], pooling, truncated}.
#[wasm_bindgen]
pub async fn embed(texts: String, max_len: u32) -> std::result::Result<String, JsError> {
    with_state(|s| async move {
        let r = async {
            let model = s.model.as_ref().ok_or_else(|| Error::invalid("load a model first"))?;
            let texts: Vec<String> = serde_json::from_str(&texts).map_err(|e| Error::invalid(format!("texts: {e}")))?;
            let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
            let (embs, truncated) = model.embed(&refs, max_len as usize, 16).await?;
            Ok(json(serde_json::json!({"embeddings": embs, "pooling": model.pooling, "truncated": truncated})))
        }
        .await;
        (s, r)
    })
    .await
}

/// Times the loaded model in this browser: the embedding forward at batch 1 × 32 and 8 × 64 tokens,
/// and a LoRA (r=8, query,value) training step at `train_batch` × 64. Returns one JSON object.
#[wasm_bindgen]
pub async fn benchmark(reps: u32, train_batch: u32) -> std::result::Result<String, JsError> {
    with_state(|s| async move {
        let r = benchmark_inner(&s, reps.max(1) as usize, train_batch.max(1) as usize).await;
        (s, r)
    })
    .await
}

async fn benchmark_inner(s: &State, reps: usize, train_batch: usize) -> Result<String> {
    use crate::model::{Inputs, Mode};
    use web_time::Instant;
    let model = s.model.clone().ok_or_else(|| Error::invalid("load a model first"))?;
    let dev = model.encoder.device.clone();
    let mut rows = vec![];
    for (batch, tokens) in [(1usize, 32usize), (8, 64)] {
        let tok = &model.tokenizer;
        let mut ids = vec![];
        for b in 0..batch {
            ids.push(tok.cls_id());
            for t in 1..tokens - 1 {
                ids.push(1000 + ((b * 7919 + t * 104_729) % 20000) as u32 % tok.vocab_size() as u32);
            }
            ids.push(tok.sep_id());
        }
        let ones = vec![1u32; ids.len()];
        let zeros = vec![0u32; ids.len()];
        let mut times = vec![];
        for i in 0..=reps {
            let t0 = Instant::now();
            let inputs = Inputs::new(&dev, &ids, &ones, &zeros, batch, tokens)?;
            let o = model.encoder.forward(&inputs, Mode::Inference, false)?;
            model.encoder.sentence_embedding(&o.hidden, &inputs)?.to_vec().await?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        rows.push(serde_json::json!({"what": "forward", "batch": batch, "tokens": tokens, "ms": mean * 1e3, "sentences_per_s": batch as f64 / mean}));
    }
    let text = vec!["the"; 62].join(" ");
    let n = train_batch * 8;
    let data = Examples { texts: vec![text; n], labels: (0..n as u32).map(|i| i % 2).collect() };
    let cfg = TrainConfig {
        method: Method::Lora(LoraConfig::new(8, 16.0, &[Target::Query, Target::Value])),
        head: if model.encoder.pooler.is_some() { HeadKind::Pooler } else { HeadKind::Mean },
        epochs: 100,
        batch_size: train_batch,
        grad_accum: 1,
        max_len: 64,
        seed: 0,
        optim: OptimConfig::default(),
        dropout: true,
    };
    let mut t = Trainer::new(model.clone(), cfg, vec!["a".into(), "b".into()], data, Examples::default())?;
    let mut times = vec![];
    for i in 0..=reps {
        let t0 = Instant::now();
        t.step().await?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    rows.push(serde_json::json!({"what": "lora_train_step", "batch": train_batch, "tokens": 64, "ms": mean * 1e3, "examples_per_s": train_batch as f64 / mean}));
    Ok(json(serde_json::json!({"device": dev.describe(), "model": s.model_name, "reps": reps, "results": rows})))
}

// ---- The chat model mode: a GGUF decoder, replies streamed token by token, QLoRA on the user's chats.

fn chat_ref(s: &State) -> Result<&Chat> {
    s.chat.as_ref().ok_or_else(|| Error::invalid("load a chat model first"))
}

/// Loads a chat model from its GGUF file's bytes. Returns {name, layers, hidden, heads, kv_heads,
/// vocab, context, file_bytes, device_bytes, device}.
#[wasm_bindgen(js_name = loadChatModel)]
pub fn load_chat_model(bytes: Vec<u8>, name: String) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let dev = s.device.clone().ok_or_else(|| Error::invalid("call initDevice first"))?;
        let g = Gguf::from_bytes(&bytes, &name)?;
        let tok = BpeTokenizer::from_gguf(&g)?;
        tok.apply_chat_template(&[], true)?;
        let model = Llama::from_gguf(&g, &bytes, &dev)?;
        let c = &model.cfg;
        let info = serde_json::json!({
            "name": name, "layers": c.layers, "hidden": c.hidden, "heads": c.heads, "kv_heads": c.kv_heads,
            "vocab": c.vocab, "context": c.context, "file_bytes": bytes.len(),
            "device_bytes": model.device_bytes(), "device": dev.describe(),
        });
        s.chat = Some(Chat { model, tok, name, train: vec![], valid: vec![], adapter: None, run: None, reply: None });
        Ok(json(info))
    })();
    put(s);
    r.map_err(js_error)
}

#[derive(serde::Deserialize)]
struct ReplySettings {
    #[serde(default)]
    temperature: f32,
    #[serde(default)]
    top_k: usize,
    #[serde(default = "one")]
    top_p: f32,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_new_tokens")]
    max_new_tokens: usize,
    /// Apply the trained or loaded adapter.
    #[serde(default)]
    use_adapter: bool,
}

fn one() -> f32 {
    1.0
}

fn default_new_tokens() -> usize {
    128
}

/// Starts the assistant's next turn after `messages` (JSON [{role, content}…]); `settings` JSON
/// {temperature (0: greedy), top_k, top_p, seed, max_new_tokens, use_adapter}. Then `chatReplyNext`
/// gives one token at a time. Returns {prompt_tokens}.
#[wasm_bindgen(js_name = chatReplyStart)]
pub fn chat_reply_start(messages: String, settings: String) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
        let messages: Vec<Message> = serde_json::from_str(&messages)
            .map_err(|e| Error::invalid(format!("messages must be [{{role, content}}…]: {e}")))?;
        let st: ReplySettings =
            serde_json::from_str(&settings).map_err(|e| Error::invalid(format!("reply settings: {e}")))?;
        if st.use_adapter && c.adapter.is_none() {
            return Err(Error::invalid("no adapter yet: fine-tune or load one first"));
        }
        let sampling = Sampling { temperature: st.temperature, top_k: st.top_k, top_p: st.top_p, seed: st.seed };
        let prompt = c.tok.encode_chat(&messages, true)?;
        if prompt.len() >= c.model.cfg.context {
            return Err(Error::invalid(format!(
                "the conversation is {} tokens, the model's context is {}: start a new chat",
                prompt.len(),
                c.model.cfg.context
            )));
        }
        let g = Generator::new(&prompt, st.max_new_tokens, &sampling, &c.tok.stop_ids())?;
        c.reply = Some(Reply { gen: g, use_adapter: st.use_adapter, start: web_time::Instant::now() });
        Ok(json(serde_json::json!({ "prompt_tokens": prompt.len() })))
    })();
    put(s);
    r.map_err(js_error)
}

/// The reply's next token: {text (the whole reply so far), ids, done, seconds, adapter}.
#[wasm_bindgen(js_name = chatReplyNext)]
pub async fn chat_reply_next() -> std::result::Result<String, JsError> {
    with_state(|mut s| async move {
        let r = async {
            let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
            let reply = c.reply.as_mut().ok_or_else(|| Error::invalid("no reply in progress"))?;
            let delta = if reply.use_adapter { c.adapter.as_ref().map(|a| a as &dyn LinearDelta) } else { None };
            reply.gen.next(&c.model, delta).await?;
            let done = reply.gen.finished();
            let v = serde_json::json!({
                "text": c.tok.decode(&reply.gen.out, true), "ids": reply.gen.out, "done": done,
                "seconds": reply.start.elapsed().as_secs_f64(), "adapter": delta.is_some(),
            });
            if done {
                c.reply = None;
            }
            Ok(json(v))
        }
        .await;
        (s, r)
    })
    .await
}

/// Reads chat data (JSONL of {"messages": [...]} or {"prompt", "completion"}) for fine-tuning, a
/// seeded `valid_fraction` held out. Returns {name, chats, train, valid, answer_tokens, preview:
/// [{user, assistant}…]}.
#[wasm_bindgen(js_name = loadChatData)]
pub fn load_chat_data(bytes: Vec<u8>, name: String, valid_fraction: f64) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::file(&name, "is not UTF-8 text"))?;
        let mut data = parse_chats(&text, std::path::Path::new(&name), &c.tok, c.model.cfg.context)?;
        if !(0.0..1.0).contains(&valid_fraction) {
            return Err(Error::invalid(format!("the held-out share {valid_fraction} must be in [0, 1)")));
        }
        let preview: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(5)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let turn = |role: &str, key: &str| {
                    v.get("messages")
                        .and_then(|m| m.as_array())
                        .and_then(|m| m.iter().find(|x| x["role"] == role))
                        .and_then(|x| x["content"].as_str())
                        .or_else(|| v.get(key).and_then(|x| x.as_str()))
                        .unwrap_or("")
                        .to_string()
                };
                serde_json::json!({"user": turn("user", "prompt"), "assistant": turn("assistant", "completion")})
            })
            .collect();
        let chats = data.len();
        crate::rng::Rng::new(0x5eed).shuffle(&mut data);
        let n = ((chats as f64 * valid_fraction).round() as usize).min(chats - 1);
        c.valid = data.split_off(chats - n);
        c.train = data;
        c.run = None;
        let answer_tokens: usize = c.train.iter().map(|e| e.positions.len()).sum();
        Ok(json(serde_json::json!({
            "name": name, "chats": chats, "train": c.train.len(), "valid": c.valid.len(),
            "answer_tokens": answer_tokens, "preview": preview,
        })))
    })();
    put(s);
    r.map_err(js_error)
}

#[derive(serde::Deserialize)]
struct ChatTrainSettings {
    epochs: usize,
    batch: usize,
    lr: f32,
    r: usize,
    alpha: f32,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    warmup: f32,
}

/// Starts QLoRA (LoRA on all seven linears of every layer over the frozen, quantised model) on the
/// loaded chats; `settings` JSON {epochs, batch, lr, r, alpha, seed?, warmup?}. Returns {trainable,
/// total_steps, train, valid, answer_tokens}.
#[wasm_bindgen(js_name = startChatTraining)]
pub fn start_chat_training(settings: String) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
        if c.train.is_empty() {
            return Err(Error::invalid("load a chat file (JSONL) to fine-tune on first"));
        }
        let st: ChatTrainSettings =
            serde_json::from_str(&settings).map_err(|e| Error::invalid(format!("training settings: {e}")))?;
        if !(st.lr > 0.0 && st.lr < 1.0) {
            return Err(Error::invalid(format!("learning rate {} must be in (0, 1)", st.lr)));
        }
        let mut lora = CausalLora::new(
            &c.model.cfg,
            st.r,
            st.alpha,
            false,
            &(0..7).collect::<Vec<_>>(),
            st.seed,
            &c.model.device,
        )?;
        lora.base = c.name.clone();
        let optim = OptimConfig { lr: st.lr, warmup_ratio: st.warmup, ..OptimConfig::default() };
        let settings = CausalSettings { epochs: st.epochs, batch: st.batch, seed: st.seed, optim };
        let run = CausalRun::new(&lora, &c.train, &settings, &c.model.device)?;
        let info = serde_json::json!({
            "trainable": lora.params.count(), "total_steps": run.total_steps(), "train": c.train.len(),
            "valid": c.valid.len(), "answer_tokens": c.train.iter().map(|e| e.positions.len()).sum::<usize>(),
        });
        c.adapter = Some(lora);
        c.run = Some(run);
        Ok(json(info))
    })();
    put(s);
    r.map_err(js_error)
}

/// One QLoRA step. Returns {epoch, step, total_steps, loss, epoch_end?: {train_loss, valid_loss,
/// tokens_per_s, …}, done}.
#[wasm_bindgen(js_name = chatTrainStep)]
pub async fn chat_train_step() -> std::result::Result<String, JsError> {
    with_state(|mut s| async move {
        let r = async {
            let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
            let (Some(run), Some(adapter)) = (c.run.as_mut(), c.adapter.as_mut()) else {
                return Err(Error::invalid("no fine-tuning run: start one first"));
            };
            let report = run.step(&c.model, adapter, &c.train, &c.valid).await?;
            Ok(json(serde_json::to_value(&report).unwrap()))
        }
        .await;
        (s, r)
    })
    .await
}

/// The chat adapter as PEFT files: an array of [name, Uint8Array] (adapter_config.json,
/// adapter_model.safetensors), which PeftModel.from_pretrained loads onto the same GGUF model.
#[wasm_bindgen(js_name = exportChatAdapter)]
pub async fn export_chat_adapter() -> std::result::Result<js_sys::Array, JsError> {
    let files = with_state(|s| async move {
        let r = async {
            let a = chat_ref(&s)?.adapter.as_ref().ok_or_else(|| Error::invalid("no adapter: fine-tune first"))?;
            a.to_files().await
        }
        .await;
        (s, r)
    })
    .await?;
    Ok(files_to_js(&files))
}

/// Loads a saved chat adapter (PEFT LoRA, CAUSAL_LM) for the loaded chat model. Returns {r, alpha,
/// targets, trainable}.
#[wasm_bindgen(js_name = loadChatAdapter)]
pub fn load_chat_adapter(config_json: String, weights: Vec<u8>, name: String) -> std::result::Result<String, JsError> {
    let mut s = take()?;
    let r = (|| -> Result<String> {
        let c = s.chat.as_mut().ok_or_else(|| Error::invalid("load a chat model first"))?;
        let a = CausalLora::from_files(
            &config_json,
            &format!("{name}/adapter_config.json"),
            &weights,
            &format!("{name}/adapter_model.safetensors"),
            &c.model.cfg,
            &c.model.device,
        )?;
        let info = serde_json::json!({"r": a.r, "alpha": a.alpha, "targets": a.peft_config()["target_modules"], "trainable": a.params.count()});
        c.adapter = Some(a);
        c.run = None;
        Ok(json(info))
    })();
    put(s);
    r.map_err(js_error)
}
