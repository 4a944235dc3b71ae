//! Guest tests of the rig's fault injection: the `ironvme-fault` controller, whose reads of
//! one LBA fail with Unrecovered Read Error, and the channel to QEMU's monitor that holds
//! and releases I/O with blkdebug breakpoints (README, "QEMU test hardware").
//!
//! They drive the fault controller through the kernel nvme driver, which owns it at boot,
//! and need the guest started by `qemu/run` (default topology): every test is ignored on
//! the host, and `scripts/test` runs them in the guest with `--ignored --test-threads=1`.
//! By hand:
//!
//! ```text
//! cargo test --no-run --test guest_rig_faults
//! qemu/run -- target/debug/deps/guest_rig_faults-<hash> --ignored --test-threads=1
//! ```
//!
//! A test that sets a breakpoint removes or resumes it before it ends, also when it fails:
//! a request left held deadlocks QEMU 7.2 when the controller is reset or the guest powers
//! off (qemu/run then fails the run with that reason).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The fault controller's LBA size.
const LBA: usize = 4096;
/// `O_DIRECT` on x86-64 Linux (the root package does not depend on libc).
const O_DIRECT: i32 = 0o40000;
/// `EBUSY`: a virtio port is already open (one opener at a time).
const EBUSY: i32 = 16;
/// `ENODATA`: what the block layer makes of a medium error (`BLK_STS_MEDIUM`).
const ENODATA: i32 = 61;
/// `EIO`.
const EIO: i32 = 5;

// ---- helpers -------------------------------------------------------------------------

/// An environment variable `qemu/run` exports in the guest.
fn guest_env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: this test runs inside the guest (qemu/run), see scripts/test"))
}

fn bad_lba() -> u64 {
    guest_env("IRONVME_FAULT_BAD_LBA")
        .parse()
        .expect("IRONVME_FAULT_BAD_LBA is a number")
}

/// The nvme-ns device id of the fault namespace, for `qemu-io -d`.
fn qdev() -> String {
    guest_env("IRONVME_FAULT_QDEV")
}

/// `/sys/class/nvme/nvmeN` of the fault controller, found by serial number.
fn fault_controller() -> PathBuf {
    let serial = guest_env("IRONVME_FAULT_SERIAL");
    fs::read_dir("/sys/class/nvme")
        .expect("/sys/class/nvme")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|c| fs::read_to_string(c.join("serial")).is_ok_and(|s| s.trim() == serial))
        .unwrap_or_else(|| panic!("no NVMe controller with serial {serial}: not bound to nvme?"))
}

/// The fault namespace's block device (`/dev/nvmeXn1`, or the multipath disk).
fn fault_disk() -> PathBuf {
    let ctrl = fault_controller();
    let name = fs::read_dir(&ctrl)
        .expect("controller directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("nvme") && n.ends_with("n1"))
        .unwrap_or_else(|| panic!("{} has no namespace 1", ctrl.display()));
    // With native multipath the controller lists the path nvmeScNn1; the disk is nvmeSn1.
    let disk = match name[4..].split_once('c') {
        Some((subsys, _)) => format!("nvme{subsys}n1"),
        None => name,
    };
    Path::new("/dev").join(disk)
}

/// A 4 KiB-aligned buffer for O_DIRECT I/O.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: Aligned owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for Aligned {}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, LBA).expect("layout");
        // SAFETY: the layout has a non-zero size (every caller passes a multiple of LBA).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        Aligned { ptr, len }
    }

    fn filled(len: usize, byte: u8) -> Aligned {
        let mut buf = Aligned::new(len);
        buf.as_mut().fill(byte);
        buf
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialized (zeroed at least) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_ref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in Aligned::new with this very layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.len, LBA).unwrap()) }
    }
}

fn open_direct(write: bool) -> File {
    let disk = fault_disk();
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(O_DIRECT)
        .open(&disk)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", disk.display()))
}

/// Reads one LBA of the fault namespace with O_DIRECT (no page cache, no read-ahead).
fn read_lba(lba: u64) -> std::io::Result<Aligned> {
    let mut buf = Aligned::new(LBA);
    let n = open_direct(false).read_at(buf.as_mut(), lba * LBA as u64)?;
    assert_eq!(n, LBA, "short read of LBA {lba}");
    Ok(buf)
}

