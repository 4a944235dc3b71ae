//! The DEV argument: what it may name, and how it is opened.
//!
//! This is the one place that knows which backends the CLI's admin subcommands use:
//!
//! - a PCI address (`0000:00:05.0`, `00:05.0`, `pci:0000:00:05.0`) of a controller bound to
//!   vfio-pci is driven by ironvme's own polled driver;
//! - a kernel NVMe device — the controller `/dev/nvmeX`, a namespace's block device
//!   `/dev/nvmeXnY` or its generic device `/dev/ngXnY` — goes through the kernel's NVMe
//!   admin ioctl passthrough, so a controller the kernel owns can be inspected in place.
//!
//! Anything else (a regular file, a non-NVMe block device) cannot answer admin commands,
//! and the ioctl backend says so.

use super::CliError;
use crate::admin::AdminCommands;
use crate::nvme::ctrl::ControllerConfig;
use crate::vfio::Bdf;
use crate::{Backend, Device, OpenOptions};
use ironvme_kernel::node::NvmeName;
use std::path::PathBuf;

/// What a DEV argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A controller bound to vfio-pci, driven by ironvme's polled driver.
    Pci(Bdf),
    /// A kernel NVMe device node, used through the admin ioctl passthrough.
    Path(PathBuf),
}

impl std::fmt::Display for DeviceSpec {
    /// The canonical name used in output headers: the full BDF (`0000:00:05.0`) or the path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Pci(bdf) => write!(f, "{bdf}"),
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses a DEV argument: a PCI address, or a path (a bare kernel NVMe name,
/// [`NvmeName`], such as `nvme0` or `ng0n1` means `/dev/nvme0`, `/dev/ng0n1`).
///
/// Errors: [`CliError::Device`] when the text is neither a PCI address nor a path.
pub fn parse_device(dev: &str) -> Result<DeviceSpec, CliError> {
    let text = dev.trim();
    if text.starts_with('/') {
        return Ok(DeviceSpec::Path(PathBuf::from(text)));
    }
    if NvmeName::parse(text).is_some() {
        return Ok(DeviceSpec::Path(PathBuf::from("/dev").join(text)));
    }
    let bdf = crate::device::pci_address_text(text)
        .parse::<Bdf>()
        .map_err(|e| CliError::Device(format!("{e} (or give a kernel NVMe device such as /dev/nvme0)")))?;
    Ok(DeviceSpec::Pci(bdf))
}

/// An opened device that answers admin commands.
pub struct OpenDevice {
    spec: DeviceSpec,
    device: Device,
}

impl OpenDevice {
    /// The admin command interface of the device.
    pub fn admin(&self) -> &dyn AdminCommands {
        self.device
            .admin()
            .expect("opened with a backend that issues admin commands")
    }

    /// The device as named in output headers (`0000:00:05.0`, `/dev/nvme0`).
    pub fn name(&self) -> String {
        self.spec.to_string()
    }

    /// The device as nvme-cli names it in its headers (`Smart Log for NVME
    /// device:nvme0`): a kernel node's base name (`nvme0`, `ng0n1`), a PCI address as is.
    pub fn header_name(&self) -> String {
        let name = self.name();
        match name.rsplit_once('/') {
            Some((_, base)) if !base.is_empty() => base.to_string(),
            _ => name,
        }
    }

    /// The namespace DEV names when it is a kernel namespace node (`/dev/nvme0n2`,
    /// `/dev/ng0n2` → 2), as nvme-cli uses it for `id-ns` without `-n`.
    pub fn node_namespace(&self) -> Option<u32> {
        self.device.node_namespace()
    }

    /// The opened device.
    pub fn device(&self) -> &crate::Device {
        &self.device
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.device.backend()
    }
}

/// Opens `spec`; `config` configures ironvme's driver (VFIO only).
///
/// Opening a VFIO controller resets it: whatever the device was doing for another user
/// stops. The controller is shut down normally when the [`OpenDevice`] is dropped.
/// Opening a kernel device changes nothing.
///
/// Errors: [`CliError::Ironvme`] with the backend's error (for VFIO it names the BDF, its
/// IOMMU group and the fix; for the ioctl backend the path and why).
pub fn open(spec: DeviceSpec, config: ControllerConfig) -> Result<OpenDevice, CliError> {
    let (text, backend) = match &spec {
        DeviceSpec::Pci(bdf) => (bdf.to_string(), Backend::Vfio),
        DeviceSpec::Path(p) => (p.display().to_string(), Backend::Ioctl),
    };
    let options = OpenOptions {
        backend: Some(backend),
        controller: config,
        ..Default::default()
    };
    let device = Device::open(&text, &options)?;
    Ok(OpenDevice { spec, device })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> DeviceSpec {
        DeviceSpec::Pci(s.parse().unwrap())
    }

    #[test]
    fn pci_addresses_in_every_spelling() {
        assert_eq!(parse_device("0000:00:05.0").unwrap(), bdf("0000:00:05.0"));
        assert_eq!(parse_device("00:05.0").unwrap(), bdf("0000:00:05.0"));
        assert_eq!(parse_device("pci:0000:00:05.0").unwrap(), bdf("0000:00:05.0"));
        assert_eq!(parse_device("pci:3b:00.1").unwrap(), bdf("0000:3b:00.1"));
        assert_eq!(parse_device("0000:00:05.0").unwrap().to_string(), "0000:00:05.0");
        assert_eq!(parse_device("00:05.0").unwrap().to_string(), "0000:00:05.0");
    }

    #[test]
    fn kernel_devices_are_paths() {
        assert_eq!(
            parse_device("/dev/nvme0").unwrap(),
            DeviceSpec::Path("/dev/nvme0".into())
        );
        assert_eq!(
            parse_device("nvme1n1").unwrap(),
            DeviceSpec::Path("/dev/nvme1n1".into())
        );
        assert_eq!(parse_device("ng0n1").unwrap().to_string(), "/dev/ng0n1");
    }

    #[test]
    fn garbage_is_not_a_device() {
        for dev in ["", "pci:", "nvme", "0000:00:05", "0000:00:20.0", "disk0"] {
            let e = parse_device(dev).unwrap_err();
            assert!(matches!(e, CliError::Device(_)), "{dev:?}: {e:?}");
            assert!(e.to_string().contains("not a PCI address"), "{e}");
        }
    }
}
