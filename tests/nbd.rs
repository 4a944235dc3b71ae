//! The NBD server (`ironvme::export::nbd::serve`) on the host, over a file-backed export:
//! QEMU's NBD client (`qemu-img convert`, `qemu-io`) moves and checks data through it, and
//! a raw-protocol client checks the server's exact replies to malformed handshakes and
//! requests, pipelined requests answered by cookie, and stopping mid-traffic. The kernel
//! client (`nbd-client`, a file system on `/dev/nbd0`) is in `tests/guest_nbd.rs`.

mod common;

use common::pattern;
use ironvme::export::nbd::wire::*;
use ironvme::export::nbd::{Export, MAX_CONNECTIONS, serve};
use ironvme::export::{Backing, Stop};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A server on 127.0.0.1 over a file in a scratch directory, export "disk".
struct Server {
    port: u16,
    stop: Stop,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    file: PathBuf,
    block_size: u32,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(size: u64) -> Server {
        // The server's log, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("ironvme=info"))
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let backing = Arc::new(Backing::open(file.to_str().unwrap()).unwrap());
        let block_size = backing.info.block_size;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Stop::default();
        let exports = vec![Export {
            name: "disk".into(),
            backing,
        }];
        let s = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, exports, s));
        Server {
            port,
            stop,
            thread: Some(thread),
            file,
            block_size,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/disk", self.port)
    }

    /// Sets the stop flag and waits for `serve` to return (within `limit`).
    fn stop(&mut self, limit: Duration) -> std::io::Result<()> {
        self.stop.set();
        let t = self.thread.take().unwrap();
        let started = Instant::now();
        while !t.is_finished() {
            assert!(
                started.elapsed() < limit,
                "serve did not return within {limit:?} of stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop(Duration::from_secs(30));
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed ({}):\n{text}", out.status);
    text
}

/// A raw-protocol client.
struct Client {
    s: TcpStream,
}

impl Client {
    /// Connects and reads the greeting.
    fn greet(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client { s };
        let g = c.read(18);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c
    }

    /// Connects and sends the client flags (fixed newstyle, no zeroes).
    fn connect(port: u16) -> Client {
        let mut c = Client::greet(port);
        c.send(&3u32.to_be_bytes());
        c
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Whether the server closed the connection (reads the end of the stream).
    fn closed(&mut self) -> bool {
        let mut b = [0; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let h = OptionHeader {
            option,
            len: data.len() as u32,
        };
        self.send(&h.to_bytes());
        self.send(data);
    }

    /// One option reply: (option, type, data).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read(20);
        assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes(), "option reply magic");
        let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        let len = be32(&h[16..20]) as usize;
        (be32(&h[8..12]), be32(&h[12..16]), self.read(len))
    }

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// NBD_OPT_GO (or INFO) for `name` asking for `infos`: the replies up to the final
    /// one, and the final one's type.
    fn go(&mut self, option: u32, name: &str, infos: &[u16]) -> (Vec<Vec<u8>>, u32) {
        self.option(option, &Client::info_data(name, infos));
        let mut infos = Vec::new();
        loop {
            let (opt, ty, data) = self.option_reply();
            assert_eq!(opt, option);
            if ty != REP_INFO {
                return (infos, ty);
            }
            infos.push(data);
        }
    }

    /// Connects and enters transmission on "disk" with NBD_OPT_GO; returns the export
    /// size and transmission flags.
    fn transmission(port: u16) -> (Client, u64, u16) {
        let mut c = Client::connect(port);
        let (infos, last) = c.go(OPT_GO, "disk", &[INFO_BLOCK_SIZE]);
        assert_eq!(last, REP_ACK);
        let export = infos.iter().find(|i| i[..2] == [0, 0]).expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(export[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export[10..12].try_into().unwrap());
        (c, size, flags)
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32, data: &[u8]) {
        let r = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        self.send(&r.to_bytes());
        self.send(data);
    }

    /// A simple reply: (error, cookie).
    fn reply(&mut self) -> (u32, u64) {
        let r = self.read(16);
        assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes(), "simple reply magic");
        (
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
        )
    }

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(CMD_WRITE, 0, cookie, offset, data.len() as u32, data);
        let (err, c) = self.reply();
        assert_eq!(c, cookie);
        err
    }

    fn read_at(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, cookie, offset, len, &[]);
        let (err, c) = self.reply();
        assert_eq!(c, cookie);
        if err != 0 {
            return Err(err);
        }
        Ok(self.read(len as usize))
    }
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[offset as usize..offset as usize + len].to_vec()
}

