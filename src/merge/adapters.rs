//! Merging PEFT adapters. LoRA adapters merge exactly in weight-update space by default: for every
//! module, ΔWᵢ = sᵢ·Bᵢ·Aᵢ (sᵢ the adapter's scaling; zero where an adapter does not touch the module)
//! are merged with the method as task vectors over a zero base, and the result is written back as a
//! LoRA of a chosen rank by truncated SVD (with the relative error of the truncation reported), as
//! `cat` (exact: the ranks add up; for linear and task-arithmetic merges), or kept as ΔW to fold
//! into a full model. PEFT's A/B-separate combination (`add_weighted_adapter` with `linear`, `ties`,
//! …: A and B merged on their own with weights ±√|wᵢsᵢ|, cross terms included) is offered for
//! compatibility. (IA)³ vectors merge as task vectors over a base of ones. Classifier heads are
//! averaged with the weights when the label sets agree, else each task keeps its own.

use std::collections::BTreeMap;

use super::folder::Recipe;
use super::{merge_tensor, Method, Semantics, TensorInputs};
use crate::error::{Error, Result};
use crate::linalg;
use crate::model::weights::{HostTensor, NamedTensors};
use crate::peft::format::AdapterFiles;
use crate::peft::{LoraConfig, Method as PeftMethod};
use crate::tensor::Device;

/// How merged LoRA updates are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraOutput {
    /// A LoRA of this rank (default: the largest input rank) by truncated SVD of each merged ΔW.
    Svd(Option<usize>),
    /// The inputs' factors side by side (rank Σ rᵢ), exact; linear and task arithmetic only.
    Cat,
    /// Keep ΔW, to be folded into the base weights.
    Full,
}

impl LoraOutput {
    pub fn parse(s: &str, rank: Option<usize>) -> Result<LoraOutput> {
        match s {
            "svd" => Ok(LoraOutput::Svd(rank)),
            "cat" => Ok(LoraOutput::Cat),
            "full" => Ok(LoraOutput::Full),
            _ => Err(Error::invalid(format!("--lora-output {s}: one of svd, cat, full"))),
        }
    }
}

/// The result of an adapter merge.
pub struct MergedAdapters {
    /// One adapter, or one per input task when their label sets differ (the merged body each time).
    pub adapters: Vec<AdapterFiles>,
    /// With `LoraOutput::Full`: the merged ΔW per PEFT module path (`…encoder.layer.0.attention.self.query`).
    pub deltas: Vec<(String, HostTensor)>,
    /// Per module, the relative Frobenius error of the SVD truncation.
    pub svd_errors: Vec<(String, f64)>,
    /// "merged" or "kept apart".
    pub heads: &'static str,
}

/// Whether merging these adapters with `method` reads the base model's weights.
pub fn needs_base(inputs: &[AdapterFiles], method: Method) -> bool {
    matches!(inputs.first().map(|a| &a.method), Some(PeftMethod::Full(_) | PeftMethod::Bitfit(_)))
        && !matches!(method, Method::Linear | Method::Fisher)
}

const HEAD_W: &str = "base_model.model.classifier.weight";
const HEAD_B: &str = "base_model.model.classifier.bias";

fn check_inputs(inputs: &[AdapterFiles]) -> Result<()> {
    let first = inputs.first().ok_or_else(|| Error::invalid("no adapters to merge"))?;
    for a in &inputs[1..] {
        if a.arch != first.arch {
            return Err(Error::file(
                &a.tensors.origin,
                format!("made for a {} model, {} for a {} model", a.arch, first.tensors.origin, first.arch),
            ));
        }
        if a.method.name() != first.method.name() {
            return Err(Error::file(
                &a.tensors.origin,
                format!(
                    "is a {} adapter, {} a {} adapter: adapters of different methods do not merge",
                    a.method.name(),
                    first.tensors.origin,
                    first.method.name()
                ),
            ));
        }
        if a.head != first.head {
            return Err(Error::file(
                &a.tensors.origin,
                "uses another classifier input (--head) than the first adapter",
            ));
        }
    }
    Ok(())
}

