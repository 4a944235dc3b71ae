//! The two small traits the controller logic is written against, and DMA buffers.
//!
//! - [`Registers`]: 32- and 64-bit reads and writes at a byte offset into the
//!   controller's register block (BAR0), and clearing Bus Master Enable in PCI
//!   configuration space. Implemented over a VFIO-mapped BAR and by the simulated
//!   controller. Never wider than 8 bytes: some controllers (QEMU's among them) reject
//!   wider MMIO.
//! - [`DmaAllocator`]: allocates memory the device can reach, returning [`DmaBuf`]s that
//!   know both their host address and their IOVA.
//!
//! A [`DmaBuf`] keeps its backing [`DmaRegion`] alive through an `Arc`, so memory is
//! never unmapped while any buffer carved from it exists — including buffers held by an
//! outstanding command.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Access to the controller's registers (BAR0, NVMe Base Specification 2.0, §3.1).
///
/// Offsets are in bytes and must be naturally aligned for the access width.
/// Implementations must perform exactly one access of the stated width per call: no
/// caching, no merging, no speculative reads.
pub trait Registers: Send + Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: u32) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: u32, value: u32);
    /// Reads the 64-bit register at `offset`. The default reads the low then the high
    /// half, for controllers without 64-bit access.
    fn read64(&self, offset: u32) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        hi << 32 | lo
    }
    /// Writes the 64-bit register at `offset`. The default writes the low then the high
    /// half.
    fn write64(&self, offset: u32, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    /// Stops the device from issuing DMA: clears Bus Master Enable (bit 2 of the PCI
    /// Command register, configuration space offset 04h; PCI Local Bus 3.0, §6.2.2) and
    /// checks that it reads back clear. The driver calls it when the controller fails
    /// without having been seen disabled (registers reading all ones, a disable that timed
    /// out), before it hands back any buffer, as Linux's `nvme_dev_disable` does through
    /// `pci_disable_device`.
    ///
    /// Errors: [`BusMasterError`] if configuration space cannot be reached or the bit does
    /// not clear; the buffers of unfinished commands are then kept (leaked), never handed
    /// back. The default implementation has no way to reach configuration space and always
    /// fails.
    fn disable_bus_master(&self) -> Result<(), BusMasterError> {
        Err(BusMasterError(
            "this register access has no way to reach PCI configuration space".into(),
        ))
    }
}

/// Bus Master Enable could not be cleared; the message says why (and names the device).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not clear Bus Master Enable: {0}")]
pub struct BusMasterError(pub String);

/// Interrupt vectors a thread can sleep on: the controller's MSI-X vectors (PCI Local Bus
/// 3.0, §6.8.2), each delivered to the host as a counter the way an eventfd is (VFIO's
/// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD`). An I/O completion queue
/// created with IEN = 1 and IV = `vector` (Create I/O Completion Queue, NVMe Base 2.0,
/// §5.4) signals that vector whenever the controller posts to it.
///
/// The driver's rule against lost wake-ups: the signal count is consumed by
/// [`Self::wait`] *before* the completion queue is read, so a completion posted after
/// that read signals again and the next wait returns at once.
pub trait InterruptVectors: Send + Sync + fmt::Debug {
    /// How many vectors there are (0..count); I/O queue `qid` uses vector `qid` when it is
    /// below this.
    fn count(&self) -> u16;
    /// Sleeps until `vector` has been signalled since the last call (returning at once if
    /// it already was) or `timeout` passes, and consumes the signals. Returns whether it
    /// was signalled; it may also return `false` early (a signal handler ran), and the
    /// caller then looks at its queue and waits again.
    ///
    /// Errors: the OS error of waiting (an eventfd that cannot be polled or read), or
    /// `InvalidInput` for a vector nobody can wait on.
    fn wait(&self, vector: u16, timeout: std::time::Duration) -> std::io::Result<bool>;
    /// Signals `vector` as if it had fired, so a thread asleep on it wakes. The driver does
    /// this for every I/O queue's vector when a reset ends and when the controller fails,
    /// which no interrupt announces.
    fn kick(&self, vector: u16);
    /// Has the host take `vector`'s interrupt on CPU `cpu`, so that a thread pinned there
    /// and asleep on it is woken without an inter-processor interrupt: what Linux's nvme
    /// driver gets from managed IRQ affinity (each queue's vector bound to the CPUs that
    /// submit on it).
    ///
    /// Errors: `Unsupported` (the default) where the vectors cannot be steered; otherwise
    /// the OS error of finding or setting the interrupt's affinity.
    fn steer(&self, vector: u16, cpu: usize) -> std::io::Result<()> {
        let _ = (vector, cpu);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "these interrupt vectors cannot be steered",
        ))
    }
}

