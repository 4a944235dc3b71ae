//! The raw I/O commands, shaped like nvme-cli's: `read`, `write`, `compare`, `flush`,
//! `write-zeroes` and `dsm`, on every backend.
//!
//! # Shapes (nvme-cli 2.3's `nvme read`, `write`, `compare`, `flush`, `write-zeroes`, `dsm`)
//!
//! - `-s/--start-block` is the first LBA; `-c/--block-count` is 0-based, as the NVMe NLB
//!   field is (`-c 0` is one block), up to 65535 (NLB is 16 bits, NVM Command Set §3.2).
//! - `-z/--data-size` is the buffer size in bytes. nvme-cli requires it; here it may be
//!   left out. One smaller than the blocks need is rounded up with nvme-cli's note on
//!   stderr; one larger is refused (it names more data than `-c` moves). The transfer is
//!   always exactly `(c + 1)` blocks.
//! - `-d/--data FILE`: where `read` writes the data and where `write` and `compare` take
//!   it from; standard output or standard input without it. `write` and `compare` refuse
//!   input shorter than the blocks (nvme-cli would send the zeros it padded with) and
//!   input longer than them (nvme-cli would drop the rest), before anything is sent.
//! - Numbers are decimal or `0x` hex; `-f/--force-unit-access` is for `write` only.
//! - `-n/--namespace-id`: default the namespace DEV names, else its first.
//! - Success is reported on stderr as nvme-cli does (`read: Success`), so standard output
//!   carries only data.
//!
//! # Decisions
//!
//! - **A transfer above the device's limit (MDTS, `max_hw_sectors_kb`) is refused**, not
//!   split: one command is what was asked for, as with nvme-cli.
//! - **What is checked when.** Arguments that are wrong whatever the device are usage
//!   errors (exit 2) before anything is opened. The rest (the range against the
//!   namespace, MDTS, the input's length) needs the device open: nothing is sent when they
//!   fail, but opening a controller through VFIO has already reset it.
//! - **Writes hold the same in-use protection as `perf`**: `write`, `write-zeroes` and
//!   `dsm -d` take the exclusive claim ([`crate::claim`]) that refuses a mounted or held
//!   namespace. Naming the command is the consent (no `--allow-write`).
//! - **`compare` on a backend without NVMe Compare** (io_uring, psync on block devices and
//!   files) reads the blocks and compares them in memory; either way a difference is a
//!   data mismatch, with its own exit status.
//! - **`dsm` supports the deallocate attribute only** (`-d/--ad`); each range is one
//!   deallocate operation on the block interface (one DSM command with one range on the
//!   NVMe backends). The integral-dataset hints (`--idr`, `--idw`) are not supported and
//!   are refused rather than ignored.

use super::io_shared::units::parse_size;
use super::io_shared::{BACKEND_HELP, IO_DEV_HELP, target};
use super::{CliError, parse_nsid, parse_number};
use crate::block::{self, IoError, IoStatus, NamespaceInfo, Op};
use crate::nvme::hw::DmaBuf;
use crate::nvme::status::Status;
use crate::{Backend, Device, IoQueue};
use clap::Args;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

/// The device, namespace and backend: what every raw command names (`flush` nothing else).
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The device.
    #[arg(value_name = "DEV", help = IO_DEV_HELP)]
    pub dev: String,
    /// Namespace ID. Default: the namespace DEV names, else the first.
    #[arg(long = "namespace-id", short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// The backend.
    #[arg(long, value_name = "B", help = BACKEND_HELP)]
    pub backend: Option<Backend>,
}

/// Where the blocks are: the arguments `read`, `write`, `compare` and `write-zeroes`
/// share.
#[derive(Debug, Args)]
pub struct BlocksArgs {
    /// The device, namespace and backend.
    #[command(flatten)]
    pub target: TargetArgs,
    /// First logical block (LBA), decimal or 0x hex.
    #[arg(long = "start-block", short = 's', value_name = "LBA", value_parser = parse_number, default_value = "0")]
    pub start_block: u64,
    /// Number of blocks minus one (0-based, as NVMe's NLB): 0 is one block; decimal or 0x
    /// hex, at most 0xffff.
    #[arg(long = "block-count", short = 'c', value_name = "NLB", default_value = "0", value_parser = parse_nlb)]
    pub block_count: u16,
}

