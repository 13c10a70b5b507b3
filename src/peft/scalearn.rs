//! ScaLearn (Frohmann et al., "ScaLearn: Simple and Highly Parameter-Efficient Task Transfer by
//! Learning to Scale"): S frozen source adapters, and per site the combination Σₛ ωₛ ⊙ aₛ(h) of their
//! outputs (the up-projection output, before the residual) with learned scales ω — a vector of the
//! output width per source (ScaLearn), one scalar per source (ScaLearnUniform), or either shared by
//! every layer (ScaLearn++, ScaLearnUniform++) — plus a fresh classification head. As in the paper's
//! code: ω starts at N(2/S, 0.001), dropout 0.3 on ω while training, learning rate 6e-3.
//!
//! Sources are bottleneck adapters (the paper's Pfeiffer adapters, or Houlsby ones: every site of the
//! sources is combined) or LoRA adapters, where ω scales each source's ΔW output at each target:
//! y = x Wᵀ + Σₛ ωₛ ⊙ (sₛ · x Aₛᵀ Bₛᵀ). The target task's own adapter may be one of the sources.
//!
//! Keys: `….{site}.scalearn.omega` (S, width) or (S, 1) per layer and site, or
//! `base_model.model.scalearn.{site}.omega` for the shared variants. The sources' tensors travel in the
//! same file under `localtune.scalearn.source.{i}.` so that a saved folder predicts on its own.

use std::sync::Arc;

use super::adapter::{adapter_parent, Bottleneck};
use super::{layer_key, peft_prefix, Method, MethodKind, MethodOptions};
use crate::error::{Error, Result};
use crate::model::arch::Activation;
use crate::model::encoder::{linear_dx_acc, Encoder};
use crate::model::hooks::{site, Branch, Cx, Hook, Saved};
use crate::model::weights::NamedTensors;
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::ops::{self, scalearn, MatmulDesc};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The shape of ω per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Omega {
    /// One scale per output feature (ScaLearn).
    Vector,
    /// One scale per source (ScaLearnUniform).
    Scalar,
}

/// What a saved ScaLearn adapter records of each source.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// The source's folder or file name, as given.
    pub name: String,
    /// The source's own method (adapter or LoRA) and settings.
    pub config: Method,
    pub labels: Vec<String>,
    /// The architecture the source was made for.
    pub arch: String,
}

/// A source adapter read from its files: name, method, labels, architecture, tensors.
pub type SourceFiles = (String, Method, Vec<String>, String, NamedTensors);

/// The sources' tensors on the host (not written to `localtune.json`: they travel in the weights file).
#[derive(Clone, Default)]
pub struct Loaded(pub Option<Arc<Vec<NamedTensors>>>);

