//! Helpers shared by the guest tests (`tests/guest_*.rs`), which run inside the QEMU
//! guest started by `qemu/run` (see the README's "QEMU test hardware").
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// An environment variable `qemu/run` sets in the guest.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run this test inside the guest (qemu/run)"))
}

/// The `ironvme` binary cargo built for the tests.
pub const IRONVME: &str = env!("CARGO_BIN_EXE_ironvme");

/// Runs ironvme with `input` on its standard input; returns its output.
pub fn ironvme_with_input(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(IRONVME)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ironvme");
    // A refusal may close stdin before all of it is written.
    let _ = child.stdin.take().expect("piped").write_all(input);
    child.wait_with_output().expect("wait for ironvme")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The driver `bdf` is bound to, if any.
pub fn driver_of(bdf: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Runs `scripts/setup.sh <action> <bdf>` and fails the test if it fails.
pub fn setup(action: &str, bdf: &str) {
    try_setup(action, bdf).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `scripts/setup.sh <action> <bdf>`; the error holds its exit status and output.
pub fn try_setup(action: &str, bdf: &str) -> Result<(), String> {
    let script = repo().join("scripts/setup.sh");
    let out = Command::new(&script)
        .args([action, bdf])
        .output()
        .expect("run scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "scripts/setup.sh {action} {bdf} failed ({}):\n{text}",
            out.status
        ));
    }
    Ok(())
}

/// A controller handed to vfio-pci for as long as the guard lives; given back to the
/// kernel nvme driver when it drops (also when the test fails).
pub struct OnVfio {
    /// The controller's PCI address.
    pub bdf: String,
}

impl OnVfio {
    /// Binds the controller named by environment variable `var` to vfio-pci.
    pub fn bind(var: &str) -> OnVfio {
        let bdf = env(var);
        setup("bind", &bdf);
        assert_eq!(driver_of(&bdf).as_deref(), Some("vfio-pci"), "{bdf} after bind");
        OnVfio { bdf }
    }
}

impl Drop for OnVfio {
    fn drop(&mut self) {
        // A test that failed already (a hot-unplug test may leave the device unplugged or
        // half-removed): a second panic would abort the whole test binary.
        if std::thread::panicking() {
            if let Err(e) = try_setup("unbind", &self.bdf) {
                eprintln!("{e}");
            }
            return;
        }
        setup("unbind", &self.bdf);
    }
}

/// The kernel's controller node (`/dev/nvmeN`) for `bdf` while bound to nvme.
pub fn kernel_ctrl(bdf: &str) -> PathBuf {
    let dir = format!("/sys/bus/pci/devices/{bdf}/nvme");
    let name = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (is {bdf} bound to nvme?)"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("nvme"))
        .unwrap_or_else(|| panic!("no nvme controller under {dir}"));
    PathBuf::from("/dev").join(name)
}

/// Runs a command and returns its standard output; fails the test if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run_bytes(cmd, args)).into_owned()
}

/// Runs `cmd args`, expects success, returns stdout's bytes.
pub fn run_bytes(cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    succeeded(out, &format!("{cmd} {args:?}"))
}

