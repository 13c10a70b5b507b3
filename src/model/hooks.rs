//! The hooks through which fine-tuning methods act on the frozen encoder, at the positions of He et
//! al.'s unified view ("Towards a Unified View of Parameter-Efficient Transfer Learning"):
//!
//! ```text
//!   x ──► linear_input ──► x Wᵀ + b ──► linear_output ──► y      every target linear (q, k, v, attn-out,
//!                                                                 intermediate, output): LoRA adds to y,
//!                                                                 (IA)³ scales y (k, v) or x (FFN output)
//!   key/value rows  ◄── prefix                                    prefix tuning
//!   attention output  ──► branch(AttnOutput)                      Houlsby adapter: h += A(h)
//!   FFN output        ──► branch(FfnOutput)                       Houlsby / Pfeiffer adapter: h += A(h)
//!   FFN input h1      ──► branch(Ffn) adds to the FFN output      parallel adapter: o += s·A(h1)
//!   any base weight   ◄── replaces                                BitFit (biases); full tuning
//! ```
//!
//! The model defines the hooks and calls them; `crate::peft` implements them, one file per method.
//! Every hook has a no-op default, so a method writes only the ones it uses, and any number of
//! methods can be active at once (called in the order given; backward in reverse). A hook's
//! parameters live in a `ParamSet`; its `ParamId`s address the same entries in the gradient set.
//! What a forward hook returns as `Saved` comes back to its backward.

use super::arch::Target;
use super::param_set::{ParamId, ParamSet};
use crate::error::Result;
use crate::rng::mix_seed;
use crate::tensor::Tensor;

/// Dropout settings of a training step; `None` in evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub seed: u32,
    pub step: u32,
    pub hidden: f32,
    pub attention: f32,
    /// On the input of LoRA branches.
    pub lora: f32,
}

impl Dropout {
    /// The mask seed of one dropout site of this step.
    pub fn seed(&self, site: u32) -> u32 {
        mix_seed(&[self.seed, self.step, site])
    }
}

/// Dropout site ids: fixed per position so that masks are a function of (seed, step, site).
pub mod site {
    use super::Target;
    pub const EMBEDDINGS: u32 = 1;
    pub const HEAD: u32 = 2;
    pub const PROBS: u32 = 0;
    pub const ATTN_OUT: u32 = 1;
    pub const FFN_OUT: u32 = 2;
    const LORA: u32 = 3; // + target index (3..9)

    /// A site inside layer `layer`.
    pub fn layer(layer: usize, what: u32) -> u32 {
        100 + layer as u32 * 16 + what
    }

    /// The input dropout of the LoRA branch of target `t` in layer `l`.
    pub fn lora(l: usize, t: Target) -> u32 {
        layer(l, LORA + t.index() as u32)
    }
}

/// What a hook sees: the layer it acts in, the trainable parameters and the step's dropout.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub layer: usize,
    pub params: &'a ParamSet,
    pub dropout: Option<&'a Dropout>,
}

/// Tensors a forward hook keeps for its backward.
pub type Saved = Vec<Tensor>;

/// The residual branches a hook can add to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Branch {
    /// After the attention output projection (and its dropout), before the residual: h += f(h).
    AttnOutput,
    /// After the FFN output projection (and its dropout), before the residual: h += f(h).
    FfnOutput,
    /// In parallel with the FFN: reads the FFN input, adds to the FFN output.
    Ffn,
}

impl Branch {
    pub const ALL: [Branch; 3] = [Branch::AttnOutput, Branch::FfnOutput, Branch::Ffn];
}

/// A half of a linear layer or of a norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Weight,
    Bias,
}

/// A base weight that a hook may replace by a trainable tensor of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseWeight {
    /// The word, position and token-type embedding tables.
    WordEmbeddings,
    PositionEmbeddings,
    TokenTypeEmbeddings,
    /// The embeddings' norm.
    EmbeddingsNorm(Part),
    /// The projection from the embedding width to the hidden width (ELECTRA).
    EmbeddingsProject(Part),
    /// The linear of a target in a layer.
    Linear(usize, Target, Part),
    /// The norm after attention in a layer.
    AttnNorm(usize, Part),
    /// The norm after the FFN in a layer.
    OutNorm(usize, Part),
    /// The pooler's dense layer.
    Pooler(Part),
}

