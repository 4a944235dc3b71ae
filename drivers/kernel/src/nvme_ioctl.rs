//! The kernel's NVMe passthrough interface: the structures and request numbers of
//! `include/uapi/linux/nvme_ioctl.h`, and thin wrappers around the ioctls.
//!
//! Layouts and numbers are those of Linux 6.1's header (they have not changed since the
//! 64-bit variants arrived in 5.5 and `nvme_uring_cmd` in 5.19). Each structure has
//! compile-time size and offset checks; each request number is computed with nix's
//! `_IOWR` encoding from the structure's size and checked at compile time against the
//! value the header produces (printed by a C program built against the 6.1 header).
//!
//! How a passthrough ioctl ends (`drivers/nvme/host/ioctl.c`, `nvme_submit_user_cmd`):
//!
//! - `-1` with `errno`: the command did not run, or the kernel gave up on it (`EINTR`
//!   after a timeout and abort, `EINVAL` for a transfer the queue cannot map, `EPERM`
//!   without `CAP_SYS_ADMIN` where it is needed, `ENOTTY` for an unknown request);
//! - `0`: Successful Completion; the completion's DW0 (DW0 and DW1 for the 64-bit
//!   variants) is in `result`;
//! - a positive value: the command completed with that NVMe status — the 15-bit status
//!   field (the CQE's status halfword shifted right by one: SC, SCT, CRD, More, DNR),
//!   decoded with [`decode_return`]. nix maps only `-1` to `Err`, so the wrappers here
//!   check the positive value themselves.
//!
//! Passthrough requests are not retried by the kernel: `nvme_init_request` marks them
//! `REQ_FAILFAST_DRIVER`, and `nvme_decide_disposition` completes fail-fast requests with
//! their first status. The kernel also owns the data pointer: it maps the user buffer
//! and builds PRPs or SGLs itself, so FUSE/PSDT and the command identifier of a
//! [`Command`] are not passed on.

