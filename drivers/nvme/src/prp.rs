//! Physical Region Page entries and lists — NVMe Base Specification 2.0, §4.1.1.
//!
//! A transfer is described by PRP1 (the first page, possibly with an offset that must be
//! dword aligned) and PRP2, which is either the second page (when the transfer touches
//! exactly two pages) or the IOVA of a PRP list. A list page holds `page_size / 8`
//! entries; when more entries remain than fit, the last entry of a list page points to
//! the next list page (chaining). Entries after PRP1 have no offset.
//!
//! ironvme transfers a buffer that is contiguous in IOVA space, so entries are simply the
//! successive page boundaries; [`PrpWalker`] does the reverse (used by the simulated
//! controller and tests).

use crate::hw::DmaBuf;

/// A PRP list could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    /// A zero-length transfer needs no data pointer.
    #[error("a PRP transfer must be at least one byte")]
    Empty,
    /// PRP entries must be dword aligned (bits 1:0 clear).
    #[error("buffer IOVA {iova:#x} is not dword (4-byte) aligned, as PRP1 requires")]
    Misaligned {
        /// The buffer's IOVA.
        iova: u64,
    },
    /// The memory page size is not a power of two in 4 KiB..=128 MiB (CC.MPS range).
    #[error("memory page size {0} bytes is not a power of two between 4 KiB and 128 MiB")]
    BadPageSize(usize),
    /// The preallocated list memory is too small for this transfer.
    #[error("transfer needs {need} PRP list pages but {have} are preallocated")]
    ListTooSmall {
        /// List pages the transfer needs.
        need: usize,
        /// List pages available.
        have: usize,
    },
    /// The list memory is not aligned to the memory page size.
    #[error("PRP list memory at IOVA {iova:#x} is not page aligned")]
    ListMisaligned {
        /// IOVA of the list memory.
        iova: u64,
    },
}

fn check_page_size(page_size: usize) -> Result<(), PrpError> {
    if page_size.is_power_of_two() && (4096..=(128 << 20)).contains(&page_size) {
        Ok(())
    } else {
        Err(PrpError::BadPageSize(page_size))
    }
}

/// Number of memory pages of `page_size` bytes that `len` bytes starting at `iova` touch.
pub fn pages_spanned(iova: u64, len: usize, page_size: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let offset = (iova % page_size as u64) as usize;
    (offset + len).div_ceil(page_size)
}

/// PRP list pages needed for `entries` list entries (entries after PRP1) with chaining:
/// every list page but the last gives up its final slot to the link to the next page.
pub fn list_pages_for_entries(entries: usize, page_size: usize) -> usize {
    let per_page = page_size / 8;
    if entries <= 1 {
        // None at all (one entry goes straight into PRP2) — but callers size by maximum.
        return 0;
    }
    if entries <= per_page {
        return 1;
    }
    // n pages hold (n - 1) × (per_page - 1) + per_page entries.
    1 + (entries - per_page).div_ceil(per_page - 1)
}

/// PRP list pages needed, in the worst case (a first page with an offset), for any
/// transfer of up to `max_len` bytes. Preallocate this many pages per command slot.
pub fn list_pages_for_transfer(max_len: usize, page_size: usize) -> usize {
    // Worst case: the transfer starts 4 bytes before a page boundary.
    let pages = pages_spanned(page_size as u64 - 4, max_len, page_size);
    list_pages_for_entries(pages.saturating_sub(1), page_size)
}

