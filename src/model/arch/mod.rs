//! The architecture seam: `config.json`'s `model_type` picks an architecture, whose file turns the
//! config into the encoder's sizes (`EncoderConfig`) and its layer description (`LayerDesc`): where
//! the norms sit, which norm and activation, the attention kind, how positions are counted, and the
//! name of every weight with the module names PEFT uses for it. The encoder runs any description;
//! nothing else in the crate knows an architecture by name.

mod bert;
mod distilbert;
mod electra;
mod roberta;

use crate::error::{Error, Result};

/// An architecture's reader: config.json (parsed, and its name for errors) → sizes and description.
type Describe = fn(&serde_json::Value, &str) -> Result<(EncoderConfig, LayerDesc)>;

/// The architectures, each under the `model_type`s it reads.
const ARCHITECTURES: &[(&[&str], Describe)] = &[
    (&["bert"], bert::describe),
    (&["roberta", "xlm-roberta"], roberta::describe),
    (&["distilbert"], distilbert::describe),
    (&["electra"], electra::describe),
];

/// The target whose module path (of any architecture) ends `path`, e.g. the key of a PEFT tensor
/// without its `.lora_A.weight`; the longest match wins (`attention.output.dense` over `output.dense`).
pub fn target_of_module_path(path: &str) -> Option<Target> {
    let mut best: Option<(usize, Target)> = None;
    for names in [&bert::NAMES, &distilbert::NAMES] {
        for t in Target::ALL {
            let m = names.linears[t.index()];
            if (path == m || path.ends_with(&format!(".{m}"))) && best.is_none_or(|(n, _)| m.len() > n) {
                best = Some((m.len(), t));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// The architecture whose task-model prefix (`bert.`, `roberta.`, …) PEFT keys carry after
/// `base_model.model.`; "bert" when none does.
pub fn arch_of_peft_keys<'a>(mut keys: impl Iterator<Item = &'a str>) -> &'static str {
    const PREFIXES: [(&str, &str); 4] =
        [("bert.", "bert"), ("roberta.", "roberta"), ("distilbert.", "distilbert"), ("electra.", "electra")];
    keys.find_map(|k| {
        let rest = k.strip_prefix("base_model.model.")?;
        PREFIXES.iter().find(|(p, _)| rest.starts_with(p)).map(|(_, a)| *a)
    })
    .unwrap_or("bert")
}

/// Every supported `model_type`.
pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES.iter().flat_map(|(types, _)| types.iter().copied()).collect()
}

/// Reads a config.json: the sizes and the layer description of its architecture. `origin` names
/// the file in errors.
pub fn from_config_json(json: &str, origin: &str) -> Result<(EncoderConfig, LayerDesc)> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::file(origin, format!("not valid JSON: {e}")))?;
    let model_type = v.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
    let Some((_, describe)) = ARCHITECTURES.iter().find(|(types, _)| types.contains(&model_type)) else {
        let what =
            if model_type.is_empty() { "no model_type".to_string() } else { format!("model_type `{model_type}`") };
        return Err(Error::file(
            origin,
            format!("unsupported architecture ({what}): localtune supports model_type {}", supported().join(", ")),
        ));
    };
    let (config, desc) = describe(&v, origin)?;
    config.check(origin)?;
    Ok((config, desc))
}

/// The sizes of a BERT-family encoder, under Hugging Face BERT's names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The width of the embeddings (ELECTRA's `embedding_size`; the hidden size elsewhere).
    pub embedding_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// 0 when the architecture has no token types (DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
}

