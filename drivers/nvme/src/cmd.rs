//! The submission queue entry and builders for the commands ironvme issues.
//!
//! Layout: NVMe Base Specification 2.0, §4.2 ("Submission Queue Entry", Figure 88). Admin
//! commands: §5; NVM command set I/O commands: NVM Command Set Specification 1.0, §3.
//!
//! A builder fills the command-specific fields. The queue layer sets the command
//! identifier ([`Command::set_cid`]) and the data pointer ([`Command::set_prp`] or
//! [`Command::set_sgl`]) when the command is posted.

use crate::features::{FeatureId, FeatureSelect};
use crate::identify::Cns;
use crate::log::LogPageId;
use crate::pi::Protection;
use crate::sgl::SglDescriptor;

/// Admin command opcodes (Base Specification 2.0, §5, Figure 138).
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    /// Namespace Management.
    pub const NAMESPACE_MANAGEMENT: u8 = 0x0D;
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    /// Firmware Image Download.
    pub const FIRMWARE_IMAGE_DOWNLOAD: u8 = 0x11;
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    /// Namespace Attachment.
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
    /// Security Send.
    pub const SECURITY_SEND: u8 = 0x81;
    /// Security Receive.
    pub const SECURITY_RECEIVE: u8 = 0x82;
    /// Sanitize.
    pub const SANITIZE: u8 = 0x84;

    /// The specification's name of an admin opcode, or `None` if ironvme does not know it.
    pub fn name(opcode: u8) -> Option<&'static str> {
        Some(match opcode {
            DELETE_IO_SQ => "Delete I/O Submission Queue",
            CREATE_IO_SQ => "Create I/O Submission Queue",
            GET_LOG_PAGE => "Get Log Page",
            DELETE_IO_CQ => "Delete I/O Completion Queue",
            CREATE_IO_CQ => "Create I/O Completion Queue",
            IDENTIFY => "Identify",
            ABORT => "Abort",
            SET_FEATURES => "Set Features",
            GET_FEATURES => "Get Features",
            ASYNC_EVENT_REQUEST => "Asynchronous Event Request",
            NAMESPACE_MANAGEMENT => "Namespace Management",
            FIRMWARE_COMMIT => "Firmware Commit",
            FIRMWARE_IMAGE_DOWNLOAD => "Firmware Image Download",
            DEVICE_SELF_TEST => "Device Self-test",
            NAMESPACE_ATTACHMENT => "Namespace Attachment",
            KEEP_ALIVE => "Keep Alive",
            DOORBELL_BUFFER_CONFIG => "Doorbell Buffer Config",
            FORMAT_NVM => "Format NVM",
            SECURITY_SEND => "Security Send",
            SECURITY_RECEIVE => "Security Receive",
            SANITIZE => "Sanitize",
            _ => return None,
        })
    }
}

/// NVM command set I/O opcodes (NVM Command Set Specification 1.0, §3, Figure 17).
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0C;
    /// Copy.
    pub const COPY: u8 = 0x19;

    /// The specification's name of an NVM opcode, or `None` if ironvme does not know it.
    pub fn name(opcode: u8) -> Option<&'static str> {
        Some(match opcode {
            FLUSH => "Flush",
            WRITE => "Write",
            READ => "Read",
            WRITE_UNCORRECTABLE => "Write Uncorrectable",
            COMPARE => "Compare",
            WRITE_ZEROES => "Write Zeroes",
            DATASET_MANAGEMENT => "Dataset Management",
            VERIFY => "Verify",
            COPY => "Copy",
            crate::zns::opcode::ZONE_MANAGEMENT_SEND => "Zone Management Send",
            crate::zns::opcode::ZONE_MANAGEMENT_RECEIVE => "Zone Management Receive",
            crate::zns::opcode::ZONE_APPEND => "Zone Append",
            _ => return None,
        })
    }
}

/// The direction of a command's data transfer, from opcode bits 1:0 (§4.2, Figure 89).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    /// No data transfer.
    None,
    /// Host to controller (e.g. Write).
    HostToController,
    /// Controller to host (e.g. Read, Identify).
    ControllerToHost,
    /// Bidirectional.
    Bidirectional,
}

/// PSDT — PRP or SGL for Data Transfer (CDW0 bits 15:14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Psdt {
    /// PRPs are used for this transfer.
    Prp = 0b00,
    /// SGLs are used; MPTR holds the address of a contiguous metadata buffer.
    SglContiguousMetadata = 0b01,
    /// SGLs are used; MPTR holds the address of an SGL segment for metadata.
    SglMetadataSegment = 0b10,
}

