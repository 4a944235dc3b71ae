//! Guest tests of the QEMU test rig itself: the topology `qemu/run` promises is the one the
//! guest sees, and `scripts/setup.sh` moves controllers between nvme and vfio-pci safely.
//!
//! Every test here needs the guest started by `qemu/run` (default topology) and is ignored
//! on the host; `scripts/test` runs them in the guest with `--ignored --test-threads=1`.
//! By hand:
//!
//! ```text
//! cargo test --no-run --test guest_rig
//! qemu/run -- target/debug/deps/guest_rig-<hash> --ignored --test-threads=1
//! ```
//!
//! Tests share the controllers, so each one leaves them as it found them (bound to nvme,
//! nothing mounted), also when it fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

const NVME_CLASS: &str = "0x010802";
/// QEMU's emulated NVMe controller: Red Hat, Inc. (1b36), device 0010.
const QEMU_NVME: (&str, &str) = ("0x1b36", "0x0010");

// ---- helpers -------------------------------------------------------------------------

/// An environment variable `qemu/run` exports in the guest.
fn guest_env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: this test runs inside the guest (qemu/run), see scripts/test"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn pci(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

/// The driver bound to a PCI device, if any.
fn driver_of(bdf: &str) -> Option<String> {
    fs::read_link(pci(bdf).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// `/sys/class/nvme/nvmeN` of the controller with this serial number, while the kernel
/// nvme driver owns it. Found by serial, never by assuming the kernel's numbering.
fn controller_by_serial(serial: &str) -> Option<PathBuf> {
    fs::read_dir("/sys/class/nvme")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|c| fs::read_to_string(c.join("serial")).is_ok_and(|s| s.trim() == serial))
}

/// The controller (`/sys/class/nvme/nvmeN`) the kernel created for a PCI device.
fn controller_of(bdf: &str) -> Option<PathBuf> {
    let dir = fs::read_dir(pci(bdf).join("nvme")).ok()?;
    dir.filter_map(|e| e.ok())
        .next()
        .map(|e| Path::new("/sys/class/nvme").join(e.file_name()))
}

/// A namespace as the kernel shows it: block device name, NSID, logical block size.
#[derive(Debug)]
struct Namespace {
    disk: String,
    nsid: u32,
    lba: u32,
}

/// The namespaces of a controller, by NSID. Without native multipath the controller
/// lists its disks as nvmeNnM; with it, paths nvmeScNnH whose disk is nvmeSnH.
fn namespaces(ctrl: &Path) -> Vec<Namespace> {
    let Ok(dir) = fs::read_dir(ctrl) else { return Vec::new() };
    let mut found: Vec<Namespace> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nvme") && n.contains('n'))
        .filter_map(|name| {
            let disk = match name[4..].split_once('c') {
                Some((subsys, path)) => format!("nvme{subsys}n{}", path.split_once('n')?.1),
                None => name,
            };
            let block = Path::new("/sys/block").join(&disk);
            Some(Namespace {
                nsid: fs::read_to_string(block.join("nsid")).ok()?.trim().parse().ok()?,
                lba: fs::read_to_string(block.join("queue/logical_block_size"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?,
                disk,
            })
        })
        .filter(|ns| Path::new("/dev").join(&ns.disk).exists())
        .collect();
    found.sort_by_key(|ns| ns.nsid);
    found
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds (the guest is slow).
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(100));
    }
}

/// Runs `scripts/setup.sh ARGS...`, returning its output whatever its exit status.
fn setup_sh(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn setup_sh_ok(args: &[&str]) -> String {
    let out = setup_sh(args);
    let text = text(&out);
    assert!(
        out.status.success(),
        "scripts/setup.sh {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    out
}

/// Gives a controller back to the kernel nvme driver when dropped, so a failing test does
/// not leave it on vfio-pci for the next one.
struct BackToNvme<'a>(&'a str);

impl Drop for BackToNvme<'_> {
    fn drop(&mut self) {
        if driver_of(self.0).as_deref() != Some("nvme") {
            let _ = setup_sh(&["unbind", self.0]);
        }
    }
}

/// A filesystem mounted on a namespace for the duration of a test.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    read("/proc/self/mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*dir))
}

