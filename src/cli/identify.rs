//! `identify` (Identify Controller) and `identify-ns` (Identify Namespace), printed as
//! `nvme id-ctrl` and `nvme id-ns` print them.
//!
//! Every field nvme-cli 2.3 prints is printed, under its name and in its value format,
//! and with `-H` its bit fields decoded under it as nvme-cli prints them ([`decoded`]);
//! the guest test `a_kernel_owned_controller_prints_what_nvme_cli_prints` compares the
//! two byte for byte, in text and JSON.

pub mod decoded;

use super::device::{self, OpenDevice};
use super::output::{OutputFormat, Record, c_hex, emit, hex_bytes, uuid_string};
use super::{CliError, IdentifyArgs, IdentifyNsArgs, ListNsArgs};
use crate::admin::{active_namespaces, identify, identify_namespace};
use crate::nvme::ctrl::{ControllerConfig, NSID_ALL};
use crate::nvme::identify::{
    Cns, IdentifyController, IdentifyNamespace, NamespaceList, PowerStateDescriptor, PsdFlags,
};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::io::Write;

/// Width of the field names in `nvme id-ctrl` output (`%-10s: `).
const CTRL_NAME_WIDTH: usize = 10;
/// Width of the field names in `nvme id-ns` output (`%-8s: `).
const NS_NAME_WIDTH: usize = 8;