/// Builds PRP1 and PRP2 for the `len` bytes at `iova`, writing PRP list entries (if
/// needed) into `list`, whose window must be page-aligned memory for at least
/// [`list_pages_for_transfer`] pages.
///
/// Returns `(PRP1, PRP2)`; PRP2 is 0 when the transfer fits in the first page.
///
/// Errors: [`PrpError`] if the transfer is empty, `iova` is not dword aligned, the page
/// size is invalid, or the list memory is too small or misaligned.
pub fn build_prps(iova: u64, len: usize, page_size: usize, list: &mut DmaBuf) -> Result<(u64, u64), PrpError> {
    check_page_size(page_size)?;
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if iova % 4 != 0 {
        return Err(PrpError::Misaligned { iova });
    }
    let page = page_size as u64;
    let first_len = (page - iova % page).min(len as u64);
    let remaining = len as u64 - first_len;
    if remaining == 0 {
        return Ok((iova, 0));
    }
    let second = (iova - iova % page) + page;
    if remaining <= page {
        return Ok((iova, second));
    }
    let entries = remaining.div_ceil(page) as usize;
    let need = list_pages_for_entries(entries, page_size);
    let have = list.len() / page_size;
    if need > have {
        return Err(PrpError::ListTooSmall { need, have });
    }
    if list.iova() % page != 0 {
        return Err(PrpError::ListMisaligned { iova: list.iova() });
    }
    let per_page = page_size / 8;
    let list_iova = list.iova();
    let slots = list.as_mut_slice();
    let mut write = |slot: usize, value: u64| slots[slot * 8..slot * 8 + 8].copy_from_slice(&value.to_le_bytes());
    let (mut list_page, mut index) = (0usize, 0usize);
    for k in 0..entries {
        let left = entries - k;
        if index == per_page - 1 && left > 1 {
            // Last slot of a full list page: link to the next list page.
            write(
                list_page * per_page + index,
                list_iova + ((list_page + 1) * page_size) as u64,
            );
            list_page += 1;
            index = 0;
        }
        write(list_page * per_page + index, second + k as u64 * page);
        index += 1;
    }
    Ok((iova, list_iova))
}

/// Walks the pages a PRP pair describes, the way a controller does: yields
/// `(iova, len)` segments covering `len` bytes. List pages are read through `read_u64`
/// (an IOVA → value lookup the caller provides, e.g. the simulated controller's DMA).
///
/// Used by the simulated controller; returns `None` (an invalid data pointer) for a
/// misaligned entry or an unreadable list.
pub struct PrpWalker<F> {
    read_u64: F,
    page: u64,
    remaining: u64,
    next: u64,
    prp2: u64,
    started: bool,
    list_ptr: Option<u64>,
    entries_left_in_page: u64,
}

impl<F: FnMut(u64) -> Option<u64>> PrpWalker<F> {
    /// A walker over `len` bytes described by `prp1`/`prp2` with memory page size
    /// `page_size`.
    pub fn new(prp1: u64, prp2: u64, len: u64, page_size: usize, read_u64: F) -> PrpWalker<F> {
        PrpWalker {
            read_u64,
            page: page_size as u64,
            remaining: len,
            next: prp1,
            prp2,
            started: false,
            list_ptr: None,
            entries_left_in_page: 0,
        }
    }

    fn next_page_addr(&mut self) -> Option<u64> {
        let total_left_pages = self.remaining.div_ceil(self.page);
        if self.list_ptr.is_none() {
            // Second page: PRP2 is the page itself if the rest fits in one page.
            if self.remaining <= self.page {
                return Some(self.prp2);
            }
            if self.prp2 % 8 != 0 {
                return None;
            }
            self.list_ptr = Some(self.prp2);
            self.entries_left_in_page = (self.page - self.prp2 % self.page) / 8;
        }
        let ptr = self.list_ptr?;
        if self.entries_left_in_page == 1 && total_left_pages > 1 {
            // Last slot links to the next list page.
            let link = (self.read_u64)(ptr)?;
            if link % self.page != 0 {
                return None;
            }
            self.list_ptr = Some(link);
            self.entries_left_in_page = self.page / 8;
            return self.next_page_addr();
        }
        let entry = (self.read_u64)(ptr)?;
        self.list_ptr = Some(ptr + 8);
        self.entries_left_in_page -= 1;
        Some(entry)
    }
}

impl<F: FnMut(u64) -> Option<u64>> Iterator for PrpWalker<F> {
    type Item = Option<(u64, u64)>;

