//! The `ironvme` command-line tool: argument definitions (clap), dispatch, and errors.
//!
//! One module per concern: [`device`] (what DEV names and how it is opened),
//! [`output`] (nvme-cli's value formats, one field list for text and JSON),
//! [`identify`], [`logs`], [`features`], [`format`](mod@format), [`nsattach`], [`zns`], [`list`], [`rawio`], and
//! for the I/O commands ([`perf`], [`verify`], [`vde`], [`rawio`], [`serve`])
//! [`io_shared`] (opening DEV for I/O, consent and claims, fio's sizes). Each
//! subcommand module has pure `render_*` functions from parsed data to text or JSON,
//! unit-tested with hand-built buffers, and a `run` that opens the device and prints.
//!
//! # Decisions
//!
//! - **Command lines and output follow nvme-cli** (`nvme id-ctrl [-H]`, `id-ns [-H]`,
//!   `list-ns`, `smart-log [-H]`, `error-log`, `fw-log`, `get-log`, `get-feature [-H]`, as
//!   nvme-cli 2.3 on Debian bookworm parses and prints them; `-o normal|json|binary`): the
//!   same field names, order and value formats (C's `%#x`, so zero is `0`), so eyes and
//!   scripts used to nvme-cli read it unchanged. Each structure is one
//!   [`output::Record`] that renders both the text and the `--json` object, so the two
//!   cannot drift apart. JSON keys are nvme-cli's JSON keys (`avail_spare`, `psds`,
//!   `lbafs`, ...); 128-bit counters are strings, as nvme-cli writes them. The
//!   `serde` feature of `ironvme-nvme` gives the library's own representation (the
//!   specification's field names, bitflags as raw numbers); the CLI uses it where
//!   nvme-cli has no JSON of its own (`get-feature`'s `value`).
//! - **Fields the parser does not decode are left out**, never printed as zeros.
//! - **DEV is resolved in one place** ([`device::parse_device`], [`device::open`]).
//!   A PCI address opens the controller through ironvme's VFIO driver; a kernel NVMe
//!   device (`/dev/nvme0`, `/dev/nvme0n1`, `/dev/ng0n1`, or a bare `nvme0`) is used
//!   through the kernel's NVMe ioctl passthrough.
//! - **`identify-ns` without `--nsid`** prints the namespace DEV names when it is a
//!   namespace node (`/dev/nvme0n2` → 2, from `NVME_IOCTL_ID`, as nvme-cli does), and
//!   every active namespace when DEV names a controller (nvme-cli's `id-ns` on a
//!   controller node needs `-n`, and NSID 1 need not exist). An inactive NSID is an
//!   error, not a page of zeros.
//! - **`format` asks first**: it checks the request against Identify data, describes it,
//!   and formats only after "yes" is typed on the terminal; without a terminal it refuses
//!   unless `--force`, before opening anything (opening resets the controller). Without
//!   `--nsid` it formats the only active namespace, and refuses to guess among several.
//! - **`list` never opens a vfio-pci-bound controller**, because opening it would reset
//!   it under whoever uses it: those show what sysfs tells. Kernel namespace nodes are
//!   asked Identify Namespace through the kernel's admin ioctl, as nvme-cli does.
//! - **Errors** are one `ironvme: ` line on stderr. A failed NVMe command shows its
//!   decoded status.
//! - **Exit status tells scripts what went wrong** ([`CliError::exit_code`]):
//!   - 0: success;
//!   - 1 ([`EXIT_FAILURE`]): a device or OS error (opening, a failed command or I/O, a
//!     refusal to touch a device in use or without consent, an argument the device
//!     cannot take);
//!   - 2 ([`EXIT_USAGE`]): a usage error: the command line is wrong whatever the device
//!     (clap's own errors, and [`CliError::Usage`]: `VOL@SNAP` without `@`, a malformed
//!     resume token, `serve` flags that make no target);
//!   - 3 ([`EXIT_MISMATCH`]): the data is not what it should be, and nothing else failed:
//!     `verify` found mismatched blocks, `vde fsck` found violations, `compare` found
//!     data that differs. An I/O error in the same run wins (1): the check was incomplete.
//! - **Progress** ([`progress`]): `verify`, `format`, `perf` and `vde send`, `recv` and
//!   `fsck` draw a bar (with an ETA where the total is known) or a spinner on stderr
//!   when it is a terminal, and nothing when it is not.

pub mod device;
pub mod features;
pub mod format;
pub mod identify;
pub mod io_shared;
pub mod list;
pub mod logs;
pub mod nsattach;
pub mod output;
pub mod perf;
pub mod progress;
pub mod rawio;
pub mod serve;
pub mod vde;
pub mod verify;
pub mod zns;

use clap::{Args, Parser, Subcommand, ValueEnum};
use output::OutputFormat;
use std::io::{self, Write};

