//! `zns`: nvme-cli's `nvme zns` commands for zoned namespaces (NVMe Zoned Namespace
//! Command Set 1.1): `report-zones` (Zone Management Receive) and `reset`, `open`, `close`,
//! `finish` (Zone Management Send, also under nvme-cli's names `reset-zone`, ...).
//!
//! They run on ironvme's driver (a PCI address) and through the kernel's NVMe ioctl on a
//! namespace node (`/dev/ngXnY`, `/dev/nvmeXnY`). The output is nvme-cli 2.3's.

use super::device::{self, OpenDevice};
use super::output::OutputFormat;
use super::{CliError, DEV_HELP, parse_nsid, parse_number, write_json};
use crate::Device;
use crate::admin::identify_namespace;
use crate::nvme::cmd::Command;
use crate::nvme::ctrl::{ControllerConfig, IoCompletion};
use crate::nvme::identify::Cns;
use crate::nvme::zns::{
    CSI_ZONED, IdentifyZonedNamespace, ZONE_DESCRIPTOR_BYTES, ZoneAction, ZoneDescriptor, ZoneReport, ZoneState,
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
/// Errors: [`CliError::Unsupported`] for a backend that cannot send zone commands (only
/// VFIO and the ioctl backend can) or a namespace that is not zoned; the controller's
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

/// A zoned namespace opened for zone commands.
struct Zoned {
    dev: OpenDevice,
    nsid: u32,
    /// Zone size in logical blocks (ZSZE of the current LBA format).
    zone_blocks: u64,
    /// NSZE.
    blocks: u64,
}

impl Zoned {
    fn open(target: &ZoneTarget) -> Result<Zoned, CliError> {
        let dev = device::open(device::parse_device(&target.dev)?, ControllerConfig::default())?;
        if !matches!(dev.device(), Device::Vfio(_) | Device::Ioctl(..)) {
            return Err(CliError::Unsupported(format!(
                "{}: zone commands need ironvme's driver or the NVMe ioctl backend",
                dev.name()
            )));
        }
        let nsid = target.nsid.or_else(|| dev.node_namespace()).unwrap_or(1);
        let id = identify_namespace(dev.admin(), nsid).map_err(CliError::on(&dev))?;
        let cmd = Command::identify_csi(Cns::IO_COMMAND_SET_NAMESPACE, nsid, CSI_ZONED);
        let raw = dev.admin().admin_read(cmd, crate::nvme::identify::IDENTIFY_DATA_LEN);
        let zone_blocks = raw
            .ok()
            .and_then(|(_, raw)| IdentifyZonedNamespace::parse(&raw).ok())
            .and_then(|z| z.zone_geometry(id.current_format_index()))
            .map(|(zsze, _)| zsze)
            .ok_or_else(|| {
                CliError::Unsupported(format!(
                    "{}: namespace {nsid} is not a zoned namespace (no Zoned Namespace Identify data with a zone size)",
                    dev.name()
                ))
            })?;
        Ok(Zoned {
            dev,
            nsid,
            zone_blocks,
            blocks: id.nsze,
        })
    }

    /// Runs one I/O command that reads `len` bytes (0: none); its 64-bit result and data.
    fn io(&self, cmd: Command, len: usize) -> Result<(u64, Vec<u8>), CliError> {
        let on = |e: crate::Error| CliError::on(&self.dev)(e);
        match self.dev.device() {
            Device::Ioctl(d, _) => d.io_read(cmd, len).map_err(|e| on(e.into())),
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
                q.submit(cmd, buf, 0).map_err(|e| on(e.error.into()))?;
                q.ring();
                let mut done: Option<IoCompletion> = None;
                while done.is_none() {
                    q.wait(1, |c| done = Some(c));
                }
                let c = done.expect("the loop ends with it");
                if let Err(status) = c.result() {
                    let e = crate::nvme::ctrl::Error::Command {
                        command: cmd.name(false),
                        status,
                    };
                    return Err(on(e.into()));
                }
                let data = c.buf.as_ref().map(|b| b.as_slice()[..len].to_vec()).unwrap_or_default();
                Ok((c.dw0_dw1(), data))
            }
            _ => unreachable!("checked at open"),
        }
    }

    fn report(&self, slba: u64, len: usize, filter: u8, partial: bool) -> Result<ZoneReport, CliError> {
        let cmd = Command::zone_management_receive(self.nsid, slba, len as u32, false, filter, partial)
            .expect("a report size of 64 + 64·n bytes");
        let (_, data) = self.io(cmd, len)?;
        ZoneReport::parse(&data, 0).map_err(|e| CliError::on(&self.dev)(crate::nvme::ctrl::Error::from(e).into()))
    }
}

/// `zns report-zones`: nvme-cli's flow — the total from a 64-byte report from LBA 0, then
/// reports of up to 1024 zones from `-s`.
fn report(a: &ReportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if a.output_format == OutputFormat::Binary {
        return Err(CliError::Usage("report-zones prints normal or json".into()));
    }
    let z = Zoned::open(&a.target)?;
    let total = z.report(0, ZONE_DESCRIPTOR_BYTES, a.state, false)?.zones;
    let limit = a.descs.unwrap_or(u64::MAX);
    let mut zones = Vec::new();
    let mut slba = a.start_lba;
    while (zones.len() as u64) < limit && slba < z.blocks {
        let len = ZONE_DESCRIPTOR_BYTES * (1 + DESCRIPTORS_PER_REPORT);
        let r = z.report(slba, len, a.state, a.partial)?;
        let Some(last) = r.descriptors.last() else { break };
        slba = last.start.saturating_add(z.zone_blocks);
        let room = (limit - zones.len() as u64) as usize;
        zones.extend(r.descriptors.into_iter().take(room));
    }
    match a.output_format {
        OutputFormat::Json => write_json(out, &report_json(total, &zones))?,
        _ => out.write_all(report_text(total, &zones, a.verbose).as_bytes())?,
    }
    Ok(())
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
    let z = Zoned::open(&a.target)?;
    if !a.select_all && a.start_lba >= z.blocks {
        return Err(CliError::Invalid(format!(
            "{}: LBA {:#x} is past the end of namespace {} ({} blocks)",
            z.dev.name(),
            a.start_lba,
            z.nsid,
            z.blocks
        )));
    }
    let cmd = Command::zone_management_send(z.nsid, a.start_lba, action, a.select_all);
    let (result, _) = z.io(cmd, 0)?;
    let name = format!("zns-{}", action.nvme_cli_name());
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

    fn zone(start: u64, wp: u64, zs: u8) -> ZoneDescriptor {
        ZoneDescriptor {
            zone_type: 2,
            zs,
            attributes: 0,
            attributes_info: 0,
            capacity: 0x8000,
            start,
            write_pointer: wp,
        }
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
    }
}