impl PartialEq for Loaded {
    fn eq(&self, o: &Self) -> bool {
        self.0.as_ref().map(|v| v.len()) == o.0.as_ref().map(|v| v.len())
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sources loaded", self.0.as_ref().map_or(0, |v| v.len()))
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaLearnConfig {
    pub omega: Omega,
    /// ScaLearn++: one ω per site, shared by every layer.
    pub shared: bool,
    /// Dropout on ω while training.
    pub dropout: f32,
    pub sources: Vec<SourceInfo>,
    #[serde(skip)]
    pub loaded: Loaded,
}

/// Key prefix of the sources' tensors inside a ScaLearn adapter's weights file.
pub const SOURCE_PREFIX: &str = "localtune.scalearn.source.";

impl ScaLearnConfig {
    /// The method name of these settings.
    pub fn name(&self) -> &'static str {
        match (self.omega, self.shared) {
            (Omega::Vector, false) => "scalearn",
            (Omega::Scalar, false) => "scalearn-uniform",
            (Omega::Vector, true) => "scalearn++",
            (Omega::Scalar, true) => "scalearn-uniform++",
        }
    }

    /// These settings with `sources` (name, method, labels, tensors) attached; checks that they can
    /// be combined: one kind (all bottleneck adapters or all LoRA) at the same sites, made for a model
    /// of `arch`. The error names the source at fault.
    pub fn with_sources(mut self, sources: Vec<SourceFiles>) -> Result<Self> {
        if sources.is_empty() {
            return Err(Error::invalid(format!("{} needs at least one source adapter (--sources)", self.name())));
        }
        let mut infos = vec![];
        let mut tensors = vec![];
        let first_sites = sites_of(&sources[0].1).map_err(|e| Error::file(&sources[0].0, e.to_string()))?;
        for (name, method, labels, arch, t) in sources {
            let sites = sites_of(&method).map_err(|e| Error::file(&name, e.to_string()))?;
            if sites != first_sites {
                return Err(Error::file(
                    &name,
                    format!(
                        "this source is a {} at {}, the first source a {} at {}: ScaLearn combines sources of one kind at the same sites",
                        method.name(),
                        describe(&sites),
                        infos.first().map_or("?", |i: &SourceInfo| i.config.name()),
                        describe(&first_sites)
                    ),
                ));
            }
            infos.push(SourceInfo { name, config: method, labels, arch });
            tensors.push(t);
        }
        self.sources = infos;
        self.loaded = Loaded(Some(Arc::new(tensors)));
        Ok(self)
    }

    /// The sources' tensors under `SOURCE_PREFIX`, for the weights file.
    pub fn pack_sources(&self, out: &mut NamedTensors) -> Result<()> {
        let loaded = self.loaded.0.as_ref().ok_or_else(|| Error::invalid("ScaLearn adapter without its sources"))?;
        for (i, t) in loaded.iter().enumerate() {
            for (k, v) in &t.tensors {
                out.insert(format!("{SOURCE_PREFIX}{i}.{k}"), v.clone());
            }
        }
        Ok(())
    }

    /// Takes the sources' tensors out of a weights file read back.
    pub fn unpack_sources(&mut self, all: &mut NamedTensors) -> Result<()> {
        let mut tensors: Vec<NamedTensors> = (0..self.sources.len())
            .map(|i| NamedTensors { origin: format!("{} (source {i})", all.origin), ..Default::default() })
            .collect();
        let keys: Vec<String> = all.tensors.keys().filter(|k| k.starts_with(SOURCE_PREFIX)).cloned().collect();
        for k in keys {
            let rest = &k[SOURCE_PREFIX.len()..];
            let (i, key) = rest.split_once('.').unwrap_or((rest, ""));
            let slot = i.parse::<usize>().ok().and_then(|i| tensors.get_mut(i));
            let Some(slot) = slot else {
                return Err(Error::tensor(
                    &all.origin,
                    &k,
                    format!("names a source beyond the {} recorded", self.sources.len()),
                ));
            };
            let t = all.tensors.remove(&k).unwrap();
            slot.insert(key.to_string(), t);
        }
        if let Some((i, _)) = tensors.iter().enumerate().find(|(_, t)| t.tensors.is_empty()) {
            return Err(Error::file(
                &all.origin,
                format!("the tensors of source {i} (`{}`) are missing", self.sources[i].name),
            ));
        }
        self.loaded = Loaded(Some(Arc::new(tensors)));
        Ok(())
    }
}

/// Where a source acts: the branches of a bottleneck adapter or the targets of a LoRA.
#[derive(Clone, Debug, PartialEq)]
enum Sites {
    Branches(Vec<Branch>),
    Targets(Vec<Target>),
}

fn sites_of(m: &Method) -> Result<Sites> {
    match m {
        Method::Adapter(c) => Ok(Sites::Branches(match c.placement {
            super::Placement::Houlsby => vec![Branch::AttnOutput, Branch::FfnOutput],
            super::Placement::Pfeiffer => vec![Branch::FfnOutput],
        })),
        Method::Lora(c) => Ok(Sites::Targets(c.targets.clone())),
        other => Err(Error::invalid(format!(
            "a {} adapter cannot be a ScaLearn source: sources are bottleneck adapters (`adapter`) or LoRA",
            other.name()
        ))),
    }
}

fn describe(s: &Sites) -> String {
    match s {
        Sites::Branches(b) => format!("{b:?}"),
        Sites::Targets(t) => t.iter().map(|t| t.cli_name()).collect::<Vec<_>>().join(","),
    }
}

/// One site of ω: a branch or a LoRA target, with its index among the dropout sites.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Site {
    Branch(Branch),
    Target(Target),
}

