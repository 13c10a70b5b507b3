//! Merging whole models tensor by tensor: each input (and the base, and each Fisher) is a source of
//! named tensors read one at a time, the merged tensor goes to a sink as soon as it is done, so the
//! memory held is about one tensor per input. `Recipe` says what applies where.

use std::collections::BTreeMap;

use super::params::{position, Setting};
use super::{merge_tensor, Method, Semantics, SignRule, TensorInputs, TensorSettings};
use crate::error::{Error, Result};
use crate::model::stream::Index;
use crate::model::weights::HostTensor;
use crate::tensor::{Device, Tensor};

/// Named tensors read one at a time.
pub trait TensorSource {
    fn index(&self) -> &Index;
    fn read(&mut self, name: &str) -> Result<HostTensor>;
}

/// A safetensors file whose bytes are in memory (the web app's files).
pub struct BytesSource {
    pub index: Index,
    pub bytes: Vec<u8>,
}

impl BytesSource {
    pub fn new(bytes: Vec<u8>, origin: &str) -> Result<BytesSource> {
        let index = Index::parse(&bytes, origin)?;
        if let Some(e) = index.entries.values().find(|e| index.data_start + e.end > bytes.len()) {
            return Err(Error::tensor(origin, &e.name, "data past the end of the file"));
        }
        Ok(BytesSource { index, bytes })
    }
}

impl TensorSource for BytesSource {
    fn index(&self) -> &Index {
        &self.index
    }
    fn read(&mut self, name: &str) -> Result<HostTensor> {
        self.index.read_from_bytes(&self.bytes, name)
    }
}

/// A safetensors file read by byte ranges.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    pub index: Index,
    file: std::fs::File,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    pub fn open(path: &std::path::Path) -> Result<FileSource> {
        let index = Index::open(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
        Ok(FileSource { index, file })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for FileSource {
    fn index(&self) -> &Index {
        &self.index
    }
    fn read(&mut self, name: &str) -> Result<HostTensor> {
        self.index.read_from_file(&mut self.file, name)
    }
}

/// What to merge how: the method, its settings per input model (weight, density, gamma, epsilon)
/// and global ones (any of those, and lambda, t, normalize, rescale, fisher_floor, temperature),
/// each possibly varying over layers and tensor names.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub method: Method,
    pub semantics: Semantics,
    pub sign: SignRule,
    pub seed: u32,
    /// Per input model, in input order.
    pub models: Vec<BTreeMap<String, Setting>>,
    pub global: BTreeMap<String, Setting>,
    /// Layers of the architecture (for positions over layers).
    pub layers: usize,
}

const PER_MODEL: &[&str] = &["weight", "density", "gamma", "epsilon"];
const GLOBAL: &[&str] =
    &["alpha", "lambda", "t", "normalize", "rescale", "fisher_floor", "temperature", "int8_mask", "filter_wise"];

impl Recipe {
    pub fn new(method: Method, inputs: usize, semantics: Semantics) -> Recipe {
        Recipe {
            method,
            semantics,
            sign: SignRule::Total,
            seed: 0,
            models: vec![BTreeMap::new(); inputs],
            global: BTreeMap::new(),
            layers: 1,
        }
    }

    /// Refuses setting names no method reads (a typo would otherwise be ignored).
    pub fn check_names(&self) -> Result<()> {
        for (i, m) in self.models.iter().enumerate() {
            if let Some(k) = m.keys().find(|k| !PER_MODEL.contains(&k.as_str())) {
                return Err(Error::invalid(format!(
                    "input {}: unknown per-model parameter `{k}` (one of {PER_MODEL:?})",
                    i + 1
                )));
            }
        }
        if let Some(k) = self.global.keys().find(|k| !PER_MODEL.contains(&k.as_str()) && !GLOBAL.contains(&k.as_str()))
        {
            return Err(Error::invalid(format!("unknown parameter `{k}` (one of {PER_MODEL:?}, {GLOBAL:?})")));
        }
        Ok(())
    }

    /// The settings for tensor `name`.
    pub fn settings_for(&self, name: &str) -> TensorSettings {
        let n = self.models.len();
        let t = position(name, self.layers);
        let mut s = TensorSettings::new(self.method, n, self.semantics);
        let global = |k: &str| self.global.get(k).and_then(|v| v.eval(name, t));
        let per = |i: usize, k: &str| self.models[i].get(k).and_then(|v| v.eval(name, t)).or_else(|| global(k));
        for i in 0..n {
            if let Some(w) = per(i, "weight") {
                s.weights[i] = w as f32;
            }
            if let Some(d) = per(i, "density") {
                s.density[i] = d as f32;
            }
        }
        // gamma and epsilon are per model in mergekit; one value per tensor here (the first input's).
        if let Some(g) = per(0, "gamma") {
            s.gamma = g as f32;
        }
        if let Some(e) = per(0, "epsilon") {
            s.epsilon = e as f32;
        }
        if let Some(v) = global("lambda") {
            s.lambda = v as f32;
        }
        if let Some(v) = global("t") {
            s.t = v as f32;
        }
        if let Some(v) = global("normalize") {
            s.normalize = v != 0.0;
        }
        if let Some(v) = global("rescale") {
            s.rescale = v != 0.0;
        }
        if let Some(v) = global("fisher_floor") {
            s.fisher_floor = v as f32;
        }
        if let Some(v) = global("temperature") {
            s.temperature = v as f32;
        }
        s.sign = self.sign;
        s.seed =
            self.seed ^ crate::cpu::hash32(name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)));
        s
    }
}

