//! Guest tests: namespaces that come and go. The controller with serial `ironvme-nsattach`
//! of the default topology belongs to an NVM subsystem (QEMU's `nvme-subsys`) with two
//! namespaces: nsid 1 (4 KiB blocks) attached, nsid 2 (512-byte blocks) allocated but
//! detached (`detached=true`). Namespace Attachment attaches and detaches nsid 2, and the
//! controller reports each change with a Namespace Attribute Changed event (notice 00h,
//! Changed Namespace List log 04h).
//!
//! What is checked:
//! - `ironvme attach-ns` / `detach-ns` on the kernel's controller node: Linux's nvme
//!   driver takes the event and its namespace appears and goes (its own rescan, so the
//!   command is what the controller expects); nvme-cli's `attach-ns` and ironvme's
//!   `detach-ns` work on each other's changes; the controller's refusals (already
//!   attached, not attached, a controller list without this controller) are reported;
//! - the VFIO driver: after the event, [`Controller::take_async_events`] has read the
//!   namespaces again; I/O on the attached namespace works and, once it is detached, fails
//!   on a queue opened before (QEMU: Invalid Field in Command); `perf`, `verify`,
//!   `identify-ns`, `list-ns` and a VDE volume (`vde:BDF,nsid=2:VOL`) on nsid 2 of the
//!   VFIO controller;
//! - `detach-ns` refused while the kernel's disk of the namespace is held, and for a
//!   controller other than DEV's;
//! - `serve` exporting nsid 2 and nsid 1 of one VFIO controller (`BDF,nsid=2`, then
//!   `BDF`) to the kernel's nvme-tcp initiator, which sees each with its own block size,
//!   and what it writes lands on the controller's nsid 2.
//!
//! Each test leaves nsid 2 detached, as the topology starts.
//!
//! ```text
//! cargo test --all-features --no-run --test guest_namespaces
//! qemu/run -- target/debug/deps/guest_namespaces-<hash> --ignored --test-threads=1
//! ```

mod common;

use common::{OnVfio, env, ironvme, kernel_ctrl, served_block_device, sysfs};
use ironvme::block::{self, Op};
use ironvme::nvme::cmd::Command;
use ironvme::nvme::ctrl::{Controller, ControllerConfig, Error, NamespaceQueue};
use ironvme::nvme::status::Status;
use std::time::{Duration, Instant};

/// How long a namespace change may take to show (the kernel's scan work, an AER).
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs ironvme; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let o = ironvme(args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs ironvme and fails the test unless it succeeds; returns stdout.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = cli(args);
    assert_eq!(code, Some(0), "ironvme {args:?}:\n{err}{out}");
    out
}

/// The NSIDs of the namespaces Linux shows under controller `bdf` (sysfs: each namespace
/// directory of the controller has an `nsid` file, with or without native multipath).
fn kernel_nsids(bdf: &str) -> Vec<u32> {
    let ctrl = kernel_ctrl(bdf);
    let dir = format!("/sys/class/nvme/{}", ctrl.file_name().unwrap().to_string_lossy());
    let mut found: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("nsid")).ok())
        .map(|s| s.trim().parse().expect("nsid"))
        .collect();
    found.sort();
    found
}

/// Detaches nsid 2 of the controller DEV names when dropped (also when the test fails),
/// so the next test finds the topology as it starts; disconnects the served subsystem
/// first.
struct Detach<'a>(&'a str);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nvme")
            .args(["disconnect", "-n", NQN])
            .output();
        let _ = ironvme(&["detach-ns", self.0, "-n", "2"]);
    }
}

