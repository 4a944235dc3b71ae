//! `zns`: nvme-cli's `nvme zns` commands for zoned namespaces (NVMe Zoned Namespace
//! Command Set 1.1): `report-zones` (Zone Management Receive) and `reset`, `open`, `close`,
//! `finish` (Zone Management Send, also under nvme-cli's names `reset-zone`, ...).
//!
//! They run on ironvme's driver (a PCI address) and through the kernel's NVMe ioctl on a
//! namespace node (`/dev/ngXnY`, `/dev/nvmeXnY`). The output is nvme-cli 2.3's.

use super::device::{self, OpenDevice};
use super::io_shared::target::refused;
use super::output::OutputFormat;
use super::{CliError, DEV_HELP, parse_nsid, parse_number, write_json};
use crate::Device;
use crate::admin::identify_namespace;
use crate::claim::{Access, Claim};
use crate::nvme::cmd::Command;
use crate::nvme::ctrl::ControllerConfig;
use crate::nvme::identify::Cns;
use crate::nvme::status::Status;
use crate::nvme::zns::{
    CSI_ZONED, IdentifyZonedNamespace, ZONE_DESCRIPTOR_BYTES, ZoneAction, ZoneDescriptor, ZoneReport, ZoneState,
    zone_append_limit,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::Write;

/// The `zns` subcommands.
#[derive(Debug, Subcommand)]
pub enum ZnsCommand {
    /// The zones of a zoned namespace and their states, as `nvme zns report-zones`.
    ReportZones(ReportArgs),
    /// Reset Zone: the zone (or with -a every zone) becomes Empty, its data gone.
    #[command(visible_alias = "reset-zone")]
    Reset(SendArgs),
    /// Open Zone: an Empty or Closed zone becomes Explicitly Opened.
    #[command(visible_alias = "open-zone")]
    Open(SendArgs),
    /// Close Zone: an open zone becomes Closed.
    #[command(visible_alias = "close-zone")]
    Close(SendArgs),
    /// Finish Zone: the zone becomes Full.
    #[command(visible_alias = "finish-zone")]
    Finish(SendArgs),
}

/// The zoned namespace a `zns` command works on.
#[derive(Debug, Args)]
pub struct ZoneTarget {
    /// The controller or namespace node.
    #[arg(value_name = "DEV", help = DEV_HELP)]
    pub dev: String,
    /// The namespace (default: the node's, else 1).
    #[arg(long, short = 'n', visible_alias = "namespace-id", value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
}

/// Arguments of `zns report-zones`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The zoned namespace.
    #[command(flatten)]
    pub target: ZoneTarget,
    /// The first zone reported is the one holding this LBA.
    #[arg(long, short = 's', value_name = "LBA", default_value = "0", value_parser = parse_number)]
    pub start_lba: u64,
    /// At most this many zones (default: all).
    #[arg(long, short = 'd', value_name = "N")]
    pub descs: Option<u64>,
    /// Only zones in this state, as nvme-cli's filter: 1 empty, 2 implicitly opened, 3
    /// explicitly opened, 4 closed, 5 full, 6 read only, 7 offline (0: all).
    #[arg(long, short = 'S', value_name = "N", default_value = "0", value_parser = clap::value_parser!(u8).range(0..=7))]
    pub state: u8,
    /// Number of Zones counts only the zones returned (Partial Report).
    #[arg(long, short = 'p')]
    pub partial: bool,
    /// State and type by name.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// normal or json.
    #[arg(long, short = 'o', value_enum, default_value_t, value_name = "FMT")]
    pub output_format: OutputFormat,
}

/// Arguments of the Zone Management Send commands.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The zoned namespace.
    #[command(flatten)]
    pub target: ZoneTarget,
    /// The zone's first LBA (ZSLBA).
    #[arg(long, short = 's', value_name = "LBA", default_value = "0", value_parser = parse_number)]
    pub start_lba: u64,
    /// Every zone the action applies to (Select All); -s is then ignored.
    #[arg(long, short = 'a')]
    pub select_all: bool,
}

/// Zone descriptors asked for per Zone Management Receive, as nvme-cli does.
const DESCRIPTORS_PER_REPORT: usize = 1024;

