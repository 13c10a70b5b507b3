//! Parameter-efficient fine-tuning methods, in the "unified view" of He et al. (2022): each method
//! adds a small set of parameters that change a hidden state at one position of the frozen
//! encoder, through the hooks the model defines (`crate::model::hooks`). One file per method:
//!
//! | method            | parameters per layer                       | where it acts                        |
//! |-------------------|--------------------------------------------|--------------------------------------|
//! | `lora`            | A (r, in), B (out, r) per target linear    | y += s · (drop(x) Aᵀ) Bᵀ              |
//! | `ia3`             | l_k (C), l_v (C), l_ff (F)                  | k ⊙ l_k, v ⊙ l_v, act(·) ⊙ l_ff       |
//! | `adapter`         | down (C/rf, C), up (C, C/rf), one or two   | h += up(act(down(h))) after attention and FFN (Houlsby) or after the FFN (Pfeiffer) |
//! | `parallel_adapter`| down, up                                    | FFN(h1) += s · up(act(down(h1)))     |
//! | `prefix`          | P_k (p, C), P_v (p, C)                      | keys and values get p learned rows   |
//! | `mam`             | prefix + parallel adapter                   | both (He et al.'s "MAM adapter")     |
//! | `bitfit`          | every bias                                  | replaces the base biases             |
//! | `full`            | every weight                                | replaces the base weights            |
//! | `head`            | (classifier only)                           | —                                    |
//! | `scalearn` (+ `-uniform`, `++`) | ω (S, C) or (S, 1) per site, sources frozen | h += Σₛ ωₛ ⊙ aₛ(h) over S source adapters |
//!
//! Every method also trains the classification head (`head`). Parameters live in one `ParamSet`
//! under Hugging Face PEFT's key names (`base_model.model.…`), so saving, loading and merging read
//! them alike. Adding a method is its file and one line in `methods!` below.

pub mod adapter;
pub mod bitfit;
pub mod causal_lora;
pub mod format;
pub mod full;
pub mod head;
pub mod ia3;
pub mod lora;
pub mod mam;
pub mod parallel_adapter;
pub mod prefix;
pub mod scalearn;

pub use crate::model::arch::{Activation, Target};
pub use adapter::{AdapterConfig, Placement};
pub use bitfit::BitfitConfig;
pub use full::FullConfig;
pub use head::{Classifier, HeadKind, HeadOnly};

/// Refuses a LoRA rank larger than a target (out × in) can use: past min(out, in) it adds nothing
/// over full fine-tuning, only memory (`--r 100000` ran out of it).
pub fn check_rank(r: usize, target: &str, out: usize, inp: usize) -> crate::Result<()> {
    if r > out.min(inp) {
        return Err(crate::Error::invalid(format!(
            "LoRA rank r={r} is more than target `{target}` ({out}×{inp}) has: at most {} (ranks of 4 to 64 are usual)",
            out.min(inp)
        )));
    }
    Ok(())
}
pub use ia3::Ia3Config;
pub use lora::LoraConfig;
pub use mam::MamConfig;
pub use parallel_adapter::ParallelConfig;
pub use prefix::PrefixConfig;
pub use scalearn::ScaLearnConfig;

use crate::error::{Error, Result};
use crate::model::encoder::{Encoder, Hooks};
use crate::model::hooks::Hook;
use crate::model::{LayerDesc, ParamId, ParamSet};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What every method's file provides, implemented on its settings type.
pub trait MethodKind {
    /// The method's settings from the flat options of the command line and the web app.
    fn from_options(o: &MethodOptions) -> Result<Self>
    where
        Self: Sized;

    /// The learning rate a run uses unless told otherwise.
    fn default_lr(&self) -> f32 {
        1e-3
    }

    /// Adds the method's parameters to `params` under their PEFT names, initialised as the method
    /// (or PEFT) does, drawing from `rng`; returns the hooks that apply them.
    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>>;

    /// The `peft_type` of this method's adapter files; with `Some` fields, PEFT's own config (PEFT
    /// has this method and loads the files as they are) for this architecture.
    fn peft_config(&self, desc: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>);

    /// The dropout on the method's own inputs (LoRA's), applied in training.
    fn input_dropout(&self) -> f32 {
        0.0
    }
}

/// One line per method: the variant, its settings type and its name (in files and on the command
/// line).
macro_rules! methods {
    ($($variant:ident($config:ty) = $name:literal),* $(,)?) => {
        /// The fine-tuning method and its settings.
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "method")]
        pub enum Method {
            $(#[serde(rename = $name)] $variant($config),)*
        }

        impl Method {
            /// Every method's name.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            pub fn name(&self) -> &'static str {
                match self { $(Method::$variant(_) => $name,)* }
            }

            pub fn kind(&self) -> &dyn MethodKind {
                match self { $(Method::$variant(c) => c,)* }
            }

            fn parse(name: &str, o: &MethodOptions) -> Option<Result<Method>> {
                match name {
                    $($name => Some(<$config as MethodKind>::from_options(o).map(Method::$variant)),)*
                    _ => None,
                }
            }
        }
    };
}

methods! {
    Lora(LoraConfig) = "lora",
    Ia3(Ia3Config) = "ia3",
    Adapter(AdapterConfig) = "adapter",
    ParallelAdapter(ParallelConfig) = "parallel-adapter",
    Prefix(PrefixConfig) = "prefix",
    Mam(MamConfig) = "mam",
    Bitfit(BitfitConfig) = "bitfit",
    Full(FullConfig) = "full",
    Head(HeadOnly) = "head",
    ScaLearn(ScaLearnConfig) = "scalearn",
    ScaLearnUniform(ScaLearnConfig) = "scalearn-uniform",
    ScaLearnPlusPlus(ScaLearnConfig) = "scalearn++",
    ScaLearnUniformPlusPlus(ScaLearnConfig) = "scalearn-uniform++",
}