/// The scalar fields of Identify Controller in `nvme id-ctrl` order, with its formats;
/// with `human`, the bit fields decoded as `nvme id-ctrl -H` prints them.
pub fn controller_record(id: &IdentifyController, human: bool) -> Record {
    let mut r = Record::decoding(human);
    let ieee = u32::from(id.ieee[2]) << 16 | u32::from(id.ieee[1]) << 8 | u32::from(id.ieee[0]);
    // nvme-cli prints the ASCII fields with their space padding (`%-.*s` of the whole
    // field), in text and JSON; the parser trims it, so it is put back to the field size.
    r.hex("vid", id.vid)
        .hex("ssvid", id.ssvid)
        .text("sn", &format!("{:<20}", id.sn))
        .text("mn", &format!("{:<40}", id.mn))
        .text("fr", &format!("{:<8}", id.fr))
        .dec("rab", id.rab)
        .field("ieee", format!("{ieee:06x}"), Value::from(ieee))
        .hex("cmic", id.cmic.bits())
        .decoded(|| decoded::cmic(id.cmic.bits()))
        .dec("mdts", id.mdts)
        .hex("cntlid", id.cntlid)
        .hex("ver", id.ver)
        .hex("rtd3r", id.rtd3r)
        .hex("rtd3e", id.rtd3e)
        .hex("oaes", id.oaes)
        .decoded(|| decoded::oaes(id.oaes))
        .hex("ctratt", id.ctratt)
        .decoded(|| decoded::ctratt(id.ctratt))
        .hex("rrls", id.rrls)
        .dec("cntrltype", id.cntrltype)
        .decoded(|| decoded::cntrltype(id.cntrltype))
        .text("fguid", &uuid_string(&id.fguid))
        .dec("crdt1", id.crdt[0])
        .dec("crdt2", id.crdt[1])
        .dec("crdt3", id.crdt[2])
        .dec("nvmsr", id.nvmsr)
        .decoded(|| decoded::nvmsr(id.nvmsr))
        .dec("vwci", id.vwci)
        .decoded(|| decoded::vwci(id.vwci))
        .dec("mec", id.mec)
        .decoded(|| decoded::mec(id.mec))
        .hex("oacs", id.oacs.bits())
        .decoded(|| decoded::oacs(id.oacs.bits()))
        .dec("acl", id.acl)
        .dec("aerl", id.aerl)
        .hex("frmw", id.frmw.to_raw())
        .decoded(|| decoded::frmw(id.frmw.to_raw()))
        .hex("lpa", id.lpa.bits())
        .decoded(|| decoded::lpa(id.lpa.bits()))
        .dec("elpe", id.elpe)
        .decoded(|| decoded::zeros_based(id.elpe, "Error Log Page Entries (ELPE)"))
        .dec("npss", id.npss)
        .decoded(|| decoded::zeros_based(id.npss, "Number of Power States Support (NPSS)"))
        .hex("avscc", id.avscc)
        .decoded(|| decoded::vendor_specific_format(id.avscc, "Admin"))
        .hex("apsta", id.apsta)
        .decoded(|| decoded::apsta(id.apsta))
        .dec("wctemp", id.wctemp)
        .decoded(|| decoded::temperature(id.wctemp, "Warning Composite Temperature Threshold (WCTEMP)"))
        .dec("cctemp", id.cctemp)
        .decoded(|| decoded::temperature(id.cctemp, "Critical Composite Temperature Threshold (CCTEMP)"))
        .dec("mtfa", id.mtfa)
        .dec("hmpre", id.hmpre)
        .dec("hmmin", id.hmmin)
        .u128("tnvmcap", id.tnvmcap)
        .decoded(|| decoded::capacity(id.tnvmcap, "Total NVM Capacity (TNVMCAP)"))
        .u128("unvmcap", id.unvmcap)
        .decoded(|| decoded::capacity(id.unvmcap, "Unallocated NVM Capacity (UNVMCAP)"))
        .hex("rpmbs", id.rpmbs)
        .decoded(|| decoded::rpmbs(id.rpmbs))
        .dec("edstt", id.edstt)
        .dec("dsto", id.dsto)
        .dec("fwug", id.fwug)
        .dec("kas", id.kas)
        .hex("hctma", id.hctma)
        .decoded(|| decoded::hctma(id.hctma))
        .dec("mntmt", id.mntmt)
        .decoded(|| decoded::temperature(id.mntmt, "Minimum Thermal Management Temperature (MNTMT)"))
        .dec("mxtmt", id.mxtmt)
        .decoded(|| decoded::temperature(id.mxtmt, "Maximum Thermal Management Temperature (MXTMT)"))
        .hex("sanicap", id.sanicap)
        .decoded(|| decoded::sanicap(id.sanicap))
        .dec("hmminds", id.hmminds)
        .dec("hmmaxd", id.hmmaxd)
        .dec("nsetidmax", id.nsetidmax)
        .dec("endgidmax", id.endgidmax)
        .dec("anatt", id.anatt)
        .dec("anacap", id.anacap)
        .decoded(|| decoded::anacap(id.anacap))
        .dec("anagrpmax", id.anagrpmax)
        .dec("nanagrpid", id.nanagrpid)
        .dec("pels", id.pels)
        .dec("domainid", id.domainid)
        .u128("megcap", id.megcap)
        .hex("sqes", id.sqes)
        .decoded(|| decoded::entry_sizes(id.sqes, "SQ"))
        .hex("cqes", id.cqes)
        .decoded(|| decoded::entry_sizes(id.cqes, "CQ"))
        .dec("maxcmd", id.maxcmd)
        .dec("nn", id.nn)
        .hex("oncs", id.oncs.bits())
        .decoded(|| decoded::oncs(id.oncs.bits()))
        .hex("fuses", id.fuses)
        .decoded(|| decoded::fuses(id.fuses))
        .hex("fna", id.fna)
        .decoded(|| decoded::fna(id.fna))
        .hex("vwc", id.vwc)
        .decoded(|| decoded::vwc(id.vwc))
        .dec("awun", id.awun)
        .dec("awupf", id.awupf)
        .dec("icsvscc", id.icsvscc)
        .decoded(|| decoded::vendor_specific_format(id.icsvscc, "NVM"))
        .dec("nwpc", id.nwpc)
        .decoded(|| decoded::nwpc(id.nwpc))
        .dec("acwu", id.acwu)
        .hex("ocfs", id.ocfs)
        .decoded(|| decoded::ocfs(id.ocfs))
        .hex("sgls", id.sgls)
        .decoded(|| decoded::sgls(id.sgls))
        .dec("mnan", id.mnan)
        .u128("maxdna", id.maxdna)
        .dec("maxcna", id.maxcna)
        .text("subnqn", &id.subnqn);
    if id.subnqn.is_empty() {
        // nvme-cli's JSON leaves an empty subnqn out; its text prints the empty line.
        r.text_only();
    }
    r.dec("ioccsz", id.ioccsz)
        .dec("iorcsz", id.iorcsz)
        .dec("icdoff", id.icdoff)
        .hex("fcatt", id.fcatt)
        .decoded(|| decoded::fcatt(id.fcatt))
        .dec("msdbd", id.msdbd)
        .dec("ofcs", id.ofcs)
        .decoded(|| decoded::ofcs(id.ofcs));
    r
}