/// Runs a `zns` subcommand.
///
/// Errors: [`CliError::Unsupported`] for a namespace that is not zoned;
/// [`CliError::Refused`] for reset, open, close or finish on a kernel namespace that is
/// mounted or held; [`CliError::Invalid`] for an LBA past the namespace; the controller's
/// status (Invalid Zone State Transition 0x1BF, Invalid Field for a ZSLBA that starts no
/// zone, ...) as [`CliError::OnDevice`].
pub fn run(cmd: &ZnsCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ZnsCommand::ReportZones(a) => report(a, out),
        ZnsCommand::Reset(a) => send(ZoneAction::Reset, a, out),
        ZnsCommand::Open(a) => send(ZoneAction::Open, a, out),
        ZnsCommand::Close(a) => send(ZoneAction::Close, a, out),
        ZnsCommand::Finish(a) => send(ZoneAction::Finish, a, out),
    }
}

/// A zoned namespace opened for zone commands by a `zns` subcommand.
struct Zoned {
    dev: OpenDevice,
    nsid: u32,
    /// Held while a command that changes data runs.
    _claim: Claim,
}

impl Zoned {
    /// Opens the namespace `target` names. `writes` names a command that changes data
    /// (reset, finish): a kernel node is then claimed exclusively first, so a mounted or
    /// held namespace is refused, as the raw I/O commands refuse it (a PCI address is
    /// exclusive by VFIO's own rule).
    fn open(target: &ZoneTarget, writes: Option<&str>) -> Result<Zoned, CliError> {
        let spec = device::parse_device(&target.dev)?;
        let claim = match (&spec, writes) {
            (device::DeviceSpec::Path(path), Some(what)) => {
                let text = path.display().to_string();
                let t = crate::Target::parse(&text)?;
                Claim::acquire(&t, &text, Access::Exclusive).map_err(|e| refused(what, e))?
            }
            _ => Claim::none(),
        };
        let dev = device::open(spec, ControllerConfig::default())?;
        let nsid = target.nsid.or_else(|| dev.node_namespace()).unwrap_or(1);
        Ok(Zoned {
            dev,
            nsid,
            _claim: claim,
        })
    }

    /// The namespace's zone commands, [`CliError::Unsupported`] when it is not zoned.
    fn access(&self) -> Result<ZoneAccess<'_>, CliError> {
        ZoneAccess::new(self.dev.device(), self.dev.name(), self.nsid)?.ok_or_else(|| {
            CliError::Unsupported(format!(
                "{}: namespace {} is not a zoned namespace (the controller has no Zoned Namespace Identify data \
                 with a zone size for it)",
                self.dev.name(),
                self.nsid
            ))
        })
    }
}

/// Zone commands on one zoned namespace of an open device: its zone geometry, and
/// single commands run to completion outside any I/O queue the caller holds.
pub struct ZoneAccess<'a> {
    device: &'a Device,
    /// The device as the user named it, for errors.
    name: String,
    nsid: u32,
    /// Zone size in logical blocks (ZSZE of the current LBA format).
    pub zone_blocks: u64,
    /// NSZE.
    pub blocks: u64,
    /// Largest transfer in bytes (MDTS), which bounds a report's size.
    max_transfer: usize,
    /// The Zone Append Size Limit in bytes (ZASL), `None` when only MDTS limits it.
    pub append_limit: Option<usize>,
    /// Zones that may be active (open or closed) at once (MAR + 1), `None` for no limit.
    pub max_active: Option<u32>,
    /// Zones that may be open at once (MOR + 1), `None` for no limit.
    pub max_open: Option<u32>,
    /// ZOC bit 0: a zone's capacity may change when it is reset.
    pub variable_capacity: bool,
}

