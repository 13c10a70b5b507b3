//! The encoder forward and backward with the PEFT methods' hooks (see `crate::peft`), and the
//! classification head. Explicit per-layer backward in the style of llm.c: activation gradients are
//! returned, parameter gradients accumulate into a `Trainable` of zeros with the same structure.
//!
//! One layer, with every hook (post-LN BERT):
//! ```text
//!   q = x W_qᵀ + b_q [+ LoRA]                 k, v likewise [⊙ l_k, l_v (IA)³] [prefix rows in front]
//!   ctx = attention(q, k, v, mask)            (probs dropout in training)
//!   ao = drop(ctx W_aoᵀ + b [+ LoRA])  [+ adapter(ao)]
//!   h1 = LN(ao + x)
//!   inter = GELU(h1 W_iᵀ + b [+ LoRA]) [⊙ l_ff]
//!   o = drop(inter W_oᵀ + b [+ LoRA]) [+ adapter(o)] [+ s · parallel(h1)]
//!   out = LN(o + h1)
//! ```

use super::bert::{Bert, Inputs, Linear};
use crate::error::{Error, Result};
use crate::ops::{self, MatmulDesc, Strides};
use crate::peft::{Activation, Bottleneck, HeadKind, LayerParams, Lora, Method, Target, Trainable};
use crate::rng::mix_seed;
use crate::tensor::Tensor;

/// Dropout settings of a training step; `None` in evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub seed: u32,
    pub step: u32,
    pub hidden: f32,
    pub attention: f32,
    pub lora: f32,
}

impl Dropout {
    /// The mask seed of one dropout site of this step.
    fn seed(&self, site: u32) -> u32 {
        mix_seed(&[self.seed, self.step, site])
    }
}

const SITE_EMBEDDINGS: u32 = 1;
const SITE_HEAD: u32 = 2;
fn site(layer: usize, what: u32) -> u32 {
    100 + layer as u32 * 16 + what
}
const SITE_PROBS: u32 = 0;
const SITE_ATTN_OUT: u32 = 1;
const SITE_FFN_OUT: u32 = 2;
const SITE_LORA: u32 = 3; // + target index (3..9)

fn lora_site(layer: usize, t: Target) -> u32 {
    site(layer, SITE_LORA + t.index() as u32)
}

/// (p, seed) of the attention-probability dropout of layer `l`, when active.
fn attn_dropout(d: Option<&Dropout>, l: usize) -> Option<(f32, u32)> {
    d.filter(|d| d.attention > 0.0).map(|d| (d.attention, d.seed(site(l, SITE_PROBS))))
}

/// `drop` that hands back its input itself when dropout is off, so that no alias is left behind to
/// force a copy at the next in-place add.
fn drop_owned(x: Tensor, d: Option<&Dropout>, p: impl Fn(&Dropout) -> f32, site: u32) -> Result<Tensor> {
    match d {
        Some(d) if p(d) > 0.0 => ops::dropout(&x, p(d), d.seed(site)),
        _ => Ok(x),
    }
}

fn drop(x: &Tensor, d: Option<&Dropout>, p: impl Fn(&Dropout) -> f32, site: u32) -> Result<Tensor> {
    match d {
        Some(d) if p(d) > 0.0 => ops::dropout(x, p(d), d.seed(site)),
        _ => Ok(x.clone()),
    }
}

/// What a LoRA branch keeps: its (dropped-out) input and the rank-r projection.
#[derive(Clone, Debug)]
pub struct LoraActs {
    pub xd: Tensor,
    pub u: Tensor,
}

#[derive(Clone, Debug)]
pub struct BottleneckActs {
    pub input: Tensor,
    pub z: Tensor,
    pub a: Tensor,
}

/// The activations of one layer that its backward pass needs.
#[derive(Clone, Debug)]
pub struct LayerActs {
    pub input: Tensor,
    pub q: Tensor,
    /// k and v as attention saw them (after (IA)³ and prefix rows)
    pub k: Tensor,
    pub v: Tensor,
    /// k, v before (IA)³ scaling, when (IA)³ is on
    pub k_raw: Option<Tensor>,
    pub v_raw: Option<Tensor>,
    pub probs: Tensor,
    pub ctx: Tensor,
    pub lora: Vec<Option<LoraActs>>,
    pub adapter_attn: Option<BottleneckActs>,
    pub attn_sum: Tensor,
    pub attn_mean: Tensor,
    pub attn_rstd: Tensor,
    pub h1: Tensor,
    pub inter_pre: Tensor,
    /// GELU output before (IA)³
    pub inter: Tensor,
    /// the input of the output dense (after (IA)³)
    pub inter_in: Tensor,
    pub adapter_ffn: Option<BottleneckActs>,
    pub parallel: Option<BottleneckActs>,
    pub out_sum: Tensor,
    pub out_mean: Tensor,
    pub out_rstd: Tensor,
}

