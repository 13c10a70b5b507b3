//! Parameter-efficient fine-tuning methods, in the "unified view" of He et al. (2022): each method adds
//! a small set of parameters that modify a hidden state at one position of the frozen encoder.
//!
//! | method            | parameters per layer                       | where it acts                        |
//! |-------------------|--------------------------------------------|--------------------------------------|
//! | LoRA              | A (r, in), B (out, r) per target linear    | y += s · (drop(x) Aᵀ) Bᵀ              |
//! | (IA)³             | l_k (C), l_v (C), l_ff (F)                  | k ⊙ l_k, v ⊙ l_v, GELU(·) ⊙ l_ff      |
//! | bottleneck adapter| down (C/rf, C), up (C, C/rf) ×2            | h += up(act(down(h))) after attention and FFN (Houlsby) |
//! | parallel adapter  | down, up                                    | FFN(h1) += s · up(act(down(h1)))     |
//! | prefix tuning     | P_k (p, C), P_v (p, C)                      | keys and values get p learned rows   |
//! | BitFit            | every bias                                  | —                                    |
//! | head              | (classifier only)                           | —                                    |
//!
//! Every method also trains the classification head. Parameters are plain named tensors under
//! Hugging Face PEFT's key names (`base_model.model.…`), so saving, loading and merging read them alike.

pub mod format;

use crate::error::{Error, Result};
use crate::model::bert::{Bert, Linear};
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};

/// A linear layer of an encoder layer that LoRA can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Query,
    Key,
    Value,
    AttnOut,
    Intermediate,
    Output,
}

impl Target {
    pub const ALL: [Target; 6] =
        [Target::Query, Target::Key, Target::Value, Target::AttnOut, Target::Intermediate, Target::Output];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The module path inside `bert.encoder.layer.{l}`.
    pub fn module(self) -> &'static str {
        match self {
            Target::Query => "attention.self.query",
            Target::Key => "attention.self.key",
            Target::Value => "attention.self.value",
            Target::AttnOut => "attention.output.dense",
            Target::Intermediate => "intermediate.dense",
            Target::Output => "output.dense",
        }
    }

    /// The name on the command line.
    pub fn cli_name(self) -> &'static str {
        match self {
            Target::Query => "query",
            Target::Key => "key",
            Target::Value => "value",
            Target::AttnOut => "attn-out",
            Target::Intermediate => "intermediate",
            Target::Output => "output",
        }
    }

    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL.into_iter().find(|t| t.cli_name() == s || t.module() == s).ok_or_else(|| {
            Error::invalid(format!(
                "unknown LoRA target `{s}`: choose among {}",
                Target::ALL.map(|t| t.cli_name()).join(", ")
            ))
        })
    }

    /// (out, in) of the target's weight.
    pub fn dims(self, hidden: usize, ffn: usize) -> (usize, usize) {
        match self {
            Target::Intermediate => (ffn, hidden),
            Target::Output => (hidden, ffn),
            _ => (hidden, hidden),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    pub targets: Vec<Target>,
    /// Dropout on the LoRA input (training only).
    pub dropout: f32,
}

impl LoraConfig {
    /// LoRA of rank `r` and `alpha` on `targets`, without rsLoRA or input dropout.
    pub fn new(r: usize, alpha: f32, targets: &[Target]) -> Self {
        LoraConfig { r, alpha, rslora: false, targets: targets.to_vec(), dropout: 0.0 }
    }

    pub fn scaling(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    /// hidden / bottleneck width
    pub reduction_factor: usize,
    pub activation: Activation,
    /// Output scale (1 for Houlsby adapters; He et al. use 4 for the parallel FFN adapter).
    pub scaling: f32,
}

/// The fine-tuning method and its settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    Lora(LoraConfig),
    Ia3,
    Adapter(AdapterConfig),
    ParallelAdapter(AdapterConfig),
    Prefix { length: usize },
    Bitfit,
    Head,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lora(_) => "lora",
            Method::Ia3 => "ia3",
            Method::Adapter(_) => "adapter",
            Method::ParallelAdapter(_) => "parallel-adapter",
            Method::Prefix { .. } => "prefix",
            Method::Bitfit => "bitfit",
            Method::Head => "head",
        }
    }
}

impl Method {
    /// The learning rate a run uses unless told otherwise: 1e-3, or 1e-2 for the methods that move few
    /// or scale-type parameters ((IA)³, prefix, the head-only probe).
    pub fn default_lr(&self) -> f32 {
        match self {
            Method::Ia3 | Method::Prefix { .. } | Method::Head => 1e-2,
            _ => 1e-3,
        }
    }
}