// ---- the topology --------------------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_controller_has_a_512_byte_and_a_4096_byte_namespace() {
    let bdf = guest_env("IRONVME_KERNEL_BDF");
    let ctrl = controller_by_serial("ironvme-kern").expect("no controller with serial ironvme-kern in /sys/class/nvme");
    assert_eq!(
        read(ctrl.join("address")),
        bdf,
        "ironvme-kern is not at IRONVME_KERNEL_BDF"
    );
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));

    let ns = namespaces(&ctrl);
    let found: Vec<(u32, u32)> = ns.iter().map(|n| (n.nsid, n.lba)).collect();
    assert_eq!(
        found,
        [(1, 512), (2, 4096)],
        "namespaces (nsid, LBA size) of ironvme-kern: {ns:?}"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn vfio_controllers_are_qemu_nvme_controllers_at_the_advertised_bdfs() {
    for (var, serial) in [
        ("IRONVME_VFIO_4K_BDF", "ironvme-vfio4k"),
        ("IRONVME_VFIO_512_BDF", "ironvme-vfio512"),
    ] {
        let bdf = guest_env(var);
        let dev = pci(&bdf);
        assert!(dev.exists(), "{var}={bdf}: no such PCI device");
        assert_eq!(
            (read(dev.join("vendor")), read(dev.join("device"))),
            (QEMU_NVME.0.into(), QEMU_NVME.1.into())
        );
        assert_eq!(read(dev.join("class")), NVME_CLASS, "{bdf} is not an NVMe controller");
        // At boot the kernel owns every controller, as on a real host.
        assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"), "{bdf} should start on nvme");
        let ctrl = controller_by_serial(serial).unwrap_or_else(|| panic!("no controller with serial {serial}"));
        assert_eq!(read(ctrl.join("address")), bdf, "{serial} is not at {var}");
    }
}

// ---- binding for VFIO and back -------------------------------------------------------

/// Binds the controller to vfio-pci with setup.sh, checks it sits alone in its IOMMU
/// group with the group's VFIO node present, gives it back with setup.sh, and checks its
/// one namespace (of `lba`-byte blocks) comes back.
fn bind_isolates_and_unbind_restores(var: &str, lba: u32) {
    let bdf = guest_env(var);
    let _restore = BackToNvme(&bdf);

    setup_sh_ok(&["bind", &bdf]);
    assert_eq!(
        driver_of(&bdf).as_deref(),
        Some("vfio-pci"),
        "{bdf} not on vfio-pci after bind"
    );
    let group = fs::read_link(pci(&bdf).join("iommu_group")).expect("no IOMMU group after bind");
    let group = group.file_name().unwrap().to_string_lossy().into_owned();
    let members: Vec<String> = fs::read_dir(format!("/sys/kernel/iommu_groups/{group}/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        members,
        std::slice::from_ref(&bdf),
        "IOMMU group {group} must hold {bdf} alone"
    );
    assert!(
        Path::new("/dev/vfio").join(&group).exists(),
        "/dev/vfio/{group} missing after bind"
    );
    assert!(
        controller_of(&bdf).is_none(),
        "the kernel still shows a controller for {bdf}"
    );

    setup_sh_ok(&["unbind", &bdf]);
    assert_eq!(
        driver_of(&bdf).as_deref(),
        Some("nvme"),
        "{bdf} not back on nvme after unbind"
    );
    let ns = wait_for(60, || {
        let ns = namespaces(&controller_of(&bdf)?);
        (!ns.is_empty()).then_some(ns)
    })
    .unwrap_or_else(|| panic!("no namespace reappeared on {bdf} within 60 s of unbind"));
    let found: Vec<(u32, u32)> = ns.iter().map(|n| (n.nsid, n.lba)).collect();
    assert_eq!(
        found,
        [(1, lba)],
        "namespaces (nsid, LBA size) of {bdf} after unbind: {ns:?}"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn binding_the_4k_controller_gives_it_its_own_iommu_group_and_unbinding_restores_its_namespace() {
    bind_isolates_and_unbind_restores("IRONVME_VFIO_4K_BDF", 4096);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn binding_the_512_controller_gives_it_its_own_iommu_group_and_unbinding_restores_its_namespace() {
    bind_isolates_and_unbind_restores("IRONVME_VFIO_512_BDF", 512);
}

// ---- what setup.sh refuses -----------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn setup_refuses_to_bind_the_kernel_controller_while_a_namespace_is_mounted() {
    let bdf = guest_env("IRONVME_KERNEL_BDF");
    let _restore = BackToNvme(&bdf);
    let ctrl = controller_of(&bdf).expect("kernel controller not bound to nvme");
    let ns2 = namespaces(&ctrl)
        .into_iter()
        .find(|n| n.nsid == 2)
        .expect("no namespace 2");
    let dev = format!("/dev/{}", ns2.disk);

    // The guest root is read-only; /tmp is a tmpfs.
    let dir = std::env::temp_dir().join(format!("ironvme-rig-mnt-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    run("busybox", &["mke2fs", "-q", &dev]);
    run("mount", &[&dev, &dir.to_string_lossy()]);
    let mounted = Mounted(dir);

    let out = setup_sh(&["bind", &bdf]);
    let said = text(&out);
    assert!(
        !out.status.success(),
        "setup.sh bound {bdf} although {dev} is mounted:\n{said}"
    );
    assert!(
        said.contains(&ns2.disk) && said.contains("mounted"),
        "refusal should name {} and say it is mounted:\n{said}",
        ns2.disk
    );
    // Untouched: still on nvme, no override left behind, the filesystem still mounted.
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));
    assert_eq!(read(pci(&bdf).join("driver_override")), "(null)");
    assert!(is_mounted(&mounted.0), "{} is no longer mounted", mounted.0.display());
    assert_eq!(namespaces(&ctrl).len(), 2);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn setup_refuses_a_bdf_that_is_not_an_nvme_controller() {
    // On q35, 00:00.0 is the host bridge (class 0x060000).
    let bridge = "0000:00:00.0";
    assert_ne!(read(pci(bridge).join("class")), NVME_CLASS);
    let before = driver_of(bridge);
    let out = setup_sh(&["bind", bridge]);
    assert!(
        !out.status.success(),
        "setup.sh accepted the host bridge:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("not an NVMe controller"),
        "unexpected refusal:\n{}",
        text(&out)
    );
    assert_eq!(driver_of(bridge), before);
    assert_eq!(read(pci(bridge).join("driver_override")), "(null)");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn setup_refuses_a_bdf_that_does_not_exist_and_leaves_the_others_alone() {
    let missing = "0000:00:1e.7";
    assert!(!pci(missing).exists());
    let good = guest_env("IRONVME_VFIO_4K_BDF");
    let _restore = BackToNvme(&good);
    // One bad BDF on the command line refuses the whole command.
    let out = setup_sh(&["bind", &good, missing]);
    assert!(!out.status.success(), "setup.sh accepted {missing}:\n{}", text(&out));
    assert!(
        text(&out).contains("no such PCI device"),
        "unexpected refusal:\n{}",
        text(&out)
    );
    assert_eq!(driver_of(&good).as_deref(), Some("nvme"), "{good} was touched");
}
