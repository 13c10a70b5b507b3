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

    /// Bytes the weight takes on its device.
    pub fn device_bytes(&self) -> usize {
        match self {
            Linear::Quant(w) => w.device_bytes(),
            Linear::F32(w) => w.numel() * 4,
        }
    }
}

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
        self.forward_cached(ids, &mut KvCache::default(), false)
    }

    /// The logits of `ids` following the tokens already in `cache` (which then holds them too): every
    /// position's (T, vocab), or only the last one's (1, vocab) when `last_only`.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
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
        let (d, groups) = (cfg.head_dim, cfg.heads / cfg.kv_heads);
        let kv = cfg.kv_heads * d;
        let (cos, sin) = lops::rope_tables(past, t, d, cfg.rope_base);
        let cos = self.device.tensor(&cos, &[t, d / 2])?;
        let sin = self.device.tensor(&sin, &[t, d / 2])?;
        let mut x = self.embed(ids)?;
        for (b, kv_cache) in self.blocks.iter().zip(&mut cache.layers) {
            let (h, _) = lops::rmsnorm(&x, &b.attn_norm, cfg.eps)?;
            let q = lops::rope(&b.q.forward(&h)?, &cos, &sin, d, false)?;
            let mut k = lops::rope(&b.k.forward(&h)?, &cos, &sin, d, false)?;
            let mut v = b.v.forward(&h)?;
            if let Some((pk, pv)) = kv_cache.take() {
                k = ops::concat_rows(&pk, &k, &[1, past + t, kv])?;
                v = ops::concat_rows(&pv, &v, &[1, past + t, kv])?;
            }
            *kv_cache = Some((k.clone(), v.clone()));
            let (k, v) = (lops::repeat_kv(&k, d, groups)?, lops::repeat_kv(&v, d, groups)?);
            // Query i sees the cached keys and new keys up to its own position.
            let (a, _) = ops::attention_masked(&q, &k, &v, AttnMask::Causal(None), cfg.heads, None)?;
            ops::add_into(&mut x, &b.o.forward(&a)?, 1.0)?;
            let (h, _) = lops::rmsnorm(&x, &b.ffn_norm, cfg.eps)?;
            let m = lops::swiglu(&b.gate.forward(&h)?, &b.up.forward(&h)?)?;
            ops::add_into(&mut x, &b.down.forward(&m)?, 1.0)?;
        }
        cache.len += t;
        let x = if last_only { ops::slice_rows(&x, t - 1, 1)? } else { x.reshape(&[t, cfg.hidden])? };
        let (h, _) = lops::rmsnorm(&x, &self.norm, cfg.eps)?;
        self.head.forward(&h)
    }
}

/// The keys (after RoPE) and values of the tokens a sequence has seen, per layer: (1, T, Hkv·D) each.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens held.
    pub len: usize,
}
