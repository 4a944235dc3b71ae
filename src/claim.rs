//! Device claims: one writer per device, and none while the kernel uses it.
//!
//! Every command that writes a device (`perf` and `verify` with a write workload, every
//! `vde` command that changes the store, NVMe `format` on a kernel node) holds an
//! [`Access::Exclusive`] [`Claim`] for as long as it writes; commands that only read a
//! store (`vde get`, `ls`, `stat`, `info`, `fsck`) hold an [`Access::Shared`] one, so
//! readers run together but never beside a writer. A second opener is refused with an
//! error naming the device and, where Linux can tell, who holds it: at once, except that
//! a lock on a block device is retried for up to 3 s, as systemd's BLOCK_DEVICE_LOCKING.md
//! asks (systemd-udevd holds a shared lock on a disk while it probes it, e.g. just after
//! another writer closed it).
//!
//! # What is claimed
//!
//! The claim is taken on the node that stands for the namespace's data, so every path to
//! the same blocks meets the same lock:
//!
//! | DEV | claimed node(s) |
//! | --- | --- |
//! | a regular file | the file |
//! | a block device (`/dev/nvmeXnY`, `/dev/sdX`, ...) | the block device |
//! | `/dev/ngXnY` | its namespace's block device `/dev/nvmeXnY` (from sysfs: the disk with the same head instance `Y` beside the generic node, below its controller or, under native multipath, its subsystem `nvme-subsysX`) |
//! | `/dev/nvmeX` | the block device of every namespace of the controller |
//! | a PCI address (VFIO) | nothing: the VFIO group is already exclusive, and a controller bound to vfio-pci has no kernel block devices |
//!
//! A namespace without a block device (the kernel made only `/dev/ngXnY`) is claimed on
//! its generic node instead.
//!
//! # How
//!
//! - **Exclusive on a block device**: `open(O_RDONLY | O_EXCL)`. The kernel refuses it
//!   (`EBUSY`) while the device or one of its partitions is mounted, is a swap area, is
//!   held by device-mapper or md, or is open with `O_EXCL` by anyone else — and, while we
//!   hold it, nothing can mount it. NVMe passthrough nodes have no such check of their
//!   own, which is why `/dev/ngXnY` and `/dev/nvmeX` claim the block devices.
//! - **Then a `flock(2)` on the same open file**: `LOCK_EX` for a writer, `LOCK_SH` for a
//!   reader, always `LOCK_NB` (on a block device retried every 20 ms for up to 3 s).
//!   flock locks belong to the open file description, so two claims conflict even inside
//!   one process, and a reader (which takes no `O_EXCL`, so it may share the device with
//!   other readers) meets a writer here. Regular files and generic nodes have only this
//!   lock.
//!
//! # Who holds it
//!
//! - a flock lock: `/proc/locks` (device and inode of the node) gives the holder's PID,
//!   `/proc/PID/comm` its name;
//! - a mount: `/proc/self/mountinfo` (device numbers of the disk and its partitions);
//! - device-mapper or md: `/sys/class/block/X/holders/` (and the partitions');
//! - swap: `/proc/swaps`.
//!
//! Another `O_EXCL` opener that holds no flock lock (a program other than ironvme) is
//! not named by Linux; the error says so.

use crate::Target;
use ironvme_kernel::node::{self, NvmeName};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the claim allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading: shared with other readers, never with a writer.
    Shared,
    /// Writing: the only user of the device.
    Exclusive,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Shared => "reading",
            Access::Exclusive => "writing",
        }
    }
}

