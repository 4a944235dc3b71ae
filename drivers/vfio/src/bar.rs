//! A memory BAR mapped from the VFIO device fd: the NVMe controller's registers.
//!
//! [`MmioBar`] implements [`Registers`] with raw-pointer `read_volatile` /
//! `write_volatile` of exactly 4 or 8 bytes: no `&` reference to MMIO is ever created
//! (a reference would let the compiler insert reads the device did not ask for), and no
//! access is wider than 8 bytes. Offsets are checked on every access — a
//! `debug_assert!` names the problem in debug builds and a branch to a cold panic keeps
//! release builds from touching memory outside the mapping.
//!
//! The BAR holds the [`Device`] (and through it the group and container) in an `Arc`,
//! so the mapping and the VFIO fds stay valid for as long as the registers can be used.

use crate::config::PciConfig;
use crate::device::Device;
use crate::error::Error;
use crate::ioctl::RegionInfo;
use ironvme_nvme::hw::{BusMasterError, Registers};
use memmap2::{MmapOptions, MmapRaw};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;

/// A BAR of a VFIO device, memory-mapped.
pub struct MmioBar {
    window: Window,
    region: RegionInfo,
    device: Arc<Device>,
}

/// A mapping of device memory with checked, volatile 4- and 8-byte accesses.
struct Window {
    /// Shared only with [`BarRevoker`]s, weakly: the mapping lives as long as the window,
    /// or until a revoke running when the window drops ends.
    map: Arc<MmapRaw>,
    len: usize,
    index: u32,
}

impl fmt::Debug for MmioBar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioBar")
            .field("bdf", &self.device.bdf().to_string())
            .field("index", &self.window.index)
            .field("len", &self.window.len)
            .finish()
    }
}

/// How many bytes of `region` may be mmapped starting at its offset 0: the whole region
/// without a sparse-mmap capability, else the sparse area that starts at 0 (none: 0).
/// 0 if the region is not mmap-able at all.
pub fn mappable_prefix(region: &RegionInfo) -> u64 {
    if region.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return 0;
    }
    match &region.sparse_mmap {
        None => region.size,
        Some(areas) => areas
            .iter()
            .find(|a| a.start == 0)
            .map_or(0, |a| a.end.min(region.size)),
    }
}

