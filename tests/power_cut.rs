//! QEMU killed mid-write: the VDE on VFIO keeps every acknowledged put and delete when
//! QEMU dies abruptly, and nothing unacknowledged is half-visible.
//!
//! This is a process crash, not a power loss: QEMU's disk images live in the host's page
//! cache, which keeps every write QEMU made, flushed by the guest or not, so no write the
//! guest's device completed is ever lost or torn. (The names say "power cut" for history.)
//! The states a power loss can leave — unflushed writes lost in any subset, writes torn —
//! are checked by crash-state enumeration: `tests/crash_states.rs` (the simulator's write
//! log) and `tests/crash_logwrites.rs` (QEMU blklogwrites' log of a guest run).
//!
//! [`power_cuts_in_qemu`] runs on the host (scripts/test runs it): it boots the default
//! topology with `qemu/run --disks DIR` [`ROUNDS`] + 1 times. Each boot runs
//! [`round_in_guest`] in the guest, which binds the 4 KiB VFIO controller, formats the
//! store (first boot) or opens it (recovery from the journal), checks every earlier
//! round against its log, runs fsck, and then writes with two threads (a third
//! checkpoints at random moments) until the host kills QEMU (SIGKILL, via SIGTERM to `qemu/run`) at a random moment. The next boot
//! finds the disks as the dead QEMU left them. The last boot only checks.
//!
//! The log is exact: each line goes to the run directory (9p, written through to the
//! host before `write` returns) before the operation starts (`S`) and after it is
//! acknowledged (`A`). So for each key the store must hold the last acknowledged state,
//! or the result of the one operation that started and was not acknowledged.

mod common;
mod vde_suite;

use ironvme::vde::{Vde, VdeError, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vde_suite::{check_value, value};

/// Boots that end in a power cut; one more boot checks the last.
const ROUNDS: u64 = 4;
/// Writer threads in the guest, each with its own keys.
const THREADS: u64 = 2;
/// Keys per writer thread and round.
const KEYS: u64 = 6;
/// The guest's log file in the run directory.
const LOG: &str = "power-cut.log";

fn options() -> VdeOptions {
    VdeOptions {
        cache_blocks: 64,
        lanes: 4,
        staging_bytes: 512 * 1024,
        ..VdeOptions::default()
    }
}

fn env_u64(var: &str) -> u64 {
    common::env(var).parse().unwrap_or_else(|e| panic!("{var}: {e}"))
}

/// The next number of an xorshift64 sequence.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn key(round: u64, thread: u64, i: u64) -> String {
    format!("r{round}/t{thread}/k{i}")
}

/// What a key may hold after the cut: its last acknowledged state, and the result of the
/// operation in flight, if any. `Some(n)`: the value of operation `n`; `None`: no object.
#[derive(Debug, Default)]
struct KeyLog {
    acked: Option<u64>,
    pending: Option<Option<u64>>,
    ops: u64,
}

/// Parses one round's log into the keys' states. A last line cut short is dropped: its
/// operation had not started (it starts only after the whole line is written).
fn parse_log(text: &str) -> BTreeMap<String, KeyLog> {
    let mut keys: BTreeMap<String, KeyLog> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let k = match f.as_slice() {
            ["S", k, _, "put", _] | ["S", k, _, "del"] | ["A", k, _] => *k,
            _ if !text.ends_with('\n') && text.lines().last() == Some(line) => continue,
            _ => panic!("malformed log line {line:?}"),
        };
        let n: u64 = f[2].parse().unwrap();
        let e = keys.entry(k.to_string()).or_default();
        match f[0] {
            "S" => {
                assert!(e.pending.is_none(), "{k}: two operations in flight");
                e.pending = Some((f[3] == "put").then_some(n));
                e.ops += 1;
            }
            _ => {
                let done = e
                    .pending
                    .take()
                    .unwrap_or_else(|| panic!("{k}: ack {n} without a start"));
                assert!(done.is_none_or(|p| p == n), "{k}: ack {n} for another operation");
                e.acked = done;
            }
        }
    }
    keys
}

