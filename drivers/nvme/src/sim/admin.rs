//! Admin commands (Base Specification 2.0, §5): Identify, logs, features, I/O queue
//! management, Abort, Asynchronous Event Request and Format NVM.
//!
//! Firmware Image Download / Commit, Keep Alive, Namespace Management / Attachment,
//! Sanitize, Device Self-test, Security Send / Receive and Doorbell Buffer Config are
//! Invalid Command Opcode. QEMU 7.2 rejects most of these the same way; it does implement
//! Doorbell Buffer Config (shadow doorbells), which the simulator does not.

use super::identify_data as id;
use super::state::{Cq, Outcome, ParkKind, Sq, State};
use crate::cmd::{Command, admin};
use crate::identify::Cns;
use crate::log::LogPageId;
use crate::status::Status;

/// The broadcast NSID.
const NSID_ALL: u32 = u32::MAX;

impl State {
    /// Executes an admin command.
    pub(super) fn admin(&mut self, cmd: &Command) -> Outcome {
        if cmd.psdt() != 0 || (cmd.cdw0 >> 8) & 0x3 != 0 {
            // Admin commands must use PRPs (as on QEMU); fused operations are unsupported.
            return Outcome::Done(Status::INVALID_FIELD, 0);
        }
        let r = match cmd.opcode() {
            admin::IDENTIFY => self.identify(cmd),
            admin::GET_LOG_PAGE => self.get_log_page(cmd),
            admin::GET_FEATURES => self.get_features(cmd),
            admin::SET_FEATURES => self.set_features(cmd),
            admin::CREATE_IO_CQ => self.create_io_cq(cmd),
            admin::CREATE_IO_SQ => self.create_io_sq(cmd),
            admin::DELETE_IO_SQ => self.delete_io_sq(cmd),
            admin::DELETE_IO_CQ => self.delete_io_cq(cmd),
            admin::ABORT => Ok(self.abort(cmd)),
            admin::ASYNC_EVENT_REQUEST => return self.aer(cmd),
            admin::FORMAT_NVM => self.format_nvm(cmd),
            admin::NAMESPACE_ATTACHMENT => self.namespace_attachment(cmd),
            _ => Err(Status::INVALID_OPCODE),
        };
        Outcome::from(r)
    }

    /// Identify (§5.17).
    fn identify(&mut self, cmd: &Command) -> Result<u32, Status> {
        let nsid = cmd.nsid;
        let nn = self.namespaces.len() as u32;
        let mut data = match Cns(cmd.cdw10 as u8) {
            Cns::CONTROLLER => id::controller(&self.cfg),
            Cns::NAMESPACE | Cns::NAMESPACE_ID_DESCRIPTORS => {
                if nsid == 0 || nsid > nn {
                    return Err(Status::INVALID_NAMESPACE_OR_FORMAT);
                }
                let ns = &self.namespaces[nsid as usize - 1];
                match Cns(cmd.cdw10 as u8) {
                    Cns::NAMESPACE => id::namespace(ns, &self.cfg.serial, nsid),
                    _ if ns.is_active() => id::descriptors(&self.cfg.serial, nsid),
                    _ => vec![0; id::IDENTIFY_LEN],
                }
            }
            Cns::ACTIVE_NAMESPACE_LIST => {
                if nsid >= 0xFFFF_FFFE {
                    return Err(Status::INVALID_NAMESPACE_OR_FORMAT);
                }
                id::active_list(&self.namespaces, nsid)
            }
            _ => return Err(Status::INVALID_FIELD),
        };
        if let Some(lie) = self.hostile.identify_lie {
            super::hostile::lie_in_identify(lie, Cns(cmd.cdw10 as u8), &mut data);
        }
        self.map(0, cmd, data.len() as u64)?;
        self.copy_out(0, cmd, &data)?;
        Ok(0)
    }

