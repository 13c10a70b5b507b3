//! The MAM adapter (He et al.'s mix-and-match of the unified view): prefix tuning on attention and a
//! parallel adapter on the FFN, active together. Its files hold both methods' keys.

use super::parallel_adapter::ParallelConfig;
use super::{prefix, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::encoder::Encoder;
use crate::model::hooks::Hook;
use crate::model::{LayerDesc, ParamSet};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MamConfig {
    pub prefix_length: usize,
    #[serde(flatten)]
    pub adapter: ParallelConfig,
}

impl MethodKind for MamConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        Ok(MamConfig { prefix_length: o.prefix_length, adapter: ParallelConfig::from_options(o)? })
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let mut hooks: Vec<Box<dyn Hook>> = vec![Box::new(prefix::build(self.prefix_length, enc, params, rng)?)];
        hooks.extend(self.adapter.build(enc, params, rng)?);
        Ok(hooks)
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_MAM", None)
    }
}
