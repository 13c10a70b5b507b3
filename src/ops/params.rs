//! Uniform blocks of the WGSL kernels, laid out as the `struct Params` of each shader
//! (16-byte multiples, u32/f32 fields only).

use bytemuck::{Pod, Zeroable};

use super::MatmulDesc;
use crate::error::{Error, Result};

/// Declares a uniform block as a `#[repr(C)]` Pod struct and records its layout (name, byte offset,
/// byte size of each field) for the test that compares it with the WGSL declaration.
macro_rules! params_struct {
    (pub struct $name:ident { $(pub $field:ident: $ty:ty,)* }) => {
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        pub struct $name {
            $(pub $field: $ty,)*
        }

        impl $name {
            pub const FIELDS: &'static [(&'static str, usize, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field), std::mem::size_of::<$ty>()),)*];
        }
    };
}

/// A uniform block's Rust layout and the shader family that declares it.
pub struct Layout {
    pub family: &'static str,
    pub rust_name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize, usize)],
}

macro_rules! layouts {
    ($($family:literal => $name:ident),* $(,)?) => {
        /// Every shader family's uniform block.
        pub const LAYOUTS: &[Layout] = &[
            $(Layout { family: $family, rust_name: stringify!($name), size: std::mem::size_of::<$name>(), fields: $name::FIELDS },)*
        ];
    };
}

layouts! {
    "adamw" => AdamWParams,
    "crossentropy" => CrossEntropyParams,
    "dropout" => DropoutParams,
    "elementwise" => ElementwiseParams,
    "embedding" => EmbeddingParams,
    "layernorm" => LayerNormParams,
    "llama" => LlamaParams,
    "matmul" => MatmulParams,
    "merge" => MergeParams,
    "pool" => PoolParams,
    "prefix" => PrefixParams,
    "qmatmul" => QMatmulParams,
    "reduce" => ReduceParams,
    "scalearn" => ScaLearnParams,
    "softmax" => SoftmaxParams,
}

pub const MAP_SCALE: u32 = 0;
pub const MAP_GELU: u32 = 1;
pub const MAP_TANH: u32 = 2;
pub const MAP_RELU: u32 = 3;

pub const ZIP_ADD: u32 = 0;
pub const ZIP_MUL: u32 = 1;
pub const ZIP_GELU_BACKWARD: u32 = 2;
pub const ZIP_TANH_BACKWARD: u32 = 3;
pub const ZIP_RELU_BACKWARD: u32 = 4;

params_struct! {
    pub struct MatmulParams {
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub flags: u32,
        pub a_off: u32,
        pub a_ld: u32,
        pub a_bs0: u32,
        pub a_bs1: u32,
        pub b_off: u32,
        pub b_ld: u32,
        pub b_bs0: u32,
        pub b_bs1: u32,
        pub c_off: u32,
        pub c_ld: u32,
        pub c_bs0: u32,
        pub c_bs1: u32,
        pub batch1: u32,
        pub alpha: f32,
        pub _pad: [u32; 2],
    }
}

impl MatmulParams {
    pub fn new(d: &MatmulDesc, has_bias: bool) -> Result<Self> {
        let f = |v: usize| {
            u32::try_from(v)
                .map_err(|_| Error::Limit { op: "matmul", msg: format!("index {v} does not fit in 32 bits") })
        };
        let s =
            |st: &super::Strides| -> Result<[u32; 4]> { Ok([f(st.offset)?, f(st.ld)?, f(st.bs[0])?, f(st.bs[1])?]) };
        let ([a_off, a_ld, a_bs0, a_bs1], [b_off, b_ld, b_bs0, b_bs1]) = (s(&d.a)?, s(&d.b)?);
        let [c_off, c_ld, c_bs0, c_bs1] = s(&d.c)?;
        let flags = (d.trans_a as u32) | (d.trans_b as u32) << 1 | (d.accumulate as u32) << 2 | (has_bias as u32) << 3;
        Ok(MatmulParams {
            m: f(d.m)?,
            n: f(d.n)?,
            k: f(d.k)?,
            flags,
            a_off,
            a_ld,
            a_bs0,
            a_bs1,
            b_off,
            b_ld,
            b_bs0,
            b_bs1,
            c_off,
            c_ld,
            c_bs0,
            c_bs1,
            batch1: f(d.batch[1])?,
            alpha: d.alpha,
            _pad: [0; 2],
        })
    }
}