/// Merges the stack of host tensors `xs` with the recipe's method over `base` (zeros by default).
async fn merge_host(
    recipe: &Recipe,
    dev: &Device,
    name: &str,
    xs: &[&[f32]],
    shape: &[usize],
    base: Option<&[f32]>,
    fishers: Option<&[NamedTensors]>,
) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    let mut full = vec![xs.len()];
    full.extend_from_slice(shape);
    let x = dev.tensor(&xs.concat(), &full)?;
    let zeros = vec![0.0; n];
    let b = dev.tensor(base.unwrap_or(&zeros), shape)?;
    let s = recipe.settings_for(name);
    if recipe.method == Method::Slerp && base.is_none() {
        return Err(Error::invalid("SLERP between adapters: merge the folded models instead (localtune fold)"));
    }
    // Fisher: each input's diagonal for this tensor, ones where a Fisher left it out.
    let f = match fishers {
        Some(fs) => {
            let mut data = Vec::with_capacity(xs.len() * n);
            for f in fs {
                match f.tensors.get(name) {
                    Some(t) if t.shape == shape => data.extend_from_slice(&t.data),
                    Some(t) => {
                        return Err(Error::tensor(
                            &f.origin,
                            name,
                            format!("Fisher has shape {:?}, the parameter {shape:?}", t.shape),
                        ))
                    }
                    None => data.extend(std::iter::repeat_n(1.0, n)),
                }
            }
            Some(dev.tensor(&data, &full)?)
        }
        None => None,
    };
    let inputs = TensorInputs { name, models: &x, base: Some(&b), fisher: f.as_ref() };
    merge_tensor(recipe.method, &s, &inputs).await?.to_vec().await
}

