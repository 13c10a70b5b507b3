//! Bottleneck adapters (Houlsby et al.; Pfeiffer et al.): h += s · up(act(down(h))) on the output of
//! a sub-layer, before its residual and norm. Houlsby places one after the attention output and one
//! after the FFN output; Pfeiffer only the one after the FFN. `down` starts like a Linear, `up` at
//! zero, so an adapter starts as the identity. Keys: `….attention.output.adapter.{down,up}.*` and
//! `….output.adapter.{down,up}.*` (the parents of the attention and FFN output linears).

use super::{kaiming, layer_key, parent, MethodKind, MethodOptions};
use crate::error::{Error, Result};
use crate::model::arch::Activation;
use crate::model::encoder::{act_backward, act_forward, linear_dx_acc, Encoder};
use crate::model::hooks::{Branch, Cx, Hook, Saved};
use crate::model::{LayerDesc, ParamId, ParamSet, Target};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Where bottleneck adapters sit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// After the attention output and after the FFN output.
    #[default]
    Houlsby,
    /// After the FFN output only.
    Pfeiffer,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    /// hidden / bottleneck width
    pub reduction_factor: usize,
    pub activation: Activation,
    /// Output scale (1 for Houlsby adapters).
    pub scaling: f32,
    #[serde(default)]
    pub placement: Placement,
}

impl MethodKind for AdapterConfig {
    fn from_options(o: &MethodOptions) -> Result<Self> {
        let placement = match o.adapter_placement.as_str() {
            "houlsby" => Placement::Houlsby,
            "pfeiffer" => Placement::Pfeiffer,
            p => return Err(Error::invalid(format!("adapter placement `{p}`: choose houlsby or pfeiffer"))),
        };
        Ok(AdapterConfig {
            reduction_factor: o.reduction_factor,
            activation: o.activation()?,
            scaling: o.adapter_scaling.unwrap_or(1.0),
            placement,
        })
    }

    fn build(&self, enc: &Encoder, params: &mut ParamSet, rng: &mut Rng) -> Result<Vec<Box<dyn Hook>>> {
        let sites: &[Branch] = match self.placement {
            Placement::Houlsby => &[Branch::AttnOutput, Branch::FfnOutput],
            Placement::Pfeiffer => &[Branch::FfnOutput],
        };
        let mut layers = Vec::with_capacity(enc.layers.len());
        for l in 0..enc.layers.len() {
            let mut at = vec![];
            for &b in sites {
                let name = format!("{}.adapter", adapter_parent(&enc.desc, l, b));
                at.push((b, Bottleneck::init(enc, params, rng, &name, self.reduction_factor)?));
            }
            layers.push(at);
        }
        Ok(vec![Box::new(Adapters { activation: self.activation, scaling: self.scaling, layers })])
    }

    fn peft_config(&self, _: &LayerDesc) -> (&'static str, Option<serde_json::Map<String, serde_json::Value>>) {
        ("LOCALTUNE_ADAPTER", None)
    }
}

/// The key prefix of the module an adapter at `b` belongs to in layer `l`.
pub(crate) fn adapter_parent(desc: &LayerDesc, l: usize, b: Branch) -> String {
    let t = if b == Branch::AttnOutput { Target::AttnOut } else { Target::Output };
    format!("{}.{}", layer_key(desc, l), parent(desc.module(t)))
}

/// A bottleneck: down (m, C) + bias, up (C, m) + bias, by their parameter ids.
#[derive(Clone, Copy, Debug)]
pub struct Bottleneck {
    pub down_w: ParamId,
    pub down_b: ParamId,
    pub up_w: ParamId,
    pub up_b: ParamId,
}