/// Why a claim was not granted.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Someone else uses the device (or this process does, through another claim).
    #[error("{device} is in use{via}: {holder}")]
    InUse {
        /// The device as the user named it.
        device: String,
        /// `" (its block device /dev/nvme0n1)"` when the claimed node is not `device`.
        via: String,
        /// Who holds it, as far as Linux tells.
        holder: String,
    },
    /// The node could not be opened or locked for another reason (permissions, a file
    /// system without flock locks, ...).
    #[error("{device}: cannot claim {} for {access} ({op}): {source}", node.display())]
    Os {
        /// The device as the user named it.
        device: String,
        /// The node claimed.
        node: PathBuf,
        /// What the claim was for ("reading", "writing").
        access: &'static str,
        /// The system call.
        op: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// sysfs did not say which nodes stand for the device's namespaces.
    #[error("{device}: {why}")]
    Unknown {
        /// The device as the user named it.
        device: String,
        /// What is missing.
        why: String,
    },
}

/// A granted claim: held until dropped.
#[derive(Debug)]
pub struct Claim {
    held: Vec<(PathBuf, File)>,
}

/// A node to claim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    path: PathBuf,
    /// A block device: a writer also opens it with `O_EXCL`.
    block: bool,
}

impl Claim {
    /// Claims `target` (named `device` by the user) for `access`; see the module
    /// documentation for what is claimed and how.
    ///
    /// Errors: [`ClaimError::InUse`] naming the holder when another claim, a mount, a
    /// swap area, device-mapper, md or another exclusive opener holds the device (or, for
    /// [`Access::Shared`], a writer does); [`ClaimError::Os`] when a node cannot be
    /// opened or locked; [`ClaimError::Unknown`] when sysfs does not show an NVMe
    /// character device's namespaces.
    pub fn acquire(target: &Target, device: &str, access: Access) -> Result<Claim, ClaimError> {
        let nodes = nodes_for(Path::new("/sys"), Path::new("/dev"), target, device)?;
        Claim::take_all(nodes, device, access)
    }

    /// Like [`Claim::acquire`], but a namespace node (`/dev/nvmeXnY`, `/dev/ngXnY`)
    /// claims every namespace of its controller, as `/dev/nvmeX` does: for admin commands
    /// such as Format NVM, which a namespace node can send for any NSID or for all.
    ///
    /// Errors: as [`Claim::acquire`].
    pub fn acquire_controller(target: &Target, device: &str, access: Access) -> Result<Claim, ClaimError> {
        let nodes = controller_claim_nodes(Path::new("/sys"), Path::new("/dev"), target, device)?;
        Claim::take_all(nodes, device, access)
    }

    fn take_all(nodes: Vec<Node>, device: &str, access: Access) -> Result<Claim, ClaimError> {
        let mut held = Vec::with_capacity(nodes.len());
        for node in nodes {
            let file = take(&node, device, access)?;
            held.push((node.path, file));
        }
        Ok(Claim { held })
    }

    /// A claim on nothing, for uses that need none (reading a device).
    pub fn none() -> Claim {
        Claim { held: Vec::new() }
    }

    /// The nodes held (empty for a PCI address).
    pub fn nodes(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|(p, _)| p.as_path())
    }
}

/// Opens and locks one node.
fn take(node: &Node, device: &str, access: Access) -> Result<File, ClaimError> {
    let os = |op: &'static str, source: io::Error| ClaimError::Os {
        device: device.to_string(),
        node: node.path.clone(),
        access: access.name(),
        op,
        source,
    };
    let in_use = |holder: String| ClaimError::InUse {
        device: device.to_string(),
        via: if node.path == Path::new(device) {
            String::new()
        } else {
            format!(
                " (its {} {})",
                if node.block { "block device" } else { "node" },
                node.path.display()
            )
        },
        holder,
    };
    let exclusive_open = access == Access::Exclusive && node.block;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if exclusive_open {
        options.custom_flags(libc::O_EXCL);
    }
    let file = match options.open(&node.path) {
        Ok(f) => f,
        Err(e) if exclusive_open && e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(in_use(busy_holders(&node.path)));
        }
        Err(e) => return Err(os("open", e)),
    };
    let op = match access {
        Access::Shared => libc::LOCK_SH,
        Access::Exclusive => libc::LOCK_EX,
    };
    let wait = if node.block { BLOCK_LOCK_WAIT } else { Duration::ZERO };
    if let Err(e) = flock_within(&file, op, wait) {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let meta = file.metadata().map_err(|e| os("fstat", e))?;
            let holders = lock_holders(&read_or_empty("/proc/locks"), meta.dev(), meta.ino());
            return Err(in_use(if holders.is_empty() {
                "locked by another process".to_string()
            } else {
                holders.join(", ")
            }));
        }
        return Err(os("flock", e));
    }
    Ok(file)
}

