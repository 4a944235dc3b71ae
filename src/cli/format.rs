//! `format`: Format NVM, after checking the request against the device and asking the
//! person at the terminal to type "yes".

use super::device::{self, OpenDevice};
use super::progress::Progress;
use super::{CliError, FormatArgs};
use crate::admin::{FormatSettings, active_namespaces, format_nvm, identify_controller, identify_namespace};
use crate::claim::{Access, Claim};
use crate::nvme::ctrl::{ControllerConfig, NSID_ALL};
use crate::nvme::identify::{IdentifyController, IdentifyNamespace, Oacs};
use std::io::{self, BufRead, IsTerminal, Write};
use std::time::Duration;

/// The answer that confirms a format.
pub const CONFIRMATION: &str = "yes";

/// FNA bit 2: cryptographic erase is supported.
const FNA_CRYPTO_ERASE: u8 = 1 << 2;

/// The name of a Secure Erase Setting.
fn ses_name(ses: u8) -> &'static str {
    match ses {
        0 => "none",
        1 => "user data erase",
        2 => "cryptographic erase",
        _ => "reserved",
    }
}

/// The request of `format`'s arguments.
pub fn settings(args: &FormatArgs) -> FormatSettings {
    FormatSettings {
        lbaf: args.lbaf,
        ses: args.ses,
        pi: args.pi,
        pil: args.pil == 1,
        mset: args.ms == 1,
    }
}

/// Checks a format request against the controller and the namespace (its current
/// Identify data): Format NVM supported (OACS bit 1), the LBA format exists and has a
/// supported data size, cryptographic erase supported when asked for (FNA bit 2); with
/// protection information, a format with at least 8 bytes of metadata and the PI type
/// and location the namespace supports (DPC, Identify Namespace byte 28); with extended
/// LBAs, a format with metadata that the namespace can transfer that way (MC bit 0).
///
/// Errors: [`CliError::Invalid`] naming what does not fit.
pub fn check_request(
    dev: &str,
    ctrl: &IdentifyController,
    ns: &IdentifyNamespace,
    req: FormatSettings,
) -> Result<(), CliError> {
    let FormatSettings {
        lbaf,
        ses,
        pi,
        pil,
        mset,
    } = req;
    if !ctrl.oacs.contains(Oacs::FORMAT_NVM) {
        return Err(CliError::Invalid(format!(
            "{dev}: the controller does not support Format NVM (OACS bit 1 is clear)"
        )));
    }
    let count = ns.lba_formats.len();
    match ns.lba_formats.get(usize::from(lbaf)) {
        None => {
            return Err(CliError::Invalid(format!(
                "{dev}: LBA format {lbaf} does not exist; the namespace has {count} (0..={}): see `ironvme identify-ns`",
                count.saturating_sub(1)
            )));
        }
        Some(f) if f.data_size().is_none() => {
            return Err(CliError::Invalid(format!(
                "{dev}: LBA format {lbaf} is not supported by the controller (LBADS {})",
                f.lbads
            )));
        }
        Some(f) => {
            let invalid = |why: String| Err(CliError::Invalid(format!("{dev}: {why}")));
            if pi != 0 && (f.ms as usize) < crate::nvme::pi::PI_TUPLE_BYTES {
                return invalid(format!(
                    "protection information needs at least 8 bytes of metadata per block; LBA format {lbaf} has {} \
                     (MS {}): choose a format with metadata (see `ironvme identify-ns`)",
                    f.ms, f.ms
                ));
            }
            // DPC bits 0..2: PI types 1..3 supported; bit 3: PI first; bit 4: PI last.
            if pi != 0 && ns.dpc & (1 << (pi - 1)) == 0 {
                return invalid(format!(
                    "the namespace does not support protection information type {pi} (DPC {:#04x})",
                    ns.dpc
                ));
            }
            let location = if pil { (3, "first") } else { (4, "last") };
            if pi != 0 && ns.dpc & (1 << location.0) == 0 {
                return invalid(format!(
                    "the namespace cannot put protection information in the {} 8 bytes of the metadata (DPC {:#04x})",
                    location.1, ns.dpc
                ));
            }
            if mset && f.ms == 0 {
                return invalid(format!(
                    "--ms 1 (extended LBA) needs a format with metadata; LBA format {lbaf} has none"
                ));
            }
            // MC bit 0: metadata at the end of each block; bit 1: in a separate buffer.
            let (bit, how) = if mset {
                (0, "at the end of each block")
            } else {
                (1, "in a separate buffer")
            };
            if f.ms != 0 && ns.mc & (1 << bit) == 0 {
                return invalid(format!(
                    "the namespace cannot transfer metadata {how} (MC {:#04x}); use --ms {}",
                    ns.mc,
                    if mset { 0 } else { 1 }
                ));
            }
        }
    }
    if ses == 2 && ctrl.fna & FNA_CRYPTO_ERASE == 0 {
        return Err(CliError::Invalid(format!(
            "{dev}: the controller does not support cryptographic erase (FNA bit 2 is clear); use --ses 0 or 1"
        )));
    }
    Ok(())
}