#[test]
fn qemu_img_converts_an_image_in_and_out() {
    let size = 6 << 20;
    let srv = Server::start(size);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    // Data with a hole in the middle, so qemu-img also sends write zeroes or skips.
    let mut data = pattern(1, size as usize);
    data[(2 << 20)..(3 << 20)].fill(0);
    std::fs::write(&src, &data).unwrap();
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &srv.url(),
        ],
    );
    let back = dir.path().join("back.img");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &srv.url(), back.to_str().unwrap()],
    );
    assert!(std::fs::read(&back).unwrap() == data, "the image read back differs");
    assert!(std::fs::read(&srv.file).unwrap() == data, "the export's file differs");
    let info = run("qemu-img", &["info", "-f", "raw", &srv.url()]);
    assert!(info.contains(&format!("{size} bytes")), "{info}");
}

#[test]
fn qemu_io_writes_and_reads_patterns() {
    let srv = Server::start(4 << 20);
    let url = srv.url();
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "read -P 0xab 0 64k",
            "-c",
            "write -P 0x5a -f 64k 1M",
            "-c",
            "write -z 128k 64k",
            "-c",
            "read -P 0 128k 64k",
            "-c",
            "aio_write -P 0x11 2M 64k",
            "-c",
            "aio_write -P 0x22 3M 64k",
            "-c",
            "aio_write -P 0x33 3584k 256k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x11 2M 64k",
            "-c",
            "read -P 0x22 3M 64k",
            "-c",
            "read -P 0x33 3584k 256k",
            "-c",
            "discard 3M 64k",
            "-c",
            "flush",
            &url,
        ],
    );
    assert!(!out.contains("failed") && !out.contains("error"), "{out}");
    let f = &srv.file;
    assert!(file_bytes(f, 0, 65536).iter().all(|&b| b == 0xab));
    assert!(file_bytes(f, 64 << 10, 64 << 10).iter().all(|&b| b == 0x5a));
    assert!(file_bytes(f, 128 << 10, 64 << 10).iter().all(|&b| b == 0));
    assert!(file_bytes(f, 192 << 10, 896 << 10).iter().all(|&b| b == 0x5a));
    assert!(file_bytes(f, 1088 << 10, 4096).iter().all(|&b| b == 0));
    assert!(file_bytes(f, 3584 << 10, 256 << 10).iter().all(|&b| b == 0x33));
    // A pattern that is not there must be reported, or the checks above prove nothing.
    let bad = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0xcd 0 4k", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout).into_owned() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("Pattern verification failed"), "{text}");
}

