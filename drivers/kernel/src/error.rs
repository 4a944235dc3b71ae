//! Errors of the kernel backends. Each says which backend, which device, and why.

use ironvme_nvme::status::Status;
use std::path::PathBuf;

/// The kernel backends' names, as users write them (`--backend`).
pub const BACKEND_IOCTL: &str = "ioctl";
/// io_uring block I/O.
pub const BACKEND_URING: &str = "uring";
/// io_uring NVMe passthrough.
pub const BACKEND_URING_CMD: &str = "uring-cmd";
/// pread/pwrite.
pub const BACKEND_PSYNC: &str = "psync";

/// Why a kernel backend could not open a device, set up a queue, or run a command.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A system call on a device failed.
    #[error("{backend}: {op} {}: {source}", path.display())]
    Os {
        /// The backend.
        backend: &'static str,
        /// The operation, e.g. "open" or "BLKGETSIZE64".
        op: &'static str,
        /// The device or file.
        path: PathBuf,
        /// The OS error, with its errno.
        #[source]
        source: std::io::Error,
    },
    /// The device is not the kind this backend works on.
    #[error("{backend}: {}: {why}", path.display())]
    WrongDevice {
        /// The backend.
        backend: &'static str,
        /// The device or file.
        path: PathBuf,
        /// What kind it is and what the backend needs.
        why: String,
    },
    /// The backend cannot work on this kernel or system.
    #[error("{backend}: unavailable: {why}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// Why: kernel too old, io_uring disabled by sysctl, missing driver option, ...
        why: String,
    },
    /// An option or argument the backend cannot work with (queue depth, block size, an
    /// option the device does not support).
    #[error("{backend}: {why}")]
    BadOption {
        /// The backend.
        backend: &'static str,
        /// Which option, its value, and what would be accepted.
        why: String,
    },
    /// An NVMe passthrough command completed with an error status.
    #[error("{backend}: {command} failed: {status}")]
    Status {
        /// The backend.
        backend: &'static str,
        /// The command's name.
        command: &'static str,
        /// The decoded NVMe status (the ioctl's positive return value).
        status: Status,
    },
    /// Data returned by the device could not be parsed.
    #[error("{backend}: {0}", backend = .1)]
    Parse(#[source] ironvme_nvme::parse::ParseError, &'static str),
    /// No namespace with this ID on the device.
    #[error("{backend}: {}: no active namespace {nsid}", path.display())]
    NoSuchNamespace {
        /// The backend.
        backend: &'static str,
        /// The device.
        path: PathBuf,
        /// The namespace ID asked for.
        nsid: u32,
    },
    /// The namespace's metadata needs a buffer, and a queue without one was asked for
    /// (`create_queue`; `create_metadata_queue` opens). Admin commands and the namespace
    /// list still work. The message names the LBA format and how to reformat.
    #[error("{backend}: {}: {source}", path.display())]
    MetadataUnsupported {
        /// The backend.
        backend: &'static str,
        /// The device node.
        path: PathBuf,
        /// The format, and the one to reformat to.
        source: Box<ironvme_nvme::identify::MetadataUnsupported>,
    },
    /// DMA (buffer) memory could not be allocated.
    #[error(transparent)]
    Dma(#[from] ironvme_nvme::hw::DmaError),
    /// The kernel refused access to the device (`EACCES`/`EPERM`).
    #[error("{backend}: {op} {}: permission denied: {hint}", path.display())]
    PermissionDenied {
        /// The backend.
        backend: &'static str,
        /// The operation, e.g. "open" or "NVME_IOCTL_ADMIN64_CMD".
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// The errno (`EACCES` or `EPERM`).
        errno: i32,
        /// What access is needed.
        hint: &'static str,
    },
    /// A request the backend refuses before calling the kernel (a zero queue depth, a
    /// transfer longer than the ioctl's 32-bit length field, ...).
    #[error("{backend}: {why}")]
    Invalid {
        /// The backend.
        backend: &'static str,
        /// What is wrong with the request.
        why: String,
    },
}

impl KernelError {
    /// The OS error number, if the error is an OS error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Os { source, .. } => source.raw_os_error(),
            KernelError::PermissionDenied { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The NVMe status, if a passthrough command failed with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            KernelError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