/// Exit status of a device or OS error: every failure that is neither a usage error nor
/// a data mismatch.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status of a usage error: clap's own, and [`CliError::Usage`].
pub const EXIT_USAGE: i32 = 2;
/// Exit status of a data mismatch ([`CliError::Mismatch`]): `verify` found blocks that are
/// not what was written, `vde fsck` found violations, `compare` found data that differs,
/// and no I/O failed.
pub const EXIT_MISMATCH: i32 = 3;

/// The DEV help shared by every subcommand that opens a controller.
const DEV_HELP: &str = "The controller: the PCI address of one bound to vfio-pci (0000:00:05.0, 00:05.0 or \
                        pci:0000:00:05.0; bind with `scripts/setup.sh bind BDF`; opening it resets the \
                        controller), or a kernel NVMe device (/dev/nvme0, /dev/nvme0n1, /dev/ng0n1 or nvme0), \
                        used through the kernel's NVMe ioctl passthrough.";

/// ironvme: inspect and manage NVMe controllers through ironvme's userspace driver.
#[derive(Debug, Parser)]
#[command(
    name = "ironvme",
    version,
    about = "Inspect, manage, benchmark and serve NVMe controllers through ironvme's userspace (VFIO) driver \
             or the kernel's",
    long_about = "Inspect, manage, benchmark and serve NVMe controllers through ironvme's userspace (VFIO) \
                  driver or the kernel's.\n\n\
                  Output is shaped like nvme-cli's (same field names and order); --json prints one JSON \
                  object with nvme-cli's keys.\n\n\
                  DEV is the PCI address of a controller bound to vfio-pci (`scripts/setup.sh bind BDF`), \
                  driven by ironvme's polled driver (opening it resets the controller), or a kernel NVMe \
                  device (/dev/nvme0, /dev/nvme0n1, /dev/ng0n1), used through the kernel's NVMe ioctl \
                  passthrough. The I/O commands (perf, verify, vde, serve) also take block devices, \
                  files and vde:DEV:VOL, on the backend --backend names.\n\n\
                  Warnings and errors are printed on stderr. Set RUST_LOG=debug (or e.g. \
                  RUST_LOG=ironvme_nvme=trace) to see the driver's spans and events too, RUST_LOG=off for \
                  nothing. Long runs (verify, format, perf, vde send/recv/fsck) show progress on stderr \
                  when it is a terminal, and nothing when it is not.\n\n\
                  Exit status: 0 success; 1 a device or OS error; 2 a usage error (the command line is \
                  wrong whatever the device); 3 a data mismatch: verify found blocks that are not what \
                  was written, vde fsck found violations, or compare found data that differs, and no I/O \
                  failed (an I/O error wins: 1)."
)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Identify Controller (CNS 01h), like `nvme id-ctrl`.
    ///
    /// Units as in the specification: mdts is a power of two of the minimum memory page
    /// size (CAP.MPSMIN, 4 KiB on most controllers), wctemp/cctemp are Kelvin, rtd3r/rtd3e
    /// µs, tnvmcap/unvmcap bytes, crdt1-3 and mtfa 100 ms units; power states show mp in
    /// watts and enlat/exlat in µs.
    #[command(visible_alias = "id-ctrl")]
    Identify(IdentifyArgs),
    /// Identify Namespace (CNS 00h), like `nvme id-ns`.
    ///
    /// Prints every active namespace unless --nsid is given. Sizes (nsze, ncap, nuse) are
    /// logical blocks, nvmcap bytes; each LBA format line gives its metadata bytes (ms),
    /// log2 of the data size (lbads: 9 = 512 B, 12 = 4096 B) and relative performance
    /// (rp); the format in use is marked "(in use)".
    #[command(name = "identify-ns", visible_alias = "id-ns")]
    IdentifyNs(IdentifyNsArgs),
    /// The namespace ID list (Identify CNS 02h, or 10h with --all), like `nvme list-ns`:
    /// `[   0]:0x1` lines, or `{"nsid_list": [{"nsid": 1}, ...]}` as JSON.
    ListNs(ListNsArgs),
    /// SMART / Health Information log (LID 02h), like `nvme smart-log`.
    ///
    /// Controller-wide (NSID FFFFFFFFh). Temperatures in °C and Kelvin; Data Units are
    /// thousands of 512-byte units (the size in bytes follows in parentheses);
    /// controller_busy_time and the temperature times are minutes, power_on_hours hours,
    /// the thermal management total times seconds. -H decodes critical_warning's bits.
    SmartLog(SmartLogArgs),
    /// Get Log Page of any log page ID, like `nvme get-log`: a hex dump, or the log's
    /// bytes with -b or -o binary.
    GetLog(GetLogArgs),
    /// Error Information log (LID 01h), like `nvme error-log`.
    ///
    /// Reads ELPE + 1 entries (from Identify Controller) and prints every one, empty
    /// entries (error_count 0) included, in the order the controller returns them, as
    /// nvme-cli does.
    ErrorLog(DeviceArgs),
    /// Firmware Slot Information log (LID 03h), like `nvme fw-log`.
    ///
    /// afi: bits 2:0 the active slot, bits 6:4 the slot activated at the next reset;
    /// frsN: slot N's 8 bytes as a little-endian hex number, then as text with
    /// non-printing bytes shown as `.` (nvme-cli's format), for slots whose first byte
    /// is not zero.
    FwLog(DeviceArgs),
    /// Get Features, like `nvme get-feature`.
    ///
    /// Prints the value (DW0), and a hex dump of the data buffer for features that return
    /// one; with -H, the fields decoded as nvme-cli prints them instead: Arbitration
    /// (01h), Power Management (02h), Temperature Threshold (04h, Kelvin and °C), Error
    /// Recovery (05h), Volatile Write Cache (06h), Number of Queues (07h), Interrupt
    /// Coalescing (08h), Interrupt Vector Configuration (09h), Write Atomicity (0Ah),
    /// Async Event Configuration (0Bh), Autonomous Power State Transition (0Ch),
    /// Timestamp (0Eh, milliseconds since the Unix epoch) and more.
    GetFeature(GetFeatureArgs),
    /// Read blocks, like `nvme read`: -s first LBA, -c block count (0-based), to -d FILE
    /// or standard output.
    Read(rawio::DataArgs),
    /// Write blocks, like `nvme write`: -s first LBA, -c block count (0-based), from -d
    /// FILE or standard input. Refused while the namespace is mounted or held.
    Write(rawio::DataArgs),
    /// Compare blocks with data, like `nvme compare` (NVMe Compare where the backend has
    /// it, else read and compared here): exits with the mismatch status when they differ.
    Compare(rawio::DataArgs),
    /// Flush the volatile write cache, like `nvme flush`.
    Flush(rawio::TargetArgs),
    /// Write Zeroes, like `nvme write-zeroes`: -s first LBA, -c block count (0-based).
    WriteZeroes(rawio::WriteZeroesArgs),
    /// Dataset Management, like `nvme dsm`: deallocate (-d) the ranges -s LBAS -b COUNTS.
    Dsm(rawio::DsmArgs),
    /// Format NVM: re-formats a namespace to another LBA format. DESTROYS ITS DATA.
    ///
    /// Checks the request first (Format NVM supported, the LBA format exists, crypto
    /// erase supported if asked for), shows what will happen and asks you to type "yes".
    Format(FormatArgs),
    /// Namespace Attachment: attach a namespace of the NVM subsystem to controllers (by
    /// default DEV's), like `nvme attach-ns`. The controllers report a Namespace
    /// Attribute Changed event, on which Linux and ironvme read their namespaces again.
    AttachNs(nsattach::NsAttachArgs),
    /// Namespace Attachment: detach a namespace from DEV's controller, like
    /// `nvme detach-ns`. Its data stays in the subsystem; I/O through that controller
    /// fails until it is attached again. Refused while a namespace of a kernel
    /// controller is in use, and for controllers other than DEV's.
    DetachNs(nsattach::NsAttachArgs),
    /// Zoned namespaces, as `nvme zns`: report-zones, and reset, open, close, finish
    /// (Zone Management Receive and Send).
    #[command(subcommand)]
    Zns(zns::ZnsCommand),
    /// The kernel's NVMe namespaces as `nvme list` shows them, and every NVMe controller
    /// on the PCI bus (class 010802h).
    ///
    /// First nvme-cli 2.3's table, column for column: Node, Generic, SN, Model,
    /// Namespace, Usage (NUSE / NSZE in bytes), Format (LBA size + metadata size) and FW
    /// Rev, one row per kernel namespace node, in nvme-cli's order; sizes and formats come
    /// from Identify Namespace through the kernel's admin ioctl on the node (needs root;
    /// it changes nothing on the controller). Then, after an empty line, each
    /// controller's BDF, vendor:device ID, bound driver (nvme, vfio-pci or none), IOMMU
    /// group, and for kernel-owned ones the controller name, serial number, model,
    /// firmware revision and namespace block devices, from sysfs. Controllers bound to
    /// vfio-pci are NOT opened (opening resets the device under whoever uses it): they
    /// have no kernel nodes, so only what sysfs knows is shown for them; use `ironvme
    /// identify BDF` to ask the controller itself. -o json (or --json) prints nvme-cli's
    /// `Devices` array and ironvme's `controllers`.
    List(ListArgs),
    /// An I/O benchmark like fio or spdk_nvme_perf: IOPS, bandwidth, latency percentiles
    /// and CPU use of a timed workload on any backend.
    ///
    /// fio's meanings: --rw read|write|randread|randwrite|randrw, --bs SIZE, --qd (iodepth,
    /// per thread), --threads (numjobs, one queue each), --time (runtime), --ramp
    /// (ramp_time), --size, --offset, --rwmixread. Latency is submit to completion, in µs.
    /// Write workloads destroy data: on a device they need --allow-write (regular files do
    /// not). Exits 1 if any I/O failed.
    Perf(perf::PerfArgs),
    /// Data integrity check: writes every block of a region stamped with its LBA, the pass
    /// number and a seed (plus an xxh3 checksum), flushes, reads it all back and reports
    /// every block that is wrong — misdirected, stale (lost write), corrupt, or all zeros.
    ///
    /// Destroys the data in the region (default: the first 64 MiB); on a device it needs
    /// --allow-write (regular files do not). --read-only checks what an earlier run wrote
    /// (e.g. after a power cycle) without writing. Exits 3 when blocks mismatched, 1 on an
    /// I/O error (even with mismatches).
    Verify(verify::VerifyArgs),
    /// Serve namespaces and VDE volumes to other hosts over NVMe/TCP (Linux's nvme-tcp
    /// initiator: `nvme discover`, `nvme connect`) and NBD (nbd-client, qemu-img).
    ///
    /// Runs in the foreground until SIGINT or SIGTERM, then drains outstanding I/O,
    /// flushes and releases the devices. Listens only on the addresses given (default
    /// 127.0.0.1). Hosts must be named with --allow-host HOSTNQN unless --allow-any-host.
    /// Example: serve --nvme-tcp 127.0.0.1:4420 --nqn nqn.2026-12.io.ironvme:disk
    /// --namespace 0000:00:05.0 --allow-any-host
    Serve(serve::ServeArgs),
    /// The Virtual Disk Engine: a crash-safe, checksummed store of objects and thin
    /// volumes, with snapshots and clones, on DEV (any backend).
    Vde {
        /// What to do.
        #[command(subcommand)]
        command: vde::VdeCommand,
    },
}

