//! `ironvme serve`: the block export target (NVMe/TCP and NBD), configured from the
//! command line or a TOML file.
//!
//! The command line serves one subsystem:
//! `serve --nvme-tcp 127.0.0.1:4420 --nqn NQN --namespace SPEC... --allow-host HOSTNQN...`,
//! and NBD exports with `--nbd 127.0.0.1:10809 --export NAME=SPEC...`. A `--config`
//! file can name several subsystems and listeners:
//!
//! ```toml
//! nvme_tcp = ["127.0.0.1:4420"]    # listeners
//! nbd = "127.0.0.1:10809"          # optional
//! poll_groups = 1                  # optional
//! cpumask = "0x2"                  # optional: one poll group pinned to each CPU (a string)
//! idle_spin_us = 1000              # optional: polling after the last work, µs (0: none)
//!
//! [[subsystem]]
//! nqn = "nqn.2026-12.io.ironvme:disk0"
//! namespaces = ["0000:00:05.0", "vde:/dev/nvme0n1:vol"]   # NSIDs 1, 2, ...
//! allow_hosts = ["nqn.2014-08.org.nvmexpress:uuid:..."]  # or allow_any_host = true
//! serial = "..."                   # optional (default: from the NQN)
//! model = "ironvme"                # optional
//!
//! [[export]]                       # NBD
//! name = "disk"
//! spec = "/dev/nvme0n2"
//! ```
//!
//! Each device is opened once, with an exclusive claim, however many times it is named.

use crate::cli::CliError;
use crate::export::nvme_tcp::ctrl::{DISCOVERY_NQN, HostPolicy, Subsystem, Target};
use crate::export::nvme_tcp::{Namespace, Stats};
use crate::export::{Backing, OpenedDevices, Stop, nbd};
use clap::Args;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve NVMe/TCP on ADDR:PORT (default 127.0.0.1:4420). Listens only where told.
    #[arg(long = "nvme-tcp", value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:4420")]
    pub nvme_tcp: Option<SocketAddr>,
    /// The subsystem's NQN (nqn.YYYY-MM.reverse-domain:name).
    #[arg(long, value_name = "NQN")]
    pub nqn: Option<String>,
    /// A namespace of the subsystem, NSIDs in order: a PCI address, /dev/nvmeXnY,
    /// /dev/ngXnY, a file, or vde:DEV:VOL; `SPEC,nsid=N` serves namespace N of a
    /// controller instead of its first. Naming it lets initiators write it; a device in
    /// use (mounted, held) is refused.
    #[arg(long = "namespace", value_name = "SPEC")]
    pub namespaces: Vec<String>,
    /// A host NQN allowed to connect (repeatable).
    #[arg(long = "allow-host", value_name = "HOSTNQN")]
    pub allow_hosts: Vec<String>,
    /// Let any host connect.
    #[arg(long, conflicts_with = "allow_hosts")]
    pub allow_any_host: bool,
    /// Serial number the subsystem's controllers report (default: from the NQN).
    #[arg(long, value_name = "SN")]
    pub serial: Option<String>,
    /// Serve NBD on ADDR:PORT (default 127.0.0.1:10809).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:10809")]
    pub nbd: Option<SocketAddr>,
    /// An NBD export: NAME=SPEC (repeatable; SPEC as --namespace takes it).
    #[arg(long = "export", value_name = "NAME=SPEC")]
    pub exports: Vec<String>,
    /// Read listeners, subsystems and exports from a TOML file (instead of the flags
    /// above).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nvme_tcp", "nqn", "namespaces", "nbd", "exports"])]
    pub config: Option<PathBuf>,
    /// NVMe/TCP poll groups (worker threads), each with its own backend queues.
    #[arg(long, value_name = "N")]
    pub poll_groups: Option<usize>,
    /// Run one poll group on each of these CPUs, pinned, read as SPDK reads its reactor
    /// mask (`-m`): a hex mask, `0x` optional (0x6 and 6 are CPUs 1 and 2), or a list in
    /// brackets (`[1,2]` or `[1-2]`). A poll group spins while I/O is in flight and for
    /// --idle-spin-us after: give it CPUs the initiators and other work do not need.
    #[arg(long, short = 'm', value_name = "MASK")]
    pub cpumask: Option<String>,
    /// How long, in µs, a poll group keeps polling after its last work before it sleeps
    /// in epoll_wait (default 1000, at most 1000000). A host at low queue depth then finds
    /// it polling rather than asleep (lower latency, for a CPU busy while I/O flows); 0
    /// sleeps at once.
    #[arg(long, value_name = "USEC")]
    pub idle_spin_us: Option<u64>,
    /// Print a stats line (connections, IOPS, errors) every SECS seconds; 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stats: u64,
    /// Stats lines as JSON objects.
    #[arg(long)]
    pub json: bool,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NVMe/TCP listeners.
    #[serde(default)]
    pub nvme_tcp: Vec<SocketAddr>,
    /// The NBD listener.
    pub nbd: Option<SocketAddr>,
    /// Poll groups.
    pub poll_groups: Option<usize>,
    /// CPUs for the poll groups, one pinned poll group each (`--cpumask`).
    pub cpumask: Option<String>,
    /// Polling after a poll group's last work, µs (`--idle-spin-us`).
    pub idle_spin_us: Option<u64>,
    /// Subsystems.
    #[serde(default)]
    pub subsystem: Vec<SubsystemConfig>,
    /// NBD exports.
    #[serde(default)]
    pub export: Vec<ExportConfig>,
}

