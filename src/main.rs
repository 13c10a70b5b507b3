//! The native command-line tool.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
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
        /// Print the token ids of each input text (one text per line on stdin), one JSON line each.
        Tokenize {
            #[command(flatten)]
            model: ModelArgs,
            #[command(flatten)]
            input: InputArgs,
        },
        /// Print the L2-normalised sentence embedding of each input text, one JSON line each.
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
            Command::Tokenize { model, input } => tokenize(&model, &input),
            Command::Embed { model, input, device, batch } => embed(&model, &input, device, batch),
            Command::Bench { what } => match what {
                BenchWhat::Matmul { json, budget, cpu_only } => bench_matmul(json, budget, cpu_only),
                BenchWhat::Forward { model, json, budget, cpu_only } => bench_forward(&model, json, budget, cpu_only),
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

    fn bench_forward(m: &ModelArgs, json: bool, budget: f64, cpu_only: bool) -> Result<()> {
        let dir = model_dir(&m.model)?;
        let mut devices = vec![Device::Cpu];
        if !cpu_only {
            match futures::executor::block_on(Device::gpu()) {
                Ok(g) => devices.push(g),
                Err(e) => eprintln!("warning: {e}\nwarning: measuring the CPU device only"),
            }
        }
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
}
