//! The multi-source transfer commands: `rank-sources` and `distill`, and the source loading that
//! `train --method scalearn --sources …` shares with them.

use super::train::{load_data, train_with};
use super::{model_dir, open_device, DeviceArg, ModelArgs, TrainArgs};
use localtune::model::Model;
use localtune::peft::format::AdapterFiles;
use localtune::peft::scalearn::SourceFiles;
use localtune::peft::ScaLearnConfig;
use localtune::train::Examples;
use localtune::transfer::{self, distill::Weighting, Score};
use localtune::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct RankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The source adapters (folders) to rank.
    #[arg(long, num_args = 1.., required = true)]
    sources: Vec<PathBuf>,
    /// The target's labelled data (CSV with text,label columns, or JSONL).
    #[arg(long)]
    data: PathBuf,
    /// The score that orders the table: logme | leep | nce (all three are printed).
    #[arg(long, default_value = "logme")]
    score: String,
    /// Also pick the best team of this many sources, greedily on the score.
    #[arg(long, default_value_t = 0)]
    ensemble: usize,
    /// Score on at most this many examples of --data (seeded sample); 0 uses all.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    device: DeviceArg,
    #[arg(long)]
    skip_bad_rows: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// The student's training run: --data (the few labels), --method (the student), --out, --sources
    /// (the teachers) and every other training setting.
    #[command(flatten)]
    train: TrainArgs,
    /// Unlabelled target texts: .txt (one per line), JSONL/JSON with "text", or CSV with a text column.
    #[arg(long)]
    unlabelled: Option<PathBuf>,
    /// nearest (the best-ranked source alone) | weighted (every source, weighted by its score).
    #[arg(long, default_value = "weighted")]
    weighting: String,
    /// The score that ranks and weighs the teachers: logme | leep | nce.
    #[arg(long, default_value = "logme")]
    score: String,
    /// Weight of the teachers' distribution in a labelled example's target (1 − alpha on its label).
    #[arg(long, default_value_t = 0.5)]
    distill_alpha: f32,
}

/// The last component of a model's path or hub id, to compare base models recorded in different forms.
fn model_name(s: &str) -> String {
    Path::new(s.trim_end_matches('/')).file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default()
}

/// Reads the source adapters, refusing any made for another base model than `base` (by name).
pub fn load_sources(paths: &[PathBuf], base: &Path) -> Result<Vec<(PathBuf, AdapterFiles)>> {
    if paths.is_empty() {
        return Err(Error::invalid("no source adapters: give at least one source with --sources A B …"));
    }
    let want = model_name(&base.display().to_string());
    let mut out = vec![];
    for p in paths {
        let f = AdapterFiles::load(p)?;
        let got = model_name(&f.base_model);
        if !got.is_empty() && !want.is_empty() && got != want {
            return Err(Error::file(
                p,
                format!("this source was trained on base model `{}`, this run uses `{}`", f.base_model, base.display()),
            ));
        }
        out.push((p.clone(), f));
    }
    Ok(out)
}

/// ScaLearn settings with the sources at `paths` attached.
pub fn with_sources(c: ScaLearnConfig, paths: &[PathBuf], base: &Path) -> Result<ScaLearnConfig> {
    let files: Vec<SourceFiles> = load_sources(paths, base)?
        .into_iter()
        .map(|(p, f)| (p.display().to_string(), f.method, f.labels, f.arch, f.tensors))
        .collect();
    c.with_sources(files)
}

/// The sources as the library takes them: (name, files).
fn named(sources: &[(PathBuf, AdapterFiles)]) -> Vec<(String, AdapterFiles)> {
    sources.iter().map(|(p, f)| (p.display().to_string(), f.clone())).collect()
}