impl Site {
    fn index(self) -> usize {
        match self {
            Site::Branch(b) => b as usize,
            Site::Target(t) => t.index(),
        }
    }

    /// The dropout site of ω here in layer `l` (ids 9–14 of the layer, free of the encoder's).
    fn dropout_site(self, l: usize) -> u32 {
        site::layer(l, 9 + self.index() as u32)
    }
}

impl MethodKind for ScaLearnConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        let (omega, shared) = match o.method.as_str() {
            "scalearn" => (Omega::Vector, false),
            "scalearn-uniform" => (Omega::Scalar, false),
            "scalearn++" => (Omega::Vector, true),
            "scalearn-uniform++" => (Omega::Scalar, true),
            m => return Err(Error::invalid(format!("`{m}` is not a ScaLearn variant"))),
        };
        if !(0.0..1.0).contains(&o.scalearn_dropout) {
            return Err(Error::invalid(format!("ScaLearn dropout {} is not in [0, 1)", o.scalearn_dropout)));
        }
        Ok(ScaLearnConfig { omega, shared, dropout: o.scalearn_dropout, sources: vec![], loaded: Loaded::default() })
    }

    fn default_lr(&self) -> f32 {
        6e-3
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let loaded =
            self.loaded.0.as_ref().filter(|l| !l.is_empty()).ok_or_else(|| {
                Error::invalid(format!("{} needs at least one source adapter (--sources)", self.name()))
            })?;
        let s = loaded.len();
        let sites = sites_of(&self.sources[0].config)?;
        let mut sources = Vec::with_capacity(s);
        for (info, tensors) in self.sources.iter().zip(loaded.iter()) {
            sources.push(Source::build(enc, info, tensors, &sites)?);
        }
        let sites: Vec<Site> = match &sites {
            Sites::Branches(b) => b.iter().map(|&b| Site::Branch(b)).collect(),
            Sites::Targets(t) => t.iter().map(|&t| Site::Target(t)).collect(),
        };
        let (c, f) = (enc.config.hidden_size, enc.config.intermediate_size);
        let width = |site: Site| match (self.omega, site) {
            (Omega::Scalar, _) => 1,
            (Omega::Vector, Site::Branch(_)) => c,
            (Omega::Vector, Site::Target(t)) => t.dims(c, f).0,
        };
        let mut init = |params: &mut ParamSet, name: String, site: Site| -> Result<ParamId> {
            let w = width(site);
            let values: Vec<f32> = rng.vec_normal(s * w, 0.001).into_iter().map(|v| v + 2.0 / s as f32).collect();
            params.push(name, enc.device.weight(&values, &[s, w])?)
        };
        let site_name = |l: Option<usize>, site: Site| -> String {
            match (l, site) {
                (Some(l), Site::Branch(b)) => format!("{}.scalearn.omega", adapter_parent(&enc.desc, l, b)),
                (Some(l), Site::Target(t)) => {
                    format!("{}.{}.scalearn.omega", layer_key(&enc.desc, l), enc.desc.module(t))
                }
                (None, Site::Branch(b)) => {
                    let t = if b == Branch::AttnOutput { Target::AttnOut } else { Target::Output };
                    format!("{}scalearn.{}.omega", peft_prefix(&enc.desc), super::parent(enc.desc.module(t)))
                }
                (None, Site::Target(t)) => format!("{}scalearn.{}.omega", peft_prefix(&enc.desc), enc.desc.module(t)),
            }
        };
        let mut omega = vec![vec![]; enc.layers.len()];
        if self.shared {
            let shared: Vec<(Site, ParamId)> = sites
                .iter()
                .map(|&site| Ok((site, init(params, site_name(None, site), site)?)))
                .collect::<Result<_>>()?;
            for layer in omega.iter_mut() {
                *layer = shared.clone();
            }
        } else {
            for (l, layer) in omega.iter_mut().enumerate() {
                for &site in &sites {
                    layer.push((site, init(params, site_name(Some(l), site), site)?));
                }
            }
        }
        Ok(vec![Box::new(ScaLearn { omega, dropout: self.dropout, sources })])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_SCALEARN", None)
    }
}