/// The hooks of one method. See the module documentation for where each acts.
pub trait Hook {
    /// The lowest layer this method acts in (its backward needs to reach it); `None` if none.
    fn lowest_layer(&self) -> Option<usize> {
        None
    }

    /// The parameter that stands in for base weight `w`, if this method trains its own copy.
    fn replaces(&self, _w: BaseWeight) -> Option<ParamId> {
        None
    }

    /// Whether `linear_input` changes the input of target `t` in layer `l`.
    fn changes_input(&self, _l: usize, _t: Target) -> bool {
        false
    }

    /// x' for x, the input of target linear `t`.
    fn linear_input(&self, _cx: Cx, _t: Target, _x: &Tensor) -> Result<Option<(Tensor, Saved)>> {
        Ok(None)
    }

    /// dx for dx', the gradient of what `linear_input` returned; accumulates its own gradients.
    fn linear_input_backward(&self, _cx: Cx, _t: Target, _s: &Saved, dx: Tensor, _g: &mut ParamSet) -> Result<Tensor> {
        Ok(dx)
    }

    /// Changes y, the output of target linear `t` on input `x`.
    fn linear_output(&self, _cx: Cx, _t: Target, _x: &Tensor, _y: &mut Tensor) -> Result<Option<Saved>> {
        Ok(None)
    }

    /// For dy, the gradient of the changed y: accumulates its own gradients, adds what it owes to
    /// `dx` (the gradient of x), and returns the gradient of y before the change when that differs.
    fn linear_output_backward(
        &self,
        _cx: Cx,
        _t: Target,
        _s: &Saved,
        _dy: &Tensor,
        _dx: Option<&mut Tensor>,
        _g: &mut ParamSet,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Adds a branch on `input` to `out` (see `Branch`).
    fn branch(&self, _cx: Cx, _at: Branch, _input: &Tensor, _out: &mut Tensor) -> Result<Option<Saved>> {
        Ok(None)
    }

    /// For dout, the gradient of `out`: accumulates its own gradients and adds the gradient of
    /// `input` to `dinput`.
    fn branch_backward(
        &self,
        _cx: Cx,
        _at: Branch,
        _s: &Saved,
        _dout: &Tensor,
        _dinput: &mut Tensor,
        _g: &mut ParamSet,
    ) -> Result<()> {
        Ok(())
    }

    /// Learned key and value rows (P, C) put in front of layer `l`'s keys and values.
    fn prefix(&self, _l: usize) -> Option<(ParamId, ParamId)> {
        None
    }
}

/// The saved state of every hook at every position of one layer.
#[derive(Clone, Debug, Default)]
pub struct HookSaves {
    slots: Vec<Option<Saved>>,
}

/// Positions per hook: linear input (6), linear output (6), branches (3).
const POINTS: usize = 15;

/// A position of a layer at which hooks keep state.
#[derive(Clone, Copy, Debug)]
pub enum Point {
    Input(Target),
    Output(Target),
    Branch(Branch),
}

impl Point {
    fn index(self) -> usize {
        match self {
            Point::Input(t) => t.index(),
            Point::Output(t) => 6 + t.index(),
            Point::Branch(b) => 12 + b as usize,
        }
    }
}

impl HookSaves {
    pub fn new(hooks: usize) -> Self {
        HookSaves { slots: vec![None; hooks * POINTS] }
    }
    pub fn put(&mut self, hook: usize, at: Point, s: Option<Saved>) {
        self.slots[hook * POINTS + at.index()] = s;
    }
    pub fn get(&self, hook: usize, at: Point) -> Option<&Saved> {
        self.slots.get(hook * POINTS + at.index()).and_then(|s| s.as_ref())
    }
}
