//! config.json of a Hugging Face BERT-family model.

use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of a BERT config.json that the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}
fn default_dropout() -> f64 {
    0.1
}

impl BertConfig {
    /// Parses and checks a config.json; `origin` names the file in errors.
    pub fn from_json(json: &str, origin: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::file(origin, format!("not valid JSON: {e}")))?;
        let model_type = v.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
        if model_type != "bert" {
            let what =
                if model_type.is_empty() { "no model_type".to_string() } else { format!("model_type `{model_type}`") };
            return Err(Error::file(
                origin,
                format!("unsupported architecture ({what}): localtune runs BERT-family encoders (model_type \"bert\")"),
            ));
        }
        let c: BertConfig =
            serde_json::from_value(v).map_err(|e| Error::file(origin, format!("not a BERT config: {e}")))?;
        c.check(origin)?;
        Ok(c)
    }

    fn check(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::file(origin, msg));
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_python") {
            return bad(format!("hidden_act `{}` is not supported (only the erf GELU, \"gelu\")", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} does not split into {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The number of parameters of the encoder (embeddings, layers, pooler).
    pub fn num_parameters(&self) -> usize {
        let (c, f) = (self.hidden_size, self.intermediate_size);
        let emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * c + 2 * c;
        let layer = 4 * (c * c + c) + 2 * c + (c * f + f) + (f * c + c) + 2 * c;
        emb + self.num_hidden_layers * layer + c * c + c
    }
}
