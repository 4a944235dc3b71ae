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

/// The variables setup.sh reads (SPDK's names); a run sees only those a test sets.
const SETUP_VARS: &[&str] = &[
    "PCI_ALLOWED",
    "PCI_BLOCKED",
    "NRHUGE",
    "HUGEMEM",
    "HUGENODE",
    "CLEAR_HUGE",
    "SHRINK_HUGE",
    "SKIP_HUGE",
    "TARGET_USER",
    "SUDO_USER",
    "MEMLOCK",
];

/// Runs `scripts/setup.sh ARGS...`, returning its output whatever its exit status.
fn setup_sh(args: &[&str]) -> Output {
    setup_sh_env(&[], args)
}

/// Runs `VAR=VALUE... scripts/setup.sh ARGS...` with none of [`SETUP_VARS`] inherited.
fn setup_sh_env(vars: &[(&str, &str)], args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let mut cmd = Command::new(&script);
    for var in SETUP_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(vars.iter().copied())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}

/// [`setup_sh_env`], failing the test unless it succeeds; returns its output.
fn setup_sh_env_ok(vars: &[(&str, &str)], args: &[&str]) -> String {
    let out = setup_sh_env(vars, args);
    let text = text(&out);
    assert!(
        out.status.success(),
        "{vars:?} scripts/setup.sh {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn setup_sh_ok(args: &[&str]) -> String {
    setup_sh_env_ok(&[], args)
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

/// Mounts a fresh filesystem on the kernel controller's namespace 2, asks setup.sh to bind
/// the controller through `bind` (given its BDF), and checks the refusal: exit status 1,
/// the namespace named and said to be mounted, nothing touched.
fn refuses_to_bind_the_kernel_controller_while_mounted(bind: impl FnOnce(&str) -> Output) {
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

    let out = bind(&bdf);
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "setup.sh should refuse {bdf} (exit status 1) while {dev} is mounted:\n{said}"
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
fn setup_refuses_to_bind_the_kernel_controller_while_a_namespace_is_mounted() {
    refuses_to_bind_the_kernel_controller_while_mounted(|bdf| setup_sh(&["bind", bdf]));
}

/// The same refusal when the controller is named SPDK's way, in PCI_ALLOWED, to the
/// default verb (config).
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn config_refuses_the_kernel_controller_named_in_pci_allowed_while_a_namespace_is_mounted() {
    refuses_to_bind_the_kernel_controller_while_mounted(|bdf| setup_sh_env(&[("PCI_ALLOWED", bdf)], &[]));
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

// ---- SPDK's verbs and variables ------------------------------------------------------

/// Every controller of the default topology, by the variables `qemu/run` exports.
fn all_controllers() -> Vec<String> {
    [
        "IRONVME_KERNEL_BDF",
        "IRONVME_VFIO_4K_BDF",
        "IRONVME_VFIO_512_BDF",
        "IRONVME_FAULT_BDF",
        "IRONVME_META_BDF",
        "IRONVME_NSATTACH_BDF",
    ]
    .into_iter()
    .map(guest_env)
    .collect()
}

/// The owner (uid) of a file.
fn owner(path: impl AsRef<Path>) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let path = path.as_ref();
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .uid()
}

/// The IOMMU group number of a PCI device.
fn iommu_group(bdf: &str) -> String {
    let group = fs::read_link(pci(bdf).join("iommu_group")).expect("no IOMMU group");
    group.file_name().unwrap().to_string_lossy().into_owned()
}

/// The whitespace-separated fields of the line of `status`'s table for `bdf`.
fn status_row(stdout: &str, bdf: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|f| f.get(1).map(String::as_str) == Some(bdf))
        .unwrap_or_else(|| panic!("no row for {bdf} in setup.sh status:\n{stdout}"))
}

/// Environment variables for one run of setup.sh.
type Vars<'a> = &'a [(&'a str, &'a str)];

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn config_without_a_named_device_refuses_with_status_2_and_touches_nothing() {
    let vfio = guest_env("IRONVME_VFIO_4K_BDF");
    let runs: [(Vars, &[&str]); 4] = [
        (&[], &[]),
        (&[], &["config"]),
        (&[("PCI_ALLOWED", "")], &["config"]),
        // Blocking one device names none: SPDK's would then bind all the others.
        (&[("PCI_BLOCKED", &vfio)], &["config"]),
    ];
    for (vars, args) in runs {
        let out = setup_sh_env(vars, args);
        let said = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{vars:?} setup.sh {args:?} should refuse with exit status 2:\n{said}"
        );
        assert!(
            said.contains("no device named") && said.contains("PCI_ALLOWED"),
            "{vars:?} setup.sh {args:?} should say no device was named and how to name one:\n{said}"
        );
    }
    for bdf in all_controllers() {
        assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"), "{bdf} was touched");
        assert_eq!(read(pci(&bdf).join("driver_override")), "(null)", "{bdf} was touched");
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn config_binds_what_pci_allowed_names_but_not_pci_blocked_and_reset_gives_it_back() {
    let bound = guest_env("IRONVME_VFIO_4K_BDF");
    let blocked = guest_env("IRONVME_VFIO_512_BDF");
    let _restore = (BackToNvme(&bound), BackToNvme(&blocked));

    let allowed = format!("{bound} {blocked}");
    let said = setup_sh_env_ok(&[("PCI_ALLOWED", &allowed), ("PCI_BLOCKED", &blocked)], &["config"]);
    assert_eq!(
        driver_of(&bound).as_deref(),
        Some("vfio-pci"),
        "{bound} not bound:\n{said}"
    );
    assert_eq!(
        driver_of(&blocked).as_deref(),
        Some("nvme"),
        "{blocked} is in PCI_BLOCKED:\n{said}"
    );
    assert!(
        said.lines().any(|l| l.contains(&blocked) && l.contains("PCI_BLOCKED")),
        "setup.sh should say it skipped {blocked} for PCI_BLOCKED:\n{said}"
    );
    // As SPDK's: the override is cleared once vfio-pci has the device.
    assert_eq!(read(pci(&bound).join("driver_override")), "(null)");

    // status: the bound controller has no kernel name and no block devices.
    let out = setup_sh(&["status"]);
    let row = status_row(&String::from_utf8_lossy(&out.stdout), &bound);
    assert_eq!(row[5..], ["vfio-pci", "-", "-"], "status row of {bound}: {row:?}");

    // reset without names gives back every NVMe controller not on nvme, except those
    // in PCI_BLOCKED.
    let said = setup_sh_env_ok(&[("PCI_BLOCKED", &bound)], &["reset"]);
    assert_eq!(
        driver_of(&bound).as_deref(),
        Some("vfio-pci"),
        "reset took a blocked controller:\n{said}"
    );
    let said = setup_sh_ok(&["reset"]);
    assert_eq!(
        driver_of(&bound).as_deref(),
        Some("nvme"),
        "reset did not give {bound} back:\n{said}"
    );
    assert!(
        controller_of(&bound).is_some(),
        "no kernel controller for {bound} after reset"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn status_prints_spdk_columns_with_a_numa_column_for_every_controller() {
    let out = setup_sh(&["status"]);
    assert!(out.status.success(), "setup.sh status failed:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().next(), Some("Hugepages"), "{stdout}");
    // As SPDK's, the headers go to stderr: `status 2>/dev/null` gives the rows alone.
    let header = [
        "Type", "BDF", "Vendor", "Device", "NUMA", "Driver", "Device", "Block", "devices",
    ];
    assert!(
        stderr.lines().any(|l| l.split_whitespace().eq(header)),
        "no SPDK header {header:?} in:\n{stderr}"
    );
    let numa = fs::read_dir("/sys/devices/system/node")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("hugepages").is_dir()))
        .unwrap_or(false);
    for bdf in all_controllers() {
        let row = status_row(&stdout, &bdf);
        let node = match read(pci(&bdf).join("numa_node")).as_str() {
            _ if !numa => "-".to_string(),
            "-1" => "unknown".to_string(),
            n => n.to_string(),
        };
        let ctrl = controller_of(&bdf).unwrap_or_else(|| panic!("{bdf} is not on nvme"));
        let mut disks: Vec<String> = namespaces(&ctrl).into_iter().map(|n| n.disk).collect();
        if disks.is_empty() {
            disks.push("-".into());
        }
        let mut shown = row[7..].to_vec();
        shown.sort();
        disks.sort();
        let name = ctrl.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            row[..7],
            ["NVMe", &bdf, "1b36", "0010", &node, "nvme", &name],
            "status row of {bdf}"
        );
        assert_eq!(shown, disks, "block devices of {bdf} in {row:?}");
    }
}

/// Sets a sysfs value for a test and puts the old one back when dropped.
struct SysfsRestore(PathBuf, String);

impl Drop for SysfsRestore {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, format!("{}\n", self.1));
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn hugepages_follow_spdks_variables_and_cleanup_frees_them_and_clears_stale_overrides() {
    let global = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    let node0 = Path::new("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages");
    assert!(node0.exists(), "the guest has no NUMA node 0");
    let _restore = SysfsRestore(global.to_path_buf(), read(global));
    let pages = |path: &Path| -> u64 { read(path).parse().unwrap() };
    // PCI_ALLOWED=none: no device, hugepages only.
    let huge = |vars: &[(&str, &str)]| -> String {
        let mut all = vec![("PCI_ALLOWED", "none")];
        all.extend_from_slice(vars);
        setup_sh_env_ok(&all, &[])
    };

    huge(&[("CLEAR_HUGE", "yes"), ("NRHUGE", "4")]);
    assert_eq!(pages(global), 4, "NRHUGE=4");
    // HUGEMEM=5 MB is 3 pages: fewer than reserved, so kept unless SHRINK_HUGE=yes.
    let said = huge(&[("HUGEMEM", "5")]);
    assert_eq!(pages(global), 4, "HUGEMEM=5 without SHRINK_HUGE:\n{said}");
    huge(&[("HUGEMEM", "5"), ("SHRINK_HUGE", "yes")]);
    assert_eq!(pages(global), 3, "HUGEMEM=5 SHRINK_HUGE=yes");
    huge(&[("NRHUGE", "8"), ("SKIP_HUGE", "yes")]);
    assert_eq!(pages(global), 3, "SKIP_HUGE=yes");
    huge(&[("HUGENODE", "nodes_hp[0]=6")]);
    assert_eq!(pages(node0), 6, "HUGENODE=nodes_hp[0]=6");
    huge(&[("HUGENODE", "0"), ("NRHUGE", "2"), ("CLEAR_HUGE", "yes")]);
    assert_eq!(pages(node0), 2, "HUGENODE=0 NRHUGE=2 CLEAR_HUGE=yes");
    let said = huge(&[("HUGENODE", "nodes_hp[0]=2,nodes_hp[63]=1")]);
    assert!(said.contains("node 63 does not exist"), "{said}");
    assert_eq!(pages(node0), 2);

    // A vfio-pci override left on a controller the kernel drives would hand it to
    // vfio-pci at its next probe; cleanup clears it (the binding is left alone).
    let bdf = guest_env("IRONVME_VFIO_512_BDF");
    let override_path = pci(&bdf).join("driver_override");
    let _clear = SysfsRestore(override_path.clone(), String::new());
    fs::write(&override_path, "vfio-pci\n").unwrap();

    let said = setup_sh_ok(&["cleanup"]);
    assert_eq!(pages(global), 0, "cleanup left hugepages:\n{said}");
    assert_eq!(read(&override_path), "(null)", "cleanup left the override:\n{said}");
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));
}

/// A tmpfs mounted over a directory for a test (the guest's root is read-only).
struct TmpfsOver(PathBuf);

impl TmpfsOver {
    fn mount(dir: &Path) -> TmpfsOver {
        assert!(dir.is_dir(), "{} does not exist", dir.display());
        run("mount", &["-t", "tmpfs", "ironvme-test", &dir.to_string_lossy()]);
        TmpfsOver(dir.to_path_buf())
    }
}

impl Drop for TmpfsOver {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn target_user_gets_the_vfio_group_and_a_memlock_limit_never_root_and_cleanup_removes_it() {
    let bdf = guest_env("IRONVME_VFIO_4K_BDF");
    let _restore = BackToNvme(&bdf);
    let limits = TmpfsOver::mount(Path::new("/etc/security/limits.d"));
    let conf = limits.0.join("ironvme-nobody.conf");
    let nobody: u32 = String::from_utf8_lossy(&run("id", &["-u", "nobody"]).stdout)
        .trim()
        .parse()
        .unwrap();

    // Never for root: the node stays root's, no limit is written.
    setup_sh_env_ok(&[("TARGET_USER", "root")], &["config", &bdf]);
    assert_eq!(driver_of(&bdf).as_deref(), Some("vfio-pci"));
    let node = format!("/dev/vfio/{}", iommu_group(&bdf));
    assert_eq!(owner(&node), 0, "{node} given away for TARGET_USER=root");
    assert_eq!(
        fs::read_dir(&limits.0).unwrap().count(),
        0,
        "a limit was written for root"
    );

    // TARGET_USER defaults to SUDO_USER; the limit is SPDK's 2048 MB (in KB).
    let said = setup_sh_env_ok(&[("SUDO_USER", "nobody")], &["config", &bdf]);
    assert_eq!(owner(&node), nobody, "{node} not given to nobody:\n{said}");
    let text = read(&conf);
    for kind in ["soft", "hard"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().eq(["nobody", kind, "memlock", "2097152"])),
            "no {kind} memlock line of 2048 MB in {}:\n{text}",
            conf.display()
        );
    }
    setup_sh_env_ok(
        &[("TARGET_USER", "nobody"), ("MEMLOCK", "unlimited")],
        &["config", &bdf],
    );
    let text = read(&conf);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["nobody", "hard", "memlock", "unlimited"])),
        "MEMLOCK=unlimited not written:\n{text}"
    );

    let said = setup_sh_ok(&["cleanup"]);
    assert!(!conf.exists(), "cleanup left {}:\n{said}", conf.display());
    setup_sh_ok(&["reset", &bdf]);
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));
}