/// One `[[subsystem]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// NQN.
    pub nqn: String,
    /// Namespace specs, NSID 1 first.
    pub namespaces: Vec<String>,
    /// Host NQNs allowed.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Any host may connect.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Serial number.
    pub serial: Option<String>,
    /// Model number.
    pub model: Option<String>,
}

/// One `[[export]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Export name.
    pub name: String,
    /// Device spec.
    pub spec: String,
}

impl ServeArgs {
    /// The configuration the flags (or the file) describe.
    ///
    /// Errors: [`CliError::Invalid`] for an unreadable file; [`CliError::Usage`] for a
    /// malformed one, or flags that do not make a target.
    pub fn config(&self) -> Result<Config, CliError> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", path.display())))?;
            let mut c: Config =
                toml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            // A CPU mask on the command line replaces the file's placement, poll group
            // count included.
            if self.cpumask.is_some() {
                c.cpumask = self.cpumask.clone();
                c.poll_groups = None;
            }
            c.poll_groups = self.poll_groups.or(c.poll_groups);
            c.idle_spin_us = self.idle_spin_us.or(c.idle_spin_us);
            return Ok(c);
        }
        let mut c = Config {
            nvme_tcp: self.nvme_tcp.into_iter().collect(),
            nbd: self.nbd,
            poll_groups: self.poll_groups,
            cpumask: self.cpumask.clone(),
            idle_spin_us: self.idle_spin_us,
            ..Default::default()
        };
        if self.nvme_tcp.is_some() || !self.namespaces.is_empty() {
            let nqn = self
                .nqn
                .clone()
                .ok_or_else(|| CliError::Usage("--nvme-tcp needs --nqn NQN for its subsystem".into()))?;
            c.subsystem.push(SubsystemConfig {
                nqn,
                namespaces: self.namespaces.clone(),
                allow_hosts: self.allow_hosts.clone(),
                allow_any_host: self.allow_any_host,
                serial: self.serial.clone(),
                model: None,
            });
        }
        for e in &self.exports {
            let (name, spec) = e
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--export {e:?}: expected NAME=SPEC")))?;
            c.export.push(ExportConfig {
                name: name.into(),
                spec: spec.into(),
            });
        }
        Ok(c)
    }
}