    /// Checks a Create I/O queue command's QSIZE, PC and base address. `entry` is the entry
    /// size in bytes.
    fn check_new_queue(&mut self, cmd: &Command, entry: u64) -> Result<(u64, u32), Status> {
        let qsize = cmd.cdw10 >> 16;
        if qsize == 0 || qsize > self.cfg.mqes as u32 {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        if cmd.cdw11 & 1 == 0 {
            // PC = 0: queues described by a PRP list. CAP.CQR forbids it; the simulator
            // does not implement it either way.
            return Err(Status::INVALID_FIELD);
        }
        let base = cmd.dptr[0];
        if base == 0 || base % self.page_size as u64 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        let size = qsize + 1;
        if let Err(f) = self.dma.check(base, size as u64 * entry) {
            return Err(self.dma_failed(0, cmd, "queue memory", f));
        }
        Ok((base, size))
    }

    /// Create I/O Completion Queue (§5.4).
    fn create_io_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = cmd.cdw10 as u16;
        let (_, allowed) = self.features.allowed_queues(&self.cfg);
        if qid == 0 || qid > allowed || self.cqs[qid as usize].is_some() {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let (base, size) = self.check_new_queue(cmd, 16)?;
        // IEN (CDW11 bit 1) and IV (bits 31:16): a vector the controller does not have is
        // refused.
        let vector = (cmd.cdw11 & 0b10 != 0).then_some((cmd.cdw11 >> 16) as u16);
        if vector.is_some_and(|v| v >= crate::hw::InterruptVectors::count(&*self.interrupts)) {
            return Err(Status::INVALID_INTERRUPT_VECTOR);
        }
        self.cqs[qid as usize] = Some(Cq::new(base, size, vector));
        Ok(0)
    }

    /// Create I/O Submission Queue (§5.5).
    fn create_io_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = cmd.cdw10 as u16;
        let cqid = (cmd.cdw11 >> 16) as u16;
        let (allowed, _) = self.features.allowed_queues(&self.cfg);
        if qid == 0 || qid > allowed || self.sqs[qid as usize].is_some() {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        if cqid == 0 || self.cqs.get(cqid as usize).is_none_or(Option::is_none) {
            return Err(Status::COMPLETION_QUEUE_INVALID);
        }
        let (base, size) = self.check_new_queue(cmd, 64)?;
        self.sqs[qid as usize] = Some(Sq {
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
        });
        Ok(0)
    }

    /// Delete I/O Submission Queue (§5.7): commands still held on it complete with Command
    /// Aborted due to SQ Deletion first (Lost ones vanish).
    fn delete_io_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.sqs.get(qid as usize).is_none_or(Option::is_none) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let (mine, rest): (Vec<_>, Vec<_>) = self.parked.drain(..).partition(|p| p.sqid == qid);
        self.parked = rest;
        for p in mine.into_iter().filter(|p| p.kind != ParkKind::Lost) {
            self.finish(qid, &p.cmd, Status::ABORTED_SQ_DELETION, 0);
        }
        self.sqs[qid as usize] = None;
        Ok(0)
    }

    /// Delete I/O Completion Queue (§5.6).
    fn delete_io_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.cqs.get(qid as usize).is_none_or(Option::is_none) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        if self.sqs.iter().flatten().any(|sq| sq.cqid == qid) {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        self.cqs[qid as usize] = None;
        Ok(0)
    }

    /// Abort (§5.1): DW0 bit 0 is 0 when the command was aborted, 1 when not.
    fn abort(&mut self, cmd: &Command) -> u32 {
        if !self.cfg.abort_works {
            return 1; // QEMU 7.2: Abort never aborts anything
        }
        let (sqid, cid) = (cmd.cdw10 as u16, (cmd.cdw10 >> 16) as u16);
        match self.take_abortable(sqid, cid) {
            Some(victim) => {
                self.finish(victim.sqid, &victim.cmd, Status::ABORT_REQUESTED, 0);
                0
            }
            None => 1,
        }
    }

