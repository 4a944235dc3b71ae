//! Get Log Page (Base Specification 2.0, §5.16): Error Information, SMART / Health
//! Information and Firmware Slot Information. Other log identifiers are Invalid Log Page.

use super::identify_data::{ELPE, TEMPERATURE_KELVIN};
use super::state::State;
use crate::cmd::{Command, nvm};
use crate::log::LogPageId;
use crate::status::Status;
use std::collections::VecDeque;

/// Size of one Error Information entry in bytes.
const ERROR_ENTRY_LEN: usize = 64;

/// One error the controller returned.
#[derive(Clone, Copy, Debug)]
struct ErrorEntry {
    count: u64,
    sqid: u16,
    cid: u16,
    /// Status field as in the log: phase tag in bit 0, status in bits 15:1.
    status_field: u16,
    lba: u64,
    nsid: u32,
}

/// The errors the controller returned, newest first, ELPE + 1 of them at most.
#[derive(Debug, Default)]
pub(super) struct ErrorLog {
    entries: VecDeque<ErrorEntry>,
    count: u64,
}

impl ErrorLog {
    /// Records a failing completion of `cmd` from SQ `sqid`.
    pub(super) fn record(&mut self, sqid: u16, cmd: &Command, status: Status, phase: bool) {
        self.count += 1;
        let lba = match cmd.opcode() {
            nvm::READ | nvm::WRITE | nvm::COMPARE | nvm::VERIFY | nvm::WRITE_ZEROES if sqid != 0 => cmd.slba(),
            _ => 0,
        };
        if self.entries.len() == ELPE as usize + 1 {
            self.entries.pop_back();
        }
        self.entries.push_front(ErrorEntry {
            count: self.count,
            sqid,
            cid: cmd.cid(),
            status_field: status.raw() << 1 | phase as u16,
            lba,
            nsid: cmd.nsid,
        });
    }

    /// Errors recorded since the controller was created.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The Error Information log page: (ELPE + 1) 64-byte entries (Figure 205).
    fn page(&self) -> Vec<u8> {
        let mut b = vec![0u8; (ELPE as usize + 1) * ERROR_ENTRY_LEN];
        for (e, out) in self.entries.iter().zip(b.chunks_exact_mut(ERROR_ENTRY_LEN)) {
            out[0..8].copy_from_slice(&e.count.to_le_bytes());
            out[8..10].copy_from_slice(&e.sqid.to_le_bytes());
            out[10..12].copy_from_slice(&e.cid.to_le_bytes());
            out[12..14].copy_from_slice(&e.status_field.to_le_bytes());
            out[14..16].copy_from_slice(&0xFFFFu16.to_le_bytes()); // parameter error location: n/a
            out[16..24].copy_from_slice(&e.lba.to_le_bytes());
            out[24..28].copy_from_slice(&e.nsid.to_le_bytes());
        }
        b
    }
}

fn put128(b: &mut [u8], at: usize, v: u128) {
    b[at..at + 16].copy_from_slice(&v.to_le_bytes());
}

impl State {
    /// SMART / Health Information (Figure 207), 512 bytes.
    fn smart_page(&self) -> Vec<u8> {
        let h = &self.health;
        // Data units are thousands of 512-byte units, rounded up.
        let units = |bytes: u64| (bytes / 512).div_ceil(1000) as u128;
        let mut b = vec![0u8; 512];
        b[0] = h.critical_warning;
        b[1..3].copy_from_slice(&TEMPERATURE_KELVIN.to_le_bytes());
        b[3] = 100; // available spare, %
        b[4] = 10; // available spare threshold, %
        b[5] = 0; // percentage used
        put128(&mut b, 32, units(h.bytes_read));
        put128(&mut b, 48, units(h.bytes_written));
        put128(&mut b, 64, h.read_commands as u128);
        put128(&mut b, 80, h.write_commands as u128);
        put128(&mut b, 112, 1); // power cycles
        put128(&mut b, 128, (self.created.elapsed().as_secs() / 3600) as u128); // power on hours
        put128(&mut b, 176, self.errors.count() as u128); // error information log entries
        b
    }

    /// Firmware Slot Information (Figure 210), 512 bytes: slot 1 active.
    fn firmware_page(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 1; // AFI: slot 1 active, no pending activation
        super::identify_data::put_ascii(&mut b, 8, 8, &self.cfg.firmware);
        b
    }