/// Identify Controller as `nvme id-ctrl` prints it, power states included; with `human`,
/// as `nvme id-ctrl -H` prints it.
pub fn render_controller_text(id: &IdentifyController, human: bool) -> String {
    let mut out = String::from("NVME Identify Controller:\n");
    controller_record(id, human).write_human(CTRL_NAME_WIDTH, &mut out);
    for (i, ps) in id.psd.iter().enumerate() {
        out.push_str(&power_state_text(i, ps));
    }
    out
}

/// Identify Controller as `nvme id-ctrl -o json` prints it (with or without `-H`): the
/// fields, then `psds`.
pub fn render_controller_json(id: &IdentifyController) -> Value {
    let mut obj = controller_record(id, false).to_json();
    let psds: Vec<Value> = id.psd.iter().map(power_state_json).collect();
    obj.insert("psds".to_string(), Value::Array(psds));
    Value::Object(obj)
}

/// A power in units of 0.01 W (`scale` 2) or 0.0001 W (`scale` 1) as nvme-cli prints it;
/// `-` when not reported (0), `reserved` for 3.
fn power(value: u16, scale: u8) -> String {
    match scale {
        0 => "-".to_string(),
        1 => format!("{}.{:04}W", value / 10_000, value % 10_000),
        2 => format!("{}.{:02}W", value / 100, value % 100),
        _ => "reserved".to_string(),
    }
}

/// One power state descriptor as nvme-cli prints it (three lines).
fn power_state_text(i: usize, ps: &PowerStateDescriptor) -> String {
    let max_power = if ps.flags.contains(PsdFlags::MXPS) {
        power(ps.mp, 1)
    } else {
        power(ps.mp, 2)
    };
    let operational = if ps.non_operational() {
        "non-operational"
    } else {
        "operational"
    };
    let workload = match ps.apw {
        0 => "-",
        1 => "1MiB 32 RW, 30s idle",
        2 => "80K 128KiB SW",
        _ => "reserved",
    };
    format!(
        "ps   {i:>4} : mp:{max_power} {operational} enlat:{} exlat:{} rrt:{} rrl:{}\n            rwt:{} rwl:{} \
         idle_power:{} active_power:{}\n            active_power_workload:{workload}\n",
        ps.enlat,
        ps.exlat,
        ps.rrt,
        ps.rrl,
        ps.rwt,
        ps.rwl,
        power(ps.idlp, ps.ips),
        power(ps.actp, ps.aps),
    )
}

/// One power state descriptor with nvme-cli's JSON keys.
fn power_state_json(ps: &PowerStateDescriptor) -> Value {
    json!({
        "max_power": ps.mp,
        "flags": ps.flags.bits(),
        "entry_lat": ps.enlat,
        "exit_lat": ps.exlat,
        "read_tput": ps.rrt,
        "read_lat": ps.rrl,
        "write_tput": ps.rwt,
        "write_lat": ps.rwl,
        "idle_power": ps.idlp,
        "idle_scale": ps.ips,
        "active_power": ps.actp,
        "active_power_work": ps.apw,
        "active_scale": ps.aps,
    })
}

