//! ironvme's kernel backends: the fallbacks for hosts where a controller cannot be given
//! to VFIO, and the yardstick the VFIO driver is measured against.
//!
//! Each backend opens a device and hands out queues that keep the block interface
//! ([`ironvme_nvme::block::BlockQueue`]), so everything above runs unchanged on any of
//! them:
//!
//! | backend | module | devices | how I/O is issued |
//! | --- | --- | --- | --- |
//! | io_uring | [`uring`] | `/dev/nvmeXnY`, any block device, regular files | `O_DIRECT` reads and writes on an io_uring, registered buffers and files, batched submission |
//! | io_uring NVMe passthrough | [`uring_cmd`] | `/dev/ngXnY` | `IORING_OP_URING_CMD` with `NVME_URING_CMD_IO` on an SQE128/CQE32 ring |
//! | NVMe ioctl passthrough | [`ioctl`] | `/dev/nvmeX`, `/dev/nvmeXnY`, `/dev/ngXnY` | `NVME_IOCTL_IO64_CMD` / `NVME_IOCTL_ADMIN64_CMD` |
//! | psync | [`psync`] | any file or block device | `pread` / `pwrite` |
//!
//! Buffers come from [`KernelDma`]: page-aligned anonymous memory (2 MiB hugepages when
//! asked for and available), suitable for `O_DIRECT` and io_uring buffer registration.

pub mod dma;
pub mod error;
pub mod geometry;
pub mod ioctl;
pub mod node;
pub mod nvme_ioctl;
pub mod psync;
pub mod sync_queue;
pub mod uring;
pub mod uring_cmd;

pub use dma::KernelDma;
pub use error::KernelError;
pub use ioctl::{IoctlDevice, IoctlQueue};
pub use psync::{PsyncDevice, PsyncQueue};
pub use uring::{UringDevice, UringOptions, UringQueue, io_uring_available};
pub use uring_cmd::{UringCmdDevice, UringCmdQueue};
