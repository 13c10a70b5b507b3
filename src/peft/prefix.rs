//! Prefix tuning (Li & Liang): `length` learned key and value rows put in front of every layer's
//! keys and values (always attended to), drawn from N(0, 0.02). Keys:
//! `….attention.self.prefix_key` and `prefix_value` (P, C), beside the key and value linears.

use super::{layer_key, parent, MethodKind, MethodOptions};
use crate::error::{Error, Result};
use crate::model::encoder::Encoder;
use crate::model::hooks::Hook;
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrefixConfig {
    pub length: usize,
}

impl MethodKind for PrefixConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        Ok(PrefixConfig { length: o.prefix_length })
    }

    fn default_lr(&self) -> f32 {
        1e-2
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        Ok(vec![Box::new(build(self.length, enc, params, rng)?)])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_PREFIX", None)
    }
}

/// The prefix rows of every layer (also the prefix half of MAM).
pub(super) fn build(length: usize, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Prefix> {
    if length == 0 {
        return Err(Error::invalid("prefix length must be at least 1"));
    }
    // Attention runs over prefix + text: a prefix longer than the model's window is no prefix.
    if length > enc.max_len() {
        return Err(Error::invalid(format!(
            "prefix length {length} is more than the model's {} positions (10 to 30 are usual)",
            enc.max_len()
        )));
    }
    let c = enc.config.hidden_size;
    let mut rows = Vec::with_capacity(enc.layers.len());
    for l in 0..enc.layers.len() {
        let at = format!("{}.{}", layer_key(&enc.desc, l), parent(enc.desc.module(Target::Key)));
        let mut row = |name: &str, rng: &mut Rng| -> Result<ParamId> {
            let t = enc.device.weight(&rng.vec_normal(length * c, 0.02), &[length, c])?;
            params.push(format!("{at}.{name}"), t)
        };
        let key = row("prefix_key", rng)?;
        let value = row("prefix_value", rng)?;
        rows.push((key, value));
    }
    Ok(Prefix { rows })
}

pub(super) struct Prefix {
    rows: Vec<(ParamId, ParamId)>,
}

impl Hook for Prefix {
    fn lowest_layer(&self) -> Option<usize> {
        (!self.rows.is_empty()).then_some(0)
    }

    fn prefix(&self, l: usize) -> Option<(ParamId, ParamId)> {
        self.rows.get(l).copied()
    }
}
