//! (IA)³ (Liu et al.): learned vectors that scale the keys (l_k), the values (l_v) and the FFN's
//! inner activation (l_ff, i.e. the input of the FFN output linear), initialised to ones. Stored
//! as PEFT stores them: `….key.ia3_l` (C, 1), `….value.ia3_l` (C, 1), and on the FFN output
//! linear (1, F) with that module in `feedforward_modules`.

use super::{layer_key, MethodKind, MethodOptions};
use crate::error::Result;
use crate::model::encoder::Encoder;
use crate::model::hooks::{Cx, Hook, Saved};
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ia3Config {}

impl MethodKind for Ia3Config {
    fn from_options(_: &MethodOptions) -> Result<Self> {
        Ok(Ia3Config {})
    }

    fn default_lr(&self) -> f32 {
        1e-2
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, _rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let (c, f) = (enc.config.hidden_size, enc.config.intermediate_size);
        let ones = |shape: &[usize]| enc.device.weight(&vec![1.0; shape.iter().product()], shape);
        let mut ids = Vec::with_capacity(enc.layers.len());
        for l in 0..enc.layers.len() {
            let lk = layer_key(&enc.desc, l);
            let name = |t: Target| format!("{lk}.{}.ia3_l", enc.desc.module(t));
            let key = params.push(name(Target::Key), ones(&[c, 1])?)?;
            let value = params.push(name(Target::Value), ones(&[c, 1])?)?;
            let ffn = params.push(name(Target::Output), ones(&[1, f])?)?;
            ids.push([key, value, ffn]);
        }
        Ok(vec![Box::new(Ia3 { ids })])
    }

    fn peft_config(&self, desc: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        let layer = desc.names.layer.replace('.', r"\.").replace("{}", r"\d+");
        let esc = |t: Target| desc.module(t).replace('.', r"\.");
        let ffn = format!(r"{layer}\.{}", esc(Target::Output));
        let serde_json::Value::Object(m) = serde_json::json!({
            "target_modules": format!(r".*\.({}|{}|{ffn})$", esc(Target::Key), esc(Target::Value)),
            "feedforward_modules": format!(r".*\.{ffn}$"),
            "fan_in_fan_out": false,
            "init_ia3_weights": true,
        }) else {
            unreachable!()
        };
        ("IA3", Some(m))
    }
}

/// (IA)³'s hooks: [l_k, l_v, l_ff] per layer.
struct Ia3 {
    ids: Vec<[ParamId; 3]>,
}

/// The scaling vector flattened (PEFT keeps (C, 1) and (1, F)).
fn flat(t: &Tensor) -> Result<Tensor> {
    t.reshape(&[t.numel()])
}

/// grad (stored shape) += Σ_rows x.
fn sum_rows_into_stored(grad: &mut Tensor, x: &Tensor) -> Result<()> {
    let stored = grad.shape().to_vec();
    grad.set_shape(&[grad.numel()])?;
    let r = ops::sum_rows_into(grad, x, true);
    grad.set_shape(&stored)?;
    r
}

impl Hook for Ia3 {
    fn lowest_layer(&self) -> Option<usize> {
        (!self.ids.is_empty()).then_some(0)
    }

    fn changes_input(&self, _l: usize, t: Target) -> bool {
        t == Target::Output
    }

    /// The FFN output linear reads inter ⊙ l_ff.
    fn linear_input(&self, cx: Cx, t: Target, x: &Tensor) -> Result<Option<(Tensor, Saved)>> {
        if t != Target::Output {
            return Ok(None);
        }
        let l = flat(&cx.params[self.ids[cx.layer][2]])?;
        Ok(Some((ops::mul(x, &l)?, vec![x.clone()])))
    }

    fn linear_input_backward(
        &self,
        cx: Cx,
        _t: Target,
        saved: &Saved,
        dx: Tensor,
        grads: &mut ParamSet,
    ) -> Result<Tensor> {
        let id = self.ids[cx.layer][2];
        sum_rows_into_stored(&mut grads[id], &ops::mul(&dx, &saved[0])?)?;
        ops::mul(&dx, &flat(&cx.params[id])?)
    }

    /// Keys and values come out scaled: k ⊙ l_k, v ⊙ l_v.
    fn linear_output(&self, cx: Cx, t: Target, _x: &Tensor, y: &mut Tensor) -> Result<Option<Saved>> {
        let which = match t {
            Target::Key => 0,
            Target::Value => 1,
            _ => return Ok(None),
        };
        let l = flat(&cx.params[self.ids[cx.layer][which]])?;
        let scaled = ops::mul(y, &l)?;
        let raw = std::mem::replace(y, scaled);
        Ok(Some(vec![raw]))
    }

    fn linear_output_backward(
        &self,
        cx: Cx,
        t: Target,
        saved: &Saved,
        dy: &Tensor,
        _dx: Option<&mut Tensor>,
        grads: &mut ParamSet,
    ) -> Result<Option<Tensor>> {
        let which = if t == Target::Key { 0 } else { 1 };
        let id = self.ids[cx.layer][which];
        sum_rows_into_stored(&mut grads[id], &ops::mul(dy, &saved[0])?)?;
        Ok(Some(ops::mul(dy, &flat(&cx.params[id])?)?))
    }
}