/// The one-paragraph description of what is about to happen, shown before asking.
pub fn describe(
    dev: &str,
    ctrl: &IdentifyController,
    nsid: u32,
    ns: &IdentifyNamespace,
    req: FormatSettings,
) -> String {
    let FormatSettings { lbaf, ses, .. } = req;
    let target = if nsid == NSID_ALL {
        "ALL namespaces".to_string()
    } else {
        format!("namespace {nsid}")
    };
    let format_text = |i: usize| {
        ns.lba_formats.get(i).map_or("unknown".to_string(), |f| {
            let size = f.data_size().map_or("?".to_string(), |s| s.to_string());
            format!("LBA format {i} ({size} B data + {} B metadata)", f.ms)
        })
    };
    let has_metadata = ns.lba_formats.get(usize::from(lbaf)).is_some_and(|f| f.ms != 0);
    let layout = if !has_metadata && req.pi == 0 {
        String::new()
    } else {
        let new = crate::nvme::pi::MetadataFormat {
            bytes: ns.lba_formats.get(usize::from(lbaf)).map_or(0, |f| f.ms),
            extended: req.mset,
            pi_type: req.pi,
            pi_first: req.pil,
        };
        format!(" with {new}")
    };
    format!(
        "Format {target} of {dev} ({}, serial {}) from {} to {}{layout}, secure erase: {}.\n\
         ALL DATA ON {} WILL BE LOST.",
        ctrl.mn,
        ctrl.sn,
        format_text(ns.current_format_index()),
        format_text(usize::from(lbaf)),
        ses_name(ses),
        if nsid == NSID_ALL {
            "THE CONTROLLER"
        } else {
            "THE NAMESPACE"
        },
    )
}

/// Prints `question` to `prompt_to` and reads one line from `answers`; true only for
/// exactly [`CONFIRMATION`] (surrounding whitespace ignored).
///
/// Errors: reading or writing failed.
pub fn confirm(question: &str, answers: &mut dyn BufRead, prompt_to: &mut dyn Write) -> io::Result<bool> {
    write!(prompt_to, "{question}\nType {CONFIRMATION} to continue: ")?;
    prompt_to.flush()?;
    let mut line = String::new();
    answers.read_line(&mut line)?;
    Ok(line.trim() == CONFIRMATION)
}

/// The namespace to format: `--nsid`, or the controller's only active namespace.
fn choose_nsid(dev: &OpenDevice, asked: Option<u32>) -> Result<u32, CliError> {
    if let Some(nsid) = asked {
        return Ok(nsid);
    }
    let active = active_namespaces(dev.admin()).map_err(CliError::on(dev))?;
    match active.as_slice() {
        [only] => Ok(*only),
        [] => Err(CliError::Invalid(format!(
            "{}: the controller has no active namespace",
            dev.name()
        ))),
        many => {
            let list: Vec<String> = many.iter().map(u32::to_string).collect();
            Err(CliError::Invalid(format!(
                "{}: the controller has {} active namespaces ({}); choose one with --nsid",
                dev.name(),
                many.len(),
                list.join(", ")
            )))
        }
    }
}

/// The Identify Namespace data the request is checked against: the namespace itself, or
/// for all namespaces (FFFFFFFFh) the first active one.
fn namespace_for_check(dev: &OpenDevice, nsid: u32) -> Result<IdentifyNamespace, CliError> {
    let probe = if nsid == NSID_ALL {
        let active = active_namespaces(dev.admin()).map_err(CliError::on(dev))?;
        *active
            .first()
            .ok_or_else(|| CliError::Invalid(format!("{}: the controller has no active namespace", dev.name())))?
    } else {
        nsid
    };
    let ns = identify_namespace(dev.admin(), probe).map_err(CliError::on(dev))?;
    if !ns.is_active() {
        return Err(CliError::Invalid(format!(
            "{}: namespace {probe} is not active",
            dev.name()
        )));
    }
    Ok(ns)
}

