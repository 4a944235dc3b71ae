//! How the simulated controller presents itself: capabilities, limits, namespaces.

use std::time::Duration;

/// One namespace of the simulated controller.
///
/// Namespaces get NSIDs 1, 2, … in the order of [`SimConfig::namespaces`]. A namespace of
/// zero blocks is an allocated but *inactive* NSID: Identify Namespace returns zeros for it
/// and I/O to it fails with Invalid Namespace or Format, which is how a test gets a hole in
/// the NSID space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimNamespace {
    /// Logical block size in bytes: 512 (LBA format 0) or 4096 (LBA format 1).
    pub block_size: u32,
    /// Capacity in logical blocks (NSZE = NCAP = NUSE); 0 makes the NSID inactive.
    pub blocks: u64,
}

impl SimNamespace {
    /// An allocated NSID with no active namespace behind it.
    pub const INACTIVE: SimNamespace = SimNamespace {
        block_size: 512,
        blocks: 0,
    };

    /// A namespace of `blocks` logical blocks of `block_size` bytes (512 or 4096).
    pub const fn new(block_size: u32, blocks: u64) -> SimNamespace {
        SimNamespace { block_size, blocks }
    }

    /// Capacity in bytes.
    pub const fn capacity_bytes(&self) -> u64 {
        self.block_size as u64 * self.blocks
    }
}

impl Default for SimNamespace {
    /// 16 MiB of 512-byte blocks, like a small QEMU `-drive` with the default block size.
    fn default() -> SimNamespace {
        SimNamespace::new(512, 32 * 1024)
    }
}

/// Configuration of a [`super::SimController`].
///
/// [`Default`] is QEMU 7.2's emulated controller (see DESIGN.md), made small and fast:
/// CAP.TO is 1 s instead of 7.5 s and there is one 16 MiB namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// CAP.MQES: the largest I/O queue, in entries, 0's based (default 2047 = 2048 entries).
    pub mqes: u16,
    /// Identify Controller MDTS: the largest data transfer is `2^mdts` pages of CAP.MPSMIN
    /// (default 7 = 512 KiB with 4 KiB pages); 0 means no limit.
    pub mdts: u8,
    /// CAP.DSTRD: doorbells are `4 << dstrd` bytes apart (default 0; at most 15).
    pub dstrd: u8,
    /// CAP.TO: worst-case time for CSTS.RDY to follow CC.EN, in 500 ms units (default 2).
    pub cap_to: u8,
    /// CAP.MPSMIN: the smallest memory page size is `2^(12 + mpsmin)` bytes (default 0).
    pub mpsmin: u8,
    /// CAP.MPSMAX: the largest memory page size is `2^(12 + mpsmax)` bytes (default 4).
    pub mpsmax: u8,
    /// CAP.CQR: I/O queues must be contiguous (default true). The simulator supports
    /// contiguous queues only, so Create I/O SQ/CQ without PC fails either way.
    pub cqr: bool,
    /// The number of I/O submission and of I/O completion queues the controller supports
    /// (NSQA + 1 and NCQA + 1 of Number of Queues; default 64; 1..=65535).
    pub max_io_queues: u16,
    /// QEMU quirk: Set Features Number of Queues answers the maximum whatever is asked
    /// (default true). When false, the answer is the smaller of what was asked and the
    /// maximum.
    pub answer_max_queues: bool,
    /// The namespaces, NSID 1 first (default: one [`SimNamespace::default`]).
    pub namespaces: Vec<SimNamespace>,
    /// SGLs are advertised (SGLS = 1) and accepted on I/O commands (default true). Admin
    /// commands always need PRPs, as on QEMU.
    pub sgl: bool,
    /// A volatile write cache is present (Identify VWC, feature 06h; default true).
    pub vwc: bool,
    /// Abort finds commands held by [`super::FaultAction::Hang`] (or delayed by
    /// [`super::FaultAction::Delay`]), completes them with Command Abort Requested and
    /// answers DW0 = 0. When false (the default), Abort is a no-op answering DW0 = 1
    /// ("not aborted"), as on QEMU 7.2.
    pub abort_works: bool,
    /// How long CSTS.RDY takes to follow a change of CC.EN (default 0).
    pub ready_delay: Duration,
    /// Serial number (Identify SN, 20 ASCII bytes, space padded; longer is cut).
    pub serial: String,
    /// Model number (Identify MN, 40 ASCII bytes, space padded).
    pub model: String,
    /// Firmware revision (Identify FR and firmware slot 1, 8 ASCII bytes, space padded).
    pub firmware: String,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            mqes: 2047,
            mdts: 7,
            dstrd: 0,
            cap_to: 2,
            mpsmin: 0,
            mpsmax: 4,
            cqr: true,
            max_io_queues: 64,
            answer_max_queues: true,
            namespaces: vec![SimNamespace::default()],
            sgl: true,
            vwc: true,
            abort_works: false,
            ready_delay: Duration::ZERO,
            serial: "ironvme-sim".to_string(),
            model: "QEMU NVMe Ctrl".to_string(),
            firmware: "1.0".to_string(),
        }
    }
}

impl SimConfig {
    /// The smallest memory page size (CAP.MPSMIN) in bytes.
    pub fn min_page_size(&self) -> usize {
        4096 << self.mpsmin
    }

    /// The largest data transfer of one command in bytes (MDTS), or `None` for no limit.
    pub fn max_transfer_bytes(&self) -> Option<u64> {
        match self.mdts {
            0 => None,
            m => (self.min_page_size() as u64).checked_shl(m as u32),
        }
    }

    /// Panics with a description if the configuration cannot describe a controller.
    pub(super) fn check(&self) {
        assert!(
            self.mqes >= 1,
            "SimConfig: mqes {} must be at least 1 (2 entries)",
            self.mqes
        );
        assert!(self.dstrd <= 15, "SimConfig: dstrd {} is a 4-bit field", self.dstrd);
        assert!(
            self.mpsmin <= self.mpsmax && self.mpsmax <= 15,
            "SimConfig: need mpsmin {} <= mpsmax {} <= 15",
            self.mpsmin,
            self.mpsmax
        );
        assert!(self.mdts <= 20, "SimConfig: mdts {} is unreasonably large", self.mdts);
        assert!(self.max_io_queues >= 1, "SimConfig: max_io_queues must be at least 1");
        for (i, ns) in self.namespaces.iter().enumerate() {
            assert!(
                ns.block_size == 512 || ns.block_size == 4096,
                "SimConfig: namespace {} has block size {}; the simulator has LBA formats for 512 and 4096 bytes",
                i + 1,
                ns.block_size
            );
            assert!(
                ns.blocks.checked_mul(ns.block_size as u64).is_some(),
                "SimConfig: namespace {} capacity overflows u64",
                i + 1
            );
        }
    }
}