#[test]
fn handshake_replies_and_refusals() {
    let srv = Server::start(1 << 20);
    let bs = srv.block_size;

    // Unknown option: NBD_REP_ERR_UNSUP, and the connection goes on (NBD_OPT_LIST).
    let mut c = Client::connect(srv.port);
    c.option(99, b"ignored");
    assert_eq!(c.option_reply(), (99, REP_ERR_UNSUP, vec![]));
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_UNSUP);
    c.option(OPT_LIST, &[]);
    let (_, ty, data) = c.option_reply();
    assert_eq!((ty, data), (REP_SERVER, [&[0, 0, 0, 4][..], b"disk"].concat()));
    assert_eq!(c.option_reply(), (OPT_LIST, REP_ACK, vec![]));
    c.option(OPT_LIST, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    // Unknown export: NBD_REP_ERR_UNKNOWN and no information.
    let (infos, last) = c.go(OPT_GO, "nope", &[]);
    assert_eq!((infos.len(), last), (0, REP_ERR_UNKNOWN));
    // A malformed GO (count promises more than is there): NBD_REP_ERR_INVALID.
    let mut d = Client::info_data("disk", &[INFO_NAME]);
    d.truncate(d.len() - 1);
    c.option(OPT_GO, &d);
    assert_eq!(c.option_reply(), (OPT_GO, REP_ERR_INVALID, vec![]));

    // INFO: the export's size and flags, its name, the block sizes.
    let (infos, last) = c.go(OPT_INFO, "disk", &[INFO_NAME, INFO_BLOCK_SIZE, INFO_DESCRIPTION]);
    assert_eq!(last, REP_ACK);
    let get = |t: u16| infos.iter().find(|i| i[..2] == t.to_be_bytes()).unwrap().clone();
    let export = get(INFO_EXPORT);
    assert_eq!(export.len(), 12);
    assert_eq!(u64::from_be_bytes(export[2..10].try_into().unwrap()), 1 << 20);
    let flags = u16::from_be_bytes(export[10..12].try_into().unwrap());
    assert_eq!(
        flags & (FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES | FLAG_READ_ONLY),
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES
    );
    assert_eq!(get(INFO_NAME), [&[0, 1][..], b"disk"].concat());
    assert!(String::from_utf8_lossy(&get(INFO_DESCRIPTION)[2..]).contains("disk.img"));
    let sizes = get(INFO_BLOCK_SIZE);
    let be32 = |at: usize| u32::from_be_bytes(sizes[at..at + 4].try_into().unwrap());
    assert_eq!(sizes.len(), 14);
    assert_eq!(be32(2), bs, "minimum block size is the namespace's");
    assert!(be32(6) >= bs && be32(6).is_power_of_two());
    assert!(be32(10) >= 1 << 20 && be32(10) <= 32 << 20);

    // ABORT: an ACK, then the server closes.
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply(), (OPT_ABORT, REP_ACK, vec![]));
    assert!(c.closed());

    // A bad option magic: a hard disconnect.
    let mut c = Client::connect(srv.port);
    c.send(b"IHAVEOPXxxxxxxxx");
    assert!(c.closed());

    // A huge option length: NBD_REP_ERR_TOO_BIG, then a hard disconnect without reading it.
    let mut c = Client::connect(srv.port);
    c.send(
        &OptionHeader {
            option: OPT_GO,
            len: 0xffff_fff0,
        }
        .to_bytes(),
    );
    assert_eq!(c.option_reply(), (OPT_GO, REP_ERR_TOO_BIG, vec![]));
    assert!(c.closed());

    // Unknown client flags: the server drops the connection.
    let mut c = Client::greet(srv.port);
    c.send(&0x8000_0001u32.to_be_bytes());
    assert!(c.closed());

    // EXPORT_NAME for an unknown export: closed (no error reply exists).
    let mut c = Client::connect(srv.port);
    c.option(OPT_EXPORT_NAME, b"nope");
    assert!(c.closed());

    // EXPORT_NAME without NO_ZEROES: size, flags and 124 zeroes, then transmission.
    let mut c = Client::greet(srv.port);
    c.send(&1u32.to_be_bytes());
    c.option(OPT_EXPORT_NAME, b"disk");
    let r = c.read(10 + 124);
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), 1 << 20);
    assert_eq!(u16::from_be_bytes(r[8..10].try_into().unwrap()), flags);
    assert!(r[10..].iter().all(|&b| b == 0));
    assert_eq!(c.write(1, 0, &pattern(5, bs as usize)), 0);
    assert_eq!(c.read_at(2, 0, bs).unwrap(), pattern(5, bs as usize));

    // After all of that the server still serves a new connection.
    let (mut c, size, _) = Client::transmission(srv.port);
    assert_eq!(size, 1 << 20);
    assert_eq!(c.read_at(3, 0, bs).unwrap(), pattern(5, bs as usize));
}

