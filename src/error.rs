//! The error type of the `ironvme` crate.

/// Why an ironvme operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VFIO side: the device could not be opened (the message names the BDF, the
    /// IOMMU group and the fix).
    #[error(transparent)]
    Vfio(#[from] ironvme_vfio::Error),
    /// The controller could not be initialised.
    #[error("{device}: controller initialisation failed: {source}")]
    Init {
        /// The device as named by the user.
        device: String,
        /// What went wrong.
        source: ironvme_nvme::ctrl::Error,
    },
    /// A command or operation of the NVMe driver failed.
    #[error(transparent)]
    Nvme(#[from] ironvme_nvme::ctrl::Error),
    /// Data from the device could not be parsed.
    #[error(transparent)]
    Parse(#[from] ironvme_nvme::parse::ParseError),
    /// A kernel backend failed (its message names the backend, the device and why).
    #[error(transparent)]
    Kernel(ironvme_kernel::KernelError),
    /// A device argument names nothing usable.
    #[error("{device}: {why}")]
    Open {
        /// The device as named by the user.
        device: String,
        /// Why it cannot be opened.
        why: String,
    },
    /// The device cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// The NVMe status, when a controller completed a command with an error (through
    /// ironvme's driver or a kernel passthrough backend).
    pub fn status(&self) -> Option<ironvme_nvme::status::Status> {
        match self {
            Error::Nvme(e) | Error::Init { source: e, .. } => e.status(),
            Error::Kernel(e) => e.status(),
            _ => None,
        }
    }
}
