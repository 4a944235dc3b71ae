//! Controller registers — NVMe Base Specification 2.0, §3.1.3 ("Controller Properties").
//!
//! Each register is a newtype over its raw value with accessors named after the
//! specification's fields. Offsets are in bytes from the start of BAR0. Registers are read
//! and written 32 or 64 bits at a time, never wider (see [`crate::hw::Registers`]).

use std::time::Duration;

/// Register offsets in bytes from the start of BAR0 (§3.1.3, Figure 33).
pub mod offset {
    /// CAP — Controller Capabilities (64-bit).
    pub const CAP: u32 = 0x00;
    /// VS — Version.
    pub const VS: u32 = 0x08;
    /// INTMS — Interrupt Mask Set.
    pub const INTMS: u32 = 0x0C;
    /// INTMC — Interrupt Mask Clear.
    pub const INTMC: u32 = 0x10;
    /// CC — Controller Configuration.
    pub const CC: u32 = 0x14;
    /// CSTS — Controller Status.
    pub const CSTS: u32 = 0x1C;
    /// NSSR — NVM Subsystem Reset.
    pub const NSSR: u32 = 0x20;
    /// AQA — Admin Queue Attributes.
    pub const AQA: u32 = 0x24;
    /// ASQ — Admin Submission Queue Base Address (64-bit).
    pub const ASQ: u32 = 0x28;
    /// ACQ — Admin Completion Queue Base Address (64-bit).
    pub const ACQ: u32 = 0x30;
    /// CMBLOC — Controller Memory Buffer Location.
    pub const CMBLOC: u32 = 0x38;
    /// CMBSZ — Controller Memory Buffer Size.
    pub const CMBSZ: u32 = 0x3C;
    /// First doorbell register (SQ 0 Tail Doorbell).
    pub const DOORBELL_BASE: u32 = 0x1000;
}

/// The value written to NSSR to start an NVM Subsystem Reset: "NVMe" in ASCII (§3.1.3.6).
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// Extracts `width` bits starting at `shift`.
const fn bits64(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}

const fn bits32(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1u32 << width) - 1)
}

/// CAP — Controller Capabilities (offset 0x00, 64-bit, §3.1.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// CAP.MQES: Maximum Queue Entries Supported, 0's based (bits 15:0).
    pub const fn mqes(self) -> u16 {
        bits64(self.0, 0, 16) as u16
    }
    /// The largest queue size in entries a queue may have: CAP.MQES + 1 (2..=65536).
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes() as u32 + 1
    }
    /// CAP.CQR: Contiguous Queues Required (bit 16). When set, I/O queues must be
    /// physically (IOVA-) contiguous.
    pub const fn cqr(self) -> bool {
        bits64(self.0, 16, 1) != 0
    }
    /// CAP.AMS: Arbitration Mechanism Supported (bits 18:17): bit 0 weighted round robin
    /// with urgent priority class, bit 1 vendor specific.
    pub const fn ams(self) -> u8 {
        bits64(self.0, 17, 2) as u8
    }
    /// CAP.TO: Timeout, in 500 ms units (bits 31:24): the worst-case time to wait for
    /// CSTS.RDY to change after CC.EN changes.
    pub const fn to(self) -> u8 {
        bits64(self.0, 24, 8) as u8
    }
    /// CAP.TO as a duration (TO × 500 ms).
    pub const fn ready_timeout(self) -> Duration {
        Duration::from_millis(self.to() as u64 * 500)
    }
    /// CAP.DSTRD: Doorbell Stride (bits 35:32); doorbells are `4 << DSTRD` bytes apart.
    pub const fn dstrd(self) -> u8 {
        bits64(self.0, 32, 4) as u8
    }
    /// CAP.NSSRS: NVM Subsystem Reset Supported (bit 36).
    pub const fn nssrs(self) -> bool {
        bits64(self.0, 36, 1) != 0
    }
    /// CAP.CSS: Command Sets Supported (bits 44:37). Bit 0: NVM command set; bit 6: one or
    /// more I/O command sets; bit 7: no I/O command set (admin only).
    pub const fn css(self) -> u8 {
        bits64(self.0, 37, 8) as u8
    }
    /// Whether the NVM command set is supported (CAP.CSS bit 0).
    pub const fn supports_nvm_command_set(self) -> bool {
        self.css() & 0x01 != 0
    }
    /// Whether the controller supports I/O command sets besides NVM, selected together
    /// with CC.CSS = 110b (CAP.CSS bit 6; Base 2.0 §3.1.4.1): the Zoned Namespace command
    /// set, for one.
    pub const fn supports_io_command_sets(self) -> bool {
        self.css() & 0x40 != 0
    }
    /// The CC.CSS value to enable with: 110b (all supported I/O command sets) when
    /// [`Self::supports_io_command_sets`], else 000b (the NVM command set).
    pub const fn command_set_selection(self) -> u8 {
        if self.supports_io_command_sets() { 0b110 } else { 0 }
    }
    /// CAP.BPS: Boot Partition Support (bit 45).
    pub const fn bps(self) -> bool {
        bits64(self.0, 45, 1) != 0
    }
    /// CAP.MPSMIN: Memory Page Size Minimum (bits 51:48); the page size is `2^(12+MPSMIN)`.
    pub const fn mpsmin(self) -> u8 {
        bits64(self.0, 48, 4) as u8
    }
    /// CAP.MPSMAX: Memory Page Size Maximum (bits 55:52).
    pub const fn mpsmax(self) -> u8 {
        bits64(self.0, 52, 4) as u8
    }
    /// Smallest memory page size the controller supports, in bytes.
    pub const fn min_page_size(self) -> usize {
        1usize << (12 + self.mpsmin())
    }
    /// Largest memory page size the controller supports, in bytes.
    pub const fn max_page_size(self) -> usize {
        1usize << (12 + self.mpsmax())
    }
    /// CAP.PMRS: Persistent Memory Region Supported (bit 56).
    pub const fn pmrs(self) -> bool {
        bits64(self.0, 56, 1) != 0
    }
    /// CAP.CMBS: Controller Memory Buffer Supported (bit 57).
    pub const fn cmbs(self) -> bool {
        bits64(self.0, 57, 1) != 0
    }
    /// Byte offset of the submission queue `qid` tail doorbell (§3.1.3.20).
    pub const fn sq_tail_doorbell(self, qid: u16) -> u32 {
        offset::DOORBELL_BASE + (2 * qid as u32) * (4 << self.dstrd())
    }
    /// Byte offset of the completion queue `qid` head doorbell (§3.1.3.21).
    pub const fn cq_head_doorbell(self, qid: u16) -> u32 {
        offset::DOORBELL_BASE + (2 * qid as u32 + 1) * (4 << self.dstrd())
    }
}