/// How long a claim on a block device retries a conflicting flock lock before refusing.
/// systemd-udevd takes `LOCK_SH | LOCK_NB` on a whole disk for every uevent it handles and
/// probes the disk again after each close of a writer (`IN_CLOSE_WRITE`), so a writer
/// that follows another one meets udevd's lock for a moment; systemd's
/// BLOCK_DEVICE_LOCKING.md asks writers to take `LOCK_EX` and retry briefly. A regular
/// file has no such visitor and is refused at once, as is every lock a real user holds
/// for longer than this.
const BLOCK_LOCK_WAIT: Duration = Duration::from_secs(3);

/// `flock(file, op | LOCK_NB)`, retried every 20 ms while it fails with `EWOULDBLOCK` (or
/// `EINTR`) until `wait` has passed; the last error otherwise.
fn flock_within(file: &File, op: libc::c_int, wait: Duration) -> io::Result<()> {
    let start = Instant::now();
    loop {
        // SAFETY: flock(2) on a file descriptor `file` owns and keeps open for the call;
        // it touches no memory of ours.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let left = wait.saturating_sub(start.elapsed());
        let retry = matches!(e.raw_os_error(), Some(libc::EWOULDBLOCK) | Some(libc::EINTR));
        if !retry || left.is_zero() {
            return Err(e);
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// The nodes [`Claim::acquire_controller`] claims: those of every namespace of every
/// controller behind `target`, each once. Controllers of one subsystem share namespaces
/// (native multipath: both list the head's block device), and a second `O_EXCL` open of
/// the same block device would fail against our own first one, so duplicates anywhere in
/// the list are dropped, not only neighbouring ones.
fn controller_claim_nodes(sys: &Path, dev: &Path, target: &Target, device: &str) -> Result<Vec<Node>, ClaimError> {
    Ok(match controllers_of(sys, target) {
        Some(ctrls) => {
            let mut nodes = Vec::new();
            for ctrl in ctrls {
                nodes.extend(controller_nodes(sys, dev, &ctrl, device)?);
            }
            nodes.sort();
            nodes.dedup();
            nodes
        }
        None => nodes_for(sys, dev, target, device)?,
    })
}

/// The nodes that stand for `target`'s data; `sys` and `dev` are the sysfs and device
/// node roots.
fn nodes_for(sys: &Path, dev: &Path, target: &Target, device: &str) -> Result<Vec<Node>, ClaimError> {
    let unknown = |why: String| ClaimError::Unknown {
        device: device.to_string(),
        why,
    };
    Ok(match target {
        Target::Pci(_) => Vec::new(),
        Target::File(p) => vec![Node {
            path: p.clone(),
            block: false,
        }],
        Target::Block(p) | Target::NvmeBlock(p) => vec![Node {
            path: p.clone(),
            block: true,
        }],
        Target::NvmeGeneric(p) => {
            let (parent, name) = char_device_in_sysfs(sys, p)
                .ok_or_else(|| unknown(format!("sysfs does not show {} as an NVMe generic node", p.display())))?;
            let disk = NvmeName::parse(&name)
                .and_then(|n| n.head())
                .and_then(|head| disk_of_head(&parent, head))
                .map(|d| dev.join(d))
                .filter(|d| d.exists());
            vec![match disk {
                Some(path) => Node { path, block: true },
                None => Node {
                    path: p.clone(),
                    block: false,
                },
            }]
        }
        Target::NvmeController(p) => {
            let (_, ctrl) = char_device_in_sysfs(sys, p)
                .ok_or_else(|| unknown(format!("sysfs does not show {} as an NVMe controller", p.display())))?;
            controller_nodes(sys, dev, &ctrl, device)?
        }
    })
}

/// The namespace disk (`nvmeXnY`) with head instance `head` among the entries of sysfs
/// directory `parent`: the parent of a generic node, where the kernel also puts the
/// namespace's disk. Without native multipath that is the controller (`nvme_add_ns_cdev`
/// and the disk `nvme%dn%d` both hang below `ctrl->device`); with it, the subsystem
/// `nvme-subsysS` (`nvme_add_ns_head_cdev` names `ng%dn%d` from the subsystem and head
/// instances and hangs it below `subsys->dev`, as `nvme_mpath_set_live` does the head's
/// disk `nvme%dn%d`; the kernel makes no per-path generic nodes), while the per-path
/// disks `nvmeScXnY` stay below each controller. drivers/nvme/host/core.c, multipath.c.
fn disk_of_head(parent: &Path, head: u32) -> Option<String> {
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| matches!(NvmeName::parse(n), Some(NvmeName::Disk { head: h, .. }) if h == head))
}

/// The last component of `dir`.
fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The controllers (`nvme0`, ...) of the sysfs device directory `dir`: a controller's
/// own directory names itself; a subsystem's (`nvme-subsysS`, native multipath) holds a
/// link `nvmeX` to each of its controllers.
fn controllers_in(dir: &Path) -> Option<Vec<String>> {
    let name = dir_name(dir);
    if !name.starts_with("nvme-subsys") {
        return Some(vec![name]);
    }
    let mut ctrls: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| matches!(NvmeName::parse(n), Some(NvmeName::Controller { .. })))
        .collect();
    ctrls.sort();
    Some(ctrls)
}

/// The nodes of every namespace of controller `ctrl` (`nvme0`): each one's block device,
/// or its generic node when the kernel made no block device.
fn controller_nodes(sys: &Path, dev: &Path, ctrl: &str, device: &str) -> Result<Vec<Node>, ClaimError> {
    let mut nodes = Vec::new();
    for ns in ironvme_kernel::ioctl::controller_namespaces(sys, ctrl) {
        let disk = dev.join(&ns.disk);
        let generic = Some(ns.generic()).filter(|g| !g.is_empty()).map(|g| dev.join(g));
        if disk.exists() {
            nodes.push(Node {
                path: disk,
                block: true,
            });
        } else if let Some(g) = generic.filter(|g| g.exists()) {
            nodes.push(Node { path: g, block: false });
        } else {
            return Err(ClaimError::Unknown {
                device: device.to_string(),
                why: format!(
                    "namespace {} of {ctrl} has no device node ({} is missing) to claim",
                    ns.nsid,
                    disk.display()
                ),
            });
        }
    }
    Ok(nodes)
}

/// The controllers (`nvme0`, ...) behind a kernel NVMe node, from sysfs; `None` for
/// other targets. A namespace's block device hangs below its controller, or under native
/// multipath below its subsystem, whose controllers are the subsystem's `nvmeX` entries.
fn controllers_of(sys: &Path, target: &Target) -> Option<Vec<String>> {
    match target {
        Target::NvmeController(p) => Some(vec![char_device_in_sysfs(sys, p)?.1]),
        // The generic node's parent: its controller, or under native multipath its
        // subsystem (see `disk_of_head`).
        Target::NvmeGeneric(p) => controllers_in(&char_device_in_sysfs(sys, p)?.0),
        Target::NvmeBlock(p) => {
            let found = node::classify_in(sys, p).ok()?;
            if !found.kind.is_block() {
                return None;
            }
            controllers_in(found.sysfs_dir?.parent()?)
        }
        _ => None,
    }
}

/// For the character device at `path`: (its parent device's sysfs directory, its own
/// name) — for `/dev/ng0n1` (`.../nvme/nvme0`, or `.../nvme-subsystem/nvme-subsys0` under
/// native multipath, and `ng0n1`), for `/dev/nvme0` (`.../0000:00:04.0`, `nvme0`) — from
/// `/sys/dev/char/MAJ:MIN` ([`node::classify_in`]).
fn char_device_in_sysfs(sys: &Path, path: &Path) -> Option<(PathBuf, String)> {
    let found = node::classify_in(sys, path).ok()?;
    if !found.kind.is_char() {
        return None;
    }
    let dir = found.sysfs_dir?;
    Some((dir.parent()?.to_path_buf(), found.name))
}

fn read_or_empty(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The holders of flock and OFD locks on the inode (`dev`, `ino`) in `/proc/locks` text:
/// `"ironvme (pid 4242) for writing"`.
fn lock_holders(locks: &str, dev: u64, ino: u64) -> Vec<String> {
    let me = std::process::id() as i64;
    let want = (libc::major(dev), libc::minor(dev), ino);
    let mut out = Vec::new();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:05:123 0 EOF"; blocked waiters have "->".
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] == "->" {
            continue;
        }
        let mut id = f[5].split(':');
        let parsed = (|| {
            let major = u32::from_str_radix(id.next()?, 16).ok()?;
            let minor = u32::from_str_radix(id.next()?, 16).ok()?;
            let ino: u64 = id.next()?.parse().ok()?;
            Some((major, minor, ino))
        })();
        if parsed != Some(want) {
            continue;
        }
        let mode = if f[3] == "WRITE" { "for writing" } else { "for reading" };
        let who = match f[4].parse::<i64>() {
            Ok(pid) if pid > 0 => {
                let comm = read_or_empty(format!("/proc/{pid}/comm")).trim().to_string();
                let comm = if comm.is_empty() { "a process".to_string() } else { comm };
                if pid == me {
                    format!("{comm} (pid {pid}, this process)")
                } else {
                    format!("{comm} (pid {pid})")
                }
            }
            _ => "an open file description lock (Linux does not say whose)".to_string(),
        };
        out.push(format!("locked by {who} {mode}"));
    }
    out.dedup();
    out
}

