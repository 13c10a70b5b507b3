//! Sentence embeddings as a sentence-transformers folder defines them: `modules.json` lists the
//! modules after the transformer (Pooling, then Normalize when present), `1_Pooling/config.json`
//! picks the pooling. A plain Hugging Face folder without `modules.json` gets mean pooling and L2
//! normalisation (what all-MiniLM-L6-v2 uses).

use super::encoder::Inputs;
use crate::error::{Error, Result};
use crate::ops::{self, PoolMode};
use crate::tensor::Tensor;

/// How token states become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pooling {
    pub mode: PoolMode,
    /// L2-normalise the pooled vector (sentence-transformers' Normalize module).
    pub normalize: bool,
}

impl Default for Pooling {
    fn default() -> Self {
        Pooling { mode: PoolMode::Mean, normalize: true }
    }
}

impl Pooling {
    /// Reads `modules.json` and the pooling config it points to; `read(path)` returns a file of the
    /// folder (None when absent); `origin` names the folder in errors.
    pub fn from_folder(read: &dyn Fn(&str) -> Result<Option<String>>, origin: &str) -> Result<Pooling> {
        let Some(modules) = read("modules.json")? else { return Ok(Pooling::default()) };
        let file = format!("{origin}/modules.json");
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&modules).map_err(|e| Error::file(&file, format!("not a module list: {e}")))?;
        let mut pooling: Option<PoolMode> = None;
        let mut normalize = false;
        for m in &list {
            let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let path = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
            let kind = ty.rsplit('.').next().unwrap_or(ty);
            match kind {
                "Transformer" => {}
                "Pooling" => {
                    let cfg_path =
                        format!("{}config.json", if path.is_empty() { String::new() } else { format!("{path}/") });
                    let cfg = read(&cfg_path)?.ok_or_else(|| {
                        Error::file(format!("{origin}/{cfg_path}"), "missing (modules.json lists it)")
                    })?;
                    pooling = Some(Self::mode_of(&cfg, &format!("{origin}/{cfg_path}"))?);
                }
                "Normalize" => normalize = true,
                _ => {
                    return Err(Error::file(
                        &file,
                        format!("module `{ty}` is not supported (Transformer, Pooling and Normalize are)"),
                    ))
                }
            }
        }
        let mode = pooling.ok_or_else(|| Error::file(&file, "lists no Pooling module"))?;
        Ok(Pooling { mode, normalize })
    }

    /// The one pooling mode a `1_Pooling/config.json` turns on: `pooling_mode` (sentence-transformers
    /// 6: "cls", "mean", "max", "mean_sqrt_len_tokens", …) or the older `pooling_mode_*` booleans.
    fn mode_of(json: &str, origin: &str) -> Result<PoolMode> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::file(origin, format!("not valid JSON: {e}")))?;
        let by_name = |name: &str| match name {
            "cls" | "cls_token" => Ok(PoolMode::Cls),
            "mean" | "mean_tokens" => Ok(PoolMode::Mean),
            "max" | "max_tokens" => Ok(PoolMode::Max),
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Ok(PoolMode::MeanSqrtLen),
            o => Err(Error::file(
                origin,
                format!("pooling mode `{o}` is not supported (cls, mean, max, mean_sqrt_len_tokens are)"),
            )),
        };
        let names: Vec<String> = match v.get("pooling_mode") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, x)| k.starts_with("pooling_mode_") && x.as_bool() == Some(true))
                .map(|(k, _)| k.trim_start_matches("pooling_mode_").to_string())
                .collect(),
        };
        match names.as_slice() {
            [one] => by_name(one),
            [] => Err(Error::file(origin, "turns on no pooling mode")),
            many => Err(Error::file(
                origin,
                format!("turns on several pooling modes ({}); localtune supports one", many.join(", ")),
            )),
        }
    }

    /// The sentence vectors (B, C) of a last hidden state (B, T, C).
    pub fn apply(&self, hidden: &Tensor, inputs: &Inputs) -> Result<Tensor> {
        let pooled = ops::pool(hidden, &inputs.mask, self.mode)?;
        if self.normalize {
            ops::l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }
}
