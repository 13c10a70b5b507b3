//! The Llama decoder from a Hugging Face folder (`config.json`, `model.safetensors` or its shards,
//! `tokenizer.json`), as transformers' `LlamaForCausalLM` saves it: weights in f32, f16 or bf16, the
//! rows already in HF's rotate-half order. The seven linears of each layer can be quantised as the
//! folder loads (`Quantize`: bitsandbytes' NF4, with or without double quantisation, as QLoRA keeps
//! its base); the embedding and the head stay f32, as transformers' 4-bit loading leaves them.

use std::path::Path;

use serde_json::Value;

use super::llama::{Block, Linear, Llama, LlamaConfig};
use super::weights::{HostTensor, NamedTensors};
use crate::error::{Error, Result};
use crate::ops::qmatmul::QWeight;
use crate::quant::nf4::Nf4;
use crate::tensor::Device;

/// How a folder's linears are kept on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Quantize {
    /// As they are, in f32.
    #[default]
    None,
    /// NF4, an f32 absmax per 64 values (`bnb_4bit_quant_type="nf4"`).
    Nf4,
    /// NF4 with the absmax values quantised again (`bnb_4bit_use_double_quant=True`).
    Nf4Double,
}

impl std::str::FromStr for Quantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quantize> {
        match s {
            "none" | "f32" => Ok(Quantize::None),
            "nf4" => Ok(Quantize::Nf4),
            "nf4-double" | "nf4-dq" => Ok(Quantize::Nf4Double),
            other => Err(Error::invalid(format!("--quantize {other}: expected none, nf4 or nf4-double"))),
        }
    }
}

/// The config of a `config.json` (`model_type` llama); what the decoder does not run is refused by name.
pub fn config_from_json(text: &str, origin: &str) -> Result<(LlamaConfig, bool)> {
    let bad = |m: String| Error::file(origin, m);
    let j: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let ty = j.get("model_type").and_then(Value::as_str).unwrap_or("");
    if ty != "llama" {
        return Err(bad(format!("model_type `{ty}` is not supported (this decoder runs `llama`)")));
    }
    let num = |k: &str| -> Result<f64> {
        j.get(k).and_then(Value::as_f64).ok_or_else(|| bad(format!("`{k}` is missing or not a number")))
    };
    for (k, want) in [("attention_bias", false), ("mlp_bias", false)] {
        if j.get(k).and_then(Value::as_bool).unwrap_or(false) != want {
            return Err(bad(format!("`{k}: true` is not supported (Llama's linears have no bias)")));
        }
    }
    let act = j.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(bad(format!("hidden_act `{act}` is not supported (SwiGLU with silu is)")));
    }
    let rope = j.get("rope_scaling").filter(|v| !v.is_null()).or_else(|| j.get("rope_parameters"));
    let rope_type = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Value::as_str);
    if rope.is_some() && rope_type.unwrap_or("default") != "default" {
        return Err(bad(format!("RoPE scaling `{}` is not supported", rope_type.unwrap_or("?"))));
    }
    let rope_base = j
        .get("rope_theta")
        .or_else(|| rope.and_then(|r| r.get("rope_theta")))
        .and_then(Value::as_f64)
        .unwrap_or(10000.0);
    let hidden = num("hidden_size")? as usize;
    let heads = num("num_attention_heads")? as usize;
    let kv_heads = j.get("num_key_value_heads").and_then(Value::as_f64).map_or(heads, |v| v as usize);
    let head_dim = hidden.checked_div(heads).unwrap_or(0);
    if let Some(d) = j.get("head_dim").and_then(Value::as_u64) {
        if d as usize != head_dim {
            return Err(bad(format!("head_dim {d} with {heads} heads of a {hidden} hidden size is not supported")));
        }
    }
    if heads == 0 || kv_heads == 0 || !hidden.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
        return Err(bad(format!(
            "{hidden} hidden, {heads} heads and {kv_heads} key/value heads do not make whole heads"
        )));
    }
    let cfg = LlamaConfig {
        layers: num("num_hidden_layers")? as usize,
        hidden,
        ffn: num("intermediate_size")? as usize,
        heads,
        kv_heads,
        head_dim,
        vocab: num("vocab_size")? as usize,
        rope_base: rope_base as f32,
        eps: num("rms_norm_eps")? as f32,
        context: j.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize,
    };
    let tied = j.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    Ok((cfg, tied))
}