/// Everything a training forward keeps.
pub struct Acts {
    pub layers: Vec<LayerActs>,
    /// (B, T, C) last hidden state
    pub hidden: Tensor,
    /// (B, C) pre-tanh pooler output (pooler head)
    pub pooled: Option<Tensor>,
    /// (B, C) the classifier input before dropout
    pub features: Tensor,
    /// (B, C) the classifier input after dropout
    pub features_dropped: Tensor,
}

/// The frozen encoder with the per-layer trainable parameters of a method (none for the plain model).
pub struct Encoder<'a> {
    pub base: &'a Bert,
    pub layers: &'a [LayerParams],
    pub emb_norm_bias: Option<&'a Tensor>,
    pub method: &'a Method,
}

/// The frozen encoder with trainable parameters on top: what training and evaluation run.
pub struct Classifier<'a> {
    pub base: &'a Bert,
    pub params: &'a Trainable,
    pub method: &'a Method,
    pub head: HeadKind,
}

fn lora_scaling(method: &Method) -> f32 {
    match method {
        Method::Lora(c) => c.scaling(),
        _ => 1.0,
    }
}

fn adapter_scaling(method: &Method) -> f32 {
    match method {
        Method::Adapter(a) | Method::ParallelAdapter(a) => a.scaling,
        _ => 1.0,
    }
}

fn adapter_activation(method: &Method) -> Activation {
    match method {
        Method::Adapter(a) | Method::ParallelAdapter(a) => a.activation,
        _ => Activation::Relu,
    }
}

fn act_forward(act: Activation, z: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Relu => ops::relu(z),
        Activation::Gelu => ops::gelu(z),
        Activation::Tanh => ops::tanh(z),
    }
}

fn act_backward(act: Activation, da: &Tensor, z: &Tensor, a: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Relu => ops::relu_backward(da, z),
        Activation::Gelu => ops::gelu_backward(da, z),
        Activation::Tanh => ops::tanh_backward(da, a),
    }
}

/// dx += dy · W  for y = x Wᵀ: the input gradient of a linear layer, accumulated.
fn linear_dx_acc(dx: &mut Tensor, dy: &Tensor, w: &Tensor) -> Result<()> {
    let (rows, n) = (dy.numel() / dy.shape().last().unwrap(), w.dim(0));
    let k = w.dim(1);
    let mut d = MatmulDesc::contiguous(1, rows, k, n, false, false);
    d.accumulate = true;
    ops::matmul_into(dx, dy, w, None, &d)
}