/// A contiguous range of memory mapped for device access.
///
/// # Safety
///
/// Implementors promise that for as long as the region exists, `vaddr()..vaddr()+len()`
/// is valid, writable host memory that no Rust reference aliases except through
/// [`DmaBuf`]s carved from this region, and that the device reaches it at
/// `iova()..iova()+len()`. Dropping the region is where it is unmapped from the IOMMU and
/// freed.
pub unsafe trait DmaRegion: Send + Sync {
    /// Host virtual address of the first byte.
    fn vaddr(&self) -> NonNull<u8>;
    /// I/O virtual address of the first byte, as the device sees it.
    fn iova(&self) -> u64;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// The DMA domain (IOMMU container, or simulated controller) the IOVA is valid in;
    /// see [`new_domain_id`]. A queue refuses buffers from another domain.
    fn domain(&self) -> u64;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fresh, process-unique DMA domain identifier (never 0).
pub fn new_domain_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Allocates DMA memory.
pub trait DmaAllocator: Send + Sync {
    /// Allocates `len` bytes of zeroed memory, aligned to [`Self::page_size`] on the host
    /// and in IOVA space, contiguous in IOVA space. The buffer's window is exactly `len`
    /// bytes; its capacity is `len` rounded up to whole pages.
    ///
    /// Errors: [`DmaError::OutOfMemory`] when the allocator, the IOMMU's IOVA space or
    /// the locked-memory limit is exhausted; [`DmaError::Os`] for a failing syscall.
    fn allocate(&self, len: usize) -> Result<DmaBuf, DmaError>;

    /// The allocation granularity and alignment in bytes (at least 4096).
    fn page_size(&self) -> usize;

    /// The DMA domain of the memory this allocator hands out.
    fn domain(&self) -> u64;
}

/// Why a DMA allocation or buffer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// No memory (or IOVA space, or locked-memory allowance) is left for `len` bytes.
    #[error("cannot allocate {len} bytes of DMA memory: {reason}")]
    OutOfMemory {
        /// Requested length in bytes.
        len: usize,
        /// What ran out.
        reason: String,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// The operation, e.g. "mmap 2 MiB hugepage".
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A window outside the buffer was asked for.
    #[error("window {offset}+{len} bytes lies outside a {capacity}-byte buffer")]
    OutOfBounds {
        /// Requested offset in bytes.
        offset: usize,
        /// Requested length in bytes.
        len: usize,
        /// Buffer capacity in bytes.
        capacity: usize,
    },
}

/// An owned buffer of DMA memory: a window onto a slice of a [`DmaRegion`].
///
/// The buffer's *capacity* is the slice it owns; its *window* (offset and length within
/// the capacity) is the part a command transfers and the part [`DmaBuf::as_slice`]
/// shows. A fresh buffer's window is its whole capacity.
///
/// Ownership is exclusive: whoever holds the `DmaBuf` may read and write its bytes. An
/// I/O queue takes the buffer when a command is submitted and gives it back with the
/// completion, so memory the device may still touch cannot be freed or reused early.
pub struct DmaBuf {
    base: NonNull<u8>,
    base_iova: u64,
    capacity: usize,
    offset: usize,
    len: usize,
    domain: u64,
    region: Arc<dyn DmaRegion>,
}

// SAFETY: a DmaBuf owns its byte range exclusively (no other DmaBuf overlaps it; see
// `split_off`), and the region it points into is Send + Sync, so moving the buffer to
// another thread or sharing `&DmaBuf` (which only permits reads) is sound.
unsafe impl Send for DmaBuf {}
// SAFETY: see above; `&DmaBuf` only gives shared reads of bytes nobody else writes.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// A buffer covering the whole of `region`.
    pub fn from_region(region: Arc<dyn DmaRegion>) -> DmaBuf {
        DmaBuf {
            base: region.vaddr(),
            base_iova: region.iova(),
            capacity: region.len(),
            offset: 0,
            len: region.len(),
            domain: region.domain(),
            region,
        }
    }

    /// The DMA domain the buffer's IOVA is valid in.
    pub fn domain(&self) -> u64 {
        self.domain
    }