/// A frozen source on the device.
struct Source {
    params: ParamSet,
    kind: SourceKind,
}

enum SourceKind {
    /// A bottleneck per layer and branch.
    Adapter { activation: Activation, scaling: f32, at: Vec<Vec<(Branch, Bottleneck)>> },
    /// (A, B) per layer and target.
    Lora { scaling: f32, at: Vec<[Option<(ParamId, ParamId)>; 6]> },
}

impl Source {
    fn build(enc: &Encoder, info: &SourceInfo, tensors: &NamedTensors, sites: &Sites) -> Result<Source> {
        let origin = &info.name;
        if info.arch != enc.desc.arch {
            return Err(Error::file(
                origin,
                format!("this source was made for a {} model, not {}", info.arch, enc.desc.arch),
            ));
        }
        let mut host = NamedTensors { origin: origin.clone(), ..Default::default() };
        for (k, v) in &tensors.tensors {
            if !k.starts_with("base_model.model.classifier.") {
                host.insert(k.clone(), v.clone());
            }
        }
        let (c, f) = (enc.config.hidden_size, enc.config.intermediate_size);
        let shape_of = |key: &str| host.tensors.get(key).map(|t| t.shape.clone());
        let need = |key: String, want: Option<&[usize]>| -> Result<String> {
            match (shape_of(&key), want) {
                (None, _) => Err(Error::tensor(
                    origin,
                    &key,
                    "missing: this source has no adapter there (every source needs every layer and site)",
                )),
                (Some(s), Some(w)) if s != w => Err(Error::tensor(
                    origin,
                    &key,
                    format!("has shape {s:?}, expected {w:?}: the source was made for another base model"),
                )),
                _ => Ok(key),
            }
        };
        // Check names and shapes before anything moves to the device.
        let layers = enc.layers.len();
        let mut names = vec![];
        match (&info.config, sites) {
            (Method::Adapter(_), Sites::Branches(branches)) => {
                for l in 0..layers {
                    for &b in branches {
                        let p = format!("{}.adapter", adapter_parent(&enc.desc, l, b));
                        let down = need(format!("{p}.down.weight"), None)?;
                        let m = shape_of(&down).unwrap()[0];
                        need(down.clone(), Some(&[m, c]))?;
                        names.push(need(format!("{p}.down.bias"), Some(&[m]))?);
                        names.push(need(format!("{p}.up.weight"), Some(&[c, m]))?);
                        names.push(need(format!("{p}.up.bias"), Some(&[c]))?);
                        names.push(down);
                    }
                }
            }
            (Method::Lora(cfg), Sites::Targets(targets)) => {
                for l in 0..layers {
                    for &t in targets {
                        let (out, inp) = t.dims(c, f);
                        let p = format!("{}.{}", layer_key(&enc.desc, l), enc.desc.module(t));
                        names.push(need(format!("{p}.lora_A.weight"), Some(&[cfg.r, inp]))?);
                        names.push(need(format!("{p}.lora_B.weight"), Some(&[out, cfg.r]))?);
                    }
                }
            }
            _ => return Err(Error::file(origin, "source of another kind than the first")),
        }
        let params = ParamSet::from_host(&host, &enc.device)?;
        let id = |k: String| params.id(&k).expect("checked above");
        let kind = match (&info.config, sites) {
            (Method::Adapter(cfg), Sites::Branches(branches)) => SourceKind::Adapter {
                activation: cfg.activation,
                scaling: cfg.scaling,
                at: (0..layers)
                    .map(|l| {
                        branches
                            .iter()
                            .map(|&b| {
                                let p = format!("{}.adapter", adapter_parent(&enc.desc, l, b));
                                let bn = Bottleneck {
                                    down_w: id(format!("{p}.down.weight")),
                                    down_b: id(format!("{p}.down.bias")),
                                    up_w: id(format!("{p}.up.weight")),
                                    up_b: id(format!("{p}.up.bias")),
                                };
                                (b, bn)
                            })
                            .collect()
                    })
                    .collect(),
            },
            (Method::Lora(cfg), Sites::Targets(targets)) => SourceKind::Lora {
                scaling: cfg.scaling(),
                at: (0..layers)
                    .map(|l| {
                        let mut at = [None; 6];
                        for &t in targets {
                            let p = format!("{}.{}", layer_key(&enc.desc, l), enc.desc.module(t));
                            at[t.index()] = Some((id(format!("{p}.lora_A.weight")), id(format!("{p}.lora_B.weight"))));
                        }
                        at
                    })
                    .collect(),
            },
            _ => unreachable!("checked above"),
        };
        Ok(Source { params, kind })
    }
}

