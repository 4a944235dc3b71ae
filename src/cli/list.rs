//! `list`: nvme-cli's `nvme list` for the namespaces the kernel owns, and ironvme's view
//! of every NVMe controller on the PCI bus.
//!
//! Two parts, in text and in JSON:
//!
//! - **nvme-cli's table** (`Devices` in JSON): one row per kernel namespace node, with
//!   the columns, order and formats of nvme-cli 2.3 (libnvme 1.3). Like libnvme, the
//!   controllers and subsystems come from `/sys/class/nvme/` and
//!   `/sys/class/nvme-subsystem/`, and each namespace's size, utilisation and LBA format
//!   from Identify Namespace sent through the kernel's admin ioctl on its node
//!   (`/dev/nvmeXnY`), which changes nothing on the controller. A node that cannot be
//!   opened or identified (no root) is left out, as nvme-cli leaves it out, with a
//!   warning on stderr.
//! - **ironvme's controller view** (`controllers` in JSON): every controller of PCI class
//!   010802h with its BDF, vendor and device ID, bound driver and IOMMU group, from sysfs
//!   alone. A controller bound to vfio-pci is never opened (opening it through VFIO
//!   would reset it under whoever uses it): it has no kernel nodes, so it appears only
//!   here, with what sysfs tells. Kernel-owned controllers (driver `nvme`) also show what
//!   the kernel publishes: serial number, model and firmware revision
//!   (`/sys/class/nvme/nvmeX/`) and their namespaces (`/sys/block/nvmeXnY`).

use super::device::{self, DeviceSpec};
use super::{CliError, ListArgs, write_json};
use crate::nvme::ctrl::ControllerConfig;
use crate::nvme::identify::IdentifyNamespace;
use crate::vfio::pci::NVME_CLASS;
use crate::vfio::{Bdf, Sysfs};
use ironvme_kernel::node::NvmeName;
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `list`'s output formats: nvme-cli's `nvme list -o normal|json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// nvme-cli's table, then ironvme's controller table.
    #[default]
    Normal,
    /// One JSON object: nvme-cli's `Devices` array and ironvme's `controllers`.
    Json,
}

impl ListArgs {
    /// The output format asked for (`--json` is `-o json`).
    pub fn format(&self) -> ListFormat {
        if self.json {
            ListFormat::Json
        } else {
            self.output_format
        }
    }
}

/// What sysfs says about one NVMe controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControllerInfo {
    /// PCI address, `0000:00:04.0`.
    pub bdf: String,
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// Bound driver (`nvme`, `vfio-pci`, ...), `None` when unbound.
    pub driver: Option<String>,
    /// IOMMU group number, `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// The kernel's controller name (`nvme0`), for controllers bound to nvme.
    pub controller: Option<String>,
    /// Serial number, for controllers bound to nvme.
    pub serial: Option<String>,
    /// Model number, for controllers bound to nvme.
    pub model: Option<String>,
    /// Firmware revision, for controllers bound to nvme.
    pub firmware: Option<String>,
    /// Namespaces the kernel exposes as block devices, for controllers bound to nvme.
    pub namespaces: Vec<NamespaceInfo>,
}

/// A namespace the kernel exposes as a block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceInfo {
    /// Block device name, `nvme0n1`.
    pub name: String,
    /// Namespace ID, if the kernel publishes it.
    pub nsid: Option<u32>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block (LBA) size in bytes.
    pub lba_size: Option<u32>,
}

impl NamespaceInfo {
    /// Size in logical blocks, when the LBA size is known.
    pub fn blocks(&self) -> Option<u64> {
        self.lba_size.filter(|&s| s > 0).map(|s| self.size_bytes / u64::from(s))
    }
}

/// Reads a sysfs attribute, trimmed; `None` if it cannot be read.
fn attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The names in a directory, sorted; empty if it cannot be read.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|a| natural_key(a));
    out
}

/// Sorts `nvme10n1` after `nvme2n1`: digit runs compare as numbers.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = u64::from(c as u8 - b'0');
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

/// A kernel namespace block device name ([`NvmeName`]): `Some(false)` for `nvme<i>n<j>`
/// (a namespace, or a multipath head), `Some(true)` for `nvme<i>c<k>n<j>` (one path of a
/// multipath namespace), `None` for anything else.
fn namespace_kind(name: &str) -> Option<bool> {
    match NvmeName::parse(name)? {
        NvmeName::Disk { .. } => Some(false),
        NvmeName::Path { .. } => Some(true),
        _ => None,
    }
}

/// The namespaces of kernel controller directory `ctrl_dir`: its `nvmeXnY` children,
/// and for multipath paths (`nvmeXcYnZ`) the head block device that lists the path in
/// `/sys/block/<head>/multipath/`.
fn kernel_namespaces(sysfs: &Sysfs, ctrl_dir: &Path) -> Vec<NamespaceInfo> {
    let block = sysfs.root().join("block");
    let mut seen: Vec<String> = Vec::new();
    for name in names(ctrl_dir) {
        let dev = match namespace_kind(&name) {
            Some(false) => name,
            Some(true) => names(&block)
                .into_iter()
                .find(|head| block.join(head).join("multipath").join(&name).exists())
                .unwrap_or(name),
            None => continue,
        };
        if !seen.contains(&dev) {
            seen.push(dev);
        }
    }
    seen.into_iter()
        .map(|name| {
            let dir = if block.join(&name).exists() {
                block.join(&name)
            } else {
                ctrl_dir.join(&name)
            };
            let sectors: u64 = attr(&dir.join("size")).and_then(|s| s.parse().ok()).unwrap_or(0);
            NamespaceInfo {
                nsid: attr(&dir.join("nsid")).and_then(|s| s.parse().ok()),
                size_bytes: sectors.saturating_mul(512),
                lba_size: attr(&dir.join("queue/logical_block_size")).and_then(|s| s.parse().ok()),
                name,
            }
        })
        .collect()
}

/// Fills in what the kernel nvme driver publishes about the controller at `bdf`.
fn add_kernel_details(sysfs: &Sysfs, bdf: Bdf, info: &mut ControllerInfo) {
    let nvme_dir = sysfs.device_dir(bdf).join("nvme");
    let Some(ctrl) = names(&nvme_dir).into_iter().find(|n| n.starts_with("nvme")) else {
        return;
    };
    let dir: PathBuf = nvme_dir.join(&ctrl);
    info.serial = attr(&dir.join("serial"));
    info.model = attr(&dir.join("model"));
    info.firmware = attr(&dir.join("firmware_rev"));
    info.namespaces = kernel_namespaces(sysfs, &dir);
    info.controller = Some(ctrl);
}

