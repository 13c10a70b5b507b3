//! The parallel adapter (He et al.): a bottleneck beside the FFN, reading the FFN's input and adding
//! s · up(act(down(h1))) to its output (s = 4 by default, as in the paper). Keys:
//! `….output.parallel_adapter.{down,up}.*`.

use super::adapter::Bottleneck;
use super::{layer_key, parent, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::arch::Activation;
use crate::model::encoder::Encoder;
use crate::model::hooks::{Branch, Cx, Hook, Saved};
use crate::model::{LayerDesc, ParamSet, Target};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParallelConfig {
    /// hidden / bottleneck width
    pub reduction_factor: usize,
    pub activation: Activation,
    /// Output scale (He et al. use 4).
    pub scaling: f32,
}

impl MethodKind for ParallelConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        Ok(ParallelConfig {
            reduction_factor: o.reduction_factor,
            activation: o.activation()?,
            scaling: o.adapter_scaling.unwrap_or(4.0),
        })
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let mut layers = Vec::with_capacity(enc.layers.len());
        for l in 0..enc.layers.len() {
            let name =
                format!("{}.{}.parallel_adapter", layer_key(&enc.desc, l), parent(enc.desc.module(Target::Output)));
            layers.push(Bottleneck::init(enc, params, rng, &name, self.reduction_factor)?);
        }
        Ok(vec![Box::new(Parallel { config: self.clone(), layers })])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_PARALLEL_ADAPTER", None)
    }
}

struct Parallel {
    config: ParallelConfig,
    layers: Vec<Bottleneck>,
}

impl Hook for Parallel {
    fn lowest_layer(&self) -> Option<usize> {
        (!self.layers.is_empty()).then_some(0)
    }

    fn branch(&self, cx: Cx, at: Branch, input: &Tensor, out: &mut Tensor) -> Result<Option<Saved>> {
        if at != Branch::Ffn {
            return Ok(None);
        }
        let c = &self.config;
        let (delta, saved) = self.layers[cx.layer].forward(cx.params, c.activation, c.scaling, input)?;
        ops::add_into(out, &delta, 1.0)?;
        Ok(Some(saved))
    }

    fn branch_backward(
        &self,
        cx: Cx,
        _at: Branch,
        saved: &Saved,
        dout: &Tensor,
        dinput: &mut Tensor,
        grads: &mut ParamSet,
    ) -> Result<()> {
        let c = &self.config;
        self.layers[cx.layer].backward(cx.params, c.activation, c.scaling, saved, dout, dinput, Some(grads))
    }
}
