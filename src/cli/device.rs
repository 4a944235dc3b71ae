//! The DEV argument: what it may name, and how it is opened.
//!
//! This is the one place that knows which backends the CLI can use. Today that is a PCI
//! address of a controller bound to vfio-pci, driven by ironvme's own driver. Kernel
//! device paths (`/dev/nvme0`, `/dev/ng0n1`) are recognised and refused with a message
//! that says what to do instead; the kernel backends will add a variant to
//! [`DeviceSpec`] and [`OpenDevice`] here, and no subcommand changes.

use super::CliError;
use crate::admin::AdminCommands;
use crate::nvme::ctrl::ControllerConfig;
use crate::vfio::Bdf;
use crate::{VfioController, open_vfio};

/// What a DEV argument names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A PCI address (`0000:00:05.0`, `00:05.0` or `pci:0000:00:05.0`): a controller bound
    /// to vfio-pci, driven by ironvme's polled driver.
    Pci(Bdf),
}

impl std::fmt::Display for DeviceSpec {
    /// The canonical name used in output headers: the full BDF (`0000:00:05.0`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Pci(bdf) => write!(f, "{bdf}"),
        }
    }
}

/// Parses a DEV argument.
///
/// Errors: [`CliError::Unsupported`] for a kernel device path (`/dev/...`, `nvme0`,
/// `ng0n1`), which this build cannot open; [`CliError::Device`] when the text is not a
/// PCI address.
pub fn parse_device(dev: &str) -> Result<DeviceSpec, CliError> {
    let text = dev.trim();
    if looks_like_kernel_device(text) {
        return Err(CliError::Unsupported(format!(
            "{text}: kernel device paths are not supported by this build; only PCI addresses of controllers bound to \
             vfio-pci (e.g. 0000:00:05.0) are: bind one with `scripts/setup.sh bind BDF`"
        )));
    }
    let bdf_text = text.strip_prefix("pci:").unwrap_or(text);
    let bdf = bdf_text.parse::<Bdf>().map_err(|e| CliError::Device(e.to_string()))?;
    Ok(DeviceSpec::Pci(bdf))
}

/// `/dev/...`, or a bare kernel name such as `nvme0`, `nvme0n1` or `ng0n1`.
fn looks_like_kernel_device(text: &str) -> bool {
    if text.starts_with('/') {
        return true;
    }
    let rest = text.strip_prefix("nvme").or_else(|| text.strip_prefix("ng"));
    rest.is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// An opened device, whatever backend is underneath.
pub enum OpenDevice {
    /// A controller bound to vfio-pci, initialised by ironvme's driver.
    Vfio {
        /// What the user named.
        spec: DeviceSpec,
        /// The controller.
        controller: Box<VfioController>,
    },
}

impl OpenDevice {
    /// The admin command interface of the device.
    pub fn admin(&self) -> &dyn AdminCommands {
        match self {
            OpenDevice::Vfio { controller, .. } => &controller.controller,
        }
    }

    /// The device as named in output headers (`0000:00:05.0`).
    pub fn name(&self) -> String {
        match self {
            OpenDevice::Vfio { spec, .. } => spec.to_string(),
        }
    }
}

/// Opens `spec` with the driver configuration `config`.
///
/// Opening a VFIO controller resets it: whatever the device was doing for another user
/// stops. The controller is shut down normally when the [`OpenDevice`] is dropped.
///
/// Errors: [`CliError::Ironvme`] with the VFIO error (which names the BDF, its IOMMU
/// group and the fix) or the initialisation error.
pub fn open(spec: DeviceSpec, config: ControllerConfig) -> Result<OpenDevice, CliError> {
    match spec {
        DeviceSpec::Pci(bdf) => {
            let controller = open_vfio(&bdf.to_string(), config)?;
            Ok(OpenDevice::Vfio {
                spec,
                controller: Box::new(controller),
            })
        }
    }
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
    fn kernel_paths_are_refused_with_the_way_out() {
        for dev in [
            "/dev/nvme0",
            "/dev/nvme0n1",
            "/dev/ng0n1",
            "nvme0",
            "nvme1n1",
            "ng0n1",
            "/tmp/img",
        ] {
            let e = parse_device(dev).unwrap_err();
            assert!(matches!(e, CliError::Unsupported(_)), "{dev}: {e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with(dev), "{msg}");
            assert!(
                msg.contains("vfio-pci") && msg.contains("scripts/setup.sh bind BDF"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
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