/// What a merge did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub tensors: usize,
    pub values: usize,
    /// Tensors whose stack was too large for the GPU's bindings, merged on the CPU device instead.
    pub on_cpu: Vec<String>,
}

/// The tensor names merged, with their shapes, checked across every source: the floating-point
/// tensors of the first input, which every input, the base and each Fisher must hold with the same
/// shape. Errors name the tensor and the input.
pub fn plan(
    base: Option<&dyn TensorSource>,
    inputs: &[&dyn TensorSource],
    fishers: &[&dyn TensorSource],
) -> Result<Vec<(String, Vec<usize>)>> {
    let first = inputs.first().ok_or_else(|| Error::invalid("no inputs to merge"))?.index();
    let names: Vec<(String, Vec<usize>)> = first.floats().map(|e| (e.name.clone(), e.shape.clone())).collect();
    for src in inputs.iter().skip(1).chain(base.iter()) {
        let idx = src.index();
        for (name, shape) in &names {
            match idx.entries.get(name) {
                None => return Err(Error::tensor(&idx.origin, name, format!("missing (it is in {})", first.origin))),
                Some(e) if &e.shape != shape => {
                    return Err(Error::tensor(
                        &idx.origin,
                        name,
                        format!("has shape {:?}, {} has {shape:?}", e.shape, first.origin),
                    ))
                }
                _ => {}
            }
        }
        if let Some(e) = idx.floats().find(|e| !names.iter().any(|(n, _)| *n == e.name)) {
            return Err(Error::tensor(
                &idx.origin,
                &e.name,
                format!("is not in {}: the inputs hold different tensors", first.origin),
            ));
        }
    }
    for f in fishers {
        let idx = f.index();
        for (name, shape) in &names {
            if let Some(e) = idx.entries.get(name) {
                if &e.shape != shape {
                    return Err(Error::tensor(
                        &idx.origin,
                        name,
                        format!("Fisher has shape {:?}, the weights {shape:?}", e.shape),
                    ));
                }
            }
        }
    }
    Ok(names)
}

/// Stacks one tensor of each source on `dev`.
fn stack(dev: &Device, srcs: &mut [&mut dyn TensorSource], name: &str, shape: &[usize]) -> Result<Tensor> {
    let mut data = Vec::with_capacity(srcs.len() * shape.iter().product::<usize>());
    for s in srcs.iter_mut() {
        data.extend(s.read(name)?.data);
    }
    let mut full = vec![srcs.len()];
    full.extend_from_slice(shape);
    dev.tensor_owned(data, &full)
}

