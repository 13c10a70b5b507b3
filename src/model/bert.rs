//! The BERT encoder on either device.
//!
//! Per layer (HF BertLayer, post-LN):
//!   q, k, v = x W_{q,k,v}ᵀ + b                          (B·T, C)
//!   ctx     = attention(q, k, v, key mask)              (B, T, C), 12 heads of 32 for MiniLM
//!   h1      = LayerNorm(ctx W_aoᵀ + b + x)
//!   inter   = GELU(h1 W_iᵀ + b)                          (B·T, F)
//!   x'      = LayerNorm(inter W_oᵀ + b + h1)
//! The forward itself lives in `encoder` (shared with the fine-tuning methods); training mode keeps the
//! activations the backward pass needs, inference mode keeps none.

use super::config::BertConfig;
use super::encoder::{Encoder, LayerActs};
use super::weights::NamedTensors;
use crate::error::{Error, Result};
use crate::ops::{self, MatmulDesc, Strides};
use crate::peft::{LayerParams, Method};
use crate::tensor::{Device, Tensor};

/// A linear layer: weight (out, in) and bias (out), as PyTorch stores them.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, Some(&self.bias))
    }
}

/// LayerNorm weight (gamma) and bias (beta).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

#[derive(Clone, Debug)]
pub struct Embeddings {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Tensor,
    pub norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
}

impl Layer {
    /// The linear layer a PEFT target names.
    pub fn linear(&self, t: crate::peft::Target) -> &Linear {
        use crate::peft::Target;
        match t {
            Target::Query => &self.query,
            Target::Key => &self.key,
            Target::Value => &self.value,
            Target::AttnOut => &self.attn_out,
            Target::Intermediate => &self.intermediate,
            Target::Output => &self.output,
        }
    }
}

/// The encoder's weights on one device.
#[derive(Clone, Debug)]
pub struct Bert {
    pub config: BertConfig,
    pub device: Device,
    pub embeddings: Embeddings,
    pub layers: Vec<Layer>,
    /// dense (C, C) + tanh over [CLS]; absent from checkpoints saved without it.
    pub pooler: Option<Linear>,
}

/// A tokenized batch on the device.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub batch: usize,
    pub seq: usize,
    /// (B·T) token ids
    pub ids: Tensor,
    /// (B·T) token type ids
    pub types: Tensor,
    /// (B·T) positions 0..T-1 for every row
    pub positions: Tensor,
    /// (B, T) 1.0 for real tokens, 0.0 for padding
    pub mask: Tensor,
    /// (B, T) additive attention mask: 0 for real tokens, -1e30 for padding
    pub mask_add: Tensor,
}

/// The additive mask value for padding keys: exp(-1e30 - max) is exactly 0 in f32.
pub const MASKED: f32 = -1e30;

impl Inputs {
    /// Uploads a padded (B, T) batch; `attention_mask` holds 1 for real tokens.
    pub fn new(
        device: &Device,
        ids: &[u32],
        attention_mask: &[u32],
        token_types: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Self> {
        let n = batch * seq;
        if ids.len() != n || attention_mask.len() != n || token_types.len() != n || n == 0 {
            return Err(Error::shape(
                "inputs",
                format!(
                    "ids {}, mask {}, types {} do not fill ({batch}, {seq})",
                    ids.len(),
                    attention_mask.len(),
                    token_types.len()
                ),
            ));
        }
        let positions: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
        let mask: Vec<f32> = attention_mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        let mask_add: Vec<f32> = attention_mask.iter().map(|&m| if m != 0 { 0.0 } else { MASKED }).collect();
        Ok(Inputs {
            batch,
            seq,
            ids: device.tensor_u32(ids, &[n])?,
            types: device.tensor_u32(token_types, &[n])?,
            positions: device.tensor_u32(&positions, &[n])?,
            mask: device.tensor(&mask, &[batch, seq])?,
            mask_add: device.tensor(&mask_add, &[batch, seq])?,
        })
    }
}

/// How much a forward pass keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keep nothing but the output.
    Inference,
    /// Keep every activation the backward pass needs.
    Training,
}

/// The result of a forward pass.
pub struct Output {
    /// (B, T, C) the last hidden state
    pub hidden: Tensor,
    /// Training mode only: each layer's activations.
    pub acts: Option<Vec<LayerActs>>,
    /// When asked: the embedding output and every layer's output (HF hidden_states).
    pub hidden_states: Vec<Tensor>,
}

