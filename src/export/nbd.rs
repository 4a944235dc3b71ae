//! The NBD server: namespaces and VDE volumes served over the Network Block Device
//! protocol (NBD's `doc/proto.md`, fixed newstyle negotiation, simple replies), to the
//! Linux kernel's `nbd` client (`nbd-client`) and to QEMU (`nbd://HOST:PORT/NAME`).
//!
//! # Threads and bounds
//!
//! [`serve`] accepts connections (at most [`MAX_CONNECTIONS`] at once; more are closed as
//! they arrive) and runs each on a thread of its own. A connection haggles options
//! ([`wire`] has the byte layouts), then, once an export is chosen, creates its own I/O
//! queue on the export's [`Backing`](super::Backing) and one pool of DMA buffers
//! ([`Plan::buffers`] × [`Plan::buf_bytes`], about [`POOL_BYTES`]); nothing is allocated
//! per request after that.
//!
//! # Transmission
//!
//! Up to [`MAX_REQUESTS`] requests are in flight per connection and their replies go out
//! as they complete, in any order (the client matches them by cookie). A request is split
//! into backend operations of at most [`Plan::buf_bytes`] (reads and writes) or
//! [`Plan::piece_blocks`] (write zeroes, trim). A READ's reply header and data leave in
//! one vectored write straight from the DMA buffers the device filled; a WRITE's payload
//! is read from the socket straight into the DMA buffers the device then writes.
//!
//! # Stopping
//!
//! When [`Stop`] is set, connections stop reading requests, finish the ones in flight,
//! flush and close; [`serve`] then flushes every export and returns.

use super::{STOP_POLL, Stop};
use ironvme_nvme::block::{BlockError, BlockQueue, Completion, NamespaceInfo, Op};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wire::*;

/// One NBD export: its name and what backs it.
pub struct Export {
    /// The name clients ask for (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`); at most 4096 bytes
    /// (proto.md "Conventions"). The empty name is the default export.
    pub name: String,
    /// The namespace served.
    pub backing: Arc<super::Backing>,
}

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;
/// Requests in flight per connection (each holds a request slot until its reply is sent).
pub const MAX_REQUESTS: usize = 32;
/// The largest payload advertised (`NBD_INFO_BLOCK_SIZE` maximum), in bytes; less when
/// the device's transfers are small ([`Plan::max_payload`]).
pub const MAX_PAYLOAD_BYTES: usize = 4 << 20;
/// DMA buffer memory per connection, in bytes (at least [`MAX_CHUNKS`] buffers).
pub const POOL_BYTES: usize = 8 << 20;
/// The size of one buffer of the pool when the device allows it, in bytes.
pub const BUF_BYTES: usize = 128 << 10;
/// Backend operations (buffers) one READ or WRITE may be split into.
pub const MAX_CHUNKS: usize = 32;
/// Most blocks in one backend Write Zeroes (one NVMe command's NLB).
pub const MAX_PIECE_BLOCKS: u32 = 65536;
/// Longest option payload read during the handshake, in bytes; a longer one is answered
/// `NBD_REP_ERR_TOO_BIG` and the connection closed unread (proto.md "Termination of the
/// session during option haggling": a server MAY hard-disconnect a client it deems a
/// denial of service).
pub const MAX_OPTION_BYTES: usize = 16 << 10;
/// Options one connection may send before it is closed.
pub const MAX_OPTIONS: usize = 128;
/// The longest refused WRITE payload read and discarded to keep the stream in sync
/// (proto.md "Size constraints": payloads up to 2^25 bytes SHOULD NOT be deemed a denial
/// of service); a longer one is refused and the connection closed.
pub const MAX_DRAIN_BYTES: u64 = 32 << 20;
/// A handshake not finished in this time is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A reply the client does not accept any byte of for this long closes the connection.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// After [`Stop`] is set, how long a connection may take to receive the rest of a
/// request it has started reading.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The byte layouts of the protocol (proto.md "Values"; every number big-endian) and
/// total parsers for what clients send: any bytes give a value or a [`WireError`], never
/// a panic.
pub mod wire {
    /// `NBDMAGIC`, the first 8 bytes the server sends (proto.md "Newstyle negotiation").
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// `IHAVEOPT`: after `NBDMAGIC` in the greeting, and before each client option.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// The magic of an option reply (proto.md "Fixed newstyle negotiation").
    pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    /// `NBD_REQUEST_MAGIC` (proto.md "Request message").
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    /// `NBD_SIMPLE_REPLY_MAGIC` (proto.md "Simple reply message").
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

    /// Handshake flag `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
    /// Handshake flag `NBD_FLAG_NO_ZEROES`.
    pub const FLAG_NO_ZEROES: u16 = 1 << 1;
    /// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client flag `NBD_FLAG_C_NO_ZEROES`.
    pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

    /// Transmission flag `NBD_FLAG_HAS_FLAGS` (always set).
    pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
    /// Transmission flag `NBD_FLAG_READ_ONLY`.
    pub const FLAG_READ_ONLY: u16 = 1 << 1;
    /// Transmission flag `NBD_FLAG_SEND_FLUSH`.
    pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
    /// Transmission flag `NBD_FLAG_SEND_FUA`.
    pub const FLAG_SEND_FUA: u16 = 1 << 3;
    /// Transmission flag `NBD_FLAG_SEND_TRIM`.
    pub const FLAG_SEND_TRIM: u16 = 1 << 5;
    /// Transmission flag `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

    /// `NBD_OPT_EXPORT_NAME`.
    pub const OPT_EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const OPT_ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const OPT_LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const OPT_STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const OPT_INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const OPT_GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const OPT_STRUCTURED_REPLY: u32 = 8;

    /// `NBD_REP_ACK`.
    pub const REP_ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const REP_SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const REP_INFO: u32 = 3;
    /// `NBD_REP_ERR_UNSUP`.
    pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
    /// `NBD_REP_ERR_INVALID`.
    pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