/// The folder's tensors: `model.safetensors`, or every shard its `model.safetensors.index.json` names.
fn read_tensors(dir: &Path) -> Result<NamedTensors> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return NamedTensors::load(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index)
        .map_err(|_| Error::file(dir, "has neither model.safetensors nor model.safetensors.index.json"))?;
    let j: Value = serde_json::from_str(&text).map_err(|e| Error::file(&index, e))?;
    let map = j.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::file(&index, "no weight_map"))?;
    let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    shards.sort();
    shards.dedup();
    let mut all = NamedTensors { origin: dir.display().to_string(), ..Default::default() };
    for s in shards {
        all.tensors.extend(NamedTensors::load(&dir.join(s))?.tensors);
    }
    Ok(all)
}

impl Llama {
    /// Loads a Hugging Face Llama folder onto `device`, its linears kept as `quantize` says.
    pub fn from_hf_folder(dir: &Path, quantize: Quantize, device: &Device) -> Result<Llama> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
        let (cfg, tied) = config_from_json(&text, &cfg_path.display().to_string())?;
        let mut t = read_tensors(dir)?;
        t.check_finite("a base weight")?;
        let origin = t.origin.clone();
        let mut take = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            let v = t.tensors.remove(name).ok_or_else(|| Error::tensor(&origin, name, "missing from the file"))?;
            if v.shape != shape {
                return Err(Error::tensor(&origin, name, format!("is {:?}, expected {shape:?}", v.shape)));
            }
            Ok(v)
        };
        let (c, kv, f) = (cfg.hidden, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let linear = |w: HostTensor, name: &str| -> Result<Linear> {
            let (rows, cols) = (w.shape[0], w.shape[1]);
            let double = match quantize {
                Quantize::None => return Ok(Linear::F32(device.tensor(&w.data, &[rows, cols])?)),
                Quantize::Nf4 => false,
                Quantize::Nf4Double => true,
            };
            let q = Nf4::quantize(&w.data, double, &format!("{origin}: tensor `{name}`"))?;
            Ok(Linear::Quant(QWeight::from_nf4(device, rows, cols, &q)?))
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |s: &str| format!("model.layers.{l}.{s}.weight");
            let mut lin = |s: &str, rows: usize, cols: usize| -> Result<Linear> {
                let name = n(s);
                linear(take(&name, &[rows, cols])?, &name)
            };
            let q = lin("self_attn.q_proj", c, c)?;
            let k = lin("self_attn.k_proj", kv, c)?;
            let v = lin("self_attn.v_proj", kv, c)?;
            let o = lin("self_attn.o_proj", c, c)?;
            let gate = lin("mlp.gate_proj", f, c)?;
            let up = lin("mlp.up_proj", f, c)?;
            let down = lin("mlp.down_proj", c, f)?;
            let mut norm = |s: &str| -> Result<_> { device.tensor(&take(&n(s), &[c])?.data, &[c]) };
            blocks.push(Block {
                attn_norm: norm("input_layernorm")?,
                ffn_norm: norm("post_attention_layernorm")?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let embed = take("model.embed_tokens.weight", &[cfg.vocab, c])?;
        let norm = device.tensor(&take("model.norm.weight", &[c])?.data, &[c])?;
        let head = match take("lm_head.weight", &[cfg.vocab, c]) {
            Ok(h) => Linear::F32(device.tensor(&h.data, &[cfg.vocab, c])?),
            Err(_) if tied => Linear::F32(device.tensor(&embed.data, &[cfg.vocab, c])?),
            Err(e) => return Err(e),
        };
        Llama::from_parts(cfg, device, &embed.data, blocks, norm, head)
    }
}