/// Arguments of subcommands that take only a device.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The controller.
    #[arg(value_name = "DEV", help = DEV_HELP)]
    pub dev: String,
    /// Print one JSON object (nvme-cli's keys) instead of text: the same as `-o json`.
    #[arg(long, conflicts_with = "output_format")]
    pub json: bool,
    /// Output format, as nvme-cli's -o: normal (text), json, or binary (the data
    /// structure's bytes as the controller returned them).
    #[arg(long, short = 'o', value_enum, default_value_t, value_name = "FMT")]
    pub output_format: OutputFormat,
}

impl DeviceArgs {
    /// The output format asked for (`--json` is `-o json`).
    pub fn format(&self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output_format
        }
    }
}

/// Arguments of `identify`.
#[derive(Debug, Args)]
pub struct IdentifyArgs {
    /// The controller and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Decode the bit fields (cmic, oaes, ctratt, oacs, frmw, lpa, sanicap, sqes, oncs,
    /// vwc, sgls, ...) under their lines, as nvme-cli's -H prints them. Text only: the
    /// JSON and binary output do not change.
    #[arg(long = "human-readable", short = 'H')]
    pub human_readable: bool,
}

/// Arguments of `smart-log`.
#[derive(Debug, Args)]
pub struct SmartLogArgs {
    /// The controller and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Decode critical_warning's bits under its line, as nvme-cli's -H prints them; in
    /// JSON, as nvme-cli's -H writes it, critical_warning becomes an object of its bits.
    #[arg(long = "human-readable", short = 'H')]
    pub human_readable: bool,
}