impl MmioBar {
    /// Maps region `index` (a BAR) of `device`, or the part of it from offset 0 that may
    /// be mmapped, which must be at least `min_len` bytes.
    ///
    /// Errors: [`Error::DeviceOs`] if region info or mmap fails; [`Error::BarNotMappable`]
    /// if the region is not mmap-able or too small.
    pub fn map(device: Arc<Device>, index: u32, min_len: usize) -> Result<MmioBar, Error> {
        let (bdf, group) = (device.bdf(), device.group());
        let os = |source| Error::DeviceOs { bdf, group, source };
        let region = device.region_info(index).map_err(os)?;
        let mappable = mappable_prefix(&region);
        if mappable < min_len as u64 || mappable > isize::MAX as u64 {
            return Err(Error::BarNotMappable {
                bdf,
                flags: region.flags,
                size: region.size,
                mappable,
                needed: min_len as u64,
            });
        }
        let len = mappable as usize;
        let map = MmapOptions::new()
            .offset(region.offset)
            .len(len)
            .map_raw(device.file())
            .map_err(|e| os(crate::error::OsError::new("mmap BAR", device.path(), e)))?;
        tracing::debug!(%bdf, index, len, offset = region.offset, "BAR mapped");
        Ok(MmioBar {
            window: Window {
                map: Arc::new(map),
                len,
                index,
            },
            region,
            device,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.window.len
    }

    /// Whether nothing is mapped (never true for a successfully mapped BAR).
    pub fn is_empty(&self) -> bool {
        self.window.len == 0
    }

    /// The region index (0 for BAR0).
    pub fn index(&self) -> u32 {
        self.window.index
    }

    /// The region's info as VFIO reported it.
    pub fn region(&self) -> &RegionInfo {
        &self.region
    }

    /// The device this BAR belongs to.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// A handle that can later take this BAR's device memory away, for whoever must give
    /// the device back to the kernel while the registers are still in use (a VFIO request
    /// interrupt, [`crate::notify`]). It does not keep the mapping alive.
    pub fn revoker(&self) -> BarRevoker {
        BarRevoker {
            map: Arc::downgrade(&self.window.map),
            index: self.window.index,
            done: AtomicBool::new(false),
        }
    }
}

/// Takes a BAR's device memory away from the process while its [`MmioBar`] may still be
/// read and written ([`MmioBar::revoker`]).
#[derive(Debug)]
pub struct BarRevoker {
    map: Weak<MmapRaw>,
    index: u32,
    done: AtomicBool,
}

impl BarRevoker {
    /// Replaces the BAR's mapping, in one step (`mremap` with `MREMAP_FIXED`), by private
    /// anonymous memory filled with 0xFF: the mapping no longer holds the VFIO device
    /// file, every register then reads all ones — what the driver already takes for a
    /// device that is gone — and writes land in that memory. Never unmapped in between, so
    /// no access faults and none reads 0 (CSTS.RDY = 0 would look like a controller reset).
    ///
    /// Returns false when there was nothing to do: the [`MmioBar`] was dropped (its
    /// mapping with it) or this revoker ran before.
    ///
    /// Errors: `mmap` or `mremap` failing (ENOMEM; EINVAL if the mapping does not start
    /// on a page). The BAR is then still mapped.
    pub fn revoke(&self) -> io::Result<bool> {
        let Some(map) = self.map.upgrade() else {
            return Ok(false);
        };
        if self.done.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        // memmap2 maps VFIO's page-aligned region offsets with no adjustment, so `at` is
        // where the mapping starts (else mremap fails with EINVAL); the kernel rounds
        // `len` up to whole pages in both calls.
        let (at, len) = (map.as_mut_ptr(), map.len());
        let undo = |e: io::Error| {
            self.done.store(false, Ordering::Release);
            e
        };
        // SAFETY: a fresh private anonymous mapping the kernel places; no other pointer to
        // it exists.
        let fresh = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if fresh == libc::MAP_FAILED {
            return Err(undo(io::Error::last_os_error()));
        }
        // SAFETY: `fresh` is the len-byte mapping just made, used by nothing else.
        unsafe { std::ptr::write_bytes(fresh.cast::<u8>(), 0xFF, len) };
        // MREMAP_FIXED replaces the BAR with `fresh`'s pages in one step under the
        // process's mmap lock, so concurrent accesses through `Window::reg` see the BAR or
        // the 0xFF page, never a hole. The MmapRaw later unmaps `at..at + len` as before,
        // which is then this anonymous memory; `fresh`'s old address is never used again.
        // SAFETY: `at..at + len` is exactly the BAR mapping, kept mapped by `map` (the
        // upgraded Arc) for this call, and `fresh` is a mapping only this function uses.
        let moved = unsafe {
            libc::mremap(
                fresh,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                at.cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: the move failed, so `fresh` is still our own len-byte mapping.
            unsafe { libc::munmap(fresh, len) };
            return Err(undo(e));
        }
        tracing::debug!(index = self.index, len, "BAR mapping replaced by all-ones memory");
        Ok(true)
    }
}

impl Window {
    /// A pointer to the `T`-sized register at `offset`, after checking that it lies
    /// inside the mapping and is naturally aligned.
    #[inline(always)]
    fn reg<T>(&self, offset: u32) -> *mut T {
        let width = size_of::<T>();
        let off = offset as usize;
        debug_assert!(
            off % width == 0 && off + width <= self.len,
            "BAR{} access of {width} bytes at {off:#x} outside the {:#x}-byte mapping or unaligned",
            self.index,
            self.len
        );
        if off.checked_add(width).is_none_or(|end| end > self.len) || off % width != 0 {
            bad_offset(self.index, off, width, self.len);
        }
        self.map.as_mut_ptr().wrapping_add(off).cast::<T>()
    }
}

#[cold]
#[inline(never)]
fn bad_offset(index: u32, off: usize, width: usize, len: usize) -> ! {
    panic!("BAR{index}: {width}-byte register access at {off:#x} is outside the {len:#x}-byte mapping or unaligned")
}

impl Registers for MmioBar {
    fn read32(&self, offset: u32) -> u32 {
        self.window.read32(offset)
    }

    fn write32(&self, offset: u32, value: u32) {
        self.window.write32(offset, value)
    }

    fn read64(&self, offset: u32) -> u64 {
        self.window.read64(offset)
    }

    fn write64(&self, offset: u32, value: u64) {
        self.window.write64(offset, value)
    }

    /// Clears Bus Master Enable through the device's VFIO config region
    /// ([`PciConfig::disable_bus_master`]).
    fn disable_bus_master(&self) -> Result<(), BusMasterError> {
        let bdf = self.device.bdf();
        PciConfig::new(Arc::clone(&self.device))
            .and_then(|config| config.disable_bus_master())
            .map_err(|e| BusMasterError(format!("{bdf}: {e}")))
    }
}

impl Window {
    #[inline]
    fn read32(&self, offset: u32) -> u32 {
        let p = self.reg::<u32>(offset);
        // SAFETY: `reg` checked that the 4 bytes lie inside the live, device-backed
        // mapping and are 4-byte aligned; volatile, so exactly one 32-bit load.
        unsafe { p.read_volatile() }
    }

    #[inline]
    fn write32(&self, offset: u32, value: u32) {
        let p = self.reg::<u32>(offset);
        // SAFETY: as in read32; one 32-bit store to device memory, no Rust reference.
        unsafe { p.write_volatile(value) }
    }

    #[inline]
    fn read64(&self, offset: u32) -> u64 {
        let p = self.reg::<u64>(offset);
        // SAFETY: `reg` checked that the 8 bytes lie inside the mapping and are 8-byte
        // aligned; one 64-bit load (x86-64: a single MOV), which NVMe controllers accept
        // for CAP, ASQ and ACQ.
        unsafe { p.read_volatile() }
    }

    #[inline]
    fn write64(&self, offset: u32, value: u64) {
        let p = self.reg::<u64>(offset);
        // SAFETY: as in read64; one 64-bit store.
        unsafe { p.write_volatile(value) }
    }
}

#[cfg(test)]
// Lists of IOVA ranges or areas with a single element are the point of several tests.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn region(flags: u32, size: u64, sparse: Option<Vec<std::ops::Range<u64>>>) -> RegionInfo {
        RegionInfo {
            index: 0,
            flags,
            size,
            offset: 0,
            sparse_mmap: sparse,
        }
    }

    /// A window over 16 KiB of anonymous memory standing in for a BAR.
    fn window() -> Window {
        let map = MmapRaw::from(MmapOptions::new().len(0x4000).map_anon().unwrap());
        Window {
            map: Arc::new(map),
            len: 0x4000,
            index: 0,
        }
    }

    #[test]
    fn accesses_round_trip_at_their_width() {
        let w = window();
        w.write64(0x28, 0x1122_3344_5566_7788);
        assert_eq!(w.read64(0x28), 0x1122_3344_5566_7788);
        assert_eq!(
            (w.read32(0x28), w.read32(0x2c)),
            (0x5566_7788, 0x1122_3344),
            "little-endian halves"
        );
        w.write32(0x3ffc, 0xdead_beef);
        assert_eq!(w.read32(0x3ffc), 0xdead_beef);
        assert_eq!(w.read64(0x3ff8), 0xdead_beef_0000_0000);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn an_access_past_the_end_panics() {
        let _ = window().read32(0x4000);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_wide_access_straddling_the_end_panics() {
        window().write64(0x3ffc, 0);
    }

    #[test]
    #[should_panic(expected = "unaligned")]
    fn an_unaligned_access_panics() {
        let _ = window().read64(0x1004);
    }

    #[test]
    fn a_revoked_window_reads_all_ones_and_still_takes_writes() {
        let w = window();
        w.write32(0x1c, 1);
        let revoker = BarRevoker {
            map: Arc::downgrade(&w.map),
            index: 0,
            done: AtomicBool::new(false),
        };
        assert!(revoker.revoke().unwrap());
        assert_eq!((w.read32(0x1c), w.read64(0x3ff8)), (u32::MAX, u64::MAX));
        w.write32(0x1000, 7);
        assert_eq!(w.read32(0x1000), 7);
        assert!(!revoker.revoke().unwrap(), "a second revoke has nothing to do");
        drop(w);
        let late = BarRevoker {
            map: revoker.map.clone(),
            index: 0,
            done: AtomicBool::new(false),
        };
        assert!(!late.revoke().unwrap(), "nothing to revoke once the BAR is unmapped");
    }

    #[test]
    fn a_revoke_under_concurrent_reads_never_shows_anything_but_the_old_value_or_all_ones() {
        let w = Arc::new(window());
        w.write32(0x1c, 1); // CSTS.RDY = 1
        let revoker = BarRevoker {
            map: Arc::downgrade(&w.map),
            index: 0,
            done: AtomicBool::new(false),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (w, stop) = (Arc::clone(&w), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut seen = std::collections::BTreeSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.insert(w.read32(0x1c));
                    }
                    seen.insert(w.read32(0x1c));
                    seen
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(revoker.revoke().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let seen = r.join().unwrap();
            assert!(seen.iter().all(|&v| v == 1 || v == u32::MAX), "{seen:?}");
            assert!(seen.contains(&u32::MAX), "the reader saw the revoke: {seen:?}");
        }
    }

    #[test]
    fn mappable_prefix_follows_flags_and_sparse_areas() {
        let mmap = VFIO_REGION_INFO_FLAG_MMAP | 3;
        assert_eq!(mappable_prefix(&region(3, 0x4000, None)), 0, "not mmap-able");
        assert_eq!(mappable_prefix(&region(mmap, 0x4000, None)), 0x4000);
        // MSI-X table at 0x2000 excluded by the kernel.
        assert_eq!(
            mappable_prefix(&region(mmap, 0x4000, Some(vec![0..0x2000, 0x3000..0x4000]))),
            0x2000
        );
        assert_eq!(mappable_prefix(&region(mmap, 0x4000, Some(vec![0x1000..0x4000]))), 0);
        assert_eq!(mappable_prefix(&region(mmap, 0x4000, Some(vec![0..0x8000]))), 0x4000);
    }
}
