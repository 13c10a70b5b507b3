//! DistilBERT (`model_type` "distilbert"): BERT's post-LN layers under other names (`q_lin`,
//! `sa_layer_norm`, `ffn.lin1`, …), its own config keys (`dim`, `n_layers`, …), no token types and
//! no pooler.

use super::{EncoderConfig, Fields, LayerDesc, Positions, WeightNames};
use crate::error::{Error, Result};

pub(super) const NAMES: WeightNames = WeightNames {
    word_embeddings: "embeddings.word_embeddings.weight",
    position_embeddings: "embeddings.position_embeddings.weight",
    token_type_embeddings: None,
    embeddings_norm: "embeddings.LayerNorm",
    embeddings_project: None,
    layer: "transformer.layer.{}",
    linears: ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"],
    attn_norm: "sa_layer_norm",
    out_norm: "output_layer_norm",
    pooler: None,
};

pub(super) fn describe(v: &serde_json::Value, origin: &str) -> Result<(EncoderConfig, LayerDesc)> {
    let f = Fields { v, origin };
    if v.get("sinusoidal_pos_embds").and_then(|x| x.as_bool()).unwrap_or(false) {
        return Err(Error::file(origin, "sinusoidal_pos_embds is not supported (only learned positions)"));
    }
    let hidden = f.usize("dim", None)?;
    let config = EncoderConfig {
        model_type: "distilbert".into(),
        vocab_size: f.usize("vocab_size", None)?,
        hidden_size: hidden,
        embedding_size: hidden,
        num_hidden_layers: f.usize("n_layers", None)?,
        num_attention_heads: f.usize("n_heads", None)?,
        intermediate_size: f.usize("hidden_dim", None)?,
        max_position_embeddings: f.usize("max_position_embeddings", Some(512))?,
        type_vocab_size: 0,
        // DistilBERT's LayerNorms use eps 1e-12 and take no setting.
        layer_norm_eps: 1e-12,
        hidden_dropout_prob: f.f64("dropout", 0.1)?,
        attention_probs_dropout_prob: f.f64("attention_dropout", 0.1)?,
    };
    let desc = LayerDesc::bert_family(
        "distilbert",
        f.activation("activation")?,
        Positions::Absolute,
        false,
        &["distilbert."],
        NAMES,
    );
    Ok((config, desc))
}
