//! `ironvme vde ...`: the Virtual Disk Engine's object store from the command line.
//!
//! Every subcommand opens the store on DEV (any backend), does one thing, and closes it
//! with a checkpoint. `format` destroys what DEV holds and asks first; `put` and `rm`
//! change only the store's own objects.
//!
//! A store has one owner at a time ([`crate::claim`]): `format`, `put`, `rm` and `bench`
//! claim DEV exclusively, `get`, `ls`, `stat`, `info` and `fsck` share a claim among
//! themselves; a second opener is refused, naming the holder.
//!
//! Readers open the store read-only ([`VdeOptions::read_only`]): they never write DEV, which
//! their shared claim (no `O_EXCL`) does not entitle them to — another program may have it
//! mounted or open exclusively. Only when the store needs recovery (a writer died before
//! its checkpoint, or a superblock copy is damaged) does a reader write: it then trades its
//! shared claim for an exclusive one, refused like any writer's while someone else holds
//! DEV, replays the journal and checkpoints, and reads on.

use super::io_shared::target;
use super::io_shared::units::{parse_nonzero_size, parse_positive_duration};
use super::io_shared::{BACKEND_HELP, IO_DEV_HELP};
use super::perf::report::{Latency, PERCENTILES};
use super::progress::Progress;
use super::{CliError, parse_nsid, write_json};
use crate::Backend;
use crate::claim::{Access, Claim};
use crate::vde::{MAX_OBJECT, Vde, VdeError, VdeOptions};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `ironvme vde` subcommands.
#[derive(Debug, Subcommand)]
pub enum VdeCommand {
    /// Writes an empty store on DEV. DESTROYS ITS DATA; asks for "yes" unless --force.
    Format(FormatArgs),
    /// Stores FILE (or standard input for `-`) under KEY, replacing any object there.
    Put(PutArgs),
    /// Writes the object under KEY to standard output (or --output FILE).
    Get(GetArgs),
    /// Removes the object under KEY.
    Rm(KeyArgs),
    /// Lists keys (starting with PREFIX), in byte order.
    Ls(LsArgs),
    /// Shows an object's size, version (txg) and extents.
    Stat(KeyArgs),
    /// Checks every invariant of the store and every checksum; exits 3 on violations, 1
    /// if a read failed (the check is then incomplete).
    Fsck(StoreJson),
    /// Shows the store's layout and usage.
    Info(StoreJson),
    /// Put or get throughput and latency of objects of one size, like `ironvme perf`.
    Bench(BenchArgs),
    /// Thin volumes: create, ls, rm, resize. A volume opens as `vde:DEV:VOL` wherever a
    /// device is taken (`perf`, `verify`).
    #[command(subcommand)]
    Vol(VolCommand),
    /// Snapshots of volumes: create, ls, rm. A snapshot opens read-only as
    /// `vde:DEV:VOL@SNAP`.
    #[command(subcommand)]
    Snap(SnapCommand),
    /// Makes a writable volume NEWVOL from snapshot VOL@SNAP, sharing its blocks.
    Clone(CloneArgs),
    /// Discards every write to VOL since its newest snapshot VOL@SNAP.
    Rollback(SnapArgs),
    /// Writes snapshot VOL@SNAP as a send stream (docs/vde-stream.md) to standard output
    /// or -o FILE: whole, or with -i the changes since an earlier snapshot. -t TOKEN sends
    /// the rest of an interrupted receive instead.
    Send(SendArgs),
    /// Receives a send stream from standard input into volume VOL, atomically: the
    /// snapshot appears only once the whole stream has verified.
    Recv(RecvArgs),
    /// Prints the resume token of an interrupted receive into VOL, for `vde send -t`.
    RecvToken(VolArgs),
}

/// Arguments of `vde send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The snapshot to send, VOL@SNAP (not with -t).
    #[arg(required_unless_present = "token", conflicts_with = "token")]
    pub snapshot: Option<String>,
    /// Send only the changes since this earlier snapshot: VOL@BASE, or @BASE / BASE for
    /// one of the same volume (ZFS's `-i`).
    #[arg(short = 'i', value_name = "BASE")]
    pub base: Option<String>,
    /// Write the stream to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<String>,
    /// Send what an interrupted receive lacks (`vde recv-token` prints TOKEN).
    #[arg(short = 't', value_name = "TOKEN", conflicts_with = "base")]
    pub token: Option<String>,
    /// Print statistics as one JSON object at the end (extents and bytes shipped, blocks
    /// skipped, efficiency = stream bytes / volume bytes, elapsed_s: seconds of the send,
    /// opening and closing the store not counted): on standard output with -o, else on
    /// standard error.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vde recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The volume to receive into (made if it does not exist).
    pub volume: String,
    /// First roll VOL back to the stream's base snapshot, deleting newer snapshots.
    #[arg(short = 'F')]
    pub force: bool,
    /// If the receive fails, keep what arrived for `vde send -t` (ZFS's `-s`). A receive
    /// that is killed or loses power keeps it regardless.
    #[arg(short = 's')]
    pub save: bool,
    /// Discard an interrupted receive into VOL instead of receiving.
    #[arg(short = 'A')]
    pub abort: bool,
    /// Print statistics as one JSON object at the end (records and bytes applied,
    /// elapsed_s: seconds of the receive, opening and closing the store not counted).
    #[arg(long)]
    pub json: bool,
}