/// Arguments of `identify-ns`.
#[derive(Debug, Args)]
pub struct IdentifyNsArgs {
    /// The controller and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Namespace ID (1-based, decimal or 0x hex). Default: every active namespace, each
    /// printed in turn; with --json, `{"namespaces": [{"nsid": N, ...}, ...]}`. With
    /// --nsid, exactly the namespace's object as `nvme id-ns -o json` prints it. DEV
    /// naming a namespace node (`/dev/nvme0n2`, `/dev/ng0n2`) means that namespace, as in
    /// nvme-cli.
    #[arg(long, short = 'n', visible_alias = "namespace-id", value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Decode the bit fields (nsfeat, flbas, mc, dpc, dps, nmic, rescap, fpi, dlfeat)
    /// under their lines and spell out each LBA format's sizes and relative performance,
    /// as nvme-cli's -H prints them. Text only: the JSON and binary output do not change.
    #[arg(long = "human-readable", short = 'H')]
    pub human_readable: bool,
}

/// Arguments of `list-ns`.
#[derive(Debug, Args)]
pub struct ListNsArgs {
    /// The controller and output format (normal or json).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The first NSID the list may hold (the command asks for NSIDs above N - 1).
    #[arg(long = "namespace-id", short = 'n', value_name = "N", default_value = "1", value_parser = parse_nsid)]
    pub start: u32,
    /// Every allocated namespace, attached or not (CNS 10h; needs Namespace Management).
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// Arguments of `get-log`.
#[derive(Debug, Args)]
pub struct GetLogArgs {
    /// The controller and output format (normal is a hex dump, binary the bytes; json
    /// an object with the data as a hex string).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Log Page Identifier (LID), decimal or 0x hex: 1 Error Information, 2 SMART /
    /// Health, 3 Firmware Slot, ...
    #[arg(long, short = 'i', value_name = "LID", value_parser = parse_u8)]
    pub log_id: u8,
    /// How many bytes to read: a non-zero multiple of 4.
    #[arg(long, short = 'l', value_name = "BYTES", value_parser = parse_u32)]
    pub log_len: u32,
    /// Namespace ID (decimal or 0x hex); default FFFFFFFFh, the controller.
    #[arg(long = "namespace-id", short = 'n', value_name = "N", value_parser = parse_u32, default_value = "0xffffffff")]
    pub nsid: u32,
    /// Log Page Offset in bytes (a multiple of 4).
    #[arg(long, value_name = "BYTES", value_parser = parse_number, default_value = "0")]
    pub lpo: u64,
    /// Print the log's bytes (the same as -o binary).
    #[arg(long, short = 'b')]
    pub raw_binary: bool,
}

/// Get Features Select (SEL, CDW10 bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Select {
    /// The value in use now (SEL 0).
    #[value(alias = "0")]
    Current,
    /// The default value (SEL 1).
    #[value(alias = "1")]
    Default,
    /// The saved value (SEL 2; needs ONCS bit 4).
    #[value(alias = "2")]
    Saved,
    /// The feature's capabilities: saveable, namespace specific, changeable (SEL 3).
    #[value(alias = "3")]
    Supported,
}

