//! RoBERTa and XLM-R (`model_type` "roberta", "xlm-roberta"): BERT's layers and names, with
//! positions that start after the padding id (`pad_token_id + 1`) and skip padding, and a single
//! token type.

use super::bert::NAMES;
use super::{bert_style_config, EncoderConfig, Fields, LayerDesc, Positions};
use crate::error::Result;

pub(super) fn describe(v: &serde_json::Value, origin: &str) -> Result<(EncoderConfig, LayerDesc)> {
    let f = Fields { v, origin };
    f.absolute_positions()?;
    let mut config = bert_style_config(v, origin)?;
    config.type_vocab_size = f.usize("type_vocab_size", Some(1))?;
    let padding_idx = f.usize("pad_token_id", Some(1))?;
    let desc = LayerDesc::bert_family(
        "roberta",
        f.activation("hidden_act")?,
        Positions::AfterPadding { padding_idx },
        true,
        &["roberta."],
        NAMES,
    );
    Ok((config, desc))
}