#[test]
fn bad_requests_get_errors_and_the_stream_stays_in_sync() {
    let srv = Server::start(1 << 20);
    let bs = srv.block_size as u64;
    let (mut c, size, _) = Client::transmission(srv.port);
    let data = pattern(9, 2 * bs as usize);
    assert_eq!(c.write(1, bs, &data), 0);

    // Out of range: EINVAL for a read, ENOSPC for a write (whose payload is discarded).
    assert_eq!(c.read_at(2, size, bs as u32), Err(EINVAL));
    assert_eq!(c.read_at(3, size - bs, 2 * bs as u32), Err(EINVAL));
    assert_eq!(c.read_at(4, u64::MAX - bs + 1, bs as u32), Err(EINVAL));
    assert_eq!(c.write(5, size - bs, &pattern(1, 2 * bs as usize)), ENOSPC);
    // Misaligned offset or length.
    assert_eq!(c.read_at(6, 1, bs as u32), Err(EINVAL));
    assert_eq!(c.read_at(7, 0, 100), Err(EINVAL));
    assert_eq!(c.write(8, 0, &[0xee; 100]), EINVAL);
    // Longer than the maximum payload (a read of 8 MiB; a write of 5 MiB is discarded).
    assert_eq!(c.read_at(9, 0, 8 << 20), Err(EINVAL));
    assert_eq!(c.write(10, 0, &vec![0xee; 5 << 20]), EINVAL);
    // Unknown command, a flag the command does not take.
    c.request(7, 0, 11, 0, bs as u32, &[]);
    assert_eq!(c.reply(), (EINVAL, 11));
    c.request(CMD_READ, CMD_FLAG_NO_HOLE, 12, 0, bs as u32, &[]);
    assert_eq!(c.reply(), (EINVAL, 12));

    // None of that touched the data, and the stream is in sync.
    assert_eq!(c.read_at(13, bs, 2 * bs as u32).unwrap(), data);
    assert!(std::fs::read(&srv.file).unwrap()[..bs as usize].iter().all(|&b| b == 0));

    // FUA write, flush, write zeroes (with and without NO_HOLE), trim.
    c.request(CMD_WRITE, CMD_FLAG_FUA, 14, 0, bs as u32, &pattern(2, bs as usize));
    assert_eq!(c.reply(), (0, 14));
    c.request(CMD_FLUSH, 0, 15, 0, 0, &[]);
    assert_eq!(c.reply(), (0, 15));
    assert_eq!(file_bytes(&srv.file, 0, bs as usize), pattern(2, bs as usize));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 16, bs, bs as u32, &[]);
    assert_eq!(c.reply(), (0, 16));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 17, 2 * bs, bs as u32, &[]);
    assert_eq!(c.reply(), (0, 17));
    assert_eq!(c.read_at(18, bs, 2 * bs as u32).unwrap(), vec![0; 2 * bs as usize]);
    c.request(CMD_WRITE_ZEROES, 0, 19, size - bs, 2 * bs as u32, &[]);
    assert_eq!(c.reply(), (ENOSPC, 19));
    c.request(CMD_TRIM, 0, 20, 4 * bs, 4 * bs as u32, &[]);
    assert_eq!(c.reply(), (0, 20));
    // Zero-length requests succeed without I/O.
    assert_eq!(c.read_at(21, 0, 0).unwrap(), Vec::<u8>::new());

    // A bad request magic: a hard disconnect.
    c.send(&[0u8; REQUEST_BYTES]);
    assert!(c.closed());

    // The server serves another connection, and DISC closes it.
    let (mut c, _, _) = Client::transmission(srv.port);
    assert_eq!(c.read_at(1, 0, bs as u32).unwrap(), pattern(2, bs as usize));
    c.request(CMD_DISC, 0, 2, 0, 0, &[]);
    assert!(c.closed());
}