/// The standard output of a command that must have succeeded (`what` names it).
pub fn succeeded(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `key : value` lines as nvme-cli prints Identify data; the value of `key`, trimmed.
pub fn nvme_cli_field(output: &str, key: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Parses a number nvme-cli printed in decimal or 0x-hex.
pub fn number(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}"))
}

/// A deterministic byte pattern stamped with `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends one HMP command to QEMU through the guest's monitor channel (`qemu/monitor`,
/// README "The monitor channel") and returns the reply; fails the test if QEMU reports an
/// error.
pub fn monitor(command: &str) -> String {
    try_monitor(command).unwrap_or_else(|e| panic!("{e}"))
}

/// [`monitor`] for a command that may fail: the reply, or an error with QEMU's reason.
pub fn try_monitor(command: &str) -> Result<String, String> {
    let script = repo().join("qemu/monitor");
    let out = Command::new(&script)
        .arg(command)
        .output()
        .map_err(|e| format!("run qemu/monitor: {e}"))?;
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "qemu/monitor {command:?}: {}{reply}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(reply)
}

/// Runs the `ironvme` binary with stdin from /dev/null and no RUST_LOG.
pub fn ironvme(args: &[&str]) -> Output {
    Command::new(IRONVME)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ironvme")
}

/// The xxh3-64 of the whole of volume or snapshot `name` on the store on `spec`, read
/// through `vde:SPEC:NAME` as any device is read.
pub fn volume_hash(spec: &str, backend: ironvme::Backend, name: &str) -> u64 {
    use ironvme::block::{Op, run_one};
    use ironvme::vde::volume::{VolumeDevice, VolumeSpec};
    let vs = VolumeSpec::parse(&format!("vde:{spec}:{name}")).unwrap().unwrap();
    let o = ironvme::OpenOptions {
        backend: Some(backend),
        ..Default::default()
    };
    let dev = VolumeDevice::open(&vs, &o).unwrap();
    let blocks = dev.namespace().blocks;
    let mut q = dev.create_queue(1).unwrap();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let chunk = 32u64;
    let mut lba = 0;
    while lba < blocks {
        let n = chunk.min(blocks - lba);
        let buf = dev.device().dma().allocate(n as usize * 4096).unwrap();
        let buf = run_one(&mut q, Op::Read { lba }, Some(buf))
            .map_err(|e| e.error)
            .unwrap()
            .unwrap();
        h.update(&buf.as_slice()[..n as usize * 4096]);
        lba += n;
    }
    h.digest()
}

/// `ironvme SEND... | ironvme RECV...` through a pipe; both must succeed. Returns the
/// statistics both print with --json (send's on standard error).
pub fn send_recv(send: &[&str], recv: &[&str]) -> (serde_json::Value, serde_json::Value) {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_ironvme");
    let mut s = Command::new(bin)
        .args(send)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = Command::new(bin)
        .args(recv)
        .arg("--json")
        .stdin(s.stdout.take().unwrap())
        .output()
        .unwrap();
    let so = s.wait_with_output().unwrap();
    assert!(
        so.status.success() && r.status.success(),
        "{send:?} | {recv:?}: {}{}",
        String::from_utf8_lossy(&so.stderr),
        String::from_utf8_lossy(&r.stderr)
    );
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    (json(&so.stderr), json(&r.stdout))
}

/// `ironvme serve` as a child process, logging to a file; killed (and its log printed) if
/// the test fails.
pub struct ServerProcess {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts `ironvme ARGS` with `RUST_LOG=info` and waits (up to 60 s) until a TCP
    /// connection to `addr` succeeds.
    pub fn start(args: &[&str], addr: &str, log: &Path) -> ServerProcess {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ironvme"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ironvme serve");
        let s = ServerProcess {
            child: Some(child),
            log: log.to_path_buf(),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server never listened:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within 60 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl ServerProcess {
    /// Sends signal `sig` (a name `kill` knows, such as `KILL`).
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the server has exited");
        run("kill", &[&format!("-{sig}"), &child.id().to_string()]);
    }

    /// SIGKILL, then waits for the process: the crash the target must survive.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server has exited");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("ironvme serve log:\n{}", self.log());
        }
    }
}

/// Compares ironvme's text output with nvme-cli's line by line, so a failure names the
/// first line that differs, then the line counts (a missing field is a missing line).
pub fn assert_same_text(ours: &str, theirs: &str) {
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(a, b, "line {}: ironvme (left) vs nvme-cli (right)", i + 1);
    }
    assert_eq!(
        ours.lines().count(),
        theirs.lines().count(),
        "line counts differ; ironvme:\n{ours}\nnvme-cli:\n{theirs}"
    );
    assert_eq!(ours, theirs);
}

/// Compares ironvme's JSON with nvme-cli's: equal values, and at every level the same
/// object keys, a missing or extra key named with its path.
pub fn assert_same_json(ours: &serde_json::Value, theirs: &serde_json::Value) {
    fn walk(path: &str, ours: &serde_json::Value, theirs: &serde_json::Value) {
        use serde_json::Value;
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => {
                let missing: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
                let extra: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
                assert!(
                    missing.is_empty() && extra.is_empty(),
                    "at {path:?}: ironvme lacks {missing:?} and adds {extra:?}"
                );
                for (k, v) in b {
                    walk(&format!("{path}.{k}"), &a[k], v);
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "at {path:?}: array lengths differ");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{path}[{i}]"), x, y);
                }
            }
            _ => assert_eq!(ours, theirs, "at {path:?}: ironvme (left) vs nvme-cli (right)"),
        }
    }
    walk("", ours, theirs);
}

