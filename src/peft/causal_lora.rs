//! LoRA on a Llama decoder — QLoRA when the base is quantised: on each target among q, k, v, o, gate,
//! up and down of every layer, y = x Wᵀ + s · (x Aᵀ) Bᵀ over the frozen base W (de-quantised on the
//! fly), A (r, in) drawn like PEFT's Kaiming-uniform and B (out, r) zero, s = alpha / r (alpha / √r
//! with rsLoRA). The files are PEFT's for LlamaForCausalLM: `adapter_config.json` (peft_type `LORA`,
//! task_type `CAUSAL_LM`) and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight` … `mlp.down_proj.lora_B.weight`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::llama::{LinearDelta, LlamaConfig};
use crate::model::param_set::{ParamId, ParamSet};
use crate::model::weights::NamedTensors;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};

/// A decoder layer's linears in PEFT's names, in the order `llama::Block::linear` numbers them.
pub const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The module's path inside a layer (`self_attn.q_proj`, `mlp.gate_proj`).
fn module_path(m: usize) -> String {
    let parent = if m < 4 { "self_attn" } else { "mlp" };
    format!("{parent}.{}", MODULES[m])
}

/// The PEFT key of a layer's module's A or B.
pub fn key(layer: usize, m: usize, ab: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{ab}.weight", module_path(m))
}

/// (out, in) of module `m` in a model of `cfg`.
pub fn module_shape(cfg: &LlamaConfig, m: usize) -> (usize, usize) {
    let (c, kv, f) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn);
    match m {
        0 | 3 => (c, c),
        1 | 2 => (kv, c),
        4 | 5 => (f, c),
        _ => (c, f),
    }
}

/// A module name as the command line and PEFT write it (`q_proj`, or `q`) → its index.
pub fn parse_module(s: &str) -> Result<usize> {
    let s = s.trim();
    MODULES
        .iter()
        .position(|m| *m == s || m.strip_suffix("_proj") == Some(s))
        .ok_or_else(|| Error::invalid(format!("`{s}` is not a Llama linear; the targets are {}", MODULES.join(", "))))
}

#[derive(Clone, Debug)]
pub struct CausalLora {
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    /// Indices into `MODULES`, in order.
    pub targets: Vec<usize>,
    /// The trainable tensors under their PEFT keys.
    pub params: ParamSet,
    /// Per layer and module: the (A, B) entries of `params`.
    ids: Vec<[Option<(ParamId, ParamId)>; 7]>,
    /// The model file the adapter is for (`base_model_name_or_path`).
    pub base: String,
}