/// A volume.
#[derive(Debug, Args)]
pub struct VolArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The volume.
    pub volume: String,
}

/// `ironvme vde vol` subcommands.
#[derive(Debug, Subcommand)]
pub enum VolCommand {
    /// Creates a thin volume of --size bytes (nothing is allocated until written).
    Create(VolSizeArgs),
    /// Lists volumes with their size, referenced, used and unique bytes (ZFS's refer and
    /// used).
    Ls(StoreJson),
    /// Deletes a volume (with --recursive, its snapshots too).
    Rm(VolRmArgs),
    /// Changes a volume's size; shrinking frees the blocks past the new end.
    Resize(VolSizeArgs),
}

/// `ironvme vde snap` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapCommand {
    /// Takes snapshot VOL@NAME: O(1) whatever the volume's size; it holds exactly the
    /// writes completed before it.
    Create(SnapCreateArgs),
    /// Lists snapshots (of VOL, or of every volume) with referenced and used bytes (used:
    /// what deleting it frees).
    Ls(SnapLsArgs),
    /// Deletes snapshot VOL@NAME, freeing what nothing else references.
    Rm(SnapArgs),
}

/// A volume name and a size.
#[derive(Debug, Args)]
pub struct VolSizeArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The volume's name (1 to 64 of A-Z a-z 0-9 _ . -).
    pub name: String,
    /// Size (64g, 512m, ...; a multiple of 4 KiB).
    #[arg(long, value_parser = parse_nonzero_size)]
    pub size: u64,
}

/// Arguments of `vde vol rm`.
#[derive(Debug, Args)]
pub struct VolRmArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The volume.
    pub name: String,
    /// Delete its snapshots too (refused whole if one of them has clones).
    #[arg(long, short = 'r')]
    pub recursive: bool,
}

/// A snapshot `VOL@NAME`.
#[derive(Debug, Args)]
pub struct SnapArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// VOL@NAME.
    pub snapshot: String,
}

/// Arguments of `vde snap create`.
#[derive(Debug, Args)]
pub struct SnapCreateArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// VOL@NAME.
    pub snapshot: String,
    /// Print one JSON object: the snapshot and how long taking it took (`create_us`,
    /// microseconds: the store's snapshot call, its commit and Flushes included; opening
    /// and closing the store not).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vde snap ls`.
#[derive(Debug, Args)]
pub struct SnapLsArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this volume's snapshots.
    pub volume: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vde clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The origin, VOL@SNAP.
    pub snapshot: String,
    /// The new volume.
    pub new: String,
}

/// DEV and how to open it.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The device holding the store.
    #[arg(value_name = "DEV", help = IO_DEV_HELP)]
    pub dev: String,
    /// The backend.
    #[arg(long, value_name = "B", help = BACKEND_HELP)]
    pub backend: Option<Backend>,
    /// Namespace ID. Default: the device's first namespace.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
}

/// Arguments of `vde format`.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `vde put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key (1 to 255 bytes).
    pub key: String,
    /// The file to store, or `-` for standard input.
    pub file: String,
}

/// Arguments of `vde get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key.
    pub key: String,
    /// Write the object here instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<String>,
}

/// Arguments of subcommands taking a key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key.
    pub key: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vde ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only keys starting with this.
    #[arg(default_value = "")]
    pub prefix: String,
    /// Also show each object's size in bytes.
    #[arg(long, short = 'l')]
    pub long: bool,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of subcommands taking only the store.
#[derive(Debug, Args)]
pub struct StoreJson {
    /// The device.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `vde bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// Overwrite objects (each put durable before the next on its thread).
    Put,
    /// Read objects written first.
    Get,
}