    /// The Changed Namespace List (log 04h, §5.16.1.5): up to 1024 NSIDs, or FFFFFFFFh
    /// first when more changed. Reading it empties the list, as QEMU 7.2 does.
    fn changed_namespace_page(&mut self) -> Vec<u8> {
        let changed = std::mem::take(&mut self.changed_nsids);
        let mut page = vec![0u8; 4096];
        if changed.len() > 1024 {
            page[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        } else {
            for (i, nsid) in changed.iter().enumerate() {
                page[i * 4..i * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
            }
        }
        page
    }

    /// Get Log Page: `Ok(dw0)` or a failing status.
    pub(super) fn get_log_page(&mut self, cmd: &Command) -> Result<u32, Status> {
        let lid = LogPageId(cmd.cdw10 as u8);
        let numd = ((cmd.cdw11 & 0xFFFF) << 16 | cmd.cdw10 >> 16) as u64 + 1;
        let len = numd * 4;
        let offset = cmd.cdw12 as u64 | (cmd.cdw13 as u64) << 32;
        if offset % 4 != 0 {
            return Err(Status::INVALID_FIELD);
        }
        if self.cfg.max_transfer_bytes().is_some_and(|max| len > max) {
            return Err(Status::INVALID_FIELD);
        }
        let page = match lid {
            LogPageId::ERROR_INFORMATION => self.errors.page(),
            LogPageId::SMART_HEALTH => {
                let nsid = cmd.nsid;
                let valid = nsid == 0 || nsid == u32::MAX || (nsid as usize) <= self.namespaces.len();
                if !valid {
                    return Err(Status::INVALID_NAMESPACE_OR_FORMAT);
                }
                self.smart_page()
            }
            LogPageId::FIRMWARE_SLOT => self.firmware_page(),
            LogPageId::CHANGED_NAMESPACE_LIST => self.changed_namespace_page(),
            _ => return Err(Status::INVALID_LOG_PAGE),
        };
        if offset > page.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        self.map(0, cmd, len)?;
        let start = offset as usize;
        let end = page.len().min(start.saturating_add(len as usize));
        self.copy_out(0, cmd, &page[start..end])?;
        // Retain Asynchronous Event (CDW10 bit 15) clear: the read clears the events that
        // name this log page.
        if cmd.cdw10 & 1 << 15 == 0 {
            self.log_read_clears_events(lid.0);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use crate::cmd::Command;
    use crate::log::{FirmwareSlotLog, LogPageId, SmartLog};
    use crate::status::Status;

    fn log(h: &mut Harness, lid: LogPageId, offset: u64, len: u32) -> (Status, Vec<u8>) {
        let cmd = Command::get_log_page(lid, u32::MAX, offset, len, 0, false).unwrap();
        let (c, data) = h.admin_read(cmd, len as usize);
        (c.status(), data)
    }

    #[test]
    fn error_log_lists_returned_errors_newest_first() {
        let mut h = Harness::new();
        let bad = h.admin(Command::new(0x7F));
        assert_eq!(bad.status(), Status::INVALID_OPCODE);
        let io = h.admin(Command::identify(crate::identify::Cns(0x55), 0, 0));
        assert_eq!(io.status(), Status::INVALID_FIELD);
        let (s, page) = log(&mut h, LogPageId::ERROR_INFORMATION, 0, 4096);
        assert_eq!(s, Status::SUCCESS);
        let entry = |i: usize| &page[i * 64..i * 64 + 64];
        assert_eq!(u64::from_le_bytes(entry(0)[..8].try_into().unwrap()), 2, "newest first");
        assert_eq!(u16::from_le_bytes(entry(0)[10..12].try_into().unwrap()), io.cid);
        assert_eq!(
            u16::from_le_bytes(entry(0)[12..14].try_into().unwrap()) >> 1,
            Status::INVALID_FIELD.raw()
        );
        assert_eq!(u16::from_le_bytes(entry(1)[10..12].try_into().unwrap()), bad.cid);
        assert!(entry(2).iter().all(|&b| b == 0));
        // Offset and length select a window of the page.
        let (_, second) = log(&mut h, LogPageId::ERROR_INFORMATION, 64, 64);
        assert_eq!(u64::from_le_bytes(second[..8].try_into().unwrap()), 1);
    }

    #[test]
    fn smart_log_counts_io_and_shows_critical_warnings() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let buf = h.dma_buf(8192);
        for _ in 0..3 {
            assert!(io.write_prp(&h.sim, 0, &buf, 16).status().is_success());
        }
        assert!(io.read_prp(&h.sim, 0, &buf, 16).status().is_success());
        h.sim.set_critical_warning(0x04);
        let (s, page) = log(&mut h, LogPageId::SMART_HEALTH, 0, 512);
        assert_eq!(s, Status::SUCCESS);
        let smart = SmartLog::parse(&page).unwrap();
        assert_eq!(page[0], 0x04);
        assert_eq!(u16::from_le_bytes([page[1], page[2]]), 308);
        assert_eq!((page[3], page[4]), (100, 10));
        assert_eq!(
            smart.bytes_written(),
            1000 * 512,
            "24 KiB written rounds up to one data unit"
        );
        assert_eq!(
            u128::from_le_bytes(page[80..96].try_into().unwrap()),
            3,
            "host write commands"
        );
        assert_eq!(
            u128::from_le_bytes(page[64..80].try_into().unwrap()),
            1,
            "host read commands"
        );
        assert_eq!(
            u128::from_le_bytes(page[112..128].try_into().unwrap()),
            1,
            "power cycles"
        );
    }

    #[test]
    fn firmware_slot_and_unknown_logs() {
        let mut h = Harness::new();
        let (s, page) = log(&mut h, LogPageId::FIRMWARE_SLOT, 0, 512);
        assert_eq!(s, Status::SUCCESS);
        let fw = FirmwareSlotLog::parse(&page).unwrap();
        assert_eq!(fw.active_slot(), 1);
        assert_eq!(&page[8..16], b"1.0     ");
        assert_eq!(
            log(&mut h, LogPageId::TELEMETRY_HOST, 0, 512).0,
            Status::INVALID_LOG_PAGE
        );
        assert_eq!(
            log(&mut h, LogPageId::SMART_HEALTH, 1024, 4).0,
            Status::INVALID_FIELD,
            "offset past the page"
        );
    }
}