impl Bottleneck {
    /// `{name}.down.*` like a Linear (Kaiming-uniform weight, zero bias) and `{name}.up.*` zero.
    pub fn init(enc: &Encoder, params: &mut ParamSet, rng: &mut Rng, name: &str, rf: usize) -> Result<Bottleneck> {
        let c = enc.config.hidden_size;
        if rf == 0 || c / rf == 0 {
            return Err(Error::invalid(format!("reduction factor {rf} leaves no bottleneck of a {c}-wide model")));
        }
        let m = c / rf;
        let zeros = |shape: &[usize]| enc.device.zeros(shape);
        Ok(Bottleneck {
            down_w: params.push(format!("{name}.down.weight"), kaiming(enc, rng, m, c)?)?,
            down_b: params.push(format!("{name}.down.bias"), zeros(&[m])?)?,
            up_w: params.push(format!("{name}.up.weight"), zeros(&[c, m])?)?,
            up_b: params.push(format!("{name}.up.bias"), zeros(&[c])?)?,
        })
    }

    /// s · up(act(down(h))), with what the backward needs: [h, z, act(z)].
    pub fn forward(&self, p: &ParamSet, act: Activation, s: f32, h: &Tensor) -> Result<(Tensor, Saved)> {
        let z = ops::linear(h, &p[self.down_w], Some(&p[self.down_b]))?;
        let a = act_forward(act, &z)?;
        let u = ops::linear(&a, &p[self.up_w], Some(&p[self.up_b]))?;
        Ok((ops::scale(&u, s)?, vec![h.clone(), z, a]))
    }

    /// Backward of `forward` for the gradient `dout` of its output: accumulates the adapter's
    /// gradients into `g` (none for a frozen adapter) and adds the input gradient to `dh`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &ParamSet,
        act: Activation,
        s: f32,
        saved: &Saved,
        dout: &Tensor,
        dh: &mut Tensor,
        g: Option<&mut ParamSet>,
    ) -> Result<()> {
        let (h, z, a) = (&saved[0], &saved[1], &saved[2]);
        let du = ops::scale(dout, s)?;
        let dz = match g {
            Some(g) => {
                let (up_w, up_b) = g.pair_mut(self.up_w, self.up_b);
                let da = ops::linear_backward(Some(up_w), Some(up_b), &du, a, &p[self.up_w], true)?.unwrap();
                let dz = act_backward(act, &da, z, a)?;
                let (down_w, down_b) = g.pair_mut(self.down_w, self.down_b);
                ops::linear_backward(Some(down_w), Some(down_b), &dz, h, &p[self.down_w], false)?;
                dz
            }
            None => {
                let da = ops::linear_backward(None, None, &du, a, &p[self.up_w], true)?.unwrap();
                act_backward(act, &da, z, a)?
            }
        };
        linear_dx_acc(dh, &dz, &p[self.down_w])
    }
}

/// The adapters of every layer, each at its branch.
struct Adapters {
    activation: Activation,
    scaling: f32,
    layers: Vec<Vec<(Branch, Bottleneck)>>,
}

impl Adapters {
    fn at(&self, l: usize, b: Branch) -> Option<&Bottleneck> {
        self.layers[l].iter().find(|(x, _)| *x == b).map(|(_, a)| a)
    }
}

impl Hook for Adapters {
    fn lowest_layer(&self) -> Option<usize> {
        self.layers.iter().position(|l| !l.is_empty())
    }

    fn branch(&self, cx: Cx, at: Branch, input: &Tensor, out: &mut Tensor) -> Result<Option<Saved>> {
        let Some(a) = self.at(cx.layer, at) else { return Ok(None) };
        let (delta, saved) = a.forward(cx.params, self.activation, self.scaling, input)?;
        ops::add_into(out, &delta, 1.0)?;
        Ok(Some(saved))
    }

    fn branch_backward(
        &self,
        cx: Cx,
        at: Branch,
        saved: &Saved,
        dout: &Tensor,
        dinput: &mut Tensor,
        grads: &mut ParamSet,
    ) -> Result<()> {
        let a = self.at(cx.layer, at).expect("a saved branch has its adapter");
        a.backward(cx.params, self.activation, self.scaling, saved, dout, dinput, Some(grads))
    }
}
