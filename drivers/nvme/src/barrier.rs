//! DMA barriers: the one place that orders host memory accesses against the device.
//!
//! Two points of every queue need them (NVMe Base Specification 2.0, §3.3.1.1 and §4.6),
//! and shadow doorbells a third ([`dma_mb`], between the shadow write and the EventIdx
//! read):
//!
//! - [`dma_wmb`] after writing submission queue entries (and any PRP list or data the
//!   command names) and before the SQ tail doorbell write that tells the controller about
//!   them, so the controller never fetches a half-written entry;
//! - [`dma_rmb`] after reading a completion's phase tag and before reading the rest of the
//!   entry (or the data the command moved), so a new phase tag is never combined with stale
//!   contents.
//!
//! These are Linux's `dma_wmb()` / `dma_rmb()` (`arch/*/include/asm/barrier.h`). A CPU
//! fence (`std::sync::atomic::fence`) is not enough in general: it orders accesses between
//! CPUs (the inner shareable domain) but not against a bus master, which on aarch64 sits in
//! the outer shareable domain:
//!
//! - **aarch64**: `dmb oshst` (stores before the barrier are observed before stores after
//!   it, outer shareable) and `dmb oshld` (loads before it complete before loads and stores
//!   after it), exactly as Linux's arm64 `dma_wmb` / `dma_rmb`. The doorbell is written
//!   with a plain volatile store, so `dma_wmb` here also plays the part of the barrier
//!   Linux's `writel` contains (`__iowmb`, which is `dma_wmb` on arm64).
//! - **x86_64**: only a compiler barrier. x86 is TSO for write-back memory: stores are
//!   seen in program order by the CPUs and by coherent DMA alike, loads are not reordered
//!   with older loads, and uncached MMIO stores are not reordered with older stores.
//!   Linux's x86 `dma_wmb()` and `dma_rmb()` are `barrier()` for that reason. The compiler
//!   barrier keeps rustc from moving the ring accesses across the doorbell write or the
//!   phase tag read.
//! - **anything else**: a sequentially consistent fence, which is at least as strong as a
//!   CPU fence; a port to another architecture should put its DMA barrier here.

/// Orders every store before it (ring entries, PRP lists, data) before every store after
/// it (the doorbell) as the device observes them. Linux's `dma_wmb()`.
#[inline(always)]
pub fn dma_wmb() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `dmb oshst` only orders memory accesses: it reads and writes no register or
    // memory the compiler tracks, and uses no stack. It is not `nomem`, so it is also a
    // compiler barrier, which is what we want.
    unsafe {
        std::arch::asm!("dmb oshst", options(nostack, preserves_flags));
    }
    #[cfg(target_arch = "x86_64")]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Orders every load before it (a completion's phase tag) before every load after it (the
/// rest of the completion, the data the device wrote). Linux's `dma_rmb()`.
#[inline(always)]
pub fn dma_rmb() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in `dma_wmb`: `dmb oshld` is a pure ordering instruction.
    unsafe {
        std::arch::asm!("dmb oshld", options(nostack, preserves_flags));
    }
    #[cfg(target_arch = "x86_64")]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Orders every store before it (a shadow doorbell) before every load after it (the
/// EventIdx the device writes), as the device observes them: the one ordering the two
/// barriers above do not give, since x86 may let a load pass an older store still in the
/// store buffer. Linux's `mb()` in `nvme_dbbuf_update_and_check_event`.
#[inline(always)]
pub fn dma_mb() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in `dma_wmb`: `dmb osh` is a pure ordering instruction.
    unsafe {
        std::arch::asm!("dmb osh", options(nostack, preserves_flags));
    }
    // x86_64 (an `mfence` or locked instruction) and anything else.
    #[cfg(not(target_arch = "aarch64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    /// The calls a queue must not make itself: CPU fences (which do not order against the
    /// device on aarch64) and compiler fences, under any path or spelling, and barrier
    /// instructions of its own.
    fn bare_barrier(code: &str) -> Option<&'static str> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        // `fence(` also finds `compiler_fence(` and `atomic::fence(`, whatever path names
        // the ordering (`Ordering::Release`, `SeqCst`, ...).
        if code.contains("fence(") {
            Some("a fence call")
        } else if code.contains("asm!(") {
            Some("an inline assembly barrier")
        } else {
            None
        }
    }

    /// Every queue orders its device accesses through this module, never with a bare CPU
    /// fence (which does not order against the device on aarch64).
    #[test]
    fn queues_use_these_barriers_and_no_cpu_fence() {
        let sources = [
            ("queue/pair.rs", include_str!("queue/pair.rs")),
            ("queue/cq.rs", include_str!("queue/cq.rs")),
            ("ctrl/admin.rs", include_str!("ctrl/admin.rs")),
            ("ctrl/io.rs", include_str!("ctrl/io.rs")),
            ("queue/sq.rs", include_str!("queue/sq.rs")),
            ("queue/mod.rs", include_str!("queue/mod.rs")),
            ("queue/cid.rs", include_str!("queue/cid.rs")),
            ("ctrl/shadow.rs", include_str!("ctrl/shadow.rs")),
        ];
        for (path, text) in sources {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if let Some(what) = bare_barrier(code) {
                    panic!(
                        "{path}:{}: {what} outside barrier.rs orders nothing against the device (or \
                         duplicates it); use crate::barrier: {line}",
                        n + 1
                    );
                }
            }
        }
        // The queue pair orders doorbells after the rings, the CQ its reads after the phase
        // tag, the shadow doorbells the EventIdx read after the shadow write.
        for (path, text) in sources
            .iter()
            .filter(|(p, _)| ["queue/pair.rs", "queue/cq.rs", "ctrl/shadow.rs"].contains(p))
        {
            assert!(text.contains("crate::barrier::dma_"), "{path} uses no DMA barrier");
        }
    }

    #[test]
    fn every_spelling_of_a_fence_is_caught() {
        for code in [
            "fence(Ordering::SeqCst);",
            "atomic::fence(std::sync::atomic::Ordering::Release);",
            "std::sync::atomic::fence(SeqCst);",
            "fence (Acquire);",
            "compiler_fence(Ordering::SeqCst);",
            "core::sync::atomic::compiler_fence(SeqCst);",
            "std::arch::asm!(\"mfence\")",
        ] {
            assert!(bare_barrier(code).is_some(), "{code}");
        }
        for code in ["crate::barrier::dma_wmb();", "let fenced = 1;", "self.sq.push(&cmd)"] {
            assert_eq!(bare_barrier(code), None, "{code}");
        }
    }
}
