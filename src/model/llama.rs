//! The Llama decoder (SmolLM2, Llama 2/3 and their kin) over weights kept as they are in a GGUF file:
//! quantised linears stay in their blocks on the device and are de-quantised on the fly.
//!
//! Per layer, x (T, C):
//!   h = RMSNorm(x) · γ₁
//!   q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ          q: H heads of D; k, v: Hkv heads (grouped-query)
//!   q, k = RoPE(q), RoPE(k)                 HF's rotate-half layout
//!   x = x + Attention(q, repeat(k), repeat(v), causal) Woᵀ
//!   h = RMSNorm(x) · γ₂
//!   x = x + (silu(h Wgateᵀ) ⊙ h Wupᵀ) Wdownᵀ
//! then logits = RMSNorm(x) · γ Wheadᵀ, the head tied to the token embedding unless the file has one.
//!
//! GGUF stores Wq and Wk with each head's rows interleaved for llama.cpp's RoPE (pairs (2i, 2i+1)
//! rotate together); rows are whole blocks, so loading moves them back to HF's order (i, i + D/2),
//! exactly, and the rotate-half RoPE applies.

use std::sync::Arc;

use super::gguf::{Gguf, TensorInfo};
use super::param_set::ParamSet;
use crate::error::{Error, Result};
use crate::ops::{self, llama as lops, qmatmul::QWeight, AttnMask};
use crate::quant::{dequantize, GgmlType};
use crate::tensor::{Device, Tensor};

/// The sizes of a Llama model, from the file's `llama.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub context: usize,
}

impl LlamaConfig {
    /// Reads the config of a GGUF file; other architectures are refused by name.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
        if arch != "llama" {
            return Err(Error::file(
                &g.origin,
                format!("architecture `{arch}` is not supported (this reader runs `llama`: SmolLM2, Llama 2/3)"),
            ));
        }
        let num = |key: &str| -> Result<f64> {
            g.get(&format!("llama.{key}"))
                .and_then(|v| v.as_f64())
                .ok_or_else(|| Error::file(&g.origin, format!("metadata `llama.{key}` is missing")))
        };
        let layers = num("block_count")? as usize;
        let hidden = num("embedding_length")? as usize;
        let heads = num("attention.head_count")? as usize;
        let kv_heads = num("attention.head_count_kv").unwrap_or(heads as f64) as usize;
        let head_dim = hidden.checked_div(heads).unwrap_or(0);
        let tok =
            g.tensor("token_embd.weight").ok_or_else(|| Error::tensor(&g.origin, "token_embd.weight", "missing"))?;
        let cfg = LlamaConfig {
            layers,
            hidden,
            ffn: num("feed_forward_length")? as usize,
            heads,
            kv_heads,
            head_dim,
            vocab: tok.rows_cols().0,
            rope_base: num("rope.freq_base").unwrap_or(10000.0) as f32,
            eps: num("attention.layer_norm_rms_epsilon")? as f32,
            context: num("context_length").unwrap_or(2048.0) as usize,
        };
        if heads == 0
            || kv_heads == 0
            || !hidden.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
            || !head_dim.is_multiple_of(2)
        {
            return Err(Error::file(
                &g.origin,
                format!("{hidden} hidden, {heads} heads and {kv_heads} key/value heads do not make whole heads"),
            ));
        }
        if let Some(d) = g.get("llama.rope.dimension_count").and_then(|v| v.as_u64()) {
            if d as usize != head_dim {
                return Err(Error::file(
                    &g.origin,
                    format!("partial RoPE ({d} of {head_dim} dimensions) is not supported"),
                ));
            }
        }
        Ok(cfg)
    }
}

/// A linear's frozen weight on the device: quantised blocks, or f32 (rows, cols).
#[derive(Clone, Debug)]
pub enum Linear {
    Quant(QWeight),
    F32(Tensor),
}

impl Linear {
    /// y = x Wᵀ.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Quant(w) => ops::qmatmul::qlinear(x, w),
            Linear::F32(w) => ops::linear(x, w, None),
        }
    }

    /// dx = dy W for the input x (the frozen base needs no dW).
    pub fn backward_dx(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Quant(w) => ops::qmatmul::qlinear_dx(dy, w),
            Linear::F32(w) => Ok(ops::linear_backward(None, None, dy, x, w, true)?.unwrap()),
        }
    }

    /// Bytes the weight takes on its device.
    pub fn device_bytes(&self) -> usize {
        match self {
            Linear::Quant(w) => w.device_bytes(),
            Linear::F32(w) => w.numel() * 4,
        }
    }
}