/// A method as the command line and the web app describe it: a name and flat options with defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MethodOptions {
    /// lora | ia3 | adapter | parallel-adapter | prefix | bitfit | head
    pub method: String,
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    /// LoRA targets by their command-line names (query, key, value, attn-out, intermediate, output).
    pub targets: Vec<String>,
    pub lora_dropout: f32,
    pub reduction_factor: usize,
    /// relu | gelu | tanh
    pub adapter_activation: String,
    /// Default 1 for `adapter`, 4 for `parallel-adapter`.
    pub adapter_scaling: Option<f32>,
    pub prefix_length: usize,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            method: "lora".into(),
            r: 8,
            alpha: 16.0,
            rslora: false,
            targets: vec!["query".into(), "value".into()],
            lora_dropout: 0.0,
            reduction_factor: 16,
            adapter_activation: "relu".into(),
            adapter_scaling: None,
            prefix_length: 10,
        }
    }
}

impl MethodOptions {
    pub fn build(&self) -> Result<Method> {
        let activation = match self.adapter_activation.as_str() {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "tanh" => Activation::Tanh,
            o => return Err(Error::invalid(format!("adapter activation `{o}`: choose relu, gelu or tanh"))),
        };
        let adapter = |default_scaling: f32| AdapterConfig {
            reduction_factor: self.reduction_factor,
            activation,
            scaling: self.adapter_scaling.unwrap_or(default_scaling),
        };
        Ok(match self.method.as_str() {
            "lora" => Method::Lora(LoraConfig {
                r: self.r,
                alpha: self.alpha,
                rslora: self.rslora,
                targets: self.targets.iter().map(|t| Target::parse(t.trim())).collect::<Result<_>>()?,
                dropout: self.lora_dropout,
            }),
            "ia3" => Method::Ia3,
            "adapter" => Method::Adapter(adapter(1.0)),
            "parallel-adapter" => Method::ParallelAdapter(adapter(4.0)),
            "prefix" => Method::Prefix { length: self.prefix_length },
            "bitfit" => Method::Bitfit,
            "head" => Method::Head,
            o => {
                return Err(Error::invalid(format!(
                    "method `{o}`: choose lora, ia3, adapter, parallel-adapter, prefix, bitfit or head"
                )))
            }
        })
    }
}

/// Which hidden state the classifier reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// BertForSequenceClassification: tanh(W_p h[CLS] + b_p), then dropout and the classifier.
    Pooler,
    /// Masked mean of the last hidden state, then dropout and the classifier.
    Mean,
}

/// LoRA's pair for one target.
#[derive(Clone, Debug)]
pub struct Lora {
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
}

/// A bottleneck adapter: down (m, C) then up (C, m).
#[derive(Clone, Debug)]
pub struct Bottleneck {
    pub down: Linear,
    pub up: Linear,
}

/// (IA)³ scaling vectors.
#[derive(Clone, Debug)]
pub struct Ia3 {
    pub key: Tensor,
    pub value: Tensor,
    pub ffn: Tensor,
}

/// Prefix-tuning key and value rows, (p, C) each.
#[derive(Clone, Debug)]
pub struct Prefix {
    pub key: Tensor,
    pub value: Tensor,
}

/// BitFit's trainable copies of one layer's biases.
#[derive(Clone, Debug)]
pub struct Biases {
    /// In `Target` order.
    pub linear: Vec<Tensor>,
    pub attn_norm: Tensor,
    pub out_norm: Tensor,
}

/// The trainable parameters of one encoder layer.
#[derive(Clone, Debug, Default)]
pub struct LayerParams {
    /// Indexed by `Target::index`.
    pub lora: Vec<Option<Lora>>,
    pub ia3: Option<Ia3>,
    pub adapter_attn: Option<Bottleneck>,
    pub adapter_ffn: Option<Bottleneck>,
    pub parallel: Option<Bottleneck>,
    pub prefix: Option<Prefix>,
    pub biases: Option<Biases>,
}

impl LayerParams {
    pub fn lora(&self, t: Target) -> Option<&Lora> {
        self.lora.get(t.index()).and_then(|l| l.as_ref())
    }
    pub fn is_empty(&self) -> bool {
        self.lora.iter().all(|l| l.is_none())
            && self.ia3.is_none()
            && self.adapter_attn.is_none()
            && self.adapter_ffn.is_none()
            && self.parallel.is_none()
            && self.prefix.is_none()
            && self.biases.is_none()
    }
}

/// Every trainable tensor of a fine-tuning run. Gradients and optimiser moments use the same
/// structure (`zeros_like`), so the optimiser walks four of them in step.
#[derive(Clone, Debug)]
pub struct Trainable {
    pub layers: Vec<LayerParams>,
    /// BitFit: the embeddings LayerNorm bias.
    pub emb_norm_bias: Option<Tensor>,
    /// BitFit: the pooler bias.
    pub pooler_bias: Option<Tensor>,
    /// The classification head (K, C), always trained.
    pub classifier: Linear,
}