/// Checks the keys of `round` against its log; returns (keys, operations, keys whose
/// operation was cut, and of those how many show the new state).
fn check_round(vde: &Vde, round: u64, log: &str) -> (usize, u64, usize, usize) {
    let keys = parse_log(log);
    let (mut cut, mut landed) = (0, 0);
    for (k, e) in &keys {
        let got = match vde.get(k.as_bytes()) {
            Ok(v) => {
                let (writer, n) = check_value(k.as_bytes(), &v);
                assert_eq!(writer, round, "{k} holds a value of round {writer}");
                Some(n)
            }
            Err(VdeError::NotFound(_)) => None,
            Err(e) => panic!("round {round}: get {k}: {e}"),
        };
        let allowed = [Some(e.acked), e.pending].into_iter().flatten().collect::<Vec<_>>();
        assert!(
            allowed.contains(&got),
            "round {round}: {k} holds {got:?}; acknowledged {:?}, in flight {:?}",
            e.acked,
            e.pending
        );
        if let Some(p) = e.pending {
            cut += 1;
            landed += usize::from(got == p && p != e.acked);
        }
    }
    // Nothing the log does not name.
    for k in vde.keys(format!("r{round}/").as_bytes()) {
        let k = String::from_utf8(k.unwrap()).unwrap();
        assert!(keys.contains_key(&k), "round {round}: {k} exists but was never written");
    }
    (keys.len(), keys.values().map(|e| e.ops).sum(), cut, landed)
}

/// Appends lines to the log, each with one `write` (9p writes it through to the host
/// before returning).
struct Log(Mutex<std::fs::File>);

impl Log {
    fn line(&self, text: String) {
        let mut f = self.0.lock().unwrap();
        f.write_all(format!("{text}\n").as_bytes()).expect("write the log");
    }
}

/// One writer: puts (4 KiB to 1.5 MiB, most small) and deletes on its own keys, forever.
fn writer(vde: &Vde, log: &Log, round: u64, t: u64, seed: u64) {
    let mut x = seed ^ (round << 40) ^ (t << 20) | 1;
    let mut present = [false; KEYS as usize];
    for n in 0.. {
        let i = next(&mut x) % KEYS;
        let k = key(round, t, i);
        if present[i as usize] && next(&mut x) % 5 == 0 {
            log.line(format!("S {k} {n} del"));
            vde.delete(k.as_bytes()).unwrap_or_else(|e| panic!("delete {k}: {e}"));
            present[i as usize] = false;
        } else {
            let len = match next(&mut x) % 10 {
                0 => 256 * 1024 + next(&mut x) % (1280 * 1024),
                1..=4 => 16 * 1024 + next(&mut x) % (240 * 1024),
                _ => 1 + next(&mut x) % (16 * 1024),
            } as usize;
            log.line(format!("S {k} {n} put {len}"));
            vde.put(k.as_bytes(), &value(k.as_bytes(), round, n, len))
                .unwrap_or_else(|e| panic!("put {k}: {e}"));
            present[i as usize] = true;
        }
        log.line(format!("A {k} {n}"));
    }
}

