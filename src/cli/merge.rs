//! `localtune merge` and `localtune fold`: model folders merged tensor by tensor from disk to disk,
//! adapters merged in memory (they are small), outputs written beside the old ones and swapped in.

use super::{model_dir, open_device, DeviceArg};
use localtune::merge::adapters::{base_tensor, delta_w, merge_adapters, needs_base, LoraOutput};
use localtune::merge::folder::{merge_all, plan, FileSource, Recipe, TensorSource};
use localtune::merge::params::Setting;
use localtune::merge::{Method, Semantics, SignRule};
use localtune::model::stream::{Index, Layout, Writer};
use localtune::model::weights::{HostTensor, NamedTensors};
use localtune::peft::format::AdapterFiles;
use localtune::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The input folders: models (model.safetensors) or PEFT adapters (adapter_config.json).
    pub inputs: Vec<PathBuf>,
    /// linear | task-arithmetic | magnitude-prune | ties | dare-linear | dare-ties | breadcrumbs |
    /// breadcrumbs-ties | della | della-linear | slerp | model-stock | fisher | delta-guided
    #[arg(long)]
    pub method: Option<String>,
    /// The model the inputs were fine-tuned from (task-vector methods, SLERP's t = 0, model stock);
    /// for adapters with --lora-output full, the model they fold into (default: the default model).
    #[arg(long)]
    pub base: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// One weight per input, comma-separated (default: 1 each).
    #[arg(long)]
    pub weights: Option<String>,
    /// Fraction of each task vector kept, in (0, 1]; a comma list is interpolated over the layers.
    #[arg(long)]
    pub density: Option<String>,
    /// Scale of the merged task vector.
    #[arg(long)]
    pub lambda: Option<String>,
    /// SLERP: 0 gives the base (or the first input), 1 the other; a comma list varies over layers.
    #[arg(long)]
    pub t: Option<String>,
    /// Breadcrumbs: fraction of the largest entries dropped (default 0.01).
    #[arg(long)]
    pub gamma: Option<String>,
    /// DELLA: keep probabilities span density ± epsilon (default 0.15).
    #[arg(long)]
    pub epsilon: Option<String>,
    /// Delta-guided: temperature (default 1).
    #[arg(long)]
    pub temperature: Option<String>,
    /// Fisher: floor of the Fisher values (default 1e-6).
    #[arg(long)]
    pub fisher_floor: Option<String>,
    /// TIES sign election: total (sum of values) or frequency (count of signs).
    #[arg(long, default_value = "total")]
    pub sign: String,
    /// peft (default) or mergekit: see docs/merging.md.
    #[arg(long, default_value = "peft")]
    pub semantics: String,
    /// Override the method's default for dividing by the sum of the weights.
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Override the method's default for rescaling trimmed task vectors.
    #[arg(long)]
    pub rescale: Option<bool>,
    /// Seed of DARE's and DELLA's random drops.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Fisher merging: one Fisher file (from `localtune fisher`) per input, in input order.
    #[arg(long, num_args = 1..)]
    pub fishers: Vec<PathBuf>,
    /// RegMean: one local data file per input (texts; CSV or JSONL), in input order.
    #[arg(long, num_args = 1..)]
    pub regmean_data: Vec<PathBuf>,
    /// RegMean: texts used per input (the first N of each file).
    #[arg(long, default_value_t = 100)]
    pub regmean_examples: usize,
    /// RegMean: scale of the Gram matrices' off-diagonal entries (default 0.1).
    #[arg(long)]
    pub alpha: Option<String>,
    /// A mergekit recipe (YAML or JSON): merge_method, base_model, models with parameters, parameters, dtype.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Adapters: svd (a LoRA of --rank), cat (exact, ranks add up), or full (folded into --base).
    #[arg(long, default_value = "svd")]
    pub lora_output: String,
    /// Adapters: rank of the SVD output (default: the largest input rank).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Adapters: PEFT's add_weighted_adapter combination (A and B merged separately) instead of ΔW.
    #[arg(long)]
    pub ab_separate: bool,
    /// Output dtype of merged model weights: float32 (default), float16 or bfloat16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    pub device: DeviceArg,
    /// One JSON object with what was done instead of text.
    #[arg(long)]
    pub json: bool,
}

