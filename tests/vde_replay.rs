//! Intent log replay after a crash (the store dropped without its closing checkpoint, as
//! a killed process leaves it): what was acknowledged is there after the next open, and
//! replay keeps the order in which writes completed.

use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};

/// A 64 MiB store file on psync.
struct Disk {
    _dir: tempfile::TempDir,
    path: String,
}

impl Disk {
    fn new() -> Disk {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("vde.img");
        std::fs::File::create(&path).unwrap().set_len(64 << 20).unwrap();
        Disk {
            path: path.to_str().unwrap().to_string(),
            _dir: dir,
        }
    }

    fn device(&self) -> Device {
        let o = OpenOptions {
            backend: Some(Backend::Psync),
            file_block_size: Some(4096),
            ..Default::default()
        };
        Device::open(&self.path, &o).unwrap()
    }

    fn format(&self) -> Vde {
        Vde::format(self.device(), VdeOptions::default()).unwrap()
    }

    /// Opens the store, replaying its intent log; fsck must be clean.
    fn open(&self) -> Vde {
        let v = Vde::open(self.device(), VdeOptions::default()).unwrap();
        let r = v.fsck().unwrap();
        assert!(r.clean(), "{:?}", r.violations);
        v
    }
}

/// Ends `vde` as a killed process would: no checkpoint, nothing more written.
fn crash(vde: Vde) {
    std::mem::forget(vde);
}

fn block0(vde: &Vde, vol: &str) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    vde.vol_read(vol, 0, &mut b).unwrap();
    b
}

/// A put and a volume write acknowledged only through the intent log come back; their
/// blocks count as used (a new put does not take them).
#[test]
fn a_put_and_a_flushed_volume_write_are_replayed() {
    let disk = Disk::new();
    let v = disk.format();
    v.vol_create("v", 1 << 20).unwrap();
    v.put(b"a", &[1u8; 5000]).unwrap();
    v.vol_write("v", 0, &[2u8; 4096], false).unwrap();
    v.vol_flush().unwrap();
    crash(v);
    let v = disk.open();
    assert_eq!(v.get(b"a").unwrap(), vec![1u8; 5000]);
    assert_eq!(block0(&v, "v"), vec![2u8; 4096]);
    v.put(b"b", &[3u8; 9000]).unwrap();
    assert_eq!(v.get(b"a").unwrap(), vec![1u8; 5000]);
    assert_eq!(block0(&v, "v"), vec![2u8; 4096]);
    v.close().unwrap();
    let v = disk.open();
    assert_eq!(v.get(b"b").unwrap(), vec![3u8; 9000]);
}

/// A FUA write over an older, not yet flushed write to the same block, then a Flush: the
/// log must hold the older write's record first, or replay maps the older data over the
/// newer (the FUA write's record used to be appended at once, the older one by the Flush
/// after it).
#[test]
fn a_fua_write_is_not_undone_by_the_flush_of_an_older_write() {
    let disk = Disk::new();
    let v = disk.format();
    v.vol_create("v", 1 << 20).unwrap();
    v.vol_write("v", 0, &[1u8; 4096], false).unwrap();
    v.vol_write("v", 0, &[2u8; 4096], true).unwrap();
    v.vol_flush().unwrap();
    assert_eq!(block0(&v, "v"), vec![2u8; 4096]);
    crash(v);
    let v = disk.open();
    assert_eq!(block0(&v, "v"), vec![2u8; 4096], "the older write came back");
}
