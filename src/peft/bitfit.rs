//! BitFit (Ben Zaken et al.): trains every bias of the encoder — each linear's, each LayerNorm's β,
//! the embeddings' LayerNorm β (and ELECTRA's embeddings projection) and the pooler's — as copies that replace the base biases (the base
//! stays as loaded). Keys: the biases' own names under `base_model.model.`.

use super::{layer_key, peft_prefix, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::encoder::Encoder;
use crate::model::hooks::{BaseWeight, Hook, Part};
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BitfitConfig {}

impl MethodKind for BitfitConfig {
    fn from_options(_: &MethodOptions) -> Result<Self> {
        Ok(BitfitConfig {})
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, _rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let n = &enc.desc.names;
        let mut layers = Vec::with_capacity(enc.layers.len());
        for (l, bl) in enc.layers.iter().enumerate() {
            let lk = layer_key(&enc.desc, l);
            let mut linear = [0; 6];
            for t in Target::ALL {
                let name = format!("{lk}.{}.bias", enc.desc.module(t));
                linear[t.index()] = params.push(name, bl.linear(t).bias.duplicate()?)?;
            }
            let attn_norm = params.push(format!("{lk}.{}.bias", n.attn_norm), bl.attn_norm.bias.duplicate()?)?;
            let out_norm = params.push(format!("{lk}.{}.bias", n.out_norm), bl.out_norm.bias.duplicate()?)?;
            layers.push(LayerBiases { linear, attn_norm, out_norm });
        }
        let p = peft_prefix(&enc.desc);
        let e = &enc.embeddings;
        let emb_norm = params.push(format!("{p}{}.bias", n.embeddings_norm), e.norm.bias.duplicate()?)?;
        let project = match (&e.project, n.embeddings_project) {
            (Some(pr), Some(name)) => Some(params.push(format!("{p}{name}.bias"), pr.bias.duplicate()?)?),
            _ => None,
        };
        let pooler = match (&enc.pooler, n.pooler) {
            (Some(pl), Some(name)) => Some(params.push(format!("{p}{name}.bias"), pl.bias.duplicate()?)?),
            _ => None,
        };
        Ok(vec![Box::new(Bitfit { layers, emb_norm, project, pooler })])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_BITFIT", None)
    }
}

struct LayerBiases {
    /// In `Target` order.
    linear: [ParamId; 6],
    attn_norm: ParamId,
    out_norm: ParamId,
}

struct Bitfit {
    layers: Vec<LayerBiases>,
    emb_norm: ParamId,
    /// ELECTRA's embeddings projection bias.
    project: Option<ParamId>,
    pooler: Option<ParamId>,
}

impl Hook for Bitfit {
    fn lowest_layer(&self) -> Option<usize> {
        Some(0)
    }

    fn replaces(&self, w: BaseWeight) -> Option<ParamId> {
        match w {
            BaseWeight::EmbeddingsNorm(Part::Bias) => Some(self.emb_norm),
            BaseWeight::EmbeddingsProject(Part::Bias) => self.project,
            BaseWeight::Linear(l, t, Part::Bias) => Some(self.layers[l].linear[t.index()]),
            BaseWeight::AttnNorm(l, Part::Bias) => Some(self.layers[l].attn_norm),
            BaseWeight::OutNorm(l, Part::Bias) => Some(self.layers[l].out_norm),
            BaseWeight::Pooler(Part::Bias) => self.pooler,
            _ => None,
        }
    }
}