pub fn rank_sources(a: &RankArgs) -> Result<()> {
    let score = Score::parse(&a.score)?;
    let dir = model_dir(&a.model.model)?;
    let sources = load_sources(&a.sources, &dir)?;
    let mut ds = load_data(&a.data, a.skip_bad_rows)?;
    if a.limit > 0 && ds.examples.len() > a.limit {
        let mut rng = localtune::rng::Rng::new(a.seed);
        rng.shuffle(&mut ds.examples);
        ds.examples.truncate(a.limit);
    }
    let labels = ds.labels();
    if labels.len() < 2 {
        return Err(Error::file(
            &a.data,
            format!("needs at least 2 distinct labels to score sources, found {labels:?}"),
        ));
    }
    let ex = Examples::from_dataset(&ds, &labels)?;
    let dev = open_device(a.device)?;
    let model = Model::load(&dir, &dev)?;
    let texts: Vec<&str> = ex.texts.iter().map(|s| s.as_str()).collect();
    let outs = futures::executor::block_on(transfer::outputs_of(&model, &named(&sources), &texts, a.model.max_len))?;
    let k = labels.len();
    let scores: Vec<[f64; 3]> = outs.iter().map(|o| transfer::all_scores(o, &ex.labels, k)).collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..sources.len()).collect();
    let c = score.column();
    order.sort_by(|&x, &y| scores[y][c].total_cmp(&scores[x][c]));
    let team =
        if a.ensemble > 0 { transfer::greedy_ensemble(score, &outs, &ex.labels, k, a.ensemble)? } else { vec![] };
    let name = |i: usize| sources[i].0.display().to_string();
    if a.json {
        let rows: Vec<_> = order
            .iter()
            .map(|&i| {
                serde_json::json!({"source": name(i), "logme": scores[i][0], "leep": scores[i][1], "nce": scores[i][2],
                    "labels": sources[i].1.labels, "method": sources[i].1.method.name()})
            })
            .collect();
        let team: Vec<_> = team.iter().map(|(i, v)| serde_json::json!({"source": name(*i), "score": v})).collect();
        println!(
            "{}",
            serde_json::json!({"score": score.name(), "examples": ex.len(), "sources": rows, "ensemble": team})
        );
        return Ok(());
    }
    println!("{} target examples, {} labels; ranked by {} (higher is better)", ex.len(), k, score.name());
    println!("{:>4}  {:<40} {:>9} {:>9} {:>9}", "rank", "source", "logme", "leep", "nce");
    for (r, &i) in order.iter().enumerate() {
        println!("{:>4}  {:<40} {:>9.4} {:>9.4} {:>9.4}", r + 1, name(i), scores[i][0], scores[i][1], scores[i][2]);
    }
    if !team.is_empty() {
        let names: Vec<String> = team.iter().map(|(i, _)| name(*i)).collect();
        println!(
            "best team of up to {} by {}: {} ({} {:.4})",
            a.ensemble,
            score.name(),
            names.join(" + "),
            score.name(),
            team.last().unwrap().1
        );
    }
    Ok(())
}

pub fn distill(a: &DistillArgs) -> Result<()> {
    let weighting = Weighting::parse(&a.weighting)?;
    let score = Score::parse(&a.score)?;
    if !(0.0..=1.0).contains(&a.distill_alpha) {
        return Err(Error::invalid(format!("--distill-alpha {}: must be between 0 and 1", a.distill_alpha)));
    }
    let dir = model_dir(&a.train.model.model)?;
    let sources = load_sources(&a.train.sources, &dir)?;
    let unlabelled = match &a.unlabelled {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::file(p, e))?;
            localtune::train::data::parse_texts(&bytes, &p.display().to_string())?
        }
        None => vec![],
    };
    let max_len = a.train.model.max_len;
    let sources = named(&sources);
    let teachers = |model: &Model, train: &Examples, labels: &[String]| -> Result<(Vec<String>, Vec<f32>)> {
        let (report, targets) = futures::executor::block_on(transfer::distill::teacher_targets(
            model,
            &sources,
            train,
            labels,
            &unlabelled,
            score,
            weighting,
            a.distill_alpha,
            max_len,
        ))?;
        for t in &report {
            eprintln!("teacher {}: {} {:.4}, weight {:.3}", t.name, score.name(), t.score, t.weight);
        }
        eprintln!("distilling on {} labelled and {} unlabelled texts", train.len(), unlabelled.len());
        Ok((unlabelled.clone(), targets))
    };
    train_with(&a.train, Some(&teachers))
}