/// ScaLearn's hooks: ω per layer and site (the same ids in every layer when shared), the sources.
struct ScaLearn {
    omega: Vec<Vec<(Site, ParamId)>>,
    dropout: f32,
    sources: Vec<Source>,
}

impl ScaLearn {
    fn omega_at(&self, l: usize, site: Site) -> Option<ParamId> {
        self.omega[l].iter().find(|(s, _)| *s == site).map(|(_, id)| *id)
    }

    /// ω as this step uses it: with dropout while training.
    fn omega_eff(&self, cx: Cx, id: ParamId, site: Site) -> Result<Tensor> {
        let w = &cx.params[id];
        match cx.dropout {
            Some(d) if self.dropout > 0.0 => ops::dropout(w, self.dropout, d.seed(site.dropout_site(cx.layer))),
            _ => Ok(w.clone()),
        }
    }

    /// grads[id] += dω for the outputs `a` (one per source) and their gradient `dout`, through the
    /// dropout on ω.
    fn omega_backward(
        &self,
        cx: Cx,
        id: ParamId,
        site: Site,
        dout: &Tensor,
        a: &[Tensor],
        g: &mut ParamSet,
    ) -> Result<()> {
        match cx.dropout {
            Some(d) if self.dropout > 0.0 => {
                let mut dw = dout.device().zeros(cx.params[id].shape())?;
                for (s, a) in a.iter().enumerate() {
                    scalearn::grad(&mut dw, dout, a, s)?;
                }
                let dw = ops::dropout(&dw, self.dropout, d.seed(site.dropout_site(cx.layer)))?;
                ops::add_into(&mut g[id], &dw, 1.0)
            }
            _ => {
                for (s, a) in a.iter().enumerate() {
                    scalearn::grad(&mut g[id], dout, a, s)?;
                }
                Ok(())
            }
        }
    }
}

/// s · x Aᵀ Bᵀ: a LoRA source's output.
fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, scaling: f32) -> Result<Tensor> {
    let u = ops::linear(x, a, None)?;
    let (rows, out, r) = (u.dim(0), b.dim(0), b.dim(1));
    let mut y = x.device().uninit("scalearn_lora", &[rows, out])?;
    let mut desc = MatmulDesc::contiguous(1, rows, out, r, false, true);
    desc.alpha = scaling;
    ops::matmul_into(&mut y, &u, b, None, &desc)?;
    Ok(y)
}

impl Hook for ScaLearn {
    fn lowest_layer(&self) -> Option<usize> {
        (!self.omega.is_empty()).then_some(0)
    }

    /// Bottleneck sources: out += Σₛ ωₛ ⊙ aₛ(input). Saved: [ω, a_1..a_S, (z, act(z)) per source, input].
    fn branch(&self, cx: Cx, at: Branch, input: &Tensor, out: &mut Tensor) -> Result<Option<Saved>> {
        let site = Site::Branch(at);
        let Some(id) = self.omega_at(cx.layer, site) else { return Ok(None) };
        let w = self.omega_eff(cx, id, site)?;
        let mut outs = vec![w.clone()];
        let mut inner = vec![];
        for (s, src) in self.sources.iter().enumerate() {
            let SourceKind::Adapter { activation, scaling, at: sites } = &src.kind else { return Ok(None) };
            let bn = &sites[cx.layer].iter().find(|(b, _)| *b == at).expect("checked at build").1;
            let (a, saved) = bn.forward(&src.params, *activation, *scaling, input)?;
            scalearn::scale(Some(out), &a, &w, s)?;
            outs.push(a);
            inner.extend([saved[1].clone(), saved[2].clone()]);
        }
        outs.extend(inner);
        outs.push(input.clone());
        Ok(Some(outs))
    }

