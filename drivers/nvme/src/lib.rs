//! The NVMe protocol core of ironvme.
//!
//! This crate knows the NVM Express specification and nothing about Linux. It holds:
//!
//! - [`regs`]: the controller registers (NVMe Base Specification 2.0, §3.1) as typed values,
//!   and doorbell offsets from CAP.DSTRD;
//! - [`cmd`] and [`completion`]: the 64-byte submission queue entry with a builder for every
//!   command ironvme issues, and the 16-byte completion queue entry;
//! - [`status`]: the completion status decoded into Status Code Type and Status Code;
//! - [`identify`], [`log`], [`features`]: total parsers for the data the controller returns;
//! - [`queue`], [`prp`], [`sgl`]: submission/completion rings, command identifier tracking,
//!   doorbell batching and data pointer construction, all on plain memory;
//! - [`barrier`]: the DMA barriers every queue uses around doorbells and phase tags;
//! - [`hw`]: the two small traits the controller logic is written against — register access
//!   and DMA memory — so the same code drives a VFIO-mapped BAR and the simulated controller;
//! - `sim` (feature `sim`): an in-process simulated controller for host tests;
//! - `crash` (feature `sim`): crash-state enumeration from a log of writes and Flushes (the
//!   simulator's, or QEMU `blklogwrites`'), for crash tests of stores.
//!
//! All multi-byte fields are little-endian on the wire. ironvme builds only for
//! little-endian targets, where the in-memory layout of these structures is the wire layout.

#[cfg(not(target_endian = "little"))]
compile_error!("ironvme-nvme lays NVMe structures out in native byte order and needs a little-endian target");

pub mod barrier;
pub mod block;
pub mod cmd;
pub mod completion;
#[cfg(any(test, feature = "sim"))]
pub mod crash;
pub mod ctrl;
pub mod features;
pub mod hw;
pub mod identify;
pub mod log;
pub mod parse;
pub mod pi;
pub mod prp;
pub mod queue;
pub mod quirks;
pub mod regs;
pub mod sgl;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod status;
pub mod zns;

pub use cmd::Command;
pub use completion::Completion;
pub use hw::{BusMasterError, DmaAllocator, DmaBuf, DmaError, DmaRegion, InterruptVectors, Registers};
pub use status::Status;