impl Select {
    /// The driver's [`crate::nvme::features::FeatureSelect`].
    pub fn to_nvme(self) -> crate::nvme::features::FeatureSelect {
        use crate::nvme::features::FeatureSelect;
        match self {
            Select::Current => FeatureSelect::Current,
            Select::Default => FeatureSelect::Default,
            Select::Saved => FeatureSelect::Saved,
            Select::Supported => FeatureSelect::SupportedCapabilities,
        }
    }
}

/// Arguments of `get-feature`.
#[derive(Debug, Args)]
pub struct GetFeatureArgs {
    /// The controller and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Feature Identifier (FID), decimal or 0x hex: 1 Arbitration, 2 Power Management,
    /// 4 Temperature Threshold, 6 Volatile Write Cache, 7 Number of Queues, 0xb Async Event
    /// Configuration, 0xe Timestamp, ... (-H decodes them). Without it, every FID
    /// from 01h to FFh the controller answers, skipping those it refuses as Invalid Field
    /// in Command or, for namespace-specific features on a controller, Invalid Namespace.
    #[arg(long = "feature-id", visible_alias = "fid", short = 'f', value_name = "F", value_parser = parse_u8)]
    pub fid: Option<u8>,
    /// Which value: current, default, saved or supported (capabilities); 0-3 also work.
    #[arg(long, short = 's', value_enum, default_value_t = Select::Current, value_name = "SEL")]
    pub sel: Select,
    /// Namespace ID for namespace-specific features (decimal or 0x hex). Default, as in
    /// nvme-cli: the namespace DEV names when it is a namespace node, else FFFFFFFFh.
    #[arg(long, short = 'n', visible_alias = "namespace-id", value_name = "N", value_parser = parse_u32)]
    pub nsid: Option<u32>,
    /// Bytes of data to show for a feature that returns a buffer (nvme-cli's -l); default:
    /// the size the specification gives the FID (none for FIDs ironvme does not know).
    #[arg(long = "data-len", short = 'l', value_name = "BYTES", value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub data_len: Option<u32>,
    /// Decode the value's fields under the value line, as nvme-cli's -H prints them,
    /// instead of the hex dump of the data buffer. Text only: the JSON (which always has
    /// the decoded `value`) and binary output do not change.
    #[arg(long = "human-readable", short = 'H')]
    pub human_readable: bool,
    /// Command Dword 11 (decimal or 0x hex): feature-specific input, e.g. TMPSEL (bits
    /// 19:16) and THSEL (bits 21:20) for Temperature Threshold.
    #[arg(long, short = 'c', value_name = "V", value_parser = parse_u32, default_value = "0")]
    pub cdw11: u32,
}

