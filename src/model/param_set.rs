//! `ParamSet`: an ordered set of named tensors on one device — what every fine-tuning method's
//! parameters, their gradients and optimiser moments, checkpoints, adapter files and (next) the
//! inputs and outputs of merging are. Names are Hugging Face PEFT's keys (`base_model.model.…`).
//!
//! Entries keep their insertion order, so sets made alike (a set and its `zeros_like`) line up
//! index by index: a `ParamId` from one addresses the same parameter in the other.

use std::collections::HashMap;

use super::weights::{HostTensor, NamedTensors};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// The position of an entry in a `ParamSet` (and in every set aligned with it).
pub type ParamId = usize;

#[derive(Clone, Debug, Default)]
pub struct ParamSet {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, ParamId>,
}

impl ParamSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tensor` under `name`; names are unique.
    pub fn push(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<ParamId> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(Error::invalid(format!("parameter `{name}` is defined twice")));
        }
        let id = self.names.len();
        self.index.insert(name.clone(), id);
        self.names.push(name);
        self.tensors.push(tensor);
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The number of values in all tensors.
    pub fn count(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.index.get(name).copied()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.id(name).map(|i| &self.tensors[i])
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id]
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| s.as_str())
    }

    /// `(name, tensor)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(|s| s.as_str()).zip(&self.tensors)
    }

    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }

    /// Two distinct entries, both mutable (a layer's weight and bias gradients).
    pub fn pair_mut(&mut self, a: ParamId, b: ParamId) -> (&mut Tensor, &mut Tensor) {
        assert_ne!(a, b, "pair_mut of one entry");
        if a < b {
            let (lo, hi) = self.tensors.split_at_mut(b);
            (&mut lo[a], &mut hi[0])
        } else {
            let (lo, hi) = self.tensors.split_at_mut(a);
            (&mut hi[0], &mut lo[b])
        }
    }

    /// Replaces the tensor of `id`, which must keep its shape.
    pub fn set(&mut self, id: ParamId, t: Tensor) -> Result<()> {
        if t.shape() != self.tensors[id].shape() {
            return Err(Error::shape(
                "ParamSet::set",
                format!("`{}` has shape {:?}, got {:?}", self.names[id], self.tensors[id].shape(), t.shape()),
            ));
        }
        self.tensors[id] = t;
        Ok(())
    }

    /// The same names and shapes filled with zeros, on `device` (gradients, optimiser moments).
    pub fn zeros_like(&self, device: &Device) -> Result<ParamSet> {
        self.map(|_, t| device.zeros(t.shape()))
    }

    /// A set with the same names in the same order, each tensor given by `f(name, tensor)`.
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<ParamSet> {
        let tensors = self.iter().map(|(n, t)| f(n, t)).collect::<Result<Vec<_>>>()?;
        Ok(ParamSet { names: self.names.clone(), tensors, index: self.index.clone() })
    }

    /// Element-wise over several sets that hold the same names with the same shapes (in any order):
    /// the result has the first set's order, each tensor `f(name, [tensor of each set])`.
    pub fn zip(sets: &[&ParamSet], mut f: impl FnMut(&str, &[&Tensor]) -> Result<Tensor>) -> Result<ParamSet> {
        let first = sets.first().ok_or_else(|| Error::invalid("ParamSet::zip of no sets"))?;
        for (k, s) in sets.iter().enumerate().skip(1) {
            first.check_same_names(s, &format!("set {k}"))?;
        }
        first.map(|name, t| {
            let group: Vec<&Tensor> =
                std::iter::once(t).chain(sets[1..].iter().map(|s| s.get(name).unwrap())).collect();
            f(name, &group)
        })
    }

    /// Checks that `other` holds exactly these names with these shapes; `what` names it in errors.
    pub fn check_same_names(&self, other: &ParamSet, what: &str) -> Result<()> {
        for (name, t) in self.iter() {
            match other.get(name) {
                None => return Err(Error::invalid(format!("{what} has no `{name}`"))),
                Some(o) if o.shape() != t.shape() => {
                    return Err(Error::invalid(format!(
                        "{what}: `{name}` has shape {:?}, expected {:?}",
                        o.shape(),
                        t.shape()
                    )))
                }
                _ => {}
            }
        }
        if let Some(extra) = other.names().find(|n| self.id(n).is_none()) {
            return Err(Error::invalid(format!("{what} has `{extra}`, which the others lack")));
        }
        Ok(())
    }

    /// Sets every tensor to zero in place (gradients between steps).
    pub fn zero(&mut self) -> Result<()> {
        for t in &mut self.tensors {
            crate::ops::zero_(t)?;
        }
        Ok(())
    }

    /// Host copies of every tensor under its name.
    pub async fn to_host(&self, origin: &str) -> Result<NamedTensors> {
        let mut out = NamedTensors { origin: origin.to_string(), ..Default::default() };
        for (name, t) in self.iter() {
            out.insert(name, HostTensor::new(t.shape().to_vec(), t.to_vec().await?));
        }
        Ok(out)
    }

    /// Every host tensor on `device`, in name order.
    pub fn from_host(host: &NamedTensors, device: &Device) -> Result<ParamSet> {
        let mut set = ParamSet::new();
        for (name, t) in &host.tensors {
            set.push(name.clone(), device.weight(&t.data, &t.shape)?)?;
        }
        Ok(set)
    }

    /// Overwrites every tensor with the host tensor of the same name, which must have its shape;
    /// the ones taken are removed from `host`, so what is left there was not expected.
    pub fn load_from(&mut self, host: &mut NamedTensors) -> Result<()> {
        for i in 0..self.len() {
            let shape = self.tensors[i].shape().to_vec();
            let data = host.take(&self.names[i], &shape)?;
            let device = self.tensors[i].device();
            self.tensors[i] = device.weight(&data, &shape)?;
        }
        Ok(())
    }

    /// The set as a safetensors file (F32).
    pub async fn to_safetensors(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        self.to_host("ParamSet").await?.to_bytes(metadata)
    }

    /// A safetensors file's float tensors on `device`; `origin` names the file in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &str, device: &Device) -> Result<ParamSet> {
        Self::from_host(&NamedTensors::from_bytes(bytes, origin)?, device)
    }
}

impl std::ops::Index<ParamId> for ParamSet {
    type Output = Tensor;
    fn index(&self, id: ParamId) -> &Tensor {
        &self.tensors[id]
    }
}

impl std::ops::IndexMut<ParamId> for ParamSet {
    fn index_mut(&mut self, id: ParamId) -> &mut Tensor {
        &mut self.tensors[id]
    }
}
