//! The register file (Base Specification 2.0, §3.1.3) and the CC.EN / CC.SHN state machine.

use super::state::{Cq, REG_LOG_LEN, Sq, State, ViolationKind};
use crate::regs::{Aqa, Cc, offset};

/// One register access, as recorded by [`super::SimController::register_log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegAccess {
    /// Whether it was a write.
    pub write: bool,
    /// Byte offset into BAR0.
    pub offset: u32,
    /// Access width in bytes: 4 or 8.
    pub width: u8,
    /// The value written, or the value the read returned.
    pub value: u64,
}

/// VS: NVMe 1.4.0, as QEMU 7.2 reports.
pub(super) const VERSION: u32 = 0x0001_0400;
/// CC fields the host may change while CC.EN = 1: EN and SHN.
const CC_LIVE_FIELDS: u32 = 1 | 0x3 << 14;

impl State {
    /// CAP as configured (§3.1.3.1): MQES, CQR, TO, DSTRD, CSS = NVM, MPSMIN, MPSMAX.
    pub(super) fn cap(&self) -> u64 {
        let c = &self.cfg;
        c.mqes as u64
            | (c.cqr as u64) << 16
            | (c.cap_to as u64) << 24
            | (c.dstrd as u64 & 0xF) << 32
            | 1u64 << 37
            | (c.mpsmin as u64 & 0xF) << 48
            | (c.mpsmax as u64 & 0xF) << 52
    }

    fn csts(&self) -> u32 {
        self.ready.value() as u32 | ((self.cfs || self.fatal) as u32) << 1 | (self.shst as u32 & 0x3) << 2
    }

    /// One past the last doorbell byte.
    fn bar_end(&self) -> u64 {
        offset::DOORBELL_BASE as u64 + 2 * (self.cfg.max_io_queues as u64 + 1) * (4 << self.cfg.dstrd)
    }

    fn log_access(&mut self, write: bool, offset: u32, width: u8, value: u64) {
        if self.reg_log.len() == REG_LOG_LEN {
            self.reg_log.pop_front();
        }
        self.reg_log.push_back(RegAccess {
            write,
            offset,
            width,
            value,
        });
    }

    /// Checks alignment and range; records a violation and returns false if bad.
    fn check_access(&mut self, write: bool, offset: u32, width: u8) -> bool {
        let verb = if write { "write" } else { "read" };
        if offset % width as u32 != 0 {
            self.violation(
                ViolationKind::Protocol,
                format!("unaligned {width}-byte register {verb} at {offset:#x}"),
            );
            return false;
        }
        if offset as u64 + width as u64 > self.bar_end() {
            let end = self.bar_end();
            self.violation(
                ViolationKind::Protocol,
                format!("{width}-byte register {verb} at {offset:#x} is outside BAR0 (registers and doorbells end at {end:#x})"),
            );
            return false;
        }
        if offset >= offset::DOORBELL_BASE && (width != 4 || !write) {
            self.violation(
                ViolationKind::Protocol,
                format!(
                    "{width}-byte {verb} of doorbell register {offset:#x}; doorbells are written 32 bits at a time"
                ),
            );
            return false;
        }
        true
    }

    /// A register read of `width` bytes (4 or 8).
    pub(super) fn read_reg(&mut self, offset: u32, width: u8) -> u64 {
        let all_ones = if width == 8 { u64::MAX } else { u32::MAX as u64 };
        if self.removed || self.bar_dead || self.power.off {
            if offset < offset::DOORBELL_BASE {
                self.log_access(false, offset, width, all_ones);
            }
            return all_ones;
        }
        if !self.check_access(false, offset, width) {
            return 0;
        }
        let value = match (width, offset) {
            (4, _) => self.reg32(offset) as u64,
            (_, offset::CAP) => self.cap(),
            (_, offset::ASQ) => self.asq,
            (_, offset::ACQ) => self.acq,
            _ => {
                self.violation(
                    ViolationKind::Protocol,
                    format!("64-bit read of the 32-bit registers at {offset:#x}"),
                );
                self.reg32(offset) as u64 | (self.reg32(offset + 4) as u64) << 32
            }
        };
        self.log_access(false, offset, width, value);
        value
    }