/// Arguments of `format`.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The controller.
    #[arg(value_name = "DEV", help = DEV_HELP)]
    pub dev: String,
    /// Namespace to format (decimal or 0x hex; 0xffffffff = all namespaces, when the
    /// controller formats them together). Default: the controller's only active
    /// namespace; required when it has several.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// LBA format index (0-based, as `identify-ns` lists them).
    #[arg(long, short = 'l', value_name = "L", value_parser = clap::value_parser!(u8).range(0..64))]
    pub lbaf: u8,
    /// Secure Erase Setting: 0 none, 1 user data erase, 2 cryptographic erase.
    #[arg(long, short = 's', value_name = "S", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub ses: u8,
    /// Metadata Setting (MSET), as nvme-cli's `--ms`: 1 transfers the metadata at the end
    /// of each block (extended LBA), 0 in a separate buffer. Matters only for an LBA
    /// format with metadata (MS > 0).
    #[arg(long, short = 'm', value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub ms: u8,
    /// Protection Information type, as nvme-cli's `--pi`: 0 none, 1, 2 or 3 (end-to-end
    /// data protection; needs an LBA format with at least 8 bytes of metadata).
    #[arg(long, short = 'i', value_name = "0..3", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub pi: u8,
    /// Protection Information Location, as nvme-cli's `--pil`: 1 puts the 8-byte PI tuple
    /// in the first bytes of each block's metadata, 0 in the last.
    #[arg(long, short = 'p', value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub pil: u8,
    /// Do not ask for confirmation. Without it, format asks you to type "yes" on the
    /// terminal, and refuses (exit 1, nothing done) when stdin is not a terminal.
    #[arg(long)]
    pub force: bool,
    /// How long Format NVM may take before the driver gives up and resets the
    /// controller, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON object instead of text: nvme-cli's `Devices` and ironvme's
    /// `controllers`. The same as `-o json`.
    #[arg(long, conflicts_with = "output_format")]
    pub json: bool,
    /// Output format, as nvme-cli's `nvme list -o`: normal (text) or json.
    #[arg(long, short = 'o', value_enum, default_value_t, value_name = "FMT")]
    pub output_format: list::ListFormat,
}

/// Why a subcommand failed; the message is one line. [`CliError::Usage`] exits with
/// [`EXIT_USAGE`], [`CliError::Mismatch`] with [`EXIT_MISMATCH`], every other variant
/// with [`EXIT_FAILURE`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong whatever the device, in a way clap cannot check (a
    /// `VOL@SNAP` without `@`, flags that together make no target); nothing was done.
    #[error("{0}")]
    Usage(String),
    /// The command ran to its end and found data that is not what it should be (verify's
    /// mismatched blocks, fsck's violations, data that differs from what `compare` was
    /// given), and no I/O failed; its report has been printed.
    #[error("{0}")]
    Mismatch(String),
    /// The device is of a kind this build cannot open (kernel device paths).
    #[error("{0}")]
    Unsupported(String),
    /// DEV is not something ironvme can name.
    #[error("{0}")]
    Device(String),
    /// An argument does not fit the device (an inactive namespace, an LBA format the
    /// namespace does not have, ...).
    #[error("{0}")]
    Invalid(String),
    /// The operation was refused or not confirmed; nothing was done.
    #[error("{0}")]
    Refused(String),
    /// Opening the device failed (the message names the BDF and the fix).
    #[error(transparent)]
    Ironvme(#[from] crate::Error),
    /// A command on an opened device failed (the NVMe status is decoded in the message).
    #[error("{device}: {source}")]
    OnDevice {
        /// The device, as printed in headers.
        device: String,
        /// What failed.
        source: crate::Error,
    },
    /// The command ran and failed (failed I/Os, a store that cannot be read); its report
    /// has been printed.
    #[error("{0}")]
    Failed(String),
    /// Reading sysfs, the terminal, or writing the output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Mismatch(_) => EXIT_MISMATCH,
            _ => EXIT_FAILURE,
        }
    }

    /// Wraps a failure of a command on `device`.
    pub fn on(device: &device::OpenDevice) -> impl FnOnce(crate::Error) -> CliError + '_ {
        move |source| CliError::OnDevice {
            device: device.name(),
            source,
        }
    }
}

/// Runs the parsed command line, writing results to `out` (stdout in the binary).
///
/// Errors: see [`CliError`]; output errors are [`CliError::Io`] (a closed pipe is
/// `ErrorKind::BrokenPipe`, which the binary treats as a normal end).
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Identify(a) => identify::run_controller(a, out),
        Command::IdentifyNs(a) => identify::run_namespace(a, out),
        Command::ListNs(a) => identify::run_list_ns(a, out),
        Command::SmartLog(a) => logs::run_smart(a, out),
        Command::GetLog(a) => logs::run_get_log(a, out),
        Command::ErrorLog(a) => logs::run_error(a, out),
        Command::FwLog(a) => logs::run_firmware(a, out),
        Command::GetFeature(a) => features::run(a, out),
        Command::Read(a) => rawio::run_data(rawio::DataCommand::Read, a, out),
        Command::Write(a) => rawio::run_data(rawio::DataCommand::Write, a, out),
        Command::Compare(a) => rawio::run_data(rawio::DataCommand::Compare, a, out),
        Command::Flush(a) => rawio::run_flush(a),
        Command::WriteZeroes(a) => rawio::run_write_zeroes(a),
        Command::Dsm(a) => rawio::run_dsm(a),
        Command::Format(a) => format::run(a, out),
        Command::AttachNs(a) => nsattach::run(true, a, out),
        Command::DetachNs(a) => nsattach::run(false, a, out),
        Command::Zns(c) => zns::run(c, out),
        Command::List(a) => list::run(a, &crate::vfio::Sysfs::system(), out),
        Command::Perf(a) => perf::run(a, out),
        Command::Verify(a) => verify::run(a, out),
        Command::Serve(a) => serve::run(a, out),
        Command::Vde { command } => vde::run(command, out),
    }?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as pretty-printed JSON and a newline.