impl Method {
    pub fn default_lr(&self) -> f32 {
        self.kind().default_lr()
    }

    /// The ScaLearn settings of a ScaLearn variant.
    pub fn scalearn(&self) -> Option<&ScaLearnConfig> {
        match self {
            Method::ScaLearn(c)
            | Method::ScaLearnUniform(c)
            | Method::ScaLearnPlusPlus(c)
            | Method::ScaLearnUniformPlusPlus(c) => Some(c),
            _ => None,
        }
    }

    pub fn scalearn_mut(&mut self) -> Option<&mut ScaLearnConfig> {
        match self {
            Method::ScaLearn(c)
            | Method::ScaLearnUniform(c)
            | Method::ScaLearnPlusPlus(c)
            | Method::ScaLearnUniformPlusPlus(c) => Some(c),
            _ => None,
        }
    }
}

/// A method as the command line and the web app describe it: a name and flat options with defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MethodOptions {
    /// lora | ia3 | adapter | parallel-adapter | prefix | mam | bitfit | full | head | scalearn…
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
    /// Default 1 for `adapter`, 4 for `parallel-adapter` and `mam`.
    pub adapter_scaling: Option<f32>,
    /// houlsby (after attention and after the FFN) | pfeiffer (after the FFN only)
    pub adapter_placement: String,
    pub prefix_length: usize,
    /// ScaLearn: dropout on the scales ω while training.
    pub scalearn_dropout: f32,
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
            adapter_placement: "houlsby".into(),
            prefix_length: 10,
            scalearn_dropout: 0.3,
        }
    }
}

impl MethodOptions {
    pub fn build(&self) -> Result<Method> {
        Method::parse(&self.method, self).unwrap_or_else(|| {
            Err(Error::invalid(format!("method `{}`: choose {}", self.method, Method::NAMES.join(", "))))
        })
    }

    pub(crate) fn activation(&self) -> Result<Activation> {
        match self.adapter_activation.as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "tanh" => Ok(Activation::Tanh),
            o => Err(Error::invalid(format!("adapter activation `{o}`: choose relu, gelu or tanh"))),
        }
    }
}

/// `base_model.model.` + the base model's prefix in its task model (`bert.`): where PEFT keys start.
pub fn peft_prefix(desc: &LayerDesc) -> String {
    format!("base_model.model.{}", desc.base_prefix)
}

/// The PEFT key prefix of layer `l`, e.g. `base_model.model.bert.encoder.layer.3`.
pub fn layer_key(desc: &LayerDesc, l: usize) -> String {
    format!("{}{}", peft_prefix(desc), desc.layer(l))
}

/// The parent module of a target's module path (`attention.output` for `attention.output.dense`).
pub fn parent(module: &str) -> &str {
    module.rsplit_once('.').map_or(module, |(p, _)| p)
}

/// A device tensor of `rows × cols` drawn like torch's kaiming_uniform_(a=√5): U(-1/√cols, 1/√cols).
pub fn kaiming(enc: &Encoder, rng: &mut Rng, rows: usize, cols: usize) -> Result<Tensor> {
    enc.device.weight(&rng.vec_uniform(rows * cols, 1.0 / (cols as f64).sqrt()), &[rows, cols])
}

/// The trainable parameters of a run (the method's and the classification head's) and the hooks
/// that apply them. Gradients and optimiser moments are `params.zeros_like`, aligned entry by entry.
#[derive(Clone)]
pub struct Adapted {
    pub method: Method,
    pub params: ParamSet,
    hooks: Vec<std::rc::Rc<dyn Hook>>,
    /// The classification head: (weight (K, C), bias (K)).
    pub classifier: (ParamId, ParamId),
}

impl std::fmt::Debug for Adapted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Adapted({}, {} tensors, {} values)", self.method.name(), self.params.len(), self.params.count())
    }
}

impl Adapted {
    /// Fresh parameters for `method` on `base`, initialised as PEFT does, with a `classes`-way head.
    pub fn init(base: &Encoder, method: &Method, classes: usize, seed: u64) -> Result<Adapted> {
        if classes < 2 {
            return Err(Error::invalid(format!("a classifier needs at least 2 labels, got {classes}")));
        }
        let mut params = ParamSet::new();
        let mut rng = Rng::new(seed);
        let hooks = method.kind().build(base, &mut params, &mut rng)?.into_iter().map(std::rc::Rc::from).collect();
        let classifier = head::init_classifier(base, &mut params, classes, seed)?;
        Ok(Adapted { method: method.clone(), params, hooks, classifier })
    }

    /// The hooks with these parameters, for the encoder.
    pub fn with_hooks<R>(&self, f: impl FnOnce(Hooks<'_>) -> R) -> R {
        let refs: Vec<&dyn Hook> = self.hooks.iter().map(|h| h.as_ref()).collect();
        f(Hooks { hooks: &refs, params: &self.params })
    }

    /// The number of trainable values.
    pub fn count(&self) -> usize {
        self.params.count()
    }

    /// The number of classes of the head.
    pub fn classes(&self) -> usize {
        self.params[self.classifier.0].dim(0)
    }

    /// Whether anything below the head trains (the encoder needs a backward pass).
    pub fn trains_encoder(&self) -> bool {
        self.with_hooks(|h| h.lowest_layer().0.is_some() || h.trains_pooler())
    }
}