/// Every NVMe controller (PCI class 010802h) in `sysfs`, by BDF.
///
/// Errors: [`CliError::Io`] when the PCI device directory cannot be read (sysfs not
/// mounted); a device whose attributes cannot be read is left out.
pub fn scan(sysfs: &Sysfs) -> Result<Vec<ControllerInfo>, CliError> {
    let dir = sysfs.root().join("bus/pci/devices");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list PCI devices in {}: {e}", dir.display())))?;
    let mut bdfs: Vec<Bdf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    bdfs.sort();
    let mut out = Vec::new();
    for bdf in bdfs {
        if sysfs.class(bdf).ok() != Some(NVME_CLASS) {
            continue;
        }
        let Ok(dev) = sysfs.device(bdf) else { continue };
        let mut info = ControllerInfo {
            bdf: bdf.to_string(),
            vendor_id: dev.vendor,
            device_id: dev.device,
            driver: dev.driver.clone(),
            iommu_group: dev.iommu_group,
            controller: None,
            serial: None,
            model: None,
            firmware: None,
            namespaces: Vec::new(),
        };
        if dev.driver.as_deref() == Some("nvme") {
            add_kernel_details(sysfs, bdf, &mut info);
        }
        out.push(info);
    }
    Ok(out)
}

/// One row of `nvme list`: a kernel namespace node, its controller's (or, for a
/// multipath head, its subsystem's) identity from sysfs, and what Identify Namespace
/// says, kept as libnvme keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeCliRow {
    /// The block device node, `/dev/nvme0n1` (the bare name when there is no node).
    pub device_path: String,
    /// The generic character device node, `/dev/ng0n1` (the bare name when there is none).
    pub generic_path: String,
    /// Serial number (sysfs `serial`), `None` when empty or unreadable.
    pub serial: Option<String>,
    /// Model number (sysfs `model`).
    pub model: Option<String>,
    /// Firmware revision (sysfs `firmware_rev`).
    pub firmware: Option<String>,
    /// Namespace ID.
    pub nsid: u32,
    /// NSZE: namespace size, logical blocks.
    pub lba_count: u64,
    /// NUSE: namespace utilisation, logical blocks.
    pub lba_util: u64,
    /// Logical block size of the format in use, bytes (`1 << LBADS`, as libnvme computes it).
    pub lba_size: i32,
    /// Metadata bytes per logical block of the format in use.
    pub meta_size: u16,
}

impl NvmeCliRow {
    /// The row of namespace `nsid` from its Identify Namespace data; the rest as given.
    fn new(
        device_path: String,
        generic_path: String,
        owner: &Identity,
        nsid: u32,
        ns: &IdentifyNamespace,
    ) -> NvmeCliRow {
        // libnvme: lba_shift = lbaf[flbas].ds; lba_size = 1 << lba_shift (a C int).
        let format = ns.current_format();
        let shift = format.map_or(0, |f| f.lbads);
        NvmeCliRow {
            device_path,
            generic_path,
            serial: owner.serial.clone(),
            model: owner.model.clone(),
            firmware: owner.firmware.clone(),
            nsid,
            lba_count: ns.nsze,
            lba_util: ns.nuse,
            lba_size: 1i32.checked_shl(u32::from(shift)).unwrap_or(0),
            meta_size: format.map_or(0, |f| f.ms),
        }
    }

    /// Bytes in use (NUSE × LBA size) and the namespace's size (NSZE × LBA size), with C's
    /// unsigned 64-bit arithmetic.
    fn used_and_size(&self) -> (u64, u64) {
        let lba = self.lba_size as i64 as u64;
        (self.lba_util.wrapping_mul(lba), self.lba_count.wrapping_mul(lba))
    }

    /// The row as `nvme list` prints it, newline included.
    pub fn render_text(&self) -> String {
        let (used, size) = self.used_and_size();
        let (nuse, u_suffix) = si_suffix(used as f64);
        let (nsze, s_suffix) = si_suffix(size as f64);
        let (lba, l_suffix) = binary_suffix(i64::from(self.lba_size));
        let usage = format!("{nuse:6.2} {u_suffix:>2}B / {nsze:6.2} {s_suffix:>2}B");
        let format = format!("{:3.0} {l_suffix:>2}B + {:2} B", lba as f64, self.meta_size);
        let text = |s: &Option<String>| s.clone().unwrap_or_else(|| "(null)".to_string());
        format!(
            "{} {} {} {} {} {} {} {}\n",
            pad(&self.device_path, 21),
            pad(&self.generic_path, 21),
            pad(&text(&self.serial), 20),
            pad(&text(&self.model), 40),
            pad(&(self.nsid as i32).to_string(), 9),
            pad(&usage, 26),
            pad(&format, 16),
            pad(&text(&self.firmware), 8),
        )
    }

    /// The row as an element of `nvme list -o json`'s `Devices`.
    pub fn to_json(&self) -> Value {
        let (used, size) = self.used_and_size();
        json!({
            "NameSpace": self.nsid as i32,
            "DevicePath": self.device_path,
            "Firmware": self.firmware,
            "ModelNumber": self.model,
            "SerialNumber": self.serial,
            "UsedBytes": used,
            "MaximumLBA": self.lba_count,
            "PhysicalSize": size,
            "SectorSize": self.lba_size,
        })
    }
}

/// `s` padded with spaces to `width` bytes, as printf's `%-Ns` does.
fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(s.len())));
    out
}

/// nvme-cli's `suffix_si_get`: `value` scaled to the largest SI prefix it reaches, and
/// the prefix (`""` below 1).
fn si_suffix(value: f64) -> (f64, &'static str) {
    const SI: [(f64, &str); 11] = [
        (1e30, "Q"),
        (1e27, "R"),
        (1e24, "Y"),
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
        (1e0, ""),
    ];
    SI.iter()
        .find(|(magnitude, _)| value >= *magnitude)
        .map_or((value, ""), |&(magnitude, suffix)| (value / magnitude, suffix))
}

