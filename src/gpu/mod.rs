//! GPU device: adapter, device, queue, limits, a buffer pool, a pipeline cache keyed by entry point,
//! batched command recording and an async readback that works natively and in the browser.
//!
//! Work is recorded into one command encoder; uniform parameters of all dispatches of a batch live in
//! one arena buffer that is written once, right before the batch is submitted. A batch is submitted when
//! the arena is full, before an upload into a reused buffer, and before every readback.

mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
pub use pool::{GpuBuffer, MemoryStats};

/// The helpers every shader file shares, prepended to each (see `source`).
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// The WGSL that is compiled for a shader family: the prelude, then the family's file.
pub fn source(file: &str) -> String {
    format!("{PRELUDE}\n{file}")
}

/// Every WGSL file in `shaders/` but the prelude: file name = entry-point prefix = Rust op family.
pub const SHADERS: &[(&str, &str)] = &[
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("crossentropy", include_str!("../../shaders/crossentropy.wgsl")),
    ("dropout", include_str!("../../shaders/dropout.wgsl")),
    ("elementwise", include_str!("../../shaders/elementwise.wgsl")),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("llama", include_str!("../../shaders/llama.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("merge", include_str!("../../shaders/merge.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("prefix", include_str!("../../shaders/prefix.wgsl")),
    ("qmatmul", include_str!("../../shaders/qmatmul.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("scalearn", include_str!("../../shaders/scalearn.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
];

/// Uniform parameters of one dispatch occupy one slot of this many bytes in the arena.
const PARAM_SLOT: u64 = 256;
/// Dispatches recorded before a batch is submitted.
const MAX_BATCH: u64 = 256;

/// What `localtune info` reports about the adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
}

/// A handle to the GPU device; cheap to clone.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<Inner>,
}

struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    dispatches: u64,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: GpuInfo,
    limits: wgpu::Limits,
    arena: wgpu::Buffer,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<&'static str, Arc<Kernel>>>,
    batch: Mutex<Batch>,
    pub(crate) pool: Mutex<pool::Pool>,
    error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} / {})", self.inner.info.name, self.inner.info.backend)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gpu {
    /// Opens the default adapter (honouring WGPU_BACKEND, WGPU_ADAPTER_NAME and
    /// WGPU_POWER_PREF natively) with the adapter's own limits.
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = wgpu::util::initialize_adapter_from_env_or_default(&instance, None)
            .await
            .map_err(|e| Error::NoAdapter(format!("{e}. {}", no_adapter_hint())))?;
        Self::from_adapter(adapter).await
    }

    async fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("localtune"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("could not open a device on adapter `{}`: {e}", info.name)))?;

        // Validation errors and device loss are kept and returned as Err from the next sync point
        // instead of the default handler's panic.
        let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = lock(&slot);
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let slot = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut s = lock(&slot);
            if s.is_none() {
                *s = Some(format!("device lost ({reason:?}): {msg}"));
            }
        });

        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAM_SLOT * MAX_BATCH,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let gpu_info = GpuInfo {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        };
        if limits.min_uniform_buffer_offset_alignment as u64 > PARAM_SLOT {
            return Err(Error::Gpu(format!(
                "adapter `{}` needs uniform offsets aligned to {} bytes; localtune supports up to {PARAM_SLOT}",
                info.name, limits.min_uniform_buffer_offset_alignment
            )));
        }
        Ok(Gpu {
            inner: Arc::new(Inner {
                device,
                queue,
                info: gpu_info,
                limits,
                arena,
                modules: Mutex::new(HashMap::new()),
                kernels: Mutex::new(HashMap::new()),
                batch: Mutex::new(Batch { encoder: None, params: Vec::new(), dispatches: 0 }),
                pool: Mutex::new(pool::Pool::default()),
                error,
            }),
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.inner.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn memory(&self) -> MemoryStats {
        lock(&self.inner.pool).stats()
    }

    /// Resets the peak figures of `memory()` to the bytes live now.
    pub fn reset_peak(&self) {
        lock(&self.inner.pool).reset_peak();
    }

    /// Returns the first error the device reported, if any, and clears it.
    pub(crate) fn take_error(&self) -> Result<()> {
        match lock(&self.inner.error).take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Checks that a buffer of `bytes` may be created and bound as storage.
    pub(crate) fn check_size(&self, op: &'static str, bytes: u64) -> Result<()> {
        let l = &self.inner.limits;
        let max = l.max_buffer_size.min(l.max_storage_buffer_binding_size);
        if bytes > max {
            return Err(Error::Limit {
                op,
                msg: format!(
                    "needs a buffer of {bytes} bytes, over this adapter's limit of {max} bytes ({})",
                    self.inner.info.name
                ),
            });
        }
        Ok(())
    }

    /// A 2-D grid of workgroups covering `groups` workgroups (x first), for kernels that flatten
    /// `(wid.y * nwg.x + wid.x)`.
    pub(crate) fn grid(&self, op: &'static str, groups: u64) -> Result<[u32; 3]> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(Error::Limit { op, msg: format!("needs {groups} workgroups, over {max}×{max}") });
        }
        Ok([x as u32, y as u32, 1])
    }

    pub(crate) fn check_groups(&self, op: &'static str, groups: [u32; 3]) -> Result<()> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit { op, msg: format!("needs {groups:?} workgroups, over {max} per dimension") });
        }
        Ok(())
    }

    fn module(&self, family: &'static str) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.inner.modules);
        if let Some(m) = modules.get(family) {
            return Ok(m.clone());
        }
        let src = SHADERS
            .iter()
            .find(|(name, _)| *name == family)
            .map(|(_, src)| *src)
            .ok_or_else(|| Error::Gpu(format!("no shader file `{family}.wgsl`")))?;
        let m = self.inner.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(family),
            source: wgpu::ShaderSource::Wgsl(source(src).into()),
        });
        modules.insert(family, m.clone());
        Ok(m)
    }

    /// The pipeline for `entry` (its family is the prefix before the first `_`), built on first use
    /// with an explicit layout: binding 0 uniform, then `reads` read-only storage, then read-write.
    fn kernel(&self, entry: &'static str, reads: usize, writes: usize) -> Result<Arc<Kernel>> {
        if let Some(k) = lock(&self.inner.kernels).get(entry) {
            return Ok(k.clone());
        }
        let family = entry.split('_').next().unwrap_or(entry);
        let module = self.module(family)?;
        let device = &self.inner.device;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for i in 0..reads + writes {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: 1 + i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: i < reads },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        self.take_error()?;
        let k = Arc::new(Kernel { pipeline, layout });
        lock(&self.inner.kernels).insert(entry, k.clone());
        Ok(k)
    }

    /// Records one dispatch of `entry`. `params` is the uniform block (at most 256 bytes);
    /// `reads` and `writes` are bound in order after it.
    pub(crate) fn dispatch(
        &self,
        entry: &'static str,
        params: &[u8],
        reads: &[&wgpu::Buffer],
        writes: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if params.is_empty() || params.len() as u64 > PARAM_SLOT || !params.len().is_multiple_of(16) {
            return Err(Error::Gpu(format!(
                "{entry}: a uniform block of {} bytes (must be 16..={PARAM_SLOT}, a multiple of 16)",
                params.len()
            )));
        }
        self.check_groups(entry, groups)?;
        let kernel = self.kernel(entry, reads.len(), writes.len())?;
        let mut batch = lock(&self.inner.batch);
        if batch.dispatches == MAX_BATCH {
            self.submit_locked(&mut batch);
        }
        let offset = batch.dispatches * PARAM_SLOT;
        batch.params.resize(offset as usize, 0);
        batch.params.extend_from_slice(params);
        batch.dispatches += 1;

        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.inner.arena,
                offset,
                size: wgpu::BufferSize::new(params.len() as u64),
            }),
        }];
        for (i, b) in reads.iter().chain(writes.iter()).enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource: b.as_entire_binding() });
        }
        let bind_group = self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &kernel.layout,
            entries: &entries,
        });
        let device = &self.inner.device;
        let encoder = batch
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }

    /// Records a buffer-to-buffer copy.
    pub(crate) fn copy(&self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, bytes: u64) {
        let mut batch = lock(&self.inner.batch);
        let device = &self.inner.device;
        let encoder = batch
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Records a fill of `bytes` zeros.
    pub(crate) fn clear(&self, dst: &wgpu::Buffer, bytes: u64) {
        let mut batch = lock(&self.inner.batch);
        let device = &self.inner.device;
        let encoder = batch
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
        encoder.clear_buffer(dst, 0, Some(bytes));
    }

    fn submit_locked(&self, batch: &mut Batch) {
        if let Some(encoder) = batch.encoder.take() {
            if !batch.params.is_empty() {
                self.inner.queue.write_buffer(&self.inner.arena, 0, &batch.params);
            }
            self.inner.queue.submit(Some(encoder.finish()));
        }
        batch.params.clear();
        batch.dispatches = 0;
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        let mut batch = lock(&self.inner.batch);
        self.submit_locked(&mut batch);
    }

    /// Writes host bytes into a buffer. Recorded work is submitted first, so the write cannot
    /// overtake work that still reads a reused buffer.
    pub(crate) fn write(&self, dst: &wgpu::Buffer, bytes: &[u8]) {
        self.flush();
        self.inner.queue.write_buffer(dst, 0, bytes);
    }

    /// Reads `bytes` bytes of `src` back to the host, after all recorded work.
    pub async fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.take_error()?;
        let staging = self.staging(bytes.max(4).next_multiple_of(4));
        self.copy(src, 0, &staging, 0, bytes.next_multiple_of(4));
        self.flush();
        let (tx, rx) = futures::channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        let mapped = rx.await.map_err(|_| Error::Gpu("readback was cancelled".into()))?;
        self.take_error()?;
        mapped.map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let data = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        lock(&self.inner.pool).return_staging(staging);
        Ok(data)
    }

    /// A MAP_READ staging buffer of at least `bytes`, reused across readbacks.
    fn staging(&self, bytes: u64) -> wgpu::Buffer {
        let size = pool::size_class(bytes);
        if let Some(b) = lock(&self.inner.pool).take_staging(size) {
            return b;
        }
        lock(&self.inner.pool).count_allocation();
        self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Waits until the device has finished all submitted work (natively); a no-op in the browser,
    /// where a readback is the way to wait.
    pub fn synchronize(&self) -> Result<()> {
        self.flush();
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        self.take_error()
    }
}

fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "This browser offers no WebGPU adapter: enable WebGPU (chrome://flags/#enable-unsafe-webgpu) or use the CPU fallback."
    } else {
        "Install a Vulkan driver (on Debian/Ubuntu without a GPU: `apt-get install mesa-vulkan-drivers` for the \
         CPU driver lavapipe, then WGPU_BACKEND=vulkan), or use --device cpu."
    }
}