const P: &str = "base_model.model";

fn layer_prefix(l: usize) -> String {
    format!("{P}.bert.encoder.layer.{l}")
}

impl Trainable {
    /// Fresh parameters for `method` on `base`, initialised as PEFT does, with a `classes`-way head.
    pub fn init(base: &Bert, method: &Method, classes: usize, seed: u64) -> Result<Trainable> {
        if classes < 2 {
            return Err(Error::invalid(format!("a classifier needs at least 2 labels, got {classes}")));
        }
        let cfg = &base.config;
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let dev = &base.device;
        let mut rng = Rng::new(seed);
        let zeros = |shape: &[usize]| dev.zeros(shape);
        let kaiming = |rng: &mut Rng, out: usize, inp: usize| -> Result<Tensor> {
            // torch kaiming_uniform_(a=√5): U(-1/√in, 1/√in)
            dev.weight(&rng.vec_uniform(out * inp, 1.0 / (inp as f64).sqrt()), &[out, inp])
        };
        let bottleneck = |rng: &mut Rng, a: &AdapterConfig| -> Result<Bottleneck> {
            if a.reduction_factor == 0 || c / a.reduction_factor == 0 {
                return Err(Error::invalid(format!(
                    "reduction factor {} leaves no bottleneck of a {c}-wide model",
                    a.reduction_factor
                )));
            }
            let m = c / a.reduction_factor;
            // Down like a Linear, up zero: the adapter starts as the identity.
            Ok(Bottleneck {
                down: Linear { weight: kaiming(rng, m, c)?, bias: zeros(&[m])? },
                up: Linear { weight: zeros(&[c, m])?, bias: zeros(&[c])? },
            })
        };
        let mut layers = Vec::with_capacity(base.layers.len());
        for bl in &base.layers {
            let mut p = LayerParams { lora: vec![None; 6], ..Default::default() };
            match method {
                Method::Lora(lc) => {
                    if lc.r == 0 {
                        return Err(Error::invalid("LoRA rank r must be at least 1"));
                    }
                    if lc.targets.is_empty() {
                        return Err(Error::invalid("LoRA needs at least one target module"));
                    }
                    for &t in &lc.targets {
                        let (out, inp) = t.dims(c, f);
                        p.lora[t.index()] = Some(Lora { a: kaiming(&mut rng, lc.r, inp)?, b: zeros(&[out, lc.r])? });
                    }
                }
                Method::Ia3 => {
                    p.ia3 = Some(Ia3 {
                        key: dev.weight(&vec![1.0; c], &[c])?,
                        value: dev.weight(&vec![1.0; c], &[c])?,
                        ffn: dev.weight(&vec![1.0; f], &[f])?,
                    })
                }
                Method::Adapter(a) => {
                    p.adapter_attn = Some(bottleneck(&mut rng, a)?);
                    p.adapter_ffn = Some(bottleneck(&mut rng, a)?);
                }
                Method::ParallelAdapter(a) => p.parallel = Some(bottleneck(&mut rng, a)?),
                Method::Prefix { length } => {
                    if *length == 0 {
                        return Err(Error::invalid("prefix length must be at least 1"));
                    }
                    p.prefix = Some(Prefix {
                        key: dev.weight(&rng.vec_normal(length * c, 0.02), &[*length, c])?,
                        value: dev.weight(&rng.vec_normal(length * c, 0.02), &[*length, c])?,
                    });
                }
                Method::Bitfit => {
                    // Copies on the device: BitFit trains its own biases, the base stays as loaded.
                    let copy = |t: &Tensor| t.duplicate();
                    p.biases = Some(Biases {
                        linear: Target::ALL.iter().map(|&t| copy(&bl.linear(t).bias)).collect::<Result<_>>()?,
                        attn_norm: copy(&bl.attn_norm.bias)?,
                        out_norm: copy(&bl.out_norm.bias)?,
                    });
                }
                Method::Head => {}
            }
            layers.push(p);
        }
        let device_copy = |t: &Tensor| t.duplicate();
        let (emb_norm_bias, pooler_bias) = if *method == Method::Bitfit {
            (
                Some(device_copy(&base.embeddings.norm.bias)?),
                base.pooler.as_ref().map(|p| device_copy(&p.bias)).transpose()?,
            )
        } else {
            (None, None)
        };
        // HF BertForSequenceClassification: normal(0, initializer_range = 0.02), zero bias; from a
        // stream of its own so that every method starts from the same head for a given seed.
        let mut rng = Rng::new(seed ^ 0xC1A5_51F1);
        let classifier =
            Linear { weight: dev.weight(&rng.vec_normal(classes * c, 0.02), &[classes, c])?, bias: zeros(&[classes])? };
        Ok(Trainable { layers, emb_norm_bias, pooler_bias, classifier })
    }