impl Config {
    /// How long a poll group keeps polling after its last work: `idle_spin_us`, or
    /// [`DEFAULT_IDLE_SPIN`](crate::export::nvme_tcp::DEFAULT_IDLE_SPIN).
    pub fn idle_spin(&self) -> Duration {
        self.idle_spin_us
            .map_or(crate::export::nvme_tcp::DEFAULT_IDLE_SPIN, Duration::from_micros)
    }

    /// Checks that the configuration makes a target: listeners with something to serve,
    /// valid NQNs, hosts named (or any allowed), unique names.
    ///
    /// Errors: [`CliError::Usage`] saying what is missing or wrong.
    pub fn check(&self) -> Result<(), CliError> {
        let bad = |m: String| Err(CliError::Usage(m));
        if self.nvme_tcp.is_empty() && self.nbd.is_none() {
            return bad("nothing to serve on: give --nvme-tcp ADDR:PORT and/or --nbd ADDR:PORT".into());
        }
        if !self.nvme_tcp.is_empty() && self.subsystem.is_empty() {
            return bad("--nvme-tcp needs a subsystem: --nqn NQN --namespace SPEC".into());
        }
        if self.nvme_tcp.is_empty() && !self.subsystem.is_empty() {
            return bad("subsystems need an NVMe/TCP listener (--nvme-tcp ADDR:PORT)".into());
        }
        if self.nvme_tcp.is_empty() && self.cpumask.is_some() {
            return bad("--cpumask places NVMe/TCP poll groups, and nothing is served over NVMe/TCP".into());
        }
        if self.nvme_tcp.is_empty() && self.idle_spin_us.is_some() {
            return bad("--idle-spin-us is the NVMe/TCP poll groups', and nothing is served over NVMe/TCP".into());
        }
        if let Some(us) = self.idle_spin_us
            && us > MAX_IDLE_SPIN_US
        {
            return bad(format!(
                "--idle-spin-us {us}: at most {MAX_IDLE_SPIN_US} (1 s); past that a poll group is simply always polling"
            ));
        }
        if self.nbd.is_some() == self.export.is_empty() {
            return bad("--nbd and --export go together: --nbd ADDR:PORT --export NAME=SPEC".into());
        }
        let mut nqns = std::collections::HashSet::new();
        for s in &self.subsystem {
            check_nqn(&s.nqn)?;
            if s.nqn == DISCOVERY_NQN || !nqns.insert(&s.nqn) {
                return bad(format!("subsystem NQN {} is used twice or is the discovery NQN", s.nqn));
            }
            if s.namespaces.is_empty() {
                return bad(format!("subsystem {} has no namespaces (--namespace SPEC)", s.nqn));
            }
            if s.allow_hosts.is_empty() && !s.allow_any_host {
                return bad(format!(
                    "subsystem {}: no host may connect; give --allow-host HOSTNQN (see /etc/nvme/hostnqn on the \
                     host) or --allow-any-host",
                    s.nqn
                ));
            }
            for h in &s.allow_hosts {
                check_nqn(h)?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.export {
            if e.name.is_empty() || e.name.len() > 4096 || !names.insert(&e.name) {
                return bad(format!("NBD export name {:?} is empty, too long or used twice", e.name));
            }
        }
        Ok(())
    }
}

/// An NQN: `nqn.` then at most 223 bytes in all (NVMe Base 2.0, 4.5).
fn check_nqn(nqn: &str) -> Result<(), CliError> {
    if !nqn.starts_with("nqn.") || nqn.len() > 223 || nqn.bytes().any(|b| !(0x20..0x7F).contains(&b)) {
        return Err(CliError::Usage(format!(
            "{nqn:?} is not an NQN (\"nqn.\" followed by printable ASCII, at most 223 bytes)"
        )));
    }
    Ok(())
}

/// The longest `--idle-spin-us` taken: 1 s.
const MAX_IDLE_SPIN_US: u64 = 1_000_000;

/// A default serial number: 20 hex digits of the NQN's hash.
fn serial_of(nqn: &str) -> String {
    format!("{:020x}", xxhash_rust::xxh3::xxh3_64(nqn.as_bytes()) as u128)[..20].to_string()
}

/// Runs `serve`.
///
/// Errors: configuration errors, devices that cannot be opened or are in use, addresses
/// that cannot be bound, poll groups that cannot start.
pub fn run(args: &ServeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let config = args.config()?;
    config.check()?;
    // Checked before any device is opened.
    let placement = placement(config.poll_groups, config.cpumask.as_deref())?;
    let idle_spin = config.idle_spin();
    let stop = Stop::on_signals().map_err(|e| CliError::Device(format!("cannot install signal handlers: {e}")))?;
    // Open every device once.
    let mut opened: HashMap<String, Arc<Backing>> = HashMap::new();
    let mut devices = OpenedDevices::default();
    let open = |opened: &mut HashMap<String, Arc<Backing>>,
                devices: &mut OpenedDevices,
                spec: &str|
     -> Result<Arc<Backing>, CliError> {
        if let Some(b) = opened.get(spec) {
            return Ok(Arc::clone(b));
        }
        let b = Arc::new(Backing::open_in(spec, devices)?);
        tracing::info!(
            spec,
            backend = %b.device.backend(),
            nsid = b.info.nsid,
            block_size = b.info.block_size,
            blocks = b.info.blocks,
            "opened"
        );
        opened.insert(spec.to_string(), Arc::clone(&b));
        Ok(b)
    };
    let specs: Vec<&str> = (config.subsystem.iter())
        .flat_map(|s| s.namespaces.iter().map(String::as_str))
        .chain(config.export.iter().map(|e| e.spec.as_str()))
        .collect();
    // Controllers named by PCI address are brought up together, after every other
    // device was opened and claimed: a refused claim then resets none of them.
    let together = OpenedDevices::together(&specs)?;
    for &spec in &specs {
        if OpenedDevices::together(&[spec])?.is_empty() {
            open(&mut opened, &mut devices, spec)?;
        }
    }
    devices.open_controllers(&together)?;
    let mut subsystems = vec![Arc::new(Subsystem::new(
        DISCOVERY_NQN.into(),
        serial_of(DISCOVERY_NQN),
        "ironvme discovery".into(),
        Vec::new(),
        HostPolicy::Any,
    ))];
    let mut index = 0;
    for s in &config.subsystem {
        let mut namespaces = Vec::new();
        for (i, spec) in s.namespaces.iter().enumerate() {
            namespaces.push(Namespace::new(
                &s.nqn,
                i as u32 + 1,
                open(&mut opened, &mut devices, spec)?,
                index,
            ));
            index += 1;
        }
        let hosts = if s.allow_any_host {
            HostPolicy::Any
        } else {
            HostPolicy::Only(s.allow_hosts.clone())
        };
        subsystems.push(Arc::new(Subsystem::new(
            s.nqn.clone(),
            s.serial.clone().unwrap_or_else(|| serial_of(&s.nqn)),
            s.model.clone().unwrap_or_else(|| "ironvme".into()),
            namespaces,
            hosts,
        )));
    }
    let mut exports = Vec::new();
    for e in &config.export {
        exports.push(nbd::Export {
            name: e.name.clone(),
            backing: open(&mut opened, &mut devices, &e.spec)?,
        });
    }
    let bind = |addr: &SocketAddr| {
        TcpListener::bind(addr).map_err(|e| CliError::Device(format!("cannot listen on {addr}: {e}")))
    };
    let listeners = config.nvme_tcp.iter().map(bind).collect::<Result<Vec<_>, _>>()?;
    let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let nbd_listener = config.nbd.as_ref().map(bind).transpose()?;
    let target = Arc::new(Target {
        subsystems,
        listeners: bound.clone(),
    });
    for addr in &bound {
        for s in target.subsystems.iter().skip(1) {
            tracing::info!(%addr, nqn = %s.nqn, namespaces = s.namespaces.len(), "serving NVMe/TCP");
        }
    }
    if let Some(l) = &nbd_listener {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), exports = exports.len(), "serving NBD");
    }
    raise_open_file_limit();
    let stats = Arc::new(Stats::default());
    let result = std::thread::scope(|s| {
        let nbd_thread = nbd_listener.map(|l| {
            let stop = stop.clone();
            s.spawn(move || {
                let r = nbd::serve(l, exports, stop.clone());
                // An NBD server that failed early stops the NVMe/TCP side too.
                stop.set();
                r
            })
        });
        let nvme_thread = (!listeners.is_empty()).then(|| {
            let (target, stop, stats) = (Arc::clone(&target), stop.clone(), Arc::clone(&stats));
            s.spawn(move || {
                let r = crate::export::nvme_tcp::serve(listeners, target, &placement, idle_spin, stop.clone(), stats);
                stop.set();
                r
            })
        });
        // This thread reports (it owns standard output) until a signal or a failed server
        // sets `stop`.
        let every = (args.stats > 0).then(|| Duration::from_secs(args.stats));
        report(out, &stats, &stop, every, args.json);
        let nvme = match nvme_thread.map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the NVMe/TCP target panicked".to_string()),
            None => Ok(()),
        };
        let nbd = nbd_thread.map(|t| t.join());
        nvme.map_err(CliError::Device)?;
        match nbd {
            Some(Ok(Err(e))) => Err(CliError::Device(format!("NBD: {e}"))),
            Some(Err(_)) => Err(CliError::Device("the NBD server panicked".into())),
            _ => Ok(()),
        }
    });
    tracing::info!("stopped: outstanding I/O drained, namespaces flushed");
    result
}