fn write_lba(lba: u64, byte: u8) {
    let buf = Aligned::filled(LBA, byte);
    let n = open_direct(true)
        .write_at(buf.as_ref(), lba * LBA as u64)
        .unwrap_or_else(|e| panic!("write LBA {lba}: {e}"));
    assert_eq!(n, LBA, "short write of LBA {lba}");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `nvme read` of one LBA of the fault namespace (passthrough: no kernel retries).
fn nvme_cli_read(lba: u64) -> Output {
    let disk = fault_disk();
    let out = std::env::temp_dir().join(format!("guest_rig_faults-read-{lba}"));
    let result = Command::new("nvme")
        .arg("read")
        .arg(&disk)
        .args([
            "--start-block",
            &lba.to_string(),
            "--block-count",
            "0",
            "--data-size",
            "4096",
            "--data",
        ])
        .arg(&out)
        .output()
        .expect("run nvme-cli (nvme read)");
    let _ = fs::remove_file(&out);
    result
}

// ---- the monitor channel --------------------------------------------------------------

/// A client of qemu/run's monitor channel: the virtio port `$IRONVME_MONITOR`. Only one
/// process may have the port open. Breakpoints set through it are resumed and removed
/// when it is dropped, so a failing test does not leave a request held.
struct Monitor {
    port: BufReader<File>,
    breakpoints: Vec<String>,
}

/// One reply: the output lines and, if QEMU reported an error, its reason.
#[derive(Debug)]
struct Reply {
    output: Vec<String>,
    error: Option<String>,
}

impl Monitor {
    /// Opens the port, retrying while another process has it (EBUSY) for up to 10 s.
    fn open() -> Monitor {
        let path = guest_env("IRONVME_MONITOR");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => {
                    return Monitor {
                        port: BufReader::new(f),
                        breakpoints: Vec::new(),
                    };
                }
                Err(e) if e.raw_os_error() == Some(EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("open the monitor port {path}: {e}"),
            }
        }
    }

    /// Sends one HMP command line and reads its reply, up to the `.end` line.
    fn request(&mut self, line: &str) -> Reply {
        self.try_request(line)
            .unwrap_or_else(|e| panic!("monitor request {line:?}: {e}"))
    }

    fn try_request(&mut self, line: &str) -> std::io::Result<Reply> {
        writeln!(self.port.get_mut(), "{line}")?;
        let mut output = Vec::new();
        loop {
            let mut l = String::new();
            if self.port.read_line(&mut l)? == 0 {
                return Err(std::io::Error::other("the port closed before the reply ended"));
            }
            let l = l.trim_end_matches('\n');
            if l == ".end ok" {
                return Ok(Reply { output, error: None });
            }
            if let Some(reason) = l.strip_prefix(".end error") {
                let reason = reason.trim_start_matches(':').trim().to_string();
                return Ok(Reply {
                    output,
                    error: Some(reason),
                });
            }
            // Dot-stuffing: an output line starting with '.' arrives with one more.
            output.push(l.strip_prefix('.').unwrap_or(l).to_string());
        }
    }

    /// A request that must succeed; returns its output.
    fn ok(&mut self, line: &str) -> String {
        let reply = self.request(line);
        assert!(reply.error.is_none(), "monitor request {line:?} failed: {reply:?}");
        reply.output.join("\n")
    }

    /// `qemu-io -d <fault namespace> "<cmd>"`.
    fn qemu_io(&mut self, cmd: &str) -> Reply {
        self.request(&format!("qemu-io -d {} \"{cmd}\"", qdev()))
    }
}

impl Monitor {
    /// Sets a blkdebug breakpoint on the fault namespace: the next request that raises
    /// `event` is held until `resume TAG`.
    fn set_break(&mut self, event: &str, tag: &str) {
        let reply = self.qemu_io(&format!("break {event} {tag}"));
        assert!(reply.error.is_none(), "break {event} {tag}: {reply:?}");
        self.breakpoints.push(tag.to_string());
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for tag in std::mem::take(&mut self.breakpoints) {
            let dev = qdev();
            let _ = self.try_request(&format!("qemu-io -d {dev} \"resume {tag}\""));
            let _ = self.try_request(&format!("qemu-io -d {dev} \"remove_break {tag}\""));
        }
    }
}