    /// Calls `f` with every tensor under its PEFT key, in a fixed order.
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(String, &'a Tensor)) {
        for (l, p) in self.layers.iter().enumerate() {
            let lp = layer_prefix(l);
            for t in Target::ALL {
                if let Some(lora) = p.lora(t) {
                    f(format!("{lp}.{}.lora_A.weight", t.module()), &lora.a);
                    f(format!("{lp}.{}.lora_B.weight", t.module()), &lora.b);
                }
            }
            if let Some(i) = &p.ia3 {
                f(format!("{lp}.attention.self.key.ia3_l"), &i.key);
                f(format!("{lp}.attention.self.value.ia3_l"), &i.value);
                f(format!("{lp}.output.dense.ia3_l"), &i.ffn);
            }
            for (name, a) in [
                ("attention.output.adapter", &p.adapter_attn),
                ("output.adapter", &p.adapter_ffn),
                ("output.parallel_adapter", &p.parallel),
            ] {
                if let Some(a) = a {
                    f(format!("{lp}.{name}.down.weight"), &a.down.weight);
                    f(format!("{lp}.{name}.down.bias"), &a.down.bias);
                    f(format!("{lp}.{name}.up.weight"), &a.up.weight);
                    f(format!("{lp}.{name}.up.bias"), &a.up.bias);
                }
            }
            if let Some(pr) = &p.prefix {
                f(format!("{lp}.attention.self.prefix_key"), &pr.key);
                f(format!("{lp}.attention.self.prefix_value"), &pr.value);
            }
            if let Some(b) = &p.biases {
                for t in Target::ALL {
                    f(format!("{lp}.{}.bias", t.module()), &b.linear[t.index()]);
                }
                f(format!("{lp}.attention.output.LayerNorm.bias"), &b.attn_norm);
                f(format!("{lp}.output.LayerNorm.bias"), &b.out_norm);
            }
        }
        if let Some(b) = &self.emb_norm_bias {
            f(format!("{P}.bert.embeddings.LayerNorm.bias"), b);
        }
        if let Some(b) = &self.pooler_bias {
            f(format!("{P}.bert.pooler.dense.bias"), b);
        }
        f(format!("{P}.classifier.weight"), &self.classifier.weight);
        f(format!("{P}.classifier.bias"), &self.classifier.bias);
    }

    /// Every tensor under its PEFT key, in `visit` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![];
        self.visit(&mut |n, t| v.push((n, t)));
        v
    }

    /// Mutable access in `visit` order.
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v: Vec<&mut Tensor> = vec![];
        for p in &mut self.layers {
            for lora in p.lora.iter_mut().flatten() {
                v.push(&mut lora.a);
                v.push(&mut lora.b);
            }
            if let Some(i) = &mut p.ia3 {
                v.extend([&mut i.key, &mut i.value, &mut i.ffn]);
            }
            for a in [&mut p.adapter_attn, &mut p.adapter_ffn, &mut p.parallel].into_iter().flatten() {
                v.extend([&mut a.down.weight, &mut a.down.bias, &mut a.up.weight, &mut a.up.bias]);
            }
            if let Some(pr) = &mut p.prefix {
                v.extend([&mut pr.key, &mut pr.value]);
            }
            if let Some(b) = &mut p.biases {
                v.extend(b.linear.iter_mut());
                v.extend([&mut b.attn_norm, &mut b.out_norm]);
            }
        }
        v.extend(self.emb_norm_bias.as_mut());
        v.extend(self.pooler_bias.as_mut());
        v.extend([&mut self.classifier.weight, &mut self.classifier.bias]);
        v
    }

    /// The same structure filled with zeros (gradients, optimiser moments), on `device`.
    pub fn zeros_like(&self, device: &Device) -> Result<Trainable> {
        let mut z = self.clone();
        for t in z.tensors_mut() {
            *t = device.zeros(t.shape())?;
        }
        Ok(z)
    }

    /// Sets every tensor to zero (gradients between steps).
    pub fn zero(&mut self) -> Result<()> {
        for t in self.tensors_mut() {
            crate::ops::zero_(t)?;
        }
        Ok(())
    }

    /// The number of trainable values.
    pub fn count(&self) -> usize {
        self.named().iter().map(|(_, t)| t.numel()).sum()
    }

    /// The lowest encoder layer with trainable parameters (None when only the head trains);
    /// Some(0) when the embeddings carry one.
    pub fn lowest_trained_layer(&self) -> Option<usize> {
        if self.emb_norm_bias.is_some() {
            return Some(0);
        }
        self.layers.iter().position(|p| !p.is_empty())
    }

    /// Whether anything below the head trains (the encoder needs a backward pass).
    pub fn trains_encoder(&self) -> bool {
        self.lowest_trained_layer().is_some() || self.pooler_bias.is_some()
    }
}