/// What a fine-tuning method adds to the decoder's linears (LoRA: `peft::causal_lora`), numbered as
/// `Block::linear` numbers them.
pub trait LinearDelta {
    /// What it adds to layer `l`'s linear `m` for the input x, if anything.
    fn forward(&self, l: usize, m: usize, x: &Tensor) -> Result<Option<Tensor>>;
    /// Backward of `forward` for the output gradient dy: accumulates its own gradients into `grads`
    /// and returns the part of dx it adds.
    fn backward(&self, l: usize, m: usize, dy: &Tensor, x: &Tensor, grads: &mut ParamSet) -> Result<Option<Tensor>>;
}

/// The linears of a layer by number: q, k, v, o, gate, up, down.
pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

/// One decoder layer's weights.
pub struct Block {
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ffn_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Block {
    /// Linear `m` (Q … DOWN).
    pub fn linear(&self, m: usize) -> &Linear {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down][m]
    }
}

/// What a layer's backward reads: its input and activations, recomputed from the input.
struct Acts {
    x0: Tensor,
    h1: Tensor,
    r1: Tensor,
    q: Tensor,
    kr: Tensor,
    vr: Tensor,
    probs: Tensor,
    a: Tensor,
    x1: Tensor,
    h2: Tensor,
    r2: Tensor,
    g: Tensor,
    u: Tensor,
    m: Tensor,
}

/// A Llama model on a device.
pub struct Llama {
    pub cfg: LlamaConfig,
    pub device: Device,
    /// The token embedding's bytes and type on the host: rows are looked up and de-quantised there.
    embed: (GgmlType, Arc<Vec<u8>>),
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    pub head: Linear,
}

/// GGUF's interleaved q/k rows back to HF's order: HF row (head h, half s, i) is GGUF row h·D + 2i + s.
fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row = bytes.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..d / 2 {
                let (to, from) = (h * d + s * d / 2 + i, h * d + 2 * i + s);
                out[to * row..(to + 1) * row].copy_from_slice(&bytes[from * row..(from + 1) * row]);
            }
        }
    }
    out
}

