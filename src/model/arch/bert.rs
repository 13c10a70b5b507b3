//! BERT (`model_type` "bert"): post-LN layers, LayerNorm, GELU, learned absolute positions, token
//! types, a pooler over [CLS]. The reference layout the other BERT-family files vary.

use super::WeightNames;
use super::{bert_style_config, EncoderConfig, Fields, LayerDesc, Positions};
use crate::error::Result;

/// BERT's weight names (RoBERTa and ELECTRA keep them).
pub(super) const NAMES: WeightNames = WeightNames {
    word_embeddings: "embeddings.word_embeddings.weight",
    position_embeddings: "embeddings.position_embeddings.weight",
    token_type_embeddings: Some("embeddings.token_type_embeddings.weight"),
    embeddings_norm: "embeddings.LayerNorm",
    embeddings_project: None,
    layer: "encoder.layer.{}",
    linears: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
    attn_norm: "attention.output.LayerNorm",
    out_norm: "output.LayerNorm",
    pooler: Some("pooler.dense"),
};

pub(super) fn describe(v: &serde_json::Value, origin: &str) -> Result<(EncoderConfig, LayerDesc)> {
    let f = Fields { v, origin };
    f.absolute_positions()?;
    let config = bert_style_config(v, origin)?;
    let desc =
        LayerDesc::bert_family("bert", f.activation("hidden_act")?, Positions::Absolute, true, &["bert."], NAMES);
    Ok((config, desc))
}
