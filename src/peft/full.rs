//! Full fine-tuning: every weight of the encoder trains — the embedding tables, every norm, every
//! linear and the pooler — as copies that replace the base weights (the base stays as loaded), with
//! the same trainer, checkpoints and files as the other methods. Keys: the weights' own names under
//! `base_model.model.`; `localtune fold` turns the folder into a standalone model that transformers
//! loads, and full fine-tunes merge with every method as task vectors of the base.

use super::{peft_prefix, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::encoder::Encoder;
use crate::model::hooks::{BaseWeight, Hook, Part};
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FullConfig {}

impl MethodKind for FullConfig {
    fn from_options(_: &MethodOptions) -> Result<Self> {
        Ok(FullConfig {})
    }

    /// Every weight moves, so the pretrained rate of BERT's fine-tuning recipes, not an adapter's.
    fn default_lr(&self) -> f32 {
        5e-5
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, _rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let p = peft_prefix(&enc.desc);
        let weights = enc.named_weights();
        let order = order(enc);
        assert_eq!(weights.len(), order.len(), "named_weights and order list the same weights");
        let mut ids = Vec::with_capacity(order.len());
        for ((name, t), w) in weights.into_iter().zip(order) {
            ids.push((w, params.push(format!("{p}{name}"), t.duplicate()?)?));
        }
        Ok(vec![Box::new(Full { ids })])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_FULL", None)
    }
}

/// What each weight of `Encoder::named_weights` is, in its order.
fn order(enc: &Encoder) -> Vec<BaseWeight> {
    let e = &enc.embeddings;
    let mut order = vec![BaseWeight::WordEmbeddings, BaseWeight::PositionEmbeddings];
    if e.token_type.is_some() && enc.desc.names.token_type_embeddings.is_some() {
        order.push(BaseWeight::TokenTypeEmbeddings);
    }
    order.extend([BaseWeight::EmbeddingsNorm(Part::Weight), BaseWeight::EmbeddingsNorm(Part::Bias)]);
    if e.project.is_some() && enc.desc.names.embeddings_project.is_some() {
        order.extend([BaseWeight::EmbeddingsProject(Part::Weight), BaseWeight::EmbeddingsProject(Part::Bias)]);
    }
    for l in 0..enc.layers.len() {
        for t in Target::ALL {
            order.extend([BaseWeight::Linear(l, t, Part::Weight), BaseWeight::Linear(l, t, Part::Bias)]);
        }
        order.extend([BaseWeight::AttnNorm(l, Part::Weight), BaseWeight::AttnNorm(l, Part::Bias)]);
        order.extend([BaseWeight::OutNorm(l, Part::Weight), BaseWeight::OutNorm(l, Part::Bias)]);
    }
    if enc.pooler.is_some() && enc.desc.names.pooler.is_some() {
        order.extend([BaseWeight::Pooler(Part::Weight), BaseWeight::Pooler(Part::Bias)]);
    }
    order
}

struct Full {
    ids: Vec<(BaseWeight, ParamId)>,
}

impl Hook for Full {
    fn lowest_layer(&self) -> Option<usize> {
        Some(0)
    }

    fn replaces(&self, w: BaseWeight) -> Option<ParamId> {
        self.ids.iter().find(|(b, _)| *b == w).map(|(_, id)| *id)
    }
}