/// 32 writes and then 32 reads sent without waiting: every reply comes back once, by
/// cookie, and each read returns what its write wrote.
#[test]
fn pipelined_requests_are_answered_by_cookie() {
    let srv = Server::start(8 << 20);
    let (mut c, _, _) = Client::transmission(srv.port);
    let len = 64 << 10;
    let mut out = Vec::new();
    for i in 0..32u64 {
        let r = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1000 + i,
            offset: i * len as u64 * 3 % (8 << 20),
            length: len as u32,
        };
        out.extend_from_slice(&r.to_bytes());
        out.extend_from_slice(&pattern(i, len));
    }
    // Write everything from another thread, as a pipelining client does, while replies
    // are read here.
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    let mut seen: Vec<u64> = (0..32)
        .map(|_| c.reply())
        .map(|(e, k)| {
            assert_eq!(e, 0);
            k
        })
        .collect();
    writer.join().unwrap();
    seen.sort();
    assert_eq!(seen, (1000..1032).collect::<Vec<u64>>());
    for i in 0..32u64 {
        c.request(CMD_READ, 0, i, i * len as u64 * 3 % (8 << 20), len as u32, &[]);
    }
    for _ in 0..32 {
        let (e, k) = c.reply();
        assert_eq!(e, 0);
        assert!(c.read(len) == pattern(k, len), "read {k} returned other data");
    }
}

#[test]
fn connections_beyond_the_bound_are_refused() {
    let srv = Server::start(1 << 20);
    let held: Vec<Client> = (0..MAX_CONNECTIONS).map(|_| Client::greet(srv.port)).collect();
    let s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut over = Client { s };
    assert!(over.closed(), "connection {} was served", MAX_CONNECTIONS + 1);
    drop(held);
    // Once they are gone, connections are served again.
    let started = Instant::now();
    loop {
        let s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0; 8];
        if (&s).read_exact(&mut g).is_ok() {
            assert_eq!(&g, b"NBDMAGIC");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop set while a client writes: `serve` returns, and every write acknowledged before
/// is in the file.
#[test]
fn stopping_mid_traffic_keeps_acknowledged_writes() {
    let mut srv = Server::start(16 << 20);
    let bs = srv.block_size as usize;
    let (mut c, _, _) = Client::transmission(srv.port);
    let len = 64 << 10;
    let traffic = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..10_000u64 {
            let off = (i % 256) * len as u64;
            let r = Request {
                flags: 0,
                kind: CMD_WRITE,
                cookie: i,
                offset: off,
                length: len as u32,
            };
            let mut msg = r.to_bytes().to_vec();
            msg.extend_from_slice(&pattern(i, len));
            if c.s.write_all(&msg).is_err() {
                break;
            }
            let mut reply = [0; 16];
            if c.s.read_exact(&mut reply).is_err() {
                break;
            }
            assert_eq!(reply[4..8], [0; 4], "write {i} failed");
            acked.push((i, off));
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    srv.stop(Duration::from_secs(20)).unwrap();
    let acked = traffic.join().unwrap();
    assert!(acked.len() > 2, "only {} writes before stop", acked.len());
    assert!(acked.len() < 10_000, "the client never noticed the stop");
    let file = std::fs::read(&srv.file).unwrap();
    let mut last = std::collections::HashMap::new();
    for (i, off) in acked {
        last.insert(off, i);
    }
    for (off, i) in last {
        let at = off as usize;
        assert!(
            file[at..at + len] == pattern(i, len)[..],
            "write {i} at {off} is not in the file"
        );
    }
    assert_eq!(file.len() % bs, 0);
}