    /// Bytes in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this buffer owns (the largest possible window).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offset of the window from the start of the buffer, in bytes.
    pub fn window_offset(&self) -> usize {
        self.offset
    }

    /// IOVA of the first byte of the window.
    pub fn iova(&self) -> u64 {
        self.base_iova + self.offset as u64
    }

    /// Host address of the first byte of the window.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: offset <= capacity, so the result stays inside the region (or one past
        // its end for an empty window at the end).
        unsafe { self.base.as_ptr().add(self.offset) }
    }

    /// Sets the window to `len` bytes at `offset` from the start of the buffer.
    ///
    /// Errors: [`DmaError::OutOfBounds`] if the window does not fit in the capacity.
    pub fn set_window(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => {
                self.offset = offset;
                self.len = len;
                Ok(())
            }
            _ => Err(DmaError::OutOfBounds {
                offset,
                len,
                capacity: self.capacity,
            }),
        }
    }

    /// Resets the window to the whole buffer.
    pub fn reset_window(&mut self) {
        self.offset = 0;
        self.len = self.capacity;
    }

    /// The window's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the window lies within the region (checked by set_window/split_off), the
        // region is valid while `self.region` is alive, and this DmaBuf owns the range
        // exclusively, so no one writes it while this shared borrow lives.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The window's bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }

    /// Splits the buffer in two at `at` bytes from the start of its capacity: `self`
    /// keeps `[0, at)` and the returned buffer owns `[at, capacity)`. Both windows are
    /// reset to their whole capacity. The two share the region, which stays mapped until
    /// both are dropped.
    ///
    /// Errors: [`DmaError::OutOfBounds`] if `at > capacity`.
    pub fn split_off(&mut self, at: usize) -> Result<DmaBuf, DmaError> {
        if at > self.capacity {
            return Err(DmaError::OutOfBounds {
                offset: at,
                len: 0,
                capacity: self.capacity,
            });
        }
        let tail = DmaBuf {
            // SAFETY: at <= capacity keeps the pointer within (or one past) the region.
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(at)) },
            base_iova: self.base_iova + at as u64,
            capacity: self.capacity - at,
            offset: 0,
            len: self.capacity - at,
            domain: self.domain,
            region: Arc::clone(&self.region),
        };
        self.capacity = at;
        self.reset_window();
        Ok(tail)
    }

    /// A zero-length buffer that keeps this buffer's region mapped while it lives, leaving
    /// this buffer's window as it was (the empty tail: `split_off` at the capacity). For
    /// tables that must keep a region alive after the buffer that named it goes away
    /// (io_uring's registered buffers).
    pub fn region_keeper(&mut self) -> DmaBuf {
        let (offset, len) = (self.offset, self.len);
        let keep = self
            .split_off(self.capacity)
            .expect("splitting at the capacity is in bounds");
        self.set_window(offset, len)
            .expect("the window fitted before and the capacity is unchanged");
        keep
    }

    /// Splits the buffer into `count` buffers of `size` bytes each, in address order, and
    /// returns them; any remainder is dropped with `self`. Used to carve a pool of equal
    /// buffers from one allocation.
    ///
    /// Errors: [`DmaError::OutOfBounds`] if `size * count` exceeds the capacity.
    pub fn into_chunks(mut self, size: usize, count: usize) -> Result<Vec<DmaBuf>, DmaError> {
        let total = size.saturating_mul(count);
        if total > self.capacity {
            return Err(DmaError::OutOfBounds {
                offset: 0,
                len: total,
                capacity: self.capacity,
            });
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let rest = self.split_off(size)?;
            out.push(std::mem::replace(&mut self, rest));
        }
        Ok(out)
    }

    /// The host address and length in bytes of the whole region this buffer was carved
    /// from (for backends that register memory with the kernel, such as io_uring fixed
    /// buffers).
    pub fn region_span(&self) -> (usize, usize) {
        (self.region.vaddr().as_ptr() as usize, self.region.len())
    }

    /// Whether `other` was carved from the same region as `self`.
    pub fn same_region(&self, other: &DmaBuf) -> bool {
        Arc::ptr_eq(&self.region, &other.region)
    }
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Page-aligned, zeroed host memory from the global allocator, with synthetic IOVAs.
///
/// For host tests and the simulated controller, where no IOMMU is involved. The IOVA of a
/// region is chosen by the caller (see `sim::SimDma`), never equal to its host address,
/// so code that confuses the two fails.
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
    iova: u64,
    domain: u64,
}