/// Arguments of `vde bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The device (formatted with `vde format` first).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Operation.
    #[arg(long, value_enum, default_value = "put")]
    pub op: BenchOp,
    /// Object size (4k, 1m, ...).
    #[arg(long, default_value = "4k", value_parser = parse_nonzero_size)]
    pub size: u64,
    /// Threads, each with its own keys.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keys per thread (objects are overwritten in turn).
    #[arg(long, default_value_t = 64)]
    pub keys: usize,
    /// Measured time (5s, 500ms, ...).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub time: Duration,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// An open store and the claim on its device ([`crate::claim`]): a store has one owner.
/// Commands that change it hold an exclusive claim; those that only read it (`get`,
/// `ls`, `stat`, `info`, `fsck`) a shared one, so readers run together but never beside
/// a writer. The store is closed before the claim is released.
struct Store {
    // Declared first: dropped (checkpointed) before the claim.
    vde: Vde,
    _claim: Claim,
}

impl std::ops::Deref for Store {
    type Target = Vde;
    fn deref(&self) -> &Vde {
        &self.vde
    }
}

/// Claims DEV for `access` on behalf of `what` (`"vde put"`) and opens the device.
fn claim_device(s: &StoreArgs, access: Access, what: &str) -> Result<(crate::Device, Claim), CliError> {
    // Naming the device in a `vde` command is the consent to write it.
    let options = crate::OpenOptions::with_backend(s.backend);
    Ok(target::open_claimed(&s.dev, &options, Some((access, what)), true)?.into_parts())
}

/// Opens the store for `access` on behalf of `what`. A reader ([`Access::Shared`]) opens
/// it read-only; if the store needs recovery first ([`VdeError::NeedsRecovery`]: a writer
/// died before its checkpoint), it lets go of its shared claim, claims DEV exclusively
/// (refused, as for any writer, while someone else holds it) and opens the store for
/// writing, which recovers it, then goes on reading under that claim.
fn open(s: &StoreArgs, access: Access, what: &str) -> Result<Store, CliError> {
    let (device, claim) = claim_device(s, access, what)?;
    let read_only = access == Access::Shared;
    match Vde::open(device, options(s, read_only)) {
        Ok(vde) => Ok(Store { vde, _claim: claim }),
        Err(VdeError::NeedsRecovery(why)) if read_only => {
            tracing::info!(
                device = s.dev,
                "{what}: the store needs recovery ({why}); claiming it for writing"
            );
            drop(claim);
            let (device, claim) = claim_device(s, Access::Exclusive, &format!("{what} (recovering the store)"))?;
            let vde = Vde::open(device, options(s, false)).map_err(|e| fail(&s.dev, e))?;
            Ok(Store { vde, _claim: claim })
        }
        Err(e) => Err(fail(&s.dev, e)),
    }
}

fn options(s: &StoreArgs, read_only: bool) -> VdeOptions {
    VdeOptions {
        nsid: s.nsid,
        read_only,
        ..VdeOptions::default()
    }
}

fn fail(dev: &str, e: VdeError) -> CliError {
    match e {
        VdeError::NotFound(_) | VdeError::BadKey(_) | VdeError::ObjectTooLarge(_) | VdeError::Exists(_) => {
            CliError::Invalid(format!("{dev}: {e}"))
        }
        _ => CliError::Failed(format!("{dev}: {e}")),
    }
}

/// Checkpoints and closes the store, then releases its claim.
fn close(store: Store, dev: &str) -> Result<(), CliError> {
    let Store { vde, _claim } = store;
    vde.close().map_err(|e| fail(dev, e))
}

