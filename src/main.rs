//! The native command-line tool.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static ALLOC: cli::CountingAlloc = cli::CountingAlloc;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    mod llm;
    mod merge;
    mod recipe;
    mod transfer;

    use clap::{Parser, Subcommand, ValueEnum};
    use localtune::bench;
    use localtune::model::Model;
    use localtune::{Device, Error, Result};
    use std::io::{BufRead, Write};
    use std::path::{Path, PathBuf};

    #[derive(Parser)]
    #[command(
        name = "localtune",
        version,
        about = "Private on-device fine-tuning and merging of pretrained transformers"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Print the GPU adapter, its limits and features, and the CPU backend's threads.
        Info {
            /// One JSON object instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Print a model folder's architecture as localtune reads it: its sizes, its layer description
        /// (norm placement, activation, attention, positions, weight and PEFT module names) and its
        /// sentence pooling, as JSON. Reads config.json (and the pooling files), not the weights.
        Describe {
            /// The model folder (default: $LOCALTUNE_MODEL or the all-MiniLM-L6-v2 in .cache/models).
            #[arg(long)]
            model: Option<PathBuf>,
        },
        /// Print the token ids of each input text (one text per line on stdin), one JSON line each.
        Tokenize {
            #[command(flatten)]
            model: ModelArgs,
            #[command(flatten)]
            input: InputArgs,
        },
        /// Generate text with a GGUF chat model (SmolLM2 by default): one {"ids", "text"} JSON line per
        /// prompt on stdin; --chat wraps each prompt in the model's chat template.
        Generate {
            #[command(flatten)]
            model: llm::GenArgs,
            #[command(flatten)]
            sampling: llm::SamplingArgs,
        },
        /// The next-token logits of a GGUF model after each prompt on stdin: the K largest as {"ids", "logits"}.
        Logits {
            #[command(flatten)]
            model: llm::GenArgs,
            /// How many of the largest logits to print.
            #[arg(long, default_value_t = 10)]
            top: usize,
        },
        /// Chat with a GGUF chat model on the terminal, the answer streamed as it is generated.
        Chat {
            #[command(flatten)]
            model: llm::GenArgs,
            #[command(flatten)]
            sampling: llm::SamplingArgs,
            /// A system prompt (default: the model template's own).
            #[arg(long)]
            system: Option<String>,
        },
        /// Print the sentence embedding of each input text, one JSON line each, pooled as the model folder says
        /// (a sentence-transformers folder's modules.json and 1_Pooling; mean + L2 normalisation otherwise).
        Embed {
            #[command(flatten)]
            model: ModelArgs,
            #[command(flatten)]
            input: InputArgs,
            /// gpu (default; falls back to cpu with a warning when there is no adapter) or cpu.
            #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
            device: DeviceArg,
            /// Texts per forward pass.
            #[arg(long, default_value_t = 32)]
            batch: usize,
        },
        /// Fine-tune a classifier on labelled data (CSV with text,label columns, or JSONL).
        Train(Box<TrainArgs>),
        /// Accuracy, macro-F1 and the confusion matrix of an adapter on labelled data.
        Eval {
            #[command(flatten)]
            model: ModelArgs,
            /// The adapter folder (adapter_config.json, adapter_model.safetensors).
            #[arg(long)]
            adapter: PathBuf,
            /// Labelled data to evaluate on.
            #[arg(long)]
            data: PathBuf,
            #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
            device: DeviceArg,
            /// Skip unreadable rows (and say how many) instead of stopping.
            #[arg(long)]
            skip_bad_rows: bool,
            /// One JSON object instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Classify each input text (one per line on stdin, or --jsonl) and print the label and logits.
        Predict {
            #[command(flatten)]
            model: ModelArgs,
            #[command(flatten)]
            input: InputArgs,
            #[arg(long)]
            adapter: PathBuf,
            #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
            device: DeviceArg,
        },
        /// Merge models or adapters: averaging, task arithmetic, TIES, DARE, breadcrumbs, DELLA, SLERP,
        /// model stock, Fisher, delta-guided; or a mergekit recipe (--recipe).
        Merge(Box<merge::MergeArgs>),
        /// Estimate the diagonal Fisher of an adapter's parameters on local data (for --method fisher).
        Fisher(merge::FisherArgs),
        /// Fold a LoRA, BitFit or full adapter into its base model: a standalone BertForSequenceClassification folder.
        Fold(merge::FoldArgs),
        /// Rank source adapters by how well they should transfer to labelled target data, before
        /// training on them: LogME on each source-adapted model's features, LEEP and NCE on its
        /// predictions (label spaces may differ); best first, with a greedy ensemble of k sources.
        RankSources(Box<transfer::RankArgs>),
        /// Train a student (any --method) on the target's few labels and unlabelled texts against the
        /// soft predictions of source adapters: the best-ranked one (nearest) or all weighted by their
        /// scores (weighted).
        Distill(Box<transfer::DistillArgs>),
        /// Serve the web app on 127.0.0.1 with the default model and the example data.
        Serve {
            /// Port on 127.0.0.1 (0 picks a free one).
            #[arg(long, default_value_t = 8080)]
            port: u16,
            /// The web app folder (with the wasm in pkg/, built by scripts/build-wasm.sh).
            #[arg(long, default_value = "www")]
            www: PathBuf,
            /// The default model folder (as for the other commands).
            #[arg(long)]
            model: Option<PathBuf>,
            /// Folder of example data (*.jsonl); default: .cache/data/sentiment.
            #[arg(long)]
            data: Option<PathBuf>,
            /// The default chat model (GGUF; default: $LOCALTUNE_LLM, else SmolLM2 from scripts/fetch-assets.sh).
            #[arg(long)]
            chat_model: Option<PathBuf>,
            /// Also offer a tiny random model and a tiny random chat model (for tests and quick tries).
            #[arg(long)]
            tiny: bool,
            /// Serve without the default models (only --tiny).
            #[arg(long)]
            no_default_model: bool,
            /// Connections served at once (worker threads); more wait in a queue, then get 503.
            #[arg(long, default_value_t = 32)]
            workers: usize,
            /// Seconds a client has to send its request head, and may leave a response unread.
            #[arg(long, default_value_t = 10.0)]
            timeout: f64,
        },
        /// Write a tiny random Llama chat model (one GGUF file, Q8_0 linears) for tests.
        TinyLlama {
            #[arg(long)]
            out: PathBuf,
            #[arg(long, default_value_t = 1)]
            seed: u64,
        },
        /// Write a tiny random BERT (config.json, model.safetensors, tokenizer.json) for tests.
        TinyModel {
            #[arg(long)]
            out: PathBuf,
            #[arg(long, default_value_t = 1)]
            seed: u64,
        },
        /// Run a benchmark and print its figures.
        Bench {
            #[command(subcommand)]
            what: BenchWhat,
        },
    }

    #[derive(clap::Args)]
    struct ModelArgs {
        /// A Hugging Face BERT model folder (config.json, model.safetensors, tokenizer.json).
        /// Default: $LOCALTUNE_MODEL, else the all-MiniLM-L6-v2 that scripts/fetch-assets.sh fetched.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Longest input in tokens, [CLS] and [SEP] included; longer texts are truncated (at most 512).
        #[arg(long, default_value_t = 256)]
        max_len: usize,
    }

    #[derive(clap::Args)]
    struct TrainArgs {
        #[command(flatten)]
        model: ModelArgs,
        /// Training data: CSV (header with `text` and `label`), JSONL ({"text", "label"}) or a JSON array;
        /// for `--task causal-lm`, JSONL chats ({"messages": [{"role", "content"}, …]} or {"prompt", "completion"}).
        #[arg(long)]
        data: PathBuf,
        /// classify (a sentence classifier over a BERT-family model) | causal-lm (LoRA over a chat model's
        /// GGUF weights, 4-bit ones kept as they are: QLoRA; --model FILE.gguf; only the assistant's tokens train).
        #[arg(long, default_value = "classify")]
        task: String,
        /// lora | ia3 | adapter | parallel-adapter | prefix | mam (prefix + parallel adapter) | bitfit | full (every weight) | head
        /// | scalearn | scalearn-uniform | scalearn++ | scalearn-uniform++ (over --sources)
        #[arg(long, default_value = "lora")]
        method: String,
        /// ScaLearn: the frozen source adapters (folders) whose outputs it learns to scale; distill:
        /// the teachers.
        #[arg(long, num_args = 1..)]
        sources: Vec<PathBuf>,
        /// ScaLearn: dropout on the scales while training.
        #[arg(long, default_value_t = 0.3)]
        scalearn_dropout: f32,
        /// Where the adapter is written (adapter_config.json, adapter_model.safetensors, localtune.json).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Separate labelled data to evaluate on after training.
        #[arg(long)]
        eval: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        /// Peak learning rate (default per method: 1e-3 for lora, adapters and bitfit; 1e-2 for ia3, prefix, head; 5e-5 for full).
        #[arg(long)]
        lr: Option<f32>,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Micro-batches per optimiser step.
        #[arg(long, default_value_t = 1)]
        grad_accum: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fraction of --data held out for validation (seeded split).
        #[arg(long, default_value_t = 0.2)]
        valid_fraction: f64,
        /// Fraction of optimiser steps of linear warm-up (then linear decay to 0).
        #[arg(long, default_value_t = 0.0)]
        warmup: f32,
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f32,
        /// Global gradient-norm clipping; 0 turns it off.
        #[arg(long, default_value_t = 1.0)]
        max_grad_norm: f32,
        /// Classifier input: the BERT pooler over [CLS] (as BertForSequenceClassification) or the mean of tokens.
        #[arg(long, default_value = "pooler")]
        head: String,
        /// Turn off the model's hidden and attention dropout during training.
        #[arg(long)]
        no_dropout: bool,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        r: usize,
        /// LoRA alpha (scaling alpha / r).
        #[arg(long, default_value_t = 16.0)]
        alpha: f32,
        /// LoRA: scale by alpha / sqrt(r) (rsLoRA).
        #[arg(long)]
        rslora: bool,
        /// LoRA targets, comma-separated: query,key,value,attn-out,intermediate,output.
        #[arg(long, default_value = "query,value")]
        targets: String,
        #[arg(long, default_value_t = 0.0)]
        lora_dropout: f32,
        /// Bottleneck adapters: hidden size / bottleneck size.
        #[arg(long, default_value_t = 16)]
        reduction_factor: usize,
        /// Bottleneck adapters: relu | gelu | tanh.
        #[arg(long, default_value = "relu")]
        adapter_activation: String,
        /// Bottleneck adapters: output scale (1 for Houlsby; He et al. use 4 for the parallel adapter).
        #[arg(long)]
        adapter_scaling: Option<f32>,
        /// Bottleneck adapters: houlsby (after attention and after the FFN) | pfeiffer (after the FFN only).
        #[arg(long, default_value = "houlsby")]
        adapter_placement: String,
        /// Prefix tuning: learned key/value rows per layer.
        #[arg(long, default_value_t = 10)]
        prefix_length: usize,
        /// Write a checkpoint (adapter, optimiser state, position) every N optimiser steps into OUT/checkpoint.
        #[arg(long)]
        save_every: Option<u64>,
        /// --task causal-lm over a Hugging Face Llama folder: keep its linears as none (f32), nf4 or
        /// nf4-double (QLoRA's base: bitsandbytes' NF4, the absmax quantised again).
        #[arg(long, default_value = "none")]
        quantize: localtune::model::llama_hf::Quantize,
        /// Continue from a checkpoint folder (same data and settings).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Skip unreadable rows (and say how many) instead of stopping.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Print a JSON line per epoch instead of the progress bar.
        #[arg(long)]
        json: bool,
    }

    #[derive(clap::Args)]
    struct InputArgs {
        /// Read one JSON value per line: a string, or an object with a "text" field (texts may then hold newlines).
        #[arg(long)]
        jsonl: bool,
    }

    #[derive(Subcommand)]
    enum BenchWhat {
        /// GFLOP/s of the naive and tiled GPU matmul kernels and of the CPU backend.
        Matmul {
            /// One JSON object per line.
            #[arg(long)]
            json: bool,
            /// Seconds spent measuring each configuration (after a warm-up call).
            #[arg(long, default_value_t = 1.0)]
            budget: f64,
            /// Only the CPU backend.
            #[arg(long)]
            cpu_only: bool,
        },
        /// Sentences/s of the embedding forward (batch 1 × 32 and batch 8 × 64 tokens) on each
        /// device, and the GPU bytes taken by weights and by activations.
        Forward {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long)]
            json: bool,
            #[arg(long, default_value_t = 2.0)]
            budget: f64,
            /// Only the CPU device.
            #[arg(long)]
            cpu_only: bool,
        },
        /// GB/s of parameters merged (whole model folders, 2 and 4 inputs, linear and TIES) per device,
        /// and the peak host memory of each merge.
        Merge {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long)]
            json: bool,
            /// Only the CPU device.
            #[arg(long)]
            cpu_only: bool,
        },
        /// Examples/s and peak bytes of training steps (batch 16 × 64 tokens) for each method, per device.
        Train {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long)]
            json: bool,
            #[arg(long, default_value_t = 3.0)]
            budget: f64,
            /// Only the CPU device.
            #[arg(long)]
            cpu_only: bool,
            /// Comma-separated methods (default: all).
            #[arg(long)]
            methods: Option<String>,
            #[arg(long, default_value_t = 16)]
            batch: usize,
            #[arg(long, default_value_t = 64)]
            tokens: usize,
            /// Source adapters for ScaLearn methods; `scalearn@N` in --methods uses the first N.
            #[arg(long, num_args = 1..)]
            sources: Vec<PathBuf>,
        },
    }

    #[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
    pub enum DeviceArg {
        Gpu,
        Cpu,
    }

    pub fn main() {
        // The CPU matmul's thread pool reads this once; default it to every available core.
        if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
            let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
        }
        let cli = Cli::parse();
        if let Err(e) = run(cli) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }

    fn run(cli: Cli) -> Result<()> {
        match cli.command {
            Command::Info { json } => info(json),
            Command::Describe { model } => describe(&model),
            Command::Tokenize { model, input } => match &model.model {
                Some(p) if p.extension().is_some_and(|e| e == "gguf") || llm::is_llama_folder(p) => {
                    llm::tokenize(p, input.jsonl)
                }
                _ => tokenize(&model, &input),
            },
            Command::Generate { model, sampling } => llm::generate_cmd(&model, &sampling),
            Command::Logits { model, top } => llm::logits_cmd(&model, top),
            Command::Chat { model, sampling, system } => llm::chat_cmd(&model, &sampling, system),
            Command::Embed { model, input, device, batch } => embed(&model, &input, device, batch),
            Command::Train(a) => train::train(&a),
            Command::Merge(a) => merge::merge(&a),
            Command::Fold(a) => merge::fold(&a),
            Command::Fisher(a) => merge::fisher(&a),
            Command::RankSources(a) => transfer::rank_sources(&a),
            Command::Distill(a) => transfer::distill(&a),
            Command::Serve { port, www, model, chat_model, data, tiny, no_default_model, workers, timeout } => {
                if !(timeout.is_finite() && (0.1..=3600.0).contains(&timeout)) {
                    return Err(Error::invalid(format!("--timeout {timeout}: give seconds from 0.1 to 3600")));
                }
                if !(1..=1024).contains(&workers) {
                    return Err(Error::invalid(format!("--workers {workers}: give 1 to 1024")));
                }
                let limits = localtune::serve::Limits {
                    workers,
                    queue: 4 * workers,
                    timeout: std::time::Duration::from_secs_f64(timeout),
                    ..Default::default()
                };
                serve(port, Offer { www, model, chat_model, data, tiny, no_default: no_default_model }, limits)
            }
            Command::TinyLlama { out, seed } => write_tiny_llama(&out, seed),
            Command::TinyModel { out, seed } => write_tiny(&out, seed),
            Command::Eval { model, adapter, data, device, skip_bad_rows, json } => {
                train::eval(&model, &adapter, &data, device, skip_bad_rows, json)
            }
            Command::Predict { model, input, adapter, device } => train::predict(&model, &input, &adapter, device),
            Command::Bench { what } => match what {
                BenchWhat::Matmul { json, budget, cpu_only } => bench_matmul(json, budget, cpu_only),
                BenchWhat::Merge { model, json, cpu_only } => merge::bench(&model.model, json, cpu_only),
                BenchWhat::Forward { model, json, budget, cpu_only } => bench_forward(&model, json, budget, cpu_only),
                BenchWhat::Train { model, json, budget, cpu_only, methods, batch, tokens, sources } => {
                    bench_train(&model, json, budget, cpu_only, methods, batch, tokens, &sources)
                }
            },
        }
    }

    /// The GPU if one opens, else the CPU with a warning on stderr (or an error when `required`).
    #[allow(dead_code)]
    pub fn open_device(want: DeviceArg) -> Result<Device> {
        match want {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Gpu => match futures::executor::block_on(Device::gpu()) {
                Ok(d) => Ok(d),
                Err(e) => {
                    eprintln!("warning: {e}\nwarning: falling back to the CPU device");
                    Ok(Device::Cpu)
                }
            },
        }
    }

    /// The model folder: --model, $LOCALTUNE_MODEL, ./.cache/…, or the fetch script's folder in the source tree.
    pub fn model_dir(arg: &Option<PathBuf>) -> Result<PathBuf> {
        if let Some(p) = arg {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("LOCALTUNE_MODEL") {
            return Ok(PathBuf::from(p));
        }
        let rel = Path::new(".cache/models/all-MiniLM-L6-v2");
        let candidates = [rel.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)];
        candidates.into_iter().find(|p| p.join("config.json").exists()).ok_or_else(|| {
            Error::invalid("no model folder: pass --model DIR, set LOCALTUNE_MODEL, or run scripts/fetch-assets.sh")
        })
    }

    fn check_max_len(max_len: usize) -> Result<()> {
        if !(2..=512).contains(&max_len) {
            return Err(Error::invalid(format!("--max-len {max_len}: must be between 2 and 512")));
        }
        Ok(())
    }

    /// Reads the texts on stdin: one per line, or with --jsonl one JSON string or {"text": …} per line.
    /// Calls `f` with chunks of at most `chunk` texts, in order.
    pub fn for_each_input(jsonl: bool, chunk: usize, mut f: impl FnMut(&[String]) -> Result<()>) -> Result<()> {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        let mut buf = Vec::new();
        let mut texts = Vec::new();
        let mut line_no = 0usize;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(|e| Error::file("<stdin>", e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            let line = std::str::from_utf8(&buf)
                .map_err(|e| Error::file(format!("<stdin> line {line_no}"), format!("invalid UTF-8 ({e})")))?;
            let text = if jsonl {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::file(format!("<stdin> line {line_no}"), format!("not JSON: {e}")))?;
                match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Object(o) => match o.get("text") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        _ => {
                            return Err(Error::file(
                                format!("<stdin> line {line_no}"),
                                "object without a string \"text\" field",
                            ))
                        }
                    },
                    _ => {
                        return Err(Error::file(
                            format!("<stdin> line {line_no}"),
                            "expected a JSON string or an object with \"text\"",
                        ))
                    }
                }
            } else {
                line.to_string()
            };
            texts.push(text);
            if texts.len() == chunk {
                f(&texts)?;
                texts.clear();
            }
        }
        if !texts.is_empty() {
            f(&texts)?;
        }
        Ok(())
    }

    fn tokenize(m: &ModelArgs, input: &InputArgs) -> Result<()> {
        check_max_len(m.max_len)?;
        let dir = model_dir(&m.model)?;
        let tok = localtune::model::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let mut out = std::io::stdout().lock();
        let mut truncated = 0;
        for_each_input(input.jsonl, 256, |texts| {
            for t in texts {
                let e = tok.encode(t, m.max_len);
                truncated += e.truncated as usize;
                let line = serde_json::json!({ "input_ids": e.ids, "truncated": e.truncated });
                writeln!(out, "{line}").map_err(|e| Error::file("<stdout>", e))?;
            }
            Ok(())
        })?;
        if truncated > 0 {
            eprintln!("{truncated} text(s) were truncated to {} tokens", m.max_len);
        }
        Ok(())
    }

    fn embed(m: &ModelArgs, input: &InputArgs, device: DeviceArg, batch: usize) -> Result<()> {
        check_max_len(m.max_len)?;
        if batch == 0 {
            return Err(Error::invalid("--batch must be at least 1"));
        }
        let dir = model_dir(&m.model)?;
        let dev = open_device(device)?;
        let model = Model::load(&dir, &dev)?;
        let mut out = std::io::stdout().lock();
        let mut truncated = 0;
        for_each_input(input.jsonl, batch, |texts| {
            let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
            let (embs, t) = futures::executor::block_on(model.embed(&refs, m.max_len, batch))?;
            truncated += t;
            for e in embs {
                // Serialising the Vec<f32> itself prints each value's shortest f32 form.
                let values = serde_json::to_string(&e).map_err(|e| Error::invalid(e.to_string()))?;
                writeln!(out, "{{\"embedding\":{values}}}").map_err(|e| Error::file("<stdout>", e))?;
            }
            Ok(())
        })?;
        if truncated > 0 {
            eprintln!("{truncated} text(s) were truncated to {} tokens", m.max_len);
        }
        Ok(())
    }

    /// The CPU device, and the GPU unless `cpu_only` or none opens (with a warning).
    fn bench_devices(cpu_only: bool) -> Vec<Device> {
        let mut devices = vec![Device::Cpu];
        if !cpu_only {
            match futures::executor::block_on(Device::gpu()) {
                Ok(g) => devices.push(g),
                Err(e) => eprintln!("warning: {e}\nwarning: measuring the CPU device only"),
            }
        }
        devices
    }

    fn bench_forward(m: &ModelArgs, json: bool, budget: f64, cpu_only: bool) -> Result<()> {
        eprintln!("cpu: {}", bench::cpu_description());
        let dir = model_dir(&m.model)?;
        let devices = bench_devices(cpu_only);
        if !json {
            println!(
                "{:<50} {:>5} {:>6} {:>12} {:>10} {:>12} {:>14}",
                "device", "batch", "tokens", "sentences/s", "ms/batch", "weights MiB", "activations MiB"
            );
        }
        for dev in devices {
            let model = Model::load(&dir, &dev)?;
            for r in bench::forward(&model, &[(1, 32), (8, 64)], budget)? {
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap());
                } else {
                    let mib =
                        |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64));
                    println!(
                        "{:<50} {:>5} {:>6} {:>12.2} {:>10.1} {:>12} {:>14}",
                        r.device,
                        r.batch,
                        r.tokens,
                        r.sentences_per_s,
                        r.ms_per_batch,
                        mib(r.weight_bytes),
                        mib(r.activation_bytes)
                    );
                }
            }
        }
        Ok(())
    }

    /// Counts heap bytes so `bench train` can report the CPU device's peak memory.
    pub struct CountingAlloc;
    static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            use std::sync::atomic::Ordering::Relaxed;
            let p = std::alloc::System.alloc(layout);
            if !p.is_null() {
                let now = ALLOCATED.fetch_add(layout.size(), Relaxed) + layout.size();
                PEAK.fetch_max(now, Relaxed);
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            std::alloc::System.dealloc(ptr, layout);
            ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    struct HeapProbe(std::sync::atomic::AtomicUsize);

    impl bench::MemoryProbe for HeapProbe {
        fn reset(&self) {
            use std::sync::atomic::Ordering::Relaxed;
            let now = ALLOCATED.load(Relaxed);
            self.0.store(now, Relaxed);
            PEAK.store(now, Relaxed);
        }
        fn peak(&self) -> u64 {
            use std::sync::atomic::Ordering::Relaxed;
            PEAK.load(Relaxed).saturating_sub(self.0.load(Relaxed)) as u64
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bench_train(
        m: &ModelArgs,
        json: bool,
        budget: f64,
        cpu_only: bool,
        methods: Option<String>,
        batch: usize,
        tokens: usize,
        sources: &[PathBuf],
    ) -> Result<()> {
        let dir = model_dir(&m.model)?;
        let names = methods.unwrap_or_else(|| "lora,ia3,adapter,parallel-adapter,prefix,mam,bitfit,head".into());
        let list: Vec<localtune::peft::Method> = names
            .split(',')
            .map(|n| {
                let (name, count) = match n.trim().split_once('@') {
                    Some((name, c)) => {
                        (name, c.parse::<usize>().map_err(|_| Error::invalid(format!("`{n}`: not NAME@COUNT")))?)
                    }
                    None => (n.trim(), sources.len()),
                };
                let mut a = TrainArgs::parse_defaults();
                a.method = name.to_string();
                let mut method = train::method_of(&a)?;
                if let Some(c) = method.scalearn_mut() {
                    let paths = sources.get(..count).ok_or_else(|| {
                        Error::invalid(format!("`{n}` needs {count} sources, --sources gives {}", sources.len()))
                    })?;
                    *c = transfer::with_sources(c.clone(), paths, &dir)?;
                }
                Ok(method)
            })
            .collect::<Result<_>>()?;
        eprintln!("cpu: {}", bench::cpu_description());
        let devices = bench_devices(cpu_only);
        if !json {
            println!(
                "{:<18} {:<44} {:>10} {:>9} {:>11} {:>10}",
                "method", "device", "examples/s", "ms/step", "trainable", "peak MiB"
            );
        }
        for dev in devices {
            let model = std::rc::Rc::new(Model::load(&dir, &dev)?);
            let heap = HeapProbe(std::sync::atomic::AtomicUsize::new(0));
            let gpu_probe = match &dev {
                Device::Gpu(g) => Some(bench::GpuProbe(g.clone())),
                Device::Cpu => None,
            };
            let probe: &dyn bench::MemoryProbe = match &gpu_probe {
                Some(p) => p,
                None => &heap,
            };
            for r in bench::train(&model, &list, batch, tokens, budget, Some(probe))? {
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap());
                } else {
                    let mib = r.peak_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64));
                    println!(
                        "{:<18} {:<44} {:>10.2} {:>9.1} {:>11} {:>10}",
                        r.method, r.device, r.examples_per_s, r.ms_per_step, r.trainable, mib
                    );
                }
            }
        }
        Ok(())
    }

    impl TrainArgs {
        /// The training defaults, as if given no options (for `bench train`).
        fn parse_defaults() -> TrainArgs {
            #[derive(Parser)]
            struct Wrap {
                #[command(flatten)]
                a: TrainArgs,
            }
            Wrap::parse_from(["x", "--data", "-", "--out", "-"]).a
        }
    }

    fn write_tiny(out: &Path, seed: u64) -> Result<()> {
        let f = localtune::model::tiny::tiny_files(seed)?;
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
        for (name, bytes) in [
            ("config.json", f.config_json.as_bytes()),
            ("model.safetensors", &f.safetensors[..]),
            ("tokenizer.json", f.tokenizer_json.as_bytes()),
        ] {
            localtune::peft::format::write_atomic(&out.join(name), bytes)?;
        }
        Ok(())
    }

    fn write_tiny_llama(out: &Path, seed: u64) -> Result<()> {
        localtune::peft::format::write_atomic(out, &localtune::model::tiny_llama::tiny_llama_gguf(seed)?)
    }

    /// What `serve` offers: the app folder, the models and the example data.
    struct Offer {
        www: PathBuf,
        model: Option<PathBuf>,
        chat_model: Option<PathBuf>,
        data: Option<PathBuf>,
        tiny: bool,
        no_default: bool,
    }

    fn serve(port: u16, offer: Offer, limits: localtune::serve::Limits) -> Result<()> {
        use localtune::serve;
        let Offer { www, model, chat_model, data, tiny, no_default } = offer;
        if !www.join("index.html").exists() {
            return Err(Error::file(&www, "no index.html here: pass --www with the web app folder"));
        }
        if !www.join("pkg/localtune_bg.wasm").exists() {
            return Err(Error::file(www.join("pkg"), "the wasm is not built: run scripts/build-wasm.sh"));
        }
        let mut models = vec![];
        if !no_default {
            let dir = model_dir(&model)?;
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string();
            models.push(("default".to_string(), name, dir));
        }
        if tiny {
            let dir = std::env::temp_dir().join(format!("localtune-tiny-{}", std::process::id()));
            write_tiny(&dir, 1)?;
            models.push(("tiny".to_string(), "tiny random BERT (for tests)".to_string(), dir));
        }
        let mut llms = vec![];
        if !no_default {
            // The chat model is optional: without SmolLM2 fetched, the page offers the classifier only.
            match llm::llm_path(&chat_model) {
                Ok(p) if p.is_file() => {
                    let name = p.file_stem().and_then(|n| n.to_str()).unwrap_or("chat model").to_string();
                    llms.push(("default".to_string(), name, p));
                }
                Ok(p) => return Err(Error::file(&p, "no such GGUF file (--chat-model)")),
                Err(e) if chat_model.is_some() => return Err(e),
                Err(_) => {}
            }
        }
        if tiny {
            let file = std::env::temp_dir().join(format!("localtune-tiny-llama-{}.gguf", std::process::id()));
            write_tiny_llama(&file, 1)?;
            llms.push(("tiny".to_string(), "tiny random Llama (for tests)".to_string(), file));
        }
        let data_dir = data.unwrap_or_else(|| {
            let rel = PathBuf::from(".cache/data/sentiment");
            if rel.exists() {
                rel
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/data/sentiment")
            }
        });
        let mut files: Vec<PathBuf> = std::fs::read_dir(&data_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jsonl" || x == "csv"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let (listener, url) = serve::bind(port)?;
        let mut hello = format!("localtune is serving {} at {url}\n", www.display());
        hello += &format!(
            "models: {}\n",
            models.iter().map(|(id, n, _)| format!("{id} ({n})")).collect::<Vec<_>>().join(", ")
        );
        hello +=
            &format!("open {url} in a browser with WebGPU (Chrome/Edge 113+, or any browser on the CPU fallback)\n");
        if !llms.is_empty() {
            let names: Vec<String> = llms.iter().map(|(id, n, _)| format!("{id} ({n})")).collect();
            hello += &format!("chat models: {}\n", names.join(", "));
        }
        // Written once and never fatal: a server whose stdout was closed (piped to head) goes on.
        use std::io::Write as _;
        let mut out = std::io::stdout();
        let _ = out.write_all(hello.as_bytes()).and_then(|_| out.flush());
        serve::serve(listener, serve::Site { www, models, data: files, llms }, limits)
    }

    fn describe(model: &Option<PathBuf>) -> Result<()> {
        let dir = model_dir(model)?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let (config, desc) = localtune::model::arch::from_config_json(&text, &path.display().to_string())?;
        let optional = |name: &str| -> Result<Option<String>> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::file(dir.join(name), e)),
            }
        };
        let pooling = localtune::model::Pooling::from_folder(&optional, &dir.display().to_string())?;
        let v = serde_json::json!({ "config": config, "layer": desc, "pooling": pooling });
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        Ok(())
    }

    fn info(json: bool) -> Result<()> {
        let gpu = futures::executor::block_on(localtune::gpu::Gpu::new());
        let threads = localtune::cpu::threads();
        if json {
            let v = match &gpu {
                Ok(g) => serde_json::json!({ "gpu": g.info(), "cpu": { "threads": threads } }),
                Err(e) => {
                    serde_json::json!({ "gpu": null, "gpu_error": e.to_string(), "cpu": { "threads": threads } })
                }
            };
            println!("{v}");
            return Ok(());
        }
        match &gpu {
            Ok(g) => {
                let i = g.info();
                println!("GPU adapter:      {}", i.name);
                println!("  backend:        {}", i.backend);
                println!("  device type:    {}", i.device_type);
                println!("  driver:         {} {}", i.driver, i.driver_info);
                println!("  max buffer:                  {} MiB", i.max_buffer_size >> 20);
                println!("  max storage binding:         {} MiB", i.max_storage_buffer_binding_size >> 20);
                println!("  storage buffers per stage:   {}", i.max_storage_buffers_per_shader_stage);
                println!("  workgroup memory:            {} KiB", i.max_compute_workgroup_storage_size >> 10);
                println!("  invocations per workgroup:   {}", i.max_compute_invocations_per_workgroup);
                println!("  workgroups per dimension:    {}", i.max_compute_workgroups_per_dimension);
                println!(
                    "  shader-f16: {}  subgroups: {}  timestamp-query: {}",
                    i.shader_f16, i.subgroups, i.timestamp_query
                );
            }
            Err(e) => println!("GPU adapter:      none ({e})"),
        }
        println!("CPU backend:      {threads} threads");
        Ok(())
    }

    fn bench_matmul(json: bool, budget: f64, cpu_only: bool) -> Result<()> {
        eprintln!("cpu: {}", bench::cpu_description());
        let gpu = if cpu_only {
            None
        } else {
            match futures::executor::block_on(Device::gpu()) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("warning: {e}\nwarning: measuring the CPU backend only");
                    None
                }
            }
        };
        if !json {
            if let Some(g) = &gpu {
                println!("GPU: {}", g.describe());
            }
            println!("CPU: {}", Device::Cpu.describe());
            println!("{:>6} {:>6} {:>6}  {:>6}  {:>10}  {:>10}", "m", "n", "k", "kernel", "GFLOP/s", "ms/call");
        }
        let results = bench::matmul(gpu.as_ref(), bench::MATMUL_SHAPES, budget, |r| {
            if json {
                println!("{}", serde_json::to_string(r).unwrap());
            } else {
                println!("{:>6} {:>6} {:>6}  {:>6}  {:>10.2}  {:>10.2}", r.m, r.n, r.k, r.kernel, r.gflops, r.ms);
            }
        })?;
        if !json && gpu.is_some() {
            for &(m, n, k) in bench::MATMUL_SHAPES {
                let g = |kern: &str| {
                    results
                        .iter()
                        .find(|r| r.kernel == kern && (r.m, r.n, r.k) == (m, n, k))
                        .map(|r| r.gflops)
                        .unwrap_or(f64::NAN)
                };
                println!(
                    "{m}x{n}x{k}: tiled/naive {:.1}x, tiled/cpu {:.2}x",
                    g("tiled") / g("naive"),
                    g("tiled") / g("cpu")
                );
            }
        }
        Ok(())
    }

    mod train {
        use super::*;
        use localtune::peft::format::AdapterFiles;
        use localtune::peft::{Method, MethodOptions};
        use localtune::train::trainer::{metrics_from_logits, predict_logits, CheckpointFiles, Checkpointer};
        use localtune::train::{Dataset, Examples, RunSettings, Trainer};
        use std::time::Instant;

        /// The run settings of the command line (the same type and checks as the web app's).
        pub fn settings_of(a: &TrainArgs) -> RunSettings {
            RunSettings {
                method: MethodOptions {
                    method: a.method.clone(),
                    r: a.r,
                    alpha: a.alpha,
                    rslora: a.rslora,
                    targets: a.targets.split(',').map(|t| t.trim().to_string()).collect(),
                    lora_dropout: a.lora_dropout,
                    reduction_factor: a.reduction_factor,
                    adapter_activation: a.adapter_activation.clone(),
                    adapter_scaling: a.adapter_scaling,
                    adapter_placement: a.adapter_placement.clone(),
                    prefix_length: a.prefix_length,
                    scalearn_dropout: a.scalearn_dropout,
                },
                epochs: a.epochs,
                batch: a.batch,
                grad_accum: a.grad_accum,
                lr: a.lr,
                max_len: a.model.max_len,
                seed: a.seed,
                valid_fraction: a.valid_fraction,
                head: a.head.clone(),
                dropout: !a.no_dropout,
                warmup: a.warmup,
                weight_decay: a.weight_decay,
                max_grad_norm: a.max_grad_norm,
            }
        }

        pub fn method_of(a: &TrainArgs) -> Result<Method> {
            settings_of(a).method.build()
        }

        pub fn load_data(path: &Path, skip: bool) -> Result<Dataset> {
            let ds = Dataset::load(path, skip)?;
            if !ds.skipped.is_empty() {
                eprintln!(
                    "{}: skipped {} unreadable row(s) (first: line {}: {})",
                    path.display(),
                    ds.skipped.len(),
                    ds.skipped[0].line,
                    ds.skipped[0].reason
                );
            }
            Ok(ds)
        }

        fn fmt_secs(s: f64) -> String {
            let s = s.max(0.0) as u64;
            format!("{:02}:{:02}", s / 60, s % 60)
        }

        pub fn train(a: &TrainArgs) -> Result<()> {
            if a.out.is_file() {
                return Err(Error::file(&a.out, "is a file; --out is the adapter folder to write"));
            }
            // Checked before the lock and the model load (the trainer checks it again, for every caller).
            if let Some(why) = a.lr.and_then(localtune::train::optim::lr_problem) {
                return Err(Error::invalid(format!("--lr {}: {why}", a.lr.unwrap_or_default())));
            }
            // One run per output folder: a second one into the same --out is refused while this one lives.
            let _lock = localtune::peft::format::OutputLock::take(&a.out)?;
            match a.task.as_str() {
                "classify" => train_with(a, None),
                "causal-lm" => {
                    if a.method != "lora" {
                        return Err(Error::invalid(format!(
                            "--task causal-lm trains LoRA; --method {} is for classify",
                            a.method
                        )));
                    }
                    // The classifier's default targets mean "every linear" here.
                    let targets = if a.targets == "query,value" { None } else { Some(a.targets.as_str()) };
                    let opts = super::llm::CausalTrainArgs {
                        model: a.model.model.clone(),
                        quantize: a.quantize,
                        data: a.data.clone(),
                        out: a.out.clone(),
                        device: a.device,
                        eval: a.eval.clone(),
                        max_len: a.model.max_len,
                        epochs: a.epochs,
                        batch: a.batch,
                        seed: a.seed,
                        valid_fraction: a.valid_fraction,
                        r: a.r,
                        alpha: a.alpha,
                        rslora: a.rslora,
                        targets,
                        optim: localtune::train::OptimConfig {
                            lr: a.lr.unwrap_or(2e-4),
                            weight_decay: a.weight_decay,
                            max_grad_norm: a.max_grad_norm,
                            warmup_ratio: a.warmup,
                            ..Default::default()
                        },
                        json: a.json,
                        save_every: a.save_every,
                        resume: a.resume.clone(),
                    };
                    super::llm::train_causal(&opts)
                }
                t => Err(Error::invalid(format!("--task {t}: the tasks are classify and causal-lm"))),
            }
        }

        /// Extra training texts and a target distribution (n × K) for every training example, given
        /// the model, the labelled training examples and the labels: distillation's teachers.
        pub type SoftTargets<'a> = &'a dyn Fn(&Model, &Examples, &[String]) -> Result<(Vec<String>, Vec<f32>)>;

        /// `train`, with the labels replaced by soft targets when `soft` is given.
        pub fn train_with(a: &TrainArgs, soft: Option<SoftTargets>) -> Result<()> {
            check_max_len(a.model.max_len)?;
            let mut config = settings_of(a).train_config()?;
            let dir = model_dir(&a.model.model)?;
            if let Some(c) = config.method.scalearn_mut() {
                if a.resume.is_none() {
                    *c = super::transfer::with_sources(c.clone(), &a.sources, &dir)?;
                }
            }
            let dev = open_device(a.device)?;
            let model = std::rc::Rc::new(Model::load(&dir, &dev)?);
            let data = load_data(&a.data, a.skip_bad_rows)?;
            let (train_ds, valid_ds) = data.split(a.valid_fraction, a.seed)?;
            let labels = data.training_labels(&train_ds, &valid_ds)?;
            // The evaluation file is read and checked now, not after the training it would follow.
            let eval_ds = match &a.eval {
                Some(p) => {
                    let ds = load_data(p, a.skip_bad_rows)?;
                    ds.label_ids(&labels)?;
                    Some((p, ds))
                }
                None => None,
            };
            let mut train = Examples::from_dataset(&train_ds, &labels)?;
            let valid = Examples::from_dataset(&valid_ds, &labels)?;
            let targets = match soft {
                Some(f) => {
                    let (extra, targets) = f(&model, &train, &labels)?;
                    let k = labels.len();
                    let n_labelled = train.len();
                    train.texts.extend(extra);
                    // An unlabelled text's label is its target's argmax (only the targets train).
                    for i in n_labelled..train.texts.len() {
                        let row = &targets[i * k..(i + 1) * k];
                        train.labels.push(localtune::train::metrics::argmax_rows(row, k)[0]);
                    }
                    Some(targets)
                }
                None => None,
            };
            let mut trainer = match &a.resume {
                Some(ck) => {
                    let t = Trainer::resume(model.clone(), &CheckpointFiles::load(ck)?, train, valid, Some(&config))?;
                    eprintln!(
                        "resuming {} at epoch {}, step {} of {}",
                        ck.display(),
                        t.state.epoch + 1,
                        t.state.micro_step,
                        t.total_micro_steps()
                    );
                    t
                }
                None => Trainer::new(model.clone(), config, labels, train, valid)?,
            };
            if let Some(t) = targets {
                trainer.set_soft_targets(t)?;
            }
            let base_name = dir.display().to_string();
            eprintln!(
                "{} on {}: {} trainable values, {} training / {} validation examples, labels {:?}",
                trainer.config.method.name(),
                dev.describe(),
                trainer.params.count(),
                trainer.train.len(),
                trainer.valid.len(),
                trainer.labels
            );
            let total = trainer.total_micro_steps();
            let start = Instant::now();
            let first_step = trainer.state.micro_step;
            let mut seen = 0usize;
            let checkpoint_dir = a.out.join("checkpoint");
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut ck = Checkpointer::new(checkpoint_dir, a.save_every, trainer.opt.step);
            while !trainer.finished() {
                let before = trainer.state.micro_step;
                let batch = trainer
                    .config
                    .batch_size
                    .min(trainer.train.len() - trainer.state.batch_in_epoch * trainer.config.batch_size);
                let out = futures::executor::block_on(trainer.step()).map_err(|e| ck.failed(e))?;
                ck.step_ok()?;
                seen += batch;
                let el = start.elapsed().as_secs_f64();
                let done = out.micro_step - first_step;
                let eta = el / done as f64 * (total - out.micro_step) as f64;
                if !a.json && (tty || out.micro_step % 10 == 0 || out.epoch_end.is_some()) {
                    let width = 24;
                    let filled = (out.micro_step as usize * width) / total as usize;
                    let bar: String = (0..width).map(|i| if i < filled { '#' } else { '.' }).collect();
                    let line = format!(
                        "epoch {}/{} [{bar}] {}/{total} loss {:.4} lr {:.2e} {:.1} ex/s ETA {}",
                        out.epoch + 1,
                        trainer.config.epochs,
                        out.micro_step,
                        out.loss,
                        out.lr,
                        seen as f64 / el,
                        fmt_secs(eta)
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
                let _ = before;
                if let Some(rec) = &out.epoch_end {
                    if tty && !a.json {
                        eprintln!();
                    }
                    if a.json {
                        println!("{}", serde_json::to_string(rec).unwrap());
                    } else {
                        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
                        println!(
                            "epoch {}: train loss {:.4}, validation loss {}, accuracy {}, macro-F1 {}",
                            rec.epoch,
                            rec.train_loss,
                            f(rec.valid_loss),
                            f(rec.valid_accuracy),
                            f(rec.valid_macro_f1)
                        );
                    }
                }
                if ck.due(trainer.opt.step, trainer.finished()) {
                    ck.hold(futures::executor::block_on(trainer.checkpoint_files(&base_name))?);
                }
            }
            let adapter = futures::executor::block_on(trainer.adapter(&base_name))?;
            adapter.save(&a.out, &model.encoder.desc)?;
            eprintln!("adapter written to {} ({:.1} s)", a.out.display(), start.elapsed().as_secs_f64());
            if let Some((eval_path, ds)) = &eval_ds {
                let ex = Examples::from_dataset(ds, &trainer.labels)?;
                let m = futures::executor::block_on(trainer.evaluate(&ex, 64))?;
                if a.json {
                    println!("{}", serde_json::json!({"eval": eval_path.display().to_string(), "metrics": m}));
                } else {
                    println!(
                        "{}: accuracy {:.4}, macro-F1 {:.4}, n {}",
                        eval_path.display(),
                        m.accuracy,
                        m.macro_f1,
                        m.n
                    );
                }
            }
            Ok(())
        }

        fn load_adapter(
            model: &ModelArgs,
            adapter: &Path,
            device: DeviceArg,
        ) -> Result<(Model, AdapterFiles, localtune::peft::Adapted)> {
            let dir = model_dir(&model.model)?;
            let dev = open_device(device)?;
            let m = Model::load(&dir, &dev)?;
            let files = AdapterFiles::load(adapter)?;
            let params = files.to_adapted(&m.encoder)?;
            Ok((m, files, params))
        }

        pub fn eval(
            model: &ModelArgs,
            adapter: &Path,
            data: &Path,
            device: DeviceArg,
            skip: bool,
            json: bool,
        ) -> Result<()> {
            check_max_len(model.max_len)?;
            let (m, files, params) = load_adapter(model, adapter, device)?;
            let ds = load_data(data, skip)?;
            let ex = Examples::from_dataset(&ds, &files.labels)?;
            let texts: Vec<&str> = ex.texts.iter().map(|s| s.as_str()).collect();
            let logits =
                futures::executor::block_on(predict_logits(&m, &params, files.head, &texts, model.max_len, 64))?;
            let met = metrics_from_logits(&logits, &ex.labels, files.labels.len());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"accuracy": met.accuracy, "macro_f1": met.macro_f1, "n": met.n, "loss": met.loss, "labels": files.labels, "confusion": met.confusion})
                );
            } else {
                println!(
                    "n {}  accuracy {:.4}  macro-F1 {:.4}  loss {:.4}",
                    met.n,
                    met.accuracy,
                    met.macro_f1,
                    met.loss.unwrap_or(f64::NAN)
                );
                let w = files.labels.iter().map(|l| l.len()).max().unwrap_or(4).max(6);
                println!("confusion (rows: true, columns: predicted)");
                print!("{:w$}", "");
                for l in &files.labels {
                    print!(" {l:>w$}");
                }
                println!();
                for (l, row) in files.labels.iter().zip(&met.confusion) {
                    print!("{l:>w$}");
                    for c in row {
                        print!(" {c:>w$}");
                    }
                    println!();
                }
            }
            Ok(())
        }

        pub fn predict(model: &ModelArgs, input: &InputArgs, adapter: &Path, device: DeviceArg) -> Result<()> {
            check_max_len(model.max_len)?;
            let (m, files, params) = load_adapter(model, adapter, device)?;
            let k = files.labels.len();
            let mut out = std::io::stdout().lock();
            for_each_input(input.jsonl, 64, |texts| {
                let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
                let logits =
                    futures::executor::block_on(predict_logits(&m, &params, files.head, &refs, model.max_len, 64))?;
                for row in logits.chunks_exact(k) {
                    let best = localtune::train::metrics::argmax_rows(row, k)[0] as usize;
                    let line = serde_json::json!({"label": files.labels[best], "logits": row.iter().map(|&x| serde_json::Number::from_f64(x as f64)).collect::<Vec<_>>()});
                    writeln!(out, "{line}").map_err(|e| Error::file("<stdout>", e))?;
                }
                Ok(())
            })
        }
    }
}