/// The largest number of logical blocks one Read/Write/Compare/Verify/Write Zeroes
/// command can name: NLB is a 16-bit, 0's based field.
pub const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;

/// A 64-byte submission queue entry (Base Specification 2.0, §4.2, Figure 88).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// CDW0: opcode (7:0), FUSE (9:8), PSDT (15:14), CID (31:16).
    pub cdw0: u32,
    /// NSID: namespace identifier.
    pub nsid: u32,
    /// CDW2: command specific.
    pub cdw2: u32,
    /// CDW3: command specific.
    pub cdw3: u32,
    /// MPTR: metadata pointer.
    pub mptr: u64,
    /// DPTR: data pointer — PRP1 and PRP2, or SGL entry 1.
    pub dptr: [u64; 2],
    /// CDW10: command specific.
    pub cdw10: u32,
    /// CDW11: command specific.
    pub cdw11: u32,
    /// CDW12: command specific.
    pub cdw12: u32,
    /// CDW13: command specific.
    pub cdw13: u32,
    /// CDW14: command specific.
    pub cdw14: u32,
    /// CDW15: command specific.
    pub cdw15: u32,
}

const _: () = assert!(std::mem::size_of::<Command>() == 64);
const _: () = assert!(std::mem::align_of::<Command>() <= 64);

/// A Dataset Management range (NVM Command Set 1.0, §3.2.3, Figure 38): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    /// Context attributes.
    pub context_attributes: u32,
    /// Length in logical blocks (1-based: the number of blocks).
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(std::mem::size_of::<DsmRange>() == DSM_RANGE_BYTES);

/// Bytes of one [`DsmRange`].
pub const DSM_RANGE_BYTES: usize = 16;

impl DsmRange {
    /// The range as the controller reads it from the data buffer (little-endian).
    pub fn to_bytes(&self) -> [u8; DSM_RANGE_BYTES] {
        let mut b = [0u8; DSM_RANGE_BYTES];
        b[0..4].copy_from_slice(&self.context_attributes.to_le_bytes());
        b[4..8].copy_from_slice(&self.nlb.to_le_bytes());
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b
    }
}

/// The most ranges one Dataset Management command carries (NR is 8 bits, 0's based).
pub const MAX_DSM_RANGES: usize = 256;

/// Bytes of a Controller List (Base Specification 2.0, §4.4.1, Figure 137), the data of
/// Namespace Attachment.
pub const CONTROLLER_LIST_BYTES: usize = 4096;

/// The most controller identifiers a Controller List holds.
pub const MAX_CONTROLLER_IDS: usize = CONTROLLER_LIST_BYTES / 2 - 1;

/// A Controller List (§4.4.1): the number of identifiers (bytes 1:0), then each
/// controller identifier (CNTLID, 2 bytes, little-endian), zeros after.
///
/// Errors: why the list cannot be made (empty, or more than [`MAX_CONTROLLER_IDS`]
/// identifiers).
pub fn controller_list(ids: &[u16]) -> Result<Vec<u8>, String> {
    if ids.is_empty() || ids.len() > MAX_CONTROLLER_IDS {
        return Err(format!(
            "a controller list holds 1 to {MAX_CONTROLLER_IDS} controllers, not {}",
            ids.len()
        ));
    }
    let mut data = vec![0u8; CONTROLLER_LIST_BYTES];
    data[0..2].copy_from_slice(&(ids.len() as u16).to_le_bytes());
    for (i, id) in ids.iter().enumerate() {
        data[2 + 2 * i..4 + 2 * i].copy_from_slice(&id.to_le_bytes());
    }
    Ok(data)
}

/// Dataset Management attributes (CDW11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DsmAttributes {
    /// IDR: integral dataset for read.
    pub integral_read: bool,
    /// IDW: integral dataset for write.
    pub integral_write: bool,
    /// AD: deallocate the ranges.
    pub deallocate: bool,
}