/// Merges adapters of one method (LoRA, (IA)³, BitFit and full fine-tunes with every method, any
/// other with `linear`). `base`: the base model's weights, which BitFit and full fine-tunes are
/// task vectors of (see `needs_base`).
pub async fn merge_adapters(
    recipe: &Recipe,
    dev: &Device,
    inputs: &[AdapterFiles],
    output: LoraOutput,
    ab_separate: bool,
    fishers: &[NamedTensors],
    base: Option<&NamedTensors>,
) -> Result<MergedAdapters> {
    check_inputs(inputs)?;
    if recipe.method == Method::RegMean {
        return Err(Error::invalid(
            "regmean merges full models: fold the adapters first (localtune fold) and merge the model folders",
        ));
    }
    if recipe.method == Method::Fisher && fishers.len() != inputs.len() {
        return Err(Error::invalid(format!(
            "Fisher merging needs one Fisher per input (localtune fisher): {} for {} inputs",
            fishers.len(),
            inputs.len()
        )));
    }
    let fisher_stack = (recipe.method == Method::Fisher).then_some(fishers);
    let first = &inputs[0];
    let mut body = NamedTensors { origin: "merged".into(), ..Default::default() };
    let mut deltas = Vec::new();
    let mut svd_errors = Vec::new();
    let mut method = first.method.clone();
    match &first.method {
        // Fisher weights live on the parameters themselves: LoRA's A and B merge in their own space.
        _ if recipe.method == Method::Fisher => {
            merge_params(recipe, dev, inputs, &mut body, &Base::Zeros, fisher_stack).await?;
        }
        PeftMethod::Lora(c0) if ab_separate => {
            merge_lora_ab(recipe, dev, inputs, &mut body).await?;
            method = PeftMethod::Lora(LoraConfig::new(c0.r, c0.r as f32, &c0.targets));
        }
        PeftMethod::Lora(_) => {
            let configs: Vec<&LoraConfig> =
                inputs.iter().map(|a| if let PeftMethod::Lora(c) = &a.method { c } else { unreachable!() }).collect();
            // Every module any adapter touches, by its PEFT path.
            let mut modules: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for a in inputs {
                for (k, t) in &a.tensors.tensors {
                    if let Some(m) = k.strip_suffix(".lora_A.weight") {
                        let b = a.tensors.tensors.get(&format!("{m}.lora_B.weight")).ok_or_else(|| {
                            Error::tensor(&a.tensors.origin, k, "has no lora_B beside it")
                        })?;
                        let dims = (b.shape[0], t.shape[1]);
                        if let Some(d) = modules.get(m) {
                            if *d != dims {
                                return Err(Error::tensor(&a.tensors.origin, k, format!("updates a {}x{} weight, another adapter a {}x{} one", dims.0, dims.1, d.0, d.1)));
                            }
                        }
                        modules.insert(m.to_string(), dims);
                    }
                }
            }
            let cat_ok = matches!(recipe.method, Method::Linear | Method::TaskArithmetic);
            if output == LoraOutput::Cat && !cat_ok {
                return Err(Error::invalid(format!(
                    "--lora-output cat is exact only for linear and task-arithmetic merges, not {}; use svd or full",
                    recipe.method.name()
                )));
            }
            let max_r = configs.iter().map(|c| c.r).max().unwrap();
            let rank = match output {
                LoraOutput::Svd(r) => r.unwrap_or(max_r),
                LoraOutput::Cat => configs.iter().map(|c| c.r).sum(),
                LoraOutput::Full => max_r,
            };
            for (m, &(out_d, in_d)) in &modules {
                let mut dws: Vec<Vec<f32>> = Vec::new();
                for (a, c) in inputs.iter().zip(&configs) {
                    dws.push(delta_w(a, m, c.scaling(), out_d, in_d)?);
                }
                if output == LoraOutput::Cat {
                    let s = recipe.settings_for(m);
                    let div = if recipe.method == Method::Linear && s.normalize { s.weights.iter().sum::<f32>() } else { 1.0 };
                    let mut a_rows = Vec::new();
                    let mut b_cols: Vec<Vec<f32>> = vec![Vec::new(); out_d];
                    for (i, (a, c)) in inputs.iter().zip(&configs).enumerate() {
                        let coef = s.weights[i] / div * c.scaling();
                        match (a.tensors.tensors.get(&format!("{m}.lora_A.weight")), a.tensors.tensors.get(&format!("{m}.lora_B.weight"))) {
                            (Some(at), Some(bt)) => {
                                a_rows.extend(at.data.iter().map(|v| v * coef));
                                for (o, row) in b_cols.iter_mut().zip(bt.data.chunks(c.r)) {
                                    o.extend_from_slice(row);
                                }
                            }
                            _ => {
                                a_rows.extend(std::iter::repeat_n(0.0, c.r * in_d));
                                for o in b_cols.iter_mut() {
                                    o.extend(std::iter::repeat_n(0.0, c.r));
                                }
                            }
                        }
                    }
                    body.insert(format!("{m}.lora_A.weight"), HostTensor::new(vec![rank, in_d], a_rows));
                    body.insert(format!("{m}.lora_B.weight"), HostTensor::new(vec![out_d, rank], b_cols.concat()));
                    continue;
                }
                let refs: Vec<&[f32]> = dws.iter().map(|d| d.as_slice()).collect();
                let merged = merge_host(recipe, dev, m, &refs, &[out_d, in_d], None, None).await?;
                match output {
                    LoraOutput::Full => {
                        deltas.push((format!("{m}.weight"), HostTensor::new(vec![out_d, in_d], merged)))
                    }
                    _ => {
                        let a64: Vec<f64> = merged.iter().map(|&v| v as f64).collect();
                        let (b, vt, err) = linalg::truncated_svd(&a64, out_d, in_d, rank, 0x5eed);
                        let k = vt.len() / in_d;
                        body.insert(format!("{m}.lora_A.weight"), HostTensor::new(vec![k, in_d], vt.iter().map(|&v| v as f32).collect()));
                        body.insert(format!("{m}.lora_B.weight"), HostTensor::new(vec![out_d, k], b.iter().map(|&v| v as f32).collect()));
                        svd_errors.push((m.clone(), err));
                    }
                }
            }
            // The merged adapter: scaling 1 (alpha = r), over every target any input had.
            let mut targets = Vec::new();
            for c in &configs {
                for t in &c.targets {
                    if !targets.contains(t) {
                        targets.push(*t);
                    }
                }
            }
            method = PeftMethod::Lora(LoraConfig::new(rank, rank as f32, &targets));
        }
        PeftMethod::Ia3(_) => {
            merge_params(recipe, dev, inputs, &mut body, &Base::Constant(1.0), None).await?;
        }
        _ if recipe.method == Method::Linear => {
            merge_params(recipe, dev, inputs, &mut body, &Base::Zeros, None).await?;
        }
        // Whole weights (full fine-tunes) and biases (BitFit): task vectors of the base model's own.
        PeftMethod::Full(_) | PeftMethod::Bitfit(_) => {
            let base = base.ok_or_else(|| {
                Error::invalid(format!(
                    "{} adapters merge as task vectors of the base model: its weights are needed for {}",
                    first.method.name(),
                    recipe.method.name()
                ))
            })?;
            merge_params(recipe, dev, inputs, &mut body, &Base::Model(base), None).await?;
        }
        m => {
            return Err(Error::invalid(format!(
                "{} adapters merge with `linear` only (their parameters are not task vectors of a base); LoRA, (IA)³, BitFit and full fine-tunes take every method",
                m.name()
            )))
        }
    }
    // Heads: averaged with the weights when the labels agree, else one adapter per task.
    let same_labels = inputs.iter().all(|a| a.labels == first.labels);
    let mut adapters = Vec::new();
    let heads = if same_labels {
        let s = recipe.settings_for(HEAD_W);
        let sum: f32 = s.weights.iter().sum();
        for key in [HEAD_W, HEAD_B] {
            let shape = first
                .tensors
                .tensors
                .get(key)
                .map(|t| t.shape.clone())
                .ok_or_else(|| Error::tensor(&first.tensors.origin, key, "missing"))?;
            let mut data = vec![0.0f32; shape.iter().product()];
            for (a, &w) in inputs.iter().zip(&s.weights) {
                let t = a.tensors.tensors.get(key).ok_or_else(|| Error::tensor(&a.tensors.origin, key, "missing"))?;
                data.iter_mut().zip(&t.data).for_each(|(o, v)| *o += w / sum * v);
            }
            body.insert(key, HostTensor::new(shape, data));
        }
        adapters.push(AdapterFiles { method: method.clone(), tensors: body, ..first.clone() });
        "merged"
    } else {
        for a in inputs {
            let mut t = body.clone();
            for key in [HEAD_W, HEAD_B] {
                t.insert(
                    key,
                    a.tensors
                        .tensors
                        .get(key)
                        .cloned()
                        .ok_or_else(|| Error::tensor(&a.tensors.origin, key, "missing"))?,
                );
            }
            adapters.push(AdapterFiles { method: method.clone(), tensors: t, ..a.clone() });
        }
        "kept apart"
    };
    Ok(MergedAdapters { adapters, deltas, svd_errors, heads })
}