fn setting(v: &Option<String>, flag: &str) -> Result<Option<Setting>> {
    v.as_ref().map(|s| Setting::parse_cli(s, flag)).transpose()
}

fn is_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").exists()
}

/// Writes a folder atomically: `fill` writes into a fresh sibling folder, which then replaces `out`.
pub fn write_folder(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.is_file() {
        return Err(Error::file(out, "is a file; --out must be a folder"));
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("out").to_string();
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::rename(out, &old).map_err(|e| Error::file(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::file(out, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Copies a model folder's files other than weights (config, tokenizer, sentence-transformers modules).
fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::file(from, e))? {
        let entry = entry.map_err(|e| Error::file(from, e))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let weights =
            [".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".gguf", ".partial"].iter().any(|s| name.ends_with(s));
        if weights || name.starts_with('.') || name == "onnx" || name == "checkpoint" || name.ends_with(".index.json") {
            continue;
        }
        if p.is_dir() {
            let dest = to.join(&name);
            std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
            copy_side_files(&p, &dest)?;
        } else {
            std::fs::copy(&p, to.join(&name)).map_err(|e| Error::file(&p, e))?;
        }
    }
    Ok(())
}

/// `num_hidden_layers` (or DistilBERT's `n_layers`) of a model folder's config.json.
pub fn layers_of(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|c| c.get("num_hidden_layers").or(c.get("n_layers")).and_then(|v| v.as_u64()))
        .unwrap_or(1) as usize
}

fn dtype_of(s: &str) -> Result<safetensors::Dtype> {
    match s.trim_start_matches("torch.") {
        "float32" | "f32" => Ok(safetensors::Dtype::F32),
        "float16" | "f16" => Ok(safetensors::Dtype::F16),
        "bfloat16" | "bf16" => Ok(safetensors::Dtype::BF16),
        _ => Err(Error::invalid(format!("dtype {s}: one of float32, float16, bfloat16"))),
    }
}

/// The recipe of the command-line flags.
fn recipe_of(a: &MergeArgs, method: Method, inputs: usize, layers: usize) -> Result<Recipe> {
    let mut r = Recipe::new(method, inputs, Semantics::parse(&a.semantics)?);
    r.sign = SignRule::parse(&a.sign)?;
    r.seed = a.seed;
    r.layers = layers;
    if let Some(w) = &a.weights {
        let ws: Vec<f64> = w
            .split(',')
            .map(|x| {
                x.trim().parse::<f64>().map_err(|_| Error::invalid(format!("--weights {w}: not a list of numbers")))
            })
            .collect::<Result<_>>()?;
        if ws.len() != inputs {
            return Err(Error::invalid(format!("--weights has {} values for {inputs} inputs", ws.len())));
        }
        for (m, w) in r.models.iter_mut().zip(ws) {
            m.insert("weight".into(), Setting::Number(w));
        }
    }
    for (key, v, flag) in [
        ("density", &a.density, "--density"),
        ("lambda", &a.lambda, "--lambda"),
        ("t", &a.t, "--t"),
        ("gamma", &a.gamma, "--gamma"),
        ("epsilon", &a.epsilon, "--epsilon"),
        ("temperature", &a.temperature, "--temperature"),
        ("fisher_floor", &a.fisher_floor, "--fisher-floor"),
        ("alpha", &a.alpha, "--alpha"),
    ] {
        if let Some(s) = setting(v, flag)? {
            r.global.insert(key.into(), s);
        }
    }
    if let Some(n) = a.normalize {
        r.global.insert("normalize".into(), Setting::Flag(n));
    }
    if let Some(n) = a.rescale {
        r.global.insert("rescale".into(), Setting::Flag(n));
    }
    Ok(r)
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    if let Some(file) = &a.recipe {
        return super::recipe::run(file, a);
    }
    let method =
        Method::parse(a.method.as_deref().ok_or_else(|| Error::invalid("--method (or --recipe) is required"))?)?;
    if a.inputs.is_empty() {
        return Err(Error::invalid("no inputs: list the folders to merge"));
    }
    for i in &a.inputs {
        if !i.is_dir() {
            return Err(Error::file(i, "is not a folder (a model folder or an adapter folder)"));
        }
    }
    let adapters = a.inputs.iter().filter(|d| is_adapter(d)).count();
    if adapters != 0 && adapters != a.inputs.len() {
        return Err(Error::invalid("the inputs mix adapter folders and model folders"));
    }
    let dev = open_device(a.device)?;
    let start = std::time::Instant::now();
    if adapters > 0 {
        return merge_adapter_folders(a, method, &dev, start);
    }
    let layers = layers_of(&a.inputs[0]);
    let recipe = recipe_of(a, method, a.inputs.len(), layers)?;
    let grams = regmean_grams(a, &dev)?;
    let report = merge_model_folders(
        &recipe,
        &dev,
        a.base.as_deref(),
        &a.inputs,
        &a.fishers,
        &grams,
        &a.out,
        dtype_of(&a.dtype)?,
        a.json,
    )?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"method": method.name(), "out": a.out.display().to_string(), "tensors": report.tensors, "values": report.values, "seconds": secs})
        );
    } else {
        eprintln!(
            "{} merge of {} models: {} tensors ({} values) written to {} in {secs:.1} s",
            method.name(),
            a.inputs.len(),
            report.tensors,
            report.values,
            a.out.display()
        );
    }
    Ok(())
}