impl CausalLora {
    /// A fresh adapter: A Kaiming-uniform (bound 1/√in, seeded), B zero.
    pub fn new(
        cfg: &LlamaConfig,
        r: usize,
        alpha: f32,
        rslora: bool,
        targets: &[usize],
        seed: u64,
        device: &Device,
    ) -> Result<CausalLora> {
        if r == 0 {
            return Err(Error::invalid("LoRA rank r must be at least 1"));
        }
        let mut targets = targets.to_vec();
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            return Err(Error::invalid("LoRA needs at least one target module"));
        }
        for &m in &targets {
            let (out, inp) = module_shape(cfg, m);
            super::check_rank(r, MODULES[m], out, inp)?;
        }
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        let mut ids = vec![[None; 7]; cfg.layers];
        for (l, row) in ids.iter_mut().enumerate() {
            for &m in &targets {
                let (out, inp) = module_shape(cfg, m);
                let a = device.weight(&rng.vec_uniform(r * inp, 1.0 / (inp as f64).sqrt()), &[r, inp])?;
                let b = device.weight(&vec![0.0; out * r], &[out, r])?;
                row[m] = Some((params.push(key(l, m, 'A'), a)?, params.push(key(l, m, 'B'), b)?));
            }
        }
        Ok(CausalLora { r, alpha, rslora, targets, params, ids, base: String::new() })
    }

    pub fn scaling(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    /// Whether layer `l`'s module `m` carries LoRA.
    pub fn has(&self, l: usize, m: usize) -> bool {
        self.ids.get(l).is_some_and(|row| row[m].is_some())
    }

    /// PEFT's `adapter_config.json` for this adapter.
    pub fn peft_config(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base,
            "r": self.r,
            "lora_alpha": self.alpha,
            "use_rslora": self.rslora,
            "target_modules": self.targets.iter().map(|&m| MODULES[m]).collect::<Vec<_>>(),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }

    /// The adapter's files: (name, bytes).
    pub async fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(vec![
            ("adapter_config.json", serde_json::to_vec_pretty(&self.peft_config()).unwrap()),
            ("adapter_model.safetensors", self.params.to_safetensors(None).await?),
        ])
    }

    /// Writes the adapter folder as one set (`peft::format::write_folder_atomic`).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn save(&self, dir: &Path) -> Result<()> {
        crate::peft::format::write_folder_atomic(dir, &self.to_files().await?)
    }

    /// Reads a PEFT LoRA folder for a model of `cfg`: every target module of every layer must be
    /// there with its shapes, and nothing else.
    pub fn load(dir: &Path, cfg: &LlamaConfig, device: &Device) -> Result<CausalLora> {
        #[cfg(not(target_arch = "wasm32"))]
        let dir = &crate::peft::format::readable_folder(dir);
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
        let path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
        Self::from_files(&text, &cfg_path.display().to_string(), &bytes, &path.display().to_string(), cfg, device)
    }

    /// The same from the two files' contents (`cfg_path`, `path`: their names for errors).
    pub fn from_files(
        text: &str,
        cfg_path: &str,
        bytes: &[u8],
        path: &str,
        cfg: &LlamaConfig,
        device: &Device,
    ) -> Result<CausalLora> {
        let c: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::file(cfg_path, format!("is not JSON: {e}")))?;
        let field = |k: &str| c.get(k).filter(|v| !v.is_null());
        let peft_type = field("peft_type").and_then(|v| v.as_str()).unwrap_or("");
        if peft_type != "LORA" {
            return Err(Error::file(cfg_path, format!("peft_type is `{peft_type}`; a chat model takes LORA adapters")));
        }
        if let Some(t) = field("task_type").and_then(|v| v.as_str()).filter(|t| *t != "CAUSAL_LM") {
            return Err(Error::file(
                cfg_path,
                format!("task_type is `{t}`, not CAUSAL_LM: it is not for a chat model"),
            ));
        }
        for k in ["use_dora", "fan_in_fan_out"] {
            if field(k).and_then(|v| v.as_bool()) == Some(true) {
                return Err(Error::file(cfg_path, format!("`{k}` is not supported")));
            }
        }
        for k in ["layers_to_transform", "rank_pattern", "alpha_pattern"] {
            if field(k).is_some_and(|v| !(v.as_object().is_some_and(|o| o.is_empty()))) {
                return Err(Error::file(
                    cfg_path,
                    format!("`{k}` is not supported (one rank and alpha for all layers)"),
                ));
            }
        }
        let r = field("r").and_then(|v| v.as_u64()).ok_or_else(|| Error::file(cfg_path, "has no `r`"))? as usize;
        let alpha = field("lora_alpha").and_then(|v| v.as_f64()).unwrap_or(8.0) as f32;
        let rslora = field("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
        let targets: Vec<usize> = match field("target_modules") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| Error::file(cfg_path, "target_modules holds a non-string"))
                        .and_then(parse_module)
                })
                .collect::<Result<_>>()
                .map_err(|e| Error::file(cfg_path, e.to_string()))?,
            _ => {
                return Err(Error::file(cfg_path, "target_modules must be a list of module names (q_proj … down_proj)"))
            }
        };
        let mut lora = CausalLora::new(cfg, r, alpha, rslora, &targets, 0, device)?;
        lora.base = field("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let mut host = NamedTensors::from_bytes(bytes, path)?;
        host.check_finite("the adapter")?;
        lora.params.load_from(&mut host)?;
        if let Some(k) = host.tensors.keys().next() {
            return Err(Error::tensor(path, k, "is not a LoRA tensor of the configured target modules"));
        }
        Ok(lora)
    }
}

impl LinearDelta for CausalLora {
    /// s · (x Aᵀ) Bᵀ for layer `l`'s module `m`, or None where it has no LoRA.
    fn forward(&self, l: usize, m: usize, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.ids.get(l).and_then(|row| row[m]) else { return Ok(None) };
        // The scale on the (T, r) product, the narrow side.
        let xa = ops::scale(&ops::linear(x, &self.params[a], None)?, self.scaling())?;
        Ok(Some(ops::linear(&xa, &self.params[b], None)?))
    }

    /// Backward of `forward` for the output gradient `dy` and input `x`: accumulates dA and dB into
    /// `grads` (aligned with `params`) and returns the gradient it adds to x.
    fn backward(&self, l: usize, m: usize, dy: &Tensor, x: &Tensor, grads: &mut ParamSet) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.ids.get(l).and_then(|row| row[m]) else { return Ok(None) };
        let (at, bt) = (&self.params[a], &self.params[b]);
        let s = self.scaling();
        let xa = ops::scale(&ops::linear(x, at, None)?, s)?;
        let dxa = ops::linear_backward(Some(&mut grads[b]), None, dy, &xa, bt, true)?.unwrap();
        ops::linear_backward(Some(&mut grads[a]), None, &ops::scale(&dxa, s)?, x, at, true)
    }
}