/// Arguments of `read`, `write` and `compare`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Where the blocks are.
    #[command(flatten)]
    pub blocks: BlocksArgs,
    /// The buffer size in bytes (k, m, g suffixes); rounded up to the blocks if smaller.
    #[arg(long = "data-size", short = 'z', value_name = "BYTES", value_parser = parse_size)]
    pub data_size: Option<u64>,
    /// The data file: read's output, write's and compare's input. Default: stdout/stdin.
    #[arg(long = "data", short = 'd', value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Force Unit Access: the data is durable when the command completes (write only).
    #[arg(long = "force-unit-access", short = 'f')]
    pub fua: bool,
}

/// Arguments of `write-zeroes`.
#[derive(Debug, Args)]
pub struct WriteZeroesArgs {
    /// Where the blocks are.
    #[command(flatten)]
    pub blocks: BlocksArgs,
    /// Deallocate (DEAC): the device may deallocate the blocks instead of writing zeros.
    #[arg(long, short = 'd')]
    pub deac: bool,
}

/// Arguments of `dsm`.
#[derive(Debug, Args)]
pub struct DsmArgs {
    /// The device, namespace and backend.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The ranges' first blocks, comma-separated (`0,1000`).
    #[arg(long = "slbs", short = 's', value_name = "LBAS", value_delimiter = ',', value_parser = parse_number, required = true)]
    pub slbs: Vec<u64>,
    /// The ranges' lengths in blocks (1-based, as a DSM range's), comma-separated.
    #[arg(
        long = "blocks",
        short = 'b',
        value_name = "COUNTS",
        value_delimiter = ',',
        value_parser = super::parse_u32,
        required = true
    )]
    pub blocks: Vec<u32>,
    /// Attribute Deallocate (AD): deallocate the ranges. Required: the only attribute
    /// ironvme sends.
    #[arg(long = "ad", short = 'd')]
    pub ad: bool,
}

/// A 0-based block count: a `u16`, decimal or 0x hex.
fn parse_nlb(s: &str) -> Result<u16, String> {
    let v = parse_number(s)?;
    u16::try_from(v).map_err(|_| format!("{s}: a block count is 0-based and at most 0xffff (65536 blocks)"))
}

/// Which data command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCommand {
    /// Read blocks to the output.
    Read,
    /// Write blocks from the input.
    Write,
    /// Compare blocks with the input.
    Compare,
}

impl DataCommand {
    fn name(self) -> &'static str {
        match self {
            DataCommand::Read => "read",
            DataCommand::Write => "write",
            DataCommand::Compare => "compare",
        }
    }
}

/// The device opened for a raw command: one queue of depth 1 on its namespace, and the
/// claim held while the command runs. Field order is drop order.
struct Opened {
    queue: IoQueue,
    device: Device,
    ns: NamespaceInfo,
    /// DEV as named, for messages.
    name: String,
    _claim: crate::claim::Claim,
}

impl TargetArgs {
    /// Opens DEV; `writes` names a command that changes data (it takes the exclusive
    /// claim).
    fn open(&self, writes: Option<&str>) -> Result<Opened, CliError> {
        let (device, claim) = target::open(&self.dev, self.backend, writes, true)?.into_parts();
        let ns = device.namespace(self.nsid.or_else(|| device.node_namespace()))?;
        let queue = device.create_queue(Some(ns.nsid), 1)?;
        Ok(Opened {
            queue,
            device,
            ns,
            name: self.dev.clone(),
            _claim: claim,
        })
    }
}

impl Opened {
    /// Runs `op` to completion, giving back the buffer.
    ///
    /// Errors: [`CliError::Failed`] naming the device and the status.
    fn run(&mut self, op: Op, buf: Option<DmaBuf>) -> Result<Option<DmaBuf>, CliError> {
        block::run_one(&mut self.queue, op, buf).map_err(|e| self.failed(e.error))
    }

    /// [`CliError::Failed`]: `why`, after the device's name.
    fn failed(&self, why: impl std::fmt::Display) -> CliError {
        CliError::Failed(format!("{}: {why}", self.name))
    }

    /// Refuses what the backend cannot do on this device (`what`: "write zeroes").
    ///
    /// Errors: [`CliError::Invalid`] when `can` is false.
    fn need(&self, can: bool, what: &str) -> Result<(), CliError> {
        if can {
            return Ok(());
        }
        Err(CliError::Invalid(format!(
            "{}: the {} backend cannot {what} on this device",
            self.name,
            self.device.backend()
        )))
    }
}