/// The CPU of each poll group (`None`: not pinned), from `--poll-groups` and
/// `--cpumask`: one pinned poll group per CPU of the mask, or `poll_groups` (default 1)
/// unpinned ones.
///
/// Errors: [`CliError::Usage`] for a malformed mask or a `poll_groups` that differs from
/// the mask's CPU count; [`CliError::Invalid`] for a CPU this process may not run on (its
/// affinity, as `taskset` or a cgroup set it: a fact of this machine, not of the command
/// line).
fn placement(poll_groups: Option<usize>, cpumask: Option<&str>) -> Result<Vec<Option<usize>>, CliError> {
    let Some(mask) = cpumask else {
        return Ok(vec![None; poll_groups.unwrap_or(1).max(1)]);
    };
    let cpus = parse_cpumask(mask).map_err(|e| CliError::Usage(format!("--cpumask {mask}: {e}")))?;
    super::io_shared::cpus::check_allowed(&format!("--cpumask {mask}"), &cpus)?;
    if let Some(n) = poll_groups
        && n != cpus.len()
    {
        return Err(CliError::Usage(format!(
            "--poll-groups {n} but --cpumask {mask} names {} CPU(s): one poll group runs on each",
            cpus.len()
        )));
    }
    Ok(cpus.into_iter().map(Some).collect())
}

