//! The IOVA allocator: hands out I/O virtual address ranges inside the ranges the IOMMU
//! can map.
//!
//! Pure bookkeeping, no system calls. Free space is a set of disjoint, coalesced extents
//! (`start → end`, half-open) in a `BTreeMap`; allocation is first fit from the lowest
//! address with the requested alignment; freeing merges with the neighbours. Everything
//! is in units of a granule (the smallest IOMMU page, 4 KiB on x86) and IOVA 0 is never
//! handed out: the first granule is always excluded, because a controller told address
//! 0 (e.g. by an unvalidated Doorbell Buffer Config) would DMA there.
//!
//! The IOMMU reports its valid ranges through `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`
//! (on x86 the holes are the MSI window 0xfee00000..0xfeefffff and anything above the
//! IOMMU's address width). When the capability is absent the allocator uses
//! [`DEFAULT_IOVA_RANGE`]: 4 KiB up to 2^39, the smallest address width of Intel
//! VT-d implementations (and QEMU's intel-iommu default).

use std::collections::BTreeMap;
use std::ops::Range;

/// The IOVA range assumed when the kernel does not report any: [4 KiB, 2^39).
pub const DEFAULT_IOVA_RANGE: Range<u64> = 0x1000..1 << 39;

/// Why an IOVA range could not be handed out or taken back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IovaError {
    /// The granule is not a power of two of at least 4096 bytes.
    #[error("IOVA granule {0:#x} is not a power of two >= 4096")]
    BadGranule(u64),
    /// None of the IOMMU's ranges holds a single granule above address 0.
    #[error("the IOMMU reports no usable IOVA range (ranges {0:x?})")]
    NoUsableRange(Vec<Range<u64>>),
    /// A zero length, an alignment that is not a power of two, or a length that
    /// overflows when rounded up to the granule.
    #[error("invalid IOVA request: {len} bytes aligned to {align:#x}")]
    InvalidRequest {
        /// Requested length in bytes.
        len: u64,
        /// Requested alignment in bytes.
        align: u64,
    },
    /// No free extent is large enough.
    #[error(
        "IOVA space exhausted: no free range of {len} bytes aligned to {align:#x} ({free} bytes free, largest free extent {largest} bytes)"
    )]
    Exhausted {
        /// Requested length in bytes (rounded to the granule).
        len: u64,
        /// Requested alignment in bytes.
        align: u64,
        /// Total free bytes.
        free: u64,
        /// Largest free extent in bytes.
        largest: u64,
    },
    /// The range given back was not allocated (double free, or never handed out).
    #[error("IOVA range {iova:#x}+{len:#x} was not allocated")]
    NotAllocated {
        /// Start of the range.
        iova: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// An allocator of IOVA ranges inside a set of valid ranges. See the module docs.
#[derive(Clone, Debug)]
pub struct IovaAllocator {
    /// Free extents, `start → end` (half-open), disjoint and never adjacent.
    free: BTreeMap<u64, u64>,
    /// The usable ranges (clipped, granule-aligned, disjoint, sorted).
    ranges: Vec<Range<u64>>,
    granule: u64,
    total: u64,
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

impl IovaAllocator {
    /// An allocator over `ranges` (half-open, any order, may overlap) in units of
    /// `granule` bytes. Each range is shrunk to whole granules and the first granule
    /// (containing IOVA 0) is removed.
    ///
    /// Errors: [`IovaError::BadGranule`]; [`IovaError::NoUsableRange`] if nothing is left.
    pub fn new(ranges: &[Range<u64>], granule: u64) -> Result<IovaAllocator, IovaError> {
        if !granule.is_power_of_two() || granule < 4096 {
            return Err(IovaError::BadGranule(granule));
        }
        let mut clipped: Vec<Range<u64>> = ranges
            .iter()
            .filter_map(|r| {
                let start = align_up(r.start.max(granule), granule)?;
                let end = align_down(r.end, granule);
                (start < end).then_some(start..end)
            })
            .collect();
        clipped.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(clipped.len());
        for r in clipped {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        if merged.is_empty() {
            return Err(IovaError::NoUsableRange(ranges.to_vec()));
        }
        let free = merged.iter().map(|r| (r.start, r.end)).collect();
        let total = merged.iter().map(|r| r.end - r.start).sum();
        Ok(IovaAllocator {
            free,
            ranges: merged,
            granule,
            total,
        })
    }

    /// The usable ranges after clipping, sorted.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// The allocation unit in bytes.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Bytes not allocated.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Bytes allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.total - self.free_bytes()
    }

    /// Rounds `len` up to the granule. `None` on overflow.
    pub fn round(&self, len: u64) -> Option<u64> {
        align_up(len, self.granule)
    }

    /// Allocates `len` bytes (rounded up to the granule) at an address aligned to
    /// `align` (a power of two; at least the granule is used). Returns the IOVA, never 0.
    ///
    /// Errors: [`IovaError::InvalidRequest`] for `len == 0` or a bad alignment;
    /// [`IovaError::Exhausted`] when no free extent fits.
    pub fn allocate(&mut self, len: u64, align: u64) -> Result<u64, IovaError> {
        let invalid = IovaError::InvalidRequest { len, align };
        if len == 0 || !align.is_power_of_two() {
            return Err(invalid);
        }
        let align = align.max(self.granule);
        let size = self.round(len).ok_or(invalid)?;
        let found = self.free.iter().find_map(|(&start, &end)| {
            let at = align_up(start, align)?;
            let stop = at.checked_add(size)?;
            (stop <= end).then_some((start, end, at, stop))
        });
        let Some((start, end, at, stop)) = found else {
            let largest = self.free.iter().map(|(s, e)| e - s).max().unwrap_or(0);
            return Err(IovaError::Exhausted {
                len: size,
                align,
                free: self.free_bytes(),
                largest,
            });
        };
        self.free.remove(&start);
        if start < at {
            self.free.insert(start, at);
        }
        if stop < end {
            self.free.insert(stop, end);
        }
        debug_assert!(at != 0 && at % align == 0);
        Ok(at)
    }

    /// Gives back `len` bytes (rounded up to the granule) at `iova`, as returned by
    /// [`Self::allocate`] with the same `len`. Neighbouring free extents merge.
    ///
    /// Errors: [`IovaError::NotAllocated`] if any part of the range is already free,
    /// lies outside the usable ranges, or is not granule-aligned (nothing is changed).
    pub fn free(&mut self, iova: u64, len: u64) -> Result<(), IovaError> {
        let not = IovaError::NotAllocated { iova, len };
        let size = self.round(len).ok_or(not.clone())?;
        let end = iova.checked_add(size).ok_or(not.clone())?;
        if len == 0 || iova % self.granule != 0 || !self.ranges.iter().any(|r| r.start <= iova && end <= r.end) {
            return Err(not);
        }
        // The free extent starting closest below `end` is the only one that can overlap.
        if self.free.range(..end).next_back().is_some_and(|(_, &e)| e > iova) {
            return Err(not);
        }
        let mut start = iova;
        let mut stop = end;
        let below = self.free.range(..iova).next_back().map(|(&s, &e)| (s, e));
        if let Some((s, e)) = below {
            if e == iova {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.free.remove(&end) {
            stop = e;
        }
        self.free.insert(start, stop);
        Ok(())
    }
}

#[cfg(test)]
// Lists of IOVA ranges or areas with a single element are the point of several tests.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K4: u64 = 4096;
    const M2: u64 = 2 << 20;

    #[test]
    fn never_hands_out_zero() {
        let mut a = IovaAllocator::new(&[0..1 << 20], K4).unwrap();
        assert_eq!(a.ranges(), &[K4..1 << 20]);
        assert_eq!(a.allocate(1, 1).unwrap(), K4);
        let mut b = IovaAllocator::new(&[0..0x1000], K4).unwrap_err();
        assert!(matches!(b, IovaError::NoUsableRange(_)));
        b = IovaAllocator::new(&[], K4).unwrap_err();
        assert!(matches!(b, IovaError::NoUsableRange(_)));
    }

    #[test]
    fn default_ranges_start_above_zero() {
        let mut a = IovaAllocator::new(&[DEFAULT_IOVA_RANGE], K4).unwrap();
        assert_eq!(a.allocate(K4, K4).unwrap(), 0x1000);
        assert_eq!(a.allocate(M2, M2).unwrap(), M2);
        assert_eq!(a.free_bytes() + a.allocated_bytes(), (1 << 39) - 0x1000);
    }

    #[test]
    fn clips_unaligned_ranges_to_whole_granules() {
        let a = IovaAllocator::new(&[0x1800..0x5800, 0x10000..0x10fff], K4).unwrap();
        assert_eq!(a.ranges(), &[0x2000..0x5000]);
        assert!(matches!(
            IovaAllocator::new(&[0..1 << 20], 1000),
            Err(IovaError::BadGranule(1000))
        ));
        assert!(matches!(
            IovaAllocator::new(&[0..1 << 20], 2048),
            Err(IovaError::BadGranule(2048))
        ));
    }

    #[test]
    fn merges_overlapping_input_ranges() {
        let a = IovaAllocator::new(&[0x8000..0x10000, 0x1000..0x9000, 0x20000..0x30000], K4).unwrap();
        assert_eq!(a.ranges(), &[0x1000..0x10000, 0x20000..0x30000]);
    }

    #[test]
    fn allocations_skip_holes_between_ranges() {
        // The x86 MSI hole, as reported by intel-iommu with a 39-bit address width.
        let ranges = [0..0xfee0_0000, 0xfef0_0000..0x80_0000_0000];
        let mut a = IovaAllocator::new(&ranges, K4).unwrap();
        let below = a.allocate(0xfee0_0000 - 0x1000, K4).unwrap();
        assert_eq!(below, 0x1000);
        let next = a.allocate(K4, K4).unwrap();
        assert_eq!(next, 0xfef0_0000, "the MSI window is skipped");
        // A request larger than the space left below the hole goes above it.
        a.free(below, 0xfee0_0000 - 0x1000).unwrap();
        let big = a.allocate(0xfee0_0000, K4).unwrap();
        assert!(big >= 0xfef0_0000, "{big:#x}");
    }

    #[test]
    fn honours_alignment() {
        let mut a = IovaAllocator::new(&[0..1 << 30], K4).unwrap();
        assert_eq!(a.allocate(K4, K4).unwrap(), 0x1000);
        let h = a.allocate(M2, M2).unwrap();
        assert_eq!(h, M2);
        // The gap left below the aligned allocation is still usable.
        assert_eq!(a.allocate(K4, K4).unwrap(), 0x2000);
        assert_eq!(a.allocate(1, 0x10000).unwrap(), 0x10000);
        assert!(matches!(a.allocate(K4, 3), Err(IovaError::InvalidRequest { .. })));
        assert!(matches!(a.allocate(0, K4), Err(IovaError::InvalidRequest { .. })));
        assert!(matches!(
            a.allocate(u64::MAX, K4),
            Err(IovaError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn exhaustion_is_an_error_with_the_numbers() {
        let mut a = IovaAllocator::new(&[0..0x5000], K4).unwrap();
        let x = a.allocate(0x2000, K4).unwrap();
        let _y = a.allocate(0x2000, K4).unwrap();
        let e = a.allocate(K4, K4).unwrap_err();
        assert_eq!(
            e,
            IovaError::Exhausted {
                len: K4,
                align: K4,
                free: 0,
                largest: 0
            }
        );
        a.free(x, 0x2000).unwrap();
        let e = a.allocate(0x3000, K4).unwrap_err();
        assert_eq!(
            e,
            IovaError::Exhausted {
                len: 0x3000,
                align: K4,
                free: 0x2000,
                largest: 0x2000
            }
        );
        assert!(e.to_string().contains("exhausted"), "{e}");
    }

    #[test]
    fn freed_space_is_reused_and_coalesced() {
        let mut a = IovaAllocator::new(&[0..0x10000], K4).unwrap();
        let v: Vec<u64> = (0..15).map(|_| a.allocate(K4, K4).unwrap()).collect();
        assert_eq!(v[0], 0x1000);
        assert_eq!(v[14], 0xf000);
        assert!(a.allocate(K4, K4).is_err());
        // Free three neighbours in scrambled order: they merge into one 12 KiB extent.
        a.free(v[5], K4).unwrap();
        a.free(v[7], K4).unwrap();
        a.free(v[6], K4).unwrap();
        assert_eq!(a.free_bytes(), 0x3000);
        assert_eq!(a.allocate(0x3000, K4).unwrap(), v[5]);
        for &x in &v[..5] {
            a.free(x, K4).unwrap();
        }
        assert_eq!(a.allocate(0x5000, K4).unwrap(), 0x1000);
    }

    #[test]
    fn bad_frees_are_refused_without_damage() {
        let mut a = IovaAllocator::new(&[0..0x10000, 0x20000..0x30000], K4).unwrap();
        let x = a.allocate(0x2000, K4).unwrap();
        let before = a.free_bytes();
        assert!(a.free(x + 0x2000, K4).is_err(), "free space");
        assert!(a.free(0, K4).is_err(), "address 0");
        assert!(a.free(0x18000, K4).is_err(), "in the hole");
        assert!(a.free(0xf000, 0x2000).is_err(), "straddles the hole");
        assert!(a.free(x + 1, K4).is_err(), "unaligned");
        assert!(a.free(x, 0).is_err(), "empty");
        assert!(a.free(x, 0x3000).is_err(), "overlaps free space");
        assert_eq!(a.free_bytes(), before);
        a.free(x, 0x2000).unwrap();
        assert_eq!(
            a.free(x, 0x2000),
            Err(IovaError::NotAllocated { iova: x, len: 0x2000 }),
            "double free"
        );
    }

    #[test]
    fn lengths_round_up_to_the_granule() {
        let mut a = IovaAllocator::new(&[0..0x10000], K4).unwrap();
        let x = a.allocate(100, 1).unwrap();
        let y = a.allocate(K4 + 1, 1).unwrap();
        assert_eq!((x, y), (0x1000, 0x2000));
        assert_eq!(a.allocated_bytes(), 0x3000);
        a.free(y, K4 + 1).unwrap();
        a.free(x, 100).unwrap();
        assert_eq!(a.allocated_bytes(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { pages: u64, align_shift: u32 },
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..40, 12u32..22).prop_map(|(pages, align_shift)| Op::Alloc { pages, align_shift }),
            (0usize..64).prop_map(Op::Free),
        ]
    }

    proptest! {
        /// Live allocations never overlap, stay in the valid ranges, are aligned and
        /// never start at 0; free + allocated always equals the usable total.
        #[test]
        fn random_alloc_free_keeps_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let ranges = [0..0x40_0000, 0x50_0000..0x60_0000, 0x80_0000..0x100_0000];
            let mut a = IovaAllocator::new(&ranges, K4).unwrap();
            let total = a.free_bytes();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { pages, align_shift } => {
                        let align = 1u64 << align_shift;
                        if let Ok(iova) = a.allocate(pages * K4, align) {
                            let len = pages * K4;
                            prop_assert!(iova != 0);
                            prop_assert_eq!(iova % align, 0);
                            prop_assert!(a.ranges().iter().any(|r| r.start <= iova && iova + len <= r.end));
                            for &(s, l) in &live {
                                prop_assert!(iova + len <= s || s + l <= iova, "overlap");
                            }
                            live.push((iova, len));
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (s, l) = live.swap_remove(i % live.len());
                        prop_assert!(a.free(s, l).is_ok());
                        prop_assert!(a.free(s, l).is_err());
                    }
                    Op::Free(_) => {}
                }
                let used: u64 = live.iter().map(|&(_, l)| l).sum();
                prop_assert_eq!(a.allocated_bytes(), used);
                prop_assert_eq!(a.free_bytes() + used, total);
            }
            for (s, l) in live {
                a.free(s, l).unwrap();
            }
            // Fully coalesced again: one extent per usable range.
            prop_assert_eq!(a.free.len(), a.ranges().len());
        }
    }
}