    /// `Some(Some((iova, len)))` for each segment, `Some(None)` once on an invalid
    /// pointer, then `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let addr = if !self.started {
            self.started = true;
            if self.next % 4 != 0 {
                self.remaining = 0;
                return Some(None);
            }
            self.next
        } else {
            match self.next_page_addr() {
                Some(a) if a % self.page == 0 => a,
                _ => {
                    self.remaining = 0;
                    return Some(None);
                }
            }
        };
        let len = (self.page - addr % self.page).min(self.remaining);
        self.remaining -= len;
        Some(Some((addr, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::HeapRegion;
    use proptest::prelude::*;
    use std::sync::Arc;

    const LIST_IOVA: u64 = 0x8000_0000;

    fn list(pages: usize, page_size: usize) -> DmaBuf {
        DmaBuf::from_region(Arc::new(
            HeapRegion::new(pages * page_size, page_size, LIST_IOVA).unwrap(),
        ))
    }

    fn entry(list: &DmaBuf, i: usize) -> u64 {
        u64::from_le_bytes(list.as_slice()[i * 8..i * 8 + 8].try_into().unwrap())
    }

    /// Walks a PRP pair back into segments, reading list entries from `list`.
    fn walk(prp1: u64, prp2: u64, len: usize, page: usize, list: &DmaBuf) -> Vec<(u64, u64)> {
        let read = |iova: u64| {
            let off = iova.checked_sub(LIST_IOVA)? as usize;
            Some(u64::from_le_bytes(list.as_slice().get(off..off + 8)?.try_into().ok()?))
        };
        PrpWalker::new(prp1, prp2, len as u64, page, read)
            .map(|s| s.expect("valid PRPs"))
            .collect()
    }

    #[test]
    fn one_page_needs_only_prp1() {
        let mut l = list(1, 4096);
        assert_eq!(build_prps(0x10_0000, 4096, 4096, &mut l), Ok((0x10_0000, 0)));
        assert_eq!(build_prps(0x10_0200, 512, 4096, &mut l), Ok((0x10_0200, 0)));
        assert_eq!(
            build_prps(0x10_0E00, 512, 4096, &mut l),
            Ok((0x10_0E00, 0)),
            "ends exactly on the page boundary"
        );
    }

    #[test]
    fn two_pages_put_the_second_in_prp2() {
        let mut l = list(1, 4096);
        assert_eq!(build_prps(0x10_0000, 8192, 4096, &mut l), Ok((0x10_0000, 0x10_1000)));
        // A first page with an offset: 512 bytes in page 0, the rest in page 1.
        assert_eq!(build_prps(0x10_0E00, 4096, 4096, &mut l), Ok((0x10_0E00, 0x10_1000)));
    }

    #[test]
    fn three_pages_use_a_list() {
        let mut l = list(1, 4096);
        let (p1, p2) = build_prps(0x10_0000, 3 * 4096, 4096, &mut l).unwrap();
        assert_eq!((p1, p2), (0x10_0000, LIST_IOVA));
        assert_eq!((entry(&l, 0), entry(&l, 1)), (0x10_1000, 0x10_2000));
    }

    #[test]
    fn a_full_list_page_does_not_chain() {
        // 1 + 512 pages: exactly 512 list entries fill one 4 KiB list page.
        let mut l = list(1, 4096);
        let len = 513 * 4096;
        let (_, p2) = build_prps(0, len, 4096, &mut l).unwrap();
        assert_eq!(p2, LIST_IOVA);
        assert_eq!(entry(&l, 511), 512 * 4096, "last slot holds data, not a link");
        assert_eq!(walk(0, p2, len, 4096, &l).len(), 513);
    }

    #[test]
    fn one_more_entry_chains_to_a_second_list_page() {
        let mut l = list(2, 4096);
        let len = 514 * 4096;
        let (_, p2) = build_prps(0, len, 4096, &mut l).unwrap();
        assert_eq!(
            entry(&l, 511),
            LIST_IOVA + 4096,
            "last slot links to the next list page"
        );
        assert_eq!(entry(&l, 512), 511 * 4096 + 4096);
        let segs = walk(0, p2, len, 4096, &l);
        assert_eq!(segs.len(), 514);
        assert!(
            segs.iter()
                .enumerate()
                .all(|(i, &(a, n))| a == i as u64 * 4096 && n == 4096)
        );
    }

    #[test]
    fn list_too_small_is_refused() {
        let mut l = list(1, 4096);
        assert_eq!(
            build_prps(0, 600 * 4096, 4096, &mut l),
            Err(PrpError::ListTooSmall { need: 2, have: 1 })
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut l = list(1, 4096);
        assert_eq!(
            build_prps(0x1001, 8, 4096, &mut l),
            Err(PrpError::Misaligned { iova: 0x1001 })
        );
        assert_eq!(build_prps(0x1000, 0, 4096, &mut l), Err(PrpError::Empty));
        assert_eq!(build_prps(0x1000, 8, 1000, &mut l), Err(PrpError::BadPageSize(1000)));
    }

    #[test]
    fn larger_memory_pages() {
        let page = 64 * 1024;
        let mut l = list(1, page);
        // 128 KiB starting 512 bytes into a 64 KiB page touches 3 pages → a list.
        let (p1, p2) = build_prps(0x100_0200, 128 * 1024, page, &mut l).unwrap();
        assert_eq!((p1, p2), (0x100_0200, LIST_IOVA));
        assert_eq!(entry(&l, 0), 0x101_0000);
        assert_eq!(entry(&l, 1), 0x102_0000);
        assert_eq!(
            walk(p1, p2, 128 * 1024, page, &l).iter().map(|s| s.1).sum::<u64>(),
            128 * 1024
        );
    }

    #[test]
    fn worst_case_list_sizing() {
        assert_eq!(list_pages_for_transfer(4096, 4096), 0);
        assert_eq!(list_pages_for_transfer(512 * 1024, 4096), 1); // MDTS 7 with 4 KiB pages
        // 2 MiB from an unaligned start touches 513 pages: 512 list entries, one list page.
        assert_eq!(list_pages_for_transfer(2 << 20, 4096), 1);
        assert_eq!(list_pages_for_transfer((2 << 20) + 4096, 4096), 2);
        assert_eq!(list_pages_for_entries(512, 4096), 1);
        assert_eq!(list_pages_for_entries(513, 4096), 2);
        assert_eq!(list_pages_for_entries(511 + 511 + 512, 4096), 3);
    }

    #[test]
    fn walker_refuses_misaligned_entries() {
        let segs: Vec<_> = PrpWalker::new(0x1002, 0, 8, 4096, |_| None).collect();
        assert_eq!(segs, [None]);
        let segs: Vec<_> = PrpWalker::new(0x1000, 0x2200, 8192, 4096, |_| None).collect();
        assert_eq!(segs, [Some((0x1000, 4096)), None]);
    }

    proptest! {
        /// Build then walk: the segments cover exactly the buffer, in order, for any
        /// offset, length and page size, with page-aligned entries after the first.
        #[test]
        fn build_and_walk_round_trip(
            page_shift in 12u32..=16,
            offset_dw in 0u64..16384,
            len in 1usize..(3 << 20),
        ) {
            let page = 1usize << page_shift;
            let iova = 0x4000_0000 + (offset_dw * 4) % page as u64;
            let mut l = list(list_pages_for_transfer(len, page).max(1), page);
            let (p1, p2) = build_prps(iova, len, page, &mut l).unwrap();
            prop_assert_eq!(p1, iova);
            let segs = walk(p1, p2, len, page, &l);
            let mut expect = iova;
            for (i, &(a, n)) in segs.iter().enumerate() {
                prop_assert_eq!(a, expect);
                if i > 0 { prop_assert_eq!(a % page as u64, 0); }
                expect += n;
            }
            prop_assert_eq!(expect - iova, len as u64);
            prop_assert_eq!(segs.len(), pages_spanned(iova, len, page));
        }
    }
}