pub(crate) fn write_json(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Parses a number in decimal or with a `0x` prefix in hex.
pub fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a number (decimal, or hex with 0x)"))
}

/// A `u32` in decimal or 0x hex.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let v = parse_number(s)?;
    u32::try_from(v).map_err(|_| format!("{s} does not fit in 32 bits"))
}

/// A `u8` in decimal or 0x hex.
pub fn parse_u8(s: &str) -> Result<u8, String> {
    let v = parse_number(s)?;
    u8::try_from(v).map_err(|_| format!("{s} does not fit in 8 bits (0..=0xff)"))
}

/// A namespace ID: 1..=0xffffffff, decimal or 0x hex.
pub fn parse_nsid(s: &str) -> Result<u32, String> {
    match parse_u32(s)? {
        0 => Err("namespace IDs start at 1".to_string()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ironvme").chain(args.iter().copied()))
    }

    #[test]
    fn human_readable() {
        for args in [
            &["id-ctrl", "/dev/nvme0", "-H"][..],
            &["identify", "/dev/nvme0", "--human-readable", "-o", "normal"],
        ] {
            let Command::Identify(a) = parse(args).unwrap().command else {
                panic!()
            };
            assert!(a.human_readable, "{args:?}");
        }
        let Command::Identify(a) = parse(&["id-ctrl", "/dev/nvme0"]).unwrap().command else {
            panic!()
        };
        assert!(!a.human_readable);
        let cli = parse(&["id-ns", "/dev/nvme0", "-n", "2", "-H", "-o", "json"]).unwrap();
        let Command::IdentifyNs(a) = cli.command else { panic!() };
        assert_eq!(
            (a.nsid, a.human_readable, a.device.format()),
            (Some(2), true, OutputFormat::Json)
        );
        let cli = parse(&["smart-log", "/dev/nvme0", "-H", "-o", "json"]).unwrap();
        let Command::SmartLog(a) = cli.command else { panic!() };
        assert_eq!((a.human_readable, a.device.format()), (true, OutputFormat::Json));
        let Command::SmartLog(a) = parse(&["smart-log", "/dev/nvme0"]).unwrap().command else {
            panic!()
        };
        assert!(!a.human_readable);
        let cli = parse(&["get-feature", "/dev/nvme0", "-f", "4", "--human-readable"]).unwrap();
        let Command::GetFeature(a) = cli.command else { panic!() };
        assert_eq!((a.fid, a.human_readable), (Some(4), true));
    }

    #[test]
    fn get_feature_arguments() {
        let cli = parse(&["get-feature", "00:05.0", "--fid", "0x7"]).unwrap();
        let Command::GetFeature(a) = cli.command else { panic!() };
        assert_eq!((a.fid, a.sel, a.nsid, a.cdw11), (Some(7), Select::Current, None, 0));
        assert_eq!(a.device.dev, "00:05.0");
        assert_eq!(a.device.format(), OutputFormat::Normal);
        // nvme-cli's spelling; no feature ID lists them all.
        let cli = parse(&["get-feature", "/dev/nvme0", "--feature-id=2", "--namespace-id=1", "-H"]).unwrap();
        let Command::GetFeature(a) = cli.command else { panic!() };
        assert_eq!((a.fid, a.nsid, a.human_readable), (Some(2), Some(1), true));
        let cli = parse(&["get-feature", "/dev/nvme0", "-o", "json"]).unwrap();
        let Command::GetFeature(a) = cli.command else { panic!() };
        assert_eq!((a.fid, a.device.format()), (None, OutputFormat::Json));

        for (text, sel) in [
            ("current", Select::Current),
            ("default", Select::Default),
            ("saved", Select::Saved),
            ("supported", Select::Supported),
            ("0", Select::Current),
            ("3", Select::Supported),
        ] {
            let cli = parse(&["get-feature", "00:05.0", "-f", "4", "--sel", text, "--json"]).unwrap();
            let Command::GetFeature(a) = cli.command else { panic!() };
            assert_eq!(a.sel, sel, "{text}");
            assert!(a.device.json);
        }
        let cli = parse(&["get-feature", "00:05.0", "-f", "4", "-c", "0x100000", "-n", "1"]).unwrap();
        let Command::GetFeature(a) = cli.command else { panic!() };
        assert_eq!((a.cdw11, a.nsid), (0x10_0000, Some(1)));

        assert_eq!(
            Select::Supported.to_nvme(),
            crate::nvme::features::FeatureSelect::SupportedCapabilities
        );
        for bad in [
            &["get-feature", "00:05.0", "--fid", "7", "--sel", "changed"][..],
            &["get-feature", "00:05.0", "--fid", "0x100"],
            &["get-feature", "00:05.0", "--json", "-o", "binary"],
            &["get-feature", "--fid", "7"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn format_arguments() {
        let cli = parse(&["format", "pci:0000:00:05.0", "--lbaf", "4"]).unwrap();
        let Command::Format(a) = cli.command else { panic!() };
        assert_eq!((a.nsid, a.lbaf, a.ses, a.force, a.timeout), (None, 4, 0, false, 600));
        let cli = parse(&[
            "format",
            "00:05.0",
            "-n",
            "0xffffffff",
            "-l",
            "0",
            "--ses",
            "2",
            "--force",
        ])
        .unwrap();
        let Command::Format(a) = cli.command else { panic!() };
        assert_eq!((a.nsid, a.lbaf, a.ses, a.force), (Some(u32::MAX), 0, 2, true));
        for bad in [
            &["format", "00:05.0"][..],
            &["format", "00:05.0", "--lbaf", "64"],
            &["format", "00:05.0", "--lbaf", "1", "--ses", "3"],
            &["format", "00:05.0", "--lbaf", "1", "--nsid", "0"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn other_subcommands() {
        let cli = parse(&["identify-ns", "00:05.0", "--nsid", "2", "--json"]).unwrap();
        let Command::IdentifyNs(a) = cli.command else { panic!() };
        assert_eq!((a.nsid, a.device.format()), (Some(2), OutputFormat::Json));
        assert!(matches!(
            parse(&["smart-log", "x"]).unwrap().command,
            Command::SmartLog(_)
        ));
        assert!(matches!(
            parse(&["error-log", "x"]).unwrap().command,
            Command::ErrorLog(_)
        ));
        assert!(matches!(parse(&["fw-log", "x"]).unwrap().command, Command::FwLog(_)));
        let Command::AttachNs(a) = parse(&["attach-ns", "/dev/nvme0", "--namespace-id", "2", "-c", "0,0x1"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((a.nsid, a.controllers), (2, vec![0, 1]));
        let Command::DetachNs(a) = parse(&["detach-ns", "/dev/nvme0", "-n", "3"]).unwrap().command else {
            panic!()
        };
        assert_eq!((a.nsid, a.controllers), (3, vec![]));
        assert!(
            parse(&["detach-ns", "/dev/nvme0"]).is_err(),
            "the namespace is required"
        );
        assert!(matches!(
            parse(&["list", "--json"]).unwrap().command,
            Command::List(ListArgs { json: true, .. })
        ));
        assert_eq!(parse(&["identify"]).unwrap_err().exit_code(), EXIT_USAGE);
        assert_eq!(parse(&["frobnicate"]).unwrap_err().exit_code(), EXIT_USAGE);
    }

    /// nvme-cli's command names and flags parse to the same commands.
    #[test]
    fn nvme_cli_names_and_flags() {
        let Command::Identify(a) = parse(&["id-ctrl", "/dev/nvme0", "-o", "binary"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.device.format(), OutputFormat::Binary);
        let Command::IdentifyNs(a) = parse(&["id-ns", "/dev/nvme0", "--namespace-id=2", "--output-format=json"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((a.nsid, a.device.format()), (Some(2), OutputFormat::Json));
        let Command::ListNs(a) = parse(&["list-ns", "/dev/nvme0"]).unwrap().command else {
            panic!()
        };
        assert_eq!((a.start, a.all), (1, false));
        let Command::ListNs(a) = parse(&["list-ns", "/dev/nvme0", "-n", "3", "-a"]).unwrap().command else {
            panic!()
        };
        assert_eq!((a.start, a.all), (3, true));
        let Command::GetLog(a) = parse(&["get-log", "/dev/nvme0", "--log-id=2", "--log-len=512"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            (a.log_id, a.log_len, a.nsid, a.lpo, a.raw_binary),
            (2, 512, u32::MAX, 0, false)
        );
        let Command::GetLog(a) = parse(&["get-log", "nvme0", "-i", "0xc0", "-l", "8", "-n", "1", "-b"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((a.log_id, a.log_len, a.nsid, a.raw_binary), (0xc0, 8, 1, true));
        for bad in [
            &["get-log", "nvme0", "--log-len", "8"][..],
            &["list-ns", "nvme0", "-n", "0"],
            &["id-ctrl", "nvme0", "-o", "xml"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32("0x1f"), Ok(31));
        assert_eq!(parse_u32("0XFFFFFFFF"), Ok(u32::MAX));
        assert_eq!(parse_u32("42"), Ok(42));
        assert!(parse_u32("0x100000000").is_err());
        assert!(parse_u32("-1").is_err());
        assert!(parse_u32("ten").unwrap_err().contains("not a number"));
        assert_eq!(parse_u8("0xe"), Ok(14));
        assert!(parse_u8("256").is_err());
        assert_eq!(parse_nsid("1"), Ok(1));
        assert!(parse_nsid("0").is_err());
    }
}