impl<'a> ZoneAccess<'a> {
    /// Reads the zoned Identify data of namespace `nsid` of `device` (named `name`):
    /// `None` when the controller has none for it (Invalid Field, Invalid I/O Command Set
    /// or Invalid Namespace or Format: not a zoned namespace), or when the backend cannot send admin commands
    /// (io_uring block I/O, psync, a VDE volume).
    ///
    /// Zoned data without a zone size for the namespace's format is not zoned either.
    ///
    /// Errors: [`CliError::OnDevice`] for any other failed command.
    pub fn new(device: &'a Device, name: String, nsid: u32) -> Result<Option<ZoneAccess<'a>>, CliError> {
        let Some(admin) = device.admin() else {
            return Ok(None);
        };
        let on = |e: crate::Error| CliError::OnDevice {
            device: name.clone(),
            source: e,
        };
        let id = identify_namespace(admin, nsid).map_err(on)?;
        let len = crate::nvme::identify::IDENTIFY_DATA_LEN;
        // What a controller answers for a namespace without zoned data: Invalid Field or
        // Invalid I/O Command Set (NVMe 2.0), Invalid Namespace or Format (some 1.x ones).
        let refused_as_not_zoned = |e: &crate::Error| {
            e.status().map(|s| s.with_dnr(false)).is_some_and(|s| {
                [
                    Status::INVALID_FIELD,
                    Status::INVALID_IO_COMMAND_SET,
                    Status::INVALID_NAMESPACE_OR_FORMAT,
                ]
                .contains(&s)
            })
        };
        let raw = match admin.admin_read(
            Command::identify_csi(Cns::IO_COMMAND_SET_NAMESPACE, nsid, CSI_ZONED),
            len,
        ) {
            Ok((_, raw)) => raw,
            Err(e) if refused_as_not_zoned(&e) => return Ok(None),
            Err(e) => return Err(on(e)),
        };
        // Zoned data without a zone size for the current format (a controller that answers
        // any CSI with zeros) describes no zoned namespace.
        let Some((zoned, zone_blocks)) = IdentifyZonedNamespace::parse(&raw)
            .ok()
            .and_then(|z| z.zone_geometry(id.current_format_index()).map(|(zsze, _)| (z, zsze)))
        else {
            return Ok(None);
        };
        let append_limit = match admin
            .admin_read(Command::identify_csi(Cns::IO_COMMAND_SET_CONTROLLER, 0, CSI_ZONED), len)
        {
            // ZASL counts CAP.MPSMIN pages: 4 KiB wherever ironvme's driver or Linux runs
            // the controller (both refuse a larger MPSMIN).
            Ok((_, raw)) => zone_append_limit(&raw, 4096).map_err(|e| on(crate::nvme::ctrl::Error::from(e).into()))?,
            Err(e) => {
                tracing::warn!(error = %e, "no zoned Identify Controller data: Zone Append limited by MDTS alone");
                None
            }
        };
        let max_transfer = device
            .namespaces()
            .iter()
            .find(|n| n.nsid == nsid)
            .map_or(ZONE_DESCRIPTOR_BYTES * (1 + DESCRIPTORS_PER_REPORT), |n| {
                n.max_transfer_bytes
            });
        Ok(Some(ZoneAccess {
            device,
            name,
            nsid,
            zone_blocks,
            blocks: id.nsze,
            max_transfer,
            append_limit,
            max_active: zoned.max_active(),
            max_open: zoned.max_open(),
            variable_capacity: zoned.zoc & 1 != 0,
        }))
    }

    /// [`CliError::Invalid`] for an LBA past the namespace, before anything is sent.
    fn check_lba(&self, lba: u64) -> Result<(), CliError> {
        if lba < self.blocks {
            return Ok(());
        }
        Err(CliError::Invalid(format!(
            "{}: LBA {lba:#x} is past the end of namespace {} ({} blocks)",
            self.name, self.nsid, self.blocks
        )))
    }

    /// Runs one I/O command that reads `len` bytes (0: none); its 64-bit result and data.
    fn io(&self, cmd: Command, len: usize) -> Result<(u64, Vec<u8>), CliError> {
        let on = |e: crate::Error| CliError::OnDevice {
            device: self.name.clone(),
            source: e,
        };
        match self.device {
            Device::Ioctl(d, _) => d.io_read(cmd, len).map_err(|e| on(e.into())),
            Device::UringCmd(d, _) => d.io_read(cmd, len).map_err(|e| on(e.into())),
            Device::Vfio(v) => {
                let c = &v.controller;
                let mut q = c.create_io_queue_pair().map_err(|e| on(e.into()))?;
                let buf = match len {
                    0 => None,
                    n => Some(
                        c.dma()
                            .allocate(n)
                            .map_err(|e| on(crate::nvme::ctrl::Error::from(e).into()))?,
                    ),
                };
                let c = q.complete_one(|q| q.submit(cmd, buf, 0)).map_err(|e| match e.error {
                    // Named by its opcode, as the ioctl path names it.
                    crate::nvme::ctrl::Error::Command { status, .. } => on(crate::nvme::ctrl::Error::Command {
                        command: cmd.name(false),
                        status,
                    }
                    .into()),
                    other => on(other.into()),
                })?;
                let data = c.buf.as_ref().map(|b| b.as_slice()[..len].to_vec()).unwrap_or_default();
                Ok((c.dw0_dw1(), data))
            }
            other => Err(CliError::Unsupported(format!(
                "{}: zone commands need ironvme's driver or NVMe passthrough (the ioctl or uring-cmd backend), not {}",
                self.name,
                other.backend()
            ))),
        }
    }

    fn report(&self, slba: u64, len: usize, filter: u8, partial: bool) -> Result<ZoneReport, CliError> {
        let cmd = Command::zone_management_receive(self.nsid, slba, len as u32, false, filter, partial)
            .expect("a report size of 64 + 64·n bytes");
        let (_, data) = self.io(cmd, len)?;
        ZoneReport::parse(&data, 0).map_err(|e| CliError::OnDevice {
            device: self.name.clone(),
            source: crate::nvme::ctrl::Error::from(e).into(),
        })
    }

    /// Bytes of a report of as many descriptors as one transfer holds (at most 1024).
    fn report_len(&self) -> usize {
        let per_report = (self.max_transfer / ZONE_DESCRIPTOR_BYTES)
            .saturating_sub(1)
            .clamp(1, DESCRIPTORS_PER_REPORT);
        ZONE_DESCRIPTOR_BYTES * (1 + per_report)
    }

    /// Every zone from the one holding `start` on, at most `limit` (all states, full
    /// reports), read with [`collect_zones`].
    ///
    /// Errors: the Zone Management Receive's.
    pub fn zones(&self, start: u64, limit: Option<u64>) -> Result<Vec<ZoneDescriptor>, CliError> {
        self.zones_in_state(start, limit, 0, false)
    }

    fn zones_in_state(
        &self,
        start: u64,
        limit: Option<u64>,
        filter: u8,
        partial: bool,
    ) -> Result<Vec<ZoneDescriptor>, CliError> {
        let len = self.report_len();
        collect_zones(start, limit, self.zone_blocks, self.blocks, |slba| {
            self.report(slba, len, filter, partial)
        })
    }
}

/// `zns report-zones`: nvme-cli's flow — the total from a 64-byte report from LBA 0, then
/// reports of up to 1024 zones (fewer if MDTS is smaller) from `-s` ([`collect_zones`]).
fn report(a: &ReportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if a.output_format == OutputFormat::Binary {
        return Err(CliError::Usage("report-zones prints normal or json".into()));
    }
    let zoned = Zoned::open(&a.target, None)?;
    let z = zoned.access()?;
    z.check_lba(a.start_lba)?;
    let total = z.report(0, ZONE_DESCRIPTOR_BYTES, a.state, false)?.zones;
    let zones = z.zones_in_state(a.start_lba, a.descs, a.state, a.partial)?;
    match a.output_format {
        OutputFormat::Json => write_json(out, &report_json(total, &zones))?,
        _ => out.write_all(report_text(total, &zones, a.verbose).as_bytes())?,
    }
    Ok(())
}

/// The zone descriptors from the zone holding `start` on, at most `limit` of them, read
/// with `fetch(slba)` (one Zone Management Receive from `slba`) report after report: each
/// next report starts one zone (`zone_blocks`) past the last descriptor, and the reading
/// stops at the namespace's end (`blocks`), at an empty report, or — a device answering
/// with zones before where it was asked — when the next start would not move forward.
/// At most `blocks / zone_blocks + 1` reports are read.
///
/// Errors: `fetch`'s.
pub fn collect_zones<E>(
    start: u64,
    limit: Option<u64>,
    zone_blocks: u64,
    blocks: u64,
    mut fetch: impl FnMut(u64) -> Result<ZoneReport, E>,
) -> Result<Vec<ZoneDescriptor>, E> {
    let limit = limit.unwrap_or(u64::MAX);
    let max_reports = (blocks / zone_blocks.max(1)).saturating_add(1);
    let mut zones = Vec::new();
    let mut slba = start;
    for _ in 0..max_reports {
        if zones.len() as u64 >= limit || slba >= blocks {
            break;
        }
        let r = fetch(slba)?;
        let Some(last) = r.descriptors.last() else { break };
        let next = last.start.saturating_add(zone_blocks.max(1));
        let room = (limit - zones.len() as u64).min(usize::MAX as u64) as usize;
        zones.extend(r.descriptors.into_iter().take(room));
        if next <= slba {
            break;
        }
        slba = next;
    }
    Ok(zones)
}

/// C's `%#-10llx` (and `%#-4x` for `width` 4): `0x`-prefixed hex, plain `0` for zero,
/// left-aligned in `width` columns.
fn c_alt_hex(v: u64, width: usize) -> String {
    let s = if v == 0 { "0".to_string() } else { format!("{v:#x}") };
    format!("{s:<width$}")
}

/// nvme-cli 2.3's text (`nvme zns report-zones`, plugins/zns/zns.c).
pub fn report_text(total: u64, zones: &[ZoneDescriptor], verbose: bool) -> String {
    let mut s = format!("nr_zones: {total}\n");
    for d in zones {
        let (slba, wp, cap) = (
            c_alt_hex(d.start, 10),
            c_alt_hex(d.write_pointer, 10),
            c_alt_hex(d.capacity, 10),
        );
        if verbose {
            let state = d.state().map_or("Unknown State", ZoneState::nvme_cli_name);
            let ty = type_name(d.zone_type);
            s += &format!("SLBA: {slba} WP: {wp} Cap: {cap} State: {state:<12} Type: {ty:<14}\n");
            let valid = if d.attributes & 0x80 != 0 { "" } else { "Not " };
            s += &format!("Attrs: Zone Descriptor Extension is {valid}Vaild\n");
            const LIMIT: [&str; 4] = ["", "1", "2", "3"];
            let zai = d.attributes_info as usize;
            if d.attributes & 0x04 != 0 {
                let l = LIMIT[(zai & 0xd) >> 2];
                s += &format!("       Reset Zone Recommended with Reset Recommended Limit{l}\n");
            }
            if d.attributes & 0x02 != 0 {
                let l = LIMIT[zai & 0x3];
                s += &format!("       Finish Zone Recommended with Finish Recommended Limit{l}\n");
            }
            if d.attributes & 0x01 != 0 {
                s += "       Zone Finished by Controller\n";
            }
        } else {
            s += &format!(
                "SLBA: {slba} WP: {wp} Cap: {cap} State: {} Type: {} Attrs: {} AttrsInfo: {}\n",
                c_alt_hex(d.zs as u64, 4),
                c_alt_hex(d.zone_type as u64, 4),
                c_alt_hex(d.attributes as u64, 4),
                c_alt_hex(d.attributes_info as u64, 4),
            );
        }
    }
    s
}

fn type_name(zone_type: u8) -> &'static str {
    if zone_type == crate::nvme::zns::ZONE_TYPE_SEQUENTIAL_WRITE_REQUIRED {
        "SEQWRITE_REQ"
    } else {
        "Unknown"
    }
}