/// The scalar fields of Identify Namespace in `nvme id-ns` order, with its formats;
/// with `human`, the bit fields decoded as `nvme id-ns -H` prints them.
pub fn namespace_record(ns: &IdentifyNamespace, human: bool) -> Record {
    let mut r = Record::decoding(human);
    r.hex("nsze", ns.nsze)
        .hex("ncap", ns.ncap)
        .hex("nuse", ns.nuse)
        .hex("nsfeat", ns.nsfeat)
        .decoded(|| decoded::nsfeat(ns.nsfeat))
        .dec("nlbaf", ns.nlbaf)
        .hex("flbas", ns.flbas)
        .decoded(|| decoded::flbas(ns.flbas))
        .hex("mc", ns.mc)
        .decoded(|| decoded::mc(ns.mc))
        .hex("dpc", ns.dpc)
        .decoded(|| decoded::dpc(ns.dpc))
        .hex("dps", ns.dps)
        .decoded(|| decoded::dps(ns.dps))
        .hex("nmic", ns.nmic)
        .decoded(|| decoded::nmic(ns.nmic))
        .hex("rescap", ns.rescap)
        .decoded(|| decoded::rescap(ns.rescap))
        .hex("fpi", ns.fpi)
        .decoded(|| decoded::fpi(ns.fpi))
        .dec("dlfeat", ns.dlfeat)
        .decoded(|| decoded::dlfeat(ns.dlfeat))
        .dec("nawun", ns.nawun)
        .dec("nawupf", ns.nawupf)
        .dec("nacwu", ns.nacwu)
        .dec("nabsn", ns.nabsn)
        .dec("nabo", ns.nabo)
        .dec("nabspf", ns.nabspf)
        .dec("noiob", ns.noiob)
        .u128("nvmcap", ns.nvmcap);
    // NSFEAT bit 4 (OPTPERF): NPWG..NOWS are defined; nvme-cli prints them only then.
    if ns.nsfeat & 0x10 != 0 {
        r.dec("npwg", ns.npwg)
            .dec("npwa", ns.npwa)
            .dec("npdg", ns.npdg)
            .dec("npda", ns.npda)
            .dec("nows", ns.nows);
    }
    r.dec("mssrl", ns.mssrl)
        .dec("mcl", ns.mcl)
        .dec("msrc", ns.msrc)
        .dec("nulbaf", ns.nulbaf)
        .dec("anagrpid", ns.anagrpid)
        // nvme-cli 2.3 prints this one name followed by a tab (`"nsattr\t: %u"`).
        .dec("nsattr\t", ns.nsattr)
        .dec("nvmsetid", ns.nvmsetid)
        .dec("endgid", ns.endgid)
        .text("nguid", &hex_bytes(&ns.nguid))
        .text("eui64", &hex_bytes(&ns.eui64));
    r
}

/// Identify Namespace `nsid` as `nvme id-ns` prints it: the fields, then one line per LBA
/// format with the one in use marked `(in use)`; with `human`, as `nvme id-ns -H` prints
/// it.
pub fn render_namespace_text(nsid: u32, ns: &IdentifyNamespace, human: bool) -> String {
    let mut out = format!("NVME Identify Namespace {nsid}:\n");
    namespace_record(ns, human).write_human(NS_NAME_WIDTH, &mut out);
    let in_use = ns.current_format_index();
    for (i, f) in ns.lba_formats.iter().enumerate() {
        if human {
            out.push_str(&decoded::lba_format(i, f.ms, f.lbads, f.rp, i == in_use));
            continue;
        }
        let line = format!(
            "lbaf {i:2} : ms:{:<3} lbads:{:<2} rp:{}",
            f.ms,
            f.lbads,
            c_hex(u64::from(f.rp))
        );
        // nvme-cli's `"rp:%#x %s\n"`: a space, then "(in use)" or nothing.
        let _ = writeln!(out, "{line} {}", if i == in_use { "(in use)" } else { "" });
    }
    out
}

/// Identify Namespace as `nvme id-ns -o json` prints it (with or without `-H`): the
/// fields, then `lbafs`.
pub fn render_namespace_json(ns: &IdentifyNamespace) -> Map<String, Value> {
    let mut obj = namespace_record(ns, false).to_json();
    let lbafs = ns
        .lba_formats
        .iter()
        .map(|f| json!({ "ms": f.ms, "ds": f.lbads, "rp": f.rp }))
        .collect();
    obj.insert("lbafs".to_string(), Value::Array(lbafs));
    obj
}