impl Encoder<'_> {
    fn layer_dims(&self, inputs: &Inputs) -> (usize, usize, usize) {
        (inputs.batch, inputs.seq, self.base.config.hidden_size)
    }

    /// y = x Wᵀ + b (+ s · (drop(x) Aᵀ) Bᵀ)
    fn linear(
        &self,
        x: &Tensor,
        w: &Linear,
        bias: Option<&Tensor>,
        lora: Option<&Lora>,
        d: Option<&Dropout>,
        site_id: u32,
    ) -> Result<(Tensor, Option<LoraActs>)> {
        let mut y = ops::linear(x, &w.weight, Some(bias.unwrap_or(&w.bias)))?;
        let Some(lora) = lora else { return Ok((y, None)) };
        let xd = drop(x, d, |d| d.lora, site_id)?;
        let u = ops::linear(&xd, &lora.a, None)?; // (N, r)
        let rows = u.dim(0);
        let (out, r) = (lora.b.dim(0), lora.b.dim(1));
        let mut desc = MatmulDesc::contiguous(1, rows, out, r, false, true);
        desc.alpha = lora_scaling(self.method);
        desc.accumulate = true;
        ops::matmul_into(&mut y, &u, &lora.b, None, &desc)?;
        Ok((y, Some(LoraActs { xd, u })))
    }

    /// Backward of `linear`: dx += dy W (+ LoRA path); dW is frozen; db and LoRA grads accumulate.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Linear,
        dbias: Option<&mut Tensor>,
        lora: Option<&Lora>,
        acts: Option<&LoraActs>,
        dlora: Option<&mut Lora>,
        dx: Option<&mut Tensor>,
        d: Option<&Dropout>,
        site_id: u32,
    ) -> Result<()> {
        if let Some(db) = dbias {
            ops::sum_rows_into(db, dy, true)?;
        }
        if let (Some(lora), Some(acts), Some(dl)) = (lora, acts, dlora) {
            let s = lora_scaling(self.method);
            let rows = acts.u.dim(0);
            let (out, r) = (lora.b.dim(0), lora.b.dim(1));
            let inp = lora.a.dim(1);
            // dB += s · dyᵀ u
            let mut desc = MatmulDesc::contiguous(1, out, r, rows, true, false);
            desc.alpha = s;
            desc.accumulate = true;
            ops::matmul_into(&mut dl.b, dy, &acts.u, None, &desc)?;
            // du = s · dy B
            let mut du = dy.device().uninit("lora_backward", &[rows, r])?;
            let mut desc = MatmulDesc::contiguous(1, rows, r, out, false, false);
            desc.alpha = s;
            ops::matmul_into(&mut du, dy, &lora.b, None, &desc)?;
            // dA += duᵀ xd
            let mut desc = MatmulDesc::contiguous(1, r, inp, rows, true, false);
            desc.accumulate = true;
            ops::matmul_into(&mut dl.a, &du, &acts.xd, None, &desc)?;
            if let Some(dx) = dx {
                let dxd = ops::matmul(&du, &lora.a, false, false)?;
                let dxd = drop(&dxd, d, |d| d.lora, site_id)?;
                ops::add_into(dx, &dxd, 1.0)?;
                linear_dx_acc(dx, dy, &w.weight)?;
            }
        } else if let Some(dx) = dx {
            linear_dx_acc(dx, dy, &w.weight)?;
        }
        Ok(())
    }

    fn bottleneck_forward(&self, a: &Bottleneck, h: &Tensor) -> Result<(Tensor, BottleneckActs)> {
        let z = a.down.forward(h)?;
        let act = act_forward(adapter_activation(self.method), &z)?;
        let u = a.up.forward(&act)?;
        Ok((ops::scale(&u, adapter_scaling(self.method))?, BottleneckActs { input: h.clone(), z, a: act }))
    }

    /// Backward of `bottleneck_forward` for the gradient `dout` of its (scaled) output: accumulates the
    /// adapter's gradients and adds the input gradient to `dh`.
    fn bottleneck_backward(
        &self,
        a: &Bottleneck,
        acts: &BottleneckActs,
        dout: &Tensor,
        g: &mut Bottleneck,
        dh: &mut Tensor,
    ) -> Result<()> {
        let du = ops::scale(dout, adapter_scaling(self.method))?;
        let da = ops::linear_backward(&du, &acts.a, &a.up.weight, Some(&mut g.up.weight), Some(&mut g.up.bias), true)?
            .unwrap();
        let dz = act_backward(adapter_activation(self.method), &da, &acts.z, &acts.a)?;
        ops::linear_backward(
            &dz,
            &acts.input,
            &a.down.weight,
            Some(&mut g.down.weight),
            Some(&mut g.down.bias),
            false,
        )?;
        linear_dx_acc(dh, &dz, &a.down.weight)
    }

    /// One encoder layer on x (B·T, C).
    fn layer_forward(
        &self,
        l: usize,
        x: Tensor,
        inputs: &Inputs,
        mask: &Tensor,
        d: Option<&Dropout>,
    ) -> Result<(Tensor, LayerActs)> {
        let (b, t, c) = self.layer_dims(inputs);
        let layer = &self.base.layers[l];
        let p = &self.layers[l];
        let bias = |i: Target| p.biases.as_ref().map(|bs| &bs.linear[i.index()]);
        let mut lora_acts: Vec<Option<LoraActs>> = vec![None; 6];
        let mut proj = |t: Target, input: &Tensor| -> Result<Tensor> {
            let (y, la) = self.linear(input, layer.linear(t), bias(t), p.lora(t), d, lora_site(l, t))?;
            lora_acts[t.index()] = la;
            Ok(y)
        };
        let q = proj(Target::Query, &x)?.reshape(&[b, t, c])?;
        let mut k = proj(Target::Key, &x)?;
        let mut v = proj(Target::Value, &x)?;
        let (mut k_raw, mut v_raw) = (None, None);
        if let Some(ia3) = &p.ia3 {
            let ks = ops::mul(&k, &ia3.key)?;
            let vs = ops::mul(&v, &ia3.value)?;
            k_raw = Some(std::mem::replace(&mut k, ks));
            v_raw = Some(std::mem::replace(&mut v, vs));
        }
        let mut k = k.reshape(&[b, t, c])?;
        let mut v = v.reshape(&[b, t, c])?;
        if let Some(pr) = &p.prefix {
            k = ops::prefix_concat(&pr.key, &k)?;
            v = ops::prefix_concat(&pr.value, &v)?;
        }
        let heads = self.base.config.num_attention_heads;
        let (ctx, probs) = ops::attention(&q, &k, &v, Some(mask), heads, attn_dropout(d, l))?;
        let ctx = ctx.reshape(&[b * t, c])?;
        let mut ao = drop_owned(proj(Target::AttnOut, &ctx)?, d, |d| d.hidden, site(l, SITE_ATTN_OUT))?;
        let mut adapter_attn = None;
        if let Some(a) = &p.adapter_attn {
            let (delta, acts) = self.bottleneck_forward(a, &ao)?;
            ops::add_into(&mut ao, &delta, 1.0)?;
            adapter_attn = Some(acts);
        }
        let mut attn_sum = ao;
        ops::add_into(&mut attn_sum, &x, 1.0)?;
        let attn_norm_bias = p.biases.as_ref().map_or(&layer.attn_norm.bias, |bs| &bs.attn_norm);
        let (h1, attn_mean, attn_rstd) =
            ops::layernorm(&attn_sum, &layer.attn_norm.weight, attn_norm_bias, self.eps())?;
        let inter_pre = proj(Target::Intermediate, &h1)?;
        let inter = ops::gelu(&inter_pre)?;
        let inter_in = match &p.ia3 {
            Some(ia3) => ops::mul(&inter, &ia3.ffn)?,
            None => inter.clone(),
        };
        let mut o = drop_owned(proj(Target::Output, &inter_in)?, d, |d| d.hidden, site(l, SITE_FFN_OUT))?;
        let mut adapter_ffn = None;
        if let Some(a) = &p.adapter_ffn {
            let (delta, acts) = self.bottleneck_forward(a, &o)?;
            ops::add_into(&mut o, &delta, 1.0)?;
            adapter_ffn = Some(acts);
        }
        let mut parallel = None;
        if let Some(a) = &p.parallel {
            let (delta, acts) = self.bottleneck_forward(a, &h1)?;
            ops::add_into(&mut o, &delta, 1.0)?;
            parallel = Some(acts);
        }
        let mut out_sum = o;
        ops::add_into(&mut out_sum, &h1, 1.0)?;
        let out_norm_bias = p.biases.as_ref().map_or(&layer.out_norm.bias, |bs| &bs.out_norm);
        let (out, out_mean, out_rstd) = ops::layernorm(&out_sum, &layer.out_norm.weight, out_norm_bias, self.eps())?;
        let acts = LayerActs {
            input: x,
            q,
            k,
            v,
            k_raw,
            v_raw,
            probs,
            ctx,
            lora: lora_acts,
            adapter_attn,
            attn_sum,
            attn_mean,
            attn_rstd,
            h1,
            inter_pre,
            inter,
            inter_in,
            adapter_ffn,
            parallel,
            out_sum,
            out_mean,
            out_rstd,
        };
        Ok((out, acts))
    }

    fn eps(&self) -> f32 {
        self.base.config.layer_norm_eps as f32
    }

    /// The attention key mask with `plen` zeros in front for prefix rows. (B, P+T)
    fn key_mask(&self, plen: usize, inputs: &Inputs) -> Result<Tensor> {
        if plen == 0 {
            return Ok(inputs.mask_add.clone());
        }
        let zeros = self.base.device.zeros(&[plen, 1])?;
        let m = ops::prefix_concat(&zeros, &inputs.mask_add.reshape(&[inputs.batch, inputs.seq, 1])?)?;
        m.reshape(&[inputs.batch, inputs.seq + plen])
    }

    /// Embeddings and every layer: the last hidden state (B, T, C); with `keep` the activations of
    /// each layer; with `keep_states` the embedding output and each layer's output (HF hidden_states).
    pub fn encode(
        &self,
        inputs: &Inputs,
        dropout: Option<&Dropout>,
        keep: bool,
        keep_states: bool,
    ) -> Result<(Tensor, Vec<LayerActs>, Vec<Tensor>)> {
        let (b, t, c) = self.layer_dims(inputs);
        if t > self.base.config.max_position_embeddings {
            return Err(Error::shape(
                "encoder",
                format!(
                    "sequence of {t} tokens is longer than max_position_embeddings {}",
                    self.base.config.max_position_embeddings
                ),
            ));
        }
        let e = &self.base.embeddings;
        let mut sum = ops::embedding(&inputs.ids, &e.word)?;
        ops::add_into(&mut sum, &ops::embedding(&inputs.positions, &e.position)?, 1.0)?;
        ops::add_into(&mut sum, &ops::embedding(&inputs.types, &e.token_type)?, 1.0)?;
        let emb_bias = self.emb_norm_bias.unwrap_or(&e.norm.bias);
        let (x, _, _) = ops::layernorm(&sum, &e.norm.weight, emb_bias, self.eps())?;
        let mut x = drop(&x, dropout, |d| d.hidden, SITE_EMBEDDINGS)?;
        let mut layers = vec![];
        let mut states = vec![];
        if keep_states {
            states.push(x.reshape(&[b, t, c])?);
        }
        // Every layer with the same number of prefix rows shares one key mask.
        let mut mask: Option<(usize, Tensor)> = None;
        for l in 0..self.base.layers.len() {
            let plen = self.layers[l].prefix.as_ref().map_or(0, |pr| pr.key.dim(0));
            if mask.as_ref().is_none_or(|(n, _)| *n != plen) {
                mask = Some((plen, self.key_mask(plen, inputs)?));
            }
            let (out, acts) = self.layer_forward(l, x, inputs, &mask.as_ref().unwrap().1, dropout)?;
            x = out;
            if keep {
                layers.push(acts);
            }
            if keep_states {
                states.push(x.reshape(&[b, t, c])?);
            }
        }
        Ok((x.reshape(&[b, t, c])?, layers, states))
    }

    /// Backward of the linear layer `t` of layer `l` (with its LoRA and BitFit bias when trained).
    #[allow(clippy::too_many_arguments)]
    fn target_backward(
        &self,
        l: usize,
        t: Target,
        dy: &Tensor,
        a: &LayerActs,
        g: &mut LayerParams,
        dx: Option<&mut Tensor>,
        d: Option<&Dropout>,
    ) -> Result<()> {
        let (lora_g, bias_g) = split_grads(g, t);
        let lora = self.layers[l].lora(t);
        let acts = a.lora[t.index()].as_ref();
        let w = self.base.layers[l].linear(t);
        self.linear_backward(dy, w, bias_g, lora, acts, lora_g, dx, d, lora_site(l, t))
    }

    /// Backward of one layer: returns the gradient of its input (a placeholder when `need_dx` is false).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        l: usize,
        a: &LayerActs,
        inputs: &Inputs,
        dout: Tensor,
        g: &mut LayerParams,
        d: Option<&Dropout>,
        need_dx: bool,
    ) -> Result<Tensor> {
        let (b, t, c) = self.layer_dims(inputs);
        let dev = &self.base.device;
        let layer = &self.base.layers[l];
        let p = &self.layers[l];

        // out = LN2(out_sum)
        let d_out_sum =
            ops::layernorm_backward(&dout, &a.out_sum, &a.out_mean, &a.out_rstd, &layer.out_norm.weight, None, None)?;
        if let Some(bs) = &mut g.biases {
            ops::sum_rows_into(&mut bs.out_norm, &dout, true)?;
        }
        // out_sum = o + h1
        let mut dh1 = d_out_sum.clone();
        let mut d_o = d_out_sum;
        if let (Some(pa), Some(acts), Some(ga)) = (&p.parallel, &a.parallel, &mut g.parallel) {
            self.bottleneck_backward(pa, acts, &d_o, ga, &mut dh1)?;
        }
        if let (Some(pa), Some(acts), Some(ga)) = (&p.adapter_ffn, &a.adapter_ffn, &mut g.adapter_ffn) {
            // o' = o + A(o): do = do' + A'(do')
            let mut d_in = d_o.clone();
            self.bottleneck_backward(pa, acts, &d_o, ga, &mut d_in)?;
            d_o = d_in;
        }
        let d_o = drop(&d_o, d, |d| d.hidden, site(l, SITE_FFN_OUT))?;
        // o = inter_in W_oᵀ + b (+ LoRA)
        let mut d_inter_in = dev.zeros(a.inter_in.shape())?;
        self.target_backward(l, Target::Output, &d_o, a, g, Some(&mut d_inter_in), d)?;
        // inter_in = inter ⊙ l_ff
        let d_inter = match (&p.ia3, &mut g.ia3) {
            (Some(ia3), Some(gi)) => {
                let prod = ops::mul(&d_inter_in, &a.inter)?;
                ops::sum_rows_into(&mut gi.ffn, &prod, true)?;
                ops::mul(&d_inter_in, &ia3.ffn)?
            }
            _ => d_inter_in,
        };
        let d_inter_pre = ops::gelu_backward(&d_inter, &a.inter_pre)?;
        self.target_backward(l, Target::Intermediate, &d_inter_pre, a, g, Some(&mut dh1), d)?;
        // h1 = LN1(attn_sum)
        let d_attn_sum = ops::layernorm_backward(
            &dh1,
            &a.attn_sum,
            &a.attn_mean,
            &a.attn_rstd,
            &layer.attn_norm.weight,
            None,
            None,
        )?;
        if let Some(bs) = &mut g.biases {
            ops::sum_rows_into(&mut bs.attn_norm, &dh1, true)?;
        }
        // attn_sum = ao + x
        let mut dx = if need_dx { Some(d_attn_sum.clone()) } else { None };
        let mut d_ao = d_attn_sum;
        if let (Some(pa), Some(acts), Some(ga)) = (&p.adapter_attn, &a.adapter_attn, &mut g.adapter_attn) {
            let mut d_in = d_ao.clone();
            self.bottleneck_backward(pa, acts, &d_ao, ga, &mut d_in)?;
            d_ao = d_in;
        }
        let d_ao = drop(&d_ao, d, |d| d.hidden, site(l, SITE_ATTN_OUT))?;
        let mut d_ctx = dev.zeros(&[b * t, c])?;
        self.target_backward(l, Target::AttnOut, &d_ao, a, g, Some(&mut d_ctx), d)?;
        // attention
        let heads = self.base.config.num_attention_heads;
        let d_ctx = d_ctx.reshape(&[b, t, c])?;
        let (dq, mut dk, mut dv) =
            ops::attention_backward(&d_ctx, &a.q, &a.k, &a.v, &a.probs, heads, attn_dropout(d, l))?;
        if let (Some(_), Some(gp)) = (&p.prefix, &mut g.prefix) {
            dk = ops::prefix_split(&dk, &mut gp.key)?;
            dv = ops::prefix_split(&dv, &mut gp.value)?;
        }
        let mut dk = dk.reshape(&[b * t, c])?;
        let mut dv = dv.reshape(&[b * t, c])?;
        if let (Some(ia3), Some(gi)) = (&p.ia3, &mut g.ia3) {
            ops::sum_rows_into(&mut gi.key, &ops::mul(&dk, a.k_raw.as_ref().unwrap())?, true)?;
            ops::sum_rows_into(&mut gi.value, &ops::mul(&dv, a.v_raw.as_ref().unwrap())?, true)?;
            dk = ops::mul(&dk, &ia3.key)?;
            dv = ops::mul(&dv, &ia3.value)?;
        }
        let dq = dq.reshape(&[b * t, c])?;
        for (tg, dy) in [(Target::Query, &dq), (Target::Key, &dk), (Target::Value, &dv)] {
            self.target_backward(l, tg, dy, a, g, dx.as_mut(), d)?;
        }
        Ok(dx.unwrap_or(dq))
    }
}