// ---- tests ---------------------------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn fault_controller_is_a_kernel_bound_4k_namespace_of_1_gib_at_its_bdf() {
    let bdf = guest_env("IRONVME_FAULT_BDF");
    let ctrl = fault_controller();
    let device = fs::canonicalize(ctrl.join("device")).expect("controller's PCI device");
    assert_eq!(
        device.file_name().unwrap().to_string_lossy(),
        bdf,
        "ironvme-fault is not at IRONVME_FAULT_BDF"
    );
    let disk = fault_disk();
    let block = Path::new("/sys/block").join(disk.file_name().unwrap());
    let read = |f: &str| fs::read_to_string(block.join(f)).unwrap().trim().to_string();
    assert_eq!(read("queue/logical_block_size"), "4096");
    assert_eq!(read("size"), (1u64 << 30 >> 9).to_string(), "1 GiB in 512-byte sectors");
    assert_eq!(bad_lba(), 1000);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn nvme_read_of_the_bad_lba_fails_with_unrecovered_read_error_and_its_neighbours_read() {
    let bad = bad_lba();
    let out = nvme_cli_read(bad);
    let msg = text(&out);
    assert!(!out.status.success(), "nvme read of LBA {bad} succeeded:\n{msg}");
    assert!(
        msg.contains("Unrecovered Read Error") && msg.contains("0x281"),
        "nvme read of LBA {bad} did not fail with 0x281:\n{msg}"
    );
    for lba in [bad - 1, bad + 1] {
        let out = nvme_cli_read(lba);
        assert!(out.status.success(), "nvme read of LBA {lba} failed:\n{}", text(&out));
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn o_direct_read_of_the_bad_lba_fails_while_writes_to_it_and_its_neighbours_work() {
    let bad = bad_lba();
    for (lba, byte) in [(bad - 1, 0xa1), (bad, 0xa2), (bad + 1, 0xa3)] {
        write_lba(lba, byte); // writes of the bad LBA succeed too: the rule is for reads
    }
    for (lba, byte) in [(bad - 1, 0xa1), (bad + 1, 0xa3)] {
        let buf = read_lba(lba).unwrap_or_else(|e| panic!("read LBA {lba}: {e}"));
        assert!(
            buf.as_ref().iter().all(|&b| b == byte),
            "LBA {lba} did not read back what was written"
        );
    }
    let err = read_lba(bad)
        .err()
        .unwrap_or_else(|| panic!("O_DIRECT read of LBA {bad} succeeded"));
    // The kernel turns Unrecovered Read Error into BLK_STS_MEDIUM, i.e. ENODATA.
    assert!(
        matches!(err.raw_os_error(), Some(ENODATA) | Some(EIO)),
        "read of LBA {bad}: expected ENODATA or EIO, got {err}"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_monitor_break_holds_an_o_direct_read_until_resume() {
    const LBA_HELD: u64 = 5;
    write_lba(LBA_HELD, 0x5a);
    const TAG: &str = "guest_rig_faults_hold";
    let mut mon = Monitor::open();
    mon.set_break("read_aio", TAG);

    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let started = Instant::now();
        let result = read_lba(LBA_HELD);
        tx.send(started.elapsed()).ok();
        result
    });
    // The channel's wait_break: returns once blkdebug has suspended the request.
    let held = mon.ok(&format!("qemu-io -d {} \"wait_break {TAG}\"", qdev()));
    assert!(held.contains("suspended"), "wait_break said: {held}");
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "the read completed although the breakpoint should hold it"
    );

    let resumed = mon.qemu_io(&format!("resume {TAG}"));
    assert!(resumed.error.is_none(), "resume: {resumed:?}");
    assert!(
        resumed.output.iter().any(|l| l.contains("Resuming request")),
        "resume output: {resumed:?}"
    );
    let took = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the read did not complete after resume");
    let buf = reader.join().unwrap().expect("the held read failed after resume");
    assert!(
        buf.as_ref().iter().all(|&b| b == 0x5a),
        "the held read returned the wrong data"
    );
    assert!(took >= Duration::from_secs(1), "the read took only {took:?}");

    // A breakpoint is one-shot: after it fired there is nothing to remove, and the next
    // read is not held.
    let removed = mon.qemu_io(&format!("remove_break {TAG}"));
    assert!(removed.error.is_some(), "remove_break after the hit: {removed:?}");
    read_lba(LBA_HELD).expect("a read after the breakpoint fired");
    // An armed breakpoint that never fired is removed cleanly.
    mon.set_break("read_aio", "guest_rig_faults_unused");
    mon.ok(&format!(
        "qemu-io -d {} \"remove_break guest_rig_faults_unused\"",
        qdev()
    ));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn bogus_monitor_requests_get_an_error_reply_not_a_hang() {
    let mut mon = Monitor::open();
    let started = Instant::now();
    for (line, why) in [
        ("no_such_command", "unknown command"),
        ("", "empty request"),
        ("qemu-io -d no-such-device \"help\"", "not found"),
        ("qemu-io -d DEV \"resume no-such-tag\"", "Could not resume"),
        ("qemu-io -d DEV \"no_such_qemu_io_command\"", "not found"),
        ("qemu-io -d DEV \"break no_such_event t\"", "Could not set breakpoint"),
    ] {
        let line = line.replace("DEV", &qdev());
        let reply = mon.request(&line);
        let error = reply
            .error
            .unwrap_or_else(|| panic!("{line:?} was not an error: {:?}", reply.output));
        assert!(
            error.contains(why),
            "{line:?}: expected {why:?} in the error, got {error:?}"
        );
    }
    // The channel still works, and a good request's reply is its output.
    assert!(mon.ok("info version").contains('.'), "info version");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the error replies took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn qemu_monitor_command_prints_the_reply_and_exits_non_zero_on_error() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/monitor");
    let ok = Command::new(&script)
        .args(["info", "version"])
        .output()
        .expect("run qemu/monitor");
    assert!(ok.status.success(), "qemu/monitor info version: {}", text(&ok));
    assert!(!ok.stdout.is_empty(), "qemu/monitor info version printed nothing");
    let bad = Command::new(&script)
        .arg("no_such_command")
        .output()
        .expect("run qemu/monitor");
    assert_eq!(
        bad.status.code(),
        Some(1),
        "qemu/monitor no_such_command: {}",
        text(&bad)
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown command"),
        "{}",
        text(&bad)
    );
}
