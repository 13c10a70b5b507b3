//! The classification head every run trains (PEFT's `modules_to_save`: `classifier`), and the
//! head-only method (a linear probe). The classifier reads the pooler over [CLS] (as
//! BertForSequenceClassification) or the masked mean of the last hidden state.

use super::{Adapted, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::encoder::{drop, EncoderActs, Inputs};
use crate::model::hooks::{site, Dropout, Hook};
use crate::model::{Encoder, LayerDesc, ParamId, ParamSet};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Which hidden state the classifier reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// BertForSequenceClassification: tanh(W_p h[CLS] + b_p), then dropout and the classifier.
    Pooler,
    /// Masked mean of the last hidden state, then dropout and the classifier.
    Mean,
}

impl HeadKind {
    pub fn parse(s: &str) -> crate::Result<HeadKind> {
        match s {
            "pooler" => Ok(HeadKind::Pooler),
            "mean" => Ok(HeadKind::Mean),
            o => Err(crate::Error::invalid(format!("head `{o}` (--head): choose pooler or mean"))),
        }
    }
}

/// Only the classifier trains.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadOnly {}

impl MethodKind for HeadOnly {
    fn from_options(_: &MethodOptions) -> Result<Self> {
        Ok(HeadOnly {})
    }

    fn default_lr(&self) -> f32 {
        1e-2
    }

    fn build(&self, _: &Encoder, _: &mut ParamSet, _: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        Ok(vec![])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_HEAD", None)
    }
}

/// The classifier (K, C) + (K) as HF BertForSequenceClassification initialises it: normal(0, 0.02),
/// zero bias; from a stream of its own so that every method starts from the same head for a seed.
pub(super) fn init_classifier(
    enc: &Encoder,
    params: &mut ParamSet,
    classes: usize,
    seed: u64,
) -> Result<(ParamId, ParamId)> {
    let c = enc.config.hidden_size;
    let mut rng = Rng::new(seed ^ 0xC1A5_51F1);
    let w = enc.device.weight(&rng.vec_normal(classes * c, 0.02), &[classes, c])?;
    let weight = params.push("base_model.model.classifier.weight", w)?;
    let bias = params.push("base_model.model.classifier.bias", enc.device.zeros(&[classes])?)?;
    Ok((weight, bias))
}

/// Everything a training forward keeps.
pub struct Acts {
    pub encoder: EncoderActs,
    /// (B, T, C) last hidden state
    pub hidden: Tensor,
    /// (B, C) the classifier input before dropout (tanh output for the pooler head)
    pub features: Tensor,
    /// (B, C) the classifier input after dropout
    pub features_dropped: Tensor,
}

/// The frozen encoder with a run's trainable parameters on top: what training and evaluation run.
pub struct Classifier<'a> {
    pub base: &'a Encoder,
    pub params: &'a Adapted,
    pub head: HeadKind,
}

impl Classifier<'_> {
    /// The forward pass to logits (B, K). With `dropout` (training) dropout is on; with `keep` it
    /// keeps every activation the backward pass needs.
    pub fn forward(&self, inputs: &Inputs, dropout: Option<&Dropout>, keep: bool) -> Result<(Tensor, Option<Acts>)> {
        let a = self.params;
        a.with_hooks(|hooks| {
            let (hidden, enc_acts, _) = self.base.encode(inputs, hooks, dropout, keep, false)?;
            let features = match self.head {
                HeadKind::Pooler => ops::tanh(&self.base.cls_dense(&hidden, hooks)?)?,
                HeadKind::Mean => ops::mean_pool(&hidden, &inputs.mask)?,
            };
            let features_dropped = drop(&features, dropout, |d| d.hidden, site::HEAD)?;
            let (w, b) = a.classifier;
            let logits = ops::linear(&features_dropped, &a.params[w], Some(&a.params[b]))?;
            let acts = enc_acts.map(|encoder| Acts { encoder, hidden, features, features_dropped });
            Ok((logits, acts))
        })
    }

    /// The classifier's input features (B, C) and the logits (B, K), in evaluation mode.
    pub fn features_and_logits(&self, inputs: &Inputs) -> Result<(Tensor, Tensor)> {
        let a = self.params;
        a.with_hooks(|hooks| {
            let (hidden, _, _) = self.base.encode(inputs, hooks, None, false, false)?;
            let features = match self.head {
                HeadKind::Pooler => ops::tanh(&self.base.cls_dense(&hidden, hooks)?)?,
                HeadKind::Mean => ops::mean_pool(&hidden, &inputs.mask)?,
            };
            let (w, b) = a.classifier;
            let logits = ops::linear(&features, &a.params[w], Some(&a.params[b]))?;
            Ok((features, logits))
        })
    }

    /// Backward from dlogits (B, K): accumulates every trainable gradient into `grads` (aligned
    /// with the parameters).
    pub fn backward(
        &self,
        inputs: &Inputs,
        acts: &Acts,
        dlogits: &Tensor,
        grads: &mut ParamSet,
        dropout: Option<&Dropout>,
    ) -> Result<()> {
        let a = self.params;
        let (w, b) = a.classifier;
        let trains_encoder = a.trains_encoder();
        let (gw, gb) = grads.pair_mut(w, b);
        let dfeat =
            ops::linear_backward(Some(gw), Some(gb), dlogits, &acts.features_dropped, &a.params[w], trains_encoder)?;
        let Some(dfeat) = dfeat else { return Ok(()) };
        let dfeat = drop(&dfeat, dropout, |d| d.hidden, site::HEAD)?;
        a.with_hooks(|hooks| {
            let (lowest, _) = hooks.lowest_layer();
            let dhidden = match self.head {
                HeadKind::Pooler => {
                    let dpre = ops::tanh_backward(&dfeat, &acts.features)?;
                    self.base.cls_dense_backward(grads, &dpre, &acts.hidden, hooks, lowest.is_some())?
                }
                HeadKind::Mean => Some(ops::mean_pool_backward(&dfeat, &inputs.mask)?),
            };
            match dhidden {
                Some(dh) => self.base.backward(inputs, &acts.encoder, dh, hooks, grads, dropout),
                None => Ok(()),
            }
        })
    }
}