/// Runs `ironvme vde ...`.
///
/// `send`, `recv` and `fsck` show a progress bar on stderr when it is a terminal
/// ([`Progress`]).
///
/// Errors: [`CliError::Usage`] for a malformed `VOL@SNAP` or resume token;
/// [`CliError::Invalid`] for a missing key or an argument the store cannot take;
/// [`CliError::Failed`] for store errors (corruption, I/O) and an fsck whose reads failed;
/// [`CliError::Mismatch`] for fsck violations; [`CliError::Refused`] for an unconfirmed
/// format.
pub fn run(cmd: &VdeCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        VdeCommand::Format(a) => format(a, out, &mut io::stdin().lock(), &mut io::stderr()),
        VdeCommand::Put(a) => {
            let data = if a.file == "-" {
                read_object("standard input", io::stdin().lock())?
            } else {
                let f = std::fs::File::open(&a.file).map_err(|e| CliError::Invalid(format!("{}: {e}", a.file)))?;
                read_object(&a.file, f)?
            };
            let vde = open(&a.store, Access::Exclusive, "vde put")?;
            vde.put(a.key.as_bytes(), &data).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VdeCommand::Get(a) => {
            let vde = open(&a.store, Access::Shared, "vde get")?;
            let data = vde.get(a.key.as_bytes()).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            match &a.output {
                Some(path) => std::fs::write(path, &data).map_err(|e| CliError::Invalid(format!("{path}: {e}")))?,
                None => out.write_all(&data)?,
            }
            Ok(())
        }
        VdeCommand::Rm(a) => {
            let vde = open(&a.store, Access::Exclusive, "vde rm")?;
            vde.delete(a.key.as_bytes()).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VdeCommand::Stat(a) => {
            let vde = open(&a.store, Access::Shared, "vde stat")?;
            let st = vde.stat(a.key.as_bytes()).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            if a.json {
                let mut v = serde_json::to_value(&st).map_err(io::Error::from)?;
                v["key"] = a.key.clone().into();
                return write_json(out, &v);
            }
            writeln!(out, "key      : {}", a.key)?;
            writeln!(out, "size     : {} bytes", st.size)?;
            writeln!(out, "version  : {} (the txg that wrote it)", st.version)?;
            let ex: Vec<String> = st.extents.iter().map(|(s, n)| format!("{s}+{n}")).collect();
            writeln!(out, "extents  : {} (4 KiB blocks: start+count)", ex.join(" "))?;
            Ok(())
        }
        VdeCommand::Ls(a) => ls(a, out),
        VdeCommand::Fsck(a) => {
            let vde = open(&a.store, Access::Shared, "vde fsck")?;
            // Drawn from the first report on, which knows the total.
            let mut bar: Option<Progress> = None;
            let r = vde
                .fsck_with_progress(&mut |p| {
                    let bar = bar.get_or_insert_with(|| Progress::count(p.total_blocks, "blocks"));
                    bar.set_total(p.total_blocks.max(p.checked_blocks));
                    bar.set(p.checked_blocks);
                })
                .map_err(|e| fail(&a.store.dev, e))?;
            drop(bar);
            close(vde, &a.store.dev)?;
            if a.json {
                write_json(out, &serde_json::to_value(&r).map_err(io::Error::from)?)?;
            } else {
                writeln!(
                    out,
                    "{}: {} objects, {} volumes, {} snapshots, {} metadata blocks, {} data blocks, {} bytes checksummed, {} blocks in use",
                    a.store.dev,
                    r.objects,
                    r.volumes,
                    r.snapshots,
                    r.meta_blocks,
                    r.data_blocks,
                    r.bytes_checked,
                    r.used_blocks
                )?;
                for v in &r.violations {
                    writeln!(out, "VIOLATION: {v}")?;
                }
                writeln!(out, "{}", if r.clean() { "clean" } else { "NOT CLEAN" })?;
            }
            fsck_outcome(&a.store.dev, &r)
        }
        VdeCommand::Info(a) => {
            let vde = open(&a.store, Access::Shared, "vde info")?;
            let info = vde.info().map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            if a.json {
                return write_json(out, &serde_json::to_value(info).map_err(io::Error::from)?);
            }
            writeln!(
                out,
                "{}: VDE format 2, {} blocks of 4 KiB, uuid {}",
                a.store.dev, info.total_blocks, info.uuid
            )?;
            writeln!(
                out,
                "  intent log: blocks {} .. {} ({} blocks)",
                info.log_start,
                info.log_start + info.log_blocks,
                info.log_blocks
            )?;
            writeln!(
                out,
                "  blocks in use {}/{} ({:.1}%)",
                info.used_blocks,
                info.total_blocks,
                info.used_blocks as f64 * 100.0 / info.total_blocks as f64
            )?;
            writeln!(
                out,
                "  reserved for metadata {} blocks; free for data {} blocks",
                info.reserved_blocks,
                info.total_blocks
                    .saturating_sub(info.used_blocks)
                    .saturating_sub(info.reserved_blocks)
            )?;
            writeln!(out, "  objects {}, last committed txg {}", info.objects, info.txg)?;
            Ok(())
        }
        VdeCommand::Bench(a) => bench(a, out),
        VdeCommand::Vol(c) => vol(c, out),
        VdeCommand::Snap(c) => snap(c, out),
        VdeCommand::Clone(a) => {
            let (v, s) = split_snapshot(&a.snapshot)?;
            let vde = open(&a.store, Access::Exclusive, "vde clone")?;
            vde.clone_snapshot(v, s, &a.new).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VdeCommand::Rollback(a) => {
            let (v, s) = split_snapshot(&a.snapshot)?;
            let vde = open(&a.store, Access::Exclusive, "vde rollback")?;
            vde.rollback(v, s).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VdeCommand::Send(a) => send(a, out),
        VdeCommand::Recv(a) => recv(a, out),
        VdeCommand::RecvToken(a) => {
            let vde = open(&a.store, Access::Shared, "vde recv-token")?;
            let t = vde.recv_token(&a.volume).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            match t {
                Some(t) => Ok(writeln!(out, "{t}")?),
                None => Err(CliError::Invalid(format!(
                    "{}: no interrupted receive into {} is waiting",
                    a.store.dev, a.volume
                ))),
            }
        }
    }
}

/// What an fsck report on `dev` makes of the command: success when clean;
/// [`CliError::Failed`] (exit 1) when a read failed, violations or not (the check is
/// incomplete); [`CliError::Mismatch`] (exit 3) when it ran through and found violations.
fn fsck_outcome(dev: &str, r: &crate::vde::FsckReport) -> Result<(), CliError> {
    if r.clean() {
        return Ok(());
    }
    let message = format!("{dev}: fsck found {} violations", r.violations.len());
    if r.io_errors > 0 {
        Err(CliError::Failed(format!(
            "{message}, {} of them failed reads (the check is incomplete)",
            r.io_errors
        )))
    } else {
        Err(CliError::Mismatch(message))
    }
}

fn send(a: &SendArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let token = a
        .token
        .as_deref()
        .map(|t| t.parse::<crate::vde::ResumeToken>())
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let base = match (&a.base, &a.snapshot) {
        (Some(b), Some(s)) if !b.contains('@') || b.starts_with('@') => {
            let vol = split_snapshot(s)?.0;
            Some(format!("{vol}@{}", b.trim_start_matches('@')))
        }
        (b, _) => b.clone(),
    };
    let vde = open(&a.store, Access::Shared, "vde send")?;
    // Unbuffered: the sender writes each record with one vectored write (a buffer would
    // copy every byte once more).
    let mut sink = match &a.output {
        Some(path) => std::fs::File::create(path).map_err(|e| CliError::Invalid(format!("{path}: {e}")))?,
        None => std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?),
    };
    let sink: &mut dyn Write = &mut sink;
    let size = match (&a.snapshot, &token) {
        (Some(s), _) => vde.dataset(s).map_err(|e| fail(&a.store.dev, e))?.size,
        _ => 0,
    };
    let bar = Progress::bytes(a.snapshot.as_ref().map(|_| size));
    let mut tick = |at: u64| bar.set(at);
    let started = Instant::now();
    let stats = match (&token, &a.snapshot) {
        (Some(t), _) => vde.send_resume(t, sink, &mut tick),
        (None, Some(s)) => vde.send(s, base.as_deref(), 0, sink, &mut tick),
        (None, None) => unreachable!("clap requires a snapshot or -t"),
    }
    .map_err(|e| fail(&a.store.dev, e))?;
    sink.flush()?;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish();
    close(vde, &a.store.dev)?;
    if a.json {
        let mut v = serde_json::to_value(&stats).map_err(io::Error::from)?;
        v["elapsed_s"] = elapsed.into();
        // Standard output carries the stream unless -o took it.
        return match a.output {
            Some(_) => write_json(out, &v),
            None => write_json(&mut io::stderr().lock(), &v),
        };
    }
    Ok(())
}

fn recv(a: &RecvArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let vde = open(&a.store, Access::Exclusive, "vde recv")?;
    if a.abort {
        let had = vde.recv_abort(&a.volume).map_err(|e| fail(&a.store.dev, e))?;
        close(vde, &a.store.dev)?;
        if !had {
            return Err(CliError::Invalid(format!(
                "{}: no interrupted receive into {} is waiting",
                a.store.dev, a.volume
            )));
        }
        return Ok(());
    }
    // A receive waiting from before is never discarded by this one's failure.
    let waiting = vde.recv_token(&a.volume).map_err(|e| fail(&a.store.dev, e))?.is_some();
    // Unbuffered: a Write's data is read straight into its own buffer.
    let mut input = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
    // A stream from a file (`< FILE`) has a known size, so its bar has an ETA; a pipe's
    // shows bytes and rate.
    let size = input.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    let bar = Progress::bytes(size);
    let mut tick = |at: u64| bar.set(at);
    let started = Instant::now();
    let r = vde.recv(&a.volume, a.force, &mut input, &mut tick);
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish();
    let stats = match r {
        Ok(s) => s,
        Err(e) => {
            let kept = match vde.recv_token(&a.volume) {
                Ok(Some(t)) if a.save || waiting => format!("; what arrived is kept: resume with `vde send -t {t}`"),
                Ok(Some(_)) => match vde.recv_abort(&a.volume) {
                    Ok(_) => "; nothing was kept (-s keeps what arrived)".to_string(),
                    Err(e2) => format!("; discarding what arrived failed too: {e2}"),
                },
                _ => String::new(),
            };
            let _ = close(vde, &a.store.dev);
            return Err(CliError::Failed(format!(
                "{}: receive into {}: {e}{kept}",
                a.store.dev, a.volume
            )));
        }
    };
    close(vde, &a.store.dev)?;
    if a.json {
        let mut v = serde_json::to_value(&stats).map_err(io::Error::from)?;
        v["elapsed_s"] = elapsed.into();
        return write_json(out, &v);
    }
    Ok(())
}

/// `VOL@SNAP` as (VOL, SNAP).
///
/// Errors: [`CliError::Usage`] without an `@`.
fn split_snapshot(s: &str) -> Result<(&str, &str), CliError> {
    s.split_once('@')
        .filter(|(v, n)| !v.is_empty() && !n.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{s:?} is not a snapshot: write VOL@NAME")))
}

/// Bytes for tables: 4.0K, 1.5M, 64.0G (binary units, as `zfs list` shows them).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn datasets_table(out: &mut dyn Write, rows: &[crate::vde::DatasetInfo], json: bool) -> Result<(), CliError> {
    if json {
        return write_json(out, &serde_json::to_value(rows).map_err(io::Error::from)?);
    }
    writeln!(
        out,
        "{:<32} {:>9} {:>9} {:>9} {:>9}  ORIGIN",
        "NAME", "SIZE", "USED", "REFER", "UNIQUE"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<32} {:>9} {:>9} {:>9} {:>9}  {}",
            r.name,
            human(r.size),
            human(r.used),
            human(r.refer),
            human(r.unique),
            r.origin.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

fn vol(c: &VolCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match c {
        VolCommand::Create(a) => {
            let vde = open(&a.store, Access::Exclusive, "vde vol create")?;
            vde.vol_create(&a.name, a.size).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VolCommand::Resize(a) => {
            let vde = open(&a.store, Access::Exclusive, "vde vol resize")?;
            vde.vol_resize(&a.name, a.size).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VolCommand::Rm(a) => {
            let vde = open(&a.store, Access::Exclusive, "vde vol rm")?;
            vde.vol_remove(&a.name, a.recursive)
                .map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        VolCommand::Ls(a) => {
            let vde = open(&a.store, Access::Shared, "vde vol ls")?;
            let rows = vde.vol_list().map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            datasets_table(out, &rows, a.json)
        }
    }
}

fn snap(c: &SnapCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match c {
        SnapCommand::Create(a) => {
            let (v, s) = split_snapshot(&a.snapshot)?;
            let vde = open(&a.store, Access::Exclusive, "vde snap create")?;
            let started = std::time::Instant::now();
            vde.snap_create(v, s).map_err(|e| fail(&a.store.dev, e))?;
            let took = started.elapsed();
            close(vde, &a.store.dev)?;
            if a.json {
                return write_json(
                    out,
                    &serde_json::json!({
                        "snapshot": a.snapshot,
                        "create_us": took.as_secs_f64() * 1e6,
                    }),
                );
            }
            Ok(())
        }
        SnapCommand::Rm(a) => {
            let (v, s) = split_snapshot(&a.snapshot)?;
            let vde = open(&a.store, Access::Exclusive, "vde snap rm")?;
            vde.snap_remove(v, s).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)
        }
        SnapCommand::Ls(a) => {
            let vde = open(&a.store, Access::Shared, "vde snap ls")?;
            let rows = vde.snap_list(a.volume.as_deref()).map_err(|e| fail(&a.store.dev, e))?;
            close(vde, &a.store.dev)?;
            datasets_table(out, &rows, a.json)
        }
    }
}

/// Reads the object `vde put` stores from `source` (`name` for messages): at most
/// [`MAX_OBJECT`] bytes and one more, so an input that never ends (a pipe, `/dev/zero`)
/// is refused at the limit instead of filling memory.
///
/// Errors: [`CliError::Invalid`] when the input holds more than [`MAX_OBJECT`] bytes or
/// cannot be read.
fn read_object(name: &str, source: impl Read) -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    source
        .take(MAX_OBJECT + 1)
        .read_to_end(&mut data)
        .map_err(|e| CliError::Invalid(format!("{name}: {e}")))?;
    if data.len() as u64 > MAX_OBJECT {
        return Err(CliError::Invalid(format!(
            "{name} holds more than {MAX_OBJECT} bytes, the VDE's largest object; nothing was stored"
        )));
    }
    Ok(data)
}

fn format(
    a: &FormatArgs,
    out: &mut dyn Write,
    answers: &mut dyn io::BufRead,
    prompt: &mut dyn Write,
) -> Result<(), CliError> {
    if !a.force {
        let q = format!(
            "vde format writes a new, empty object store on {}: EVERYTHING ON IT IS LOST.",
            a.store.dev
        );
        if !super::format::confirm(&q, answers, prompt)? {
            return Err(CliError::Refused("not confirmed; nothing was written".into()));
        }
    }
    let (device, claim) = claim_device(&a.store, Access::Exclusive, "vde format")?;
    let vde = Store {
        vde: Vde::format(device, options(&a.store, false)).map_err(|e| fail(&a.store.dev, e))?,
        _claim: claim,
    };
    let info = vde.info().map_err(|e| fail(&a.store.dev, e))?;
    close(vde, &a.store.dev)?;
    writeln!(
        out,
        "{}: formatted: VDE format 2, {} blocks of 4 KiB ({} MiB), intent log {} blocks",
        a.store.dev,
        info.total_blocks,
        info.total_blocks * 4 / 1024,
        info.log_blocks
    )?;
    Ok(())
}

fn ls(a: &LsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let vde = open(&a.store, Access::Shared, "vde ls")?;
    let mut json = Vec::new();
    for k in vde.keys(a.prefix.as_bytes()) {
        let k = k.map_err(|e| fail(&a.store.dev, e))?;
        let name = String::from_utf8_lossy(&k).into_owned();
        let size = if a.long || a.json {
            Some(vde.stat(&k).map_err(|e| fail(&a.store.dev, e))?.size)
        } else {
            None
        };
        if a.json {
            json.push(serde_json::json!({"key": name, "size": size}));
        } else if let Some(size) = size {
            writeln!(out, "{size:>12}  {name}")?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    close(vde, &a.store.dev)?;
    if a.json {
        write_json(out, &serde_json::Value::Array(json))?;
    }
    Ok(())
}

/// The result of `vde bench`.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// "put" or "get".
    pub op: &'static str,
    /// Object size in bytes.
    pub size: u64,
    /// Threads.
    pub threads: usize,
    /// The backend.
    pub backend: String,
    /// Operations completed in the measured time.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Object bytes per second, in MiB.
    pub mib_per_s: f64,
    /// Latency per operation in µs, as `ironvme perf` reports it: min, mean, max, stdev,
    /// p50, p90, p99, p99_9, p99_99 (null if no operation completed).
    pub lat_us: serde_json::Value,
    /// Measured seconds.
    pub time_s: f64,
    /// CPU time of the process (user + system) over the run, in percent of one CPU.
    pub cpu_percent: f64,
    /// How fast one thread of this CPU computes xxh3-64 over an object of this size, in
    /// MiB/s, measured for 0.2 s before the run. Every put and get hashes each object byte
    /// once, so one thread's `mib_per_s` stays below it.
    pub xxh3_mib_per_s: f64,
    /// NVMe Flush commands the store submitted to the device during the measured time
    /// (from when the threads start until they have all stopped; see
    /// [`crate::device::flushes_submitted`]).
    pub flushes: u64,
    /// `flushes` per completed operation (0 if none completed).
    pub flushes_per_op: f64,
}

fn bench(a: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let vde = open(&a.store, Access::Exclusive, "vde bench")?;
    let threads = a.threads.max(1);
    let size = a.size as usize;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7])
        .collect();
    let key = |t: usize, i: usize| format!("bench/{t}/{i:06}");
    if a.op == BenchOp::Get {
        for t in 0..threads {
            for i in 0..a.keys {
                vde.put(key(t, i).as_bytes(), &data)
                    .map_err(|e| fail(&a.store.dev, e))?;
            }
        }
    }
    let xxh3_mib_per_s = hash_speed(&data);
    let stop = AtomicBool::new(false);
    let (user0, sys0, _) = super::io_shared::rusage_self();
    let flushes0 = crate::device::flushes_submitted();
    let start = Instant::now();
    let results: Vec<Result<Histogram<u64>, VdeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (vde, data, stop) = (&vde, &data, &stop);
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
                    let keys: Vec<String> = (0..a.keys).map(|i| key(t, i)).collect();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let k = &keys[i % keys.len()];
                        let t0 = Instant::now();
                        match a.op {
                            BenchOp::Put => vde.put(k.as_bytes(), data)?,
                            BenchOp::Get => {
                                let got = vde.get(k.as_bytes())?;
                                debug_assert_eq!(got.len(), data.len());
                            }
                        }
                        h.saturating_record(t0.elapsed().as_nanos() as u64);
                        i += 1;
                    }
                    Ok(h)
                })
            })
            .collect();
        std::thread::sleep(a.time);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let flushes = crate::device::flushes_submitted() - flushes0;
    let (user1, sys1, _) = super::io_shared::rusage_self();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    for r in results {
        all.add(r.map_err(|e| fail(&a.store.dev, e))?).expect("same bounds");
    }
    let backend = vde.device().backend().to_string();
    close(vde, &a.store.dev)?;
    // Histogram values are ns: one tick per ns.
    let lat = Latency::from_ticks(&all, (all.min(), all.max()), 1.0);
    let ops = all.len();
    let report = BenchReport {
        op: if a.op == BenchOp::Put { "put" } else { "get" },
        size: a.size,
        threads,
        backend,
        ops,
        ops_per_s: ops as f64 / secs,
        mib_per_s: ops as f64 * a.size as f64 / secs / (1 << 20) as f64,
        lat_us: lat.map_or(serde_json::Value::Null, |l| l.json()),
        time_s: secs,
        cpu_percent: (user1 - user0 + sys1 - sys0) / secs * 100.0,
        xxh3_mib_per_s,
        flushes,
        flushes_per_op: if ops == 0 { 0.0 } else { flushes as f64 / ops as f64 },
    };
    if a.json {
        return write_json(out, &serde_json::to_value(&report).map_err(io::Error::from)?);
    }
    writeln!(
        out,
        "vde {} {} B x {} threads on {} ({}): {} ops in {:.1} s",
        report.op, report.size, threads, a.store.dev, report.backend, ops, secs
    )?;
    writeln!(
        out,
        "  ops/s {:.0}   MiB/s {:.1}   cpu {:.0}%   Flushes/op {:.2}   (xxh3-64 on one thread: {:.0} MiB/s)",
        report.ops_per_s, report.mib_per_s, report.cpu_percent, report.flushes_per_op, report.xxh3_mib_per_s
    )?;
    if let Some(l) = lat {
        let pct: Vec<String> = PERCENTILES
            .iter()
            .zip(l.pct)
            .map(|((_, key), v)| format!("{key} {v:.1}"))
            .collect();
        writeln!(
            out,
            "  lat (us): min {:.1} mean {:.1} max {:.1} | {}",
            l.min,
            l.mean,
            l.max,
            pct.join(" ")
        )?;
    }
    Ok(())
}