    /// `NBD_INFO_EXPORT`.
    pub const INFO_EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const INFO_NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const INFO_DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`.
    pub const INFO_BLOCK_SIZE: u16 = 3;

    /// `NBD_CMD_READ`.
    pub const CMD_READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const CMD_WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const CMD_DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const CMD_FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const CMD_TRIM: u16 = 4;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const CMD_WRITE_ZEROES: u16 = 6;

    /// Command flag `NBD_CMD_FLAG_FUA`.
    pub const CMD_FLAG_FUA: u16 = 1 << 0;
    /// Command flag `NBD_CMD_FLAG_NO_HOLE`.
    pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

    /// `NBD_EIO`.
    pub const EIO: u32 = 5;
    /// `NBD_EINVAL`.
    pub const EINVAL: u32 = 22;
    /// `NBD_ENOSPC`.
    pub const ENOSPC: u32 = 28;

    /// Bytes of an option header (`IHAVEOPT`, option, length).
    pub const OPTION_HEADER_BYTES: usize = 16;
    /// Bytes of a request header.
    pub const REQUEST_BYTES: usize = 28;
    /// Bytes of a simple reply header.
    pub const SIMPLE_REPLY_BYTES: usize = 16;
    /// Bytes of an option reply header.
    pub const OPTION_REPLY_BYTES: usize = 20;
    /// The longest string the protocol allows (export names, descriptions), in bytes.
    pub const MAX_STRING_BYTES: usize = 4096;

    /// Why bytes from a client were refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum WireError {
        /// Fewer bytes than the structure needs.
        #[error("{got} bytes where {need} are needed")]
        Short {
            /// Bytes needed.
            need: usize,
            /// Bytes given.
            got: usize,
        },
        /// The structure's magic number is wrong.
        #[error("bad magic {0:#x}")]
        BadMagic(u64),
        /// Client flags other than `NBD_FLAG_C_FIXED_NEWSTYLE` and `NBD_FLAG_C_NO_ZEROES`
        /// (proto.md "Client flags": the server MUST drop the connection).
        #[error("unknown client flags {0:#x}")]
        ClientFlags(u32),
        /// A length field disagrees with the data around it.
        #[error("{0}")]
        Length(&'static str),
    }

    fn be16(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
    }

    fn be32(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
    }

    fn be64(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_be_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
    }

    fn need(b: &[u8], n: usize) -> Result<(), WireError> {
        if b.len() < n {
            return Err(WireError::Short { need: n, got: b.len() });
        }
        Ok(())
    }

    /// The client flags (proto.md "Client flags"), 4 bytes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ClientFlags {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        pub fixed_newstyle: bool,
        /// `NBD_FLAG_C_NO_ZEROES`: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
        pub no_zeroes: bool,
    }

    impl ClientFlags {
        /// Parses the first 4 bytes of `b`.
        ///
        /// Errors: [`WireError::Short`]; [`WireError::ClientFlags`] for any flag the
        /// server did not offer.
        pub fn parse(b: &[u8]) -> Result<ClientFlags, WireError> {
            need(b, 4)?;
            let f = be32(b, 0).unwrap_or_default();
            if f & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                return Err(WireError::ClientFlags(f));
            }
            Ok(ClientFlags {
                fixed_newstyle: f & FLAG_C_FIXED_NEWSTYLE != 0,
                no_zeroes: f & FLAG_C_NO_ZEROES != 0,
            })
        }
    }

    /// An option header (proto.md "Newstyle negotiation"), [`OPTION_HEADER_BYTES`] bytes;
    /// `len` bytes of option data follow it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct OptionHeader {
        /// The option (`NBD_OPT_*`).
        pub option: u32,
        /// Bytes of option data that follow.
        pub len: u32,
    }

    impl OptionHeader {
        /// Parses the first [`OPTION_HEADER_BYTES`] of `b`.
        ///
        /// Errors: [`WireError::Short`]; [`WireError::BadMagic`] if it does not start
        /// with `IHAVEOPT`.
        pub fn parse(b: &[u8]) -> Result<OptionHeader, WireError> {
            need(b, OPTION_HEADER_BYTES)?;
            let magic = be64(b, 0).unwrap_or_default();
            if magic != IHAVEOPT {
                return Err(WireError::BadMagic(magic));
            }
            Ok(OptionHeader {
                option: be32(b, 8).unwrap_or_default(),
                len: be32(b, 12).unwrap_or_default(),
            })
        }

        /// The header's bytes, as a client sends them.
        pub fn to_bytes(&self) -> [u8; OPTION_HEADER_BYTES] {
            let mut b = [0; OPTION_HEADER_BYTES];
            b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
            b[8..12].copy_from_slice(&self.option.to_be_bytes());
            b[12..].copy_from_slice(&self.len.to_be_bytes());
            b
        }
    }

    /// The data of `NBD_OPT_INFO` and `NBD_OPT_GO` (proto.md "Option types"): a 32-bit
    /// name length, the name, a 16-bit count and that many 16-bit information requests.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct InfoRequest<'a> {
        /// The export's name (empty: the default export).
        pub name: &'a [u8],
        /// The information requests, 2 bytes each, big-endian.
        pub infos: &'a [u8],
    }

    impl<'a> InfoRequest<'a> {
        /// Parses the whole of `data`, an option's data.
        ///
        /// Errors: [`WireError::Short`]; [`WireError::Length`] when the name length
        /// exceeds the data less 6 bytes or [`MAX_STRING_BYTES`], or the request count
        /// does not account for exactly the rest of the data.
        pub fn parse(data: &'a [u8]) -> Result<InfoRequest<'a>, WireError> {
            need(data, 6)?;
            let name_len = be32(data, 0).unwrap_or_default() as usize;
            if name_len > data.len() - 6 {
                return Err(WireError::Length("export name longer than the option data"));
            }
            if name_len > MAX_STRING_BYTES {
                return Err(WireError::Length("export name longer than 4096 bytes"));
            }
            let name = &data[4..4 + name_len];
            let count = be16(data, 4 + name_len).unwrap_or_default() as usize;
            let infos = &data[6 + name_len..];
            if infos.len() != count * 2 {
                return Err(WireError::Length(
                    "information request count does not match the option length",
                ));
            }
            Ok(InfoRequest { name, infos })
        }

        /// Whether the client asked for information type `info`.
        pub fn wants(&self, info: u16) -> bool {
            self.infos.chunks_exact(2).any(|c| c == info.to_be_bytes())
        }
    }

    /// A transmission request header (proto.md "Request message"), [`REQUEST_BYTES`]
    /// bytes; a WRITE's `length` bytes of data follow it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Request {
        /// Command flags (`NBD_CMD_FLAG_*`).
        pub flags: u16,
        /// The command (`NBD_CMD_*`).
        pub kind: u16,
        /// The client's cookie, echoed in the reply.
        pub cookie: u64,
        /// Byte offset into the export.
        pub offset: u64,
        /// Length in bytes.
        pub length: u32,
    }

    impl Request {
        /// Parses the first [`REQUEST_BYTES`] of `b`.
        ///
        /// Errors: [`WireError::Short`]; [`WireError::BadMagic`] without
        /// `NBD_REQUEST_MAGIC`.
        pub fn parse(b: &[u8]) -> Result<Request, WireError> {
            need(b, REQUEST_BYTES)?;
            let magic = be32(b, 0).unwrap_or_default();
            if magic != REQUEST_MAGIC {
                return Err(WireError::BadMagic(magic as u64));
            }
            Ok(Request {
                flags: be16(b, 4).unwrap_or_default(),
                kind: be16(b, 6).unwrap_or_default(),
                cookie: be64(b, 8).unwrap_or_default(),
                offset: be64(b, 16).unwrap_or_default(),
                length: be32(b, 24).unwrap_or_default(),
            })
        }

        /// The header's bytes, as a client sends them.
        pub fn to_bytes(&self) -> [u8; REQUEST_BYTES] {
            let mut b = [0; REQUEST_BYTES];
            b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            b[4..6].copy_from_slice(&self.flags.to_be_bytes());
            b[6..8].copy_from_slice(&self.kind.to_be_bytes());
            b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
            b[16..24].copy_from_slice(&self.offset.to_be_bytes());
            b[24..].copy_from_slice(&self.length.to_be_bytes());
            b
        }
    }

    /// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, the handshake flags.
    pub fn greeting() -> [u8; 18] {
        let mut b = [0; 18];
        b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        b
    }

    /// An option reply header: magic, the option, the reply type, `len` bytes of data
    /// to follow.
    pub fn option_reply(option: u32, reply: u32, len: u32) -> [u8; OPTION_REPLY_BYTES] {
        let mut b = [0; OPTION_REPLY_BYTES];
        b[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&option.to_be_bytes());
        b[12..16].copy_from_slice(&reply.to_be_bytes());
        b[16..].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// A simple reply header: magic, `error` (0 or an `NBD_E*`), the cookie.
    pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
        let mut b = [0; SIMPLE_REPLY_BYTES];
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&error.to_be_bytes());
        b[8..].copy_from_slice(&cookie.to_be_bytes());
        b
    }

    /// The export's size in bytes and transmission flags, as `NBD_OPT_EXPORT_NAME`'s
    /// reply and `NBD_INFO_EXPORT` carry them (10 bytes).
    pub fn export_size_flags(size: u64, flags: u16) -> [u8; 10] {
        let mut b = [0; 10];
        b[..8].copy_from_slice(&size.to_be_bytes());
        b[8..].copy_from_slice(&flags.to_be_bytes());
        b
    }

    /// The payload of `NBD_INFO_BLOCK_SIZE`: the type and the minimum, preferred and
    /// maximum sizes in bytes (14 bytes).
    pub fn info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
        let mut b = [0; 14];
        b[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        b[2..6].copy_from_slice(&min.to_be_bytes());
        b[6..10].copy_from_slice(&preferred.to_be_bytes());
        b[10..].copy_from_slice(&max.to_be_bytes());
        b
    }
}

/// How a write with `NBD_CMD_FLAG_FUA` is made durable before its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuaMode {
    /// No volatile write cache: a completed write is durable.
    NotNeeded,
    /// The backend honours FUA ([`Op::Write`] with `fua`: `RWF_DSYNC` on the kernel's
    /// block and file paths).
    Native,
    /// The write, then [`Op::Flush`]: NVMe command backends, as QEMU's controller ignores
    /// FUA (DESIGN.md), and VDE volumes.
    Flush,
}

/// What a connection does with one export: sizes, limits and how each command maps to
/// the backend. Pure: computed from the namespace alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Namespace block size in bytes: the advertised minimum block size.
    pub block_size: u32,
    /// Export size in bytes.
    pub size_bytes: u64,
    /// Bytes of one pool buffer: one backend read or write (a multiple of the block size,
    /// at most [`BUF_BYTES`] and the namespace's largest transfer).
    pub buf_bytes: usize,
    /// Buffers in the connection's pool.
    pub buffers: usize,
    /// The advertised maximum payload in bytes (at most [`MAX_CHUNKS`] buffers).
    pub max_payload: u32,
    /// Blocks per backend Write Zeroes or Deallocate.
    pub piece_blocks: u32,
    /// How FUA is honoured.
    pub fua: FuaMode,
    /// The namespace has Write Zeroes (else zeroes are written from a zeroed buffer).
    pub write_zeroes: bool,
    /// The namespace has Deallocate (else TRIM is a successful no-op and not advertised).
    pub deallocate: bool,
}

impl Plan {
    /// The plan for namespace `info`; `fua_native` says whether the backend honours FUA.
    ///
    /// Errors: a message when the block size is not a power of two of at most 65536
    /// bytes (NBD's minimum block size must be, proto.md "Size constraints").
    pub fn new(info: &NamespaceInfo, fua_native: bool) -> Result<Plan, String> {
        let bs = info.block_size;
        if !bs.is_power_of_two() || bs > 65536 {
            return Err(format!(
                "block size {bs} is not a power of two of at most 65536 bytes, as NBD needs"
            ));
        }
        let bsz = bs as usize;
        let limit = BUF_BYTES
            .min(info.max_transfer_bytes)
            .min(MAX_PIECE_BLOCKS as usize * bsz);
        let buf_bytes = (limit / bsz * bsz).max(bsz);
        let buffers = (POOL_BYTES / buf_bytes).max(MAX_CHUNKS);
        let max_payload = MAX_PAYLOAD_BYTES.min(MAX_CHUNKS * buf_bytes) / bsz * bsz;
        let piece_blocks = (info.max_transfer_bytes / bsz).clamp(1, MAX_PIECE_BLOCKS as usize) as u32;
        let fua = match (info.volatile_write_cache, fua_native) {
            (false, _) => FuaMode::NotNeeded,
            (true, true) => FuaMode::Native,
            (true, false) => FuaMode::Flush,
        };
        Ok(Plan {
            block_size: bs,
            size_bytes: info.capacity_bytes(),
            buf_bytes,
            buffers,
            max_payload: max_payload as u32,
            piece_blocks,
            fua,
            write_zeroes: info.write_zeroes,
            deallocate: info.deallocate,
        })
    }

    /// The transmission flags advertised: flush, FUA and write zeroes always (zeroes are
    /// written when the device has no Write Zeroes), trim when the device deallocates;
    /// never read-only.
    pub fn transmission_flags(&self) -> u16 {
        let trim = if self.deallocate { FLAG_SEND_TRIM } else { 0 };
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES | trim
    }

    /// The advertised block sizes in bytes: minimum (the block size), preferred (at least
    /// 4096) and maximum payload.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        (self.block_size, self.block_size.max(4096), self.max_payload)
    }

    /// Backend queue depth for one connection: a data operation per buffer and one more
    /// operation per request.
    pub fn queue_depth(&self) -> usize {
        self.buffers + MAX_REQUESTS
    }
}

/// What a valid request asks of the backend. Block counts and LBAs are in the
/// namespace's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read `blocks` at `lba`.
    Read {
        /// First block.
        lba: u64,
        /// Blocks (at most [`Plan::max_payload`] bytes).
        blocks: u64,
    },
    /// Write the payload at `lba`.
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Zero `blocks` at `lba`.
    WriteZeroes {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
        /// Deallocation allowed (no `NBD_CMD_FLAG_NO_HOLE`).
        deallocate: bool,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Deallocate `blocks` at `lba`.
    Trim {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Make completed writes durable.
    Flush,
    /// Reply success with no I/O: a zero-length request, or a TRIM the device cannot do
    /// (trim is advisory, proto.md "`NBD_CMD_TRIM`").
    Nothing,
    /// `NBD_CMD_DISC`: finish what is in flight and close.
    Disconnect,
}

/// Checks request `req` against `plan` (proto.md "Request types", "Error values", "Size
/// constraints") and says what to do, or which `NBD_E*` error to reply.
///
/// Errors: `NBD_EINVAL` for an unknown command, a flag not documented for the command,
/// an offset or length that is not a whole number of blocks, a READ or WRITE longer
/// than [`Plan::max_payload`], or a READ or TRIM past the end; `NBD_ENOSPC` for a WRITE
/// or WRITE_ZEROES past the end.
pub fn classify(req: &Request, plan: &Plan) -> Result<Action, u32> {
    if req.kind == CMD_DISC {
        // Whatever its flags: a DISC has no reply to carry an error.
        return Ok(Action::Disconnect);
    }
    let allowed = match req.kind {
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => return Err(EINVAL),
    };
    if req.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    if req.kind == CMD_FLUSH {
        return Ok(Action::Flush);
    }
    let bs = plan.block_size as u64;
    let (offset, length) = (req.offset, req.length as u64);
    if offset % bs != 0 || length % bs != 0 {
        return Err(EINVAL);
    }
    let payload = matches!(req.kind, CMD_READ | CMD_WRITE);
    if payload && length > plan.max_payload as u64 {
        return Err(EINVAL);
    }
    if offset.checked_add(length).is_none_or(|end| end > plan.size_bytes) {
        return Err(match req.kind {
            CMD_WRITE | CMD_WRITE_ZEROES => ENOSPC,
            _ => EINVAL,
        });
    }
    let (lba, blocks) = (offset / bs, length / bs);
    if blocks == 0 {
        return Ok(Action::Nothing);
    }
    Ok(match req.kind {
        CMD_READ => Action::Read { lba, blocks },
        CMD_WRITE => Action::Write { lba, blocks, fua },
        CMD_WRITE_ZEROES => Action::WriteZeroes {
            lba,
            blocks,
            deallocate: req.flags & CMD_FLAG_NO_HOLE == 0,
            fua,
        },
        _ if plan.deallocate => Action::Trim { lba, blocks, fua },
        _ => Action::Nothing,
    })
}

/// What [`Transport::wait`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Bytes to read (or the end of the stream).
    Read,
    /// Room to write.
    Write,
}

/// A byte stream a session runs on: non-blocking reads and writes (`WouldBlock` when
/// nothing can move) and a way to wait. A TCP socket ([`Socket`]) in the server; an
/// in-memory duplex in tests and the fuzz target.
pub trait Transport: Read + Write {
    /// Waits until the stream may be ready for `what`, at most `timeout`. Returning
    /// early is allowed: callers retry.
    ///
    /// Errors: the OS error of waiting.
    fn wait(&mut self, what: Ready, timeout: Duration) -> io::Result<()>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn wait(&mut self, what: Ready, timeout: Duration) -> io::Result<()> {
        (**self).wait(what, timeout)
    }
}

/// A TCP connection as a [`Transport`]: a non-blocking socket and an epoll instance
/// (`mio`) watching it.
pub struct Socket {
    stream: mio::net::TcpStream,
    poll: mio::Poll,
    events: mio::Events,
}

impl Socket {
    /// Wraps `stream` (non-blocking, as `mio` accepts it) and sets `TCP_NODELAY`
    /// (proto.md "Protocol phases": both sides SHOULD disable Nagle's algorithm).
    ///
    /// Errors: the OS error of creating the epoll instance or registering the socket.
    pub fn new(mut stream: mio::net::TcpStream) -> io::Result<Socket> {
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut stream,
            mio::Token(0),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        stream.set_nodelay(true)?;
        Ok(Socket {
            stream,
            poll,
            events: mio::Events::with_capacity(4),
        })
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for Socket {
    fn wait(&mut self, _what: Ready, timeout: Duration) -> io::Result<()> {
        // Edge-triggered: callers wait only after a read or write returned WouldBlock,
        // so the next edge is the one they wait for; any other edge is an early return.
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }
}

/// Serves NBD on `listener` until `stop` is set; then drains outstanding I/O, flushes
/// every export, closes connections and returns.
///
/// Each connection runs [`serve_stream`] on a thread of its own; at most
/// [`MAX_CONNECTIONS`] at once.
///
/// Errors: [`io::ErrorKind::InvalidInput`] when export names repeat or exceed 4096 bytes,
/// or an export's block size cannot be an NBD minimum block size ([`Plan::new`]); the
/// OS error of polling the listener; the first export whose final Flush failed.
pub fn serve(listener: std::net::TcpListener, exports: Vec<Export>, stop: Stop) -> io::Result<()> {
    check_exports(&exports)?;
    let exports = Arc::new(exports);
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = mio::Poll::new()?;
    poll.registry()
        .register(&mut listener, mio::Token(0), mio::Interest::READABLE)?;
    let mut events = mio::Events::with_capacity(8);
    let active = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
    tracing::info!(%local, exports = ?names, "NBD server listening");
    while !stop.is_set() {
        match poll.poll(&mut events, Some(STOP_POLL)) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(%local, "NBD accept failed: {e}");
                    break;
                }
            };
            if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                tracing::warn!(%peer, "NBD connection refused: {MAX_CONNECTIONS} connections already");
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (exports, stop, count) = (Arc::clone(&exports), stop.clone(), Arc::clone(&active));
            let spawned = std::thread::Builder::new().name(format!("nbd {peer}")).spawn(move || {
                let peer = peer.to_string();
                match Socket::new(stream) {
                    Ok(socket) => {
                        if let Err(e) = serve_stream(socket, &peer, &exports, &stop) {
                            tracing::warn!(%peer, "NBD connection failed: {e}");
                        }
                    }
                    Err(e) => tracing::warn!(%peer, "NBD connection: {e}"),
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    active.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%peer, "NBD connection refused: no thread: {e}");
                }
            }
        }
        let (done, running): (Vec<_>, Vec<_>) = threads.into_iter().partition(|h| h.is_finished());
        threads = running;
        done.into_iter().for_each(join);
    }
    drop(listener);
    threads.into_iter().for_each(join);
    let mut result = Ok(());
    for export in exports.iter() {
        if let Err(e) = flush_backing(&export.backing) {
            tracing::warn!(export = export.name, "NBD export: final flush failed: {e}");
            if result.is_ok() {
                result = Err(io::Error::other(format!("flush of NBD export {:?}: {e}", export.name)));
            }
        }
    }
    tracing::info!(%local, "NBD server stopped");
    result
}

fn join(handle: std::thread::JoinHandle<()>) {
    if handle.join().is_err() {
        tracing::warn!("an NBD connection thread panicked");
    }
}

fn check_exports(exports: &[Export]) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    for (i, e) in exports.iter().enumerate() {
        if e.name.len() > MAX_STRING_BYTES {
            return invalid(format!("NBD export name of {} bytes: at most 4096", e.name.len()));
        }
        if exports[..i].iter().any(|o| o.name == e.name) {
            return invalid(format!("NBD export {:?} is named twice", e.name));
        }
        if let Err(why) = Plan::new(&e.backing.info, true) {
            return invalid(format!("NBD export {:?} ({}): {why}", e.name, e.backing.spec));
        }
    }
    Ok(())
}

/// One Flush on a fresh queue of `backing`.
fn flush_backing(backing: &super::Backing) -> Result<(), String> {
    let mut q = backing.queue(1).map_err(|e| e.to_string())?;
    ironvme_nvme::block::run_one(&mut q, Op::Flush, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether the backend turns FUA into a durable write by itself (the kernel's block and
/// file paths, `RWF_DSYNC`); see [`FuaMode`].
fn fua_native(backing: &super::Backing) -> bool {
    use crate::{Backend, Device};
    !matches!(*backing.device, Device::Volume(_)) && matches!(backing.device.backend(), Backend::Uring | Backend::Psync)
}

/// Runs one NBD session on `io` — handshake, then transmission — with the client at
/// `peer` (for logs), until the client disconnects, an error ends it, or `stop` is set
/// (then in-flight requests finish, the export is flushed and the session ends).
///
/// Errors: the OS error that ended the session (reading, writing, creating the queue or
/// the buffers); a client leaving, a protocol violation (logged as a warning) and a stop
/// end it with `Ok`.
pub fn serve_stream<T: Transport>(mut io: T, peer: &str, exports: &[Export], stop: &Stop) -> io::Result<()> {
    tracing::info!(peer, "NBD connection");
    let chosen = match handshake(&mut io, exports, stop) {
        Ok(Some(i)) => i,
        Ok(None) => {
            tracing::info!(peer, "NBD connection closed during the handshake");
            return Ok(());
        }
        Err(Failure::Protocol(why)) => {
            tracing::warn!(peer, "NBD handshake: {why}; closing");
            return Ok(());
        }
        Err(Failure::Io(_)) if stop.is_set() => {
            tracing::info!(
                peer,
                "NBD connection closed during the handshake: the server is stopping"
            );
            return Ok(());
        }
        Err(Failure::Io(e)) if is_disconnect(&e) => {
            tracing::info!(peer, "NBD client left during the handshake");
            return Ok(());
        }
        Err(Failure::Io(e)) => return Err(e),
    };
    let export = &exports[chosen];
    let plan = Plan::new(&export.backing.info, fua_native(&export.backing))
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    let queue = export
        .backing
        .queue(plan.queue_depth())
        .map_err(|e| io::Error::other(format!("I/O queue for NBD export {:?}: {e}", export.name)))?;
    let pool = BufferPool::new(&*export.backing.device.dma(), &export.backing.info, &plan)?;
    tracing::info!(peer, export = export.name, size = plan.size_bytes, "NBD transmission");
    let mut session = Session::new(io, queue, pool, plan, stop, peer, &export.name);
    let end = session.run();
    tracing::info!(
        peer,
        export = export.name,
        requests = session.requests,
        "NBD disconnect: {end}"
    );
    Ok(())
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Why a handshake ended without an export.
enum Failure {
    /// The client broke the protocol (the connection is closed: a hard disconnect).
    Protocol(String),
    /// Reading or writing failed, or the client left.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// Reads exactly `buf.len()` bytes, waiting as needed until `deadline`; gives up when
/// `stop` is set.
fn recv_exact<T: Transport>(io: &mut T, buf: &mut [u8], deadline: Instant, stop: &Stop) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match io.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.is_set() {
                    return Err(io::Error::other("the server is stopping"));
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"));
                }
                io.wait(Ready::Read, STOP_POLL)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bufs`, waiting while the client's window is full; fails after
/// [`SEND_TIMEOUT`] without progress.
fn send_all<T: Transport>(io: &mut T, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut left: usize = bufs.iter().map(|b| b.len()).sum();
    let mut since = Instant::now();
    while left > 0 {
        match io.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                left -= n;
                IoSlice::advance_slices(&mut bufs, n);
                since = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if since.elapsed() >= SEND_TIMEOUT {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
                }
                io.wait(Ready::Write, STOP_POLL)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send<T: Transport>(io: &mut T, parts: &[&[u8]]) -> io::Result<()> {
    let mut iov = [IoSlice::new(&[]); 4];
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = IoSlice::new(part);
    }
    send_all(io, &mut iov[..parts.len().min(4)])
}

/// Option haggling (proto.md "Fixed newstyle negotiation", "Option types"). Returns the
/// index of the export chosen with `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`, or `None` when
/// the client aborted or left.
fn handshake<T: Transport>(io: &mut T, exports: &[Export], stop: &Stop) -> Result<Option<usize>, Failure> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    send(io, &[&greeting()])?;
    let mut b4 = [0; 4];
    recv_exact(io, &mut b4, deadline, stop)?;
    let flags = ClientFlags::parse(&b4).map_err(|e| Failure::Protocol(e.to_string()))?;
    let mut data = Vec::with_capacity(MAX_OPTION_BYTES);
    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0; OPTION_HEADER_BYTES];
        recv_exact(io, &mut hdr, deadline, stop)?;
        let h = OptionHeader::parse(&hdr).map_err(|e| Failure::Protocol(format!("option header: {e}")))?;
        if h.len as usize > MAX_OPTION_BYTES {
            if h.option != OPT_EXPORT_NAME {
                send(io, &[&option_reply(h.option, REP_ERR_TOO_BIG, 0)])?;
            }
            return Err(Failure::Protocol(format!(
                "option {} with {} bytes of data (at most {MAX_OPTION_BYTES})",
                h.option, h.len
            )));
        }
        data.resize(h.len as usize, 0);
        recv_exact(io, &mut data, deadline, stop)?;
        if stop.is_set() && h.option != OPT_ABORT {
            send(io, &[&option_reply(h.option, REP_ERR_SHUTDOWN, 0)])?;
            return Ok(None);
        }
        let find = |name: &[u8]| exports.iter().position(|e| e.name.as_bytes() == name);
        match h.option {
            OPT_EXPORT_NAME => {
                let Some(i) = find(&data) else {
                    // No error reply exists for this option: the server MUST terminate.
                    return Err(Failure::Protocol(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                };
                let plan = export_plan(&exports[i]);
                let zeroes = [0; 124];
                let pad: &[u8] = if flags.no_zeroes { &[] } else { &zeroes };
                send(
                    io,
                    &[&export_size_flags(plan.size_bytes, plan.transmission_flags()), pad],
                )?;
                return Ok(Some(i));
            }
            OPT_ABORT => {
                // The client may already be gone: a failed ACK is no error.
                let _ = send(io, &[&option_reply(h.option, REP_ACK, 0)]);
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => send(io, &[&option_reply(h.option, REP_ERR_INVALID, 0)])?,
            OPT_LIST => {
                for e in exports {
                    let name = e.name.as_bytes();
                    send(
                        io,
                        &[
                            &option_reply(h.option, REP_SERVER, 4 + name.len() as u32),
                            &(name.len() as u32).to_be_bytes(),
                            name,
                        ],
                    )?;
                }
                send(io, &[&option_reply(h.option, REP_ACK, 0)])?;
            }
            OPT_INFO | OPT_GO => {
                let req = match InfoRequest::parse(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("NBD option {}: {e}", h.option);
                        send(io, &[&option_reply(h.option, REP_ERR_INVALID, 0)])?;
                        continue;
                    }
                };
                let Some(i) = find(req.name) else {
                    send(io, &[&option_reply(h.option, REP_ERR_UNKNOWN, 0)])?;
                    continue;
                };
                send_info(io, h.option, &exports[i], &req)?;
                if h.option == OPT_GO {
                    return Ok(Some(i));
                }
            }
            _ => send(io, &[&option_reply(h.option, REP_ERR_UNSUP, 0)])?,
        }
    }
    Err(Failure::Protocol(format!("more than {MAX_OPTIONS} options")))
}

/// The plan an export was checked against in [`serve`] (its FUA mode aside).
fn export_plan(export: &Export) -> Plan {
    Plan::new(&export.backing.info, fua_native(&export.backing)).unwrap_or(Plan {
        block_size: 512,
        size_bytes: 0,
        buf_bytes: 512,
        buffers: MAX_CHUNKS,
        max_payload: 512,
        piece_blocks: 1,
        fua: FuaMode::Flush,
        write_zeroes: false,
        deallocate: false,
    })
}

/// The `NBD_REP_INFO` replies and the final `NBD_REP_ACK` of `NBD_OPT_INFO`/`NBD_OPT_GO`:
/// always `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE` (the server enforces its
/// constraints), the name and description when asked.
fn send_info<T: Transport>(io: &mut T, option: u32, export: &Export, req: &InfoRequest) -> io::Result<()> {
    let plan = export_plan(export);
    let export_info = export_size_flags(plan.size_bytes, plan.transmission_flags());
    send(
        io,
        &[
            &option_reply(option, REP_INFO, 12),
            &INFO_EXPORT.to_be_bytes(),
            &export_info,
        ],
    )?;
    let (min, preferred, max) = plan.block_sizes();
    send(
        io,
        &[
            &option_reply(option, REP_INFO, 14),
            &info_block_size(min, preferred, max),
        ],
    )?;
    if req.wants(INFO_NAME) {
        let name = export.name.as_bytes();
        send(
            io,
            &[
                &option_reply(option, REP_INFO, 2 + name.len() as u32),
                &INFO_NAME.to_be_bytes(),
                name,
            ],
        )?;
    }
    if req.wants(INFO_DESCRIPTION) {
        let text = format!("ironvme {}", export.backing.spec);
        let text = &text.as_bytes()[..text.len().min(MAX_STRING_BYTES)];
        send(
            io,
            &[
                &option_reply(option, REP_INFO, 2 + text.len() as u32),
                &INFO_DESCRIPTION.to_be_bytes(),
                text,
            ],
        )?;
    }
    send(io, &[&option_reply(option, REP_ACK, 0)])
}

/// The connection's DMA buffers: [`Plan::buffers`] of [`Plan::buf_bytes`] each, carved
/// from one allocation. A buffer is `None` while the backend holds it.
struct BufferPool {
    bufs: Vec<Option<DmaBuf>>,
    free: Vec<u16>,
}

impl BufferPool {
    fn new(dma: &dyn DmaAllocator, info: &NamespaceInfo, plan: &Plan) -> io::Result<BufferPool> {
        let align = info.buffer_alignment.max(1);
        let total = plan.buffers * plan.buf_bytes;
        let mut whole = dma
            .allocate(total + align)
            .map_err(|e| io::Error::other(format!("NBD buffers: {e}")))?;
        let skew = whole.as_ptr() as usize % align;
        let aligned = if skew == 0 {
            whole
        } else {
            whole
                .split_off(align - skew)
                .map_err(|e| io::Error::other(format!("NBD buffers: {e}")))?
        };
        let bufs = aligned
            .into_chunks(plan.buf_bytes, plan.buffers)
            .map_err(|e| io::Error::other(format!("NBD buffers: {e}")))?;
        Ok(BufferPool {
            free: (0..bufs.len() as u16).rev().collect(),
            bufs: bufs.into_iter().map(Some).collect(),
        })
    }
}

/// What a request slot does with the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Read,
    Write,
    Flush,
    /// Write Zeroes commands, one piece at a time.
    Zeroes {
        deallocate: bool,
    },
    /// Writes from a zeroed buffer, one at a time (no Write Zeroes on the device).
    ZeroesByWrite,
    /// Deallocate commands, one piece at a time.
    Trim,
}