use ironvme_nvme::cmd::Command;
use ironvme_nvme::status::Status;
use nix::errno::Errno;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct nvme_passthru_cmd` (alias `nvme_admin_cmd`), 72 bytes: the argument of
/// `NVME_IOCTL_ADMIN_CMD` and `NVME_IOCTL_IO_CMD`, the passthrough ioctls of kernels
/// before 5.5. `result` holds completion DW0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmePassthruCmd {
    /// CDW0 bits 7:0.
    pub opcode: u8,
    /// CDW0 bits 15:8 (FUSE, PSDT); the kernel ignores PSDT and sets its own.
    pub flags: u8,
    /// Reserved (the kernel assigns the command identifier).
    pub rsvd1: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// User address of the metadata buffer, or 0.
    pub metadata: u64,
    /// User address of the data buffer, or 0.
    pub addr: u64,
    /// Metadata buffer length in bytes.
    pub metadata_len: u32,
    /// Data buffer length in bytes.
    pub data_len: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds; 0 takes the kernel's default (`nvme_core.io_timeout`,
    /// `admin_timeout`).
    pub timeout_ms: u32,
    /// Completion DW0, written by the kernel.
    pub result: u32,
}

/// `struct nvme_passthru_cmd64`, 80 bytes: the argument of `NVME_IOCTL_ADMIN64_CMD` and
/// `NVME_IOCTL_IO64_CMD` (Linux 5.5+). `result` holds completion DW0 (low half) and DW1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmePassthruCmd64 {
    /// CDW0 bits 7:0.
    pub opcode: u8,
    /// CDW0 bits 15:8 (FUSE, PSDT); the kernel ignores PSDT and sets its own.
    pub flags: u8,
    /// Reserved (the kernel assigns the command identifier).
    pub rsvd1: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// User address of the metadata buffer, or 0.
    pub metadata: u64,
    /// User address of the data buffer, or 0.
    pub addr: u64,
    /// Metadata buffer length in bytes.
    pub metadata_len: u32,
    /// Data buffer length in bytes (`vec_cnt` for the vectored variant, unused here).
    pub data_len: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds; 0 takes the kernel's default.
    pub timeout_ms: u32,
    /// Reserved.
    pub rsvd2: u32,
    /// Completion DW0 (bits 31:0) and DW1 (bits 63:32), written by the kernel.
    pub result: u64,
}

/// `struct nvme_uring_cmd`, 72 bytes: `nvme_passthru_cmd64` without `result`. It sits in
/// the 80-byte command area of a 128-byte io_uring SQE (`sqe->cmd`, byte 48 of the SQE);
/// the result comes back in the big CQE instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeUringCmd {
    /// CDW0 bits 7:0.
    pub opcode: u8,
    /// CDW0 bits 15:8 (FUSE, PSDT); the kernel ignores PSDT and sets its own.
    pub flags: u8,
    /// Reserved.
    pub rsvd1: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// User address of the metadata buffer, or 0.
    pub metadata: u64,
    /// User address of the data buffer, or 0 (with `IORING_URING_CMD_FIXED`: an address
    /// inside the registered buffer named by the SQE's `buf_index`).
    pub addr: u64,
    /// Metadata buffer length in bytes.
    pub metadata_len: u32,
    /// Data buffer length in bytes.
    pub data_len: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds; 0 takes the kernel's default.
    pub timeout_ms: u32,
    /// Reserved.
    pub rsvd2: u32,
}

/// Size in bytes of the command area of a 128-byte SQE (`IORING_SETUP_SQE128`).
pub const SQE128_CMD_BYTES: usize = 80;

// Layouts, from include/uapi/linux/nvme_ioctl.h.
const _: () = assert!(size_of::<NvmePassthruCmd>() == 72);
const _: () = assert!(size_of::<NvmePassthruCmd64>() == 80);
const _: () = assert!(size_of::<NvmeUringCmd>() == 72);
const _: () = assert!(offset_of!(NvmePassthruCmd64, nsid) == 4);
const _: () = assert!(offset_of!(NvmePassthruCmd64, metadata) == 16);
const _: () = assert!(offset_of!(NvmePassthruCmd64, addr) == 24);
const _: () = assert!(offset_of!(NvmePassthruCmd64, metadata_len) == 32);
const _: () = assert!(offset_of!(NvmePassthruCmd64, data_len) == 36);
const _: () = assert!(offset_of!(NvmePassthruCmd64, cdw10) == 40);
const _: () = assert!(offset_of!(NvmePassthruCmd64, timeout_ms) == 64);
const _: () = assert!(offset_of!(NvmePassthruCmd64, result) == 72);
const _: () = assert!(offset_of!(NvmePassthruCmd, result) == 68);
const _: () = assert!(offset_of!(NvmeUringCmd, addr) == 24);
const _: () = assert!(offset_of!(NvmeUringCmd, data_len) == 36);
const _: () = assert!(offset_of!(NvmeUringCmd, cdw15) == 60);
const _: () = assert!(offset_of!(NvmeUringCmd, timeout_ms) == 64);
const _: () = assert!(size_of::<NvmeUringCmd>() <= SQE128_CMD_BYTES);

/// `_IOWR('N', nr, size)`, as the header writes the passthrough requests.
const fn iowr(nr: u8, size: usize) -> u32 {
    nix::request_code_readwrite!(b'N', nr, size) as u32
}

/// `NVME_IOCTL_ID` = `_IO('N', 0x40)`: returns the namespace ID of a namespace node
/// (block or generic), `ENOTTY` on the controller node.
pub const NVME_IOCTL_ID: u32 = nix::request_code_none!(b'N', 0x40) as u32;
/// `NVME_IOCTL_ADMIN_CMD` = `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
pub const NVME_IOCTL_ADMIN_CMD: u32 = iowr(0x41, size_of::<NvmePassthruCmd>());
/// `NVME_IOCTL_IO_CMD` = `_IOWR('N', 0x43, struct nvme_passthru_cmd)`.
pub const NVME_IOCTL_IO_CMD: u32 = iowr(0x43, size_of::<NvmePassthruCmd>());
/// `NVME_IOCTL_ADMIN64_CMD` = `_IOWR('N', 0x47, struct nvme_passthru_cmd64)` (Linux 5.5+).
pub const NVME_IOCTL_ADMIN64_CMD: u32 = iowr(0x47, size_of::<NvmePassthruCmd64>());
/// `NVME_IOCTL_IO64_CMD` = `_IOWR('N', 0x48, struct nvme_passthru_cmd64)` (Linux 5.5+).
pub const NVME_IOCTL_IO64_CMD: u32 = iowr(0x48, size_of::<NvmePassthruCmd64>());
/// `NVME_URING_CMD_IO` = `_IOWR('N', 0x80, struct nvme_uring_cmd)`: the `cmd_op` of an
/// I/O command sent with `IORING_OP_URING_CMD` to `/dev/ngXnY` (Linux 5.19+).
pub const NVME_URING_CMD_IO: u32 = iowr(0x80, size_of::<NvmeUringCmd>());
/// `NVME_URING_CMD_ADMIN` = `_IOWR('N', 0x82, struct nvme_uring_cmd)`: an admin command
/// over io_uring, on the controller node `/dev/nvmeX` (Linux 6.0+, `CAP_SYS_ADMIN`).
pub const NVME_URING_CMD_ADMIN: u32 = iowr(0x82, size_of::<NvmeUringCmd>());

