//! LoRA (Hu et al.): on each target linear, y += s · (drop(x) Aᵀ) Bᵀ with A (r, in) drawn like
//! PEFT's Kaiming-uniform and B (out, r) zero, s = alpha / r (or alpha / √r with rsLoRA). Keys:
//! `….{module}.lora_A.weight` and `lora_B.weight`, as PEFT saves them.

use super::{kaiming, layer_key, MethodKind, MethodOptions};
use crate::error::{Error, Result};
use crate::model::encoder::{drop, Encoder};
use crate::model::hooks::{site, Cx, Hook, Saved};
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::ops::{self, MatmulDesc};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    pub targets: Vec<Target>,
    /// Dropout on the LoRA input (training only).
    pub dropout: f32,
}

impl LoraConfig {
    /// LoRA of rank `r` and `alpha` on `targets`, without rsLoRA or input dropout.
    pub fn new(r: usize, alpha: f32, targets: &[Target]) -> Self {
        LoraConfig { r, alpha, rslora: false, targets: targets.to_vec(), dropout: 0.0 }
    }

    pub fn scaling(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

/// PEFT's `target_modules` for LoRA targets: the modules' leaf names, or a full-match regex when a
/// target's module path is a suffix of another's (BERT's `output.dense`).
pub fn target_modules(desc: &LayerDesc, targets: &[Target]) -> serde_json::Value {
    if !targets.iter().any(|&t| desc.ambiguous_suffix(t)) {
        return serde_json::json!(targets.iter().map(|&t| desc.peft_module_name(t)).collect::<Vec<_>>());
    }
    let layer = desc.names.layer.replace('.', r"\.").replace("{}", r"\d+");
    let alts: Vec<String> = targets
        .iter()
        .map(|&t| {
            let m = desc.module(t).replace('.', r"\.");
            if desc.ambiguous_suffix(t) {
                format!("{layer}\\.{m}")
            } else {
                m
            }
        })
        .collect();
    serde_json::Value::String(format!(r".*\.({})$", alts.join("|")))
}

impl MethodKind for LoraConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        Ok(LoraConfig {
            r: o.r,
            alpha: o.alpha,
            rslora: o.rslora,
            targets: o.targets.iter().map(|t| Target::parse(t.trim())).collect::<Result<_>>()?,
            dropout: o.lora_dropout,
        })
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        if self.r == 0 {
            return Err(Error::invalid("LoRA rank r must be at least 1"));
        }
        if self.targets.is_empty() {
            return Err(Error::invalid("LoRA needs at least one target module"));
        }
        if let Some(t) = self.targets.iter().enumerate().find(|(i, t)| self.targets[..*i].contains(t)).map(|(_, t)| t) {
            return Err(Error::invalid(format!("LoRA target `{}` is listed twice", t.cli_name())));
        }
        let (c, f) = (enc.config.hidden_size, enc.config.intermediate_size);
        for &t in &self.targets {
            let (out, inp) = t.dims(c, f);
            super::check_rank(self.r, t.cli_name(), out, inp)?;
        }
        let mut ids = vec![[None; 6]; enc.layers.len()];
        for (l, layer_ids) in ids.iter_mut().enumerate() {
            let lk = layer_key(&enc.desc, l);
            for &t in &self.targets {
                let (out, inp) = t.dims(c, f);
                let m = enc.desc.module(t);
                let a = params.push(format!("{lk}.{m}.lora_A.weight"), kaiming(enc, rng, self.r, inp)?)?;
                let b = params.push(format!("{lk}.{m}.lora_B.weight"), enc.device.zeros(&[out, self.r])?)?;
                layer_ids[t.index()] = Some((a, b));
            }
        }
        Ok(vec![Box::new(Lora { scaling: self.scaling(), ids })])
    }

    fn peft_config(&self, desc: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        let serde_json::Value::Object(m) = serde_json::json!({
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.rslora,
            "target_modules": target_modules(desc, &self.targets),
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_dora": false,
            "lora_bias": false,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": null,
            "layers_pattern": null,
        }) else {
            unreachable!()
        };
        ("LORA", Some(m))
    }

    fn input_dropout(&self) -> f32 {
        self.dropout
    }
}

/// LoRA's hooks: the (A, B) of each target of each layer.
struct Lora {
    scaling: f32,
    ids: Vec<[Option<(ParamId, ParamId)>; 6]>,
}

impl Hook for Lora {
    fn lowest_layer(&self) -> Option<usize> {
        self.ids.iter().position(|l| l.iter().any(|x| x.is_some()))
    }

    fn linear_output(&self, cx: Cx, t: Target, x: &Tensor, y: &mut Tensor) -> Result<Option<Saved>> {
        let Some((a, b)) = self.ids[cx.layer][t.index()] else { return Ok(None) };
        let (a, b) = (&cx.params[a], &cx.params[b]);
        let xd = drop(x, cx.dropout, |d| d.lora, site::lora(cx.layer, t))?;
        let u = ops::linear(&xd, a, None)?; // (N, r)
        let rows = u.dim(0);
        let (out, r) = (b.dim(0), b.dim(1));
        let mut desc = MatmulDesc::contiguous(1, rows, out, r, false, true);
        desc.alpha = self.scaling;
        desc.accumulate = true;
        ops::matmul_into(y, &u, b, None, &desc)?;
        Ok(Some(vec![xd, u]))
    }

    fn linear_output_backward(
        &self,
        cx: Cx,
        t: Target,
        saved: &Saved,
        dy: &Tensor,
        dx: Option<&mut Tensor>,
        grads: &mut ParamSet,
    ) -> Result<Option<Tensor>> {
        let Some((ia, ib)) = self.ids[cx.layer][t.index()] else { return Ok(None) };
        let (a, b) = (&cx.params[ia], &cx.params[ib]);
        let (xd, u) = (&saved[0], &saved[1]);
        let s = self.scaling;
        let rows = u.dim(0);
        let (out, r) = (b.dim(0), b.dim(1));
        let inp = a.dim(1);
        // dB += s · dyᵀ u
        let mut desc = MatmulDesc::contiguous(1, out, r, rows, true, false);
        desc.alpha = s;
        desc.accumulate = true;
        ops::matmul_into(&mut grads[ib], dy, u, None, &desc)?;
        // du = s · dy B
        let mut du = dy.device().uninit("lora_backward", &[rows, r])?;
        let mut desc = MatmulDesc::contiguous(1, rows, r, out, false, false);
        desc.alpha = s;
        ops::matmul_into(&mut du, dy, b, None, &desc)?;
        // dA += duᵀ xd
        let mut desc = MatmulDesc::contiguous(1, r, inp, rows, true, false);
        desc.accumulate = true;
        ops::matmul_into(&mut grads[ia], &du, xd, None, &desc)?;
        if let Some(dx) = dx {
            let dxd = ops::matmul(&du, a, false, false)?;
            let dxd = drop(&dxd, cx.dropout, |d| d.lora, site::lora(cx.layer, t))?;
            ops::add_into(dx, &dxd, 1.0)?;
        }
        Ok(None)
    }
}