impl Command {
    /// A command with only the opcode set.
    pub const fn new(opcode: u8) -> Command {
        Command {
            cdw0: opcode as u32,
            nsid: 0,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr: [0; 2],
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// The opcode (CDW0 bits 7:0).
    pub const fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// A submission queue entry from its 64 bytes (little-endian dwords), as a fabrics
    /// capsule carries it (NVMe over Fabrics 1.1, 2.2).
    pub fn from_bytes(b: &[u8; 64]) -> Command {
        let dw = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        let qw = |i: usize| dw(i) as u64 | (dw(i + 1) as u64) << 32;
        Command {
            cdw0: dw(0),
            nsid: dw(1),
            cdw2: dw(2),
            cdw3: dw(3),
            mptr: qw(4),
            dptr: [qw(6), qw(8)],
            cdw10: dw(10),
            cdw11: dw(11),
            cdw12: dw(12),
            cdw13: dw(13),
            cdw14: dw(14),
            cdw15: dw(15),
        }
    }

    /// The 64 bytes of the entry (the inverse of [`Command::from_bytes`]).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        let dws = [
            self.cdw0,
            self.nsid,
            self.cdw2,
            self.cdw3,
            self.mptr as u32,
            (self.mptr >> 32) as u32,
            self.dptr[0] as u32,
            (self.dptr[0] >> 32) as u32,
            self.dptr[1] as u32,
            (self.dptr[1] >> 32) as u32,
            self.cdw10,
            self.cdw11,
            self.cdw12,
            self.cdw13,
            self.cdw14,
            self.cdw15,
        ];
        for (i, d) in dws.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// The command identifier (CDW0 bits 31:16).
    pub const fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xFFFF) | (cid as u32) << 16;
    }

    /// PSDT (CDW0 bits 15:14), raw.
    pub const fn psdt(&self) -> u8 {
        ((self.cdw0 >> 14) & 0x3) as u8
    }

    /// The data direction encoded in the opcode's low two bits.
    pub const fn data_direction(&self) -> DataDirection {
        match self.opcode() & 0x3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }

    /// Points the data transfer at PRP1 and PRP2 (PSDT = 00b).
    pub fn set_prp(&mut self, prp1: u64, prp2: u64) {
        self.cdw0 &= !(0x3 << 14);
        self.dptr = [prp1, prp2];
    }

    /// Points the data transfer at an SGL descriptor (PSDT = 01b).
    pub fn set_sgl(&mut self, desc: SglDescriptor) {
        self.cdw0 = (self.cdw0 & !(0x3 << 14)) | (Psdt::SglContiguousMetadata as u32) << 14;
        self.dptr = desc.to_dptr();
    }

    /// Sets the namespace identifier.
    #[must_use]
    pub const fn with_nsid(mut self, nsid: u32) -> Command {
        self.nsid = nsid;
        self
    }

    // --- Admin commands (Base Specification 2.0, §5) ---

    /// Identify (§5.17): returns a 4096-byte data structure selected by `cns`.
    /// `nsid` is used by namespace CNS values; `cntid` by controller-list CNS values.
    pub fn identify(cns: Cns, nsid: u32, cntid: u16) -> Command {
        let mut c = Command::new(admin::IDENTIFY).with_nsid(nsid);
        c.cdw10 = cns.0 as u32 | (cntid as u32) << 16;
        c
    }

    /// Get Log Page (§5.16): `len_bytes` bytes (a non-zero multiple of 4) of log `lid`
    /// starting at byte `offset` (a multiple of 4). `lsp` is the 7-bit log specific field;
    /// `rae` retains an asynchronous event. `nsid` is 0xFFFF_FFFF for controller-wide logs.
    ///
    /// Returns `None` if the length or offset is not dword-aligned or the length is zero or
    /// exceeds the 32-bit NUMD field.
    pub fn get_log_page(lid: LogPageId, nsid: u32, offset: u64, len_bytes: u32, lsp: u8, rae: bool) -> Option<Command> {
        if len_bytes == 0 || len_bytes % 4 != 0 || offset % 4 != 0 {
            return None;
        }
        let numd = len_bytes / 4 - 1; // 0's based
        let mut c = Command::new(admin::GET_LOG_PAGE).with_nsid(nsid);
        c.cdw10 = lid.0 as u32 | ((lsp as u32) & 0x7F) << 8 | (rae as u32) << 15 | (numd & 0xFFFF) << 16;
        c.cdw11 = numd >> 16;
        c.cdw12 = offset as u32;
        c.cdw13 = (offset >> 32) as u32;
        Some(c)
    }

    /// The Get Log Page commands that read `len` bytes of log `lid` from byte `offset`
    /// in pieces of at most `piece_max` bytes (rounded down to a multiple of 4), each with
    /// its length. `None` if `len` or `offset` is not a multiple of 4 or `len` is 0.
    pub fn get_log_page_pieces(
        lid: LogPageId,
        nsid: u32,
        offset: u64,
        len: usize,
        piece_max: usize,
    ) -> Option<impl Iterator<Item = (Command, usize)>> {
        let piece_max = piece_max & !3;
        if len == 0 || len % 4 != 0 || offset % 4 != 0 || piece_max == 0 {
            return None;
        }
        Some((0..len).step_by(piece_max).map(move |done| {
            let piece = (len - done).min(piece_max);
            let cmd = Command::get_log_page(lid, nsid, offset + done as u64, piece as u32, 0, false);
            (cmd.expect("pieces are dword multiples at dword offsets"), piece)
        }))
    }

    /// Get Features (§5.15) of feature `fid`, selecting current, default, saved or
    /// capabilities with `sel`. `cdw11` carries feature-specific input (usually 0).
    pub fn get_features(fid: FeatureId, sel: FeatureSelect, nsid: u32, cdw11: u32) -> Command {
        let mut c = Command::new(admin::GET_FEATURES).with_nsid(nsid);
        c.cdw10 = fid.0 as u32 | (sel as u32 & 0x7) << 8;
        c.cdw11 = cdw11;
        c
    }

    /// Set Features (§5.27): sets feature `fid` to `cdw11`; `save` asks the controller
    /// to keep the value across resets (SV).
    pub fn set_features(fid: FeatureId, nsid: u32, cdw11: u32, save: bool) -> Command {
        let mut c = Command::new(admin::SET_FEATURES).with_nsid(nsid);
        c.cdw10 = fid.0 as u32 | (save as u32) << 31;
        c.cdw11 = cdw11;
        c
    }

    /// Create I/O Completion Queue (§5.4): queue `qid` of `entries` entries (1-based,
    /// 2..=65536) at `iova`. `contiguous` sets PC; `interrupts` sets IEN with vector `iv`.
    pub fn create_io_cq(qid: u16, entries: u32, iova: u64, contiguous: bool, interrupts: Option<u16>) -> Command {
        let mut c = Command::new(admin::CREATE_IO_CQ);
        c.dptr[0] = iova;
        c.cdw10 = qid as u32 | (entries.saturating_sub(1) & 0xFFFF) << 16;
        c.cdw11 = contiguous as u32
            | match interrupts {
                Some(iv) => 0b10 | (iv as u32) << 16,
                None => 0,
            };
        c
    }

    /// Create I/O Submission Queue (§5.5): queue `qid` of `entries` entries (1-based) at
    /// `iova`, completing to CQ `cqid`, with priority `qprio` (0 urgent .. 3 low; used only
    /// with weighted round robin arbitration).
    pub fn create_io_sq(qid: u16, entries: u32, iova: u64, contiguous: bool, qprio: u8, cqid: u16) -> Command {
        let mut c = Command::new(admin::CREATE_IO_SQ);
        c.dptr[0] = iova;
        c.cdw10 = qid as u32 | (entries.saturating_sub(1) & 0xFFFF) << 16;
        c.cdw11 = contiguous as u32 | ((qprio as u32) & 0x3) << 1 | (cqid as u32) << 16;
        c
    }

    /// Delete I/O Submission Queue (§5.7).
    pub fn delete_io_sq(qid: u16) -> Command {
        let mut c = Command::new(admin::DELETE_IO_SQ);
        c.cdw10 = qid as u32;
        c
    }

    /// Delete I/O Completion Queue (§5.6).
    pub fn delete_io_cq(qid: u16) -> Command {
        let mut c = Command::new(admin::DELETE_IO_CQ);
        c.cdw10 = qid as u32;
        c
    }

    /// Abort (§5.1) the command `cid` submitted to SQ `sqid`. Completion DW0 bit 0 is 0 if
    /// the command was aborted and 1 if it was not.
    pub fn abort(sqid: u16, cid: u16) -> Command {
        let mut c = Command::new(admin::ABORT);
        c.cdw10 = sqid as u32 | (cid as u32) << 16;
        c
    }

    /// Asynchronous Event Request (§5.2). It completes when the controller reports an
    /// event; completion DW0 describes the event.
    pub fn async_event_request() -> Command {
        Command::new(admin::ASYNC_EVENT_REQUEST)
    }

    /// Format NVM (§5.23) of namespace `nsid` (0xFFFF_FFFF for all) to LBA format index
    /// `lbaf` (0..=63) with secure erase setting `ses` (0 none, 1 user data, 2 crypto),
    /// protection information `pi` (0..=7) at location `pil`, and metadata setting `mset`
    /// (extended LBA when true).
    pub fn format_nvm(nsid: u32, lbaf: u8, ses: u8, pi: u8, pil: bool, mset: bool) -> Command {
        let mut c = Command::new(admin::FORMAT_NVM).with_nsid(nsid);
        c.cdw10 = (lbaf as u32 & 0xF)
            | (mset as u32) << 4
            | (pi as u32 & 0x7) << 5
            | (pil as u32) << 8
            | (ses as u32 & 0x7) << 9
            | ((lbaf as u32 >> 4) & 0x3) << 12;
        c
    }

    /// Namespace Attachment (Base Specification 2.0, §5.22): attaches namespace `nsid` to
    /// (or, with `attach` false, detaches it from) the controllers of the Controller List
    /// the command carries as its 4096-byte data ([`controller_list`]). SEL is CDW10
    /// bits 3:0 (0h attach, 1h detach).
    pub fn namespace_attachment(nsid: u32, attach: bool) -> Command {
        let mut c = Command::new(admin::NAMESPACE_ATTACHMENT).with_nsid(nsid);
        c.cdw10 = u32::from(!attach);
        c
    }

    /// Firmware Image Download (§5.13): `len_bytes` bytes (a non-zero multiple of 4) of the
    /// image at byte `offset` (a multiple of 4). `None` when not dword-aligned.
    pub fn firmware_image_download(offset: u32, len_bytes: u32) -> Option<Command> {
        if len_bytes == 0 || len_bytes % 4 != 0 || offset % 4 != 0 {
            return None;
        }
        let mut c = Command::new(admin::FIRMWARE_IMAGE_DOWNLOAD);
        c.cdw10 = len_bytes / 4 - 1;
        c.cdw11 = offset / 4;
        Some(c)
    }

    /// Firmware Commit (§5.12): commit action `action` (0..=7, e.g. 1 = replace and
    /// activate at next reset) for firmware slot `slot` (0..=7; 0 lets the controller pick).
    pub fn firmware_commit(slot: u8, action: u8, boot_partition: bool) -> Command {
        let mut c = Command::new(admin::FIRMWARE_COMMIT);
        c.cdw10 = (slot as u32 & 0x7) | (action as u32 & 0x7) << 3 | (boot_partition as u32) << 31;
        c
    }

    /// Doorbell Buffer Config (§5.8): the shadow doorbell buffer at `shadow_iova` and the
    /// EventIdx buffer at `eventidx_iova`, each one memory page, page-aligned. The caller
    /// must validate both addresses: a controller may DMA to whatever it is given.
    pub fn doorbell_buffer_config(shadow_iova: u64, eventidx_iova: u64) -> Command {
        let mut c = Command::new(admin::DOORBELL_BUFFER_CONFIG);
        c.dptr = [shadow_iova, eventidx_iova];
        c
    }

    /// Keep Alive (§5.25).
    pub fn keep_alive() -> Command {
        Command::new(admin::KEEP_ALIVE)
    }

    // --- NVM command set I/O commands (NVM Command Set Specification 1.0, §3) ---

    pub(crate) fn rw(opcode: u8, nsid: u32, slba: u64, blocks: u32, fua: bool) -> Command {
        debug_assert!((1..=MAX_BLOCKS_PER_COMMAND).contains(&blocks));
        let mut c = Command::new(opcode).with_nsid(nsid);
        c.cdw10 = slba as u32;
        c.cdw11 = (slba >> 32) as u32;
        c.cdw12 = (blocks.wrapping_sub(1) & 0xFFFF) | (fua as u32) << 30;
        c
    }

    /// Read (§3.3.4) `blocks` logical blocks (1..=65536) from `slba`.
    pub fn read(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(nvm::READ, nsid, slba, blocks, false)
    }

    /// Write (§3.3.6) `blocks` logical blocks (1..=65536) at `slba`; `fua` forces unit
    /// access (the data is durable when the command completes, on devices that honour it).
    pub fn write(nsid: u32, slba: u64, blocks: u32, fua: bool) -> Command {
        Command::rw(nvm::WRITE, nsid, slba, blocks, fua)
    }

    /// Compare (§3.3.1) `blocks` logical blocks at `slba` with the data buffer; a mismatch
    /// completes with Compare Failure (SCT 2h, SC 85h).
    pub fn compare(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(nvm::COMPARE, nsid, slba, blocks, false)
    }

    /// Verify (§3.3.5) `blocks` logical blocks at `slba` (no data transfer).
    pub fn verify(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(nvm::VERIFY, nsid, slba, blocks, false)
    }

    /// Write Zeroes (§3.3.7) `blocks` logical blocks at `slba`; `deallocate` sets DEAC so
    /// the controller may deallocate the range instead of writing it.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32, deallocate: bool) -> Command {
        let mut c = Command::rw(nvm::WRITE_ZEROES, nsid, slba, blocks, false);
        c.cdw12 |= (deallocate as u32) << 25;
        c
    }

    /// Sets the end-to-end protection fields of a Read, Write, Compare, Verify or Write
    /// Zeroes (NVM Command Set 1.0 §5.2.3, Figures 48 and 49): PRINFO in CDW12 bits 29:26
    /// (PRACT bit 29, PRCHK guard 28, application tag 27, reference tag 26), the initial
    /// logical block reference tag (EILBRT/ILBRT) in CDW14, and the application tag in CDW15
    /// bits 15:0 (ELBAT) with its mask in bits 31:16 (ELBATM).
    pub fn set_protection(&mut self, p: &Protection) {
        let prinfo = (p.pract as u32) << 3
            | (p.check_guard as u32) << 2
            | (p.check_app_tag as u32) << 1
            | p.check_ref_tag as u32;
        self.cdw12 = (self.cdw12 & !(0xF << 26)) | prinfo << 26;
        self.cdw14 = p.ref_tag;
        self.cdw15 = (p.app_mask as u32) << 16 | p.app_tag as u32;
    }

    /// Flush (§3.3.2 of the Base Specification, §7.1): makes completed writes to `nsid`
    /// durable (0xFFFF_FFFF flushes all namespaces where the controller allows it).
    pub fn flush(nsid: u32) -> Command {
        Command::new(nvm::FLUSH).with_nsid(nsid)
    }

    /// Dataset Management (§3.2.3) over `ranges` [`DsmRange`]s (1..=256) held in the data
    /// buffer (16 bytes each).
    pub fn dataset_management(nsid: u32, ranges: usize, attrs: DsmAttributes) -> Command {
        debug_assert!((1..=MAX_DSM_RANGES).contains(&ranges));
        let mut c = Command::new(nvm::DATASET_MANAGEMENT).with_nsid(nsid);
        c.cdw10 = (ranges.wrapping_sub(1) & 0xFF) as u32;
        c.cdw11 = attrs.integral_read as u32 | (attrs.integral_write as u32) << 1 | (attrs.deallocate as u32) << 2;
        c
    }

    /// Starting LBA of a Read/Write/Compare/Verify/Write Zeroes command (CDW10-11).
    pub const fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }

    /// Number of logical blocks of a Read/Write/Compare/Verify/Write Zeroes command,
    /// 1-based (CDW12 bits 15:0 plus one).
    pub const fn nlb(&self) -> u32 {
        (self.cdw12 & 0xFFFF) + 1
    }

    /// A short human name for the command: the spec's name of its opcode, looked up in
    /// the admin or NVM opcode table.
    pub fn name(&self, admin_queue: bool) -> &'static str {
        let name = if admin_queue {
            admin::name(self.opcode())
        } else {
            nvm::name(self.opcode())
        };
        name.unwrap_or("Unknown opcode")
    }
}