// The values the 6.1 header gives (a C program printing the macros, built against
// linux-libc-dev 6.1): the encoding above must reproduce them.
const _: () = assert!(NVME_IOCTL_ID == 0x4E40);
const _: () = assert!(NVME_IOCTL_ADMIN_CMD == 0xC048_4E41);
const _: () = assert!(NVME_IOCTL_IO_CMD == 0xC048_4E43);
const _: () = assert!(NVME_IOCTL_ADMIN64_CMD == 0xC050_4E47);
const _: () = assert!(NVME_IOCTL_IO64_CMD == 0xC050_4E48);
const _: () = assert!(NVME_URING_CMD_IO == 0xC048_4E80);
const _: () = assert!(NVME_URING_CMD_ADMIN == 0xC048_4E82);

macro_rules! fill_from_command {
    ($ty:ident { $($extra:tt)* }, $cmd:expr, $addr:expr, $len:expr) => {{
        let c: &Command = $cmd;
        $ty {
            opcode: c.opcode(),
            // FUSE stays; PSDT (bits 7:6 of this byte) and the CID are the kernel's.
            flags: ((c.cdw0 >> 8) & 0x3) as u8,
            rsvd1: 0,
            nsid: c.nsid,
            cdw2: c.cdw2,
            cdw3: c.cdw3,
            metadata: 0,
            addr: $addr,
            metadata_len: 0,
            data_len: $len,
            cdw10: c.cdw10,
            cdw11: c.cdw11,
            cdw12: c.cdw12,
            cdw13: c.cdw13,
            cdw14: c.cdw14,
            cdw15: c.cdw15,
            timeout_ms: 0,
            $($extra)*
        }
    }};
}

impl NvmePassthruCmd64 {
    /// The passthrough form of `cmd` moving `data_len` bytes at user address `addr` (0
    /// and 0 for no data), with the kernel's default timeout. MPTR, DPTR, PSDT and the CID
    /// of `cmd` are dropped: the kernel maps the buffer and fills them.
    pub fn from_command(cmd: &Command, addr: u64, data_len: u32) -> NvmePassthruCmd64 {
        fill_from_command!(NvmePassthruCmd64 { rsvd2: 0, result: 0 }, cmd, addr, data_len)
    }
}

impl NvmePassthruCmd {
    /// As [`NvmePassthruCmd64::from_command`], for the 32-bit ioctls.
    pub fn from_command(cmd: &Command, addr: u64, data_len: u32) -> NvmePassthruCmd {
        fill_from_command!(NvmePassthruCmd { result: 0 }, cmd, addr, data_len)
    }
}