/// One boot's work in the guest. Environment: IRONVME_POWER_CUT_ROUND (this boot),
/// IRONVME_POWER_CUT_LOGS (the host directory with `round<N>.log` of earlier rounds),
/// IRONVME_POWER_CUT_SEED.
#[test]
#[ignore = "guest: one boot of power_cuts_in_qemu"]
fn round_in_guest() {
    let round = env_u64("IRONVME_POWER_CUT_ROUND");
    let seed = env_u64("IRONVME_POWER_CUT_SEED");
    let logs = PathBuf::from(common::env("IRONVME_POWER_CUT_LOGS"));
    let ctrl = common::OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let open = || {
        Device::open(
            &ctrl.bdf,
            &OpenOptions {
                backend: Some(Backend::Vfio),
                ..Default::default()
            },
        )
        .expect("open the VFIO controller")
    };
    let vde = if round == 0 {
        Vde::format(open(), options()).expect("format")
    } else {
        let vde = Vde::open(open(), options()).expect("open after the power cut");
        let stats = vde.info().unwrap().pool;
        println!("round {round}: opened after the cut: {stats:?}");
        for r in 0..round {
            let log = std::fs::read_to_string(logs.join(format!("round{r}.log"))).unwrap();
            let (keys, ops, cut, landed) = check_round(&vde, r, &log);
            println!(
                "round {r}: {keys} keys, {ops} operations: every acknowledged one holds; \
                 {cut} cut in flight, {landed} of them landed whole"
            );
        }
        let report = vde.fsck().unwrap();
        assert!(report.clean(), "fsck after the cut: {:?}", report.violations);
        println!("round {round}: fsck clean ({} objects)", report.objects);
        vde
    };
    if round == ROUNDS {
        vde.close().unwrap();
        return;
    }
    let log = Log(Mutex::new(
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(Path::new(&common::env("IRONVME_RUN_DIR")).join(LOG))
            .unwrap(),
    ));
    println!("WRITING round {round}");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (vde, log) = (&vde, &log);
            s.spawn(move || writer(vde, log, round, t, seed));
        }
        // Checkpoints (metadata written home, the journal restarted) at random moments
        // too, so some cuts land in one.
        let vde = &vde;
        s.spawn(move || {
            let mut x = seed ^ round | 1;
            loop {
                std::thread::sleep(Duration::from_millis(100 + next(&mut x) % 400));
                vde.checkpoint().expect("checkpoint");
            }
        });
        std::thread::sleep(Duration::from_secs(300));
        panic!("no power cut came within 300 s");
    });
}

/// Boots QEMU ROUNDS + 1 times on the same disks, cutting the power of all but the last
/// at a random moment while the guest writes. IRONVME_POWER_CUT_SEED picks the workload
/// and the moments (default: from the clock; printed either way).
#[test]
#[ignore = "boots QEMU: run by scripts/test"]
fn power_cuts_in_qemu() {
    let seed = std::env::var("IRONVME_POWER_CUT_SEED")
        .ok()
        .map(|s| s.parse().expect("IRONVME_POWER_CUT_SEED"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("IRONVME_POWER_CUT_SEED={seed}");
    let mut x = seed | 1;
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disks, logs) = (work.path().join("disks"), work.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..=ROUNDS {
        let mut child = std::process::Command::new(common::repo().join("qemu/run"))
            .args(["--tty", "no", "--timeout", "600", "--disks"])
            .arg(&disks)
            .arg("--")
            .arg(&exe)
            .args([
                "--ignored",
                "--exact",
                "round_in_guest",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("IRONVME_POWER_CUT_ROUND", round.to_string())
            .env("IRONVME_POWER_CUT_SEED", seed.to_string())
            .env("IRONVME_POWER_CUT_LOGS", &logs)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run qemu/run");
        let out = child.stdout.take().unwrap();
        let mut writing = None;
        let (tx, rx) = std::sync::mpsc::channel();
        let relay = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let line = line.unwrap();
                println!("  | {line}");
                if line.contains("WRITING round") {
                    tx.send(()).ok();
                }
            }
        });
        if round < ROUNDS {
            // 0.5 to 6 s of writing (some hundreds of operations under TCG), then the cut.
            let after = Duration::from_millis(500 + next(&mut x) % 5500);
            rx.recv_timeout(Duration::from_secs(300))
                .unwrap_or_else(|_| panic!("round {round}: the guest never started writing (seed {seed})"));
            writing = Some(Instant::now());
            std::thread::sleep(after);
            println!("round {round}: power cut {:.2} s into the writes", after.as_secs_f64());
            // SAFETY: kill(2) on our child qemu/run, which kills QEMU with SIGKILL.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let status = child.wait().unwrap();
        relay.join().unwrap();
        if round < ROUNDS {
            assert_eq!(
                status.code(),
                Some(128 + libc::SIGTERM),
                "round {round}: qemu/run (seed {seed})"
            );
            let log = disks.join("run").join(LOG);
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            println!(
                "round {round}: {} operations started, {} acknowledged in {:.1} s",
                text.lines().filter(|l| l.starts_with("S ")).count(),
                text.lines().filter(|l| l.starts_with("A ")).count(),
                writing.unwrap().elapsed().as_secs_f64()
            );
            std::fs::write(logs.join(format!("round{round}.log")), text).unwrap();
        } else {
            assert!(
                status.success(),
                "the last boot's checks failed (seed {seed}): {status}"
            );
        }
    }
}
