//! Settings that vary over the model, as mergekit allows: a value is a number, a list of numbers
//! interpolated over the layers (`[0, 0.5, 1]`: the first layer gets 0, the last 1, linearly between
//! evenly spaced knots), or a list of `{filter, value}` where the first filter that is a substring of
//! the tensor's name (or is absent or `*`) gives the value. Tensors outside the layers (embeddings,
//! pooler, head) sit at position 0, as in mergekit.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Number(f64),
    Flag(bool),
    Text(String),
    /// Knots interpolated over the layers.
    Gradient(Vec<f64>),
    /// The first matching filter's value.
    Filtered(Vec<(Option<String>, Setting)>),
}

impl Setting {
    /// From a JSON value (a recipe's `parameters` entry); `what` names it in errors.
    pub fn from_json(v: &serde_json::Value, what: &str) -> Result<Setting> {
        use serde_json::Value;
        Ok(match v {
            Value::Number(n) => Setting::Number(n.as_f64().unwrap()),
            Value::Bool(b) => Setting::Flag(*b),
            Value::String(s) => Setting::Text(s.clone()),
            Value::Array(items) if items.iter().all(|x| x.is_number()) && !items.is_empty() => {
                Setting::Gradient(items.iter().map(|x| x.as_f64().unwrap()).collect())
            }
            Value::Array(items) if items.iter().all(|x| x.is_object()) && !items.is_empty() => Setting::Filtered(
                items
                    .iter()
                    .map(|c| {
                        let filter = c.get("filter").and_then(|f| f.as_str()).map(|s| s.to_string());
                        let value = c
                            .get("value")
                            .ok_or_else(|| Error::invalid(format!("{what}: a filter entry without `value`: {c}")))?;
                        Ok((filter, Setting::from_json(value, what)?))
                    })
                    .collect::<Result<_>>()?,
            ),
            _ => {
                return Err(Error::invalid(format!("{what}: expected a number, a list of numbers or filters, got {v}")))
            }
        })
    }

    /// From a command-line value: `0.5` or `0,0.5,1` (a gradient over the layers).
    pub fn parse_cli(s: &str, flag: &str) -> Result<Setting> {
        let nums: std::result::Result<Vec<f64>, _> = s.split(',').map(|x| x.trim().parse::<f64>()).collect();
        match nums {
            Ok(v) if v.len() == 1 => Ok(Setting::Number(v[0])),
            Ok(v) if !v.is_empty() => Ok(Setting::Gradient(v)),
            _ => Err(Error::invalid(format!("{flag} {s}: expected a number or a comma-separated list of numbers"))),
        }
    }

    /// The value for tensor `name` at layer position `t` in [0, 1]; None where no filter matches.
    pub fn eval(&self, name: &str, t: f64) -> Option<f64> {
        match self {
            Setting::Number(x) => Some(*x),
            Setting::Flag(b) => Some(*b as u8 as f64),
            Setting::Text(_) => None,
            Setting::Gradient(k) => {
                let s = t * (k.len() - 1) as f64;
                let i0 = (s as usize).min(k.len() - 1);
                let i1 = (i0 + 1).min(k.len() - 1);
                let f = s - i0 as f64;
                Some((1.0 - f) * k[i0] + f * k[i1])
            }
            Setting::Filtered(conds) => conds
                .iter()
                .find(|(f, _)| f.as_deref().is_none_or(|f| f == "*" || name.contains(f)))
                .and_then(|(_, v)| v.eval(name, t)),
        }
    }
}

/// The layer index in a tensor name: the number after `layer.` / `layers.` / `layer_` (BERT-family and
/// Llama names), if any.
pub fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layer" || w[0] == "layers" || w[0] == "h" || w[0] == "blocks")
        .and_then(|w| w[1].parse().ok())
}

/// mergekit's position of a tensor: layer i of n at i / (n − 1) (1 when n = 1), others at 0.
pub fn position(name: &str, layers: usize) -> f64 {
    match layer_index(name) {
        Some(i) if layers > 1 => (i as f64 / (layers - 1) as f64).min(1.0),
        Some(_) => 1.0,
        None => 0.0,
    }
}