/// What Format NVM sets (Base Specification 2.0 §5.23: CDW10's LBAF, MSET, PI, PIL, SES).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormatSettings {
    /// LBA format index (0..=63).
    pub lbaf: u8,
    /// Secure Erase Setting: 0 none, 1 user data erase, 2 cryptographic erase.
    pub ses: u8,
    /// Protection information type: 0 none, 1, 2 or 3.
    pub pi: u8,
    /// PI in the first 8 bytes of the metadata (PIL) rather than the last.
    pub pil: bool,
    /// Metadata at the end of each block (MSET: extended LBA) rather than separate.
    pub mset: bool,
}

impl FormatSettings {
    /// The Format NVM command of namespace `nsid` (0xFFFF_FFFF for all).
    pub fn command(&self, nsid: u32) -> Command {
        Command::format_nvm(nsid, self.lbaf, self.ses, self.pi, self.pil, self.mset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_figure_88_and_round_trip() {
        let mut c = Command::write(7, 0x1_2345_6789, 16, true);
        c.set_cid(0xA55A);
        c.mptr = 0x1111_2222_3333_4444;
        c.dptr = [0x5555_6666_7777_8888, 0x9999_AAAA_BBBB_CCCC];
        c.cdw13 = 0xD;
        c.cdw14 = 0xE;
        c.cdw15 = 0xF;
        let b = c.to_bytes();
        assert_eq!(b[0], nvm::WRITE, "opcode: CDW0 bits 7:0");
        assert_eq!(&b[2..4], &0xA55Au16.to_le_bytes(), "CID: CDW0 bits 31:16");
        assert_eq!(&b[4..8], &7u32.to_le_bytes(), "NSID: bytes 7:4");
        assert_eq!(&b[16..24], &c.mptr.to_le_bytes(), "MPTR: bytes 23:16");
        assert_eq!(&b[24..32], &c.dptr[0].to_le_bytes(), "DPTR: bytes 39:24");
        assert_eq!(&b[32..40], &c.dptr[1].to_le_bytes());
        assert_eq!(&b[40..48], &0x1_2345_6789u64.to_le_bytes(), "SLBA: CDW10-11");
        assert_eq!(&b[48..50], &15u16.to_le_bytes(), "NLB, 0's based: CDW12 bits 15:0");
        assert_eq!(b[51] >> 6 & 1, 1, "FUA: CDW12 bit 30");
        assert_eq!(&b[60..64], &0xFu32.to_le_bytes(), "CDW15: bytes 63:60");
        assert_eq!(Command::from_bytes(&b), c);
        let any: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5C);
        assert_eq!(Command::from_bytes(&any).to_bytes(), any);
    }

    #[test]
    fn namespace_attachment_carries_sel_and_a_controller_list() {
        let attach = Command::namespace_attachment(2, true);
        assert_eq!(
            (attach.opcode(), attach.nsid, attach.cdw10),
            (admin::NAMESPACE_ATTACHMENT, 2, 0)
        );
        assert_eq!(Command::namespace_attachment(2, false).cdw10, 1, "SEL 1h: detach");
        let list = controller_list(&[0, 0x1234]).unwrap();
        assert_eq!(list.len(), CONTROLLER_LIST_BYTES);
        assert_eq!(&list[..6], &[2, 0, 0, 0, 0x34, 0x12]);
        assert!(list[6..].iter().all(|&b| b == 0));
        assert!(controller_list(&[]).is_err());
        assert!(controller_list(&[7; MAX_CONTROLLER_IDS]).is_ok());
        assert!(controller_list(&[7; MAX_CONTROLLER_IDS + 1]).is_err());
    }

    #[test]
    fn cid_and_opcode_share_cdw0() {
        let mut c = Command::read(1, 0, 8);
        c.set_cid(0xBEEF);
        assert_eq!(c.opcode(), nvm::READ);
        assert_eq!(c.cid(), 0xBEEF);
        assert_eq!(c.cdw0, 0xBEEF_0002);
        c.set_cid(7);
        assert_eq!(c.cid(), 7);
        assert_eq!(c.opcode(), nvm::READ);
    }

    #[test]
    fn read_write_encode_slba_and_zeros_based_nlb() {
        let c = Command::write(3, 0x1_2345_6789, 65536, true);
        assert_eq!(c.nsid, 3);
        assert_eq!(c.cdw10, 0x2345_6789);
        assert_eq!(c.cdw11, 0x1);
        assert_eq!(c.cdw12 & 0xFFFF, 0xFFFF);
        assert_eq!(c.cdw12 >> 30 & 1, 1);
        assert_eq!(c.slba(), 0x1_2345_6789);
        assert_eq!(c.nlb(), 65536);
        assert_eq!(Command::read(1, 0, 1).cdw12, 0);
        assert_eq!(c.data_direction(), DataDirection::HostToController);
        assert_eq!(Command::read(1, 0, 1).data_direction(), DataDirection::ControllerToHost);
        assert_eq!(Command::flush(1).data_direction(), DataDirection::None);
        assert_eq!(
            Command::compare(1, 0, 1).data_direction(),
            DataDirection::HostToController
        );
    }

    #[test]
    fn write_zeroes_sets_deac() {
        let c = Command::write_zeroes(1, 10, 4, true);
        assert_eq!(c.opcode(), nvm::WRITE_ZEROES);
        assert_eq!(c.cdw12, 3 | 1 << 25);
    }

    #[test]
    fn get_log_page_splits_numd() {
        // 512 KiB log at offset 8 GiB: NUMD = 131071 (0's based) → NUMDL 0xFFFF, NUMDU 1.
        let c = Command::get_log_page(LogPageId::SMART_HEALTH, 0xFFFF_FFFF, 8 << 30, 512 * 1024, 0, true).unwrap();
        assert_eq!(c.cdw10, 0x02 | 1 << 15 | 0xFFFF << 16);
        assert_eq!(c.cdw11, 1);
        assert_eq!(c.cdw12, 0);
        assert_eq!(c.cdw13, 2);
        assert!(Command::get_log_page(LogPageId::SMART_HEALTH, 0, 0, 6, 0, false).is_none());
        assert!(Command::get_log_page(LogPageId::SMART_HEALTH, 0, 2, 8, 0, false).is_none());
        assert!(Command::get_log_page(LogPageId::SMART_HEALTH, 0, 0, 0, 0, false).is_none());
    }

    #[test]
    fn log_pages_are_read_in_dword_pieces() {
        let pieces: Vec<(u64, usize)> = Command::get_log_page_pieces(LogPageId::ERROR_INFORMATION, 0, 64, 10_000, 4096)
            .unwrap()
            .map(|(c, n)| ((c.cdw12 as u64) | (c.cdw13 as u64) << 32, n))
            .collect();
        assert_eq!(pieces, [(64, 4096), (64 + 4096, 4096), (64 + 8192, 1808)]);
        assert!(Command::get_log_page_pieces(LogPageId::ERROR_INFORMATION, 0, 0, 6, 4096).is_none());
        assert!(Command::get_log_page_pieces(LogPageId::ERROR_INFORMATION, 0, 2, 8, 4096).is_none());
        assert!(Command::get_log_page_pieces(LogPageId::ERROR_INFORMATION, 0, 0, 0, 4096).is_none());
    }

    #[test]
    fn queue_creation_encodes_zeros_based_size() {
        let cq = Command::create_io_cq(1, 1024, 0x10_0000, true, None);
        assert_eq!(cq.cdw10, 1 | 1023 << 16);
        assert_eq!(cq.cdw11, 1);
        assert_eq!(cq.dptr[0], 0x10_0000);
        let cq_irq = Command::create_io_cq(2, 2, 0, false, Some(5));
        assert_eq!(cq_irq.cdw11, 0b10 | 5 << 16);
        let sq = Command::create_io_sq(1, 65536, 0x20_0000, true, 2, 1);
        assert_eq!(sq.cdw10, 1 | 0xFFFF << 16);
        assert_eq!(sq.cdw11, 1 | 2 << 1 | 1 << 16);
    }

    #[test]
    fn admin_builders_encode_their_fields() {
        let id = Command::identify(Cns::NAMESPACE, 2, 0);
        assert_eq!((id.opcode(), id.nsid, id.cdw10), (admin::IDENTIFY, 2, 0));
        assert_eq!(Command::identify(Cns::CONTROLLER, 0, 9).cdw10, 1 | 9 << 16);
        let ab = Command::abort(3, 0x1234);
        assert_eq!(ab.cdw10, 3 | 0x1234 << 16);
        let sf = Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, 0x0003_0003, true);
        assert_eq!(sf.cdw10, 0x07 | 1 << 31);
        let gf = Command::get_features(FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Default, 0, 0);
        assert_eq!(gf.cdw10, 0x06 | 1 << 8);
        let fmt = Command::format_nvm(1, 17, 1, 0, false, false);
        assert_eq!(fmt.cdw10, 1 | 1 << 9 | 1 << 12);
        assert_eq!(Command::firmware_image_download(4096, 8192).unwrap().cdw10, 2047);
        assert_eq!(Command::firmware_image_download(4096, 8192).unwrap().cdw11, 1024);
        assert!(Command::firmware_image_download(1, 8).is_none());
        assert_eq!(Command::firmware_commit(2, 1, false).cdw10, 2 | 1 << 3);
        let dbbuf = Command::doorbell_buffer_config(0x1000, 0x2000);
        assert_eq!(dbbuf.dptr, [0x1000, 0x2000]);
    }

    #[test]
    fn dsm_counts_ranges_zeros_based() {
        let c = Command::dataset_management(
            1,
            256,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        assert_eq!(c.cdw10, 255);
        assert_eq!(c.cdw11, 4);
    }

    #[test]
    fn data_pointer_sets_psdt() {
        let mut c = Command::read(1, 0, 1);
        c.set_sgl(SglDescriptor::data_block(0x1000, 512));
        assert_eq!(c.psdt(), Psdt::SglContiguousMetadata as u8);
        c.set_prp(0x2000, 0);
        assert_eq!(c.psdt(), 0);
        assert_eq!(c.dptr, [0x2000, 0]);
    }
}