/// Why the kernel refused `O_EXCL` on the block device at `path`: its mounts, holders,
/// swap use and flock lockers.
fn busy_holders(path: &Path) -> String {
    let mut why = Vec::new();
    let parts = block_and_partitions(path);
    why.extend(mounts_of(&read_or_empty("/proc/self/mountinfo"), &parts));
    for (name, _) in &parts {
        let dir = Path::new("/sys/class/block").join(name).join("holders");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                let holder = e.file_name().to_string_lossy().into_owned();
                let dm = read_or_empty(Path::new("/sys/class/block").join(&holder).join("dm/name"));
                let dm = dm.trim();
                why.push(if dm.is_empty() {
                    format!("{name} is held by {holder}")
                } else {
                    format!("{name} is held by {holder} (device-mapper {dm})")
                });
            }
        }
    }
    for line in read_or_empty("/proc/swaps").lines().skip(1) {
        let Some(swap) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(swap)
            && m.file_type().is_block_device()
            && parts
                .iter()
                .any(|(_, d)| *d == (libc::major(m.rdev()), libc::minor(m.rdev())))
        {
            why.push(format!("{swap} is a swap area"));
        }
    }
    if let Ok(m) = std::fs::metadata(path) {
        why.extend(lock_holders(&read_or_empty("/proc/locks"), m.dev(), m.ino()));
    }
    if why.is_empty() {
        "opened exclusively by another program (Linux does not say which)".to_string()
    } else {
        why.join("; ")
    }
}

