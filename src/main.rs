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
    use localtune::{Device, Result};

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
        /// Run a benchmark and print its figures.
        Bench {
            #[command(subcommand)]
            what: BenchWhat,
        },
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
    }

    #[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
    pub enum DeviceArg {
        Gpu,
        Cpu,
    }

    pub fn main() {
        // The CPU matmul's thread pool reads this once; default it to every available core.
        if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
            let n = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
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
            Command::Bench { what } => match what {
                BenchWhat::Matmul {
                    json,
                    budget,
                    cpu_only,
                } => bench_matmul(json, budget, cpu_only),
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
                println!(
                    "  max buffer:                  {} MiB",
                    i.max_buffer_size >> 20
                );
                println!(
                    "  max storage binding:         {} MiB",
                    i.max_storage_buffer_binding_size >> 20
                );
                println!(
                    "  storage buffers per stage:   {}",
                    i.max_storage_buffers_per_shader_stage
                );
                println!(
                    "  workgroup memory:            {} KiB",
                    i.max_compute_workgroup_storage_size >> 10
                );
                println!(
                    "  invocations per workgroup:   {}",
                    i.max_compute_invocations_per_workgroup
                );
                println!(
                    "  workgroups per dimension:    {}",
                    i.max_compute_workgroups_per_dimension
                );
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
            println!(
                "{:>6} {:>6} {:>6}  {:>6}  {:>10}  {:>10}",
                "m", "n", "k", "kernel", "GFLOP/s", "ms/call"
            );
        }
        let results = bench::matmul(gpu.as_ref(), bench::MATMUL_SHAPES, budget, |r| {
            if json {
                println!("{}", serde_json::to_string(r).unwrap());
            } else {
                println!(
                    "{:>6} {:>6} {:>6}  {:>6}  {:>10.2}  {:>10.2}",
                    r.m, r.n, r.k, r.kernel, r.gflops, r.ms
                );
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
