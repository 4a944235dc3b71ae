//! `attach-ns` and `detach-ns`: Namespace Attachment (Base Specification 2.0, §5.22), as
//! nvme-cli's commands of those names.
//!
//! The controllers of an NVM subsystem share its namespaces; attaching one to a
//! controller makes it active there (it appears in the Active Namespace ID list, and the
//! controller reports a Namespace Attribute Changed event, on which Linux's nvme driver
//! and ironvme's both read their namespaces again). Detaching it takes it away: its data
//! stays in the subsystem, but I/O through that controller fails until it is attached
//! again.

use super::device::{self, DeviceSpec};
use super::{CliError, DEV_HELP, parse_nsid};
use crate::admin::{identify_controller, namespace_attachment};
use crate::claim::{Access, Claim};
use crate::nvme::ctrl::ControllerConfig;
use crate::nvme::identify::Oacs;
use clap::Args;
use std::io::Write;

/// Arguments of `attach-ns` and `detach-ns`.
#[derive(Debug, Args)]
pub struct NsAttachArgs {
    /// The controller the command is sent to.
    #[arg(value_name = "DEV", help = DEV_HELP)]
    pub dev: String,
    /// The namespace (decimal or 0x hex), as nvme-cli's --namespace-id.
    #[arg(long, short = 'n', visible_alias = "namespace-id", value_name = "N", value_parser = parse_nsid)]
    pub nsid: u32,
    /// The controllers to attach it to or detach it from: controller identifiers
    /// (CNTLID, as `identify` prints them), comma-separated, decimal or 0x hex, as
    /// nvme-cli's --controllers. Default: the controller DEV names.
    #[arg(long, short = 'c', value_name = "CNTLID,...", value_delimiter = ',', value_parser = parse_cntlid)]
    pub controllers: Vec<u16>,
}

/// A controller identifier: 0..=0xffef (FFF0h and above are reserved, §3.1.1).
fn parse_cntlid(s: &str) -> Result<u16, String> {
    match super::parse_number(s)? {
        n @ 0..0xFFF0 => Ok(n as u16),
        n => Err(format!("{n:#x} is not a controller identifier (0 to 0xffef)")),
    }
}

/// `ironvme attach-ns DEV -n NSID [-c CNTLID,...]` (`attach` true) or `detach-ns`.
///
/// Prints nvme-cli's line (`attach-ns: Success, nsid:2`). Detaching from a kernel node is
/// refused while any namespace of its controller is in use ([`crate::claim`]), as
/// `format` is: its block device would vanish under whoever holds it. Detaching from
/// controllers other than DEV's is refused: their users cannot be checked from here.
///
/// Errors: [`CliError::Unsupported`] when the controller has no namespace management
/// (OACS bit 3 clear); [`CliError::Refused`] when in use or for other controllers; the
/// controller's status
/// (Namespace Already Attached, Namespace Not Attached, Controller List Invalid) as
/// [`CliError::Ironvme`].
pub fn run(attach: bool, args: &NsAttachArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let what = if attach { "attach-ns" } else { "detach-ns" };
    let spec = device::parse_device(&args.dev)?;
    let _claim = match &spec {
        DeviceSpec::Path(path) if !attach => {
            let text = path.display().to_string();
            let target = crate::Target::parse(&text)?;
            Some(
                Claim::acquire_controller(&target, &text, Access::Exclusive)
                    .map_err(|e| super::io_shared::target::refused(what, e))?,
            )
        }
        _ => None,
    };
    let dev = device::open(spec, ControllerConfig::default())?;
    let ctrl = identify_controller(dev.admin()).map_err(CliError::on(&dev))?;
    if !ctrl.oacs.contains(Oacs::NAMESPACE_MANAGEMENT) {
        return Err(CliError::Unsupported(format!(
            "{}: the controller has no namespace management (OACS {:#x}, bit 3 clear), so no Namespace Attachment",
            dev.name(),
            ctrl.oacs.bits()
        )));
    }
    let controllers = if args.controllers.is_empty() {
        vec![ctrl.cntlid]
    } else {
        args.controllers.clone()
    };
    // Whether the namespace is in use is known only for DEV's own controller (its kernel
    // nodes are claimed above): detaching it from another controller of the subsystem
    // could take it from under whoever uses it there.
    let others: Vec<String> = controllers
        .iter()
        .filter(|&&id| id != ctrl.cntlid)
        .map(|id| format!("{id:#x}"))
        .collect();
    if !attach && !others.is_empty() {
        return Err(CliError::Refused(format!(
            "refusing to detach namespace {} from controller(s) {} through {} (controller {:#x}): whether it is in              use there cannot be checked from here; run detach-ns on each controller's own device (nothing was done)",
            args.nsid,
            others.join(", "),
            dev.name(),
            ctrl.cntlid
        )));
    }
    tracing::info!(device = %dev.name(), nsid = args.nsid, ?controllers, attach, "Namespace Attachment");
    namespace_attachment(dev.admin(), args.nsid, attach, &controllers).map_err(CliError::on(&dev))?;
    writeln!(out, "{what}: Success, nsid:{}", args.nsid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_identifiers_stop_below_the_reserved_range() {
        assert_eq!(parse_cntlid("0"), Ok(0));
        assert_eq!(parse_cntlid("0xffef"), Ok(0xFFEF));
        assert!(parse_cntlid("0xfff0").is_err());
        assert!(parse_cntlid("70000").is_err());
        assert!(parse_cntlid("x").is_err());
    }
}
