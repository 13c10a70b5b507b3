//! Buffer pool: dropped activation and gradient buffers go back to a free list keyed by size class,
//! so a training step that repeats the shapes of the previous one allocates nothing.
//! Weights are allocated at their exact size and are not pooled.

use std::collections::HashMap;
use std::sync::Arc;

use super::{lock, Gpu, Inner};
use crate::error::Result;

/// Bytes held by the device, as the pool sees them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MemoryStats {
    /// Bytes in buffers handed out and not yet dropped (weights included).
    pub live_bytes: u64,
    /// Largest `live_bytes` since the last reset.
    pub peak_bytes: u64,
    /// Of the live bytes, those in exact-size (weight) buffers.
    pub weight_bytes: u64,
    /// Bytes kept in the free lists for reuse.
    pub cached_bytes: u64,
    /// Buffers created since the device was opened, readback staging included (reuse does not count).
    pub allocations: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    staging: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: MemoryStats,
}

impl Pool {
    pub(crate) fn stats(&self) -> MemoryStats {
        self.stats
    }
    pub(crate) fn reset_peak(&mut self) {
        self.stats.peak_bytes = self.stats.live_bytes;
    }
    pub(crate) fn take_staging(&mut self, size: u64) -> Option<wgpu::Buffer> {
        self.staging.get_mut(&size).and_then(|v| v.pop())
    }
    pub(crate) fn return_staging(&mut self, b: wgpu::Buffer) {
        self.staging.entry(b.size()).or_default().push(b);
    }
    pub(crate) fn count_allocation(&mut self) {
        self.stats.allocations += 1;
    }
}

/// The size class of a pooled request: at least 256 bytes, then four classes per power of two
/// (at most 25% slack).
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let top = 63 - bytes.leading_zeros() as u64; // floor(log2)
    let step = 1u64 << top.saturating_sub(2);
    bytes.div_ceil(step) * step
}

/// A storage buffer owned by a tensor. Pooled buffers return to the pool when dropped.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    pooled: bool,
    owner: Arc<Inner>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
    /// Allocated bytes (at least the requested size).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Whether the buffer returns to the pool when dropped (activations) or is exact-size (weights).
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }
    /// The device that owns this buffer.
    pub fn gpu(&self) -> Gpu {
        Gpu { inner: self.owner.clone() }
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let mut pool = lock(&self.owner.pool);
        pool.stats.live_bytes -= self.size;
        if self.pooled {
            pool.stats.cached_bytes += self.size;
            pool.free.entry(self.size).or_default().push(buffer);
        } else {
            // Dropping the handle (not destroy()) lets recorded but unsubmitted work still use it.
            pool.stats.weight_bytes -= self.size;
            drop(buffer);
        }
    }
}

impl Gpu {
    /// A storage buffer of at least `bytes` bytes with undefined contents, from the pool when possible.
    pub(crate) fn alloc(&self, op: &'static str, bytes: u64) -> Result<GpuBuffer> {
        self.alloc_inner(op, bytes, true)
    }

    /// An exact-size storage buffer for long-lived data (weights), not pooled.
    pub(crate) fn alloc_exact(&self, op: &'static str, bytes: u64) -> Result<GpuBuffer> {
        self.alloc_inner(op, bytes, false)
    }

    fn alloc_inner(&self, op: &'static str, bytes: u64, pooled: bool) -> Result<GpuBuffer> {
        let size = if pooled { size_class(bytes) } else { bytes.max(4).next_multiple_of(4) };
        self.check_size(op, size)?;
        let mut pool = lock(&self.inner.pool);
        let reused = if pooled { pool.free.get_mut(&size).and_then(|v| v.pop()) } else { None };
        let buffer = match reused {
            Some(b) => {
                pool.stats.cached_bytes -= size;
                b
            }
            None => {
                pool.stats.allocations += 1;
                self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(op),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        pool.stats.live_bytes += size;
        if !pooled {
            pool.stats.weight_bytes += size;
        }
        pool.stats.peak_bytes = pool.stats.peak_bytes.max(pool.stats.live_bytes);
        Ok(GpuBuffer { buffer: Some(buffer), size, pooled, owner: self.inner.clone() })
    }

    /// Drops every cached free buffer.
    pub fn trim(&self) {
        let mut pool = lock(&self.inner.pool);
        // Handles are dropped, not destroyed: recorded work may still use a freed buffer.
        pool.free.clear();
        pool.staging.clear();
        pool.stats.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_bound_the_slack() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 320);
        for bytes in [1000u64, 4096, 4097, 123_457, 46_881_792] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c as f64) <= bytes as f64 * 1.25 + 1.0, "{bytes} -> {c}");
        }
    }
}
