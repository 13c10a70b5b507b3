//! A BERT-family encoder on either device: its weights (named by the architecture's layer
//! description), the forward pass with the fine-tuning methods' hooks (`super::hooks`), and the
//! explicit per-layer backward in the style of llm.c (activation gradients are returned, parameter
//! gradients accumulate into a `ParamSet` of zeros aligned with the parameters).
//!
//! One post-LN layer, with the hook positions:
//! ```text
//!   q, k, v = linear(x)                        (B·T, C) each; linear = hooks around x Wᵀ + b
//!   k, v    = [prefix rows; k, v]              (B, P+T, C)
//!   ctx     = attention(q, k, v, key mask)     (B, T, C), probabilities dropped out in training
//!   ao      = drop(linear_attn_out(ctx)) + branch(AttnOutput)
//!   h1      = LayerNorm(ao + x)
//!   inter   = act(linear_intermediate(h1))      (B·T, F)
//!   o       = drop(linear_output(inter)) + branch(FfnOutput) + branch(Ffn, h1)
//!   out     = LayerNorm(o + h1)
//! ```

use super::arch::{Activation, AttentionKind, EncoderConfig, LayerDesc, NormKind, NormPlacement, Positions, Target};
use super::hooks::{site, BaseWeight, Branch, Cx, Dropout, Hook, HookSaves, Part, Point};
use super::param_set::ParamSet;
use super::weights::NamedTensors;
use crate::error::{Error, Result};
use crate::ops::{self, MatmulDesc, Strides};
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
    /// None without token types.
    pub token_type: Option<Tensor>,
    pub norm: LayerNorm,
    /// ELECTRA: embedding width → hidden width.
    pub project: Option<Linear>,
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
    /// The linear layer of a target.
    pub fn linear(&self, t: Target) -> &Linear {
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
pub struct Encoder {
    pub config: EncoderConfig,
    pub desc: LayerDesc,
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
    /// (B·T) position ids
    pub positions: Tensor,
    /// (B, T) 1.0 for real tokens, 0.0 for padding
    pub mask: Tensor,
    /// (B, T) additive attention mask: 0 for real tokens, -1e30 for padding
    pub mask_add: Tensor,
}

/// The additive mask value for padding keys: exp(-1e30 - max) is exactly 0 in f32.
pub const MASKED: f32 = -1e30;

impl Inputs {
    /// Uploads a padded (B, T) batch with positions 0..T-1; `attention_mask` holds 1 for real tokens.
    pub fn new(
        device: &Device,
        ids: &[u32],
        attention_mask: &[u32],
        token_types: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Self> {
        Self::with_positions(device, ids, attention_mask, token_types, batch, seq, &Positions::Absolute)
    }

    /// Uploads a padded (B, T) batch with position ids counted as `positions` says.
    pub fn with_positions(
        device: &Device,
        ids: &[u32],
        attention_mask: &[u32],
        token_types: &[u32],
        batch: usize,
        seq: usize,
        positions: &Positions,
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
        let pos = positions.ids(attention_mask, seq);
        let mask: Vec<f32> = attention_mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        let mask_add: Vec<f32> = attention_mask.iter().map(|&m| if m != 0 { 0.0 } else { MASKED }).collect();
        Ok(Inputs {
            batch,
            seq,
            ids: device.tensor_u32(ids, &[n])?,
            types: device.tensor_u32(token_types, &[n])?,
            positions: device.tensor_u32(&pos, &[n])?,
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

/// The result of a plain forward pass.
pub struct Output {
    /// (B, T, C) the last hidden state
    pub hidden: Tensor,
    /// Training mode only: each layer's activations.
    pub acts: Option<Vec<LayerActs>>,
    /// When asked: the embedding output and every layer's output (HF hidden_states).
    pub hidden_states: Vec<Tensor>,
}

/// The activations of one layer that its backward pass needs.
#[derive(Clone, Debug)]
pub struct LayerActs {
    pub input: Tensor,
    pub q: Tensor,
    /// k and v as attention saw them (after the hooks and the prefix rows)
    pub k: Tensor,
    pub v: Tensor,
    pub probs: Tensor,
    pub ctx: Tensor,
    pub attn_sum: Tensor,
    pub attn_mean: Tensor,
    pub attn_rstd: Tensor,
    pub h1: Tensor,
    pub inter_pre: Tensor,
    pub inter: Tensor,
    pub out_sum: Tensor,
    pub out_mean: Tensor,
    pub out_rstd: Tensor,
    /// The input each target linear saw, kept only where a hook trains that linear's weight.
    pub linear_in: Vec<Option<Tensor>>,
    pub hooks: HookSaves,
}

/// Everything a training forward keeps below the head.
pub struct EncoderActs {
    pub layers: Vec<LayerActs>,
    /// (B·T, E) the embeddings' output after dropout (the input of ELECTRA's projection)
    pub embedded: Tensor,
    /// The embeddings' sum before its norm, with the norm's statistics: kept only when a hook
    /// trains the norm's weight or the tables.
    pub embeddings_norm: Option<(Tensor, Tensor, Tensor)>,
}

/// The hooks of every active method with their parameters: what a forward runs with. `NONE` runs
/// the plain model.
#[derive(Clone, Copy)]
pub struct Hooks<'a> {
    pub hooks: &'a [&'a dyn Hook],
    pub params: &'a ParamSet,
}

impl Hooks<'_> {
    /// Runs `f` with no hooks: the plain model.
    pub fn none<R>(f: impl FnOnce(Hooks<'_>) -> R) -> R {
        let empty = ParamSet::new();
        f(Hooks { hooks: &[], params: &empty })
    }

    /// The tensor to use for base weight `w` (`base` unless a hook replaces it).
    fn weight<'b>(&'b self, w: BaseWeight, base: &'b Tensor) -> &'b Tensor {
        match self.replaced(w) {
            Some(id) => &self.params[id],
            None => base,
        }
    }

    fn replaced(&self, w: BaseWeight) -> Option<usize> {
        self.hooks.iter().find_map(|h| h.replaces(w))
    }

    /// Whether a hook trains the embeddings' norm weight or a table (the backward then needs the
    /// norm's input and statistics).
    pub fn trains_embeddings_below_norm(&self) -> bool {
        [
            BaseWeight::EmbeddingsNorm(Part::Weight),
            BaseWeight::WordEmbeddings,
            BaseWeight::PositionEmbeddings,
            BaseWeight::TokenTypeEmbeddings,
        ]
        .into_iter()
        .any(|w| self.replaced(w).is_some())
    }

    /// The lowest layer the backward must reach, and whether it must go on into the embeddings.
    pub fn lowest_layer(&self) -> (Option<usize>, bool) {
        let into_embeddings = self.trains_embeddings_below_norm()
            || [Part::Weight, Part::Bias].into_iter().any(|p| {
                self.replaced(BaseWeight::EmbeddingsNorm(p)).is_some()
                    || self.replaced(BaseWeight::EmbeddingsProject(p)).is_some()
            });
        if into_embeddings {
            return (Some(0), true);
        }
        (self.hooks.iter().filter_map(|h| h.lowest_layer()).min(), false)
    }

    /// Whether a hook trains the pooler's weight or bias.
    pub fn trains_pooler(&self) -> bool {
        [Part::Weight, Part::Bias].into_iter().any(|p| self.replaced(BaseWeight::Pooler(p)).is_some())
    }

    /// The prefix rows of layer `l`: (key, value) parameter tensors (P, C).
    fn prefix(&self, l: usize) -> Option<(usize, usize)> {
        self.hooks.iter().find_map(|h| h.prefix(l))
    }
}

/// The (weight, bias) of layer `l`'s norm after attention, and after the FFN.
fn attn_norm(l: usize) -> (BaseWeight, BaseWeight) {
    (BaseWeight::AttnNorm(l, Part::Weight), BaseWeight::AttnNorm(l, Part::Bias))
}
fn out_norm(l: usize) -> (BaseWeight, BaseWeight) {
    (BaseWeight::OutNorm(l, Part::Weight), BaseWeight::OutNorm(l, Part::Bias))
}

/// `drop` that hands back its input itself when dropout is off, so that no alias is left behind to
/// force a copy at the next in-place add.
fn drop_owned(x: Tensor, d: Option<&Dropout>, p: impl Fn(&Dropout) -> f32, site: u32) -> Result<Tensor> {
    match d {
        Some(d) if p(d) > 0.0 => ops::dropout(&x, p(d), d.seed(site)),
        _ => Ok(x),
    }
}

/// Inverted dropout of `x` at `site` (its own backward with the same seed); `x` itself when off.
pub fn drop(x: &Tensor, d: Option<&Dropout>, p: impl Fn(&Dropout) -> f32, site: u32) -> Result<Tensor> {
    match d {
        Some(d) if p(d) > 0.0 => ops::dropout(x, p(d), d.seed(site)),
        _ => Ok(x.clone()),
    }
}

/// (p, seed) of the attention-probability dropout of layer `l`, when active.
fn attn_dropout(d: Option<&Dropout>, l: usize) -> Option<(f32, u32)> {
    d.filter(|d| d.attention > 0.0).map(|d| (d.attention, d.seed(site::layer(l, site::PROBS))))
}

pub fn act_forward(act: Activation, z: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Relu => ops::relu(z),
        Activation::Gelu => ops::gelu(z),
        Activation::Tanh => ops::tanh(z),
    }
}

/// dz for a = act(z), given da (and z and a, whichever the derivative reads).
pub fn act_backward(act: Activation, da: &Tensor, z: &Tensor, a: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Relu => ops::relu_backward(da, z),
        Activation::Gelu => ops::gelu_backward(da, z),
        Activation::Tanh => ops::tanh_backward(da, a),
    }
}

/// dx += dy · W  for y = x Wᵀ: the input gradient of a linear layer, accumulated.
pub fn linear_dx_acc(dx: &mut Tensor, dy: &Tensor, w: &Tensor) -> Result<()> {
    let (rows, n) = (dy.numel() / dy.shape().last().unwrap(), w.dim(0));
    let k = w.dim(1);
    let mut d = MatmulDesc::contiguous(1, rows, k, n, false, false);
    d.accumulate = true;
    ops::matmul_into(dx, dy, w, None, &d)
}

impl Encoder {
    /// Builds the encoder from named host tensors under the description's names, with or without
    /// the prefix of a task model (`bert.`, `roberta.`, …).
    pub fn from_named(config: EncoderConfig, desc: LayerDesc, mut w: NamedTensors, device: &Device) -> Result<Encoder> {
        if desc.norm != NormPlacement::Post || desc.norm_kind != NormKind::LayerNorm {
            return Err(Error::invalid(format!(
                "{}: the encoder runs post-LN LayerNorm layers, not {:?} {:?}",
                desc.arch, desc.norm, desc.norm_kind
            )));
        }
        if desc.attention != AttentionKind::Bidirectional {
            return Err(Error::invalid(format!("{}: the encoder runs bidirectional attention", desc.arch)));
        }
        let n = &desc.names;
        let prefix =
            desc.load_prefixes.iter().copied().find(|p| w.contains(&format!("{p}{}", n.word_embeddings))).unwrap_or("");
        let (c, f, e) = (config.hidden_size, config.intermediate_size, config.embedding_size);
        let has_pooler = n.pooler.is_some_and(|p| w.contains(&format!("{prefix}{p}.weight")));
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
        let norm = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str, c: usize| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: get(&format!("{name}.weight"), &[c])?, bias: get(&format!("{name}.bias"), &[c])? })
        };
        let token_type = match n.token_type_embeddings {
            Some(name) if config.type_vocab_size > 0 => Some(get(name, &[config.type_vocab_size, e])?),
            _ => None,
        };
        let embeddings = Embeddings {
            word: get(n.word_embeddings, &[config.vocab_size, e])?,
            position: get(n.position_embeddings, &[config.max_position_embeddings, e])?,
            token_type,
            norm: norm(&mut get, n.embeddings_norm, e)?,
            project: n.embeddings_project.map(|p| linear(&mut get, p, c, e)).transpose()?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = desc.layer(l);
            let mut lin = |t: Target| {
                let (out, inp) = t.dims(c, f);
                linear(&mut get, &format!("{p}.{}", desc.module(t)), out, inp)
            };
            let (query, key, value, attn_out) =
                (lin(Target::Query)?, lin(Target::Key)?, lin(Target::Value)?, lin(Target::AttnOut)?);
            let (intermediate, output) = (lin(Target::Intermediate)?, lin(Target::Output)?);
            layers.push(Layer {
                query,
                key,
                value,
                attn_out,
                attn_norm: norm(&mut get, &format!("{p}.{}", n.attn_norm), c)?,
                intermediate,
                output,
                out_norm: norm(&mut get, &format!("{p}.{}", n.out_norm), c)?,
            });
        }
        let pooler = match n.pooler {
            Some(p) if has_pooler => Some(linear(&mut get, p, c, c)?),
            _ => None,
        };
        Ok(Encoder { config, desc, device: device.clone(), embeddings, layers, pooler })
    }

    /// The number of values in the encoder's weights.
    pub fn num_parameters(&self) -> usize {
        self.named_weights().iter().map(|(_, t)| t.numel()).sum()
    }

    /// The longest sequence the position table allows.
    pub fn max_len(&self) -> usize {
        self.desc.positions.max_len(self.config.max_position_embeddings)
    }

    /// Uploads a padded (B, T) batch with this architecture's position ids.
    pub fn inputs(&self, ids: &[u32], mask: &[u32], types: &[u32], batch: usize, seq: usize) -> Result<Inputs> {
        Inputs::with_positions(&self.device, ids, mask, types, batch, seq, &self.desc.positions)
    }

    /// Runs the encoder (no methods, no dropout). `keep_hidden_states` also returns the embedding
    /// output and each layer's output.
    pub fn forward(&self, inputs: &Inputs, mode: Mode, keep_hidden_states: bool) -> Result<Output> {
        let training = mode == Mode::Training;
        let (hidden, acts, hidden_states) =
            Hooks::none(|h| self.encode(inputs, h, None, training, keep_hidden_states))?;
        Ok(Output { hidden, acts: acts.map(|a| a.layers), hidden_states })
    }

    fn eps(&self) -> f32 {
        self.config.layer_norm_eps as f32
    }

    /// The attention key mask with `plen` zeros in front for prefix rows. (B, P+T)
    fn key_mask(&self, plen: usize, inputs: &Inputs) -> Result<Tensor> {
        if plen == 0 {
            return Ok(inputs.mask_add.clone());
        }
        let zeros = self.device.zeros(&[plen, 1])?;
        let m = ops::prefix_concat(&zeros, &inputs.mask_add.reshape(&[inputs.batch, inputs.seq, 1])?)?;
        m.reshape(&[inputs.batch, inputs.seq + plen])
    }

    /// Embeddings and every layer with the hooks: the last hidden state (B, T, C); with `keep` the
    /// activations the backward needs; with `keep_states` the embedding output and each layer's
    /// output (HF hidden_states).
    pub fn encode(
        &self,
        inputs: &Inputs,
        hooks: Hooks,
        dropout: Option<&Dropout>,
        keep: bool,
        keep_states: bool,
    ) -> Result<(Tensor, Option<EncoderActs>, Vec<Tensor>)> {
        let (b, t, c) = (inputs.batch, inputs.seq, self.config.hidden_size);
        if t > self.max_len() {
            return Err(Error::shape(
                "encoder",
                format!("sequence of {t} tokens is longer than the {} positions of this model", self.max_len()),
            ));
        }
        let e = &self.embeddings;
        let mut sum = ops::embedding(&inputs.ids, hooks.weight(BaseWeight::WordEmbeddings, &e.word))?;
        let position = hooks.weight(BaseWeight::PositionEmbeddings, &e.position);
        ops::add_into(&mut sum, &ops::embedding(&inputs.positions, position)?, 1.0)?;
        if let Some(tt) = &e.token_type {
            let tt = hooks.weight(BaseWeight::TokenTypeEmbeddings, tt);
            ops::add_into(&mut sum, &ops::embedding(&inputs.types, tt)?, 1.0)?;
        }
        let gamma = hooks.weight(BaseWeight::EmbeddingsNorm(Part::Weight), &e.norm.weight);
        let beta = hooks.weight(BaseWeight::EmbeddingsNorm(Part::Bias), &e.norm.bias);
        let (x, mean, rstd) = ops::layernorm(&sum, gamma, beta, self.eps())?;
        let embeddings_norm = (keep && hooks.trains_embeddings_below_norm()).then_some((sum, mean, rstd));
        let embedded = drop(&x, dropout, |d| d.hidden, site::EMBEDDINGS)?;
        let mut x = match &e.project {
            Some(p) => ops::linear(
                &embedded,
                hooks.weight(BaseWeight::EmbeddingsProject(Part::Weight), &p.weight),
                Some(hooks.weight(BaseWeight::EmbeddingsProject(Part::Bias), &p.bias)),
            )?,
            None => embedded.clone(),
        };
        let mut layers = vec![];
        let mut states = vec![];
        if keep_states {
            states.push(x.reshape(&[b, t, c])?);
        }
        // Every layer with the same number of prefix rows shares one key mask.
        let mut mask: Option<(usize, Tensor)> = None;
        for l in 0..self.layers.len() {
            let plen = hooks.prefix(l).map_or(0, |(k, _)| hooks.params[k].dim(0));
            if mask.as_ref().is_none_or(|(n, _)| *n != plen) {
                mask = Some((plen, self.key_mask(plen, inputs)?));
            }
            let (out, acts) = self.layer_forward(l, x, inputs, &mask.as_ref().unwrap().1, hooks, dropout)?;
            x = out;
            if keep {
                layers.push(acts);
            }
            if keep_states {
                states.push(x.reshape(&[b, t, c])?);
            }
        }
        let acts = keep.then_some(EncoderActs { layers, embedded, embeddings_norm });
        Ok((x.reshape(&[b, t, c])?, acts, states))
    }

    /// y = linear_output(linear_input(x) Wᵀ + b) for target `t` of layer `l`.
    fn linear(
        &self,
        cx: Cx,
        hooks: Hooks,
        t: Target,
        x: &Tensor,
        saves: &mut HookSaves,
        linear_in: &mut [Option<Tensor>],
    ) -> Result<Tensor> {
        let l = cx.layer;
        let base = self.layers[l].linear(t);
        let mut x_in = x.clone();
        for (i, h) in hooks.hooks.iter().enumerate() {
            if let Some((changed, s)) = h.linear_input(cx, t, &x_in)? {
                x_in = changed;
                saves.put(i, Point::Input(t), Some(s));
            }
        }
        let w_ref = BaseWeight::Linear(l, t, Part::Weight);
        let weight = hooks.weight(w_ref, &base.weight);
        let bias = hooks.weight(BaseWeight::Linear(l, t, Part::Bias), &base.bias);
        let mut y = ops::linear(&x_in, weight, Some(bias))?;
        for (i, h) in hooks.hooks.iter().enumerate() {
            if let Some(s) = h.linear_output(cx, t, &x_in, &mut y)? {
                saves.put(i, Point::Output(t), Some(s));
            }
        }
        if hooks.replaced(w_ref).is_some() {
            linear_in[t.index()] = Some(x_in);
        }
        Ok(y)
    }

    /// Adds the hooks' branches at `at` to `out`; `input` is the branch input for `Branch::Ffn`,
    /// and `out` itself (as it stands before each hook) for the others.
    fn branches(
        &self,
        cx: Cx,
        hooks: Hooks,
        at: Branch,
        input: Option<&Tensor>,
        out: &mut Tensor,
        saves: &mut HookSaves,
    ) -> Result<()> {
        for (i, h) in hooks.hooks.iter().enumerate() {
            let own = if input.is_none() { Some(out.clone()) } else { None };
            let inp = input.or(own.as_ref()).unwrap();
            if let Some(s) = h.branch(cx, at, inp, out)? {
                saves.put(i, Point::Branch(at), Some(s));
            }
        }
        Ok(())
    }

    /// One encoder layer on x (B·T, C).
    fn layer_forward(
        &self,
        l: usize,
        x: Tensor,
        inputs: &Inputs,
        mask: &Tensor,
        hooks: Hooks,
        d: Option<&Dropout>,
    ) -> Result<(Tensor, LayerActs)> {
        let (b, t, c) = (inputs.batch, inputs.seq, self.config.hidden_size);
        let layer = &self.layers[l];
        let cx = Cx { layer: l, params: hooks.params, dropout: d };
        let mut saves = HookSaves::new(hooks.hooks.len());
        let mut linear_in = vec![None; 6];
        let mut lin = |tg: Target, input: &Tensor, saves: &mut HookSaves| {
            self.linear(cx, hooks, tg, input, saves, &mut linear_in)
        };
        let q = lin(Target::Query, &x, &mut saves)?.reshape(&[b, t, c])?;
        let mut k = lin(Target::Key, &x, &mut saves)?.reshape(&[b, t, c])?;
        let mut v = lin(Target::Value, &x, &mut saves)?.reshape(&[b, t, c])?;
        if let Some((pk, pv)) = hooks.prefix(l) {
            k = ops::prefix_concat(&hooks.params[pk], &k)?;
            v = ops::prefix_concat(&hooks.params[pv], &v)?;
        }
        let heads = self.config.num_attention_heads;
        let (ctx, probs) = ops::attention(&q, &k, &v, Some(mask), heads, attn_dropout(d, l))?;
        let ctx = ctx.reshape(&[b * t, c])?;
        let ao = lin(Target::AttnOut, &ctx, &mut saves)?;
        let attn_drop = |d: &Dropout| if self.desc.attn_out_dropout { d.hidden } else { 0.0 };
        let mut ao = drop_owned(ao, d, attn_drop, site::layer(l, site::ATTN_OUT))?;
        self.branches(cx, hooks, Branch::AttnOutput, None, &mut ao, &mut saves)?;
        let mut attn_sum = ao;
        ops::add_into(&mut attn_sum, &x, 1.0)?;
        let (h1, attn_mean, attn_rstd) = self.norm(hooks, attn_norm(l), &layer.attn_norm, &attn_sum)?;
        let inter_pre = lin(Target::Intermediate, &h1, &mut saves)?;
        let inter = act_forward(self.desc.activation, &inter_pre)?;
        let o = lin(Target::Output, &inter, &mut saves)?;
        let mut o = drop_owned(o, d, |d| d.hidden, site::layer(l, site::FFN_OUT))?;
        self.branches(cx, hooks, Branch::FfnOutput, None, &mut o, &mut saves)?;
        self.branches(cx, hooks, Branch::Ffn, Some(&h1), &mut o, &mut saves)?;
        let mut out_sum = o;
        ops::add_into(&mut out_sum, &h1, 1.0)?;
        let (out, out_mean, out_rstd) = self.norm(hooks, out_norm(l), &layer.out_norm, &out_sum)?;
        let acts = LayerActs {
            input: x,
            q,
            k,
            v,
            probs,
            ctx,
            attn_sum,
            attn_mean,
            attn_rstd,
            h1,
            inter_pre,
            inter,
            out_sum,
            out_mean,
            out_rstd,
            linear_in,
            hooks: saves,
        };
        Ok((out, acts))
    }

    /// Backward of `linear` for the gradient `dy` of its output: the hooks' and any trained base
    /// weight's gradients accumulate into `grads`, the input gradient is added to `dx` when given
    /// (`dx_zero`: `dx` holds zeros, so it can collect the input gradient itself).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        cx: Cx,
        hooks: Hooks,
        t: Target,
        a: &LayerActs,
        dy: &Tensor,
        dx: Option<&mut Tensor>,
        dx_zero: bool,
        grads: &mut ParamSet,
    ) -> Result<()> {
        let l = cx.layer;
        let base = self.layers[l].linear(t);
        let changes_input = hooks.hooks.iter().any(|h| h.changes_input(l, t));
        // With input hooks the gradient of the linear's own input is collected apart (in `dx` itself
        // when it holds zeros), then passed back through them.
        let in_place = changes_input && dx_zero && dx.is_some();
        let x_shape = [dy.numel() / dy.shape().last().unwrap(), base.weight.dim(1)];
        let mut apart = if changes_input && !in_place { Some(self.device.zeros(&x_shape)?) } else { None };
        let mut dx = dx;
        let mut dy_own: Option<Tensor> = None;
        {
            let mut target: Option<&mut Tensor> = match apart.as_mut() {
                Some(a) => Some(a),
                None => dx.as_deref_mut(),
            };
            for (i, h) in hooks.hooks.iter().enumerate().rev() {
                if let Some(s) = a.hooks.get(i, Point::Output(t)) {
                    let cur = dy_own.as_ref().unwrap_or(dy);
                    if let Some(changed) = h.linear_output_backward(cx, t, s, cur, target.as_deref_mut(), grads)? {
                        dy_own = Some(changed);
                    }
                }
            }
            let dy = dy_own.as_ref().unwrap_or(dy);
            if let Some(id) = hooks.replaced(BaseWeight::Linear(l, t, Part::Bias)) {
                ops::sum_rows_into(&mut grads[id], dy, true)?;
            }
            let w_ref = BaseWeight::Linear(l, t, Part::Weight);
            if let Some(id) = hooks.replaced(w_ref) {
                let x_in = a.linear_in[t.index()].as_ref().expect("the forward keeps a trained linear's input");
                let (rows, k) = (x_in.numel() / x_in.shape().last().unwrap(), *x_in.shape().last().unwrap());
                let n = dy.shape().last().copied().unwrap();
                let mut desc = MatmulDesc::contiguous(1, n, k, rows, true, false);
                desc.accumulate = true;
                ops::matmul_into(&mut grads[id], dy, x_in, None, &desc)?;
            }
            if let Some(target) = target {
                linear_dx_acc(target, dy, hooks.weight(w_ref, &base.weight))?;
            }
        }
        if !changes_input {
            return Ok(());
        }
        // The input hooks' own gradients are wanted even where the input's gradient is not.
        let mut g = match (&apart, &dx) {
            (Some(g), _) => g.clone(),
            (None, Some(dx)) => dx.reshape(&x_shape)?,
            (None, None) => unreachable!("the input gradient is collected somewhere"),
        };
        std::mem::drop(apart);
        for (i, h) in hooks.hooks.iter().enumerate().rev() {
            if let Some(s) = a.hooks.get(i, Point::Input(t)) {
                g = h.linear_input_backward(cx, t, s, g, grads)?;
            }
        }
        if let Some(dx) = dx {
            let g = g.reshape(dx.shape())?;
            if in_place {
                *dx = g;
            } else {
                ops::add_into(dx, &g, 1.0)?;
            }
        }
        Ok(())
    }

    /// Backward of `branches` at `at`: returns the gradient of `out` before the branches were added
    /// (for `Branch::Ffn`, whose input is another tensor, the gradient of that input is added to
    /// `dinput` and dout passes through unchanged).
    #[allow(clippy::too_many_arguments)]
    fn branches_backward(
        &self,
        cx: Cx,
        hooks: Hooks,
        at: Branch,
        a: &LayerActs,
        dout: Tensor,
        dinput: Option<&mut Tensor>,
        grads: &mut ParamSet,
    ) -> Result<Tensor> {
        let mut dout = dout;
        let mut dinput = dinput;
        for (i, h) in hooks.hooks.iter().enumerate().rev() {
            let Some(s) = a.hooks.get(i, Point::Branch(at)) else { continue };
            match dinput.as_deref_mut() {
                Some(di) => h.branch_backward(cx, at, s, &dout, di, grads)?,
                None => {
                    // out' = out + f(out): dout = dout' + f'(dout')
                    let mut d_in = dout.clone();
                    h.branch_backward(cx, at, s, &dout, &mut d_in, grads)?;
                    dout = d_in;
                }
            }
        }
        Ok(dout)
    }

    /// A layer norm whose weight or bias a hook may train: (y, mean, rstd).
    fn norm(
        &self,
        hooks: Hooks,
        w: (BaseWeight, BaseWeight),
        norm: &LayerNorm,
        x: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        ops::layernorm(x, hooks.weight(w.0, &norm.weight), hooks.weight(w.1, &norm.bias), self.eps())
    }

    /// Backward of a layer norm whose weight or bias a hook may train: returns dx.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        hooks: Hooks,
        w: (BaseWeight, BaseWeight),
        norm: &LayerNorm,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        grads: &mut ParamSet,
    ) -> Result<Tensor> {
        let gamma = hooks.weight(w.0, &norm.weight);
        let dx = match hooks.replaced(w.0) {
            Some(id) => ops::layernorm_backward(Some(&mut grads[id]), None, dy, x, mean, rstd, gamma)?,
            None => ops::layernorm_backward(None, None, dy, x, mean, rstd, gamma)?,
        };
        if let Some(id) = hooks.replaced(w.1) {
            ops::sum_rows_into(&mut grads[id], dy, true)?;
        }
        Ok(dx)
    }

    /// Backward of one layer: returns the gradient of its input (a placeholder when `need_dx` is false).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        l: usize,
        a: &LayerActs,
        inputs: &Inputs,
        dout: Tensor,
        hooks: Hooks,
        grads: &mut ParamSet,
        d: Option<&Dropout>,
        need_dx: bool,
    ) -> Result<Tensor> {
        let (b, t, c) = (inputs.batch, inputs.seq, self.config.hidden_size);
        let layer = &self.layers[l];
        let cx = Cx { layer: l, params: hooks.params, dropout: d };

        // out = LN2(out_sum)
        let d_out_sum = self.norm_backward(
            hooks,
            out_norm(l),
            &layer.out_norm,
            &dout,
            &a.out_sum,
            &a.out_mean,
            &a.out_rstd,
            grads,
        )?;
        // out_sum = o + h1
        let mut dh1 = d_out_sum.clone();
        let d_o = self.branches_backward(cx, hooks, Branch::Ffn, a, d_out_sum, Some(&mut dh1), grads)?;
        let d_o = self.branches_backward(cx, hooks, Branch::FfnOutput, a, d_o, None, grads)?;
        let d_o = drop(&d_o, d, |d| d.hidden, site::layer(l, site::FFN_OUT))?;
        // o = inter W_oᵀ + b
        let mut d_inter = self.device.zeros(a.inter.shape())?;
        self.linear_backward(cx, hooks, Target::Output, a, &d_o, Some(&mut d_inter), true, grads)?;
        let d_inter_pre = act_backward(self.desc.activation, &d_inter, &a.inter_pre, &a.inter)?;
        self.linear_backward(cx, hooks, Target::Intermediate, a, &d_inter_pre, Some(&mut dh1), false, grads)?;
        // h1 = LN1(attn_sum)
        let d_attn_sum = self.norm_backward(
            hooks,
            attn_norm(l),
            &layer.attn_norm,
            &dh1,
            &a.attn_sum,
            &a.attn_mean,
            &a.attn_rstd,
            grads,
        )?;
        // attn_sum = ao + x
        let mut dx = if need_dx { Some(d_attn_sum.clone()) } else { None };
        let d_ao = self.branches_backward(cx, hooks, Branch::AttnOutput, a, d_attn_sum, None, grads)?;
        let attn_drop = |d: &Dropout| if self.desc.attn_out_dropout { d.hidden } else { 0.0 };
        let d_ao = drop(&d_ao, d, attn_drop, site::layer(l, site::ATTN_OUT))?;
        let mut d_ctx = self.device.zeros(&[b * t, c])?;
        self.linear_backward(cx, hooks, Target::AttnOut, a, &d_ao, Some(&mut d_ctx), true, grads)?;
        // attention
        let heads = self.config.num_attention_heads;
        let d_ctx = d_ctx.reshape(&[b, t, c])?;
        let (dq, mut dk, mut dv) =
            ops::attention_backward(&d_ctx, &a.q, &a.k, &a.v, &a.probs, heads, attn_dropout(d, l))?;
        if let Some((pk, pv)) = hooks.prefix(l) {
            dk = ops::prefix_split(&mut grads[pk], &dk)?;
            dv = ops::prefix_split(&mut grads[pv], &dv)?;
        }
        let dk = dk.reshape(&[b * t, c])?;
        let dv = dv.reshape(&[b * t, c])?;
        let dq = dq.reshape(&[b * t, c])?;
        for (tg, dy) in [(Target::Query, &dq), (Target::Key, &dk), (Target::Value, &dv)] {
            self.linear_backward(cx, hooks, tg, a, dy, dx.as_mut(), false, grads)?;
        }
        Ok(dx.unwrap_or(dq))
    }

    /// Backward from dhidden (B, T, C), the gradient of the last hidden state: every hook's and
    /// trained weight's gradient accumulates into `grads` (aligned with `hooks.params`).
    pub fn backward(
        &self,
        inputs: &Inputs,
        acts: &EncoderActs,
        dhidden: Tensor,
        hooks: Hooks,
        grads: &mut ParamSet,
        dropout: Option<&Dropout>,
    ) -> Result<()> {
        let (b, t, c) = (inputs.batch, inputs.seq, self.config.hidden_size);
        let (Some(lowest), into_embeddings) = hooks.lowest_layer() else { return Ok(()) };
        let mut dx = dhidden.reshape(&[b * t, c])?;
        for l in (lowest..self.layers.len()).rev() {
            let need_dx = l > lowest || into_embeddings;
            dx = self.layer_backward(l, &acts.layers[l], inputs, dx, hooks, grads, dropout, need_dx)?;
        }
        if !into_embeddings {
            return Ok(());
        }
        let e = &self.embeddings;
        if let Some(p) = &e.project {
            if let Some(id) = hooks.replaced(BaseWeight::EmbeddingsProject(Part::Bias)) {
                ops::sum_rows_into(&mut grads[id], &dx, true)?;
            }
            let w_ref = BaseWeight::EmbeddingsProject(Part::Weight);
            if let Some(id) = hooks.replaced(w_ref) {
                // dW += dyᵀ x over the rows.
                let x_in = &acts.embedded;
                let (rows, k) = (x_in.numel() / x_in.shape().last().unwrap(), *x_in.shape().last().unwrap());
                let n = dx.shape().last().copied().unwrap();
                let mut desc = MatmulDesc::contiguous(1, n, k, rows, true, false);
                desc.accumulate = true;
                ops::matmul_into(&mut grads[id], &dx, x_in, None, &desc)?;
            }
            let mut d = self.device.zeros(acts.embedded.shape())?;
            linear_dx_acc(&mut d, &dx, hooks.weight(w_ref, &p.weight))?;
            dx = d;
        }
        // y = drop(LN(sum) * γ + β): dβ = Σ_rows drop(dy); dγ and the tables need the norm's statistics.
        let d0 = drop(&dx, dropout, |d| d.hidden, site::EMBEDDINGS)?;
        let Some((sum, mean, rstd)) = &acts.embeddings_norm else {
            if let Some(id) = hooks.replaced(BaseWeight::EmbeddingsNorm(Part::Bias)) {
                ops::sum_rows_into(&mut grads[id], &d0, true)?;
            }
            return Ok(());
        };
        let norm = (BaseWeight::EmbeddingsNorm(Part::Weight), BaseWeight::EmbeddingsNorm(Part::Bias));
        let dsum = self.norm_backward(hooks, norm, &e.norm, &d0, sum, mean, rstd, grads)?;
        // sum = word[ids] + position[positions] (+ token_type[types]): each table gathers dsum back.
        let tables = [
            (BaseWeight::WordEmbeddings, &inputs.ids),
            (BaseWeight::PositionEmbeddings, &inputs.positions),
            (BaseWeight::TokenTypeEmbeddings, &inputs.types),
        ];
        for (w, ids) in tables {
            if let Some(id) = hooks.replaced(w) {
                ops::embedding_backward(&mut grads[id], &dsum, ids)?;
            }
        }
        Ok(())
    }

    /// Masked mean pooling then L2 normalisation: the sentence-transformers embedding. (B, C)
    pub fn sentence_embedding(&self, hidden: &Tensor, inputs: &Inputs) -> Result<Tensor> {
        ops::l2_normalize(&ops::mean_pool(hidden, &inputs.mask)?)
    }

    /// The BERT pooler: tanh(W h[CLS] + b). (B, C)
    pub fn pool_cls(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::tanh(&Hooks::none(|h| self.cls_dense(hidden, h))?)
    }

    fn pooler(&self) -> Result<&Linear> {
        self.pooler
            .as_ref()
            .ok_or_else(|| Error::invalid("this checkpoint has no pooler (pooler.dense.*): use the mean-pooling head"))
    }

    /// The pooler's dense layer over the [CLS] rows, before tanh: W h[CLS] + b (with the hooks'
    /// pooler weights where they train them). (B, C)
    pub fn cls_dense(&self, hidden: &Tensor, hooks: Hooks) -> Result<Tensor> {
        let pooler = self.pooler()?;
        let (b, t, c) = (hidden.dim(0), hidden.dim(1), hidden.dim(2));
        // Rows b*T*C of the hidden state are the [CLS] vectors: a matmul with row stride T*C.
        let mut pre = self.device.uninit("pooler", &[b, c])?;
        let desc = MatmulDesc {
            a: Strides { offset: 0, ld: t * c, bs: [0, 0] },
            ..MatmulDesc::contiguous(1, b, c, c, false, true)
        };
        let weight = hooks.weight(BaseWeight::Pooler(Part::Weight), &pooler.weight);
        let bias = hooks.weight(BaseWeight::Pooler(Part::Bias), &pooler.bias);
        ops::matmul_into(&mut pre, hidden, weight, Some(bias), &desc)?;
        Ok(pre)
    }

    /// Backward of `cls_dense` for dpre (B, C): the pooler's trained weights accumulate into
    /// `grads`; returns dhidden (B, T, C) (zero but on the [CLS] rows) when `need_dx`.
    pub fn cls_dense_backward(
        &self,
        grads: &mut ParamSet,
        dpre: &Tensor,
        hidden: &Tensor,
        hooks: Hooks,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let pooler = self.pooler()?;
        let (b, t, c) = (hidden.dim(0), hidden.dim(1), hidden.dim(2));
        if let Some(id) = hooks.replaced(BaseWeight::Pooler(Part::Bias)) {
            ops::sum_rows_into(&mut grads[id], dpre, true)?;
        }
        if let Some(id) = hooks.replaced(BaseWeight::Pooler(Part::Weight)) {
            // dW += dpreᵀ h[CLS]: the [CLS] rows read with a row stride of T·C.
            let mut desc = MatmulDesc {
                b: Strides { offset: 0, ld: t * c, bs: [0, 0] },
                ..MatmulDesc::contiguous(1, c, c, b, true, false)
            };
            desc.accumulate = true;
            ops::matmul_into(&mut grads[id], dpre, hidden, None, &desc)?;
        }
        if !need_dx {
            return Ok(None);
        }
        // Only the [CLS] rows receive a gradient: write them with a row stride of T·C.
        let mut dh = self.device.zeros(&[b, t, c])?;
        let desc = MatmulDesc {
            c: Strides { offset: 0, ld: t * c, bs: [0, 0] },
            ..MatmulDesc::contiguous(1, b, c, c, false, false)
        };
        let weight = hooks.weight(BaseWeight::Pooler(Part::Weight), &pooler.weight);
        ops::matmul_into(&mut dh, dpre, weight, None, &desc)?;
        Ok(Some(dh))
    }

    /// Every weight under its Hugging Face name (inside the base model, no task prefix), for export
    /// and merging.
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let n = &self.desc.names;
        let mut out: Vec<(String, &Tensor)> = vec![];
        let e = &self.embeddings;
        out.push((n.word_embeddings.into(), &e.word));
        out.push((n.position_embeddings.into(), &e.position));
        if let (Some(name), Some(tt)) = (n.token_type_embeddings, &e.token_type) {
            out.push((name.into(), tt));
        }
        out.push((format!("{}.weight", n.embeddings_norm), &e.norm.weight));
        out.push((format!("{}.bias", n.embeddings_norm), &e.norm.bias));
        if let (Some(name), Some(p)) = (n.embeddings_project, &e.project) {
            out.push((format!("{name}.weight"), &p.weight));
            out.push((format!("{name}.bias"), &p.bias));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let p = self.desc.layer(l);
            for t in Target::ALL {
                let lin = layer.linear(t);
                out.push((format!("{p}.{}.weight", self.desc.module(t)), &lin.weight));
                out.push((format!("{p}.{}.bias", self.desc.module(t)), &lin.bias));
            }
            for (name, norm) in [(n.attn_norm, &layer.attn_norm), (n.out_norm, &layer.out_norm)] {
                out.push((format!("{p}.{name}.weight"), &norm.weight));
                out.push((format!("{p}.{name}.bias"), &norm.bias));
            }
        }
        if let (Some(name), Some(p)) = (n.pooler, &self.pooler) {
            out.push((format!("{name}.weight"), &p.weight));
            out.push((format!("{name}.bias"), &p.bias));
        }
        out
    }

    /// The base weights as a `ParamSet` (the tensors are shared, not copied).
    pub fn param_set(&self) -> Result<ParamSet> {
        let mut set = ParamSet::new();
        for (name, t) in self.named_weights() {
            set.push(name, t.clone())?;
        }
        Ok(set)
    }
}