/// RegMean's Gram matrices: each input model run on its own local texts.
fn regmean_grams(
    a: &MergeArgs,
    dev: &localtune::Device,
) -> Result<Vec<std::collections::BTreeMap<String, HostTensor>>> {
    if a.regmean_data.is_empty() {
        return Ok(vec![]);
    }
    if a.regmean_data.len() != a.inputs.len() {
        return Err(Error::invalid(format!(
            "--regmean-data has {} files for {} inputs",
            a.regmean_data.len(),
            a.inputs.len()
        )));
    }
    a.inputs
        .iter()
        .zip(&a.regmean_data)
        .map(|(dir, data)| {
            let model = localtune::model::Model::load(dir, dev)?;
            let ds = localtune::train::Dataset::load(data, false)?;
            let texts: Vec<&str> = ds.examples.iter().take(a.regmean_examples).map(|e| e.text.as_str()).collect();
            futures::executor::block_on(localtune::merge::regmean::grams(&model, &texts, 64))
        })
        .collect()
}

/// Streams a merge of model folders into `out` (atomically).
#[allow(clippy::too_many_arguments)]
pub fn merge_model_folders(
    recipe: &Recipe,
    dev: &localtune::Device,
    base: Option<&Path>,
    inputs: &[PathBuf],
    fishers: &[PathBuf],
    grams: &[std::collections::BTreeMap<String, HostTensor>],
    out: &Path,
    dtype: safetensors::Dtype,
    quiet: bool,
) -> Result<localtune::merge::folder::Report> {
    let weights = |d: &Path| d.join("model.safetensors");
    let mut srcs: Vec<FileSource> = inputs.iter().map(|d| FileSource::open(&weights(d))).collect::<Result<_>>()?;
    let mut base_src = base.map(|b| FileSource::open(&weights(b))).transpose()?;
    let mut fisher_srcs: Vec<FileSource> = fishers.iter().map(|f| FileSource::open(f)).collect::<Result<_>>()?;
    let names = {
        let ins: Vec<&dyn TensorSource> = srcs.iter().map(|s| s as &dyn TensorSource).collect();
        let fs: Vec<&dyn TensorSource> = fisher_srcs.iter().map(|s| s as &dyn TensorSource).collect();
        plan(base_src.as_ref().map(|b| b as &dyn TensorSource), &ins, &fs)?
    };
    let side_from = base.unwrap_or(&inputs[0]).to_path_buf();
    let mut report = None;
    write_folder(out, |tmp| {
        copy_side_files(&side_from, tmp)?;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("localtune_merge".to_string(), recipe.method.name().to_string());
        let layout = Layout { entries: names.clone(), dtype, metadata: meta };
        let mut w = Writer::create(&tmp.join("model.safetensors"), layout)?;
        let mut ins: Vec<&mut dyn TensorSource> = srcs.iter_mut().map(|s| s as &mut dyn TensorSource).collect();
        let mut fs: Vec<&mut dyn TensorSource> = fisher_srcs.iter_mut().map(|s| s as &mut dyn TensorSource).collect();
        let tty = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let r = futures::executor::block_on(merge_all(
            recipe,
            dev,
            &names,
            base_src.as_mut().map(|b| b as &mut dyn TensorSource),
            &mut ins,
            &mut fs,
            grams,
            |name, _shape, values| w.write(name, &values),
            |done, total| {
                if tty {
                    eprint!("\rmerging tensor {done}/{total}\x1b[K");
                }
            },
        ))?;
        if tty {
            eprintln!();
        }
        w.finish()?;
        report = Some(r);
        Ok(())
    })?;
    Ok(report.unwrap())
}