/// nvme-cli's JSON keys (`nr_zones`, `zone_list` of `slba`, `wp`, `cap`, `state`, `type`,
/// `attrs`). nvme-cli adds `attrs` twice, ZA then ZAI, so json-c keeps ZAI; here it is ZA.
pub fn report_json(total: u64, zones: &[ZoneDescriptor]) -> Value {
    let list: Vec<Value> = zones
        .iter()
        .map(|d| {
            json!({
                "slba": d.start,
                "wp": d.write_pointer,
                "cap": d.capacity,
                "state": d.state().map_or("Unknown State", ZoneState::nvme_cli_name),
                "type": type_name(d.zone_type),
                "attrs": d.attributes,
            })
        })
        .collect();
    json!({ "nr_zones": total, "zone_list": list })
}

/// A Zone Management Send command, with nvme-cli's line on success
/// (`zns-reset-zone: Success, action:4 zone:0 all:0 zcapc:0 nsid:1`).
fn send(action: ZoneAction, a: &SendArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let name = format!("zns-{}", action.nvme_cli_name());
    let zoned = Zoned::open(&a.target, Some(&name))?;
    let z = zoned.access()?;
    if !a.select_all {
        z.check_lba(a.start_lba)?;
    }
    let cmd = Command::zone_management_send(z.nsid, a.start_lba, action, a.select_all);
    let (result, _) = z.io(cmd, 0)?;
    if action == ZoneAction::Open {
        writeln!(out, "{name}: Success zone slba:{:x} nsid:{}", a.start_lba, z.nsid)?;
    } else {
        let zcapc = if action == ZoneAction::Reset { result & 1 } else { 0 };
        writeln!(
            out,
            "{name}: Success, action:{} zone:{:x} all:{} zcapc:{zcapc} nsid:{}",
            action as u8, a.start_lba, a.select_all as u8, z.nsid
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zone of capacity 0x8000 in state `zs` (ZS bits 7:4).
    fn zone(start: u64, wp: u64, zs: u8) -> ZoneDescriptor {
        crate::cli::io_shared::zones::zone(start, zs >> 4, wp, 0x8000)
    }

    #[test]
    fn the_text_is_nvme_clis_byte_for_byte() {
        let zones = [
            zone(0, 0, 0x10),
            zone(0x8000, 0x8004, 0x20),
            zone(0x10000, u64::MAX, 0xE0),
        ];
        assert_eq!(
            report_text(3, &zones, false),
            "nr_zones: 3\n\
             SLBA: 0          WP: 0          Cap: 0x8000     State: 0x10 Type: 0x2  Attrs: 0    AttrsInfo: 0   \n\
             SLBA: 0x8000     WP: 0x8004     Cap: 0x8000     State: 0x20 Type: 0x2  Attrs: 0    AttrsInfo: 0   \n\
             SLBA: 0x10000    WP: 0xffffffffffffffff Cap: 0x8000     State: 0xe0 Type: 0x2  Attrs: 0    AttrsInfo: 0   \n"
        );
        assert_eq!(
            report_text(3, &zones[..1], true),
            "nr_zones: 3\n\
             SLBA: 0          WP: 0          Cap: 0x8000     State: EMPTY        Type: SEQWRITE_REQ  \n\
             Attrs: Zone Descriptor Extension is Not Vaild\n"
        );
        assert_eq!(report_json(1, &zones[2..])["zone_list"][0]["state"], "FULL");
        let mut flagged = zone(0, 0, 0x10);
        (flagged.attributes, flagged.attributes_info) = (0x07, 0x06);
        assert_eq!(
            report_text(1, &[flagged], true),
            "nr_zones: 1\n\
             SLBA: 0          WP: 0          Cap: 0x8000     State: EMPTY        Type: SEQWRITE_REQ  \n\
             Attrs: Zone Descriptor Extension is Not Vaild\n       \
             Reset Zone Recommended with Reset Recommended Limit1\n       \
             Finish Zone Recommended with Finish Recommended Limit2\n       \
             Zone Finished by Controller\n"
        );
    }

    /// A device that reports `per` zones of 0x100 blocks from the zone holding the LBA,
    /// of 8 zones; `back` makes every report start at zone 0 (a device that ignores SLBA).
    fn device(per: usize, back: bool) -> impl FnMut(u64) -> Result<ZoneReport, ()> {
        move |slba| {
            let first = if back { 0 } else { slba / 0x100 };
            let descriptors: Vec<_> = (first..8).take(per).map(|i| zone(i * 0x100, i * 0x100, 0x10)).collect();
            Ok(ZoneReport {
                zones: 8 - first,
                descriptors,
            })
        }
    }

    #[test]
    fn zones_are_collected_report_after_report_and_the_loop_always_ends() {
        let starts = |v: Vec<ZoneDescriptor>| v.iter().map(|d| d.start / 0x100).collect::<Vec<_>>();
        assert_eq!(
            starts(collect_zones(0, None, 0x100, 0x800, device(3, false)).unwrap()),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            starts(collect_zones(0x250, Some(4), 0x100, 0x800, device(3, false)).unwrap()),
            [2, 3, 4, 5]
        );
        assert_eq!(
            starts(collect_zones(0x800, None, 0x100, 0x800, device(3, false)).unwrap()),
            Vec::<u64>::new()
        );
        // A device that answers every report from zone 0 does not make it loop.
        assert_eq!(
            starts(collect_zones(0x300, None, 0x100, 0x800, device(3, true)).unwrap()),
            [0, 1, 2]
        );
        // Nor does a zone size of 0 (which `Zoned::open` refuses anyway): it ends.
        assert!(collect_zones(0, None, 0, 0x800, device(3, false)).unwrap().len() <= 3 * 0x801);
    }
}