/// nvme-cli's `suffix_binary_get`: `value` rounded to the largest binary prefix it
/// reaches (`4096` is `4 Ki`), and the prefix (`""` below 1 Ki).
fn binary_suffix(value: i64) -> (i64, &'static str) {
    const BINARY: [(u32, &str); 5] = [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")];
    for (shift, suffix) in BINARY {
        if value.unsigned_abs() >= 1u64 << shift {
            return ((value + (1i64 << (shift - 1))) / (1i64 << shift), suffix);
        }
    }
    (value, "")
}

/// nvme-cli's table, header included, as `nvme list` prints it.
pub fn render_nvme_cli_text(rows: &[NvmeCliRow]) -> String {
    const DASH: &str = "--------------------------------------------------";
    let columns = [
        ("Node", 21),
        ("Generic", 21),
        ("SN", 20),
        ("Model", 40),
        ("Namespace", 9),
        ("Usage", 26),
        ("Format", 16),
        ("FW Rev", 8),
    ];
    let header: Vec<String> = columns.iter().map(|(name, w)| pad(name, *w)).collect();
    let dashes: Vec<&str> = columns.iter().map(|(_, w)| &DASH[..*w]).collect();
    let mut out = format!("{}\n{}\n", header.join(" "), dashes.join(" "));
    for row in rows {
        out.push_str(&row.render_text());
    }
    out
}

/// `nvme list -o json`'s object: `{"Devices": [...]}`.
pub fn render_nvme_cli_json(rows: &[NvmeCliRow]) -> Value {
    json!({ "Devices": rows.iter().map(NvmeCliRow::to_json).collect::<Vec<_>>() })
}

/// Opens a kernel namespace node and returns its namespace ID and Identify Namespace
/// data ([`identify_kernel_node`] on the system).
pub type IdentifyNode<'a> = dyn Fn(&Path) -> Result<(u32, IdentifyNamespace), CliError> + 'a;

/// Where `list` finds the kernel's NVMe nodes, and how it asks one of them Identify
/// Namespace.
pub struct KernelNodes<'a> {
    /// sysfs (`/sys`): `class/nvme/` and `class/nvme-subsystem/`.
    pub sysfs: &'a Sysfs,
    /// The device directory (`/dev`): a node is shown as `/dev/<name>` when
    /// `<dev>/<name>` exists, as nvme-cli checks `/dev/<name>`.
    pub dev: &'a Path,
    /// The namespace node at the path (`<dev>/nvmeXnY`): its namespace ID
    /// (`NVME_IOCTL_ID`) and Identify Namespace of that ID.
    pub identify: &'a IdentifyNode<'a>,
}

/// The kernel namespace node `node`'s namespace ID (`NVME_IOCTL_ID`) and Identify
/// Namespace of it, as libnvme reads them: with the ioctl backend (the kernel's admin
/// passthrough; nothing on the controller changes).
///
/// Errors: as [`device::open`]; [`CliError::Device`] if `node` is not a namespace node;
/// the command's failure.
pub fn identify_kernel_node(node: &Path) -> Result<(u32, IdentifyNamespace), CliError> {
    let dev = device::open(DeviceSpec::Path(node.to_path_buf()), ControllerConfig::default())?;
    let nsid = dev
        .node_namespace()
        .ok_or_else(|| CliError::Device(format!("{} is not a namespace node", node.display())))?;
    let ns = crate::admin::identify_namespace(dev.admin(), nsid).map_err(CliError::on(&dev))?;
    Ok((nsid, ns))
}