/// Parses a CPU mask as SPDK's `-m` takes it (`spdk_cpuset_parse`): a hex mask, `0x`
/// optional (`0x6` and `6`: CPUs 1 and 2), or a list of CPUs and ranges in brackets
/// (`[1,2]`, `[0-3,8]`). Returns the CPUs in ascending order, without repeats.
///
/// Errors: an empty mask, a bad hex digit, number or range, a CPU beyond what
/// `sched_setaffinity` can name.
fn parse_cpumask(mask: &str) -> Result<Vec<usize>, String> {
    let limit = nix::sched::CpuSet::count();
    let mut cpus = std::collections::BTreeSet::new();
    let m = mask.trim();
    if let Some(list) = m.strip_prefix('[') {
        let list = list.strip_suffix(']').ok_or("a list opened with [ must end with ]")?;
        cpus.extend(super::io_shared::units::parse_cpu_list(list)?.0);
    } else {
        let hex = m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")).unwrap_or(m);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("not a hex mask (0x6) or a list in brackets ([1,2])".into());
        }
        for (i, d) in hex.bytes().rev().enumerate() {
            let v = (d as char).to_digit(16).unwrap_or(0);
            for bit in 0..4 {
                if v & (1 << bit) != 0 {
                    cpus.insert(i * 4 + bit);
                }
            }
        }
    }
    if cpus.is_empty() {
        return Err("names no CPU".into());
    }
    if let Some(&c) = cpus.iter().find(|&&c| c >= limit) {
        return Err(format!("CPU {c} is beyond the {limit} CPUs sched_setaffinity can name"));
    }
    Ok(cpus.into_iter().collect())
}