/// An admitted request: its cookie, its buffers and its progress.
#[derive(Clone, Copy, Debug)]
struct Slot {
    cookie: u64,
    work: Work,
    /// First block (reads, writes) or next block to submit (piecewise work).
    lba: u64,
    /// Blocks of the request (reads, writes) or still to submit (piecewise work).
    blocks: u64,
    /// Pool indices of the buffers held.
    bufs: [u16; MAX_CHUNKS],
    chunks: usize,
    in_flight: usize,
    /// 0 or the `NBD_E*` to reply.
    error: u32,
    /// A Flush follows the data (FUA on a backend that needs it).
    flush_after: bool,
    flushing: bool,
}

const NO_CHUNK: u64 = 0xffff_ffff;

/// Where reading the client's stream stands.
#[derive(Clone, Copy, Debug)]
enum Input {
    /// Reading a request header: `got` of [`REQUEST_BYTES`].
    Header { got: usize },
    /// A valid request waiting for a slot and buffers.
    Admit(Request, Action),
    /// Reading a WRITE's payload into slot `slot`'s buffers.
    Payload { slot: usize, chunk: usize, got: usize },
    /// Discarding a refused WRITE's payload, then replying `error`.
    Drain { left: u64, cookie: u64, error: u32 },
    /// No more requests are read.
    Closed,
}

