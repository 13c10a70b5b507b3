//! Tensors and devices. A tensor is a shape plus storage on one device; the storage is shared
//! (cheap clones), and the ops in `crate::ops` take tensors on the same device.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer};

/// Where tensors live and ops run.
#[derive(Clone, Debug)]
pub enum Device {
    /// Plain Rust on the host: the reference implementation and the fallback.
    Cpu,
    /// wgpu: Vulkan / Metal / DX12 natively, WebGPU in the browser.
    Gpu(Gpu),
}

impl Device {
    /// A GPU device on the default adapter.
    pub async fn gpu() -> Result<Device> {
        Ok(Device::Gpu(Gpu::new().await?))
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// A short human description: "cpu (2 threads)" or "gpu: llvmpipe (Vulkan, Cpu)".
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => match crate::cpu::threads() {
                1 => "cpu (1 thread)".to_string(),
                n => format!("cpu ({n} threads)"),
            },
            Device::Gpu(g) => {
                let i = g.info();
                let name = if i.name.is_empty() { "unnamed adapter" } else { &i.name };
                format!("gpu: {name} ({}, {})", i.backend, i.device_type)
            }
        }
    }

    /// Same device (the same GPU handle, or both CPU).
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(&a.inner, &b.inner),
            _ => false,
        }
    }

    /// An f32 tensor holding `data`, for activations and inputs (pooled on the GPU).
    pub fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.upload(data, shape, true)
    }

    /// An f32 tensor taking `data` (moved, not copied, on the CPU device).
    pub fn tensor_owned(&self, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        match self {
            Device::Cpu => {
                check_len("tensor", data.len(), shape)?;
                Ok(Tensor { shape: shape.to_vec(), dtype: DType::F32, storage: Storage::F32(Arc::new(data)) })
            }
            Device::Gpu(_) => self.upload(&data, shape, true),
        }
    }

    /// Whether an f32 tensor of `values` fits in one buffer a kernel can bind on this device.
    pub fn fits(&self, values: usize) -> bool {
        match self {
            Device::Cpu => true,
            Device::Gpu(g) => {
                let l = g.limits();
                (values as u64) * 4 <= l.max_buffer_size.min(l.max_storage_buffer_binding_size)
            }
        }
    }

    /// An f32 tensor for long-lived data such as weights (exact-size buffer on the GPU).
    pub fn weight(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.upload(data, shape, false)
    }

    fn upload(&self, data: &[f32], shape: &[usize], pooled: bool) -> Result<Tensor> {
        check_len("tensor", data.len(), shape)?;
        let storage = match self {
            Device::Cpu => Storage::F32(Arc::new(data.to_vec())),
            Device::Gpu(g) => {
                let bytes = (data.len() * 4) as u64;
                let buf = if pooled { g.alloc("upload", bytes)? } else { g.alloc_exact("upload", bytes)? };
                g.write(buf.raw(), bytemuck::cast_slice(data));
                Storage::Gpu(Arc::new(buf))
            }
        };
        Ok(Tensor { shape: shape.to_vec(), dtype: DType::F32, storage })
    }

    /// A u32 tensor (token ids, labels).
    pub fn tensor_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_len("tensor_u32", data.len(), shape)?;
        let storage = match self {
            Device::Cpu => Storage::U32(Arc::new(data.to_vec())),
            Device::Gpu(g) => {
                let buf = g.alloc("upload", (data.len() * 4) as u64)?;
                g.write(buf.raw(), bytemuck::cast_slice(data));
                Storage::Gpu(Arc::new(buf))
            }
        };
        Ok(Tensor { shape: shape.to_vec(), dtype: DType::U32, storage })
    }

    /// A zero-filled f32 tensor.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.uninit("zeros", shape)?;
        if let Storage::Gpu(b) = &t.storage {
            let g = t.gpu();
            g.clear(b.raw(), b.size());
        }
        Ok(t)
    }

    /// An f32 tensor whose contents are about to be overwritten (zeros on the CPU).
    pub(crate) fn uninit(&self, op: &'static str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Err(Error::shape(op, format!("zero-sized tensor {shape:?}")));
        }
        let storage = match self {
            Device::Cpu => Storage::F32(Arc::new(vec![0.0; n])),
            Device::Gpu(g) => Storage::Gpu(Arc::new(g.alloc(op, (n * 4) as u64)?)),
        };
        Ok(Tensor { shape: shape.to_vec(), dtype: DType::F32, storage })
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::shape(op, format!("{len} values do not fill shape {shape:?} ({n} values)")));
    }
    if n == 0 {
        return Err(Error::shape(op, format!("zero-sized tensor {shape:?}")));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

#[derive(Clone)]
pub(crate) enum Storage {
    F32(Arc<Vec<f32>>),
    U32(Arc<Vec<u32>>),
    Gpu(Arc<GpuBuffer>),
}

/// A dense row-major tensor of f32 (or u32 for ids and labels).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dev = if matches!(self.storage, Storage::Gpu(_)) { "gpu" } else { "cpu" };
        write!(f, "Tensor({:?}, {:?}, {dev})", self.shape, self.dtype)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Gpu(_) => Device::Gpu(self.gpu()),
            _ => Device::Cpu,
        }
    }
    pub fn is_gpu(&self) -> bool {
        matches!(self.storage, Storage::Gpu(_))
    }

    pub(crate) fn gpu(&self) -> Gpu {
        match &self.storage {
            Storage::Gpu(b) => b.gpu(),
            _ => panic!("gpu() on a CPU tensor"),
        }
    }

    /// The same storage under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} cannot become {shape:?}", self.shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, storage: self.storage.clone() })
    }

    /// Gives this tensor another shape with as many elements, in place (no copy, no alias).
    pub fn set_shape(&mut self, shape: &[usize]) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape("set_shape", format!("{:?} cannot become {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// The values as f32 (u32 tensors are converted).
    pub async fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::F32(v) => Ok(v.as_ref().clone()),
            Storage::U32(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            Storage::Gpu(b) => {
                let bytes = self.gpu().read(b.raw(), (self.numel() * 4) as u64).await?;
                Ok(match self.dtype {
                    DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
                    DType::U32 => {
                        bytemuck::pod_collect_to_vec::<u8, u32>(&bytes).into_iter().map(|x| x as f32).collect()
                    }
                })
            }
        }
    }

    /// The values of a u32 tensor.
    pub async fn to_vec_u32(&self) -> Result<Vec<u32>> {
        match &self.storage {
            Storage::U32(v) => Ok(v.as_ref().clone()),
            Storage::F32(_) => Err(Error::shape("to_vec_u32", "tensor is f32")),
            Storage::Gpu(b) => {
                if self.dtype != DType::U32 {
                    return Err(Error::shape("to_vec_u32", "tensor is f32"));
                }
                let bytes = self.gpu().read(b.raw(), (self.numel() * 4) as u64).await?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
        }
    }

    /// Blocking `to_vec` for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_blocking(&self) -> Result<Vec<f32>> {
        futures::executor::block_on(self.to_vec())
    }

    /// A copy on `device`.
    pub async fn to_device(&self, device: &Device) -> Result<Tensor> {
        match self.dtype {
            DType::F32 => device.tensor(&self.to_vec().await?, &self.shape),
            DType::U32 => device.tensor_u32(&self.to_vec_u32().await?, &self.shape),
        }
    }

    // --- CPU access for the ops layer ---

    pub(crate) fn cpu_f32(&self) -> &[f32] {
        match &self.storage {
            Storage::F32(v) => v,
            _ => panic!("cpu_f32 on {self:?}"),
        }
    }
    pub(crate) fn cpu_u32(&self) -> &[u32] {
        match &self.storage {
            Storage::U32(v) => v,
            _ => panic!("cpu_u32 on {self:?}"),
        }
    }
    /// Mutable CPU data; copies first if the storage is shared (copy-on-write).
    pub(crate) fn cpu_f32_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::F32(v) => Arc::make_mut(v).as_mut_slice(),
            _ => panic!("cpu_f32_mut on a non-f32-CPU tensor"),
        }
    }
    /// A copy with storage of its own (on the same device, without a host round trip).
    pub fn duplicate(&self) -> Result<Tensor> {
        let mut t = self.clone();
        t.make_unique()?;
        if let Storage::F32(v) = &mut t.storage {
            Arc::make_mut(v);
        }
        Ok(t)
    }

    /// Before writing into a GPU tensor in place: if its buffer is shared with another tensor, give
    /// this one a private copy first. Tensors thus have value semantics on both devices (the CPU side
    /// gets the same from `Arc::make_mut`).
    pub(crate) fn make_unique(&mut self) -> Result<()> {
        if let Storage::Gpu(b) = &self.storage {
            if Arc::strong_count(b) > 1 {
                let g = b.gpu();
                let bytes = (self.numel() * 4) as u64;
                let copy = if b.is_pooled() { g.alloc("copy", bytes)? } else { g.alloc_exact("copy", bytes)? };
                g.copy(b.raw(), 0, copy.raw(), 0, bytes);
                self.storage = Storage::Gpu(Arc::new(copy));
            }
        }
        Ok(())
    }

    pub(crate) fn buf(&self) -> &wgpu::Buffer {
        match &self.storage {
            Storage::Gpu(b) => b.raw(),
            _ => panic!("buf() on a CPU tensor"),
        }
    }
}