/// Checks that `blocks` blocks from `lba` lie inside the namespace.
///
/// Errors: [`CliError::Invalid`] naming the range and the namespace's size.
fn check_range(ns: &NamespaceInfo, lba: u64, blocks: u64) -> Result<(), CliError> {
    if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
        return Err(CliError::Invalid(format!(
            "blocks {lba}..{} are outside namespace {} ({} blocks of {} bytes)",
            lba.saturating_add(blocks),
            ns.nsid,
            ns.blocks,
            ns.block_size
        )));
    }
    Ok(())
}

/// Whether `e` is the NVMe Compare Failure status.
fn is_compare_failure(e: &IoError) -> bool {
    matches!(e, IoError::Failed { status: IoStatus::Nvme(s), .. } if s.same_code(Status::COMPARE_FAILURE))
}

/// `e` with the path it concerns.
fn with_path(p: &std::path::Path, e: std::io::Error) -> CliError {
    CliError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

/// Reads exactly `len` bytes of input from `path` or stdin.
///
/// Errors: [`CliError::Invalid`] when the input is shorter or longer; [`CliError::Io`].
fn read_input(path: Option<&PathBuf>, len: usize, what: &str) -> Result<Vec<u8>, CliError> {
    let mut input: Box<dyn Read> = match path {
        Some(p) => Box::new(File::open(p).map_err(|e| with_path(p, e))?),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut data = Vec::with_capacity(len + 1);
    // One byte more than needed tells input that is too long.
    input.by_ref().take(len as u64 + 1).read_to_end(&mut data)?;
    if data.len() != len {
        let from = path.map_or("standard input".to_string(), |p| p.display().to_string());
        let got = if data.len() > len {
            "more".to_string()
        } else {
            data.len().to_string()
        };
        return Err(CliError::Invalid(format!(
            "{what} needs {len} bytes (the blocks -c names) and {from} gave {got}; nothing was sent"
        )));
    }
    Ok(data)
}

/// `ironvme read|write|compare DEV -s LBA -c NLB [-z BYTES] [-d FILE]`.
///
/// Errors: [`CliError::Invalid`] for a range outside the namespace, a transfer above the
/// device's limit or short input (nothing is sent then); [`CliError::Refused`] for a
/// write to a device in use; [`CliError::Failed`] when the device fails the command;
/// [`CliError::Mismatch`] when `compare` finds the data different.
pub fn run_data(cmd: DataCommand, a: &DataArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let b = &a.blocks;
    if a.fua && cmd != DataCommand::Write {
        return Err(CliError::Usage(format!(
            "-f/--force-unit-access is for write, not {}",
            cmd.name()
        )));
    }
    let writes = (cmd == DataCommand::Write).then_some("write");
    let mut o = b.target.open(writes)?;
    let blocks = u64::from(b.block_count) + 1;
    check_range(&o.ns, b.start_block, blocks)?;
    let len = blocks * u64::from(o.ns.block_size);
    match a.data_size {
        Some(z) if z < len => eprintln!("Rounding data size to fit block count ({len} bytes)"),
        Some(z) if z > len => {
            return Err(CliError::Usage(format!(
                "-z {z} bytes is more than the {blocks} blocks -c names ({len} bytes of {} each)",
                o.ns.block_size
            )));
        }
        _ => {}
    }
    let len = usize::try_from(len).expect("at most 65536 blocks of at most 64 KiB");
    if len > o.ns.max_transfer_bytes {
        return Err(CliError::Invalid(format!(
            "{}: {len} bytes in one command is above the device's limit of {} bytes (MDTS); use a smaller -c",
            o.name, o.ns.max_transfer_bytes
        )));
    }
    let input = match cmd {
        DataCommand::Read => None,
        _ => Some(read_input(a.data.as_ref(), len, cmd.name())?),
    };
    let mut buf = o.device.dma().allocate(len).map_err(|e| o.failed(e))?;
    if let Some(data) = &input {
        buf.as_mut_slice()[..len].copy_from_slice(data);
    }
    let lba = b.start_block;
    match cmd {
        DataCommand::Read => {
            let buf = o
                .run(Op::Read { lba }, Some(buf))?
                .expect("a read gives its buffer back");
            let data = &buf.as_slice()[..len];
            match &a.data {
                Some(p) => std::fs::write(p, data).map_err(|e| with_path(p, e))?,
                None => out.write_all(data)?,
            }
        }
        DataCommand::Write => {
            o.run(Op::Write { lba, fua: a.fua }, Some(buf))?;
        }
        DataCommand::Compare if o.ns.compare => match block::run_one(&mut o.queue, Op::Compare { lba }, Some(buf)) {
            Ok(_) => {}
            Err(e) if is_compare_failure(&e.error) => {
                return Err(CliError::Mismatch(format!(
                    "{}: compare: the blocks {lba}..{} differ from the data (NVMe Compare Failure)",
                    o.name,
                    lba + blocks
                )));
            }
            Err(e) => return Err(o.failed(e.error)),
        },
        DataCommand::Compare => {
            // No NVMe Compare on this backend: read and compare here.
            let buf = o
                .run(Op::Read { lba }, Some(buf))?
                .expect("a read gives its buffer back");
            let data = input.expect("compare has input");
            if let Some(at) = buf.as_slice()[..len].iter().zip(&data).position(|(x, y)| x != y) {
                return Err(CliError::Mismatch(format!(
                    "{}: compare: byte {at} (block {}) differs from the data",
                    o.name,
                    lba + at as u64 / u64::from(o.ns.block_size)
                )));
            }
        }
    }
    eprintln!("{}: Success", cmd.name());
    Ok(())
}

/// `ironvme flush DEV`: makes every completed write durable.
///
/// Errors: [`CliError::Failed`] when the device fails it; see [`CliError`].
pub fn run_flush(a: &TargetArgs) -> Result<(), CliError> {
    a.open(None)?.run(Op::Flush, None)?;
    eprintln!("NVMe Flush: success");
    Ok(())
}

/// `ironvme write-zeroes DEV -s LBA -c NLB [-d]`.
///
/// Errors: as [`run_data`]; [`CliError::Invalid`] when the backend cannot write zeroes.
pub fn run_write_zeroes(a: &WriteZeroesArgs) -> Result<(), CliError> {
    let b = &a.blocks;
    let mut o = b.target.open(Some("write-zeroes"))?;
    let blocks = u32::from(b.block_count) + 1;
    check_range(&o.ns, b.start_block, u64::from(blocks))?;
    o.need(o.ns.write_zeroes, "write zeroes")?;
    let op = Op::WriteZeroes {
        lba: b.start_block,
        blocks,
        deallocate: a.deac,
    };
    o.run(op, None)?;
    eprintln!("NVME Write Zeroes Success");
    Ok(())
}

/// `ironvme dsm DEV -s LBAS -b COUNTS -d`: deallocates each range.
///
/// Errors: [`CliError::Usage`] without `-d`, for lists of different lengths, more than
/// 256 ranges (a DSM command's limit) or an empty range (checked before anything is
/// opened); [`CliError::Invalid`] for a range outside the namespace or a backend that
/// cannot deallocate (before anything is sent); as [`run_data`].
pub fn run_dsm(a: &DsmArgs) -> Result<(), CliError> {
    if !a.ad {
        return Err(CliError::Usage(
            "dsm: ironvme sends the Deallocate attribute only: add -d/--ad".to_string(),
        ));
    }
    if let Some(i) = a.blocks.iter().position(|&n| n == 0) {
        return Err(CliError::Usage(format!(
            "dsm: range {i} (at block {}) has no blocks",
            a.slbs.get(i).copied().unwrap_or_default()
        )));
    }
    if a.slbs.len() != a.blocks.len() || a.slbs.len() > 256 {
        return Err(CliError::Usage(format!(
            "dsm: {} start blocks and {} lengths: give one length per start block, at most 256 ranges",
            a.slbs.len(),
            a.blocks.len()
        )));
    }
    let mut o = a.target.open(Some("dsm"))?;
    o.need(o.ns.deallocate, "deallocate")?;
    for (&lba, &blocks) in a.slbs.iter().zip(&a.blocks) {
        check_range(&o.ns, lba, u64::from(blocks))?;
    }
    for (i, (&lba, &blocks)) in a.slbs.iter().zip(&a.blocks).enumerate() {
        block::run_one(&mut o.queue, Op::Deallocate { lba, blocks }, None).map_err(|e| {
            o.failed(format_args!(
                "{} (range {i}, {blocks} blocks at {lba}; the {i} ranges before it were deallocated)",
                e.error
            ))
        })?;
    }
    eprintln!("NVMe DSM: success");
    Ok(())
}