params_struct! {
    pub struct ElementwiseParams {
        pub n: u32,
        pub op: u32,
        pub y_len: u32,
        pub accumulate: u32,
        pub alpha: f32,
        pub _pad: [u32; 3],
    }
}

params_struct! {
    pub struct LayerNormParams {
        pub rows: u32,
        pub cols: u32,
        pub eps: f32,
        pub accumulate: u32,
    }
}

params_struct! {
    pub struct SoftmaxParams {
        pub rows: u32,
        pub len: u32,
        pub mask_div: u32,
        pub has_mask: u32,
        pub scale: f32,
        pub mask_mod: u32,
        pub causal: u32,
        pub _pad: u32,
    }
}

params_struct! {
    pub struct EmbeddingParams {
        pub tokens: u32,
        pub cols: u32,
        pub vocab: u32,
        pub _pad: u32,
    }
}

params_struct! {
    pub struct PoolParams {
        pub batch: u32,
        pub tokens: u32,
        pub cols: u32,
        pub mode: u32,
    }
}

params_struct! {
    pub struct CrossEntropyParams {
        pub batch: u32,
        pub classes: u32,
        pub grad_scale: f32,
        pub _pad: u32,
    }
}

pub const MERGE_SUM: u32 = 0;
pub const MERGE_TIES: u32 = 1;
pub const MERGE_FISHER: u32 = 2;
pub const MERGE_DELTA: u32 = 3;

pub const MERGE_FREQUENCY: u32 = 1;
pub const MERGE_SIGN_WEIGHTED: u32 = 2;
pub const MERGE_DIV_COUNT: u32 = 4;
pub const MERGE_DIV_WEIGHT_MASK: u32 = 8;
pub const MERGE_HAS_HI: u32 = 16;
pub const MERGE_PER_ELEMENT: u32 = 32;
pub const MERGE_RESCALE: u32 = 64;
pub const MERGE_ABS: u32 = 128;

params_struct! {
    pub struct MergeParams {
        pub n: u32,
        pub inputs: u32,
        pub mode: u32,
        pub flags: u32,
        pub shift: u32,
        pub seed: u32,
        pub scale: f32,
        pub aux: f32,
    }
}

params_struct! {
    pub struct LlamaParams {
        pub rows: u32,
        pub cols: u32,
        pub a: u32,
        pub b: u32,
        pub eps: f32,
        pub sign: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

params_struct! {
    pub struct QMatmulParams {
        pub n: u32,
        pub rows: u32,
        pub cols: u32,
        pub kind: u32,
    }
}

params_struct! {
    pub struct ScaLearnParams {
        pub rows: u32,
        pub cols: u32,
        pub source: u32,
        pub flags: u32,
    }
}

params_struct! {
    pub struct ReduceParams {
        pub rows: u32,
        pub cols: u32,
        pub accumulate: u32,
        pub _pad: u32,
    }
}

params_struct! {
    pub struct AdamWParams {
        pub n: u32,
        pub grad_scale: f32,
        pub _pad: [u32; 2],
        pub lr: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub bc1: f32,
        pub bc2: f32,
        pub max_norm: f32,
    }
}

params_struct! {
    pub struct DropoutParams {
        pub n: u32,
        pub seed: u32,
        pub p: f32,
        pub scale: f32,
    }
}

params_struct! {
    pub struct PrefixParams {
        pub batch: u32,
        pub plen: u32,
        pub tokens: u32,
        pub cols: u32,
    }
}