/// Raises the soft limit on open files (RLIMIT_NOFILE) so the target can hold the
/// connections it promises (NVMe/TCP's and NBD's `MAX_CONNECTIONS`, and the devices and
/// epoll instances besides), up to the hard limit; warns when the hard limit is lower.
/// The usual soft limit of 1024 would leave connections past it in the listen backlog,
/// neither served nor refused.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = (crate::export::nvme_tcp::MAX_CONNECTIONS + nbd::MAX_CONNECTIONS + 1024) as u64;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    let new = want.min(hard);
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
        tracing::warn!(%e, soft, "cannot raise the open-file limit");
    } else if new < want {
        tracing::warn!(
            limit = new,
            want,
            "the open-file hard limit (ulimit -Hn) caps the connections served"
        );
    }
}

/// Until `stop` is set, writes a stats line to `out` every `every` (none when `None`).
fn report(out: &mut dyn Write, stats: &Stats, stop: &Stop, every: Option<Duration>, json: bool) {
    let mut last = (Instant::now(), stats.ios.load(Ordering::Relaxed));
    while !stop.is_set() {
        std::thread::sleep(crate::export::STOP_POLL);
        if every.is_none_or(|e| last.0.elapsed() < e) {
            continue;
        }
        let ios = stats.ios.load(Ordering::Relaxed);
        let secs = last.0.elapsed().as_secs_f64();
        let iops = (ios - last.1) as f64 / secs;
        let (conns, errors) = (
            stats.connections.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
        let line = if json {
            serde_json::json!({"connections": conns, "iops": iops.round(), "ios": ios, "errors": errors}).to_string()
        } else {
            format!("connections {conns}  IOPS {iops:.0}  I/Os {ios}  errors {errors}")
        };
        // A closed standard output must not stop the target.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        last = (Instant::now(), ios);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cpumask_forms() {
        // As SPDK reads -m: hex with or without 0x, lists only in brackets.
        assert_eq!(parse_cpumask("0x6"), Ok(vec![1, 2]));
        assert_eq!(parse_cpumask("6"), Ok(vec![1, 2]));
        assert_eq!(parse_cpumask("0X1"), Ok(vec![0]));
        assert_eq!(parse_cpumask("1"), Ok(vec![0]));
        assert_eq!(parse_cpumask("0x10"), Ok(vec![4]));
        assert_eq!(parse_cpumask("[3,1,1]"), Ok(vec![1, 3]));
        assert_eq!(parse_cpumask("[0-2,8]"), Ok(vec![0, 1, 2, 8]));
        assert_eq!(parse_cpumask("[0, 2]"), Ok(vec![0, 2]));
    }

    #[test]
    fn cpumask_errors() {
        for bad in [
            "",
            "0x",
            "0x0",
            "0",
            "0xg",
            "g",
            "1,2",
            "[1,]",
            "[3-1]",
            "[-1]",
            "[1-]",
            "[1",
            "[99999]",
            "[0-99999]",
        ] {
            assert!(parse_cpumask(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_cpumask("[0-99999]").unwrap_err().contains("beyond"));
    }

    #[test]
    fn placement_follows_the_mask_or_the_group_count() {
        assert_eq!(placement(None, None).unwrap(), vec![None]);
        assert_eq!(placement(Some(3), None).unwrap(), vec![None; 3]);
        // A CPU this test may run on (taskset or a cpuset may leave out CPU 0).
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        let cpu = (0..nix::sched::CpuSet::count())
            .find(|&c| allowed.is_set(c).unwrap_or(false))
            .unwrap();
        let mask = format!("[{cpu}]");
        assert_eq!(placement(None, Some(&mask)).unwrap(), vec![Some(cpu)]);
        assert_eq!(placement(Some(1), Some(&mask)).unwrap(), vec![Some(cpu)]);
        assert!(placement(Some(2), Some(&mask)).is_err());
    }

    #[test]
    fn a_command_line_cpumask_replaces_the_files_placement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "nvme_tcp = [\"127.0.0.1:4420\"]\npoll_groups = 2\n[[subsystem]]\nnqn = \"nqn.2026-12.io.ironvme:t\"\n\
             namespaces = [\"/dev/null\"]\nallow_any_host = true\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v = vec!["serve", "--config", path.to_str().unwrap()];
            v.extend_from_slice(extra);
            crate::cli::Cli::try_parse_from(std::iter::once("ironvme").chain(v)).unwrap()
        };
        let config = |cli: crate::cli::Cli| match cli.command {
            crate::cli::Command::Serve(a) => a.config().unwrap(),
            _ => unreachable!(),
        };
        let c = config(args(&[]));
        assert_eq!((c.poll_groups, c.cpumask.as_deref()), (Some(2), None));
        let c = config(args(&["--cpumask", "0x1"]));
        assert_eq!((c.poll_groups, c.cpumask.as_deref()), (None, Some("0x1")));
    }

    #[test]
    fn the_idle_spin_comes_from_the_flag_over_the_file_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        let file = |extra: &str| {
            std::fs::write(
                &path,
                format!(
                    "nvme_tcp = [\"127.0.0.1:4420\"]\n{extra}[[subsystem]]\nnqn = \"nqn.2026-12.io.ironvme:t\"\n\
                     namespaces = [\"/dev/null\"]\nallow_any_host = true\n"
                ),
            )
            .unwrap()
        };
        let config = |extra: &[&str]| {
            let mut v = vec!["ironvme", "serve", "--config", path.to_str().unwrap()];
            v.extend_from_slice(extra);
            match crate::cli::Cli::try_parse_from(v).unwrap().command {
                crate::cli::Command::Serve(a) => a.config().unwrap(),
                _ => unreachable!(),
            }
        };
        file("");
        assert_eq!(config(&[]).idle_spin_us, None);
        assert_eq!(config(&[]).idle_spin(), crate::export::nvme_tcp::DEFAULT_IDLE_SPIN);
        assert_eq!(config(&["--idle-spin-us", "7"]).idle_spin(), Duration::from_micros(7));
        file("idle_spin_us = 1000000\n");
        assert!(config(&[]).check().is_ok(), "1 s is the bound, and allowed");
        file("idle_spin_us = 250\n");
        assert_eq!(config(&[]).idle_spin_us, Some(250));
        assert_eq!(config(&["--idle-spin-us", "0"]).idle_spin_us, Some(0));
        assert!(config(&[]).check().is_ok());
        file("idle_spin_us = 1000001\n");
        let e = config(&[]).check().unwrap_err();
        assert!(e.to_string().contains("at most 1000000"), "{e}");
        // Only NBD: no poll group to spin.
        let nbd = crate::cli::Cli::try_parse_from([
            "ironvme",
            "serve",
            "--nbd",
            "127.0.0.1:10809",
            "--export",
            "d=/dev/null",
            "--idle-spin-us",
            "5",
        ])
        .unwrap();
        let crate::cli::Command::Serve(a) = nbd.command else {
            unreachable!()
        };
        let e = a.config().unwrap().check().unwrap_err();
        assert!(e.to_string().contains("nothing is served over NVMe/TCP"), "{e}");
    }
}