impl Classifier<'_> {
    fn encoder(&self) -> Encoder<'_> {
        Encoder {
            base: self.base,
            layers: &self.params.layers,
            emb_norm_bias: self.params.emb_norm_bias.as_ref(),
            method: self.method,
        }
    }

    /// The forward pass to logits (B, K). With `dropout` (training) dropout is on; with `keep` it
    /// keeps every activation the backward pass needs.
    pub fn forward(&self, inputs: &Inputs, dropout: Option<&Dropout>, keep: bool) -> Result<(Tensor, Option<Acts>)> {
        let (hidden, layers, _) = self.encoder().encode(inputs, dropout, keep, false)?;
        let (features, pooled) = match self.head {
            HeadKind::Pooler => {
                let pre = self.base.cls_dense(&hidden, self.params.pooler_bias.as_ref())?;
                (ops::tanh(&pre)?, Some(pre))
            }
            HeadKind::Mean => (ops::mean_pool(&hidden, &inputs.mask)?, None),
        };
        let features_dropped = drop(&features, dropout, |d| d.hidden, SITE_HEAD)?;
        let logits = self.params.classifier.forward(&features_dropped)?;
        let acts = keep.then_some(Acts { layers, hidden, pooled, features, features_dropped });
        Ok((logits, acts))
    }

    /// Backward from dlogits (B, K): accumulates every trainable gradient into `grads`.
    pub fn backward(
        &self,
        inputs: &Inputs,
        acts: &Acts,
        dlogits: &Tensor,
        grads: &mut Trainable,
        dropout: Option<&Dropout>,
    ) -> Result<()> {
        let (b, t, c) = (inputs.batch, inputs.seq, self.base.config.hidden_size);
        let dev = &self.base.device;
        // Head: classifier, dropout, pooler or mean pooling.
        let dfeat = ops::linear_backward(
            dlogits,
            &acts.features_dropped,
            &self.params.classifier.weight,
            Some(&mut grads.classifier.weight),
            Some(&mut grads.classifier.bias),
            self.params.trains_encoder(),
        )?;
        let Some(dfeat) = dfeat else { return Ok(()) };
        let dfeat = drop(&dfeat, dropout, |d| d.hidden, SITE_HEAD)?;
        let dhidden = match self.head {
            HeadKind::Pooler => {
                let pooler = self.base.pooler.as_ref().expect("pooler head checked in forward");
                let dpre = ops::tanh_backward(&dfeat, &acts.features)?;
                if let Some(db) = &mut grads.pooler_bias {
                    ops::sum_rows_into(db, &dpre, true)?;
                }
                // Only the [CLS] rows receive a gradient: write them with a row stride of T·C.
                let mut dh = dev.zeros(&[b, t, c])?;
                let desc = MatmulDesc {
                    c: Strides { offset: 0, ld: t * c, bs: [0, 0] },
                    ..MatmulDesc::contiguous(1, b, c, c, false, false)
                };
                ops::matmul_into(&mut dh, &dpre, &pooler.weight, None, &desc)?;
                dh
            }
            HeadKind::Mean => ops::mean_pool_backward(&dfeat, &inputs.mask)?,
        };
        let Some(lowest) = self.params.lowest_trained_layer() else { return Ok(()) };
        let mut dx = dhidden.reshape(&[b * t, c])?;
        for l in (lowest..self.base.layers.len()).rev() {
            let need_dx = l > lowest || self.params.emb_norm_bias.is_some();
            let lg = &mut grads.layers[l];
            dx = self.encoder().layer_backward(l, &acts.layers[l], inputs, dx, lg, dropout, need_dx)?;
        }
        if let Some(db) = &mut grads.emb_norm_bias {
            // y = LN(sum) * γ + β, then dropout: dβ = Σ_rows drop(dx).
            let d0 = drop(&dx, dropout, |d| d.hidden, SITE_EMBEDDINGS)?;
            ops::sum_rows_into(db, &d0, true)?;
        }
        Ok(())
    }
}

/// The LoRA and bias gradients of one target, borrowed together.
fn split_grads(g: &mut LayerParams, t: Target) -> (Option<&mut Lora>, Option<&mut Tensor>) {
    let lora = g.lora.get_mut(t.index()).and_then(|l| l.as_mut());
    let bias = g.biases.as_mut().map(|b| &mut b.linear[t.index()]);
    (lora, bias)
}