    fn branch_backward(
        &self,
        cx: Cx,
        at: Branch,
        saved: &Saved,
        dout: &Tensor,
        dinput: &mut Tensor,
        grads: &mut ParamSet,
    ) -> Result<()> {
        let site = Site::Branch(at);
        let id = self.omega_at(cx.layer, site).expect("a saved branch has its ω");
        let n = self.sources.len();
        let (w, a, input) = (&saved[0], &saved[1..1 + n], saved.last().unwrap());
        self.omega_backward(cx, id, site, dout, a, grads)?;
        for (s, src) in self.sources.iter().enumerate() {
            let SourceKind::Adapter { activation, scaling, at: sites } = &src.kind else { unreachable!() };
            let bn = &sites[cx.layer].iter().find(|(b, _)| *b == at).unwrap().1;
            let da = scalearn::scale(None, dout, w, s)?.unwrap();
            let inner = vec![input.clone(), saved[1 + n + 2 * s].clone(), saved[2 + n + 2 * s].clone()];
            bn.backward(&src.params, *activation, *scaling, &inner, &da, dinput, None)?;
        }
        Ok(())
    }

    /// LoRA sources: y += Σₛ ωₛ ⊙ ΔWₛ(x). Saved: [ω, Δ_1..Δ_S].
    fn linear_output(&self, cx: Cx, t: Target, x: &Tensor, y: &mut Tensor) -> Result<Option<Saved>> {
        let site = Site::Target(t);
        let Some(id) = self.omega_at(cx.layer, site) else { return Ok(None) };
        let w = self.omega_eff(cx, id, site)?;
        let mut saved = vec![w.clone()];
        for (s, src) in self.sources.iter().enumerate() {
            let SourceKind::Lora { scaling, at } = &src.kind else { return Ok(None) };
            let (ia, ib) = at[cx.layer][t.index()].expect("checked at build");
            let d = lora_delta(x, &src.params[ia], &src.params[ib], *scaling)?;
            scalearn::scale(Some(y), &d, &w, s)?;
            saved.push(d);
        }
        Ok(Some(saved))
    }

    fn linear_output_backward(
        &self,
        cx: Cx,
        t: Target,
        saved: &Saved,
        dy: &Tensor,
        dx: Option<&mut Tensor>,
        grads: &mut ParamSet,
    ) -> Result<Option<Tensor>> {
        let site = Site::Target(t);
        let id = self.omega_at(cx.layer, site).expect("a saved output has its ω");
        let w = &saved[0];
        self.omega_backward(cx, id, site, dy, &saved[1..], grads)?;
        if let Some(dx) = dx {
            for (s, src) in self.sources.iter().enumerate() {
                let SourceKind::Lora { scaling, at } = &src.kind else { unreachable!() };
                let (ia, ib) = at[cx.layer][t.index()].unwrap();
                let (a, b) = (&src.params[ia], &src.params[ib]);
                let dd = scalearn::scale(None, dy, w, s)?.unwrap();
                // du = s · dd B, dx += du A
                let (rows, r) = (dd.numel() / b.dim(0), b.dim(1));
                let mut du = dy.device().uninit("scalearn_lora_backward", &[rows, r])?;
                let mut desc = MatmulDesc::contiguous(1, rows, r, b.dim(0), false, false);
                desc.alpha = *scaling;
                ops::matmul_into(&mut du, &dd, b, None, &desc)?;
                linear_dx_acc(dx, &du, a)?;
            }
        }
        Ok(None)
    }
}