impl Llama {
    /// Loads a GGUF file's model onto `device` (`file` the whole file's bytes).
    pub fn from_gguf(g: &Gguf, file: &[u8], device: &Device) -> Result<Llama> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let info = |name: &str| -> Result<&TensorInfo> {
            g.tensor(name).ok_or_else(|| Error::tensor(&g.origin, name, "missing from the file"))
        };
        let vector = |name: &str| -> Result<Tensor> {
            let t = info(name)?;
            if t.numel() as usize != cfg.hidden {
                return Err(Error::tensor(
                    &g.origin,
                    name,
                    format!("has {} values, expected {}", t.numel(), cfg.hidden),
                ));
            }
            device.tensor(&dequantize(t.kind, g.tensor_bytes(file, t)?), &[cfg.hidden])
        };
        let linear = |name: &str, rows: usize, cols: usize, permute_heads: usize| -> Result<Linear> {
            let t = info(name)?;
            if t.rows_cols() != (rows, cols) {
                return Err(Error::tensor(
                    &g.origin,
                    name,
                    format!("is {:?} (rows, cols), expected ({rows}, {cols})", t.rows_cols()),
                ));
            }
            let mut bytes = g.tensor_bytes(file, t)?.to_vec();
            if permute_heads > 0 {
                bytes = unpermute_rows(&bytes, rows, permute_heads);
            }
            if t.kind.is_quantised() {
                Ok(Linear::Quant(QWeight::new(device, t.kind, rows, cols, &bytes)?))
            } else {
                Ok(Linear::F32(device.tensor(&dequantize(t.kind, &bytes), &[rows, cols])?))
            }
        };
        let (c, kv, f) = (cfg.hidden, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            blocks.push(Block {
                attn_norm: vector(&n("attn_norm"))?,
                q: linear(&n("attn_q"), c, c, cfg.heads)?,
                k: linear(&n("attn_k"), kv, c, cfg.kv_heads)?,
                v: linear(&n("attn_v"), kv, c, 0)?,
                o: linear(&n("attn_output"), c, c, 0)?,
                ffn_norm: vector(&n("ffn_norm"))?,
                gate: linear(&n("ffn_gate"), f, c, 0)?,
                up: linear(&n("ffn_up"), f, c, 0)?,
                down: linear(&n("ffn_down"), c, f, 0)?,
            });
        }
        let tok = info("token_embd.weight")?;
        if tok.rows_cols().1 != c {
            return Err(Error::tensor(
                &g.origin,
                &tok.name,
                format!("has rows of {}, expected {c}", tok.rows_cols().1),
            ));
        }
        let embed = (tok.kind, Arc::new(g.tensor_bytes(file, tok)?.to_vec()));
        let head = if g.tensor("output.weight").is_some() {
            linear("output.weight", cfg.vocab, c, 0)?
        } else {
            linear("token_embd.weight", cfg.vocab, c, 0)?
        };
        Ok(Llama { norm: vector("output_norm.weight")?, cfg, device: device.clone(), embed, blocks, head })
    }

    /// A model of `cfg` with seeded random weights (tests and benchmarks): linears as `kind` (F32 or
    /// Q8_0 blocks of random codes and scales), norms near one, an f32 embedding tied as the head.
    pub fn random(cfg: LlamaConfig, kind: GgmlType, seed: u64, device: &Device) -> Result<Llama> {
        use crate::rng::Rng;
        fn linear(rng: &mut Rng, kind: GgmlType, rows: usize, cols: usize, device: &Device) -> Result<Linear> {
            let std = 1.0 / (cols as f64).sqrt();
            match kind {
                GgmlType::F32 => Ok(Linear::F32(device.tensor(&rng.vec_normal(rows * cols, std), &[rows, cols])?)),
                GgmlType::Q8_0 if cols.is_multiple_of(32) => {
                    let mut bytes = Vec::with_capacity(rows * cols / 32 * 34);
                    for _ in 0..rows * cols / 32 {
                        let d = half::f16::from_f32((std * 2.0 / 127.0 * (0.5 + rng.uniform())) as f32);
                        bytes.extend(d.to_le_bytes());
                        bytes.extend((0..32).map(|_| (rng.below(255) as i32 - 127) as i8 as u8));
                    }
                    Ok(Linear::Quant(QWeight::new(device, kind, rows, cols, &bytes)?))
                }
                _ => Err(Error::invalid(format!(
                    "random models are F32 or Q8_0 (columns a multiple of 32), not {}",
                    kind.name()
                ))),
            }
        }
        fn norm(rng: &mut Rng, c: usize, device: &Device) -> Result<Tensor> {
            let v: Vec<f32> = (0..c).map(|_| (0.8 + 0.4 * rng.uniform()) as f32).collect();
            device.tensor(&v, &[c])
        }
        let mut rng = Rng::new(seed);
        let r = &mut rng;
        let (c, kv, f) = (cfg.hidden, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(Block {
                attn_norm: norm(r, c, device)?,
                q: linear(r, kind, c, c, device)?,
                k: linear(r, kind, kv, c, device)?,
                v: linear(r, kind, kv, c, device)?,
                o: linear(r, kind, c, c, device)?,
                ffn_norm: norm(r, c, device)?,
                gate: linear(r, kind, f, c, device)?,
                up: linear(r, kind, f, c, device)?,
                down: linear(r, kind, c, f, device)?,
            });
        }
        let final_norm = norm(r, c, device)?;
        let table = r.vec_normal(cfg.vocab * c, 0.5);
        let head = Linear::F32(device.tensor(&table, &[cfg.vocab, c])?);
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Llama {
            cfg,
            device: device.clone(),
            embed: (GgmlType::F32, Arc::new(bytes)),
            blocks,
            norm: final_norm,
            head,
        })
    }

    /// A model from its parts, the embedding table (vocab, hidden) in f32 on the host.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_parts(
        cfg: LlamaConfig,
        device: &Device,
        embed: &[f32],
        blocks: Vec<Block>,
        norm: Tensor,
        head: Linear,
    ) -> Result<Llama> {
        let bytes: Vec<u8> = embed.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Llama { cfg, device: device.clone(), embed: (GgmlType::F32, Arc::new(bytes)), blocks, norm, head })
    }

    /// Bytes the model's weights take on its device.
    pub fn device_bytes(&self) -> usize {
        let lin = |b: &Block| {
            [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down].iter().map(|l| l.device_bytes()).sum::<usize>()
                + (b.attn_norm.numel() + b.ffn_norm.numel()) * 4
        };
        self.blocks.iter().map(lin).sum::<usize>() + self.head.device_bytes() + self.norm.numel() * 4
    }

    /// The embeddings (1, T, C) of token ids, de-quantised from the table's rows.
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let (kind, bytes) = (&self.embed.0, &self.embed.1);
        let c = self.cfg.hidden;
        let (per, size) = kind.block();
        let row = c / per * size;
        let mut x = Vec::with_capacity(ids.len() * c);
        for &id in ids {
            let id = id as usize;
            if id >= self.cfg.vocab {
                return Err(Error::invalid(format!("token id {id} is past the vocabulary of {}", self.cfg.vocab)));
            }
            x.extend(dequantize(*kind, &bytes[id * row..(id + 1) * row]));
        }
        self.device.tensor(&x, &[1, ids.len(), c])
    }

    /// Logits (T, vocab) at every position of one sequence of token ids.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        self.forward_cached(ids, &mut KvCache::default(), false, None)
    }

    /// RoPE's cos and sin tables (T, D/2) on the device for positions first … first + t − 1.
    fn rope(&self, first: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let d = self.cfg.head_dim;
        let (cos, sin) = lops::rope_tables(first, t, d, self.cfg.rope_base);
        Ok((self.device.tensor(&cos, &[t, d / 2])?, self.device.tensor(&sin, &[t, d / 2])?))
    }

    /// Layer `l`'s linear `m` applied to x, with what `delta` adds.
    fn lin(&self, l: usize, m: usize, x: &Tensor, delta: Option<&dyn LinearDelta>) -> Result<Tensor> {
        let y = self.blocks[l].linear(m).forward(x)?;
        match delta.map(|d| d.forward(l, m, x)).transpose()?.flatten() {
            Some(dy) => ops::add(&y, &dy),
            None => Ok(y),
        }
    }

    /// Backward of `lin`: dx, and `delta`'s gradients accumulated into `grads`.
    fn lin_backward(
        &self,
        l: usize,
        m: usize,
        dy: &Tensor,
        x: &Tensor,
        delta: &dyn LinearDelta,
        grads: &mut ParamSet,
    ) -> Result<Tensor> {
        let dx = self.blocks[l].linear(m).backward_dx(dy, x)?;
        match delta.backward(l, m, dy, x, grads)? {
            Some(d) => ops::add(&dx, &d),
            None => Ok(dx),
        }
    }

    /// Layer `l` on x (1, T, C) at the positions of `rope`, reading and extending `kv` when given;
    /// the activations for the backward too when `keep`.
    fn block(
        &self,
        l: usize,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        delta: Option<&dyn LinearDelta>,
        keep: bool,
    ) -> Result<(Tensor, Option<Acts>)> {
        let (cfg, b) = (&self.cfg, &self.blocks[l]);
        let (d, groups, (cos, sin)) = (cfg.head_dim, cfg.heads / cfg.kv_heads, rope);
        let (h1, r1) = lops::rmsnorm(x, &b.attn_norm, cfg.eps)?;
        let q = lops::rope(&self.lin(l, Q, &h1, delta)?, cos, sin, d, false)?;
        let mut k = lops::rope(&self.lin(l, K, &h1, delta)?, cos, sin, d, false)?;
        let mut v = self.lin(l, V, &h1, delta)?;
        if let Some(kv) = kv {
            if let Some((pk, pv)) = kv.take() {
                let shape = [1, pk.dim(1) + k.dim(1), k.dim(2)];
                k = ops::concat_rows(&pk, &k, &shape)?;
                v = ops::concat_rows(&pv, &v, &shape)?;
            }
            *kv = Some((k.clone(), v.clone()));
        }
        let (kr, vr) = (lops::repeat_kv(&k, d, groups)?, lops::repeat_kv(&v, d, groups)?);
        // Query i sees the cached keys and new keys up to its own position.
        let (a, probs) = ops::attention_masked(&q, &kr, &vr, AttnMask::Causal(None), cfg.heads, None)?;
        let x1 = ops::add(x, &self.lin(l, O, &a, delta)?)?;
        let (h2, r2) = lops::rmsnorm(&x1, &b.ffn_norm, cfg.eps)?;
        let (g, u) = (self.lin(l, GATE, &h2, delta)?, self.lin(l, UP, &h2, delta)?);
        let m = lops::swiglu(&g, &u)?;
        let out = ops::add(&x1, &self.lin(l, DOWN, &m, delta)?)?;
        let acts = keep.then(|| Acts { x0: x.clone(), h1, r1, q, kr, vr, probs, a, x1, h2, r2, g, u, m });
        Ok((out, acts))
    }

    /// Backward of `block` for the output gradient dx (1, T, C): returns the input's gradient and
    /// accumulates `delta`'s gradients into `grads`.
    fn block_backward(
        &self,
        l: usize,
        s: &Acts,
        dx: &Tensor,
        rope: &(Tensor, Tensor),
        delta: &dyn LinearDelta,
        grads: &mut ParamSet,
    ) -> Result<Tensor> {
        let (cfg, b) = (&self.cfg, &self.blocks[l]);
        let (d, groups, (cos, sin)) = (cfg.head_dim, cfg.heads / cfg.kv_heads, rope);
        let dm = self.lin_backward(l, DOWN, dx, &s.m, delta, grads)?;
        let (dg, du) = lops::swiglu_backward(&dm, &s.g, &s.u)?;
        let dh2 = ops::add(
            &self.lin_backward(l, GATE, &dg, &s.h2, delta, grads)?,
            &self.lin_backward(l, UP, &du, &s.h2, delta, grads)?,
        )?;
        let dx1 = ops::add(dx, &lops::rmsnorm_backward(None, &dh2, &s.x1, &s.r2, &b.ffn_norm)?)?;
        let da = self.lin_backward(l, O, &dx1, &s.a, delta, grads)?;
        let (dq, dkr, dvr) = ops::attention_backward(&da, &s.q, &s.kr, &s.vr, &s.probs, cfg.heads, None)?;
        let dk = lops::rope(&lops::repeat_kv_backward(&dkr, d, groups)?, cos, sin, d, true)?;
        let dv = lops::repeat_kv_backward(&dvr, d, groups)?;
        let dq = lops::rope(&dq, cos, sin, d, true)?;
        let mut dh1 = self.lin_backward(l, Q, &dq, &s.h1, delta, grads)?;
        dh1 = ops::add(&dh1, &self.lin_backward(l, K, &dk, &s.h1, delta, grads)?)?;
        dh1 = ops::add(&dh1, &self.lin_backward(l, V, &dv, &s.h1, delta, grads)?)?;
        ops::add(&dx1, &lops::rmsnorm_backward(None, &dh1, &s.x0, &s.r1, &b.attn_norm)?)
    }

    /// The logits of `ids` following the tokens already in `cache` (which then holds them too): every
    /// position's (T, vocab), or only the last one's (1, vocab) when `last_only`; `delta` (an adapter)
    /// added to the linears.
    pub fn forward_cached(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        last_only: bool,
        delta: Option<&dyn LinearDelta>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (t, past) = (ids.len(), cache.len);
        if t == 0 || past + t > cfg.context {
            return Err(Error::invalid(format!(
                "{} tokens: the context holds {} (the model's context length)",
                past + t,
                cfg.context
            )));
        }
        if cache.layers.is_empty() {
            cache.layers = vec![None; cfg.layers];
        }
        let rope = self.rope(past, t)?;
        let mut x = self.embed(ids)?;
        for (l, kv) in cache.layers.iter_mut().enumerate() {
            x = self.block(l, &x, &rope, Some(kv), delta, false)?.0;
        }
        cache.len += t;
        let x = if last_only { ops::slice_rows(&x, t - 1, 1)? } else { x.reshape(&[t, cfg.hidden])? };
        let (h, _) = lops::rmsnorm(&x, &self.norm, cfg.eps)?;
        self.head.forward(&h)
    }

    /// The positions' next-token targets, checked: (positions, labels) on the device, and the labels.
    fn targets(&self, ids: &[u32], positions: &[u32]) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let t = ids.len();
        if t < 2 || t > self.cfg.context {
            return Err(Error::invalid(format!("{t} tokens: a loss needs 2 to {} (the context)", self.cfg.context)));
        }
        if positions.is_empty() || positions.iter().any(|&p| p as usize + 1 >= t) {
            return Err(Error::invalid(format!("the positions scored must be in 0..{} and not empty", t - 1)));
        }
        let targets: Vec<u32> = positions.iter().map(|&p| ids[p as usize + 1]).collect();
        let pos = self.device.tensor_u32(positions, &[positions.len()])?;
        Ok((pos, self.device.tensor_u32(&targets, &[targets.len()])?, targets))
    }

    /// The last hidden states (T, C) of one sequence with `delta` on the linears, and every layer's
    /// input (what the backward recomputes from).
    fn trunk(&self, ids: &[u32], rope: &(Tensor, Tensor), delta: &dyn LinearDelta) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = self.embed(ids)?;
        let mut inputs = Vec::with_capacity(self.cfg.layers);
        for l in 0..self.cfg.layers {
            let next = self.block(l, &x, rope, None, Some(delta), false)?.0;
            inputs.push(std::mem::replace(&mut x, next));
        }
        Ok((x.reshape(&[ids.len(), self.cfg.hidden])?, inputs))
    }

    /// The cross-entropy of predicting `ids[p + 1]` at each position p of `positions`, with `delta`
    /// on the linears (held-out loss; no backward). The head runs on those rows only.
    pub fn loss(&self, ids: &[u32], positions: &[u32], delta: &dyn LinearDelta) -> Result<Tensor> {
        let (pos, labels, targets) = self.targets(ids, positions)?;
        let (xf, _) = self.trunk(ids, &self.rope(0, ids.len())?, delta)?;
        let (hf, _) = lops::rmsnorm(&xf, &self.norm, self.cfg.eps)?;
        let logits = self.head.forward(&ops::embedding(&pos, &hf)?)?;
        Ok(ops::cross_entropy(&logits, &labels, &targets, 1.0)?.0)
    }

    /// Causal-LM training on one sequence: the cross-entropy of predicting `ids[p + 1]` at each
    /// position p of `positions` (the tokens that train: an assistant's answer), its gradient times
    /// `grad_scale` accumulated into `grads` through `delta`. Returns the per-position losses.
    ///
    /// Memory: only each layer's input is kept through the forward; the backward recomputes one
    /// layer's activations at a time from it.
    pub fn loss_backward(
        &self,
        ids: &[u32],
        positions: &[u32],
        delta: &dyn LinearDelta,
        grads: &mut ParamSet,
        grad_scale: f32,
    ) -> Result<Tensor> {
        let (cfg, t) = (&self.cfg, ids.len());
        let (pos, labels, targets) = self.targets(ids, positions)?;
        let rope = self.rope(0, t)?;
        let (xf, inputs) = self.trunk(ids, &rope, delta)?;
        let (hf, rf) = lops::rmsnorm(&xf, &self.norm, cfg.eps)?;
        let hs = ops::embedding(&pos, &hf)?;
        let (loss, dlogits) = ops::cross_entropy(&self.head.forward(&hs)?, &labels, &targets, grad_scale)?;
        let dhs = self.head.backward_dx(&dlogits, &hs)?;
        let mut dhf = self.device.zeros(&[t, cfg.hidden])?;
        ops::embedding_backward(&mut dhf, &dhs, &pos)?;
        let mut dx = lops::rmsnorm_backward(None, &dhf, &xf, &rf, &self.norm)?.reshape(&[1, t, cfg.hidden])?;
        for l in (0..cfg.layers).rev() {
            let acts = self.block(l, &inputs[l], &rope, None, Some(delta), true)?.1.unwrap();
            dx = self.block_backward(l, &acts, &dx, &rope, delta, grads)?;
        }
        Ok(loss)
    }
}

/// The keys (after RoPE) and values of the tokens a sequence has seen, per layer: (1, T, Hkv·D) each.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens held.
    pub len: usize,
}