/// What one pass over the input did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pump {
    Progress,
    WouldBlock,
    NeedResources,
    Closed,
}

/// The transmission phase of one connection.
struct Session<'a, T: Transport, Q: BlockQueue> {
    io: T,
    queue: Q,
    pool: BufferPool,
    plan: Plan,
    stop: &'a Stop,
    peer: &'a str,
    export: &'a str,
    slots: Vec<Slot>,
    free_slots: Vec<u16>,
    done: Vec<Completion>,
    scratch: Vec<u8>,
    hdr: [u8; REQUEST_BYTES],
    input: Input,
    /// Why input closed (for the disconnect log).
    end: &'static str,
    /// The socket failed: replies are dropped, outstanding I/O is only drained.
    dead: bool,
    stop_seen: Option<Instant>,
    requests: u64,
}

impl<'a, T: Transport, Q: BlockQueue> Session<'a, T, Q> {
    fn new(io: T, queue: Q, pool: BufferPool, plan: Plan, stop: &'a Stop, peer: &'a str, export: &'a str) -> Self {
        let empty = Slot {
            cookie: 0,
            work: Work::Flush,
            lba: 0,
            blocks: 0,
            bufs: [0; MAX_CHUNKS],
            chunks: 0,
            in_flight: 0,
            error: 0,
            flush_after: false,
            flushing: false,
        };
        Session {
            done: Vec::with_capacity(queue.depth().max(1)),
            io,
            queue,
            pool,
            plan,
            stop,
            peer,
            export,
            slots: vec![empty; MAX_REQUESTS],
            free_slots: (0..MAX_REQUESTS as u16).rev().collect(),
            scratch: vec![0; 64 << 10],
            hdr: [0; REQUEST_BYTES],
            input: Input::Header { got: 0 },
            end: "client disconnected",
            dead: false,
            stop_seen: None,
            requests: 0,
        }
    }