/// `ironvme identify DEV [-H]` (`id-ctrl`).
///
/// Errors: see [`CliError`].
pub fn run_controller(args: &IdentifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev = device::open(device::parse_device(&args.device.dev)?, ControllerConfig::default())?;
    let raw = identify(dev.admin(), Cns::CONTROLLER, 0).map_err(CliError::on(&dev))?;
    let id = IdentifyController::parse(&raw).map_err(|e| CliError::on(&dev)(e.into()))?;
    emit(
        out,
        args.device.format(),
        &raw,
        || render_controller_text(&id, args.human_readable),
        || render_controller_json(&id),
    )
}

/// `ironvme identify-ns DEV [--nsid N] [-H]` (`id-ns`). Without `--nsid`, a namespace node
/// means its own namespace and a controller every active one.
///
/// Errors: [`CliError::Invalid`] when `--nsid` names an inactive namespace, or for `-o
/// binary` of several namespaces; see [`CliError`].
pub fn run_namespace(args: &IdentifyNsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let spec = device::parse_device(&args.device.dev)?;
    let dev = device::open(spec, ControllerConfig::default())?;
    let format = args.device.format();
    match args.nsid.or_else(|| dev.node_namespace()) {
        Some(nsid) => {
            let (raw, ns) = identify_active(&dev, nsid)?;
            emit(
                out,
                format,
                &raw,
                || render_namespace_text(nsid, &ns, args.human_readable),
                || Value::Object(render_namespace_json(&ns)),
            )
        }
        None if format == OutputFormat::Binary => Err(CliError::Invalid(format!(
            "{}: -o binary prints one namespace's data structure: name it with --nsid",
            dev.name()
        ))),
        None => {
            let nsids = active_namespaces(dev.admin()).map_err(CliError::on(&dev))?;
            let mut all = Vec::with_capacity(nsids.len());
            for &nsid in &nsids {
                let ns = identify_namespace(dev.admin(), nsid).map_err(CliError::on(&dev))?;
                all.push((nsid, ns));
            }
            let text = || {
                let blocks: Vec<String> = all
                    .iter()
                    .map(|(nsid, ns)| render_namespace_text(*nsid, ns, args.human_readable))
                    .collect();
                blocks.join("\n")
            };
            emit(out, format, &[], text, || namespaces_json(&all))
        }
    }
}

/// A namespace ID list as `nvme list-ns` prints it: `[%4u]:%#x` per entry.
pub fn render_list_ns_text(nsids: &[u32]) -> String {
    let mut out = String::new();
    for (i, nsid) in nsids.iter().enumerate() {
        let _ = writeln!(out, "[{i:4}]:{}", c_hex(u64::from(*nsid)));
    }
    out
}

/// A namespace ID list as `nvme list-ns -o json` prints it.
pub fn render_list_ns_json(nsids: &[u32]) -> Value {
    let list: Vec<Value> = nsids.iter().map(|nsid| json!({ "nsid": nsid })).collect();
    json!({ "nsid_list": list })
}

/// `ironvme list-ns DEV [-n START] [--all]`.
///
/// Errors: see [`CliError`].
pub fn run_list_ns(args: &ListNsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev = device::open(device::parse_device(&args.device.dev)?, ControllerConfig::default())?;
    let cns = if args.all {
        Cns::ALLOCATED_NAMESPACE_LIST
    } else {
        Cns::ACTIVE_NAMESPACE_LIST
    };
    let raw = identify(dev.admin(), cns, args.start - 1).map_err(CliError::on(&dev))?;
    let nsids = NamespaceList::parse(&raw).map_err(|e| CliError::on(&dev)(e.into()))?;
    emit(
        out,
        args.device.format(),
        &raw,
        || render_list_ns_text(&nsids),
        || render_list_ns_json(&nsids),
    )
}