/// ΔW = s·B·A (out × in) of module `m` in adapter `a`, zero where it has none.
pub fn delta_w(a: &AdapterFiles, m: &str, scaling: f32, out_d: usize, in_d: usize) -> Result<Vec<f32>> {
    let mut d = vec![0.0f32; out_d * in_d];
    let (Some(at), Some(bt)) =
        (a.tensors.tensors.get(&format!("{m}.lora_A.weight")), a.tensors.tensors.get(&format!("{m}.lora_B.weight")))
    else {
        return Ok(d);
    };
    let r = at.shape[0];
    for o in 0..out_d {
        for k in 0..r {
            let b = bt.data[o * r + k] as f64 * scaling as f64;
            if b != 0.0 {
                for (x, &av) in d[o * in_d..(o + 1) * in_d].iter_mut().zip(&at.data[k * in_d..(k + 1) * in_d]) {
                    *x += (b * av as f64) as f32;
                }
            }
        }
    }
    Ok(d)
}

/// What an adapter's parameters are task vectors of.
enum Base<'a> {
    /// Zeros (or no base: `linear`, Fisher).
    Zeros,
    /// A constant: ones for (IA)³ scales.
    Constant(f32),
    /// The base model's own tensors (full fine-tunes, BitFit biases), by the adapter's key less
    /// `base_model.model.` and, where the file lacks it, the architecture's prefix (`bert.`).
    Model(&'a NamedTensors),
}

impl Base<'_> {
    fn values(&self, key: &str, shape: &[usize]) -> Result<Option<std::borrow::Cow<'_, [f32]>>> {
        let n = shape.iter().product();
        match self {
            Base::Zeros => Ok(None),
            Base::Constant(v) => Ok(Some(vec![*v; n].into())),
            Base::Model(m) => Ok(Some(base_tensor(m, key, shape, "the adapters")?.data.as_slice().into())),
        }
    }
}