impl Bert {
    /// Builds the encoder from named host tensors (HF names, with or without a `bert.` prefix).
    pub fn from_named(config: BertConfig, mut w: NamedTensors, device: &Device) -> Result<Bert> {
        let prefix = if w.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (c, f) = (config.hidden_size, config.intermediate_size);
        let has_pooler = w.contains(&format!("{prefix}pooler.dense.weight"));
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            // Old checkpoints name LayerNorm parameters gamma/beta.
            let full = if !w.contains(&full) && name.contains("LayerNorm") {
                let alt =
                    full.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
                if w.contains(&alt) {
                    alt
                } else {
                    full
                }
            } else {
                full
            };
            let data = w.take(&full, shape)?;
            device.weight(&data, shape)
        };
        let linear = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
                      name: &str,
                      out: usize,
                      inp: usize|
         -> Result<Linear> {
            Ok(Linear {
                weight: get(&format!("{name}.weight"), &[out, inp])?,
                bias: get(&format!("{name}.bias"), &[out])?,
            })
        };
        let norm = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: get(&format!("{name}.weight"), &[c])?, bias: get(&format!("{name}.bias"), &[c])? })
        };
        let embeddings = Embeddings {
            word: get("embeddings.word_embeddings.weight", &[config.vocab_size, c])?,
            position: get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, c])?,
            token_type: get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, c])?,
            norm: norm(&mut get, "embeddings.LayerNorm")?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                query: linear(&mut get, &format!("{p}.attention.self.query"), c, c)?,
                key: linear(&mut get, &format!("{p}.attention.self.key"), c, c)?,
                value: linear(&mut get, &format!("{p}.attention.self.value"), c, c)?,
                attn_out: linear(&mut get, &format!("{p}.attention.output.dense"), c, c)?,
                attn_norm: norm(&mut get, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut get, &format!("{p}.intermediate.dense"), f, c)?,
                output: linear(&mut get, &format!("{p}.output.dense"), c, f)?,
                out_norm: norm(&mut get, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = if has_pooler { Some(linear(&mut get, "pooler.dense", c, c)?) } else { None };
        Ok(Bert { config, device: device.clone(), embeddings, layers, pooler })
    }

    /// Runs the encoder (no adapters, no dropout). `keep_hidden_states` also returns the embedding
    /// output and each layer's output.
    pub fn forward(&self, inputs: &Inputs, mode: Mode, keep_hidden_states: bool) -> Result<Output> {
        let none = vec![LayerParams::default(); self.layers.len()];
        let enc = Encoder { base: self, layers: &none, emb_norm_bias: None, method: &Method::Head };
        let training = mode == Mode::Training;
        let (hidden, acts, hidden_states) = enc.encode(inputs, None, training, keep_hidden_states)?;
        Ok(Output { hidden, acts: training.then_some(acts), hidden_states })
    }

    /// Masked mean pooling then L2 normalisation: the sentence-transformers embedding. (B, C)
    pub fn sentence_embedding(&self, hidden: &Tensor, inputs: &Inputs) -> Result<Tensor> {
        ops::l2_normalize(&ops::mean_pool(hidden, &inputs.mask)?)
    }

    /// The BERT pooler: tanh(W h[CLS] + b). (B, C)
    pub fn pool_cls(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::tanh(&self.cls_dense(hidden, None)?)
    }

    /// The pooler's dense layer over the [CLS] rows, before tanh: W h[CLS] + b, with `bias` in place
    /// of the checkpoint's when given (BitFit). (B, C)
    pub fn cls_dense(&self, hidden: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let pooler = self.pooler.as_ref().ok_or_else(|| {
            Error::invalid("this checkpoint has no pooler (pooler.dense.*): use the mean-pooling head")
        })?;
        let (b, t, c) = (hidden.dim(0), hidden.dim(1), hidden.dim(2));
        // Rows b*T*C of the hidden state are the [CLS] vectors: a matmul with row stride T*C.
        let mut pre = self.device.uninit("pooler", &[b, c])?;
        let desc = MatmulDesc {
            a: Strides { offset: 0, ld: t * c, bs: [0, 0] },
            ..MatmulDesc::contiguous(1, b, c, c, false, true)
        };
        ops::matmul_into(&mut pre, hidden, &pooler.weight, Some(bias.unwrap_or(&pooler.bias)), &desc)?;
        Ok(pre)
    }

    /// Every weight under its Hugging Face name (no `bert.` prefix), for export and merging.
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![];
        let e = &self.embeddings;
        out.push(("embeddings.word_embeddings.weight".into(), &e.word));
        out.push(("embeddings.position_embeddings.weight".into(), &e.position));
        out.push(("embeddings.token_type_embeddings.weight".into(), &e.token_type));
        out.push(("embeddings.LayerNorm.weight".into(), &e.norm.weight));
        out.push(("embeddings.LayerNorm.bias".into(), &e.norm.bias));
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{l}");
            for t in crate::peft::Target::ALL {
                let lin = layer.linear(t);
                out.push((format!("{p}.{}.weight", t.module()), &lin.weight));
                out.push((format!("{p}.{}.bias", t.module()), &lin.bias));
            }
            for (name, n) in [("attention.output.LayerNorm", &layer.attn_norm), ("output.LayerNorm", &layer.out_norm)] {
                out.push((format!("{p}.{name}.weight"), &n.weight));
                out.push((format!("{p}.{name}.bias"), &n.bias));
            }
        }
        if let Some(p) = &self.pooler {
            out.push(("pooler.dense.weight".into(), &p.weight));
            out.push(("pooler.dense.bias".into(), &p.bias));
        }
        out
    }
}