/// The block device at `path` and its partitions: (kernel name, (major, minor)).
fn block_and_partitions(path: &Path) -> Vec<(String, (u32, u32))> {
    let Ok(m) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let Ok(dir) = std::fs::canonicalize(&sys) else {
        return vec![(path.display().to_string(), (major, minor))];
    };
    let name = dir
        .file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut out = vec![(name, (major, minor))];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(Result::ok) {
            if !e.path().join("partition").exists() {
                continue;
            }
            let devno = read_or_empty(e.path().join("dev"));
            if let Some((a, b)) = devno.trim().split_once(':')
                && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
            {
                out.push((e.file_name().to_string_lossy().into_owned(), (a, b)));
            }
        }
    }
    out
}

/// The mounts of any of `devices` in `/proc/self/mountinfo` text:
/// `"nvme0n1 is mounted on /mnt (ext4)"`.
fn mounts_of(mountinfo: &str, devices: &[(String, (u32, u32))]) -> Vec<String> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // "36 35 259:1 / /mnt rw,relatime shared:1 - ext4 /dev/nvme0n1 rw"
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 {
            continue;
        }
        let Some((a, b)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) else {
            continue;
        };
        if let Some((name, _)) = devices.iter().find(|(_, d)| *d == (a, b)) {
            let fstype = f.get(dash + 1).copied().unwrap_or("?");
            out.push(format!("{name} is mounted on {} ({fstype})", unescape(f[4])));
        }
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_target(dir: &tempfile::TempDir) -> (Target, String) {
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let spec = path.display().to_string();
        (Target::parse(&spec).unwrap(), spec)
    }

    #[test]
    fn one_writer_or_many_readers_even_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let (t, spec) = file_target(&dir);
        let w = Claim::acquire(&t, &spec, Access::Exclusive).unwrap();
        assert_eq!(w.nodes().collect::<Vec<_>>(), [Path::new(&spec)]);
        for access in [Access::Exclusive, Access::Shared] {
            let e = Claim::acquire(&t, &spec, access).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, ClaimError::InUse { .. }), "{text}");
            assert!(text.starts_with(&format!("{spec} is in use: locked by ")), "{text}");
            assert!(
                text.contains(&format!("(pid {}, this process) for writing", std::process::id())),
                "{text}"
            );
        }
        drop(w);
        let r1 = Claim::acquire(&t, &spec, Access::Shared).unwrap();
        let r2 = Claim::acquire(&t, &spec, Access::Shared).unwrap();
        let e = Claim::acquire(&t, &spec, Access::Exclusive).unwrap_err().to_string();
        assert!(e.contains("for reading"), "{e}");
        drop((r1, r2));
        Claim::acquire(&t, &spec, Access::Exclusive).unwrap();
    }

    #[test]
    fn another_path_to_the_same_file_meets_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (t, spec) = file_target(&dir);
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&spec, &link).unwrap();
        let _w = Claim::acquire(&t, &spec, Access::Exclusive).unwrap();
        let link = link.display().to_string();
        let e = Claim::acquire(&Target::parse(&link).unwrap(), &link, Access::Shared).unwrap_err();
        assert!(matches!(e, ClaimError::InUse { .. }), "{e}");
    }

    #[test]
    fn pci_addresses_claim_nothing() {
        let c = Claim::acquire(&Target::Pci("0000:00:05.0".into()), "0000:00:05.0", Access::Exclusive).unwrap();
        assert_eq!(c.nodes().count(), 0);
    }

    #[test]
    fn proc_locks_name_the_holder() {
        let dev = libc::makedev(0, 0x1a);
        let locks = "1: FLOCK  ADVISORY  WRITE 1 00:1a:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 2 00:1a:77 0 EOF\n\
                     2: OFDLCK ADVISORY  READ  -1 00:1a:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 3 00:1a:78 0 EOF\n\
                     4: POSIX  ADVISORY  WRITE 4 00:1b:77 0 EOF\n";
        let h = lock_holders(locks, dev, 77);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(
            h[0].starts_with("locked by ") && h[0].ends_with("(pid 1) for writing"),
            "{h:?}"
        );
        assert_eq!(
            h[1],
            "locked by an open file description lock (Linux does not say whose) for reading"
        );
    }

    #[test]
    fn mountinfo_names_the_mount_point() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    36 35 259:1 / /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n\
                    37 35 259:0 / /srv rw - xfs /dev/nvme0n1 rw\n";
        let devs = vec![("nvme0n1".to_string(), (259, 0)), ("nvme0n1p1".to_string(), (259, 1))];
        assert_eq!(
            mounts_of(info, &devs),
            [
                "nvme0n1p1 is mounted on /mnt/my disk (ext4)",
                "nvme0n1 is mounted on /srv (xfs)"
            ]
        );
    }

    /// A fake sysfs and /dev under a temporary directory. Character devices cannot be
    /// made without privileges, so the generic or controller node under test is
    /// `/dev/null`, and `sys/dev/char/MAJ:MIN` of /dev/null's number points where the
    /// test wants it.
    struct FakeSys {
        _root: tempfile::TempDir,
        sys: PathBuf,
        dev: PathBuf,
    }

    impl FakeSys {
        fn new() -> FakeSys {
            let root = tempfile::tempdir().unwrap();
            let (sys, dev) = (root.path().join("sys"), root.path().join("dev"));
            for d in [sys.join("dev/char"), sys.join("class/nvme"), dev.clone()] {
                std::fs::create_dir_all(d).unwrap();
            }
            FakeSys { _root: root, sys, dev }
        }

        /// A controller `nvmeN` below PCI function `bdf` with namespace entries
        /// (`nvme0n1` or a multipath path `nvme0c1n1`, NSID), linked in class/nvme.
        fn controller(&self, bdf: &str, name: &str, namespaces: &[(&str, u32)]) -> PathBuf {
            let ctrl = self.sys.join("devices/pci0000:00").join(bdf).join("nvme").join(name);
            std::fs::create_dir_all(&ctrl).unwrap();
            for (entry, nsid) in namespaces {
                std::fs::create_dir_all(ctrl.join(entry)).unwrap();
                std::fs::write(ctrl.join(entry).join("nsid"), format!("{nsid}\n")).unwrap();
            }
            std::os::unix::fs::symlink(&ctrl, self.sys.join("class/nvme").join(name)).unwrap();
            ctrl
        }

        /// Device nodes (regular files) under the fake /dev.
        fn nodes(&self, names: &[&str]) {
            for n in names {
                std::fs::write(self.dev.join(n), b"").unwrap();
            }
        }

        /// Makes `/dev/null` the character device at sysfs directory `to`.
        fn null_is(&self, to: &Path) {
            let null = std::fs::metadata("/dev/null").unwrap().rdev();
            let link = self
                .sys
                .join("dev/char")
                .join(format!("{}:{}", libc::major(null), libc::minor(null)));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(to, link).unwrap();
        }

        fn block(&self, name: &str) -> Node {
            Node {
                path: self.dev.join(name),
                block: true,
            }
        }
    }

    /// Without native multipath: controller nvme0 with namespaces 1 and 2 (disks
    /// nvme0n1, nvme0n2) and their generic nodes ng0n1, ng0n2, all below the controller.
    #[test]
    fn nvme_character_devices_claim_their_namespaces_block_devices() {
        let f = FakeSys::new();
        let ctrl = f.controller("0000:00:04.0", "nvme0", &[("nvme0n1", 1), ("nvme0n2", 2)]);
        for g in ["ng0n1", "ng0n2"] {
            std::fs::create_dir_all(ctrl.join(g)).unwrap();
        }
        f.nodes(&["nvme0n1", "nvme0n2"]);
        let null = || Target::NvmeGeneric("/dev/null".into());
        f.null_is(&ctrl.join("ng0n2"));
        assert_eq!(nodes_for(&f.sys, &f.dev, &null(), "DEV").unwrap(), [f.block("nvme0n2")]);
        let both = [f.block("nvme0n1"), f.block("nvme0n2")];
        assert_eq!(controller_claim_nodes(&f.sys, &f.dev, &null(), "DEV").unwrap(), both);
        f.null_is(&ctrl);
        let ctrl_target = Target::NvmeController("/dev/null".into());
        assert_eq!(nodes_for(&f.sys, &f.dev, &ctrl_target, "DEV").unwrap(), both);
        // A namespace without a block device node is claimed on its generic node.
        std::fs::remove_file(f.dev.join("nvme0n1")).unwrap();
        f.nodes(&["ng0n1"]);
        let got = nodes_for(&f.sys, &f.dev, &ctrl_target, "DEV").unwrap();
        assert_eq!(
            got[0],
            Node {
                path: f.dev.join("ng0n1"),
                block: false
            }
        );
    }

    /// Native multipath as Linux lays it out: subsystem nvme-subsys0 holds the head
    /// disks nvme0n1, nvme0n2, their generic nodes ng0n1, ng0n2 (the only ones: no
    /// per-path generic nodes) and links to its controllers nvme0 and nvme1; each
    /// controller holds its hidden path disks nvme0cXnY.
    #[test]
    fn multipath_generic_nodes_claim_the_head_block_devices() {
        let f = FakeSys::new();
        f.controller("0000:00:04.0", "nvme0", &[("nvme0c0n1", 1), ("nvme0c0n2", 2)]);
        f.controller("0000:00:05.0", "nvme1", &[("nvme0c1n1", 1), ("nvme0c1n2", 2)]);
        let subsys = f.sys.join("devices/virtual/nvme-subsystem/nvme-subsys0");
        for d in ["nvme0n1", "nvme0n2", "ng0n1", "ng0n2"] {
            std::fs::create_dir_all(subsys.join(d)).unwrap();
        }
        for c in ["nvme0", "nvme1"] {
            std::os::unix::fs::symlink(f.sys.join("class/nvme").join(c), subsys.join(c)).unwrap();
        }
        f.nodes(&["nvme0n1", "nvme0n2", "ng0n1", "ng0n2"]);
        f.null_is(&subsys.join("ng0n2"));
        let ng = Target::NvmeGeneric("/dev/null".into());
        assert_eq!(nodes_for(&f.sys, &f.dev, &ng, "DEV").unwrap(), [f.block("nvme0n2")]);
        assert_eq!(controllers_of(&f.sys, &ng).unwrap(), ["nvme0", "nvme1"]);
        // Both controllers list both namespaces: each block device once, or the second
        // O_EXCL open would fail against the first.
        assert_eq!(
            controller_claim_nodes(&f.sys, &f.dev, &ng, "DEV").unwrap(),
            [f.block("nvme0n1"), f.block("nvme0n2")]
        );
    }

    /// udevd holds `LOCK_SH` on a whole disk while it probes; a writer's claim on a
    /// block device waits for it (a bounded time) instead of failing. A regular file
    /// is refused at once.
    #[test]
    fn a_block_device_claim_waits_for_a_brief_shared_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (_, spec) = file_target(&dir);
        let path = PathBuf::from(&spec);
        let holder = File::open(&path).unwrap();
        // SAFETY: flock(2) on a descriptor `holder` owns; no memory is passed.
        let locked = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        assert_eq!(locked, 0);
        let file_node = Node {
            path: path.clone(),
            block: false,
        };
        let e = take(&file_node, &spec, Access::Exclusive).unwrap_err();
        assert!(matches!(e, ClaimError::InUse { .. }), "{e}");
        let (tx, rx) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(holder);
        });
        rx.recv().unwrap();
        // O_EXCL without O_CREAT is ignored on a regular file (open(2)), so the file
        // stands in for a block device here.
        let block_node = Node { path, block: true };
        let start = std::time::Instant::now();
        let got = take(&block_node, &spec, Access::Exclusive);
        release.join().unwrap();
        assert!(got.is_ok(), "{:?}", got.err().map(|e| e.to_string()));
        assert!(start.elapsed() < BLOCK_LOCK_WAIT, "{:?}", start.elapsed());
    }
}