/// `ironvme format DEV [--nsid N] --lbaf L [--ses S] [--force]`.
///
/// While Format NVM runs, a spinner turns on stderr when it is a terminal.
///
/// Without `--force`, refuses before opening anything when stdin is not a terminal, and
/// does nothing unless the answer is "yes". On a kernel node it refuses while any
/// namespace of the controller is in use ([`crate::claim`]), and keeps them claimed until
/// the format is done.
///
/// Errors: [`CliError::Refused`] (not confirmed, no terminal, or in use); [`CliError::Invalid`]
/// (see [`check_request`]); see [`CliError`].
pub fn run(args: &FormatArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let spec = device::parse_device(&args.dev)?;
    if !args.force && !io::stdin().is_terminal() {
        return Err(CliError::Refused(format!(
            "refusing to format {spec}: stdin is not a terminal, so nobody can confirm; pass --force to format \
             without confirmation (nothing was done)"
        )));
    }
    // A kernel node: refused while any namespace of its controller is in use (mounted,
    // held by dm/md/swap, or claimed by another ironvme), and claimed until the format is
    // done. A PCI address needs no claim: the controller is bound to vfio-pci.
    let _claim = match &spec {
        device::DeviceSpec::Path(path) => {
            let text = path.display().to_string();
            let target = crate::Target::parse(&text)?;
            Some(
                Claim::acquire_controller(&target, &text, Access::Exclusive)
                    .map_err(|e| super::io_shared::target::refused("format", e))?,
            )
        }
        device::DeviceSpec::Pci(_) => None,
    };
    // Both the VFIO driver's admin timeout and, for a kernel node, the ioctl's own
    // (format_nvm), so that neither gives up on a long erase.
    let timeout = Duration::from_secs(args.timeout);
    let config = ControllerConfig {
        admin_timeout: timeout,
        ..ControllerConfig::default()
    };
    let dev = device::open(spec, config)?;
    let name = dev.name();
    let ctrl = identify_controller(dev.admin()).map_err(CliError::on(&dev))?;
    let nsid = choose_nsid(&dev, args.nsid)?;
    let ns = namespace_for_check(&dev, nsid)?;
    let req = settings(args);
    check_request(&name, &ctrl, &ns, req)?;
    if !args.force {
        let question = describe(&name, &ctrl, nsid, &ns, req);
        if !confirm(&question, &mut io::stdin().lock(), &mut io::stderr())? {
            return Err(CliError::Refused(format!(
                "format of {name} not confirmed; nothing was done"
            )));
        }
    }
    tracing::info!(device = %name, nsid, lbaf = args.lbaf, ses = args.ses, mset = args.ms, pi = args.pi, pil = args.pil, "Format NVM");
    // Format NVM reports no progress of its own: a spinner shows it is still running.
    let spinner = Progress::spinner(format!(
        "Format NVM of {name}, namespace {nsid:#x}, to LBA format {} (up to {} s)",
        args.lbaf, args.timeout
    ));
    let formatted = format_nvm(dev.admin(), nsid, req, timeout);
    spinner.finish();
    formatted.map_err(CliError::on(&dev))?;
    writeln!(out, "Success formatting namespace:{nsid:x}")?;
    if nsid != NSID_ALL {
        let after = identify_namespace(dev.admin(), nsid).map_err(CliError::on(&dev))?;
        let size = after.block_size().map_or("?".to_string(), |s| s.to_string());
        writeln!(
            out,
            "namespace {nsid}: LBA format {} in use, {size}-byte blocks, {} blocks, {}",
            after.current_format_index(),
            after.nsze,
            after.metadata_format()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::identify::tests::{qemu_controller, qemu_controller_bytes, qemu_namespace_4k};

    #[test]
    fn confirmation_needs_exactly_yes() {
        for (answer, ok) in [
            ("yes\n", true),
            ("  yes  \n", true),
            ("yes", true),
            ("y\n", false),
            ("YES\n", false),
            ("no\n", false),
            ("", false),
            ("yes please\n", false),
        ] {
            let mut prompt = Vec::new();
            let got = confirm("Format it?", &mut answer.as_bytes(), &mut prompt).unwrap();
            assert_eq!(got, ok, "{answer:?}");
            assert_eq!(String::from_utf8(prompt).unwrap(), "Format it?\nType yes to continue: ");
        }
    }

    fn req(lbaf: u8, ses: u8) -> FormatSettings {
        FormatSettings {
            lbaf,
            ses,
            ..FormatSettings::default()
        }
    }

    #[test]
    fn protection_information_and_metadata_settings_are_checked() {
        // QEMU's namespace: formats 1 (512 + 8) and 5 (4096 + 8) carry metadata; DPC 0x1f
        // (types 1..3, first or last), MC 0x03 (extended or separate).
        let ctrl = qemu_controller();
        let ns = qemu_namespace_4k();
        assert_eq!((ns.dpc, ns.mc), (0x1f, 0x03));
        let pi = |lbaf, pi, pil, mset| FormatSettings {
            lbaf,
            pi,
            pil,
            mset,
            ..FormatSettings::default()
        };
        for t in 1..=3 {
            check_request("d", &ctrl, &ns, pi(1, t, false, false)).unwrap();
            check_request("d", &ctrl, &ns, pi(5, t, true, true)).unwrap();
        }
        let e = check_request("d", &ctrl, &ns, pi(4, 1, false, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("at least 8 bytes of metadata") && e.contains("LBA format 4 has 0"),
            "{e}"
        );
        let e = check_request("d", &ctrl, &ns, pi(0, 0, false, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ms 1 (extended LBA) needs a format with metadata"), "{e}");
        let mut no_t2 = ns.clone();
        no_t2.dpc = 0x1d;
        let e = check_request("d", &ctrl, &no_t2, pi(1, 2, false, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not support protection information type 2"), "{e}");
        let mut last_only = ns.clone();
        last_only.dpc = 0x17;
        let e = check_request("d", &ctrl, &last_only, pi(1, 1, true, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in the first 8 bytes"), "{e}");
        let mut separate_only = ns.clone();
        separate_only.mc = 0x02;
        let e = check_request("d", &ctrl, &separate_only, pi(1, 0, false, true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot transfer metadata at the end of each block") && e.contains("--ms 0"),
            "{e}"
        );
        let q = describe("0000:00:05.0", &ctrl, 1, &ns, pi(5, 3, true, true));
        assert!(
            q.contains(
                "to LBA format 5 (4096 B data + 8 B metadata) with 8 bytes of metadata at the end of each block \
                 (extended LBA), protection information type 3 in its first 8 bytes"
            ),
            "{q}"
        );
    }

    #[test]
    fn requests_are_checked_against_the_device() {
        let ctrl = qemu_controller();
        let ns = qemu_namespace_4k();
        check_request("d", &ctrl, &ns, req(0, 0)).unwrap();
        check_request("d", &ctrl, &ns, req(7, 1)).unwrap();
        let e = check_request("d", &ctrl, &ns, req(8, 0)).unwrap_err().to_string();
        assert!(e.contains("LBA format 8 does not exist") && e.contains("0..=7"), "{e}");
        let e = check_request("d", &ctrl, &ns, req(0, 2)).unwrap_err().to_string();
        assert!(e.contains("cryptographic erase"), "{e}");

        let mut no_format = qemu_controller_bytes();
        no_format[256] &= !0x2;
        let no_format = IdentifyController::parse(&no_format).unwrap();
        let e = check_request("d", &no_format, &ns, req(0, 0)).unwrap_err().to_string();
        assert!(e.contains("does not support Format NVM"), "{e}");

        let mut bad = ns.clone();
        bad.lba_formats[2].lbads = 0;
        let e = check_request("d", &ctrl, &bad, req(2, 0)).unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn the_question_says_what_will_happen() {
        let q = describe("0000:00:05.0", &qemu_controller(), 1, &qemu_namespace_4k(), req(0, 1));
        assert!(
            q.contains("namespace 1 of 0000:00:05.0 (QEMU NVMe Ctrl, serial ironvme-vfio4k)"),
            "{q}"
        );
        assert!(q.contains("from LBA format 4 (4096 B data + 0 B metadata)"), "{q}");
        assert!(q.contains("to LBA format 0 (512 B data + 0 B metadata)"), "{q}");
        assert!(q.contains("secure erase: user data erase"), "{q}");
        assert!(q.contains("ALL DATA ON THE NAMESPACE WILL BE LOST"), "{q}");
        let q = describe(
            "0000:00:05.0",
            &qemu_controller(),
            NSID_ALL,
            &qemu_namespace_4k(),
            req(0, 0),
        );
        assert!(
            q.contains("Format ALL namespaces") && q.contains("THE CONTROLLER"),
            "{q}"
        );
    }
}