/// `text` with the value of every `name : value` line whose trimmed name is in `names`
/// replaced by `*`: for counters that may move between two reads (SMART's host
/// commands, say).
pub fn mask_text(text: &str, names: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once(':') {
            Some((name, _)) if names.contains(&name.trim()) => {
                out.push_str(name);
                out.push_str(": *");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Sets every object member named in `keys`, at any depth, to `"*"` (the JSON twin of
/// [`mask_text`]).
pub fn mask_json(value: &mut serde_json::Value, keys: &[&str]) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if keys.contains(&k.as_str()) {
                    *v = Value::from("*");
                } else {
                    mask_json(v, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_json(v, keys)),
        _ => {}
    }
}

/// nvme-cli's error-log text without libnvme's sentence of explanation after each status
/// name (`0(Successful Completion: The command completed without error)` becomes
/// `0(Successful Completion)`): the one place ironvme's error-log text differs from it.
pub fn without_libnvme_status_sentences(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match (line.starts_with("status_field"), line.find("("), line.rfind(')')) {
            (true, Some(open), Some(close)) if open < close => {
                let inner = &line[open + 1..close];
                let name = inner.split_once(": ").map_or(inner, |(name, _)| name);
                out.push_str(&line[..=open]);
                out.push_str(name);
                out.push_str(&line[close..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A sparse scratch file of `bytes` bytes in cargo's scratch directory for integration
/// tests, deleted with the returned directory.
pub fn scratch_file(bytes: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a scratch directory");
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(bytes))
        .expect("a scratch file");
    (dir, path)
}

/// Runs ironvme under a pseudo-terminal (`script` from util-linux), so that stdin, stdout
/// and stderr are a terminal; returns its exit status and everything it wrote.
pub fn under_a_terminal(args: &[&str]) -> (Option<i32>, String) {
    let quoted: Vec<String> = std::iter::once(IRONVME)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let o = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux) for a pseudo-terminal");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The trimmed contents of a sysfs file, or "" when it cannot be read.
#[allow(dead_code)]
pub fn sysfs(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// The kernel initiator's block device (`/dev/nvmeXnY`) for namespace `nsid` of the
/// NVMe-oF subsystem `nqn`, once it appears (within 60 s).
#[allow(dead_code)]
pub fn served_block_device(nqn: &str, nsid: u32) -> String {
    let started = Instant::now();
    loop {
        for entry in std::fs::read_dir("/sys/block").unwrap().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            // The namespace head (nvmeXnY), not a hidden per-path node (nvmeXcZnY).
            let head = name.strip_prefix("nvme").is_some_and(|r| !r.contains('c'));
            if head
                && sysfs(&format!("/sys/block/{name}/device/subsysnqn")) == nqn
                && sysfs(&format!("/sys/block/{name}/nsid")) == nsid.to_string()
            {
                return format!("/dev/{name}");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no block device for namespace {nsid} of {nqn} appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- the hot-pluggable controller (IRONVME_HOTPLUG_*) -----------------------------------

/// How often the hotplug helpers look at sysfs and QEMU again.
const HOTPLUG_POLL: Duration = Duration::from_millis(100);

/// Polls `done` every [`HOTPLUG_POLL`] (100 ms) until it returns true; an error naming
/// `what` if that has not happened by `deadline`, or `done`'s own error.
fn poll_until(deadline: Instant, what: &str, mut done: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting until {what}"));
        }
        std::thread::sleep(HOTPLUG_POLL);
    }
}

/// Whether QEMU has a device with qdev id `qdev` (HMP `qom-list /machine/peripheral`,
/// which lists the devices given an id, on the command line or by `device_add`).
pub fn qdev_exists(qdev: &str) -> Result<bool, String> {
    let listing = try_monitor("qom-list /machine/peripheral")?;
    Ok(listing
        .lines()
        .any(|l| l.split_once(" (").is_some_and(|(name, _)| name == qdev)))
}

/// The PCI device behind PCIe port `port` (a BDF, `0000:00:10.0`), if there is one: the
/// entry of its sysfs directory named like a BDF (beside it, `0000:00:10.0:pcie010` and
/// the like are the port's own services, not devices).
pub fn device_behind_port(port: &str) -> Option<String> {
    let is_bdf = |n: &str| {
        let b = n.as_bytes();
        b.len() == 12
            && (b[4], b[7], b[10]) == (b':', b':', b'.')
            && n.chars()
                .enumerate()
                .all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
    };
    std::fs::read_dir(format!("/sys/bus/pci/devices/{port}"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| is_bdf(n))
}

/// Waits for an unplug begun with HMP `device_del QDEV` to finish, polling every 100 ms:
/// first until `/sys/bus/pci/devices/BDF` is gone (the guest kernel has removed the
/// device; while it is bound to vfio-pci that waits for userspace to close the device
/// and unmap its BARs), then until QEMU no longer lists `qdev` in `qom-list
/// /machine/peripheral` (it unrealized the device after the guest's ACPI eject; before
/// that, a `device_add` with the same id fails with "Duplicate ID"). `timeout` bounds
/// both steps together. Returns the time both took (from this call), or an error naming
/// the step that did not finish in time (or the monitor's error).
pub fn hotplug_wait_removed(bdf: &str, qdev: &str, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    poll_until(deadline, &format!("the guest kernel removed {dir}"), || {
        Ok(!Path::new(&dir).exists())
    })
    .map_err(|e| format!("{e} ({:?} after device_del's wait began)", started.elapsed()))?;
    let in_sysfs = started.elapsed();
    poll_until(
        deadline,
        &format!("QEMU unrealized device {qdev:?} (still in qom-list /machine/peripheral)"),
        || qdev_exists(qdev).map(|there| !there),
    )
    .map_err(|e| {
        format!(
            "{e} (the guest removed {bdf} after {in_sysfs:?}; {:?} in all)",
            started.elapsed()
        )
    })?;
    Ok(started.elapsed())
}

/// Plugs the hot-pluggable controller back after [`hotplug_wait_removed`]: HMP
/// `device_add $IRONVME_HOTPLUG_DEVICE_ADD` (same qdev id, serial and namespace, whose
/// data the unplug kept), then waits, polling every 100 ms and up to 60 s per step, for
/// the device to appear behind `$IRONVME_HOTPLUG_PORT` and for the kernel nvme driver,
/// which claims it as it appears, to bring it live; binds it to vfio-pci
/// (`scripts/setup.sh bind`, as [`OnVfio::bind`] does) and waits for its
/// `/dev/vfio/<group>`. Returns its BDF, read from sysfs (normally
/// `$IRONVME_HOTPLUG_BDF` again). Fails the test if any step fails.
pub fn hotplug_readd() -> String {
    let port = env("IRONVME_HOTPLUG_PORT");
    let step = Duration::from_secs(60);
    let check = |r: Result<(), String>| r.unwrap_or_else(|e| panic!("re-adding the hotplug controller: {e}"));
    monitor(&format!("device_add {}", env("IRONVME_HOTPLUG_DEVICE_ADD")));
    let mut bdf = None;
    check(poll_until(
        Instant::now() + step,
        &format!("a device appeared behind {port}"),
        || {
            bdf = device_behind_port(&port);
            Ok(bdf.is_some())
        },
    ));
    let bdf = bdf.expect("found");
    // The kernel binds a driver as it adds the device, right after its sysfs directory
    // appears (setup.sh binds one that has none, too); nvme's controller reset and
    // namespace scan go on in the background: let them finish, so that setup.sh's unbind
    // does not race them.
    let _ = poll_until(Instant::now() + Duration::from_secs(5), "", || {
        Ok(driver_of(&bdf).is_some())
    });
    if driver_of(&bdf).as_deref() == Some("nvme") {
        check(poll_until(
            Instant::now() + step,
            &format!("{bdf} is live on nvme"),
            || {
                let ctrls = std::fs::read_dir(format!("/sys/bus/pci/devices/{bdf}/nvme"));
                Ok(ctrls
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .any(|c| sysfs(&format!("{}/state", c.path().display())) == "live"))
            },
        ));
    }
    setup("bind", &bdf);
    assert_eq!(driver_of(&bdf).as_deref(), Some("vfio-pci"), "{bdf} after bind");
    let group = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))
        .unwrap_or_else(|e| panic!("{bdf} has no IOMMU group: {e}"));
    let node = Path::new("/dev/vfio").join(group.file_name().expect("group number"));
    check(poll_until(
        Instant::now() + step,
        &format!("{} exists", node.display()),
        || Ok(node.exists()),
    ));
    bdf
}