    /// Namespace Attachment (§5.22), as QEMU 7.2's `nvme_ns_attachment`: the controller
    /// list must name this controller (CNTLID 0); each change adds the NSID to the Changed
    /// Namespace List and, when it was not there yet, raises a Namespace Attribute Changed
    /// event.
    fn namespace_attachment(&mut self, cmd: &Command) -> Result<u32, Status> {
        let nsid = cmd.nsid;
        let nn = self.namespaces.len() as u32;
        if nsid == 0 || nsid > nn {
            return Err(Status::INVALID_NAMESPACE_OR_FORMAT);
        }
        if !self.namespaces[nsid as usize - 1].is_allocated() {
            return Err(Status::INVALID_FIELD);
        }
        self.map(0, cmd, crate::cmd::CONTROLLER_LIST_BYTES as u64)?;
        self.copy_in(0, cmd, crate::cmd::CONTROLLER_LIST_BYTES)?;
        let count = u16::from_le_bytes([self.scratch[0], self.scratch[1]]) as usize;
        let ids: Vec<u16> = (0..count.min(crate::cmd::MAX_CONTROLLER_IDS))
            .map(|i| u16::from_le_bytes([self.scratch[2 + 2 * i], self.scratch[3 + 2 * i]]))
            .collect();
        if ids.is_empty() || ids.iter().any(|&id| id != 0) {
            return Err(Status::CONTROLLER_LIST_INVALID);
        }
        let ns = &mut self.namespaces[nsid as usize - 1];
        match (cmd.cdw10 & 0xF, ns.attached) {
            (0, true) => return Err(Status::NAMESPACE_ALREADY_ATTACHED),
            (1, false) => return Err(Status::NAMESPACE_NOT_ATTACHED),
            (0, false) => ns.attached = true,
            (1, true) => ns.attached = false,
            _ => return Err(Status::INVALID_FIELD),
        }
        if self.changed_nsids.insert(nsid) {
            self.async_event(2 | u32::from(LogPageId::CHANGED_NAMESPACE_LIST.0) << 16);
        }
        Ok(0)
    }