/// Merges every tensor of `names` (from `plan`), handing each result to `sink` in order and calling
/// `progress(done, total)` after each. SLERP without a base interpolates from the first input.
#[allow(clippy::too_many_arguments)]
pub async fn merge_all(
    recipe: &Recipe,
    dev: &Device,
    names: &[(String, Vec<usize>)],
    mut base: Option<&mut dyn TensorSource>,
    inputs: &mut [&mut dyn TensorSource],
    fishers: &mut [&mut dyn TensorSource],
    grams: &[BTreeMap<String, HostTensor>],
    mut sink: impl FnMut(&str, &[usize], Vec<f32>) -> Result<()>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    recipe.check_names()?;
    if recipe.method.needs_base() && base.is_none() && recipe.method != Method::Slerp {
        return Err(Error::invalid(format!("{} needs a base model (--base)", recipe.method.name())));
    }
    if recipe.method == Method::Fisher && fishers.len() != inputs.len() {
        return Err(Error::invalid(format!(
            "Fisher merging needs one Fisher per input: {} for {} inputs",
            fishers.len(),
            inputs.len()
        )));
    }
    if recipe.method == Method::RegMean && grams.len() != inputs.len() {
        return Err(Error::invalid(format!(
            "RegMean needs local data for each input: {} for {} inputs",
            grams.len(),
            inputs.len()
        )));
    }
    let mut report = Report::default();
    for (done, (name, shape)) in names.iter().enumerate() {
        // RegMean: linear weights by the least-squares solve, the rest averaged below.
        if recipe.method == Method::RegMean && shape.len() == 2 {
            let gs: Option<Vec<&HostTensor>> = grams.iter().map(|g| super::regmean::gram_for(g, name)).collect();
            if let Some(gs) = gs {
                let ws: Vec<Vec<f32>> =
                    inputs.iter_mut().map(|s| s.read(name).map(|t| t.data)).collect::<Result<_>>()?;
                let refs: Vec<&[f32]> = ws.iter().map(|w| w.as_slice()).collect();
                let alpha =
                    recipe.global.get("alpha").and_then(|v| v.eval(name, position(name, recipe.layers))).unwrap_or(0.1);
                let values = super::regmean::solve(name, &refs, &gs, shape[0], shape[1], alpha)?;
                report.tensors += 1;
                report.values += values.len();
                sink(name, shape, values)?;
                progress(done + 1, names.len());
                continue;
            }
        }
        let s = recipe.settings_for(name);
        // A stack larger than the GPU can bind at once (4 inputs of a big embedding matrix on a
        // 128 MiB-binding adapter) is merged on the CPU device, the same ops in the same order.
        let stacked = (inputs.len() + 1) * shape.iter().product::<usize>();
        let cpu = Device::Cpu;
        let dev = if dev.fits(stacked) {
            dev
        } else {
            report.on_cpu.push(name.clone());
            &cpu
        };
        let (x, b, s) = if recipe.method == Method::Slerp {
            // v0 is the base (t = 0 gives it), v1 the one input; or the first of two inputs.
            let mut all: Vec<&mut dyn TensorSource> = Vec::new();
            if let Some(b) = base.as_deref_mut() {
                all.push(b);
            }
            for i in inputs.iter_mut() {
                all.push(&mut **i);
            }
            let mut s2 = TensorSettings::new(Method::Slerp, all.len(), recipe.semantics);
            s2.t = s.t;
            (stack(dev, &mut all, name, shape)?, None, s2)
        } else {
            let b = match base.as_deref_mut() {
                Some(b) => Some(dev.tensor_owned(b.read(name)?.data, shape)?),
                None => None,
            };
            (stack(dev, inputs, name, shape)?, b, s)
        };
        let f = if recipe.method == Method::Fisher {
            let mut data = Vec::new();
            for (i, fs) in fishers.iter_mut().enumerate() {
                if fs.index().entries.contains_key(name) {
                    data.extend(fs.read(name)?.data);
                } else {
                    // A tensor the Fisher left out (the head, by default): the λ-weighted average.
                    let _ = i;
                    data.extend(std::iter::repeat_n(1.0f32, shape.iter().product()));
                }
            }
            let mut full = vec![fishers.len()];
            full.extend_from_slice(shape);
            Some(dev.tensor_owned(data, &full)?)
        } else {
            None
        };
        let inputs_t = TensorInputs { name, models: &x, base: b.as_ref(), fisher: f.as_ref() };
        let out = merge_tensor(recipe.method, &s, &inputs_t).await?;
        let values = out.to_vec().await?;
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("{name}: the merge gave a non-finite value at index {bad}")));
        }
        report.tensors += 1;
        report.values += values.len();
        sink(name, shape, values)?;
        progress(done + 1, names.len());
    }
    Ok(report)
}
