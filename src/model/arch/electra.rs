//! ELECTRA discriminators (`model_type` "electra"): BERT's layers and names under `electra.`, with
//! embeddings of their own width (`embedding_size`) projected to the hidden size by
//! `embeddings_project` when the two differ, and no pooler.

use super::bert::NAMES;
use super::WeightNames;
use super::{bert_style_config, EncoderConfig, Fields, LayerDesc, Positions};
use crate::error::Result;

pub(super) fn describe(v: &serde_json::Value, origin: &str) -> Result<(EncoderConfig, LayerDesc)> {
    let f = Fields { v, origin };
    f.absolute_positions()?;
    let config = bert_style_config(v, origin)?;
    let project = config.embedding_size != config.hidden_size;
    let desc = LayerDesc::bert_family(
        "electra",
        f.activation("hidden_act")?,
        Positions::Absolute,
        true,
        &["electra."],
        WeightNames { embeddings_project: project.then_some("embeddings_project"), pooler: None, ..NAMES },
    );
    Ok((config, desc))
}