    /// Format NVM (§5.23): LBA format 0 (512-byte blocks) or 1 (4096-byte blocks), keeping
    /// the capacity in bytes and erasing the data. The erase is durable at completion: a
    /// later power cut loses none of the namespace's earlier writes either.
    fn format_nvm(&mut self, cmd: &Command) -> Result<u32, Status> {
        let lbaf = (cmd.cdw10 & 0xF) | ((cmd.cdw10 >> 12) & 0x3) << 4;
        let pi = (cmd.cdw10 >> 5) & 0x7;
        let ses = (cmd.cdw10 >> 9) & 0x7;
        let nsid = cmd.nsid;
        let nn = self.namespaces.len() as u32;
        let valid_ns = nsid == NSID_ALL || (1..=nn).contains(&nsid) && self.namespaces[nsid as usize - 1].is_active();
        if !valid_ns {
            return Err(Status::INVALID_NAMESPACE_OR_FORMAT);
        }
        if lbaf > 1 || pi != 0 {
            return Err(Status::INVALID_FORMAT);
        }
        if ses > 1 {
            return Err(Status::INVALID_FIELD); // no cryptographic erase (FNA bit 2 clear)
        }
        let block_size = if lbaf == 0 { 512 } else { 4096 };
        for (i, ns) in self.namespaces.iter_mut().enumerate() {
            if ns.is_active() && (nsid == NSID_ALL || nsid as usize == i + 1) {
                // A recording of the namespace logs the erase as a durable deallocation of
                // every block and a Flush; a new block size ends the recording (the log's
                // units would change), and take_write_log returns it as it was.
                if let Some(log) = self.power.recording(i) {
                    log.entries.push(crate::crash::LoggedWrite {
                        op: crate::crash::LogOp::Deallocate,
                        slba: 0,
                        nlb: ns.blocks,
                        data: Vec::new(),
                        durable: true,
                    });
                    log.entries.push(crate::crash::LoggedWrite::flush());
                    if let Some(r) = self.power.recording.as_mut().filter(|_| block_size != ns.block_size) {
                        r.open = false;
                    }
                }
                ns.format(block_size);
                self.power.forget_namespace(i);
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use super::super::{SimConfig, SimNamespace};
    use crate::cmd::Command;
    use crate::identify::{Cns, IdentifyController, IdentifyNamespace};
    use crate::status::Status;

    use crate::parse::{le16, le32, le64};

    #[test]
    fn identify_controller_layout() {
        let mut h = Harness::with(SimConfig {
            serial: "SIM123".into(),
            ..SimConfig::default()
        });
        let (c, b) = h.admin_read(Command::identify(Cns::CONTROLLER, 0, 0), 4096);
        assert_eq!(c.status(), Status::SUCCESS);
        assert_eq!((le16(&b, 0), le16(&b, 2)), (0x1b36, 0x1af4));
        assert_eq!(&b[4..24], b"SIM123              ");
        assert_eq!(&b[24..38], b"QEMU NVMe Ctrl");
        assert_eq!(&b[64..72], b"1.0     ");
        assert_eq!((b[72], &b[73..76]), (6, &[0x00, 0x54, 0x52][..]));
        assert_eq!(b[77], 7, "MDTS");
        assert_eq!(le32(&b, 80), 0x0001_0400, "VER");
        assert_eq!(le32(&b, 92), 0x100, "OAES");
        assert_eq!(le16(&b, 256), 0x000E, "OACS");
        assert_eq!(
            (b[258], b[259], b[260], b[262], b[263]),
            (3, 3, 0x03, 63, 0),
            "ACL AERL FRMW ELPE NPSS"
        );
        assert_eq!((b[512], b[513]), (0x66, 0x44), "SQES CQES");
        assert_eq!(le16(&b, 514), 2048, "MAXCMD");
        assert_eq!(le32(&b, 516), 1, "NN");
        assert_eq!(le16(&b, 520), 0x00CD, "ONCS");
        assert_eq!(b[525], 0x07, "VWC");
        assert_eq!(le32(&b, 536), 1, "SGLS");
        assert_eq!(&b[768..768 + 26], b"nqn.2019-08.org.qemu:SIM123"[..26].as_ref());
        assert_eq!(b[768 + 27], 0);
        let parsed = IdentifyController::parse(&b).unwrap();
        assert_eq!((parsed.sn.as_str(), parsed.mdts, parsed.nn), ("SIM123", 7, 1));
        assert!(parsed.sgl_supported() && parsed.vwc_present());
        assert_eq!(parsed.max_transfer_bytes(4096), Some(512 * 1024));
    }

    #[test]
    fn identify_namespace_layout() {
        let cfg = SimConfig {
            namespaces: vec![
                SimNamespace::new(512, 1000),
                SimNamespace::INACTIVE,
                SimNamespace::new(4096, 64),
            ],
            ..SimConfig::default()
        };
        let mut h = Harness::with(cfg);
        let (c, b) = h.admin_read(Command::identify(Cns::NAMESPACE, 1, 0), 4096);
        assert_eq!(c.status(), Status::SUCCESS);
        assert_eq!(
            (le64(&b, 0), le64(&b, 8), le64(&b, 16)),
            (1000, 1000, 1000),
            "NSZE NCAP NUSE"
        );
        assert_eq!((b[25], b[26]), (1, 0), "NLBAF FLBAS");
        assert_eq!((b[27], b[28], b[29]), (0, 0, 0), "MC DPC DPS");
        assert_eq!((le32(&b, 128), le32(&b, 132)), (9 << 16, 12 << 16), "LBAF0 LBAF1");
        let (_, b3) = h.admin_read(Command::identify(Cns::NAMESPACE, 3, 0), 4096);
        assert_eq!((le64(&b3, 0), b3[26]), (64, 1));
        let parsed = IdentifyNamespace::parse(&b3).unwrap();
        assert_eq!(
            (parsed.block_size(), parsed.capacity_bytes()),
            (Some(4096), Some(64 * 4096))
        );
        let (c, inactive) = h.admin_read(Command::identify(Cns::NAMESPACE, 2, 0), 4096);
        assert_eq!(c.status(), Status::SUCCESS);
        assert!(inactive.iter().all(|&x| x == 0), "inactive NSID reads as zeros");
        for bad in [0, 4, u32::MAX] {
            let c = h.admin(Command::identify(Cns::NAMESPACE, bad, 0));
            assert_eq!(c.status(), Status::INVALID_NAMESPACE_OR_FORMAT, "NSID {bad:#x}");
        }
        let (_, list) = h.admin_read(Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 0, 0), 4096);
        assert_eq!((le32(&list, 0), le32(&list, 4), le32(&list, 8)), (1, 3, 0));
        let (_, list) = h.admin_read(Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 1, 0), 4096);
        assert_eq!((le32(&list, 0), le32(&list, 4)), (3, 0));
        let (_, d) = h.admin_read(Command::identify(Cns::NAMESPACE_ID_DESCRIPTORS, 1, 0), 4096);
        assert_eq!((d[0], d[1]), (1, 8), "EUI64");
        assert_eq!(&d[4..12], &b[120..128], "same EUI64 as Identify Namespace");
        assert_eq!((d[12], d[13]), (2, 16), "NGUID");
        assert_eq!((d[32], d[33]), (3, 16), "UUID");
        assert_eq!((d[52], d[53], d[56]), (4, 1, 0), "CSI: NVM");
        assert_eq!(
            h.admin(Command::identify(Cns(0x10), 0, 0)).status(),
            Status::INVALID_FIELD
        );
    }

    #[test]
    fn admin_commands_must_use_prps() {
        let mut h = Harness::new();
        let buf = h.dma_buf(4096);
        let mut cmd = Command::identify(Cns::CONTROLLER, 0, 0);
        cmd.set_sgl(crate::sgl::SglDescriptor::data_block(buf.iova(), 4096));
        assert_eq!(h.admin(cmd).status(), Status::INVALID_FIELD);
    }

    #[test]
    fn unsupported_admin_commands_are_invalid_opcodes() {
        let mut h = Harness::new();
        for cmd in [
            Command::firmware_image_download(0, 4096).unwrap(),
            Command::firmware_commit(1, 1, false),
            Command::keep_alive(),
            Command::doorbell_buffer_config(0, 0),
            Command::new(crate::cmd::admin::NAMESPACE_MANAGEMENT),
            Command::new(crate::cmd::admin::SANITIZE),
        ] {
            assert_eq!(h.admin(cmd).status(), Status::INVALID_OPCODE, "{}", cmd.name(true));
        }
    }

    #[test]
    fn create_io_cq_errors() {
        let mut h = Harness::new();
        let mem = h.dma_buf(16 * 1024);
        let iova = mem.iova();
        let create = |qid, entries, iova, pc| Command::create_io_cq(qid, entries, iova, pc, None);
        assert_eq!(
            h.admin(create(0, 16, iova, true)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
        assert_eq!(
            h.admin(create(65, 16, iova, true)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
        assert_eq!(h.admin(create(1, 1, iova, true)).status(), Status::INVALID_QUEUE_SIZE);
        assert_eq!(
            h.admin(create(1, 2049, iova, true)).status(),
            Status::INVALID_QUEUE_SIZE
        );
        assert_eq!(
            h.admin(create(1, 16, iova, false)).status(),
            Status::INVALID_FIELD,
            "CAP.CQR needs PC"
        );
        assert_eq!(
            h.admin(create(1, 16, iova + 512, true)).status(),
            Status::PRP_OFFSET_INVALID
        );
        assert_eq!(
            h.admin(create(1, 2048, iova, true)).status(),
            Status::DATA_TRANSFER_ERROR,
            "32 KiB ring in 16 KiB"
        );
        assert_eq!(h.sim.dma_violations().len(), 1);
        // 64 I/O queues: vectors 0..=64.
        assert_eq!(
            h.admin(Command::create_io_cq(1, 16, iova, true, Some(65))).status(),
            Status::INVALID_INTERRUPT_VECTOR
        );
        assert_eq!(h.admin(create(1, 16, iova, true)).status(), Status::SUCCESS);
        assert_eq!(
            h.admin(create(1, 16, iova, true)).status(),
            Status::INVALID_QUEUE_IDENTIFIER,
            "exists"
        );
    }

    #[test]
    fn create_io_sq_errors() {
        let mut h = Harness::new();
        let mem = h.dma_buf(4096);
        let cq = h.dma_buf(4096);
        let sq = |qid, entries, cqid| Command::create_io_sq(qid, entries, mem.iova(), true, 0, cqid);
        assert_eq!(
            h.admin(Command::create_io_cq(1, 16, cq.iova(), true, None)).status(),
            Status::SUCCESS
        );
        assert_eq!(h.admin(sq(0, 16, 1)).status(), Status::INVALID_QUEUE_IDENTIFIER);
        assert_eq!(h.admin(sq(1, 16, 2)).status(), Status::COMPLETION_QUEUE_INVALID);
        assert_eq!(
            h.admin(sq(1, 16, 0)).status(),
            Status::COMPLETION_QUEUE_INVALID,
            "not the admin CQ"
        );
        assert_eq!(
            h.admin(sq(1, 0x10001, 1)).status(),
            Status::INVALID_QUEUE_SIZE,
            "QSIZE wraps to 0"
        );
        let mut no_pc = sq(1, 16, 1);
        no_pc.cdw11 &= !1;
        assert_eq!(h.admin(no_pc).status(), Status::INVALID_FIELD);
        assert_eq!(h.admin(sq(1, 16, 1)).status(), Status::SUCCESS);
        assert_eq!(
            h.admin(sq(1, 16, 1)).status(),
            Status::INVALID_QUEUE_IDENTIFIER,
            "exists"
        );
        // Deleting in the wrong order is refused.
        assert_eq!(
            h.admin(Command::delete_io_cq(1)).status(),
            Status::INVALID_QUEUE_DELETION
        );
        assert_eq!(h.admin(Command::delete_io_sq(1)).status(), Status::SUCCESS);
        assert_eq!(
            h.admin(Command::delete_io_sq(1)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
        assert_eq!(
            h.admin(Command::delete_io_sq(0)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
        assert_eq!(h.admin(Command::delete_io_cq(1)).status(), Status::SUCCESS);
        assert_eq!(
            h.admin(Command::delete_io_cq(1)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
    }

    #[test]
    fn async_events_wait_for_a_request_and_respect_the_limit() {
        let mut h = Harness::new();
        h.sim.raise_async_event(0x2, 0x1, 0x02); // queued: no AER outstanding
        let first = h.admin(Command::async_event_request());
        assert_eq!(
            (first.status(), first.dw0),
            (Status::SUCCESS, 0x2 | 0x1 << 8 | 0x02 << 16)
        );
        let cids: Vec<u16> = (0..4).map(|_| h.submit_admin(Command::async_event_request())).collect();
        assert!(h.poll_admin().is_none(), "AERs wait");
        assert_eq!(
            h.admin(Command::async_event_request()).status(),
            Status::AER_LIMIT_EXCEEDED
        );
        // A critical warning alone raises nothing; the test raises the event it wants.
        h.sim.set_critical_warning(0x02);
        assert!(h.poll_admin().is_none());
        h.sim.raise_async_event(0x1, 0x1, 0x02);
        let ev = h.poll_admin().expect("SMART event");
        assert_eq!((ev.cid, ev.dw0), (cids[0], 0x01 | 0x01 << 8 | 0x02 << 16));
        // A reset drops outstanding requests without completing them.
        h.reset();
        h.sim.raise_async_event(0x0, 0x0, 0x01);
        assert!(h.poll_admin().is_none());
        assert_eq!(
            h.admin(Command::async_event_request()).dw0,
            0x01 << 16,
            "the event waited for a new request"
        );
    }

    #[test]
    fn format_changes_the_block_size_and_erases() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let mut buf = h.dma_buf(4096);
        buf.as_mut_slice().fill(0xAB);
        assert!(io.write_prp(&h.sim, 0, &buf, 8).status().is_success());
        assert_eq!(
            h.admin(Command::format_nvm(1, 2, 0, 0, false, false)).status(),
            Status::INVALID_FORMAT
        );
        assert_eq!(
            h.admin(Command::format_nvm(1, 1, 0, 1, false, false)).status(),
            Status::INVALID_FORMAT,
            "no PI"
        );
        assert_eq!(
            h.admin(Command::format_nvm(2, 1, 0, 0, false, false)).status(),
            Status::INVALID_NAMESPACE_OR_FORMAT
        );
        assert_eq!(
            h.admin(Command::format_nvm(1, 1, 1, 0, false, false)).status(),
            Status::SUCCESS
        );
        let (_, b) = h.admin_read(Command::identify(Cns::NAMESPACE, 1, 0), 4096);
        assert_eq!((le64(&b, 0), b[26]), (4096, 1), "16 MiB of 4 KiB blocks");
        assert!(h.sim.namespace_data(1).iter().all(|&x| x == 0));
        assert_eq!(io.read_prp(&h.sim, 4095, &buf, 1).status(), Status::SUCCESS);
        assert_eq!(io.read_prp(&h.sim, 4096, &buf, 1).status(), Status::LBA_OUT_OF_RANGE);
    }
}