/// MiB/s of xxh3-64 over `data` on this thread, hashing it for about 0.2 s.
fn hash_speed(data: &[u8]) -> f64 {
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < Duration::from_millis(200) {
        std::hint::black_box(xxhash_rust::xxh3::xxh3_64(std::hint::black_box(data)));
        bytes += data.len() as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsck_violations_exit_3_unless_a_read_failed() {
        use crate::cli::{EXIT_FAILURE, EXIT_MISMATCH};
        use crate::vde::FsckReport;
        assert!(fsck_outcome("d", &FsckReport::default()).is_ok());
        let mut r = FsckReport {
            violations: vec!["object \"k\": extent 67+1 does not match its checksum".into()],
            ..FsckReport::default()
        };
        let e = fsck_outcome("d", &r).unwrap_err();
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (EXIT_MISMATCH, "d: fsck found 1 violations".into())
        );
        r.violations
            .push("object index: read of block 70: Input/output error".into());
        r.io_errors = 1;
        let e = fsck_outcome("d", &r).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_FAILURE, "{e}");
        assert_eq!(
            e.to_string(),
            "d: fsck found 2 violations, 1 of them failed reads (the check is incomplete)"
        );
    }

    #[test]
    fn objects_up_to_the_limit_are_read_and_larger_ones_refused() {
        let at_limit = read_object("in", io::repeat(7).take(MAX_OBJECT)).unwrap();
        assert_eq!(at_limit.len() as u64, MAX_OBJECT);
        let e = read_object("in", io::repeat(7).take(MAX_OBJECT + 1)).unwrap_err();
        assert!(matches!(e, CliError::Invalid(_)), "{e}");
        assert!(e.to_string().starts_with("in holds more than 31457280 bytes"), "{e}");
        let e = read_object("in", io::repeat(7)).unwrap_err();
        assert!(e.to_string().contains("nothing was stored"), "{e}");
    }
}