    /// Serves requests until input closes and every request has been answered; returns
    /// why it ended.
    fn run(&mut self) -> &'static str {
        loop {
            let reaped = self.reap(false);
            let pump = if self.dead { Pump::Closed } else { self.pump() };
            if let Err(e) = self.queue.ring() {
                tracing::warn!(peer = self.peer, "NBD: ring: {e}");
            }
            let busy = self.free_slots.len() < MAX_REQUESTS;
            if pump == Pump::Closed && !busy {
                break;
            }
            if reaped > 0 || pump == Pump::Progress {
                continue;
            }
            if self.queue.outstanding() > 0 {
                self.reap(true);
            } else if pump == Pump::WouldBlock {
                if let Err(e) = self.io.wait(Ready::Read, STOP_POLL) {
                    self.fail(e);
                }
            } else {
                // Nothing outstanding, nothing to read, and no progress possible: a
                // request waits for buffers the device kept (one that could not be
                // stopped), or the connection failed while a request was half read.
                if !self.dead && pump == Pump::NeedResources {
                    self.end = "buffers lost to the device";
                }
                break;
            }
        }
        while self.queue.outstanding() > 0 {
            self.reap(true);
        }
        if self.stop.is_set() && !self.dead {
            // Stopping: what was acknowledged is made durable before the close.
            let _ = ironvme_nvme::block::run_one(&mut self.queue, Op::Flush, None);
        }
        self.end
    }

    fn fail(&mut self, e: io::Error) {
        if !self.dead {
            if is_disconnect(&e) {
                tracing::info!(peer = self.peer, "NBD client went away: {e}");
            } else {
                tracing::warn!(peer = self.peer, "NBD connection: {e}");
            }
        }
        self.dead = true;
        self.end = "connection failed";
        self.input = Input::Closed;
    }

    fn protocol_error(&mut self, why: &str) {
        tracing::warn!(
            peer = self.peer,
            export = self.export,
            "NBD protocol error: {why}; closing"
        );
        self.end = "protocol error";
        self.input = Input::Closed;
    }

    /// Handles finished backend operations (waiting for one with `wait`); returns how
    /// many.
    fn reap(&mut self, wait: bool) -> usize {
        let mut done = std::mem::take(&mut self.done);
        let max = done.capacity();
        let n = if wait {
            self.queue.wait(max, |c| done.push(c))
        } else {
            self.queue.poll(max, |c| done.push(c))
        };
        for c in done.drain(..) {
            self.complete(c);
        }
        self.done = done;
        n
    }

    fn complete(&mut self, c: Completion) {
        let i = (c.tag >> 32) as usize;
        let chunk = c.tag & 0xffff_ffff;
        let Some(slot) = self.slots.get_mut(i) else { return };
        if chunk != NO_CHUNK {
            let index = slot.bufs.get(chunk as usize).copied().unwrap_or(u16::MAX) as usize;
            match (c.buf, self.pool.bufs.get_mut(index)) {
                (Some(buf), Some(place)) => *place = Some(buf),
                _ => slot.error = EIO,
            }
        }
        if let Err(status) = c.result {
            if slot.error == 0 {
                tracing::warn!(peer = self.peer, export = self.export, "NBD request failed: {status}");
            }
            slot.error = EIO;
        }
        slot.in_flight = slot.in_flight.saturating_sub(1);
        if slot.in_flight == 0 {
            self.step(i);
        }
    }

    /// Submits one backend operation for slot `i`; on refusal records the error and
    /// returns the buffer to the pool.
    fn submit(&mut self, i: usize, op: Op, chunk: Option<usize>) {
        let buf = chunk.and_then(|j| self.pool.bufs[self.slots[i].bufs[j] as usize].take());
        let tag = (i as u64) << 32 | chunk.map_or(NO_CHUNK, |j| j as u64);
        match self.queue.submit(op, buf, tag) {
            Ok(()) => self.slots[i].in_flight += 1,
            Err(e) => {
                if let (Some(j), Some(buf)) = (chunk, e.buf) {
                    self.pool.bufs[self.slots[i].bufs[j] as usize] = Some(buf);
                }
                tracing::warn!(
                    peer = self.peer,
                    export = self.export,
                    "NBD: {} refused: {}",
                    op.name(),
                    e.error
                );
                self.slots[i].error = match e.error {
                    BlockError::LbaOutOfRange { .. } | BlockError::BadLength { .. } => EINVAL,
                    _ => EIO,
                };
            }
        }
    }

    /// The bytes of chunk `j` of slot `i`'s request: a whole buffer but for the last.
    fn chunk_len(&self, i: usize, j: usize) -> usize {
        let s = &self.slots[i];
        let total = s.blocks as usize * self.plan.block_size as usize;
        (total - j * self.plan.buf_bytes).min(self.plan.buf_bytes)
    }

    /// Submits every chunk of a read or write in slot `i`.
    fn start_data(&mut self, i: usize) {
        let per = (self.plan.buf_bytes / self.plan.block_size as usize) as u64;
        let fua = self.plan.fua == FuaMode::Native && self.slots[i].flush_after;
        if fua {
            // FUA on the command itself: no Flush after it.
            self.slots[i].flush_after = false;
        }
        for j in 0..self.slots[i].chunks {
            let len = self.chunk_len(i, j);
            let index = self.slots[i].bufs[j] as usize;
            if let Some(buf) = self.pool.bufs[index].as_mut() {
                let _ = buf.set_window(0, len);
            }
            let lba = self.slots[i].lba + j as u64 * per;
            let op = match self.slots[i].work {
                Work::Read => Op::Read { lba },
                _ => Op::Write { lba, fua },
            };
            self.submit(i, op, Some(j));
            if self.slots[i].error != 0 {
                break;
            }
        }
        if self.slots[i].in_flight == 0 {
            self.step(i);
        }
    }

    /// Moves slot `i` on once nothing of it is in flight: the next piece, the Flush
    /// after FUA data, or the reply.
    fn step(&mut self, i: usize) {
        loop {
            let s = self.slots[i];
            if s.in_flight > 0 {
                return;
            }
            if s.error != 0 || (s.blocks == 0 || matches!(s.work, Work::Read | Work::Write | Work::Flush)) {
                if s.error == 0 && s.flush_after && !s.flushing && s.work != Work::Read {
                    self.release_buffers(i);
                    self.slots[i].flushing = true;
                    self.submit(i, Op::Flush, None);
                    continue;
                }
                return self.finish(i);
            }
            // Piecewise work: the next piece.
            let (lba, bs) = (s.lba, self.plan.block_size as usize);
            let (op, chunk, blocks) = match s.work {
                Work::Zeroes { deallocate } => {
                    let blocks = s.blocks.min(self.plan.piece_blocks as u64);
                    let op = Op::WriteZeroes {
                        lba,
                        blocks: blocks as u32,
                        deallocate,
                    };
                    (op, None, blocks)
                }
                Work::Trim => {
                    let blocks = s.blocks.min(self.plan.piece_blocks as u64);
                    (
                        Op::Deallocate {
                            lba,
                            blocks: blocks as u32,
                        },
                        None,
                        blocks,
                    )
                }
                _ => {
                    let blocks = s.blocks.min((self.plan.buf_bytes / bs) as u64);
                    if let Some(buf) = self.pool.bufs[s.bufs[0] as usize].as_mut() {
                        let _ = buf.set_window(0, blocks as usize * bs);
                    }
                    (Op::Write { lba, fua: false }, Some(0), blocks)
                }
            };
            self.slots[i].lba += blocks;
            self.slots[i].blocks -= blocks;
            self.submit(i, op, chunk);
        }
    }

    fn release_buffers(&mut self, i: usize) {
        let s = &mut self.slots[i];
        for &index in &s.bufs[..s.chunks] {
            if self.pool.bufs[index as usize].is_some() {
                self.pool.free.push(index);
            }
        }
        s.chunks = 0;
    }

    /// Replies to slot `i` (with the data of a successful read) and frees it.
    fn finish(&mut self, i: usize) {
        let s = self.slots[i];
        let header = simple_reply(s.error, s.cookie);
        if !self.dead {
            let mut iov = [IoSlice::new(&[]); MAX_CHUNKS + 1];
            iov[0] = IoSlice::new(&header);
            let mut n = 1;
            if s.work == Work::Read && s.error == 0 {
                for &index in &s.bufs[..s.chunks] {
                    if let Some(buf) = &self.pool.bufs[index as usize] {
                        iov[n] = IoSlice::new(buf.as_slice());
                        n += 1;
                    }
                }
            }
            if let Err(e) = send_all(&mut self.io, &mut iov[..n]) {
                self.fail(e);
            }
        }
        self.release_buffers(i);
        self.free_slots.push(i as u16);
    }

    fn reply_now(&mut self, cookie: u64, error: u32) {
        if !self.dead
            && let Err(e) = send(&mut self.io, &[&simple_reply(error, cookie)])
        {
            self.fail(e);
        }
    }

    /// Reads into `buf` without blocking: `Some(n)` bytes (0 at the end of the stream),
    /// `None` when nothing is there; a failure closes the session.
    fn read_some(&mut self, which: ReadInto) -> Option<usize> {
        loop {
            let r = match which {
                ReadInto::Header(got) => self.io.read(&mut self.hdr[got..]),
                ReadInto::Scratch(len) => self.io.read(&mut self.scratch[..len]),
                ReadInto::Buffer { index, at } => match self.pool.bufs[index].as_mut() {
                    Some(buf) => self.io.read(&mut buf.as_mut_slice()[at..]),
                    None => Err(io::Error::other("a payload buffer is missing")),
                },
            };
            match r {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    self.fail(e);
                    return Some(0);
                }
            }
        }
    }

    /// Reads and starts requests as far as the socket and the free slots and buffers
    /// allow.
    fn pump(&mut self) -> Pump {
        let mut progress = false;
        for _ in 0..4 * MAX_REQUESTS {
            if self.stop.is_set() && self.stop_seen.is_none() {
                self.stop_seen = Some(Instant::now());
            }
            match self.input {
                Input::Closed => return Pump::Closed,
                Input::Header { got: 0 } if self.stop_seen.is_some() => {
                    self.end = "server stopping";
                    self.input = Input::Closed;
                }
                _ if self.stop_seen.is_some_and(|t| t.elapsed() > STOP_GRACE) => {
                    self.end = "server stopping (a request was cut short)";
                    self.input = Input::Closed;
                }
                Input::Header { got } => match self.read_some(ReadInto::Header(got)) {
                    None => return if progress { Pump::Progress } else { Pump::WouldBlock },
                    Some(0) => {
                        if got > 0 && !self.dead {
                            tracing::warn!(peer = self.peer, "NBD: stream ended inside a request header");
                        }
                        self.input = Input::Closed;
                    }
                    Some(n) if got + n < REQUEST_BYTES => self.input = Input::Header { got: got + n },
                    Some(_) => {
                        progress = true;
                        self.requests += 1;
                        self.header();
                    }
                },
                Input::Admit(req, action) => {
                    if !self.admit(&req, action) {
                        return if progress { Pump::Progress } else { Pump::NeedResources };
                    }
                    progress = true;
                }
                Input::Payload { slot, chunk, got } => {
                    let index = self.slots[slot].bufs[chunk] as usize;
                    let len = self.chunk_len(slot, chunk);
                    if self.pool.bufs[index].as_ref().is_none_or(|b| b.len() != len) {
                        // Cannot happen (admit sets the windows); never read past a chunk.
                        self.release_buffers(slot);
                        self.free_slots.push(slot as u16);
                        self.protocol_error("a payload buffer is missing");
                        continue;
                    }
                    match self.read_some(ReadInto::Buffer { index, at: got }) {
                        None => return if progress { Pump::Progress } else { Pump::WouldBlock },
                        Some(0) => {
                            if !self.dead {
                                tracing::warn!(peer = self.peer, "NBD: stream ended inside a WRITE payload");
                            }
                            // The request never completed: free it without a reply.
                            self.release_buffers(slot);
                            self.free_slots.push(slot as u16);
                            self.input = Input::Closed;
                        }
                        Some(n) => {
                            progress = true;
                            let got = got + n;
                            self.input = if got < len {
                                Input::Payload { slot, chunk, got }
                            } else if chunk + 1 < self.slots[slot].chunks {
                                Input::Payload {
                                    slot,
                                    chunk: chunk + 1,
                                    got: 0,
                                }
                            } else {
                                self.start_data(slot);
                                Input::Header { got: 0 }
                            };
                        }
                    }
                }
                Input::Drain { left, cookie, error } => {
                    if left == 0 {
                        self.reply_now(cookie, error);
                        if !self.dead {
                            self.input = Input::Header { got: 0 };
                        }
                        continue;
                    }
                    let len = (left as usize).min(self.scratch.len());
                    match self.read_some(ReadInto::Scratch(len)) {
                        None => return if progress { Pump::Progress } else { Pump::WouldBlock },
                        Some(0) => self.input = Input::Closed,
                        Some(n) => {
                            progress = true;
                            self.input = Input::Drain {
                                left: left - n as u64,
                                cookie,
                                error,
                            };
                        }
                    }
                }
            }
        }
        Pump::Progress
    }

    /// A whole request header is in `self.hdr`: decide what to do with it.
    fn header(&mut self) {
        let req = match Request::parse(&self.hdr) {
            Ok(r) => r,
            Err(e) => return self.protocol_error(&format!("request header: {e}")),
        };
        self.input = Input::Header { got: 0 };
        match classify(&req, &self.plan) {
            Ok(Action::Disconnect) => {
                self.end = "client sent NBD_CMD_DISC";
                self.input = Input::Closed;
            }
            Ok(Action::Nothing) => {
                if req.kind == CMD_WRITE && req.length > 0 {
                    // Unreachable by classify's rules; keep the stream in sync anyway.
                    self.input = Input::Drain {
                        left: req.length as u64,
                        cookie: req.cookie,
                        error: 0,
                    };
                } else {
                    self.reply_now(req.cookie, 0);
                }
            }
            Ok(action) => self.input = Input::Admit(req, action),
            Err(error) => {
                tracing::warn!(
                    peer = self.peer,
                    export = self.export,
                    command = req.kind,
                    flags = req.flags,
                    offset = req.offset,
                    length = req.length,
                    "NBD request refused with error {error}"
                );
                if req.kind != CMD_WRITE || req.length == 0 {
                    self.reply_now(req.cookie, error);
                } else if req.length as u64 <= MAX_DRAIN_BYTES {
                    self.input = Input::Drain {
                        left: req.length as u64,
                        cookie: req.cookie,
                        error,
                    };
                } else {
                    self.reply_now(req.cookie, error);
                    self.protocol_error("WRITE payload too large to discard");
                }
            }
        }
    }

    /// Gives `action` a slot (and buffers) and starts it; `false` when none are free.
    fn admit(&mut self, req: &Request, action: Action) -> bool {
        let bs = self.plan.block_size as u64;
        let per = (self.plan.buf_bytes as u64 / bs).max(1);
        let (work, lba, blocks, fua) = match action {
            Action::Read { lba, blocks } => (Work::Read, lba, blocks, false),
            Action::Write { lba, blocks, fua } => (Work::Write, lba, blocks, fua),
            Action::Flush => (Work::Flush, 0, 0, false),
            Action::WriteZeroes {
                lba,
                blocks,
                deallocate,
                fua,
            } if self.plan.write_zeroes => (Work::Zeroes { deallocate }, lba, blocks, fua),
            Action::WriteZeroes { lba, blocks, fua, .. } => (Work::ZeroesByWrite, lba, blocks, fua),
            Action::Trim { lba, blocks, fua } => (Work::Trim, lba, blocks, fua),
            Action::Nothing | Action::Disconnect => {
                self.input = Input::Header { got: 0 };
                return true;
            }
        };
        let chunks = match work {
            Work::Read | Work::Write => blocks.div_ceil(per) as usize,
            Work::ZeroesByWrite => 1,
            _ => 0,
        };
        if self.free_slots.is_empty() || self.pool.free.len() < chunks {
            return false;
        }
        let Some(i) = self.free_slots.pop().map(usize::from) else {
            return false;
        };
        let mut slot = Slot {
            cookie: req.cookie,
            work,
            lba,
            blocks,
            bufs: [0; MAX_CHUNKS],
            chunks,
            in_flight: 0,
            error: 0,
            flush_after: fua && self.plan.fua != FuaMode::NotNeeded,
            flushing: false,
        };
        for b in &mut slot.bufs[..chunks] {
            *b = self.pool.free.pop().unwrap_or(u16::MAX);
        }
        self.slots[i] = slot;
        self.input = Input::Header { got: 0 };
        match work {
            Work::Write => {
                // The payload is read into each buffer's window: exactly its chunk.
                for j in 0..chunks {
                    let len = self.chunk_len(i, j);
                    if let Some(buf) = self.pool.bufs[slot.bufs[j] as usize].as_mut() {
                        let _ = buf.set_window(0, len);
                    }
                }
                self.input = Input::Payload {
                    slot: i,
                    chunk: 0,
                    got: 0,
                }
            }
            Work::Read => self.start_data(i),
            Work::Flush => {
                self.submit(i, Op::Flush, None);
                self.step(i);
            }
            Work::ZeroesByWrite => {
                if let Some(buf) = self.pool.bufs[slot.bufs[0] as usize].as_mut() {
                    buf.reset_window();
                    buf.as_mut_slice().fill(0);
                }
                self.step(i);
            }
            Work::Zeroes { .. } | Work::Trim => self.step(i),
        }
        true
    }
}