/// The base model's tensor that an adapter key trains: the key less `base_model.model.` and, where
/// the checkpoint lacks it, the architecture's prefix (`bert.`); its shape must be `shape`.
pub fn base_tensor<'a>(base: &'a NamedTensors, key: &str, shape: &[usize], what: &str) -> Result<&'a HostTensor> {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    let t = base
        .tensors
        .get(k)
        .or_else(|| k.split_once('.').and_then(|(_, rest)| base.tensors.get(rest)))
        .ok_or_else(|| Error::tensor(&base.origin, k, format!("missing from the base model ({what} train it)")))?;
    if t.shape != shape {
        return Err(Error::tensor(
            &base.origin,
            k,
            format!("has shape {:?} in the base model, {shape:?} in {what}", t.shape),
        ));
    }
    Ok(t)
}

/// Every non-head tensor merged by name (same names and shapes in every input) over `base`.
async fn merge_params(
    recipe: &Recipe,
    dev: &Device,
    inputs: &[AdapterFiles],
    body: &mut NamedTensors,
    base: &Base<'_>,
    fishers: Option<&[NamedTensors]>,
) -> Result<()> {
    let first = &inputs[0];
    for (k, t) in &first.tensors.tensors {
        if k == HEAD_W || k == HEAD_B {
            continue;
        }
        let mut xs = Vec::new();
        for a in inputs {
            let o = a.tensors.tensors.get(k).ok_or_else(|| {
                Error::tensor(&a.tensors.origin, k, format!("missing (it is in {})", first.tensors.origin))
            })?;
            if o.shape != t.shape {
                return Err(Error::tensor(
                    &a.tensors.origin,
                    k,
                    format!("has shape {:?}, {} has {:?}", o.shape, first.tensors.origin, t.shape),
                ));
            }
            xs.push(o.data.as_slice());
        }
        let b = base.values(k, &t.shape)?;
        let merged = merge_host(recipe, dev, k, &xs, &t.shape, b.as_deref(), fishers).await?;
        body.insert(k.clone(), HostTensor::new(t.shape.clone(), merged));
    }
    Ok(())
}

/// PEFT's `add_weighted_adapter` for linear / ties / dare / magnitude-prune: A and B merged
/// separately with weights sign(c)√|c| (A) and √|c| (B), c = wᵢ·sᵢ; the ranks must agree. The new
/// adapter keeps rank r with alpha = r.
async fn merge_lora_ab(recipe: &Recipe, dev: &Device, inputs: &[AdapterFiles], body: &mut NamedTensors) -> Result<()> {
    let first = &inputs[0];
    let PeftMethod::Lora(c0) = &first.method else { unreachable!() };
    let mut r2 = recipe.clone();
    r2.semantics = Semantics::Peft;
    if recipe.method == Method::Linear {
        r2.method = Method::TaskArithmetic;
    }
    for (k, t) in &first.tensors.tensors {
        let is_a = k.ends_with(".lora_A.weight");
        if !is_a && !k.ends_with(".lora_B.weight") {
            continue;
        }
        let s = recipe.settings_for(k);
        let mut xs = Vec::new();
        let mut r3 = r2.clone();
        for (i, a) in inputs.iter().enumerate() {
            let PeftMethod::Lora(c) = &a.method else { unreachable!() };
            if c.r != c0.r {
                return Err(Error::file(
                    &a.tensors.origin,
                    format!(
                        "rank {} differs from {}'s {}: A/B-separate merging needs equal ranks",
                        c.r, first.tensors.origin, c0.r
                    ),
                ));
            }
            let cw = s.weights[i] * c.scaling();
            let w = if is_a { cw.signum() * cw.abs().sqrt() } else { cw.abs().sqrt() };
            r3.models[i].insert("weight".into(), super::params::Setting::Number(w as f64));
            xs.push(
                a.tensors.tensors.get(k).ok_or_else(|| Error::tensor(&a.tensors.origin, k, "missing"))?.data.as_slice(),
            );
        }
        let merged = merge_host(&r3, dev, k, &xs, &t.shape, None, None).await?;
        body.insert(k.clone(), HostTensor::new(t.shape.clone(), merged));
    }
    Ok(())
}