/// The kernel's block device (`/dev/nvmeXnY`) of namespace `nsid` of the subsystem
/// controller, by serial number (native multipath names the disk after the subsystem,
/// whose sysfs directory has the serial too); what /sys/block holds otherwise.
fn kernel_disk(nsid: u32) -> Result<String, Vec<String>> {
    let serial = env("IRONVME_NSATTACH_SERIAL");
    let mut seen = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let (s, n) = (
            sysfs(&format!("/sys/block/{name}/device/serial")),
            sysfs(&format!("/sys/block/{name}/nsid")),
        );
        // The namespace head (nvmeXnY), not a hidden per-path node (nvmeXcZnY).
        let head = name.strip_prefix("nvme").is_some_and(|r| !r.contains('c'));
        if head && s == serial && n == nsid.to_string() {
            return Ok(format!("/dev/{name}"));
        }
        seen.push(format!("{name}: serial {s:?} nsid {n:?}"));
    }
    Err(seen)
}

/// Waits until `now()` equals `want`; fails the test after [`DEADLINE`].
fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut now: impl FnMut() -> T) {
    let start = Instant::now();
    loop {
        let got = now();
        if got == want {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: still {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_kernel_sees_namespaces_attach_ns_and_detach_ns_change() {
    let bdf = env("IRONVME_NSATTACH_BDF");
    let ctrl = kernel_ctrl(&bdf).display().to_string();
    let _detach = Detach(&ctrl);
    assert_eq!(kernel_nsids(&bdf), [1], "the topology starts with nsid 2 detached");
    let cntlid = common::nvme_cli_field(&common::run("nvme", &["id-ctrl", &ctrl]), "cntlid")
        .map(|v| common::number(&v) as u16)
        .expect("cntlid");

    assert_eq!(ok(&["attach-ns", &ctrl, "-n", "2"]), "attach-ns: Success, nsid:2\n");
    wait_for("kernel namespaces after attach-ns", vec![1, 2], || kernel_nsids(&bdf));
    let (code, _, err) = cli(&["attach-ns", &ctrl, "-n", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Namespace Already Attached"), "{err}");
    // In use (held open exclusively, as a mount holds it): refused, nothing done.
    let disk = kernel_disk(2).unwrap_or_else(|seen| panic!("no disk of nsid 2 in /sys/block: {seen:#?}"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&disk)
            .unwrap_or_else(|e| panic!("{disk}: {e}"));
        let (code, _, err) = cli(&["detach-ns", &ctrl, "-n", "2"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("refusing to run detach-ns") && err.contains("in use"),
            "{err}"
        );
        assert_eq!(kernel_nsids(&bdf), [1, 2], "still attached");
    }
    // Another controller of the subsystem: whether it uses the namespace is unknown here.
    let (code, _, err) = cli(&["detach-ns", &ctrl, "-n", "2", "-c", &(cntlid + 1).to_string()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refusing to detach namespace 2 from controller(s)"),
        "{err}"
    );
    assert_eq!(
        ok(&["detach-ns", &ctrl, "--namespace-id", "2", "-c", &cntlid.to_string()]),
        "detach-ns: Success, nsid:2\n"
    );
    wait_for("kernel namespaces after detach-ns", vec![1], || kernel_nsids(&bdf));
    let (code, _, err) = cli(&["detach-ns", &ctrl, "-n", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Namespace Not Attached"), "{err}");
    let other = (cntlid + 1).to_string();
    let (code, _, err) = cli(&["attach-ns", &ctrl, "-n", "2", "-c", &other]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Controller List Invalid"), "{err}");

    // nvme-cli attaches, ironvme detaches: the same command on both sides.
    common::run("nvme", &["attach-ns", &ctrl, "-n", "2", "-c", &cntlid.to_string()]);
    wait_for("kernel namespaces after nvme attach-ns", vec![1, 2], || {
        kernel_nsids(&bdf)
    });
    ok(&["detach-ns", &ctrl, "-n", "2"]);
    wait_for("kernel namespaces after the last detach-ns", vec![1], || {
        kernel_nsids(&bdf)
    });
}

/// The active NSIDs the driver lists.
fn nsids<R: ironvme::nvme::hw::Registers>(c: &Controller<R>) -> Vec<u32> {
    c.namespaces().iter().map(|n| n.nsid).collect()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_vfio_driver_reads_the_namespaces_again_on_a_namespace_event() {
    let vfio = OnVfio::bind("IRONVME_NSATTACH_BDF");
    let _detach = Detach(&vfio.bdf);
    {
        let c = ironvme::open_vfio(&vfio.bdf, ControllerConfig::default(), false)
            .unwrap_or_else(|e| panic!("open {}: {e}", vfio.bdf))
            .controller;
        assert_eq!(nsids(&c), [1]);
        let me = c.identify().cntlid;
        // Sent as a raw admin command, as another tool would: the driver learns of the new
        // namespace from the event alone.
        let list = ironvme::nvme::cmd::controller_list(&[me]).unwrap();
        c.admin_command_write(Command::namespace_attachment(2, true), &list)
            .unwrap();
        assert_eq!(nsids(&c), [1], "not before the event is taken");
        let mut events = Vec::new();
        wait_for("the driver's namespaces after attaching nsid 2", vec![1, 2], || {
            events.extend(c.take_async_events());
            nsids(&c)
        });
        assert!(
            events
                .iter()
                .any(|e| e.is_namespace_attribute_changed() && e.log_page == 0x04),
            "{events:?}"
        );
        let ns = c.namespace(2).unwrap();
        assert_eq!(ns.block_size, 512);
        let mut q = NamespaceQueue::new(&c, 2, 8).unwrap();
        let mut b = c.dma().allocate(4096).unwrap();
        let data = common::pattern(2, 4096);
        b.as_mut_slice().copy_from_slice(&data);
        let b = block::run_one(&mut q, Op::Write { lba: 64, fua: false }, Some(b))
            .unwrap()
            .unwrap();
        let mut b = b;
        b.as_mut_slice().fill(0);
        let b = block::run_one(&mut q, Op::Read { lba: 64 }, Some(b)).unwrap().unwrap();
        assert!(b.as_slice() == data.as_slice(), "round trip on the attached nsid 2");

        // Through the driver's own method, which reads the namespaces again at once.
        c.namespace_attachment(2, false, &[me]).unwrap();
        assert_eq!(nsids(&c), [1]);
        assert!(matches!(c.namespace(2), Err(Error::NoSuchNamespace(2))));
        // The queue opened before the detach gets the controller's answer: QEMU 7.2 says
        // Invalid Field in Command for an NSID of the subsystem not attached to this
        // controller (its nvme_io_cmd), where the simulator says Invalid Namespace or
        // Format.
        let e = block::run_one(&mut q, Op::Read { lba: 64 }, Some(b)).unwrap_err();
        let block::IoError::Failed { status, .. } = e.error else {
            panic!("{e}")
        };
        assert_eq!(
            status.nvme().map(Status::code),
            Some(Status::INVALID_FIELD.code()),
            "{status}"
        );
        assert!(matches!(NamespaceQueue::new(&c, 2, 8), Err(Error::NoSuchNamespace(2))));
        // Attached again for the tools below (the attachment outlives the controller).
        c.namespace_attachment(2, true, &[me]).unwrap();
    }
    // Every tool on nsid 2, which is not the first namespace.
    let listed = ok(&["list-ns", &vfio.bdf]);
    assert_eq!(listed, "[   0]:0x1\n[   1]:0x2\n");
    let id = ok(&["identify-ns", &vfio.bdf, "-n", "2"]);
    assert!(id.contains("(in use)"), "{id}");
    let out = ok(&[
        "verify",
        &vfio.bdf,
        "-n",
        "2",
        "--allow-write",
        "--size",
        "1m",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(
        (&v["nsid"], &v["block_size"], &v["ok"]),
        (&2.into(), &512.into(), &true.into()),
        "{out}"
    );
    let perf = ok(&[
        "perf", &vfio.bdf, "-n", "2", "--rw", "randread", "--time", "1", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&perf).expect("perf JSON");
    assert_eq!(v["nsid"], 2, "{perf}");
    // A VDE store on nsid 2, and a volume of it named with its namespace.
    ok(&["vde", "format", &vfio.bdf, "-n", "2", "--force"]);
    ok(&["vde", "vol", "create", &vfio.bdf, "-n", "2", "v", "--size", "4m"]);
    let volume = format!("vde:{},nsid=2:v", vfio.bdf);
    let out = ok(&["verify", &volume, "--size", "1m", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(v["ok"], true, "{out}");
    let (code, _, err) = cli(&["verify", &format!("vde:{}:v", vfio.bdf), "--size", "1m"]);
    assert_eq!(code, Some(1), "nsid 1 holds no store: {err}");
    assert_eq!(ok(&["detach-ns", &vfio.bdf, "-n", "2"]), "detach-ns: Success, nsid:2\n");
    assert_eq!(ok(&["list-ns", &vfio.bdf]), "[   0]:0x1\n");
    let (code, _, err) = cli(&["perf", &vfio.bdf, "-n", "2", "--rw", "randread", "--time", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no active namespace 2"), "{err}");
}

const NQN: &str = "nqn.2026-12.io.ironvme:namespaces";
const ADDR: &str = "127.0.0.1:4421";

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn serve_exports_a_namespace_other_than_the_first() {
    common::run("ip", &["link", "set", "lo", "up"]);
    common::run("modprobe", &["nvme-tcp"]);
    let vfio = OnVfio::bind("IRONVME_NSATTACH_BDF");
    let _detach = Detach(&vfio.bdf);
    ok(&["attach-ns", &vfio.bdf, "-n", "2"]);
    // Subsystem NSID 1 is the controller's nsid 2 (512-byte blocks), NSID 2 its nsid 1
    // (4 KiB): both from the one VFIO controller, which can be opened only once.
    let second = format!("{},nsid=2", vfio.bdf);
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::ServerProcess::start(
        &[
            "serve",
            "--nvme-tcp",
            ADDR,
            "--nqn",
            NQN,
            "--namespace",
            &second,
            "--namespace",
            &vfio.bdf,
            "--allow-any-host",
            "--stats",
            "0",
        ],
        ADDR,
        &dir.path().join("serve.log"),
    );
    let out = common::run(
        "nvme",
        &["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4421", "-n", NQN],
    );
    let (one, two) = (served_block_device(NQN, 1), served_block_device(NQN, 2));
    let (one, two) = (&one["/dev/".len()..], &two["/dev/".len()..]);
    let block = |name: &str| sysfs(&format!("/sys/block/{name}/queue/logical_block_size"));
    let bytes = |name: &str| sysfs(&format!("/sys/block/{name}/size")).parse::<u64>().unwrap() * 512;
    assert_eq!((block(one), bytes(one)), ("512".to_string(), 64 << 20), "{out}");
    assert_eq!((block(two), bytes(two)), ("4096".to_string(), 64 << 20), "{out}");
    // What the initiator writes to NSID 1 lands on the controller's nsid 2.
    let data = common::pattern(7, 8192);
    let file = dir.path().join("data");
    std::fs::write(&file, &data).unwrap();
    common::run(
        "dd",
        &[
            &format!("if={}", file.display()),
            &format!("of=/dev/{one}"),
            "bs=512",
            "seek=100",
            "oflag=direct",
            "conv=fsync",
        ],
    );
    common::run("nvme", &["disconnect", "-n", NQN]);
    assert!(server.terminate().success(), "{}", server.log());
    let o = ironvme(&["read", &vfio.bdf, "-n", "2", "-s", "100", "-c", "15"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout == data,
        "nsid 2 of {} does not hold what the initiator wrote",
        vfio.bdf
    );
}