/// `{"namespaces": [{"nsid": N, <nvme-cli's id-ns keys>}, ...]}`.
pub fn namespaces_json(all: &[(u32, IdentifyNamespace)]) -> Value {
    let list: Vec<Value> = all
        .iter()
        .map(|(nsid, ns)| {
            let mut obj = Map::new();
            obj.insert("nsid".to_string(), Value::from(*nsid));
            obj.extend(render_namespace_json(ns));
            Value::Object(obj)
        })
        .collect();
    json!({ "namespaces": list })
}

/// Identify Namespace `nsid` (its bytes and parsed), refusing an inactive one (the
/// controller answers zeros). The broadcast NSID FFFFFFFFh (capabilities common to all
/// namespaces) is passed on.
fn identify_active(dev: &OpenDevice, nsid: u32) -> Result<(Vec<u8>, IdentifyNamespace), CliError> {
    let raw = identify(dev.admin(), Cns::NAMESPACE, nsid).map_err(CliError::on(dev))?;
    let ns = IdentifyNamespace::parse(&raw).map_err(|e| CliError::on(dev)(e.into()))?;
    if ns.is_active() || nsid == NSID_ALL {
        return Ok((raw, ns));
    }
    let active = active_namespaces(dev.admin()).map_err(CliError::on(dev))?;
    let list: Vec<String> = active.iter().map(u32::to_string).collect();
    Err(CliError::Invalid(format!(
        "{}: namespace {nsid} is not active (active namespaces: {})",
        dev.name(),
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nvme::identify::IDENTIFY_DATA_LEN;

    fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
        b[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn put_str(b: &mut [u8], off: usize, len: usize, s: &str) {
        b[off..off + len].fill(b' ');
        put(b, off, s.as_bytes());
    }

    /// Identify Controller as QEMU 7.2 answers for `-device nvme,serial=ironvme-vfio4k`
    /// (the values `nvme id-ctrl` printed for it in the guest).
    pub(crate) fn qemu_controller_bytes() -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_DATA_LEN];
        put(&mut b, 0, &0x1b36u16.to_le_bytes());
        put(&mut b, 2, &0x1af4u16.to_le_bytes());
        put_str(&mut b, 4, 20, "ironvme-vfio4k");
        put_str(&mut b, 24, 40, "QEMU NVMe Ctrl");
        put_str(&mut b, 64, 8, "7.2.22");
        b[72] = 6;
        put(&mut b, 73, &[0x00, 0x54, 0x52]);
        b[77] = 7;
        put(&mut b, 80, &0x0001_0400u32.to_le_bytes());
        put(&mut b, 92, &0x100u32.to_le_bytes());
        put(&mut b, 96, &0x8000u32.to_le_bytes());
        b[111] = 1;
        put(&mut b, 256, &0x10au16.to_le_bytes());
        b[258] = 3;
        b[259] = 3;
        b[260] = 3;
        b[261] = 7;
        put(&mut b, 266, &343u16.to_le_bytes());
        put(&mut b, 268, &373u16.to_le_bytes());
        b[512] = 0x66;
        b[513] = 0x44;
        put(&mut b, 516, &256u32.to_le_bytes());
        put(&mut b, 520, &0x15du16.to_le_bytes());
        b[525] = 7;
        put(&mut b, 536, &1u32.to_le_bytes());
        put_str(&mut b, 768, 256, "nqn.2019-08.org.qemu:ironvme-vfio4k");
        b[768 + 35..1024].fill(0);
        // PSD0: 25 W (2500 centiwatts), enlat 16 µs, exlat 4 µs.
        put(&mut b, 2048, &2500u16.to_le_bytes());
        put(&mut b, 2052, &16u32.to_le_bytes());
        put(&mut b, 2056, &4u32.to_le_bytes());
        b
    }

    pub(crate) fn qemu_controller() -> IdentifyController {
        IdentifyController::parse(&qemu_controller_bytes()).unwrap()
    }

    /// Identify Namespace of QEMU's 1 GiB namespace formatted with 4096-byte blocks
    /// (LBA format 4 of eight).
    pub(crate) fn qemu_namespace_4k() -> IdentifyNamespace {
        let mut b = vec![0u8; IDENTIFY_DATA_LEN];
        for off in [0, 8, 16] {
            put(&mut b, off, &0x40000u64.to_le_bytes());
        }
        b[24] = 0x14;
        b[25] = 7;
        b[26] = 4;
        b[27] = 3;
        b[28] = 0x1f;
        b[33] = 1;
        put(&mut b, 74, &128u16.to_le_bytes());
        put(&mut b, 76, &128u32.to_le_bytes());
        b[80] = 127;
        for (i, (ms, lbads)) in [
            (0u16, 9u8),
            (8, 9),
            (16, 9),
            (64, 9),
            (0, 12),
            (8, 12),
            (16, 12),
            (64, 12),
        ]
        .into_iter()
        .enumerate()
        {
            let raw = u32::from(ms) | u32::from(lbads) << 16;
            put(&mut b, 128 + 4 * i, &raw.to_le_bytes());
        }
        IdentifyNamespace::parse(&b).unwrap()
    }

    #[test]
    fn controller_text_is_nvme_cli_shaped() {
        let text = render_controller_text(&qemu_controller(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NVME Identify Controller:");
        for expected in [
            "vid       : 0x1b36",
            "ssvid     : 0x1af4",
            "sn        : ironvme-vfio4k      ",
            "mn        : QEMU NVMe Ctrl                          ",
            "fr        : 7.2.22  ",
            "rab       : 6",
            "ieee      : 525400",
            "cmic      : 0",
            "mdts      : 7",
            "cntlid    : 0",
            "ver       : 0x10400",
            "oaes      : 0x100",
            "ctratt    : 0x8000",
            "cntrltype : 1",
            "fguid     : 00000000-0000-0000-0000-000000000000",
            "oacs      : 0x10a",
            "acl       : 3",
            "frmw      : 0x3",
            "lpa       : 0x7",
            "wctemp    : 343",
            "cctemp    : 373",
            "tnvmcap   : 0",
            "sqes      : 0x66",
            "cqes      : 0x44",
            "nn        : 256",
            "oncs      : 0x15d",
            "vwc       : 0x7",
            "sgls      : 0x1",
            "subnqn    : nqn.2019-08.org.qemu:ironvme-vfio4k",
            "ps      0 : mp:25.00W operational enlat:16 exlat:4 rrt:0 rrl:0",
            "            rwt:0 rwl:0 idle_power:- active_power:-",
            "            active_power_workload:-",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        // nvme-cli's order.
        let names: Vec<&str> = lines[1..]
            .iter()
            .filter_map(|l| l.split(':').next().unwrap().split_whitespace().next())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("vid") < pos("sn") && pos("sn") < pos("mdts") && pos("mdts") < pos("oacs"));
        assert!(pos("oacs") < pos("sqes") && pos("sqes") < pos("subnqn") && pos("subnqn") < pos("ps"));
    }

    #[test]
    fn controller_json_has_nvme_cli_keys() {
        let v = render_controller_json(&qemu_controller());
        let text = serde_json::to_string(&v).unwrap();
        // Padded to the field's 20 bytes, as nvme-cli prints it.
        assert!(text.contains(r#""sn":"ironvme-vfio4k      ""#), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["vid"], 0x1b36);
        assert_eq!(back["mdts"], 7);
        assert_eq!(back["ieee"], 5_395_456);
        assert_eq!(back["ver"], 0x10400);
        assert_eq!(back["oacs"], 0x10a);
        assert_eq!(back["frmw"], 3);
        assert_eq!(back["crdt1"], 0);
        assert_eq!(back["tnvmcap"], "0");
        assert_eq!(back["fguid"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(back["subnqn"], "nqn.2019-08.org.qemu:ironvme-vfio4k");
        assert_eq!(back["psds"][0]["max_power"], 2500);
        assert_eq!(back["psds"][0]["entry_lat"], 16);
        assert_eq!(back["psds"][0]["exit_lat"], 4);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "vid");
        assert_eq!(keys.last().unwrap().as_str(), "psds");
    }

    #[test]
    fn power_states_in_every_scale() {
        let mut b = qemu_controller_bytes();
        b[263] = 1; // two power states
        b[2048 + 3] = 0x3; // PSD0: MXPS (0.0001 W units) and non-operational
        put(&mut b, 2048 + 32, &900u16.to_le_bytes());
        put(&mut b, 2048 + 32 + 16, &1234u16.to_le_bytes());
        b[2048 + 32 + 18] = 2 << 6; // idle power in 0.01 W
        put(&mut b, 2048 + 32 + 20, &5u16.to_le_bytes());
        b[2048 + 32 + 22] = (1 << 6) | 2; // active power in 0.0001 W, workload 2
        let text = render_controller_text(&IdentifyController::parse(&b).unwrap(), false);
        assert!(
            text.contains("ps      0 : mp:0.2500W non-operational enlat:16"),
            "{text}"
        );
        assert!(text.contains("ps      1 : mp:9.00W operational"), "{text}");
        assert!(text.contains("idle_power:12.34W active_power:0.0005W"), "{text}");
        assert!(text.contains("active_power_workload:80K 128KiB SW"), "{text}");
    }

    #[test]
    fn namespace_text_marks_the_format_in_use() {
        let text = render_namespace_text(1, &qemu_namespace_4k(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NVME Identify Namespace 1:");
        for expected in [
            "nsze    : 0x40000",
            "ncap    : 0x40000",
            "nsfeat  : 0x14",
            "nlbaf   : 7",
            "flbas   : 0x4",
            "mc      : 0x3",
            "dpc     : 0x1f",
            "dps     : 0",
            "dlfeat  : 1",
            "nvmcap  : 0",
            "mssrl   : 128",
            "mcl     : 128",
            "msrc    : 127",
            "anagrpid: 0",
            "nguid   : 00000000000000000000000000000000",
            "eui64   : 0000000000000000",
            "lbaf  0 : ms:0   lbads:9  rp:0 ",
            "lbaf  3 : ms:64  lbads:9  rp:0 ",
            "lbaf  4 : ms:0   lbads:12 rp:0 (in use)",
            "lbaf  7 : ms:64  lbads:12 rp:0 ",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(text.matches("(in use)").count(), 1);
    }

    #[test]
    fn namespace_json_has_nvme_cli_keys() {
        let text = serde_json::to_string(&Value::Object(render_namespace_json(&qemu_namespace_4k()))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["nsze"], 0x40000);
        assert_eq!(v["flbas"], 4);
        assert_eq!(v["nvmcap"], "0");
        assert_eq!(v["eui64"], "0000000000000000");
        assert_eq!(v["lbafs"].as_array().unwrap().len(), 8);
        assert_eq!(v["lbafs"][4], json!({"ms": 0, "ds": 12, "rp": 0}));

        let all = namespaces_json(&[(1, qemu_namespace_4k()), (2, qemu_namespace_4k())]);
        assert_eq!(all["namespaces"][1]["nsid"], 2);
        assert_eq!(all["namespaces"][1]["lbafs"][4]["ds"], 12);
    }

    #[test]
    fn driver_serde_feature_gives_raw_numbers() {
        // The `serde` feature of ironvme-nvme: spec field names, bitflags as raw bits.
        let v = serde_json::to_value(qemu_controller()).unwrap();
        assert_eq!(v["sn"], "ironvme-vfio4k");
        assert_eq!(v["oacs"], 0x10a);
        assert_eq!(v["oncs"], 0x15d);
        assert_eq!(v["lpa"], 7);
        assert_eq!(v["cmic"], 0);
        assert_eq!(v["frmw"]["num_slots"], 1);
        assert_eq!(v["psd"][0]["flags"], 0);
        let ns = serde_json::to_value(qemu_namespace_4k()).unwrap();
        assert_eq!(ns["lba_formats"][4]["lbads"], 12);
    }
}