/// VS — Version (offset 0x08, §3.1.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Vs(pub u32);

impl Vs {
    /// VS.MJR: major version (bits 31:16).
    pub const fn major(self) -> u16 {
        bits32(self.0, 16, 16) as u16
    }
    /// VS.MNR: minor version (bits 15:8).
    pub const fn minor(self) -> u8 {
        bits32(self.0, 8, 8) as u8
    }
    /// VS.TER: tertiary version (bits 7:0).
    pub const fn tertiary(self) -> u8 {
        bits32(self.0, 0, 8) as u8
    }
    /// Builds a version value from its parts.
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Vs {
        Vs((major as u32) << 16 | (minor as u32) << 8 | tertiary as u32)
    }
}

impl std::fmt::Display for Vs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

/// CC.SHN — Shutdown Notification (§3.1.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ShutdownNotification {
    /// No notification; no effect.
    None = 0b00,
    /// Normal shutdown notification.
    Normal = 0b01,
    /// Abrupt shutdown notification.
    Abrupt = 0b10,
}

/// CC — Controller Configuration (offset 0x14, §3.1.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// CC.EN: Enable (bit 0).
    pub const fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// CC.CSS: I/O Command Set Selected (bits 6:4); 000b is the NVM command set.
    pub const fn css(self) -> u8 {
        bits32(self.0, 4, 3) as u8
    }
    /// CC.MPS: Memory Page Size (bits 10:7); the page size is `2^(12+MPS)`.
    pub const fn mps(self) -> u8 {
        bits32(self.0, 7, 4) as u8
    }
    /// CC.AMS: Arbitration Mechanism Selected (bits 13:11); 000b is round robin.
    pub const fn ams(self) -> u8 {
        bits32(self.0, 11, 3) as u8
    }
    /// CC.SHN: Shutdown Notification (bits 15:14), raw.
    pub const fn shn(self) -> u8 {
        bits32(self.0, 14, 2) as u8
    }
    /// CC.IOSQES: I/O Submission Queue Entry Size, log2 bytes (bits 19:16); 6 = 64 bytes.
    pub const fn iosqes(self) -> u8 {
        bits32(self.0, 16, 4) as u8
    }
    /// CC.IOCQES: I/O Completion Queue Entry Size, log2 bytes (bits 23:20); 4 = 16 bytes.
    pub const fn iocqes(self) -> u8 {
        bits32(self.0, 20, 4) as u8
    }
    /// Returns a copy with CC.EN set to `en`.
    #[must_use]
    pub const fn with_en(self, en: bool) -> Cc {
        Cc((self.0 & !1) | en as u32)
    }
    /// Returns a copy with CC.CSS set (3 bits).
    #[must_use]
    pub const fn with_css(self, css: u8) -> Cc {
        Cc((self.0 & !(0x7 << 4)) | ((css as u32 & 0x7) << 4))
    }
    /// Returns a copy with CC.MPS set (4 bits; page size `2^(12+mps)`).
    #[must_use]
    pub const fn with_mps(self, mps: u8) -> Cc {
        Cc((self.0 & !(0xF << 7)) | ((mps as u32 & 0xF) << 7))
    }
    /// Returns a copy with CC.AMS set (3 bits).
    #[must_use]
    pub const fn with_ams(self, ams: u8) -> Cc {
        Cc((self.0 & !(0x7 << 11)) | ((ams as u32 & 0x7) << 11))
    }
    /// Returns a copy with CC.SHN set.
    #[must_use]
    pub const fn with_shn(self, shn: ShutdownNotification) -> Cc {
        Cc((self.0 & !(0x3 << 14)) | ((shn as u32) << 14))
    }
    /// Returns a copy with CC.IOSQES set (log2 of the SQ entry size in bytes).
    #[must_use]
    pub const fn with_iosqes(self, log2: u8) -> Cc {
        Cc((self.0 & !(0xF << 16)) | ((log2 as u32 & 0xF) << 16))
    }
    /// Returns a copy with CC.IOCQES set (log2 of the CQ entry size in bytes).
    #[must_use]
    pub const fn with_iocqes(self, log2: u8) -> Cc {
        Cc((self.0 & !(0xF << 20)) | ((log2 as u32 & 0xF) << 20))
    }
}