/// A sysfs attribute as libnvme reads it: one trailing newline and then trailing spaces
/// removed; `None` if unreadable or empty.
fn libnvme_attr(dir: &Path, name: &str) -> Option<String> {
    let raw = std::fs::read(dir.join(name)).ok()?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut text = String::from_utf8_lossy(&raw[..end.min(4095)]).into_owned();
    if text.ends_with('\n') {
        text.pop();
    }
    let trimmed = text.trim_end_matches(' ');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// libnvme's `nvme_namespace_filter` (`sscanf(name, "nvme%dn%d") == 2`): a namespace
/// or multipath head, read with the shared classifier ([`NvmeName`]).
fn is_libnvme_namespace(name: &str) -> bool {
    matches!(
        NvmeName::parse(name),
        Some(NvmeName::Disk { .. } | NvmeName::Partition { .. })
    )
}

/// libnvme's `nvme_ctrls_filter`: `nvme%d`, not a namespace or a path.
fn is_libnvme_ctrl(name: &str) -> bool {
    matches!(NvmeName::parse(name), Some(NvmeName::Controller { .. }))
}

/// libnvme's `nvme_subsys_filter`: `nvme-subsys%d`.
fn is_libnvme_subsystem(name: &str) -> bool {
    name.strip_prefix("nvme-subsys")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `scandir(dir, filter, alphasort)`: the names that pass, in byte order (`nvme10`
/// before `nvme2`, as in the C locale); empty if `dir` cannot be read.
fn scandir(dir: &Path, filter: fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && filter(n))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Serial, model and firmware revision of a controller or subsystem.
#[derive(Clone, Debug, Default)]
struct Identity {
    serial: Option<String>,
    model: Option<String>,
    firmware: Option<String>,
}

/// A controller of libnvme's tree: its namespaces, newest first.
struct TreeCtrl {
    namespaces: Vec<(String, NvmeCliRow)>,
}

/// A subsystem of libnvme's tree. Every list is newest first, as libnvme's `list_add`
/// (insertion at the head) leaves it, so `nvme list` prints the last scanned first.
struct TreeSubsystem {
    name: String,
    nqn: String,
    identity: Identity,
    namespaces: Vec<(String, NvmeCliRow)>,
    ctrls: Vec<TreeCtrl>,
}

/// A host of libnvme's tree (hostnqn and hostid; `None` for the default host).
struct TreeHost {
    key: Option<(String, Option<String>)>,
    subsystems: Vec<TreeSubsystem>,
}

impl KernelNodes<'_> {
    /// `/dev/<name>` if that node exists, else `/dev/spdk/<name>` if it exists, else
    /// the bare name (nvme-cli's `nvme_dev_full_path`).
    fn device_path(&self, name: &str) -> String {
        if self.dev.join(name).exists() {
            format!("/dev/{name}")
        } else if self.dev.join("spdk").join(name).exists() {
            format!("/dev/spdk/{name}")
        } else {
            name.to_string()
        }
    }

    /// `/dev/ngXnY` for `nvmeXnY` if it exists, else `/dev/spkd/ngXnY` (nvme-cli's
    /// spelling) if it exists, else `ngXnY` (nvme-cli's `nvme_generic_full_path`).
    fn generic_path(&self, name: &str) -> String {
        let generic = NvmeName::parse(name)
            .and_then(|n| n.generic())
            .map_or_else(|| "ng0n0".to_string(), |g| g.to_string());
        if self.dev.join(&generic).exists() {
            format!("/dev/{generic}")
        } else if self.dev.join("spkd").join(&generic).exists() {
            format!("/dev/spkd/{generic}")
        } else {
            generic
        }
    }

    /// libnvme's `nvme_ns_open`: the row of namespace node `name`, or why it is left out.
    fn open_namespace(&self, name: &str, owner: &Identity) -> Result<NvmeCliRow, String> {
        let (nsid, ns) = (self.identify)(&self.dev.join(name)).map_err(|e| e.to_string())?;
        Ok(NvmeCliRow::new(
            self.device_path(name),
            self.generic_path(name),
            owner,
            nsid,
            &ns,
        ))
    }

    /// The namespaces `filter` passes in `dir`, opened, newest first; those that cannot
    /// be opened are left out with a warning.
    fn scan_namespaces(&self, dir: &Path, owner: &Identity, into: &mut Vec<(String, NvmeCliRow)>) {
        for name in scandir(dir, is_libnvme_namespace) {
            match self.open_namespace(&name, owner) {
                Ok(row) => {
                    into.retain(|(n, _)| *n != name);
                    into.insert(0, (name, row));
                }
                Err(why) => tracing::warn!("/dev/{name} is left out of the nvme-cli table: {why}"),
            }
        }
    }

    /// Every kernel namespace node, in `nvme list`'s order: libnvme's scan of
    /// `/sys/class/nvme/` (each controller's namespaces) and then of
    /// `/sys/class/nvme-subsystem/` (multipath heads), printed host by host, subsystem by
    /// subsystem (each list newest first), a subsystem's heads before its controllers'
    /// namespaces.
    ///
    /// Hosts are told apart by the controllers' `hostnqn` and `hostid` attributes (PCIe
    /// controllers have neither: the default host).
    pub fn nvme_cli_rows(&self) -> Vec<NvmeCliRow> {
        let class = self.sysfs.root().join("class/nvme");
        let subsys_dir = self.sysfs.root().join("class/nvme-subsystem");
        let subsystems = scandir(&subsys_dir, is_libnvme_subsystem);
        let mut hosts: Vec<TreeHost> = Vec::new();
        let host_index = |hosts: &mut Vec<TreeHost>, key: Option<(String, Option<String>)>| {
            let found = hosts.iter().position(|h| match (&h.key, &key) {
                (Some((nqn, id)), Some((want_nqn, want_id))) => nqn == want_nqn && (want_id.is_none() || id == want_id),
                (a, b) => a.is_none() && b.is_none(),
            });
            found.unwrap_or_else(|| {
                hosts.insert(
                    0,
                    TreeHost {
                        key,
                        subsystems: Vec::new(),
                    },
                );
                0
            })
        };
        let new_subsystem = |name: &str, nqn: String| {
            let dir = subsys_dir.join(name);
            TreeSubsystem {
                name: name.to_string(),
                nqn,
                identity: Identity {
                    serial: libnvme_attr(&dir, "serial"),
                    model: libnvme_attr(&dir, "model").or_else(|| Some("undefined".to_string())),
                    firmware: libnvme_attr(&dir, "firmware_rev"),
                },
                namespaces: Vec::new(),
                ctrls: Vec::new(),
            }
        };

        for ctrl in scandir(&class, is_libnvme_ctrl) {
            let dir = class.join(&ctrl);
            let key = libnvme_attr(&dir, "hostnqn").map(|nqn| (nqn, libnvme_attr(&dir, "hostid")));
            let h = host_index(&mut hosts, key);
            let Some(nqn) = libnvme_attr(&dir, "subsysnqn") else {
                continue;
            };
            let Some(subsys_name) = subsystems.iter().find(|s| subsys_dir.join(s).join(&ctrl).exists()) else {
                tracing::warn!("no subsystem in {} lists {ctrl}", subsys_dir.display());
                continue;
            };
            let host = &mut hosts[h];
            let s = match host
                .subsystems
                .iter()
                .position(|s| s.nqn == nqn && s.name == *subsys_name)
            {
                Some(i) => i,
                None => {
                    host.subsystems.insert(0, new_subsystem(subsys_name, nqn));
                    0
                }
            };
            let identity = Identity {
                serial: libnvme_attr(&dir, "serial"),
                model: libnvme_attr(&dir, "model"),
                firmware: libnvme_attr(&dir, "firmware_rev"),
            };
            let mut namespaces = Vec::new();
            self.scan_namespaces(&dir, &identity, &mut namespaces);
            host.subsystems[s].ctrls.insert(0, TreeCtrl { namespaces });
        }

        for name in &subsystems {
            let dir = subsys_dir.join(name);
            let Some(nqn) = libnvme_attr(&dir, "subsysnqn") else {
                continue;
            };
            // The last subsystem of that name in the tree, as libnvme's loop leaves it.
            let mut found = None;
            for (hi, host) in hosts.iter().enumerate() {
                for (si, s) in host.subsystems.iter().enumerate() {
                    if s.name == *name {
                        found = Some((hi, si));
                    }
                }
            }
            let (hi, si) = match found {
                Some(at) => at,
                None => {
                    let h = host_index(&mut hosts, None);
                    hosts[h].subsystems.insert(0, new_subsystem(name, nqn.clone()));
                    (h, 0)
                }
            };
            let s = &mut hosts[hi].subsystems[si];
            if s.nqn != nqn {
                tracing::warn!("NQN mismatch for subsystem {name}");
                continue;
            }
            let owner = s.identity.clone();
            self.scan_namespaces(&dir, &owner, &mut s.namespaces);
        }

        let mut rows = Vec::new();
        for host in hosts {
            for s in host.subsystems {
                rows.extend(s.namespaces.into_iter().map(|(_, row)| row));
                for c in s.ctrls {
                    rows.extend(c.namespaces.into_iter().map(|(_, row)| row));
                }
            }
        }
        rows
    }
}

/// ironvme's controller table: BDF, vendor:device ID, driver, IOMMU group, and for
/// kernel-owned controllers their name, serial number, model, firmware revision and
/// namespace block devices.
pub fn render_text(list: &[ControllerInfo]) -> String {
    if list.is_empty() {
        return "No NVMe controllers (PCI class 010802) found.\n".to_string();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let header = [
        "BDF",
        "Vendor:Dev",
        "Driver",
        "IOMMU",
        "Ctrl",
        "SN",
        "Model",
        "FW Rev",
        "Namespaces",
    ];
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|c| {
            let names: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
            [
                c.bdf.clone(),
                format!("{:04x}:{:04x}", c.vendor_id, c.device_id),
                c.driver.clone().unwrap_or_else(|| "none".to_string()),
                c.iommu_group.map_or("-".to_string(), |g| g.to_string()),
                dash(&c.controller),
                dash(&c.serial),
                dash(&c.model),
                dash(&c.firmware),
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// `ironvme list` on the system: sysfs at `sysfs`, nodes in `/dev`, Identify Namespace
/// through the kernel's admin ioctl.
///
/// Errors: see [`run_with`].
pub fn run(args: &ListArgs, sysfs: &Sysfs, out: &mut dyn Write) -> Result<(), CliError> {
    let nodes = KernelNodes {
        sysfs,
        dev: Path::new("/dev"),
        identify: &identify_kernel_node,
    };
    run_with(args, &nodes, out)
}

/// `ironvme list`: nvme-cli's table (or `Devices`), then, after an empty line, ironvme's
/// controller table (or `controllers`).
///
/// Errors: see [`scan`]; output errors.
pub fn run_with(args: &ListArgs, nodes: &KernelNodes, out: &mut dyn Write) -> Result<(), CliError> {
    let controllers = scan(nodes.sysfs)?;
    let rows = nodes.nvme_cli_rows();
    match args.format() {
        ListFormat::Json => {
            let mut value = render_nvme_cli_json(&rows);
            value["controllers"] = serde_json::to_value(&controllers).map_err(io::Error::from)?;
            write_json(out, &value)
        }
        ListFormat::Normal => {
            out.write_all(render_nvme_cli_text(&rows).as_bytes())?;
            out.write_all(b"\n")?;
            out.write_all(render_text(&controllers).as_bytes())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree shaped like the QEMU guest's.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn write(&self, path: &Path, text: &str) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn pci(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let dev = self.root().join("devices/pci0000:00").join(bdf);
            self.write(&dev.join("vendor"), "0x1b36\n");
            self.write(&dev.join("device"), "0x0010\n");
            self.write(&dev.join("class"), &format!("0x{class:06x}\n"));
            let bus = self.root().join("bus/pci/devices");
            std::fs::create_dir_all(&bus).unwrap();
            symlink(&dev, bus.join(bdf)).unwrap();
            if let Some(d) = driver {
                let drv = self.root().join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&drv).unwrap();
                symlink(&drv, dev.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = self.root().join("kernel/iommu_groups").join(g.to_string());
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(&gdir, dev.join("iommu_group")).unwrap();
            }
            dev
        }

        /// A kernel controller under PCI device `dev`, linked from `<root>/class/nvme`.
        fn kernel_ctrl(&self, dev: &Path, name: &str, serial: &str) -> PathBuf {
            let ctrl = dev.join("nvme").join(name);
            self.write(&ctrl.join("serial"), &format!("{serial:<20}\n"));
            self.write(&ctrl.join("model"), "QEMU NVMe Ctrl                          \n");
            self.write(&ctrl.join("firmware_rev"), "7.2.22  \n");
            self.write(&ctrl.join("subsysnqn"), &format!("nqn.2019-08.org.qemu:{serial}\n"));
            let class = self.root().join("class/nvme");
            std::fs::create_dir_all(&class).unwrap();
            symlink(&ctrl, class.join(name)).unwrap();
            ctrl
        }

        /// Subsystem `name` (`<root>/class/nvme-subsystem/<name>`) of `ctrls`, whose NQN
        /// ends in `serial`.
        fn subsystem(&self, name: &str, serial: &str, ctrls: &[&Path]) -> PathBuf {
            let dir = self.root().join("devices/virtual/nvme-subsystem").join(name);
            self.write(&dir.join("serial"), &format!("{serial:<20}\n"));
            self.write(&dir.join("model"), "QEMU NVMe Ctrl                          \n");
            self.write(&dir.join("firmware_rev"), "7.2.22  \n");
            self.write(&dir.join("subsysnqn"), &format!("nqn.2019-08.org.qemu:{serial}\n"));
            for ctrl in ctrls {
                symlink(ctrl, dir.join(ctrl.file_name().unwrap())).unwrap();
            }
            let class = self.root().join("class/nvme-subsystem");
            std::fs::create_dir_all(&class).unwrap();
            symlink(&dir, class.join(name)).unwrap();
            dir
        }

        /// A namespace block device under `parent`, linked from `<root>/block`.
        fn block(&self, parent: &Path, name: &str, nsid: u32, sectors: u64, lba: u32) -> PathBuf {
            let dir = parent.join(name);
            self.write(&dir.join("nsid"), &format!("{nsid}\n"));
            self.write(&dir.join("size"), &format!("{sectors}\n"));
            self.write(&dir.join("queue/logical_block_size"), &format!("{lba}\n"));
            let block = self.root().join("block");
            std::fs::create_dir_all(&block).unwrap();
            symlink(&dir, block.join(name)).unwrap();
            dir
        }
    }

    fn guest_like_tree() -> Tree {
        let t = Tree::new();
        let kern = t.pci("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3));
        let ctrl = t.kernel_ctrl(&kern, "nvme0", "ironvme-kern");
        t.block(&ctrl, "nvme0n1", 1, 2_097_152, 512);
        t.block(&ctrl, "nvme0n2", 2, 2_097_152, 4096);
        t.pci("0000:00:05.0", NVME_CLASS, Some("vfio-pci"), Some(4));
        t.pci("0000:00:06.0", NVME_CLASS, None, Some(5));
        t.pci("0000:00:01.0", 0x030000, Some("bochs-drm"), Some(1));
        t.pci("0000:00:1f.2", 0x010601, Some("ahci"), Some(6));
        t
    }

    #[test]
    fn scans_only_nvme_controllers_and_reads_kernel_details() {
        let t = guest_like_tree();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        let bdfs: Vec<&str> = list.iter().map(|c| c.bdf.as_str()).collect();
        assert_eq!(bdfs, ["0000:00:04.0", "0000:00:05.0", "0000:00:06.0"]);
        let k = &list[0];
        assert_eq!((k.vendor_id, k.device_id), (0x1b36, 0x0010));
        assert_eq!(k.driver.as_deref(), Some("nvme"));
        assert_eq!(k.iommu_group, Some(3));
        assert_eq!(k.controller.as_deref(), Some("nvme0"));
        assert_eq!(k.serial.as_deref(), Some("ironvme-kern"));
        assert_eq!(k.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(k.firmware.as_deref(), Some("7.2.22"));
        assert_eq!(
            k.namespaces,
            [
                NamespaceInfo {
                    name: "nvme0n1".into(),
                    nsid: Some(1),
                    size_bytes: 1 << 30,
                    lba_size: Some(512)
                },
                NamespaceInfo {
                    name: "nvme0n2".into(),
                    nsid: Some(2),
                    size_bytes: 1 << 30,
                    lba_size: Some(4096)
                },
            ]
        );
        assert_eq!(k.namespaces[1].blocks(), Some(262_144));
        let v = &list[1];
        assert_eq!(v.driver.as_deref(), Some("vfio-pci"));
        assert_eq!((v.controller.as_ref(), v.serial.as_ref()), (None, None));
        assert!(v.namespaces.is_empty());
        assert_eq!(list[2].driver, None);
    }

    #[test]
    fn text_and_json() {
        let t = guest_like_tree();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        let text = render_text(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "BDF           Vendor:Dev  Driver    IOMMU  Ctrl   SN            Model           FW Rev  Namespaces"
        );
        assert_eq!(
            lines[1],
            "0000:00:04.0  1b36:0010   nvme      3      nvme0  ironvme-kern  QEMU NVMe Ctrl  7.2.22  nvme0n1,nvme0n2"
        );
        assert_eq!(
            lines[2],
            "0000:00:05.0  1b36:0010   vfio-pci  4      -      -             -               -       -"
        );
        assert!(lines[3].starts_with("0000:00:06.0  1b36:0010   none      5"), "{text}");
        assert_eq!(lines.len(), 4);

        // No class/nvme in this tree: nvme-cli's table is empty (its header only).
        let nodes = FakeNodes::new(&t);
        let out = String::from_utf8(nodes.run(&Sysfs::new(t.root()), &[])).unwrap();
        assert_eq!(out, format!("{}\n{text}", render_nvme_cli_text(&[])));
        assert!(out.starts_with("Node                  Generic               SN                   Model"));

        let v: Value = serde_json::from_slice(&nodes.run(&Sysfs::new(t.root()), &["--json"])).unwrap();
        assert_eq!(v["Devices"], json!([]));
        let c = &v["controllers"];
        assert_eq!(c.as_array().unwrap().len(), 3);
        assert_eq!(c[0]["bdf"], "0000:00:04.0");
        assert_eq!(c[0]["serial"], "ironvme-kern");
        assert_eq!(c[0]["namespaces"][1]["lba_size"], 4096);
        assert_eq!(c[0]["namespaces"][1]["size_bytes"], 1u64 << 30);
        assert_eq!(c[1]["driver"], "vfio-pci");
        assert_eq!(c[1]["serial"], Value::Null);
        assert_eq!(c[2]["driver"], Value::Null);
        assert_eq!(c[2]["iommu_group"], 5);
    }

    /// Identify Namespace data as QEMU's emulated controller returns it: eight LBA
    /// formats (512 and 4096 bytes, each with 0, 8, 16 and 64 metadata bytes), format
    /// `lbaf` in use, `nsze` blocks, all of them in use.
    fn qemu_ns(nsze: u64, lbaf: u8) -> IdentifyNamespace {
        let mut buf = vec![0u8; 4096];
        buf[0..8].copy_from_slice(&nsze.to_le_bytes());
        buf[8..16].copy_from_slice(&nsze.to_le_bytes());
        buf[16..24].copy_from_slice(&nsze.to_le_bytes());
        buf[25] = 7;
        buf[26] = lbaf;
        for (i, (lbads, ms)) in [
            (9u32, 0u32),
            (9, 8),
            (9, 16),
            (9, 64),
            (12, 0),
            (12, 8),
            (12, 16),
            (12, 64),
        ]
        .into_iter()
        .enumerate()
        {
            buf[128 + 4 * i..132 + 4 * i].copy_from_slice(&(ms | lbads << 16).to_le_bytes());
        }
        IdentifyNamespace::parse(&buf).unwrap()
    }

    /// The kernel's nodes of a fake tree: `<root>/dev`, and Identify Namespace answered
    /// from `answers` (node path, NSID), anything else failing.
    struct FakeNodes {
        dev: PathBuf,
        answers: Vec<(PathBuf, u32, IdentifyNamespace)>,
    }

    impl FakeNodes {
        fn new(t: &Tree) -> FakeNodes {
            let dev = t.root().join("dev");
            std::fs::create_dir_all(&dev).unwrap();
            FakeNodes {
                dev,
                answers: Vec::new(),
            }
        }

        /// Namespace node `name` (and its generic node) of namespace `nsid`, answering `ns`.
        fn node(&mut self, name: &str, nsid: u32, ns: IdentifyNamespace) {
            std::fs::write(self.dev.join(name), "").unwrap();
            let generic = name.replacen("nvme", "ng", 1);
            std::fs::write(self.dev.join(generic), "").unwrap();
            self.answers.push((self.dev.join(name), nsid, ns));
        }

        fn identify(&self, node: &Path) -> Result<(u32, IdentifyNamespace), CliError> {
            self.answers
                .iter()
                .find(|(p, _, _)| p == node)
                .map(|(_, nsid, ns)| (*nsid, ns.clone()))
                .ok_or_else(|| CliError::Device(format!("{}: permission denied", node.display())))
        }

        fn rows(&self, sysfs: &Sysfs) -> Vec<NvmeCliRow> {
            let identify = |p: &Path| self.identify(p);
            KernelNodes {
                sysfs,
                dev: &self.dev,
                identify: &identify,
            }
            .nvme_cli_rows()
        }

        fn run(&self, sysfs: &Sysfs, args: &[&str]) -> Vec<u8> {
            use clap::Parser as _;
            let cli = crate::cli::Cli::try_parse_from(["ironvme", "list"].iter().chain(args)).unwrap();
            let crate::cli::Command::List(args) = cli.command else {
                panic!()
            };
            let identify = |p: &Path| self.identify(p);
            let nodes = KernelNodes {
                sysfs,
                dev: &self.dev,
                identify: &identify,
            };
            let mut out = Vec::new();
            run_with(&args, &nodes, &mut out).unwrap();
            out
        }
    }

    /// The guest's five controllers as the kernel shows them when it owns them all, with
    /// the namespaces `tests/testdata/nvme-cli-2.3/list.txt` was captured from.
    fn guest_all_kernel() -> (Tree, FakeNodes) {
        let t = Tree::new();
        let mut nodes = FakeNodes::new(&t);
        /// NSID, NSZE and the LBA format in use of each namespace.
        type Namespaces = &'static [(u32, u64, u8)];
        let guest: [(&str, &str, Namespaces); 5] = [
            ("0000:00:04.0", "ironvme-kern", &[(1, 2_097_152, 0), (2, 262_144, 4)]),
            ("0000:00:05.0", "ironvme-vfio4k", &[(1, 262_144, 4)]),
            ("0000:00:06.0", "ironvme-vfio512", &[(1, 2_097_152, 0)]),
            ("0000:00:07.0", "ironvme-fault", &[(1, 262_144, 4)]),
            ("0000:00:08.0", "ironvme-meta", &[(1, 261_632, 5), (2, 2_064_888, 1)]),
        ];
        for (i, (bdf, serial, namespaces)) in guest.into_iter().enumerate() {
            let dev = t.pci(bdf, NVME_CLASS, Some("nvme"), Some(3 + i as u32));
            let ctrl = t.kernel_ctrl(&dev, &format!("nvme{i}"), serial);
            t.subsystem(&format!("nvme-subsys{i}"), serial, &[&ctrl]);
            for &(nsid, nsze, lbaf) in namespaces {
                let name = format!("nvme{i}n{nsid}");
                let lba = if lbaf < 4 { 512 } else { 4096 };
                t.block(&ctrl, &name, nsid, nsze * lba / 512, lba as u32);
                nodes.node(&name, nsid, qemu_ns(nsze, lbaf));
            }
        }
        (t, nodes)
    }

    #[test]
    fn nvme_cli_rows_are_nvme_list_byte_for_byte() {
        let (t, nodes) = guest_all_kernel();
        let sysfs = Sysfs::new(t.root());
        let rows = nodes.rows(&sysfs);
        let theirs = include_str!("../../tests/testdata/nvme-cli-2.3/list.txt");
        let ours = render_nvme_cli_text(&rows);
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(ours, theirs);
        let theirs: Value = serde_json::from_str(include_str!("../../tests/testdata/nvme-cli-2.3/list.json")).unwrap();
        assert_eq!(render_nvme_cli_json(&rows), theirs);

        // The whole output: nvme-cli's table first, then ironvme's controllers.
        let out = String::from_utf8(nodes.run(&sysfs, &[])).unwrap();
        let rest = out
            .strip_prefix(include_str!("../../tests/testdata/nvme-cli-2.3/list.txt"))
            .unwrap();
        let lines: Vec<&str> = rest.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            "BDF           Vendor:Dev  Driver  IOMMU  Ctrl   SN               Model           FW Rev  Namespaces"
        );
        assert_eq!(
            lines[2],
            "0000:00:04.0  1b36:0010   nvme    3      nvme0  ironvme-kern     QEMU NVMe Ctrl  7.2.22  nvme0n1,nvme0n2"
        );
        assert_eq!(lines.len(), 7, "{out}");

        // -o json and --json: nvme-cli's Devices, ironvme's controllers.
        for args in [&["-o", "json"][..], &["--json"], &["--output-format=json"]] {
            let v: Value = serde_json::from_slice(&nodes.run(&sysfs, args)).unwrap();
            assert_eq!(v["Devices"], theirs["Devices"], "{args:?}");
            assert_eq!(v["controllers"].as_array().unwrap().len(), 5, "{args:?}");
            assert_eq!(v["controllers"][4]["serial"], "ironvme-meta");
        }
        assert_eq!(nodes.run(&sysfs, &["-o", "normal"]), out.as_bytes());
    }

    #[test]
    fn vfio_controllers_have_no_rows_and_are_never_identified() {
        let (t, mut nodes) = guest_all_kernel();
        // Hand 0000:00:05.0 to vfio-pci as the kernel does: its nvme1 is gone from
        // /sys/class/nvme and its subsystem, its nodes from /dev.
        let dev = t.root().join("devices/pci0000:00/0000:00:05.0");
        std::fs::remove_dir_all(dev.join("nvme")).unwrap();
        std::fs::remove_file(dev.join("driver")).unwrap();
        let vfio = t.root().join("bus/pci/drivers/vfio-pci");
        std::fs::create_dir_all(&vfio).unwrap();
        symlink(&vfio, dev.join("driver")).unwrap();
        std::fs::remove_file(t.root().join("class/nvme/nvme1")).unwrap();
        std::fs::remove_dir_all(t.root().join("class/nvme-subsystem/nvme-subsys1")).unwrap();
        nodes.answers.retain(|(p, _, _)| !p.ends_with("nvme1n1"));
        let sysfs = Sysfs::new(t.root());
        let rows = nodes.rows(&sysfs);
        let names: Vec<&str> = rows.iter().map(|r| r.device_path.as_str()).collect();
        assert_eq!(
            names,
            [
                "/dev/nvme4n2",
                "/dev/nvme4n1",
                "/dev/nvme3n1",
                "/dev/nvme2n1",
                "/dev/nvme0n2",
                "/dev/nvme0n1"
            ]
        );
        let out = String::from_utf8(nodes.run(&sysfs, &[])).unwrap();
        let line = out.lines().find(|l| l.starts_with("0000:00:05.0")).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["0000:00:05.0", "1b36:0010", "vfio-pci", "4", "-", "-", "-", "-", "-"]
        );
        let v: Value = serde_json::from_slice(&nodes.run(&sysfs, &["--json"])).unwrap();
        assert_eq!(v["Devices"].as_array().unwrap().len(), 6);
        assert_eq!(v["controllers"][1]["driver"], "vfio-pci");
        assert_eq!(v["controllers"][1]["serial"], Value::Null);
    }

    #[test]
    fn libnvme_order_multipath_heads_and_unopenable_nodes() {
        let t = Tree::new();
        let mut nodes = FakeNodes::new(&t);
        // Controllers nvme2 and nvme10 share subsystem 0 (multipath: its heads
        // nvme0n1/nvme0n2 live in the subsystem; the controllers hold paths); nvme1 is
        // alone in subsystem 1 with a namespace whose node cannot be opened.
        let a = t.pci("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(1));
        let b = t.pci("0000:00:05.0", NVME_CLASS, Some("nvme"), Some(2));
        let c = t.pci("0000:00:06.0", NVME_CLASS, Some("nvme"), Some(3));
        let n2 = t.kernel_ctrl(&a, "nvme2", "shared");
        let n10 = t.kernel_ctrl(&b, "nvme10", "shared");
        let n1 = t.kernel_ctrl(&c, "nvme1", "alone");
        std::fs::write(n10.join("serial"), "shared-b\n").unwrap();
        let s0 = t.subsystem("nvme-subsys0", "shared", &[&n2, &n10]);
        t.subsystem("nvme-subsys1", "alone", &[&n1]);
        for (nsid, nsze) in [(1, 8), (2, 0)] {
            let name = format!("nvme0n{nsid}");
            t.block(&s0, &name, nsid, nsze, 4096);
            nodes.node(&name, nsid, qemu_ns(nsze, 4));
            for ctrl in [&n2, &n10] {
                std::fs::create_dir_all(ctrl.join(format!("nvme0c{}n{nsid}", ctrl.ends_with("nvme2") as u8))).unwrap();
            }
        }
        t.block(&n1, "nvme1n1", 1, 8, 512);
        t.block(&n1, "nvme1n2", 2, 16, 512);
        nodes.node("nvme1n2", 2, qemu_ns(2, 0));
        std::fs::remove_file(nodes.dev.join("ng1n2")).unwrap();
        // nvme1n1 has no answer: left out, as nvme-cli leaves out what it cannot open.
        let rows = nodes.rows(&Sysfs::new(t.root()));
        let got: Vec<(&str, &str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.device_path.as_str(), r.generic_path.as_str(), r.serial.as_deref()))
            .collect();
        // Controllers are scanned nvme1, nvme10, nvme2 (byte order), so subsystem 1 is
        // created first and printed last; a subsystem's heads come before its
        // controllers' namespaces, each list newest first. A head shows the subsystem's
        // serial number.
        assert_eq!(
            got,
            [
                ("/dev/nvme0n2", "/dev/ng0n2", Some("shared")),
                ("/dev/nvme0n1", "/dev/ng0n1", Some("shared")),
                ("/dev/nvme1n2", "ng1n2", Some("alone")),
            ]
        );
        let text = render_nvme_cli_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        // Zero bytes and a 4 KiB format: nvme-cli's formats.
        assert_eq!(
            lines[2],
            "/dev/nvme0n2          /dev/ng0n2            shared               QEMU NVMe Ctrl                           2           0.00   B /   0.00   B      4 KiB +  0 B   7.2.22  "
        );
        assert_eq!(
            &lines[3][106..],
            "1          32.77  kB /  32.77  kB      4 KiB +  0 B   7.2.22  "
        );
        assert_eq!(
            &lines[4][106..],
            "2           1.02  kB /   1.02  kB    512   B +  0 B   7.2.22  "
        );
        assert_eq!(lines.len(), 5);

        // Nodes elsewhere (here: answering, but not in <dev>): bare names, as nvme-cli
        // prints them; /dev/spdk/ is looked at too.
        std::fs::remove_dir_all(&nodes.dev).unwrap();
        std::fs::create_dir_all(nodes.dev.join("spdk")).unwrap();
        std::fs::write(nodes.dev.join("spdk/nvme1n2"), "").unwrap();
        let rows = nodes.rows(&Sysfs::new(t.root()));
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.device_path.as_str(), r.generic_path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("nvme0n2", "ng0n2"),
                ("nvme0n1", "ng0n1"),
                ("/dev/spdk/nvme1n2", "ng1n2")
            ]
        );
    }

    #[test]
    fn nvme_cli_units_and_names() {
        assert_eq!(si_suffix(0.0), (0.0, ""));
        assert_eq!(si_suffix(999.0), (999.0, ""));
        assert_eq!(si_suffix(1e3), (1.0, "k"));
        assert_eq!(si_suffix(1_073_741_824.0).1, "G");
        assert_eq!(si_suffix(2e30), (2.0, "Q"));
        assert_eq!(binary_suffix(512), (512, ""));
        assert_eq!(binary_suffix(1024), (1, "Ki"));
        assert_eq!(binary_suffix(1536), (2, "Ki"), "rounded, as nvme-cli rounds");
        assert_eq!(binary_suffix(1 << 20), (1, "Mi"));
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(pad("abcdef", 4), "abcdef");
        assert!(is_libnvme_namespace("nvme0n1"));
        assert!(is_libnvme_namespace("nvme12n3"));
        assert!(!is_libnvme_namespace("nvme0c1n1"));
        assert!(!is_libnvme_namespace("ng0n1"));
        assert!(!is_libnvme_namespace("nvme0"));
        assert!(is_libnvme_ctrl("nvme0"));
        assert!(is_libnvme_ctrl("nvme10"));
        for not in ["nvme0n1", "nvme0c0n1", "nvme-subsys0", "nvme", "ng0n1"] {
            assert!(!is_libnvme_ctrl(not), "{not}");
        }
        assert!(is_libnvme_subsystem("nvme-subsys3"));
        assert!(!is_libnvme_subsystem("nvme-subsys"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model"), "QEMU NVMe Ctrl      \n").unwrap();
        std::fs::write(dir.path().join("blank"), "   \n").unwrap();
        assert_eq!(libnvme_attr(dir.path(), "model").as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(libnvme_attr(dir.path(), "blank"), None);
        assert_eq!(libnvme_attr(dir.path(), "missing"), None);
    }

    #[test]
    fn multipath_paths_resolve_to_their_head() {
        let t = Tree::new();
        let dev = t.pci("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3));
        let ctrl = t.kernel_ctrl(&dev, "nvme1", "mp");
        std::fs::create_dir_all(ctrl.join("nvme1c1n1")).unwrap();
        let subsys = t.root().join("devices/virtual/nvme-subsystem/nvme-subsys0");
        let head = t.block(&subsys, "nvme0n1", 1, 8, 4096);
        std::fs::create_dir_all(head.join("multipath")).unwrap();
        symlink(ctrl.join("nvme1c1n1"), head.join("multipath/nvme1c1n1")).unwrap();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        assert_eq!(list[0].namespaces.len(), 1);
        assert_eq!(list[0].namespaces[0].name, "nvme0n1");
        assert_eq!(list[0].namespaces[0].lba_size, Some(4096));
    }

    #[test]
    fn names_and_edge_cases() {
        assert_eq!(namespace_kind("nvme0n1"), Some(false));
        assert_eq!(namespace_kind("nvme12n34"), Some(false));
        assert_eq!(namespace_kind("nvme0c1n1"), Some(true));
        for not in ["nvme0", "ng0n1", "nvme0n", "nvmen1", "hwmon0", "nvme0n1p1", "power"] {
            assert_eq!(namespace_kind(not), None, "{not}");
        }
        let mut v = vec!["nvme10n1", "nvme2n1", "nvme1n10", "nvme1n2"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["nvme1n2", "nvme1n10", "nvme2n1", "nvme10n1"]);
        assert_eq!(render_text(&[]), "No NVMe controllers (PCI class 010802) found.\n");
        let e = scan(&Sysfs::new("/nonexistent-sysfs")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-sysfs/bus/pci/devices"), "{e}");
    }
}