impl EncoderConfig {
    fn check(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::file(origin, msg));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} does not split into {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("embedding_size", self.embedding_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        // Far above any encoder this runs, far below what would overflow an allocation: a config
        // asking for 2^64 layers is refused here, not by a panic while the model is built.
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 14),
            ("embedding_size", self.embedding_size, 1 << 14),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 8),
            ("intermediate_size", self.intermediate_size, 1 << 16),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 20),
            ("type_vocab_size", self.type_vocab_size, 1 << 10),
        ] {
            if v > max {
                return bad(format!("{name} {v} is more than localtune takes ({max})"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return bad(format!("layer_norm_eps {} must be a finite number ≥ 0", self.layer_norm_eps));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Reads the usual fields of a BERT-style config.json (`describe` of BERT, RoBERTa and ELECTRA).
pub(crate) fn bert_style_config(v: &serde_json::Value, origin: &str) -> Result<EncoderConfig> {
    let field = Fields { v, origin };
    let hidden = field.usize("hidden_size", None)?;
    Ok(EncoderConfig {
        model_type: field.str("model_type", "")?,
        vocab_size: field.usize("vocab_size", None)?,
        hidden_size: hidden,
        embedding_size: field.usize("embedding_size", Some(hidden))?,
        num_hidden_layers: field.usize("num_hidden_layers", None)?,
        num_attention_heads: field.usize("num_attention_heads", None)?,
        intermediate_size: field.usize("intermediate_size", None)?,
        max_position_embeddings: field.usize("max_position_embeddings", Some(512))?,
        type_vocab_size: field.usize("type_vocab_size", Some(2))?,
        layer_norm_eps: field.f64("layer_norm_eps", 1e-12)?,
        hidden_dropout_prob: field.f64("hidden_dropout_prob", 0.1)?,
        attention_probs_dropout_prob: field.f64("attention_probs_dropout_prob", 0.1)?,
    })
}

/// Typed reads of config.json fields with errors that name the file and the field.
pub(crate) struct Fields<'a> {
    pub v: &'a serde_json::Value,
    pub origin: &'a str,
}

impl Fields<'_> {
    pub fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.v.get(key) {
            None | Some(serde_json::Value::Null) => {
                default.ok_or_else(|| Error::file(self.origin, format!("missing `{key}`")))
            }
            Some(x) => x
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| Error::file(self.origin, format!("`{key}` must be a non-negative integer, got {x}"))),
        }
    }
    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| Error::file(self.origin, format!("`{key}` must be a number, got {x}"))),
        }
    }
    pub fn str(&self, key: &str, default: &str) -> Result<String> {
        match self.v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default.to_string()),
            Some(x) => x
                .as_str()
                .map(|s| s.to_string())
                .ok_or_else(|| Error::file(self.origin, format!("`{key}` must be a string, got {x}"))),
        }
    }
    /// The activation named by `key` (only the exact erf GELU is supported).
    pub fn activation(&self, key: &str) -> Result<Activation> {
        let name = self.str(key, "gelu")?;
        match name.as_str() {
            "gelu" | "gelu_python" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            o => Err(Error::file(self.origin, format!("{key} `{o}` is not supported (gelu, relu)"))),
        }
    }
    /// Only absolute learned positions are supported.
    pub fn absolute_positions(&self) -> Result<()> {
        let t = self.str("position_embedding_type", "absolute")?;
        if t != "absolute" {
            return Err(Error::file(
                self.origin,
                format!("position_embedding_type `{t}` is not supported (only \"absolute\")"),
            ));
        }
        Ok(())
    }
}

/// A linear layer of an encoder layer, in the architecture-neutral terms that methods use.
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

    /// The target a command-line name (`query`, `attn-out`, …) or a BERT module path names.
    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL.into_iter().find(|&t| t.cli_name() == s || bert::NAMES.linears[t.index()] == s).ok_or_else(|| {
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

/// An activation function (of the FFN, or of a bottleneck adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
}

/// Where each block's norm sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NormPlacement {
    /// x = Norm(x + Block(x)) — BERT and its family.
    Post,
    /// x = x + Block(Norm(x)) — GPT-2, Llama.
    Pre,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

/// Which keys a query attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AttentionKind {
    /// Every non-padding key (encoders).
    Bidirectional,
    /// Keys at or before the query (decoders).
    Causal,
}

/// How position ids are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Positions {
    /// Learned absolute positions 0, 1, … for every row (BERT, DistilBERT, ELECTRA).
    Absolute,
    /// Learned absolute positions that start after the padding id and skip padding: real tokens
    /// get `padding_idx + 1, +2, …`, padding gets `padding_idx` (RoBERTa, XLM-R).
    AfterPadding { padding_idx: usize },
}

impl Positions {
    /// Position ids of a (B, T) batch with its attention mask (1 = real token).
    pub fn ids(&self, mask: &[u32], seq: usize) -> Vec<u32> {
        match *self {
            Positions::Absolute => (0..mask.len()).map(|i| (i % seq) as u32).collect(),
            Positions::AfterPadding { padding_idx } => {
                let mut out = Vec::with_capacity(mask.len());
                for row in mask.chunks(seq) {
                    let mut n = 0;
                    for &m in row {
                        if m != 0 {
                            n += 1;
                            out.push((padding_idx + n) as u32);
                        } else {
                            out.push(padding_idx as u32);
                        }
                    }
                }
                out
            }
        }
    }