fn merge_adapter_folders(
    a: &MergeArgs,
    method: Method,
    dev: &localtune::Device,
    start: std::time::Instant,
) -> Result<()> {
    let files: Vec<AdapterFiles> = a.inputs.iter().map(|d| AdapterFiles::load(d)).collect::<Result<_>>()?;
    let output = LoraOutput::parse(&a.lora_output, a.rank)?;
    let base_dir = model_dir(&a.base)?;
    let desc = localtune::model::arch::from_config_json(
        &std::fs::read_to_string(base_dir.join("config.json"))
            .map_err(|e| Error::file(base_dir.join("config.json"), e))?,
        &base_dir.display().to_string(),
    )?
    .1;
    let recipe = recipe_of(a, method, files.len(), layers_of(&base_dir))?;
    let fishers: Vec<NamedTensors> = a.fishers.iter().map(|f| NamedTensors::load(f)).collect::<Result<_>>()?;
    // Full fine-tunes and BitFit are task vectors of the base model's weights.
    let base =
        if needs_base(&files, method) { Some(NamedTensors::load(&base_dir.join("model.safetensors"))?) } else { None };
    let merged = futures::executor::block_on(merge_adapters(
        &recipe,
        dev,
        &files,
        output,
        a.ab_separate,
        &fishers,
        base.as_ref(),
    ))?;
    if output == LoraOutput::Full {
        let head = &merged.adapters[0];
        let deltas = match &base {
            Some(b) => param_deltas(head, b)?,
            None => merged.deltas,
        };
        fold_into(&base_dir, &deltas, head, &a.out)?;
    } else if merged.adapters.len() == 1 {
        write_folder(&a.out, |tmp| merged.adapters[0].save(tmp, &desc))?;
    } else {
        write_folder(&a.out, |tmp| {
            for (i, ad) in merged.adapters.iter().enumerate() {
                ad.save(&tmp.join(format!("task-{}", i + 1)), &desc)?;
            }
            Ok(())
        })?;
    }
    let worst = merged.svd_errors.iter().map(|e| e.1).fold(0.0f64, f64::max);
    let mean = if merged.svd_errors.is_empty() {
        0.0
    } else {
        merged.svd_errors.iter().map(|e| e.1).sum::<f64>() / merged.svd_errors.len() as f64
    };
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"method": method.name(), "out": a.out.display().to_string(), "heads": merged.heads, "adapters": merged.adapters.len(), "svd_relative_error_max": worst, "svd_relative_error_mean": mean, "seconds": secs})
        );
    } else {
        eprintln!(
            "{} merge of {} adapters written to {} ({:.1} s); heads {}",
            method.name(),
            files.len(),
            a.out.display(),
            secs,
            merged.heads
        );
        if !merged.svd_errors.is_empty() {
            eprintln!(
                "SVD truncation to rank {}: relative error mean {mean:.3e}, max {worst:.3e}",
                match output {
                    LoraOutput::Svd(r) => r.map_or("max input".to_string(), |r| r.to_string()),
                    _ => "-".into(),
                }
            );
        }
        if merged.heads == "kept apart" {
            eprintln!("the label sets differ: one adapter per task in {}/task-N", a.out.display());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct FoldArgs {
    /// The adapter folder (LoRA, BitFit or full).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base model folder (default: the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The standalone model folder written (BertForSequenceClassification).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn fold(a: &FoldArgs) -> Result<()> {
    let files = AdapterFiles::load(&a.adapter)?;
    let base = model_dir(&a.model)?;
    let deltas = match &files.method {
        localtune::peft::Method::Lora(c) => lora_deltas(&files, c.scaling())?,
        localtune::peft::Method::Full(_) | localtune::peft::Method::Bitfit(_) => {
            param_deltas(&files, &NamedTensors::load(&base.join("model.safetensors"))?)?
        }
        m => {
            return Err(Error::invalid(format!(
                "fold takes LoRA, BitFit and full adapters; {} is a {} adapter",
                a.adapter.display(),
                m.name()
            )))
        }
    };
    fold_into(&base, &deltas, &files, &a.out)?;
    eprintln!(
        "{} folded into {}: {} written ({} weights updated)",
        a.adapter.display(),
        base.display(),
        a.out.display(),
        deltas.len()
    );
    Ok(())
}

/// Each trained tensor less the base model's (full fine-tunes, BitFit), keyed by tensor name.
fn param_deltas(files: &AdapterFiles, base: &NamedTensors) -> Result<Vec<(String, HostTensor)>> {
    let mut deltas = Vec::new();
    for (k, t) in &files.tensors.tensors {
        let Some(name) = k.strip_prefix("base_model.model.") else { continue };
        if name.starts_with("classifier.") {
            continue;
        }
        let b = base_tensor(base, k, &t.shape, &files.tensors.origin)?;
        deltas.push((
            name.to_string(),
            HostTensor::new(t.shape.clone(), t.data.iter().zip(&b.data).map(|(x, y)| x - y).collect()),
        ));
    }
    Ok(deltas)
}

/// ΔW = s·B·A of every module a LoRA adapter updates, keyed by the weight's name.
fn lora_deltas(files: &AdapterFiles, scaling: f32) -> Result<Vec<(String, HostTensor)>> {
    let mut deltas = Vec::new();
    for (k, at) in &files.tensors.tensors {
        if let Some(m) = k.strip_suffix(".lora_A.weight") {
            let bt = files
                .tensors
                .tensors
                .get(&format!("{m}.lora_B.weight"))
                .ok_or_else(|| Error::tensor(&files.tensors.origin, k, "has no lora_B"))?;
            let (out_d, in_d) = (bt.shape[0], at.shape[1]);
            deltas.push((
                format!("{m}.weight"),
                HostTensor::new(vec![out_d, in_d], delta_w(files, m, scaling, out_d, in_d)?),
            ));
        }
    }
    Ok(deltas)
}

/// Writes base + ΔW with the adapter's classifier as a BertForSequenceClassification folder:
/// base weights under `bert.`, `classifier.*`, config.json with the architecture and labels.
pub fn fold_into(base: &Path, deltas: &[(String, HostTensor)], head: &AdapterFiles, out: &Path) -> Result<()> {
    if head.arch != "bert" {
        return Err(Error::invalid(format!(
            "folding writes BertForSequenceClassification folders; this adapter is for {}",
            head.arch
        )));
    }
    if head.head != localtune::peft::HeadKind::Pooler {
        return Err(Error::invalid("this adapter's classifier reads the mean of tokens (--head mean), which BertForSequenceClassification cannot express; train with --head pooler to fold"));
    }
    let path = base.join("model.safetensors");
    let mut src = FileSource::open(&path)?;
    let index: Index = src.index().clone();
    let out_name = |k: &str| if k.starts_with("bert.") { k.to_string() } else { format!("bert.{k}") };
    let mut by_weight: std::collections::HashMap<String, &HostTensor> = std::collections::HashMap::new();
    for (m, d) in deltas {
        let key = m.strip_prefix("base_model.model.").unwrap_or(m).to_string();
        by_weight.insert(key, d);
    }
    let entries: Vec<(String, Vec<usize>)> = index.floats().map(|e| (e.name.clone(), e.shape.clone())).collect();
    for (name, shape) in &entries {
        if let Some(d) = by_weight.get(&out_name(name)) {
            if &d.shape != shape {
                return Err(Error::tensor(
                    &path,
                    name,
                    format!("has shape {shape:?}, the adapter's update {:?}", d.shape),
                ));
            }
        }
    }
    let found = entries.iter().filter(|(n, _)| by_weight.contains_key(&out_name(n))).count();
    if found != deltas.len() {
        let missing: Vec<&String> =
            by_weight.keys().filter(|k| !entries.iter().any(|(n, _)| out_name(n) == **k)).collect();
        return Err(Error::file(&path, format!("has no weight for the adapter's modules {missing:?}")));
    }
    let head_w = head
        .tensors
        .tensors
        .get("base_model.model.classifier.weight")
        .ok_or_else(|| Error::tensor(&head.tensors.origin, "base_model.model.classifier.weight", "missing"))?;
    let head_b = head
        .tensors
        .tensors
        .get("base_model.model.classifier.bias")
        .ok_or_else(|| Error::tensor(&head.tensors.origin, "base_model.model.classifier.bias", "missing"))?;
    let mut layout_entries: Vec<(String, Vec<usize>)> = entries.iter().map(|(n, s)| (out_name(n), s.clone())).collect();
    layout_entries.push(("classifier.weight".into(), head_w.shape.clone()));
    layout_entries.push(("classifier.bias".into(), head_b.shape.clone()));
    write_folder(out, |tmp| {
        copy_side_files(base, tmp)?;
        let cfg_path = base.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?)
                .map_err(|e| Error::file(&cfg_path, e.to_string()))?;
        let labels = &head.labels;
        cfg["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
        cfg["id2label"] = serde_json::json!(labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect::<std::collections::BTreeMap<_, _>>());
        cfg["label2id"] = serde_json::json!(labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect::<std::collections::BTreeMap<_, _>>());
        std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap())
            .map_err(|e| Error::file(tmp.join("config.json"), e))?;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let layout = Layout { entries: layout_entries.clone(), dtype: safetensors::Dtype::F32, metadata: meta };
        let mut w = Writer::create(&tmp.join("model.safetensors"), layout)?;
        for (name, _) in index.floats().map(|e| (e.name.clone(), ())).collect::<Vec<_>>() {
            let mut t = src.read(&name)?;
            if let Some(d) = by_weight.get(&out_name(&name)) {
                t.data.iter_mut().zip(&d.data).for_each(|(w, d)| *w += d);
            }
            w.write(&out_name(&name), &t.data)?;
        }
        w.write("classifier.weight", &head_w.data)?;
        w.write("classifier.bias", &head_b.data)?;
        w.finish()
    })
}

#[derive(clap::Args)]
pub struct FisherArgs {
    /// The adapter folder whose parameters get a Fisher.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Local labelled data (CSV or JSONL, as for train); labels are needed only with --empirical.
    #[arg(long)]
    pub data: PathBuf,
    /// The base model folder (default: the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The Fisher written (safetensors, under the adapter's tensor names).
    #[arg(long)]
    pub out: PathBuf,
    /// Examples used (the first N of the file).
    #[arg(long, default_value_t = 256)]
    pub examples: usize,
    /// The empirical Fisher (at the true labels) instead of the expected one (over the predictions).
    #[arg(long)]
    pub empirical: bool,
    /// Also estimate the classifier head's Fisher (left out by default, as in Matena & Raffel).
    #[arg(long)]
    pub include_head: bool,
    /// Divide the Fisher by its mean over all its values, so models with differently scaled
    /// Fishers weigh alike.
    #[arg(long)]
    pub normalize: bool,
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    pub device: DeviceArg,
}

pub fn fisher(a: &FisherArgs) -> Result<()> {
    use localtune::merge::fisher::{estimate, FisherKind};
    if a.examples == 0 {
        return Err(Error::invalid("--examples must be at least 1"));
    }
    let dev = open_device(a.device)?;
    let model = localtune::model::Model::load(&model_dir(&a.model)?, &dev)?;
    let files = AdapterFiles::load(&a.adapter)?;
    let params = files.to_adapted(&model.encoder)?;
    let ds = localtune::train::Dataset::load(&a.data, false)?;
    let ex = if a.empirical {
        localtune::train::Examples::from_dataset(&ds, &files.labels)?
    } else {
        // Labels are not needed: any label column is ignored.
        localtune::train::Examples { texts: ds.examples.iter().map(|r| r.text.clone()).collect(), labels: vec![] }
    };
    let n = a.examples.min(ex.texts.len());
    let texts: Vec<&str> = ex.texts[..n].iter().map(|s| s.as_str()).collect();
    let labels = if a.empirical { ex.labels[..n].to_vec() } else { vec![] };
    let kind = if a.empirical { FisherKind::Empirical } else { FisherKind::Expected };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = std::time::Instant::now();
    let mut f = futures::executor::block_on(estimate(
        &model,
        &params,
        files.head,
        &texts,
        &labels,
        a.max_len,
        kind,
        a.include_head,
        |d, t| {
            if tty {
                eprint!("\rFisher: example {d}/{t}\x1b[K");
            }
        },
    ))?;
    if tty {
        eprintln!();
    }
    if a.normalize {
        let (sum, count) = f
            .tensors
            .values()
            .fold((0.0f64, 0usize), |(s, c), t| (s + t.data.iter().map(|&v| v as f64).sum::<f64>(), c + t.data.len()));
        let mean = (sum / count.max(1) as f64) as f32;
        if mean > 0.0 {
            f.tensors.values_mut().for_each(|t| t.data.iter_mut().for_each(|v| *v /= mean));
        }
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("localtune_fisher".to_string(), format!("{kind:?} over {n} examples of {}", a.data.display()));
    localtune::peft::format::write_atomic(&a.out, &f.to_bytes(Some(meta))?)?;
    eprintln!(
        "{kind:?} Fisher of {} tensors over {n} examples written to {} ({:.1} s)",
        f.tensors.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `localtune bench merge`: GB/s of input parameters merged (whole model folders, from disk to disk)
/// with 2 and 4 inputs for linear and TIES on each device, and the peak host heap of each run beside
/// the size of one model and of its largest tensor times the inputs.
pub fn bench(model: &Option<PathBuf>, json: bool, cpu_only: bool) -> Result<()> {
    use localtune::bench::MemoryProbe;
    eprintln!("cpu: {}", localtune::bench::cpu_description());
    let dir = model_dir(model)?;
    let idx = Index::open(&dir.join("model.safetensors"))?;
    let values: usize = idx.floats().map(|e| e.numel()).sum();
    let largest: usize = idx.floats().map(|e| e.numel()).max().unwrap_or(0);
    let mut devices = vec![("cpu", localtune::Device::Cpu)];
    if !cpu_only {
        match futures::executor::block_on(localtune::Device::gpu()) {
            Ok(g) => devices.push(("gpu", g)),
            Err(e) => eprintln!("warning: {e}\nwarning: measuring the CPU device only"),
        }
    }
    let out = std::env::temp_dir().join(format!("localtune-bench-merge-{}", std::process::id()));
    if !json {
        println!(
            "model {}: {:.1} M values ({:.0} MB f32), largest tensor {:.1} M values",
            dir.display(),
            values as f64 / 1e6,
            values as f64 * 4e-6,
            largest as f64 / 1e6
        );
        println!(
            "{:>6} {:>7} {:>6}  {:>8}  {:>8}  {:>12}  {:>16}",
            "device", "method", "inputs", "seconds", "GB/s", "peak heap MB", "largest x inputs"
        );
    }
    for (name, dev) in &devices {
        for method in [Method::Linear, Method::Ties] {
            for n in [2usize, 4] {
                let inputs = vec![dir.clone(); n];
                let mut recipe = Recipe::new(method, n, Semantics::Peft);
                recipe.global.insert("density".into(), Setting::Number(0.5));
                let base = (method == Method::Ties).then_some(dir.as_path());
                let heap = super::HeapProbe(std::sync::atomic::AtomicUsize::new(0));
                heap.reset();
                let start = std::time::Instant::now();
                merge_model_folders(&recipe, dev, base, &inputs, &[], &[], &out, safetensors::Dtype::F32, true)?;
                let secs = start.elapsed().as_secs_f64();
                let peak = heap.peak();
                let gbs = (n * values * 4) as f64 / secs / 1e9;
                let per_inputs = (largest * 4 * (n + base.is_some() as usize)) as f64 / 1e6;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"device": name, "method": method.name(), "inputs": n, "seconds": secs, "gb_per_s": gbs, "peak_heap_bytes": peak, "model_bytes": values * 4, "largest_tensor_bytes_times_inputs": per_inputs * 1e6})
                    );
                } else {
                    println!(
                        "{name:>6} {:>7} {n:>6}  {secs:>8.2}  {gbs:>8.2}  {:>12.1}  {per_inputs:>16.1}",
                        method.name(),
                        peak as f64 / 1e6
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