/// CSTS.SHST — Shutdown Status (§3.1.3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownStatus {
    /// Normal operation, no shutdown requested.
    Normal,
    /// Shutdown processing occurring.
    Occurring,
    /// Shutdown processing complete.
    Complete,
    /// Reserved value 11b.
    Reserved,
}

/// CSTS — Controller Status (offset 0x1C, §3.1.3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// CSTS.RDY: Ready (bit 0).
    pub const fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// CSTS.CFS: Controller Fatal Status (bit 1).
    pub const fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// CSTS.SHST: Shutdown Status (bits 3:2).
    pub const fn shst(self) -> ShutdownStatus {
        match bits32(self.0, 2, 2) {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }
    /// CSTS.NSSRO: NVM Subsystem Reset Occurred (bit 4).
    pub const fn nssro(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// CSTS.PP: Processing Paused (bit 5).
    pub const fn pp(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// Whether the read returned all ones, which on PCIe means the device is gone
    /// (surprise removal or a dead link) rather than a real register value.
    pub const fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

/// AQA — Admin Queue Attributes (offset 0x24, §3.1.3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Aqa(pub u32);

impl Aqa {
    /// Builds AQA from admin SQ and CQ sizes in entries (1-based, 2..=4096).
    pub const fn new(sq_entries: u16, cq_entries: u16) -> Aqa {
        Aqa(((cq_entries as u32 - 1) & 0xFFF) << 16 | ((sq_entries as u32 - 1) & 0xFFF))
    }
    /// AQA.ASQS: Admin Submission Queue Size, 0's based (bits 11:0).
    pub const fn asqs(self) -> u16 {
        bits32(self.0, 0, 12) as u16
    }
    /// AQA.ACQS: Admin Completion Queue Size, 0's based (bits 27:16).
    pub const fn acqs(self) -> u16 {
        bits32(self.0, 16, 12) as u16
    }
}

/// The largest admin queue the AQA fields can describe, in entries (12-bit, 0's based).
pub const MAX_ADMIN_QUEUE_ENTRIES: u16 = 4096;

/// CMBLOC — Controller Memory Buffer Location (offset 0x38, §3.1.3.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cmbloc(pub u32);

impl Cmbloc {
    /// CMBLOC.BIR: Base Indicator Register — the BAR holding the CMB (bits 2:0).
    pub const fn bir(self) -> u8 {
        bits32(self.0, 0, 3) as u8
    }
    /// CMBLOC.OFST: offset of the CMB in the BAR, in CMBSZ.SZU units (bits 31:12).
    pub const fn ofst(self) -> u32 {
        bits32(self.0, 12, 20)
    }
}

/// CMBSZ — Controller Memory Buffer Size (offset 0x3C, §3.1.3.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cmbsz(pub u32);

impl Cmbsz {
    /// CMBSZ.SQS: submission queues may live in the CMB (bit 0).
    pub const fn sqs(self) -> bool {
        self.0 & 1 != 0
    }
    /// CMBSZ.CQS: completion queues may live in the CMB (bit 1).
    pub const fn cqs(self) -> bool {
        self.0 & 2 != 0
    }
    /// CMBSZ.LISTS: PRP/SGL lists may live in the CMB (bit 2).
    pub const fn lists(self) -> bool {
        self.0 & 4 != 0
    }
    /// CMBSZ.RDS: read data may live in the CMB (bit 3).
    pub const fn rds(self) -> bool {
        self.0 & 8 != 0
    }
    /// CMBSZ.WDS: write data may live in the CMB (bit 4).
    pub const fn wds(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// CMBSZ.SZU: size unit (bits 11:8): 4 KiB × 16^SZU.
    pub const fn szu(self) -> u8 {
        bits32(self.0, 8, 4) as u8
    }
    /// CMBSZ.SZ: size in SZU units (bits 31:12).
    pub const fn sz(self) -> u32 {
        bits32(self.0, 12, 20)
    }
    /// The CMB size in bytes, or `None` if SZU is reserved or the size overflows.
    pub fn size_bytes(self) -> Option<u64> {
        let unit = 4096u64.checked_mul(16u64.checked_pow(self.szu() as u32)?)?;
        unit.checked_mul(self.sz() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP as QEMU 7.2's controller reports it (DESIGN.md): MQES 2047, CQR, TO 15,
    /// DSTRD 0, NVM command set, MPSMIN 0 (4 KiB), MPSMAX 4 (64 KiB).
    const QEMU_CAP: u64 = 0x0040_0020_0F01_07FF;

    #[test]
    fn cap_fields_decode_like_qemu_reports_them() {
        let cap = Cap(QEMU_CAP);
        assert_eq!(cap.mqes(), 0x7FF);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 15);
        assert_eq!(cap.ready_timeout(), Duration::from_millis(7500));
        assert_eq!(cap.dstrd(), 0);
        assert!(cap.supports_nvm_command_set());
        assert_eq!(cap.command_set_selection(), 0, "NVM alone");
        // QEMU 7.2 with its ZNS support: NVM, I/O command sets, admin only.
        let zns = Cap(QEMU_CAP | 0xC0 << 37);
        assert_eq!(zns.css(), 0xC1);
        assert!(zns.supports_io_command_sets());
        assert_eq!(zns.command_set_selection(), 0b110, "all I/O command sets: ZNS too");
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
    }

    #[test]
    fn doorbells_follow_the_stride() {
        let stride0 = Cap(0);
        assert_eq!(stride0.sq_tail_doorbell(0), 0x1000);
        assert_eq!(stride0.cq_head_doorbell(0), 0x1004);
        assert_eq!(stride0.sq_tail_doorbell(1), 0x1008);
        assert_eq!(stride0.cq_head_doorbell(1), 0x100C);
        let stride2 = Cap(2 << 32); // 16-byte stride
        assert_eq!(stride2.sq_tail_doorbell(0), 0x1000);
        assert_eq!(stride2.cq_head_doorbell(0), 0x1010);
        assert_eq!(stride2.sq_tail_doorbell(3), 0x1000 + 6 * 16);
        assert_eq!(stride2.cq_head_doorbell(3), 0x1000 + 7 * 16);
    }

    #[test]
    fn cc_builders_set_only_their_field() {
        let cc = Cc(0)
            .with_css(0)
            .with_mps(0)
            .with_ams(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_en(true);
        assert_eq!(cc.0, 0x0046_0001);
        assert!(cc.en());
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        let shut = cc.with_shn(ShutdownNotification::Normal);
        assert_eq!(shut.shn(), 1);
        assert_eq!(shut.0 & !(0x3 << 14), cc.0);
        assert_eq!(cc.with_mps(4).mps(), 4);
        assert!(!cc.with_en(false).en());
    }

    #[test]
    fn csts_decodes_shutdown_and_fatal() {
        assert!(Csts(1).rdy());
        assert!(Csts(2).cfs());
        assert_eq!(Csts(0b1000).shst(), ShutdownStatus::Complete);
        assert_eq!(Csts(0b0100).shst(), ShutdownStatus::Occurring);
        assert!(Csts(u32::MAX).is_all_ones());
    }

    #[test]
    fn aqa_is_zeros_based() {
        let aqa = Aqa::new(32, 32);
        assert_eq!(aqa.0, 0x001F_001F);
        assert_eq!(aqa.asqs(), 31);
        assert_eq!(aqa.acqs(), 31);
        assert_eq!(Aqa::new(4096, 4096).0, 0x0FFF_0FFF);
    }

    #[test]
    fn version_orders_and_prints() {
        let v = Vs(0x0001_0400);
        assert_eq!(v, Vs::new(1, 4, 0));
        assert_eq!(v.to_string(), "1.4.0");
        assert!(Vs::new(1, 3, 0) < v);
    }

    #[test]
    fn cmb_size_is_checked() {
        assert_eq!(Cmbsz(0x0000_1000 | 0x100).size_bytes(), Some(65536));
        assert_eq!(Cmbsz(u32::MAX).size_bytes(), None);
    }
}
