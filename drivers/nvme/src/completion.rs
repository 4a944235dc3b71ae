//! The 16-byte completion queue entry — NVMe Base Specification 2.0, §4.6 (Figure 90).

use crate::status::Status;

/// A completion queue entry (Base Specification 2.0, §4.6, Figure 90).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// DW0: command specific (e.g. Get Features value, Abort result, AER event).
    pub dw0: u32,
    /// DW1: command specific.
    pub dw1: u32,
    /// SQHD: the submission queue head pointer at the time of this completion.
    pub sqhd: u16,
    /// SQID: the submission queue the command was issued to.
    pub sqid: u16,
    /// CID: the command identifier of the completed command.
    pub cid: u16,
    /// The phase tag (bit 0) and the status field (bits 15:1).
    pub status: u16,
}

const _: () = assert!(std::mem::size_of::<Completion>() == 16);

impl Completion {
    /// The phase tag (P, DW3 bit 16). The controller inverts it on each pass through the
    /// queue, so an entry is new when its phase tag equals the host's expected phase.
    pub const fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// The status field (DW3 bits 31:17).
    pub const fn status(&self) -> Status {
        Status::from_raw(self.status >> 1)
    }

    /// The entry's 16 bytes (little-endian), as a fabrics response capsule carries it.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// A completion from its 16 bytes (the inverse of [`Completion::to_bytes`]), as a
    /// fabrics response capsule carries it (NVMe over Fabrics 1.1, 2.3).
    pub fn from_bytes(b: &[u8; 16]) -> Completion {
        let w = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Completion {
            dw0: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            dw1: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            sqhd: w(8),
            sqid: w(10),
            cid: w(12),
            status: w(14),
        }
    }

    /// Builds a completion (used by the simulated controller and by tests).
    pub const fn new(cid: u16, sqid: u16, sqhd: u16, status: Status, phase: bool, dw0: u32) -> Completion {
        Completion {
            dw0,
            dw1: 0,
            sqhd,
            sqid,
            cid,
            status: status.raw() << 1 | phase as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_and_status_share_the_last_word() {
        let c = Completion::new(5, 1, 9, Status::UNRECOVERED_READ_ERROR.with_dnr(true), true, 0);
        assert!(c.phase());
        assert_eq!(c.status(), Status::UNRECOVERED_READ_ERROR.with_dnr(true));
        assert_eq!(c.status, (0x4000 | 0x281) << 1 | 1);
        let ok = Completion::new(5, 1, 9, Status::SUCCESS, false, 7);
        assert!(!ok.phase());
        assert!(ok.status().is_success());
    }

    #[test]
    fn bytes_follow_figure_90_and_round_trip() {
        let c = Completion::new(0xBEEF, 3, 17, Status::LBA_OUT_OF_RANGE, true, 0x1234_5678);
        let b = c.to_bytes();
        assert_eq!(&b[0..4], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&b[8..10], &17u16.to_le_bytes(), "SQHD: DW2 bits 15:0");
        assert_eq!(&b[10..12], &3u16.to_le_bytes(), "SQID: DW2 bits 31:16");
        assert_eq!(&b[12..14], &0xBEEFu16.to_le_bytes(), "CID: DW3 bits 15:0");
        assert_eq!(u16::from_le_bytes([b[14], b[15]]) >> 1, 0x80, "status: DW3 bits 31:17");
        assert_eq!(b[14] & 1, 1, "phase tag: DW3 bit 16");
        assert_eq!(Completion::from_bytes(&b), c);
    }
}