    /// The longest sequence that `max_position_embeddings` positions allow.
    pub fn max_len(&self, max_position_embeddings: usize) -> usize {
        match *self {
            Positions::Absolute => max_position_embeddings,
            Positions::AfterPadding { padding_idx } => max_position_embeddings.saturating_sub(padding_idx + 1),
        }
    }
}

/// The weight names of an architecture (Hugging Face's, inside the base model).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WeightNames {
    pub word_embeddings: &'static str,
    pub position_embeddings: &'static str,
    /// None without token types.
    pub token_type_embeddings: Option<&'static str>,
    pub embeddings_norm: &'static str,
    /// A linear from the embedding width to the hidden width (ELECTRA), when the two differ.
    pub embeddings_project: Option<&'static str>,
    /// The layers' path with `{}` for the layer index, e.g. `encoder.layer.{}`.
    pub layer: &'static str,
    /// Module path of each `Target` inside a layer, in `Target::ALL` order.
    pub linears: [&'static str; 6],
    pub attn_norm: &'static str,
    pub out_norm: &'static str,
    /// None without a pooler.
    pub pooler: Option<&'static str>,
}

/// What the encoder needs to know of an architecture, beyond its sizes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerDesc {
    /// The architecture's own name (its file in `model/arch/`).
    pub arch: &'static str,
    pub norm: NormPlacement,
    pub norm_kind: NormKind,
    pub activation: Activation,
    pub attention: AttentionKind,
    pub positions: Positions,
    /// Dropout on the attention output projection before the residual (BERT's; DistilBERT has none).
    pub attn_out_dropout: bool,
    /// The prefix of the base model's weights inside its task models and PEFT keys (`bert.`).
    pub base_prefix: &'static str,
    /// Prefixes that checkpoints of task models may carry, tried in order when loading.
    pub load_prefixes: &'static [&'static str],
    pub names: WeightNames,
}

impl LayerDesc {
    /// What every BERT-family encoder shares: post-LN LayerNorm layers and bidirectional attention;
    /// its base weights sit under `prefixes[0]` in its task models.
    pub(crate) fn bert_family(
        arch: &'static str,
        activation: Activation,
        positions: Positions,
        attn_out_dropout: bool,
        prefixes: &'static [&'static str],
        names: WeightNames,
    ) -> LayerDesc {
        LayerDesc {
            arch,
            norm: NormPlacement::Post,
            norm_kind: NormKind::LayerNorm,
            activation,
            attention: AttentionKind::Bidirectional,
            positions,
            attn_out_dropout,
            base_prefix: prefixes[0],
            load_prefixes: prefixes,
            names,
        }
    }

    /// The path of layer `l`, e.g. `encoder.layer.3`.
    pub fn layer(&self, l: usize) -> String {
        self.names.layer.replace("{}", &l.to_string())
    }

    /// The module path of a target inside a layer, e.g. `attention.self.query`.
    pub fn module(&self, t: Target) -> &'static str {
        self.names.linears[t.index()]
    }

    /// The leaf name PEFT matches in `target_modules`, e.g. `query` or `q_lin`.
    pub fn module_leaf(&self, t: Target) -> &'static str {
        let m = self.module(t);
        m.rsplit('.').next().unwrap_or(m)
    }

    /// Finds the target a command-line name (`query`, `attn-out`, …) or a module path names.
    pub fn parse_target(&self, s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|&t| t.cli_name() == s || self.module(t) == s || self.module_leaf(t) == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown LoRA target `{s}`: choose among {}",
                    Target::ALL.map(|t| t.cli_name()).join(", ")
                ))
            })
    }

    /// The shortest name that picks target `t` alone in PEFT's `target_modules` list (PEFT matches
    /// a name or a `.`-suffix): the leaf (`query`) when no other target ends with it, else the path.
    pub fn peft_module_name(&self, t: Target) -> &'static str {
        let leaf = self.module_leaf(t);
        let shared = Target::ALL
            .iter()
            .any(|&o| o != t && (self.module(o) == leaf || self.module(o).ends_with(&format!(".{leaf}"))));
        if shared {
            self.module(t)
        } else {
            leaf
        }
    }

    /// Whether the module of `t` is also a suffix of another target's path (BERT's `output.dense`
    /// ends `attention.output.dense` too), so that PEFT needs a full-match regex for it.
    pub fn ambiguous_suffix(&self, t: Target) -> bool {
        let m = self.module(t);
        Target::ALL.iter().any(|&o| o != t && self.module(o).ends_with(&format!(".{m}")))
    }
}