    fn reg32(&self, off: u32) -> u32 {
        match off {
            0x00 => self.cap() as u32,
            0x04 => (self.cap() >> 32) as u32,
            offset::VS => VERSION,
            offset::INTMS | offset::INTMC => self.intms,
            offset::CC => self.cc.0,
            offset::CSTS => self.csts(),
            offset::AQA => self.aqa.0,
            0x28 => self.asq as u32,
            0x2C => (self.asq >> 32) as u32,
            0x30 => self.acq as u32,
            0x34 => (self.acq >> 32) as u32,
            // NSSR reads 0 (CAP.NSSRS = 0); CMBLOC/CMBSZ 0: no CMB; the rest is reserved
            // or optional and reads 0.
            _ => 0,
        }
    }

    /// A register write of `width` bytes (4 or 8).
    pub(super) fn write_reg(&mut self, offset: u32, width: u8, value: u64) {
        if offset < offset::DOORBELL_BASE {
            self.log_access(true, offset, width, value);
        }
        if self.removed || self.bar_dead || self.power.off || !self.check_access(true, offset, width) {
            return;
        }
        if offset >= offset::DOORBELL_BASE {
            let index = (offset - offset::DOORBELL_BASE) / (4 << self.cfg.dstrd);
            if (offset - offset::DOORBELL_BASE) % (4 << self.cfg.dstrd) != 0 {
                self.violation(
                    ViolationKind::Protocol,
                    format!(
                        "write to {offset:#x} falls between doorbells (stride {} bytes)",
                        4 << self.cfg.dstrd
                    ),
                );
                return;
            }
            self.doorbell(index, value as u32);
            return;
        }
        match (width, offset) {
            (4, _) => self.write32(offset, value as u32),
            (_, offset::CAP) => {
                self.violation(
                    ViolationKind::Protocol,
                    format!("write of {value:#x} to read-only register CAP"),
                );
            }
            (_, offset::ASQ | offset::ACQ) => {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
            _ => {
                self.violation(
                    ViolationKind::Protocol,
                    format!("64-bit write to the 32-bit registers at {offset:#x}"),
                );
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
        }
    }

    fn write32(&mut self, off: u32, v: u32) {
        let admin_queue_reg = matches!(off, offset::AQA | 0x28 | 0x2C | 0x30 | 0x34);
        if admin_queue_reg && self.cc.en() {
            self.violation(
                ViolationKind::Protocol,
                format!("admin queue register {off:#x} written while CC.EN = 1"),
            );
        }
        match off {
            offset::INTMS => self.intms |= v,
            offset::INTMC => self.intms &= !v,
            offset::CC => self.write_cc(Cc(v)),
            // CSTS: only NSSRO is writable (RW1C) and it is never set here. NSSR: no NVM
            // subsystem reset (CAP.NSSRS = 0), writes have no effect.
            offset::CSTS | offset::NSSR => {}
            offset::AQA => self.aqa = Aqa(v),
            0x28 => self.asq = (self.asq & !0xFFFF_FFFF) | v as u64,
            0x2C => self.asq = (self.asq & 0xFFFF_FFFF) | (v as u64) << 32,
            0x30 => self.acq = (self.acq & !0xFFFF_FFFF) | v as u64,
            0x34 => self.acq = (self.acq & 0xFFFF_FFFF) | (v as u64) << 32,
            0x00 | 0x04 | offset::VS | offset::CMBLOC | offset::CMBSZ => {
                self.violation(
                    ViolationKind::Protocol,
                    format!("write of {v:#x} to read-only register {off:#x}"),
                );
            }
            _ => self.violation(
                ViolationKind::Protocol,
                format!("write of {v:#x} to reserved or unimplemented register {off:#x}"),
            ),
        }
    }

    fn write_cc(&mut self, new: Cc) {
        let old = self.cc;
        self.cc = new;
        if old.en() && new.en() && (old.0 ^ new.0) & !CC_LIVE_FIELDS != 0 {
            self.violation(
                ViolationKind::Protocol,
                format!(
                    "CC changed from {:#x} to {:#x} while CC.EN = 1; only EN and SHN may change",
                    old.0, new.0
                ),
            );
        }
        if new.shn() != 0 && old.shn() == 0 {
            self.shutdown_notification();
        } else if new.shn() == 0 && old.shn() != 0 {
            self.shst = 0;
        }
        if !old.en() && new.en() {
            self.enable();
        } else if old.en() && !new.en() {
            self.disable();
        }
    }

    /// CC.SHN written: processing stops, the volatile write cache is written back (as a
    /// Flush of every namespace) and CSTS.SHST reports complete at once.
    fn shutdown_notification(&mut self) {
        self.flushed(None);
        self.shutdown = true;
        self.shst = 2;
        self.counters.shutdowns += 1;
    }

    /// CC.EN 0→1: validate the configuration and the admin queues, then create them.
    fn enable(&mut self) {
        if self.ready.value() {
            self.violation(
                ViolationKind::Protocol,
                "CC.EN set to 1 while CSTS.RDY is still 1: the host must wait for RDY = 0 after disabling".to_string(),
            );
        }
        let cc = self.cc;
        let mut why = Vec::new();
        if cc.iosqes() != 6 {
            why.push(format!("CC.IOSQES is {} (need 6: 64-byte entries)", cc.iosqes()));
        }
        if cc.iocqes() != 4 {
            why.push(format!("CC.IOCQES is {} (need 4: 16-byte entries)", cc.iocqes()));
        }
        if !(self.cfg.mpsmin..=self.cfg.mpsmax).contains(&cc.mps()) {
            why.push(format!(
                "CC.MPS {} is outside CAP.MPSMIN..=MPSMAX ({}..={})",
                cc.mps(),
                self.cfg.mpsmin,
                self.cfg.mpsmax
            ));
        }
        if cc.css() != 0 {
            why.push(format!(
                "CC.CSS is {} (only the NVM command set, 0, is supported)",
                cc.css()
            ));
        }
        if cc.ams() != 0 {
            why.push(format!("CC.AMS is {} (only round robin, 0, is supported)", cc.ams()));
        }
        let page = 4096u64 << cc.mps().min(15);
        let (sq_entries, cq_entries) = (self.aqa.asqs() as u32 + 1, self.aqa.acqs() as u32 + 1);
        for (name, size_name, base, entries, entry_size) in [
            ("ASQ", "AQA.ASQS", self.asq, sq_entries, 64u64),
            ("ACQ", "AQA.ACQS", self.acq, cq_entries, 16),
        ] {
            if entries < 2 {
                why.push(format!("{size_name} is 0 (a queue needs at least 2 entries)"));
            }
            if base == 0 || base % page != 0 {
                why.push(format!(
                    "{name} {base:#x} is not a non-zero multiple of the {page}-byte memory page"
                ));
            } else if let Err(f) = self.dma.check(base, entries as u64 * entry_size) {
                why.push(format!("{name} ring is not mapped: {f}"));
                self.violation(ViolationKind::Dma, format!("{name} at enable: {f}"));
            }
        }
        if !why.is_empty() {
            let msg = format!("CC.EN = 1 refused, CSTS.CFS set: {}", why.join("; "));
            self.violation(ViolationKind::Protocol, msg.clone());
            self.fail(msg);
            return;
        }
        self.page_size = page as usize;
        self.sqs[0] = Some(Sq {
            base: self.asq,
            size: sq_entries,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        // The admin CQ has interrupts enabled, always on vector 0.
        self.cqs[0] = Some(Cq::new(self.acq, cq_entries, Some(0)));
        self.enabled = true;
        self.cfs = false;
        self.shst = 0;
        // A hostile device may never become ready again.
        self.ready.go(!self.hostile.never_ready, self.cfg.ready_delay);
        self.hostile.ready_dropped = self.hostile.never_ready;
        self.counters.enables += 1;
    }

    /// CC.EN 1→0: a controller reset. Every queue and every held, delayed or pending
    /// command is forgotten without completion; CSTS.CFS clears; RDY drops after the
    /// configured delay.
    fn disable(&mut self) {
        self.enabled = false;
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.parked.clear();
        self.aers.clear();
        self.masked = [None; 8];
        self.features.reset(&self.cfg);
        self.cfs = false;
        self.fatal = false;
        self.shutdown = false;
        self.ready.go(false, self.cfg.ready_delay);
        self.counters.resets += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use super::super::{SimConfig, SimController};
    use super::*;
    use crate::hw::{DmaAllocator, Registers};
    use crate::regs::{Cap, Csts, ShutdownNotification, ShutdownStatus};
    use std::time::Duration;

    fn csts(sim: &SimController) -> Csts {
        Csts(sim.read32(offset::CSTS))
    }

    #[test]
    fn cap_and_version_describe_the_configuration() {
        let sim = SimController::new(SimConfig {
            dstrd: 2,
            mqes: 255,
            ..SimConfig::default()
        });
        let cap = Cap(sim.read64(offset::CAP));
        assert_eq!((cap.mqes(), cap.cqr(), cap.to(), cap.dstrd()), (255, true, 2, 2));
        assert!(cap.supports_nvm_command_set());
        assert_eq!((cap.mpsmin(), cap.mpsmax()), (0, 4));
        assert_eq!(
            sim.read32(0) as u64 | (sim.read32(4) as u64) << 32,
            cap.0,
            "32-bit halves agree"
        );
        assert_eq!(sim.read32(offset::VS), 0x0001_0400);
        assert_eq!(sim.read32(offset::CMBLOC), 0);
        assert_eq!(sim.read32(offset::CMBSZ), 0);
        assert!(sim.protocol_violations().is_empty());
    }

    #[test]
    fn enable_disable_and_csts() {
        let h = Harness::new();
        let sim = &h.sim;
        let st = csts(sim);
        assert!(st.rdy() && !st.cfs());
        assert_eq!(st.shst(), ShutdownStatus::Normal);
        let cc = Cc(sim.read32(offset::CC));
        sim.write32(offset::CC, cc.with_en(false).0);
        assert!(!csts(sim).rdy());
        assert_eq!(sim.stats().resets, 1);
        sim.write32(offset::CC, cc.0);
        assert!(csts(sim).rdy());
        assert_eq!(sim.stats().enables, 2);
        assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
    }

    #[test]
    fn ready_follows_enable_after_the_configured_delay() {
        let cfg = SimConfig {
            ready_delay: Duration::from_millis(100),
            ..SimConfig::default()
        };
        let sim = SimController::new(cfg);
        let dma = sim.dma();
        let (asq, acq) = (dma.allocate(4096).unwrap(), dma.allocate(4096).unwrap());
        sim.write32(offset::AQA, Aqa::new(2, 2).0);
        sim.write64(offset::ASQ, asq.iova());
        sim.write64(offset::ACQ, acq.iova());
        let cc = Harness::cc();
        sim.write32(offset::CC, cc.0);
        assert!(!csts(&sim).rdy(), "not ready at once");
        sim.write32(Cap(sim.read64(0)).sq_tail_doorbell(0), 0);
        assert!(
            sim.protocol_violations().iter().any(|v| v.contains("CSTS.RDY is 0")),
            "doorbell before ready is caught"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(csts(&sim).rdy());
        sim.write32(offset::CC, cc.with_en(false).0);
        assert!(csts(&sim).rdy(), "RDY lingers after EN = 0");
        std::thread::sleep(Duration::from_millis(120));
        assert!(!csts(&sim).rdy());
    }

    #[test]
    fn shutdown_completes_and_stops_processing() {
        let mut h = Harness::new();
        let cc = Cc(h.sim.read32(offset::CC));
        h.sim.write32(offset::CC, cc.with_shn(ShutdownNotification::Normal).0);
        assert_eq!(csts(&h.sim).shst(), ShutdownStatus::Complete);
        assert_eq!(h.sim.stats().shutdowns, 1);
        let cid = h.submit_admin(crate::Command::keep_alive());
        assert!(h.poll_admin().is_none(), "CID {cid} is not processed after shutdown");
        assert!(h.sim.protocol_violations().iter().any(|v| v.contains("shutdown")));
        h.sim.write32(offset::CC, cc.with_en(false).0);
        assert_eq!(csts(&h.sim).shst(), ShutdownStatus::Normal, "clearing SHN clears SHST");
    }

    #[test]
    fn bad_cc_sets_cfs_and_says_why() {
        let h = Harness::attach(SimController::new(SimConfig::default()));
        h.sim.write32(offset::AQA, Aqa::new(4, 4).0);
        h.sim.write64(offset::ASQ, h.asq.iova());
        h.sim.write64(offset::ACQ, h.acq.iova());
        h.sim.write32(offset::CC, Harness::cc().with_iocqes(6).with_mps(5).0);
        let st = csts(&h.sim);
        assert!(st.cfs() && !st.rdy());
        let why = h.sim.last_error().unwrap();
        assert!(why.contains("IOCQES") && why.contains("MPS"), "{why}");
        h.sim.write32(offset::CC, 0);
        assert!(!csts(&h.sim).cfs(), "disable clears CFS");
    }

    #[test]
    fn unmapped_admin_queue_sets_cfs() {
        let sim = SimController::new(SimConfig::default());
        let freed = sim.dma().allocate(4096).unwrap().iova(); // dropped at once
        sim.write32(offset::AQA, Aqa::new(4, 4).0);
        sim.write64(offset::ASQ, freed);
        sim.write64(offset::ACQ, 0x7000_0000);
        sim.write32(offset::CC, Harness::cc().0);
        assert!(csts(&sim).cfs());
        let dma = sim.dma_violations();
        assert_eq!(dma.len(), 2, "{dma:?}");
        assert!(dma[0].contains("ASQ") && dma[0].contains("freed"), "{dma:?}");
        assert!(sim.last_error().unwrap().contains("ACQ ring is not mapped"));
    }

    #[test]
    fn register_mistakes_are_recorded_not_panicked() {
        let sim = SimController::new(SimConfig::default());
        assert_eq!(sim.read32(0x15), 0);
        sim.write32(offset::VS, 1);
        sim.write32(0x0001_0000, 1);
        let _ = sim.read64(offset::VS);
        sim.write32(0x1002, 1);
        sim.write64(offset::CAP, 0);
        let v = sim.protocol_violations();
        assert_eq!(v.len(), 6, "{v:?}");
        assert!(v[5].contains("read-only register CAP"), "{v:?}");
        assert!(
            v[0].contains("unaligned") && v[1].contains("read-only") && v[2].contains("outside BAR0"),
            "{v:?}"
        );
        assert!(v[3].contains("64-bit read"), "{v:?}");
    }

    #[test]
    fn the_largest_doorbell_space_does_not_overflow() {
        let sim = SimController::new(SimConfig {
            dstrd: 15,
            max_io_queues: u16::MAX,
            ..SimConfig::default()
        });
        assert_eq!(sim.read32(0xFFFF_FFFC), 0);
        sim.write32(0xFFFF_FFFC, 1);
        assert_eq!(
            sim.protocol_violations().len(),
            2,
            "a doorbell read, a write between doorbells"
        );
    }

    #[test]
    fn register_log_records_non_doorbell_accesses_in_order() {
        let h = Harness::new();
        let log = h.sim.register_log();
        let cc_write = log
            .iter()
            .position(|a| a.write && a.offset == offset::CC)
            .expect("CC written");
        let asq_write = log
            .iter()
            .position(|a| a.write && a.offset == offset::ASQ)
            .expect("ASQ written");
        assert!(asq_write < cc_write, "admin queues are set up before enabling");
        assert!(
            log[cc_write + 1..]
                .iter()
                .any(|a| !a.write && a.offset == offset::CSTS && a.value & 1 == 1)
        );
        assert!(log.iter().all(|a| a.offset < offset::DOORBELL_BASE));
        assert_eq!(log.iter().find(|a| a.offset == offset::ASQ).unwrap().width, 8);
        h.sim.clear_register_log();
        assert!(h.sim.register_log().is_empty());
    }

    #[test]
    fn interrupt_mask_registers_set_and_clear() {
        let sim = SimController::new(SimConfig::default());
        sim.write32(offset::INTMS, 0b101);
        sim.write32(offset::INTMC, 0b001);
        assert_eq!(sim.read32(offset::INTMS), 0b100);
        sim.write32(offset::NSSR, crate::regs::NSSR_RESET_VALUE);
        assert!(sim.protocol_violations().is_empty());
    }
}