impl HeapRegion {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two), reached by the
    /// (simulated) device at `iova`, in a DMA domain of its own.
    ///
    /// Errors: [`DmaError::OutOfMemory`] if the allocation fails or the layout is invalid.
    pub fn new(len: usize, align: usize, iova: u64) -> Result<HeapRegion, DmaError> {
        HeapRegion::in_domain(len, align, iova, new_domain_id())
    }

    /// As [`HeapRegion::new`], in DMA domain `domain`.
    ///
    /// Errors: [`DmaError::OutOfMemory`] if the allocation fails or the layout is invalid.
    pub fn in_domain(len: usize, align: usize, iova: u64, domain: u64) -> Result<HeapRegion, DmaError> {
        let oom = |reason: &str| DmaError::OutOfMemory {
            len,
            reason: reason.to_string(),
        };
        let layout = std::alloc::Layout::from_size_align(len.max(1), align).map_err(|_| oom("invalid layout"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| oom("heap exhausted"))?;
        Ok(HeapRegion {
            ptr,
            layout,
            iova,
            domain,
        })
    }
}

// SAFETY: the memory is a private heap allocation of `layout.size()` bytes, valid until
// Drop, and only reachable through this region.
unsafe impl DmaRegion for HeapRegion {
    fn vaddr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn iova(&self) -> u64 {
        self.iova
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
    fn domain(&self) -> u64 {
        self.domain
    }
}

// SAFETY: HeapRegion owns its allocation; the raw pointer is only an address.
unsafe impl Send for HeapRegion {}
// SAFETY: as above; all access goes through DmaBuf's ownership rules.
unsafe impl Sync for HeapRegion {}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(len: usize) -> DmaBuf {
        DmaBuf::from_region(Arc::new(HeapRegion::new(len, 4096, 0x10_0000).unwrap()))
    }

    #[test]
    fn the_keeper_holds_the_region_and_leaves_the_window_alone() {
        let mut b = DmaBuf::from_region(Arc::new(HeapRegion::new(8192, 4096, 0).unwrap()));
        b.set_window(512, 1024).unwrap();
        let keep = b.region_keeper();
        assert_eq!((b.window_offset(), b.len(), b.capacity()), (512, 1024, 8192));
        assert_eq!((keep.len(), keep.capacity()), (0, 0));
        assert!(keep.same_region(&b));
        assert_eq!(keep.region_span(), b.region_span());
        b.as_mut_slice().fill(3);
        drop(b);
        assert_eq!(keep.region_span().1, 8192); // the region is still there
    }

    #[test]
    fn windows_stay_inside_the_capacity() {
        let mut b = buf(8192);
        assert_eq!((b.len(), b.capacity(), b.iova()), (8192, 8192, 0x10_0000));
        b.set_window(100, 4000).unwrap();
        assert_eq!((b.len(), b.iova(), b.window_offset()), (4000, 0x10_0000 + 100, 100));
        b.as_mut_slice().fill(0xAB);
        assert!(b.set_window(8000, 193).is_err());
        assert!(b.set_window(usize::MAX, 2).is_err());
        b.reset_window();
        assert_eq!(b.as_slice()[99], 0);
        assert_eq!(b.as_slice()[100], 0xAB);
    }

    #[test]
    fn split_buffers_share_the_region_and_do_not_overlap() {
        let mut a = buf(3 * 4096);
        let b = a.split_off(4096).unwrap();
        assert!(a.same_region(&b));
        assert_eq!((a.capacity(), b.capacity()), (4096, 8192));
        assert_eq!(b.iova(), 0x10_0000 + 4096);
        assert!(a.split_off(4097).is_err());
        let chunks = b.into_chunks(2048, 4).unwrap();
        let iovas: Vec<u64> = chunks.iter().map(DmaBuf::iova).collect();
        assert_eq!(iovas, [0x101000, 0x101800, 0x102000, 0x102800]);
        assert!(buf(4096).into_chunks(4096, 2).is_err());
    }

    #[test]
    fn memory_outlives_the_first_owner() {
        let mut a = buf(8192);
        let mut b = a.split_off(4096).unwrap();
        drop(a);
        b.as_mut_slice().fill(1); // region is still alive through `b`
        assert!(b.as_slice().iter().all(|&x| x == 1));
    }
}