/// Where [`Session::read_some`] reads to.
#[derive(Clone, Copy, Debug)]
enum ReadInto {
    /// The request header, from byte `.0`.
    Header(usize),
    /// The discard buffer, this many bytes at most.
    Scratch(usize),
    /// Pool buffer `index`, from byte `at` of its window.
    Buffer { index: usize, at: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvme_nvme::block::GeometrySource;

    fn info(block_size: u32, blocks: u64) -> NamespaceInfo {
        NamespaceInfo {
            nsid: 1,
            block_size,
            blocks,
            max_transfer_bytes: 512 << 10,
            buffer_alignment: 4096,
            write_zeroes: true,
            deallocate: true,
            deallocate_zeroes: true,
            compare: false,
            verify: false,
            volatile_write_cache: true,
            zone_commands: false,
            metadata: crate::nvme::block::MetadataFormat::NONE,
            source: GeometrySource::File,
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    #[test]
    fn request_headers_round_trip_and_refuse_bad_magic() {
        let r = req(CMD_WRITE, CMD_FLAG_FUA, 1 << 40, 4096);
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::parse(&b), Ok(r));
        let mut bad = b;
        bad[0] = 0x12;
        assert_eq!(Request::parse(&bad), Err(WireError::BadMagic(0x1260_9513)));
        assert_eq!(Request::parse(&b[..27]), Err(WireError::Short { need: 28, got: 27 }));
    }

    #[test]
    fn option_headers_and_client_flags() {
        let h = OptionHeader {
            option: OPT_GO,
            len: 10,
        };
        assert_eq!(OptionHeader::parse(&h.to_bytes()), Ok(h));
        assert_eq!(&h.to_bytes()[..8], b"IHAVEOPT");
        assert!(matches!(OptionHeader::parse(&[0; 16]), Err(WireError::BadMagic(0))));
        assert_eq!(
            ClientFlags::parse(&[0, 0, 0, 3]),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert_eq!(ClientFlags::parse(&[0, 0, 0, 4]), Err(WireError::ClientFlags(4)));
        assert!(ClientFlags::parse(&[0, 0]).is_err());
    }

    #[test]
    fn info_requests_account_for_every_byte() {
        let mut d = vec![0, 0, 0, 4];
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&[0, 2, 0, 3, 0, 1]);
        let r = InfoRequest::parse(&d).unwrap();
        assert_eq!(r.name, b"disk");
        assert!(r.wants(INFO_BLOCK_SIZE) && r.wants(INFO_NAME) && !r.wants(INFO_DESCRIPTION));
        // A count that promises more requests than there are bytes.
        let mut short = d.clone();
        short[9] = 3;
        assert!(matches!(InfoRequest::parse(&short), Err(WireError::Length(_))));
        // A name that runs past the data.
        let mut long = d.clone();
        long[3] = 200;
        assert!(matches!(InfoRequest::parse(&long), Err(WireError::Length(_))));
        assert!(matches!(InfoRequest::parse(&[0, 0, 0]), Err(WireError::Short { .. })));
        let empty = InfoRequest::parse(&[0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((empty.name, empty.infos), (&b""[..], &b""[..]));
    }

    #[test]
    fn replies_have_their_magic() {
        assert_eq!(&greeting()[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(greeting()[16..], [0, 3]);
        let r = simple_reply(EINVAL, 0x0102);
        assert_eq!(r, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 1, 2]);
        let o = option_reply(OPT_GO, REP_ERR_UNKNOWN, 0);
        assert_eq!(&o[..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&o[12..16], &[0x80, 0, 0, 6]);
        assert_eq!(info_block_size(512, 4096, 1 << 22)[..2], [0, 3]);
    }

    #[test]
    fn plans_bound_buffers_and_payloads() {
        let p = Plan::new(&info(4096, 1000), false).unwrap();
        assert_eq!((p.buf_bytes, p.buffers, p.max_payload), (128 << 10, 64, 4 << 20));
        assert_eq!((p.piece_blocks, p.fua), (128, FuaMode::Flush));
        assert_eq!(p.block_sizes(), (4096, 4096, 4 << 20));
        assert_eq!(p.transmission_flags(), 1 | 4 | 8 | 32 | 64);
        let mut small = info(512, 1000);
        small.max_transfer_bytes = 8192;
        small.deallocate = false;
        small.volatile_write_cache = false;
        let p = Plan::new(&small, true).unwrap();
        assert_eq!((p.buf_bytes, p.buffers, p.max_payload), (8192, 1024, 32 * 8192));
        assert_eq!((p.block_sizes().1, p.fua), (4096, FuaMode::NotNeeded));
        assert_eq!(p.transmission_flags() & FLAG_SEND_TRIM, 0);
        assert!(Plan::new(&info(3000, 10), true).is_err());
        assert!(Plan::new(&info(1 << 17, 10), true).is_err());
    }

    #[test]
    fn requests_are_checked_against_the_export() {
        let p = Plan::new(&info(4096, 256), true).unwrap(); // 1 MiB
        let c = |kind, flags, off, len| classify(&req(kind, flags, off, len), &p);
        assert_eq!(c(CMD_READ, 0, 4096, 8192), Ok(Action::Read { lba: 1, blocks: 2 }));
        assert_eq!(
            c(CMD_WRITE, CMD_FLAG_FUA, 0, 4096),
            Ok(Action::Write {
                lba: 0,
                blocks: 1,
                fua: true
            })
        );
        assert_eq!(
            c(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 1 << 20),
            Ok(Action::WriteZeroes {
                lba: 0,
                blocks: 256,
                deallocate: false,
                fua: false
            })
        );
        assert_eq!(c(CMD_FLUSH, 0, 0, 0), Ok(Action::Flush));
        assert_eq!(c(CMD_DISC, 0, 0, 0), Ok(Action::Disconnect));
        assert_eq!(c(CMD_DISC, 0x2400, 1, 5), Ok(Action::Disconnect));
        assert_eq!(c(CMD_READ, 0, 0, 0), Ok(Action::Nothing));
        // Misaligned offset or length, unknown commands and flags.
        assert_eq!(c(CMD_READ, 0, 512, 4096), Err(EINVAL));
        assert_eq!(c(CMD_WRITE, 0, 0, 100), Err(EINVAL));
        assert_eq!(c(9, 0, 0, 4096), Err(EINVAL));
        assert_eq!(c(CMD_READ, CMD_FLAG_NO_HOLE, 0, 4096), Err(EINVAL));
        assert_eq!(c(CMD_WRITE_ZEROES, 1 << 4, 0, 4096), Err(EINVAL));
        // Past the end: EINVAL for reads and trims, ENOSPC for writes.
        assert_eq!(c(CMD_READ, 0, 1 << 20, 4096), Err(EINVAL));
        assert_eq!(c(CMD_TRIM, 0, 1020 << 10, 8192), Err(EINVAL));
        assert_eq!(c(CMD_WRITE, 0, 1020 << 10, 8192), Err(ENOSPC));
        assert_eq!(c(CMD_WRITE_ZEROES, 0, u64::MAX - 4095, 4096), Err(ENOSPC));
        // Longer than the maximum payload.
        let big = Plan::new(&info(4096, 1 << 20), true).unwrap();
        assert_eq!(classify(&req(CMD_READ, 0, 0, (4 << 20) + 4096), &big), Err(EINVAL));
        assert!(classify(&req(CMD_WRITE_ZEROES, 0, 0, 64 << 20), &big).is_ok());
        // Trim without deallocation is a successful no-op.
        let mut no_trim = p;
        no_trim.deallocate = false;
        assert_eq!(classify(&req(CMD_TRIM, 0, 0, 4096), &no_trim), Ok(Action::Nothing));
    }
}