impl NvmeUringCmd {
    /// As [`NvmePassthruCmd64::from_command`], for `IORING_OP_URING_CMD`.
    pub fn from_command(cmd: &Command, addr: u64, data_len: u32) -> NvmeUringCmd {
        fill_from_command!(NvmeUringCmd { rsvd2: 0 }, cmd, addr, data_len)
    }

    /// The structure as the 80 bytes of a 128-byte SQE's command area (little-endian,
    /// zero-padded after byte 72).
    pub fn to_sqe_cmd(&self) -> [u8; SQE128_CMD_BYTES] {
        let mut out = [0u8; SQE128_CMD_BYTES];
        out[0] = self.opcode;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&self.rsvd1.to_le_bytes());
        let dwords = [(4, self.nsid), (8, self.cdw2), (12, self.cdw3)];
        for (at, v) in dwords {
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        out[16..24].copy_from_slice(&self.metadata.to_le_bytes());
        out[24..32].copy_from_slice(&self.addr.to_le_bytes());
        let tail = [
            self.metadata_len,
            self.data_len,
            self.cdw10,
            self.cdw11,
            self.cdw12,
            self.cdw13,
            self.cdw14,
            self.cdw15,
            self.timeout_ms,
            self.rsvd2,
        ];
        for (i, v) in tail.into_iter().enumerate() {
            out[32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// Decodes the non-negative return value of a passthrough ioctl, or the non-negative
/// `res` of a uring-cmd CQE: 0 is success, a positive value the command's 15-bit NVMe
/// status (e.g. `0x281` Unrecovered Read Error, `0x4281` with DNR set).
pub fn decode_return(ret: i32) -> Result<(), Status> {
    debug_assert!(ret >= 0, "negative returns are errno values");
    if ret == 0 {
        Ok(())
    } else {
        Err(Status::from_raw(ret as u16))
    }
}

/// The result of a passthrough ioctl whose system call succeeded: `Ok(result)` with the
/// completion's DW0 (and DW1, for the 64-bit variants) or `Err(status)`.
pub type Passthru = Result<u64, Status>;

mod raw {
    use super::*;
    nix::ioctl_readwrite_bad!(admin64, NVME_IOCTL_ADMIN64_CMD, NvmePassthruCmd64);
    nix::ioctl_readwrite_bad!(io64, NVME_IOCTL_IO64_CMD, NvmePassthruCmd64);
    nix::ioctl_readwrite_bad!(admin32, NVME_IOCTL_ADMIN_CMD, NvmePassthruCmd);
    nix::ioctl_readwrite_bad!(io32, NVME_IOCTL_IO_CMD, NvmePassthruCmd);
    nix::ioctl_none_bad!(id, NVME_IOCTL_ID);
}

/// Runs `NVME_IOCTL_ADMIN64_CMD`.
///
/// Errors: the ioctl's errno (`ENOTTY` on kernels before 5.5: use [`admin32`]).
///
/// # Safety
///
/// `cmd.addr` must point at `cmd.data_len` bytes (and `cmd.metadata` at
/// `cmd.metadata_len` bytes) that the kernel may read or write, as the opcode's data
/// direction says, and that stay valid until this returns.
pub unsafe fn admin64(fd: BorrowedFd<'_>, cmd: &mut NvmePassthruCmd64) -> Result<Passthru, Errno> {
    // SAFETY: `cmd` is a valid, exclusive nvme_passthru_cmd64 for the call; the buffers it
    // names are the caller's promise.
    let ret = unsafe { raw::admin64(fd.as_raw_fd(), cmd) }?;
    Ok(decode_return(ret).map(|()| cmd.result))
}

/// Runs `NVME_IOCTL_IO64_CMD`.
///
/// Errors: the ioctl's errno (`ENOTTY` on kernels before 5.5: use [`io32`]).
///
/// # Safety
///
/// As [`admin64`].
pub unsafe fn io64(fd: BorrowedFd<'_>, cmd: &mut NvmePassthruCmd64) -> Result<Passthru, Errno> {
    // SAFETY: as in `admin64`.
    let ret = unsafe { raw::io64(fd.as_raw_fd(), cmd) }?;
    Ok(decode_return(ret).map(|()| cmd.result))
}

/// Runs `NVME_IOCTL_ADMIN_CMD` (the 32-bit-result form every kernel has).
///
/// Errors: the ioctl's errno.
///
/// # Safety
///
/// As [`admin64`].
pub unsafe fn admin32(fd: BorrowedFd<'_>, cmd: &mut NvmePassthruCmd) -> Result<Passthru, Errno> {
    // SAFETY: as in `admin64`, for nvme_passthru_cmd.
    let ret = unsafe { raw::admin32(fd.as_raw_fd(), cmd) }?;
    Ok(decode_return(ret).map(|()| cmd.result as u64))
}

/// Runs `NVME_IOCTL_IO_CMD` (the 32-bit-result form every kernel has).
///
/// Errors: the ioctl's errno.
///
/// # Safety
///
/// As [`admin64`].
pub unsafe fn io32(fd: BorrowedFd<'_>, cmd: &mut NvmePassthruCmd) -> Result<Passthru, Errno> {
    // SAFETY: as in `admin64`, for nvme_passthru_cmd.
    let ret = unsafe { raw::io32(fd.as_raw_fd(), cmd) }?;
    Ok(decode_return(ret).map(|()| cmd.result as u64))
}

/// `NVME_IOCTL_ID`: the namespace ID of a namespace node (`/dev/ngXnY`, `/dev/nvmeXnY`).
///
/// Errors: `ENOTTY` on the controller node and on devices that are not NVMe namespaces.
pub fn namespace_id(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    // SAFETY: NVME_IOCTL_ID takes no argument and touches no user memory.
    let ret = unsafe { raw::id(fd.as_raw_fd()) }?;
    Ok(ret as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvme_nvme::cmd::{DsmAttributes, nvm};

    #[test]
    fn layouts_match_the_header() {
        assert_eq!(size_of::<NvmePassthruCmd64>(), 80);
        assert_eq!(size_of::<NvmePassthruCmd>(), 72);
        assert_eq!(size_of::<NvmeUringCmd>(), 72);
        assert_eq!(offset_of!(NvmePassthruCmd64, addr), 24);
        assert_eq!(offset_of!(NvmePassthruCmd64, data_len), 36);
        assert_eq!(offset_of!(NvmePassthruCmd64, cdw10), 40);
        assert_eq!(offset_of!(NvmePassthruCmd64, cdw15), 60);
        assert_eq!(offset_of!(NvmePassthruCmd64, result), 72);
        assert_eq!(offset_of!(NvmePassthruCmd, timeout_ms), 64);
        assert_eq!(offset_of!(NvmePassthruCmd, result), 68);
        assert_eq!(offset_of!(NvmeUringCmd, rsvd2), 68);
    }

    #[test]
    fn request_numbers_match_the_header() {
        // Values printed by a C program including <linux/nvme_ioctl.h> (Linux 6.1).
        assert_eq!(NVME_IOCTL_ADMIN64_CMD, 0xC050_4E47);
        assert_eq!(NVME_IOCTL_IO64_CMD, 0xC050_4E48);
        assert_eq!(NVME_IOCTL_ADMIN_CMD, 0xC048_4E41);
        assert_eq!(NVME_IOCTL_IO_CMD, 0xC048_4E43);
        assert_eq!(NVME_URING_CMD_IO, 0xC048_4E80);
        assert_eq!(NVME_URING_CMD_ADMIN, 0xC048_4E82);
        assert_eq!(NVME_IOCTL_ID, 0x4E40);
        // And nix's own _IOWR agrees with the hand-written form: dir 3 << 30 | size << 16.
        assert_eq!(NVME_IOCTL_IO64_CMD, 3 << 30 | 80 << 16 | (b'N' as u32) << 8 | 0x48);
    }

    #[test]
    fn positive_returns_are_nvme_statuses() {
        assert_eq!(decode_return(0), Ok(()));
        let e = decode_return(0x281).unwrap_err();
        assert_eq!(e, Status::UNRECOVERED_READ_ERROR);
        assert_eq!(e.name(), Some("Unrecovered Read Error"));
        let dnr = decode_return(0x4080).unwrap_err();
        assert!(dnr.dnr());
        assert!(dnr.same_code(Status::LBA_OUT_OF_RANGE));
        assert_eq!(dnr.code(), 0x080);
        assert!(decode_return(0x285).unwrap_err().same_code(Status::COMPARE_FAILURE));
    }

    #[test]
    fn commands_convert_field_by_field() {
        let mut c = Command::write(7, 0x1_0000_0002, 8, true);
        c.set_cid(0x1234);
        c.set_prp(0xdead_0000, 0xbeef_0000);
        c.cdw2 = 2;
        c.cdw3 = 3;
        c.cdw13 = 13;
        c.cdw14 = 14;
        c.cdw15 = 15;
        let p = NvmePassthruCmd64::from_command(&c, 0x7000, 4096);
        assert_eq!((p.opcode, p.flags, p.rsvd1, p.nsid), (nvm::WRITE, 0, 0, 7));
        assert_eq!(
            (p.cdw2, p.cdw3, p.metadata, p.addr, p.data_len),
            (2, 3, 0, 0x7000, 4096)
        );
        assert_eq!((p.cdw10, p.cdw11, p.cdw12), (2, 1, 7 | 1 << 30));
        assert_eq!((p.cdw13, p.cdw14, p.cdw15, p.timeout_ms, p.result), (13, 14, 15, 0, 0));

        let p32 = NvmePassthruCmd::from_command(&c, 0x7000, 4096);
        assert_eq!(
            (p32.opcode, p32.nsid, p32.addr, p32.data_len, p32.cdw12),
            (1, 7, 0x7000, 4096, p.cdw12)
        );

        // An SGL-flagged command: PSDT is the kernel's business and is dropped.
        let mut s = Command::read(1, 0, 1);
        s.cdw0 |= 0b01 << 14 | 0b01 << 8; // PSDT = SGL, FUSE = first of a fused pair
        assert_eq!(NvmeUringCmd::from_command(&s, 0, 512).flags, 0b01);

        let dsm = Command::dataset_management(
            3,
            1,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        let u = NvmeUringCmd::from_command(&dsm, 0x1000, 16);
        assert_eq!((u.opcode, u.cdw10, u.cdw11), (nvm::DATASET_MANAGEMENT, 0, 4));
    }

    #[test]
    fn uring_cmd_bytes_are_the_struct_layout() {
        let c = NvmeUringCmd::from_command(&Command::read(2, 0x0102_0304_0506, 16), 0xAABB_CCDD_EEFF_0011, 8192);
        let b = c.to_sqe_cmd();
        assert_eq!(b[0], nvm::READ);
        assert_eq!(&b[4..8], &2u32.to_le_bytes());
        assert_eq!(&b[24..32], &0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
        assert_eq!(&b[36..40], &8192u32.to_le_bytes());
        assert_eq!(&b[40..44], &0x0304_0506u32.to_le_bytes());
        assert_eq!(&b[44..48], &0x0102u32.to_le_bytes());
        assert_eq!(&b[48..52], &15u32.to_le_bytes());
        assert!(b[72..].iter().all(|&x| x == 0));
        // Same bytes as the in-memory repr(C) struct.
        // SAFETY: NvmeUringCmd is repr(C), 72 bytes, with no padding (checked above), so
        // viewing it as bytes reads initialised memory only.
        let mem = unsafe { std::slice::from_raw_parts((&c as *const NvmeUringCmd).cast::<u8>(), 72) };
        assert_eq!(&b[..72], mem);
    }
}
