//! The NVMe/TCP target (`ironvme::export::nvme_tcp::serve`) on the host, in-process, over
//! a file-backed namespace (io_uring backend), driven by a raw NVMe/TCP client written
//! here from the specifications (NVMe/TCP Transport 1.0, NVMe over Fabrics 1.1, NVMe Base
//! 2.0; Linux `include/linux/nvme-tcp.h` for the byte layouts):
//!
//! - the happy path, without and with header and data digests: ICReq/ICResp, Connect of
//!   the admin queue and an I/O queue, Property Get/Set, Identify pages parsed with the
//!   driver's parsers, Write in-capsule and through R2T/H2CData, Read through C2HData,
//!   Flush, Write Zeroes, Dataset Management, the data checked on the wire and in the
//!   file; Compare as ONCS says (a file has no Compare: Invalid Command Opcode; a
//!   namespace with one: success, and Compare Failure 285h on different data);
//! - malformed input: PDU-level errors get a C2HTermReq with the specification's FES and
//!   only that connection closes; command-level errors get the specification's status and
//!   the connection goes on; a data digest error fails only its command; in every case a
//!   healthy association opened before keeps doing verified I/O;
//! - keep-alive timeout ending an association;
//! - a flood of connections beyond `MAX_CONNECTIONS`, with the server's memory growth
//!   bounded by what a connection may hold;
//! - `ironvme serve` as a process: stats lines, and SIGTERM exits 0.
//!
//! The kernel initiator is in `tests/guest_nvme_tcp.rs`.

mod common;

use common::pattern;
use ironvme::export::nvme_tcp::conn::{Conn, MAXH2CDATA};
use ironvme::export::nvme_tcp::ctrl::{DISCOVERY_NQN, HostPolicy, INLINE_DATA, IO_QUEUE_ENTRIES, Subsystem, Target};
use ironvme::export::nvme_tcp::{DEFAULT_IDLE_SPIN, MAX_CONNECTIONS, Namespace, Stats, serve};
use ironvme::export::{Backing, Stop};
use ironvme_nvme::cmd::{Command, DsmAttributes, DsmRange};
use ironvme_nvme::completion::Completion;
use ironvme_nvme::features::FeatureId;
use ironvme_nvme::identify::{
    Cns, IdentifyController, IdentifyNamespace, NamespaceDescriptor, NamespaceList, parse_namespace_descriptors,
};
use ironvme_nvme::sgl::SglDescriptor;
use ironvme_nvme::status::Status;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The served subsystem.
const NQN: &str = "nqn.2026-12.io.ironvme:host-test";
/// The host allowed to connect.
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0f6c2d64-5a7e-4c1b-9a43-1d2e3f405162";
/// A host that is not.
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000beef";
/// The namespace's file, bytes.
const DISK_BYTES: u64 = 32 << 20;

/// The flood test measures the whole process's memory, so it runs alone: it takes this
/// for writing, every other test for reading.
static GATE: RwLock<()> = RwLock::new(());

/// PDU types, common header flags and fatal error statuses (NVMe/TCP 1.0, 3.6).
mod wire {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;

    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    pub const LAST_PDU: u8 = 0x04;
    pub const SUCCESS: u8 = 0x08;

    /// Invalid PDU Header Field; FEI is the field's offset.
    pub const FES_INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU Sequence Error.
    pub const FES_SEQUENCE: u16 = 0x02;
    /// Header Digest Error.
    pub const FES_HEADER_DIGEST: u16 = 0x03;
    /// Data Transfer Out of Range.
    pub const FES_OUT_OF_RANGE: u16 = 0x04;
    /// Data Transfer Limit Exceeded.
    pub const FES_LIMIT_EXCEEDED: u16 = 0x05;

    /// Fabrics command opcode and command types (NVMe over Fabrics 1.1, 3.1).
    pub const FABRICS: u8 = 0x7F;
    pub const PROPERTY_SET: u32 = 0x00;
    pub const CONNECT: u32 = 0x01;
    pub const PROPERTY_GET: u32 = 0x04;

    /// Properties (NVMe Base 2.0, 3.1.3): offsets in bytes.
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// Transient Transport Error (generic status 22h): a data digest error fails the command
/// and the host may retry it (NVMe/TCP 1.0, 7.4.6.2).
const TRANSIENT_TRANSPORT_ERROR: Status = Status::new(0, 0x22);
/// Connect Invalid Parameters and Connect Invalid Host (NVMe over Fabrics 1.1, figure 21).
const CONNECT_INVALID_PARAMETERS: Status = Status::new(1, 0x82);
const CONNECT_INVALID_HOST: Status = Status::new(1, 0x84);

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------

/// `serve` on 127.0.0.1 over a file in a scratch directory: subsystem [`NQN`] with one
/// namespace, [`HOST`] allowed.
struct Server {
    addr: SocketAddr,
    stop: Stop,
    stats: Arc<Stats>,
    subsystem: Arc<Subsystem>,
    thread: Option<JoinHandle<Result<(), String>>>,
    file: PathBuf,
    block_size: usize,
    blocks: u64,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Builds the target as `ironvme serve` does (src/cli/serve.rs): the discovery
    /// subsystem first, then ours; `groups` poll groups.
    fn start(groups: usize) -> Server {
        // The target's log, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("ironvme=info"))
            .with_ansi(false)
            .with_test_writer()
            .try_init();
        let (dir, file) = disk_image();
        let backing = Arc::new(Backing::open(file.to_str().unwrap()).unwrap());
        let (block_size, blocks) = (backing.info.block_size as usize, backing.info.blocks);
        let subsystem = Arc::new(Subsystem::new(
            NQN.into(),
            "ironvme-host-test".into(),
            "ironvme".into(),
            vec![Namespace::new(NQN, 1, backing, 0)],
            HostPolicy::Only(vec![HOST.into()]),
        ));
        let discovery = Arc::new(Subsystem::new(
            DISCOVERY_NQN.into(),
            "discovery".into(),
            "ironvme discovery".into(),
            Vec::new(),
            HostPolicy::Any,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Target {
            subsystems: vec![discovery, Arc::clone(&subsystem)],
            listeners: vec![addr],
        });
        let (stop, stats) = (Stop::default(), Arc::new(Stats::default()));
        let (s, st) = (stop.clone(), Arc::clone(&stats));
        let placement = vec![None; groups];
        let thread = std::thread::spawn(move || serve(vec![listener], target, &placement, DEFAULT_IDLE_SPIN, s, st));
        Server {
            addr,
            stop,
            stats,
            subsystem,
            thread: Some(thread),
            file,
            block_size,
            blocks,
            _dir: dir,
        }
    }

    fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Sets the stop flag; `serve` must return Ok within 10 s.
    fn stop(&mut self) {
        self.stop.set();
        let t = self.thread.take().unwrap();
        wait_until("serve returning after stop", Duration::from_secs(10), || {
            t.is_finished()
        });
        match t.join() {
            Ok(r) => r.expect("serve failed"),
            Err(_) => panic!("serve panicked (a poll group panicked)"),
        }
    }

    /// `len` bytes of the file at `offset`.
    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0; len];
        std::fs::File::open(&self.file)
            .unwrap()
            .read_exact_at(&mut b, offset)
            .unwrap();
        b
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(t) = self.thread.take() {
            let started = Instant::now();
            while !t.is_finished() && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A raw NVMe/TCP host
// ---------------------------------------------------------------------------------------

/// A received PDU: its header (HLEN bytes, with the common header) and data, digests
/// checked.
#[derive(Debug)]
struct Pdu {
    ty: u8,
    flags: u8,
    hlen: u8,
    plen: u32,
    header: Vec<u8>,
    data: Vec<u8>,
}

impl Pdu {
    fn u16_at(&self, o: usize) -> u16 {
        le16(&self.header, o)
    }

    fn u32_at(&self, o: usize) -> u32 {
        le32(&self.header, o)
    }

    /// The completion queue entry of a CapsuleResp.
    fn cqe(&self) -> Completion {
        assert_eq!(self.ty, wire::CAPSULE_RESP, "not a CapsuleResp: {self:?}");
        Completion::from_bytes(self.header[8..24].try_into().unwrap())
    }
}

/// How a command moves data.
enum Xfer<'a> {
    None,
    /// To the controller: in-capsule if it fits the queue's in-capsule data size, else
    /// through R2T and H2CData PDUs of at most MAXH2CDATA.
    Out(&'a [u8]),
    /// To the controller through R2T, in H2CData PDUs of this many bytes.
    OutR2t(&'a [u8], usize),
    /// From the controller, this many bytes.
    In(usize),
}

/// A completed command.
struct Done {
    cqe: Completion,
    data: Vec<u8>,
    /// The R2T the controller sent for it.
    r2t: Option<Pdu>,
}

impl Done {
    fn status(&self) -> Status {
        self.cqe.status()
    }

    #[track_caller]
    fn ok(self) -> Done {
        assert!(self.status().is_success(), "command failed: {}", self.status());
        self
    }

    /// DW0 and DW1 as one value (Property Get).
    fn value(&self) -> u64 {
        self.cqe.dw0 as u64 | (self.cqe.dw1 as u64) << 32
    }
}

/// One NVMe/TCP connection (one queue).
struct Client {
    s: TcpStream,
    hdgst: bool,
    ddgst: bool,
    hpda: u8,
    maxh2cdata: u32,
    /// The most in-capsule data this queue takes, bytes.
    icd_max: usize,
    cid: u16,
    /// SQ flow control disabled at Connect (CATTR bit 2).
    sqflow_off: bool,
    /// Capsules sent.
    sent: u32,
    /// Once connected with SQ flow control: the queue's entries; every response's SQHD
    /// is then checked against the capsules sent.
    sq_entries: Option<u16>,
}

/// SGL descriptor identifiers (NVMe/TCP 1.0, 3.4): in-capsule data (Data Block, Offset)
/// and data moved by R2T/C2HData (Transport Data Block, transport specific).
const SGL_IN_CAPSULE: u8 = 0x01;
const SGL_TRANSPORT: u8 = 0x5A;

fn sgl(id: u8, len: usize) -> SglDescriptor {
    SglDescriptor {
        addr: 0,
        len: len as u32,
        reserved: [0; 3],
        id,
    }
}

/// An ICReq (NVMe/TCP 1.0 figure 27): PFV 0, HPDA, digests asked for, MAXR2T 0.
fn ic_req(hdgst: bool, ddgst: bool, hpda: u8) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..4].copy_from_slice(&[wire::IC_REQ, 0, 128, 0]);
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[10] = hpda;
    b[11] = hdgst as u8 | (ddgst as u8) << 1;
    b
}

impl Client {
    /// A TCP connection, nothing sent.
    fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            hdgst: false,
            ddgst: false,
            hpda: 0,
            maxh2cdata: 4096,
            // Linux's NVME_TCP_ADMIN_CCSZ until Identify says IOCCSZ.
            icd_max: 8192,
            cid: 0,
            sqflow_off: false,
            sent: 0,
            sq_entries: None,
        }
    }

    /// ICReq, and the checks of its ICResp: PFV 0, CPDA 0, the digests echoed, a
    /// MAXH2CDATA of at least 4 KiB in dwords. Returns the ICResp.
    fn initialize(&mut self, hdgst: bool, ddgst: bool, hpda: u8) -> Pdu {
        self.send(&ic_req(hdgst, ddgst, hpda));
        let r = self.recv().expect("ICResp");
        assert_eq!((r.ty, r.flags, r.hlen, r.plen), (wire::IC_RESP, 0, 128, 128), "{r:?}");
        assert_eq!(r.header[3], 0, "ICResp PDO");
        assert_eq!(r.u16_at(8), 0, "ICResp PFV");
        assert_eq!(r.header[10], 0, "ICResp CPDA");
        assert_eq!(r.header[11], hdgst as u8 | (ddgst as u8) << 1, "ICResp DGST");
        let maxh2cdata = r.u32_at(12);
        assert!(maxh2cdata >= 4096 && maxh2cdata % 4 == 0, "MAXH2CDATA {maxh2cdata}");
        (self.hdgst, self.ddgst, self.hpda, self.maxh2cdata) = (hdgst, ddgst, hpda, maxh2cdata);
        r
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// A PDU of `ty` with header fields `rest` (bytes 8..HLEN) and `data`, with the
    /// negotiated digests; PDO right after the header (CPDA 0).
    fn pdu(&self, ty: u8, flags: u8, rest: &[u8], data: &[u8]) -> Vec<u8> {
        let hlen = 8 + rest.len();
        let hd = if self.hdgst { 4 } else { 0 };
        let mut f = flags | if self.hdgst { wire::HDGSTF } else { 0 };
        let (pdo, plen) = if data.is_empty() {
            (0, hlen + hd)
        } else {
            if self.ddgst {
                f |= wire::DDGSTF;
            }
            (hlen + hd, hlen + hd + data.len() + if self.ddgst { 4 } else { 0 })
        };
        let mut b = Vec::with_capacity(plen);
        b.extend_from_slice(&[ty, f, hlen as u8, pdo as u8]);
        b.extend_from_slice(&(plen as u32).to_le_bytes());
        b.extend_from_slice(rest);
        if self.hdgst {
            let d = crc32c::crc32c(&b[..hlen]);
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(data);
        if !data.is_empty() && self.ddgst {
            b.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
        b
    }

    /// A CapsuleCmd carrying `cmd` and in-capsule data `icd`.
    fn capsule(&self, cmd: &Command, icd: &[u8]) -> Vec<u8> {
        self.pdu(wire::CAPSULE_CMD, 0, &cmd.to_bytes(), icd)
    }

    /// An H2CData PDU: CCCID, TTAG, DATAO, DATAL, then the data.
    fn h2c_data(&self, cccid: u16, ttag: u16, datao: u32, datal: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut rest = [0u8; 16];
        rest[0..2].copy_from_slice(&cccid.to_le_bytes());
        rest[2..4].copy_from_slice(&ttag.to_le_bytes());
        rest[4..8].copy_from_slice(&datao.to_le_bytes());
        rest[8..12].copy_from_slice(&datal.to_le_bytes());
        self.pdu(wire::H2C_DATA, if last { wire::LAST_PDU } else { 0 }, &rest, data)
    }

    /// Reads one PDU and checks its lengths, flags, alignment and digests: every PDU
    /// after ICResp but a C2HTermReq carries the negotiated digests, and data starts at a
    /// multiple of (HPDA+1)×4 bytes.
    fn recv(&mut self) -> std::io::Result<Pdu> {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch)?;
        let (ty, flags, hlen, pdo) = (ch[0], ch[1], ch[2] as usize, ch[3] as usize);
        let plen = le32(&ch, 4);
        assert!(
            hlen >= 8 && plen as usize >= hlen && plen <= 4 << 20,
            "PDU lengths: {ch:?}"
        );
        let mut all = ch.to_vec();
        all.resize(plen as usize, 0);
        self.s.read_exact(&mut all[8..])?;
        let header = all[..hlen].to_vec();
        let (has_h, has_d) = (flags & wire::HDGSTF != 0, flags & wire::DDGSTF != 0);
        let plain = ty == wire::C2H_TERM_REQ || ty == wire::IC_RESP;
        if plain {
            assert!(!has_h && !has_d, "digest flags on PDU {ty:#x}");
        } else {
            assert_eq!(has_h, self.hdgst, "HDGSTF of PDU {ty:#x}");
        }
        let mut at = hlen;
        if has_h {
            assert_eq!(le32(&all, at), crc32c::crc32c(&header), "header digest of PDU {ty:#x}");
            at += 4;
        }
        let data = if ty == wire::C2H_TERM_REQ {
            all[hlen..].to_vec()
        } else if pdo == 0 {
            assert_eq!(plen as usize, at, "PDU {ty:#x} without data: PLEN past its header");
            assert!(!has_d, "DDGSTF on PDU {ty:#x} without data");
            Vec::new()
        } else {
            assert!(pdo >= at, "PDO {pdo} inside the header of PDU {ty:#x}");
            let align = (self.hpda as usize + 1) * 4;
            assert_eq!(
                pdo % align,
                0,
                "PDO {pdo} of PDU {ty:#x} is not aligned to HPDA {}",
                self.hpda
            );
            assert_eq!(has_d, self.ddgst, "DDGSTF of PDU {ty:#x}");
            let end = plen as usize - if has_d { 4 } else { 0 };
            let data = all[pdo..end].to_vec();
            if has_d {
                assert_eq!(le32(&all, end), crc32c::crc32c(&data), "data digest of PDU {ty:#x}");
            }
            data
        };
        Ok(Pdu {
            ty,
            flags,
            hlen: hlen as u8,
            plen,
            header,
            data,
        })
    }

    #[track_caller]
    fn recv_ok(&mut self) -> Pdu {
        let p = self.recv().unwrap_or_else(|e| panic!("no PDU from the target: {e}"));
        assert!(
            p.ty != wire::C2H_TERM_REQ,
            "the target terminated the connection: FES {:#x}, FEI {}",
            p.u16_at(8),
            p.u32_at(10)
        );
        p
    }

    /// Expects a C2HTermReq with `fes` (and FEI `fei`), then the connection closed.
    #[track_caller]
    fn expect_term(&mut self, what: &str, fes: u16, fei: Option<u32>) {
        let p = self.recv().unwrap_or_else(|e| panic!("{what}: no C2HTermReq: {e}"));
        assert_eq!(p.ty, wire::C2H_TERM_REQ, "{what}: {p:?}");
        assert_eq!((p.flags, p.hlen), (0, 24), "{what}: C2HTermReq header");
        assert!(p.plen <= 152, "{what}: C2HTermReq PLEN {}", p.plen);
        assert_eq!(p.u16_at(8), fes, "{what}: FES");
        if let Some(fei) = fei {
            assert_eq!(p.u32_at(10), fei, "{what}: FEI");
        }
        self.expect_closed(what);
    }

    /// Expects the target to close the connection (within the read timeout).
    #[track_caller]
    fn expect_closed(&mut self, what: &str) {
        let mut b = [0u8; 256];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => panic!("{what}: the connection stayed open and sent {n} more bytes"),
            Err(e) => panic!("{what}: the connection stayed open ({e})"),
        }
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Runs `cmd`, moving its data as `x` says; returns its completion and data.
    fn exec(&mut self, cmd: Command, x: Xfer<'_>) -> Done {
        self.exec_mangled(cmd, x, |_, _| {})
    }

    /// [`Client::exec`], letting `mangle` change each PDU sent for the command (0: the
    /// capsule, 1..: the H2CData PDUs) before it goes.
    fn exec_mangled(&mut self, mut cmd: Command, x: Xfer<'_>, mangle: impl Fn(usize, &mut Vec<u8>)) -> Done {
        let cid = self.next_cid();
        cmd.set_cid(cid);
        let mut icd: &[u8] = &[];
        let mut later = None;
        match x {
            Xfer::None => {}
            Xfer::Out(d) if d.len() <= self.icd_max => {
                cmd.set_sgl(sgl(SGL_IN_CAPSULE, d.len()));
                icd = d;
            }
            Xfer::Out(d) => {
                cmd.set_sgl(sgl(SGL_TRANSPORT, d.len()));
                later = Some((d, self.maxh2cdata as usize));
            }
            Xfer::OutR2t(d, chunk) => {
                cmd.set_sgl(sgl(SGL_TRANSPORT, d.len()));
                later = Some((d, chunk));
            }
            Xfer::In(n) => cmd.set_sgl(sgl(SGL_TRANSPORT, n)),
        }
        let mut b = self.capsule(&cmd, icd);
        mangle(0, &mut b);
        self.send(&b);
        self.sent += 1;
        let mut r2t = None;
        if let Some((d, chunk)) = later {
            let p = self.recv_ok();
            if p.ty == wire::CAPSULE_RESP {
                // Refused before its data.
                return self.done(cid, p, Vec::new(), None);
            }
            assert_eq!(p.ty, wire::R2T, "expected an R2T: {p:?}");
            assert_eq!(
                (p.u16_at(8), p.u32_at(12), p.u32_at(16)),
                (cid, 0, d.len() as u32),
                "R2T CCCID, R2TO, R2TL"
            );
            let ttag = p.u16_at(10);
            for (i, piece) in d.chunks(chunk).enumerate() {
                let last = (i + 1) * chunk >= d.len();
                let mut b = self.h2c_data(cid, ttag, (i * chunk) as u32, piece.len() as u32, piece, last);
                mangle(i + 1, &mut b);
                self.send(&b);
            }
            r2t = Some(p);
        }
        let mut data = Vec::new();
        loop {
            let p = self.recv_ok();
            match p.ty {
                wire::C2H_DATA => {
                    assert_eq!(p.u16_at(8), cid, "C2HData CCCID");
                    assert_eq!(p.u32_at(12) as usize, data.len(), "C2HData DATAO");
                    assert_eq!(p.u32_at(16) as usize, p.data.len(), "C2HData DATAL");
                    data.extend_from_slice(&p.data);
                    if p.flags & wire::SUCCESS != 0 {
                        assert!(self.sqflow_off, "C2HData SUCCESS with SQ flow control on");
                        assert!(p.flags & wire::LAST_PDU != 0, "C2HData SUCCESS without LAST_PDU");
                        let cqe = Completion::new(cid, 0, 0, Status::SUCCESS, false, 0);
                        return Done { cqe, data, r2t };
                    }
                }
                wire::CAPSULE_RESP => return self.done(cid, p, data, r2t),
                _ => panic!("unexpected PDU while command {cid} runs: {p:?}"),
            }
        }
    }

    #[track_caller]
    fn done(&mut self, cid: u16, p: Pdu, data: Vec<u8>, r2t: Option<Pdu>) -> Done {
        let cqe = p.cqe();
        assert_eq!(cqe.cid, cid, "a response for another command");
        if let Some(entries) = self.sq_entries {
            // SQHD: every capsule the queue took moves the head, refused ones too.
            assert_eq!(
                cqe.sqhd as u32,
                self.sent % entries as u32,
                "SQHD after {} commands",
                self.sent
            );
        }
        Done { cqe, data, r2t }
    }

    /// Connect (NVMe over Fabrics 1.1, 3.3): queue `qid` of `entries` entries of
    /// controller `cntlid` (FFFFh: a new one), in-capsule 1024-byte data.
    fn connect(&mut self, qid: u16, entries: u16, cntlid: u16, subnqn: &str, hostnqn: &str, kato_ms: u32) -> Done {
        let mut cmd = Command::new(wire::FABRICS);
        cmd.nsid = wire::CONNECT;
        cmd.cdw10 = (qid as u32) << 16; // RECFMT 0
        let cattr = if self.sqflow_off { 1 << 2 } else { 0 };
        cmd.cdw11 = (entries - 1) as u32 | cattr << 16;
        cmd.cdw12 = kato_ms;
        let mut d = vec![0u8; 1024];
        d[..16].copy_from_slice(&[
            0x0f, 0x6c, 0x2d, 0x64, 0x5a, 0x7e, 0x4c, 0x1b, 0x9a, 0x43, 0x1d, 0x2e, 0x3f, 0x40, 0x51, 0x62,
        ]);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        let first = self.sent == 0;
        let r = self.exec(cmd, Xfer::Out(&d));
        if r.status().is_success() && first && !self.sqflow_off {
            self.sq_entries = Some(entries);
            assert_eq!(r.cqe.sqhd, 1, "SQHD of Connect");
        }
        r
    }

    fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Done {
        let mut cmd = Command::new(wire::FABRICS);
        cmd.nsid = wire::PROPERTY_GET;
        cmd.cdw10 = eight_bytes as u32;
        cmd.cdw11 = offset;
        self.exec(cmd, Xfer::None)
    }

    fn property_set(&mut self, offset: u32, value: u32) -> Done {
        let mut cmd = Command::new(wire::FABRICS);
        cmd.nsid = wire::PROPERTY_SET;
        cmd.cdw11 = offset;
        cmd.cdw12 = value;
        self.exec(cmd, Xfer::None)
    }

    fn identify(&mut self, cns: Cns, nsid: u32) -> Done {
        self.exec(Command::identify(cns, nsid, 0), Xfer::In(4096))
    }
}

// ---------------------------------------------------------------------------------------
// An association: admin queue and one I/O queue
// ---------------------------------------------------------------------------------------

/// How a host connects.
#[derive(Clone, Copy)]
struct Opts {
    hdgst: bool,
    ddgst: bool,
    hpda: u8,
    kato_ms: u32,
    io_entries: u16,
    sqflow_off: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            hdgst: false,
            ddgst: false,
            hpda: 0,
            kato_ms: 0,
            io_entries: 32,
            sqflow_off: false,
        }
    }
}

impl Opts {
    fn digests() -> Opts {
        Opts {
            hdgst: true,
            ddgst: true,
            ..Opts::default()
        }
    }
}

struct Assoc {
    admin: Client,
    io: Client,
    cntlid: u16,
    bs: usize,
    nsze: u64,
    mdts_bytes: usize,
}

/// CC with EN, IOSQES 6 (64 bytes) and IOCQES 4 (16 bytes).
const CC_ENABLE: u32 = 1 | 6 << 16 | 4 << 20;

impl Assoc {
    /// Connects the admin queue (a new controller), enables it, asks for I/O queues and
    /// connects I/O queue 1.
    fn establish(addr: SocketAddr, o: &Opts) -> Assoc {
        let mut admin = Client::tcp(addr);
        admin.initialize(o.hdgst, o.ddgst, o.hpda);
        let c = admin.connect(0, 32, 0xFFFF, NQN, HOST, o.kato_ms).ok();
        let cntlid = c.cqe.dw0 as u16;
        admin.property_set(wire::CC, CC_ENABLE).ok();
        assert_eq!(admin.property_get(wire::CSTS, false).ok().value() & 1, 1, "CSTS.RDY");
        let ctrl = IdentifyController::parse(&admin.identify(Cns::CONTROLLER, 0).ok().data).unwrap();
        let ns = IdentifyNamespace::parse(&admin.identify(Cns::NAMESPACE, 1).ok().data).unwrap();
        let ioccsz = {
            let page = admin.identify(Cns::CONTROLLER, 0).ok().data;
            le32(&page, 1792) as usize
        };
        admin
            .exec(
                Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, 0, false),
                Xfer::None,
            )
            .ok();
        let mut io = Client::tcp(addr);
        io.initialize(o.hdgst, o.ddgst, o.hpda);
        io.icd_max = ioccsz * 16 - 64;
        io.sqflow_off = o.sqflow_off;
        io.connect(1, o.io_entries, cntlid, NQN, HOST, 0).ok();
        Assoc {
            admin,
            io,
            cntlid,
            bs: ns.block_size().unwrap() as usize,
            nsze: ns.nsze,
            mdts_bytes: ctrl.max_transfer_bytes(4096).unwrap() as usize,
        }
    }

    fn blocks(&self, bytes: usize) -> u32 {
        assert_eq!(bytes % self.bs, 0);
        (bytes / self.bs) as u32
    }

    /// Writes `data` at `lba` (in-capsule or through R2T, by size).
    fn write(&mut self, lba: u64, data: &[u8]) -> Done {
        let cmd = Command::write(1, lba, self.blocks(data.len()), false);
        self.io.exec(cmd, Xfer::Out(data))
    }

    fn read(&mut self, lba: u64, bytes: usize) -> Done {
        let cmd = Command::read(1, lba, self.blocks(bytes));
        self.io.exec(cmd, Xfer::In(bytes))
    }

    /// Writes 4 KiB in-capsule and 32 KiB through R2T at byte `at`, reads all back and
    /// compares.
    #[track_caller]
    fn verified_io(&mut self, at: u64, seed: u64) {
        let lba = at / self.bs as u64;
        let data = pattern(seed, 36 << 10);
        let r = self.write(lba, &data[..4096]).ok();
        assert!(r.r2t.is_none(), "4 KiB went through R2T");
        let r = self.write(lba + self.blocks(4096) as u64, &data[4096..]).ok();
        assert!(r.r2t.is_some(), "32 KiB went in-capsule");
        let back = self.read(lba, data.len()).ok().data;
        assert!(back == data, "read back differs from what was written (seed {seed})");
    }
}

// ---------------------------------------------------------------------------------------
// 1. The happy path
// ---------------------------------------------------------------------------------------

/// Everything a host does to use the namespace, checked field by field, at byte `at` of
/// the namespace.
fn happy_path(srv: &Server, o: Opts, at: u64) {
    // ICReq/ICResp (checked in `initialize`), MAXH2CDATA as the target says.
    let mut admin = Client::tcp(srv.addr);
    let ic = admin.initialize(o.hdgst, o.ddgst, o.hpda);
    assert_eq!(ic.u32_at(12), MAXH2CDATA);

    // Connect the admin queue: a new controller (CNTLID FFFFh asks for any).
    let c = admin.connect(0, 32, 0xFFFF, NQN, HOST, 0).ok();
    let cntlid = c.cqe.dw0 as u16;
    assert!((1..0xFFF0).contains(&cntlid), "CNTLID {cntlid:#x}");
    assert_eq!(c.cqe.sqid, 0);

    // Properties: CAP, VS, CSTS; CC.EN=1 makes CSTS.RDY 1.
    let cap = admin.property_get(wire::CAP, true).ok().value();
    assert_eq!(cap & 0xFFFF, IO_QUEUE_ENTRIES as u64 - 1, "CAP.MQES");
    assert_eq!(cap >> 16 & 1, 1, "CAP.CQR");
    assert!(cap >> 24 & 0xFF > 0, "CAP.TO");
    assert_eq!(cap >> 37 & 1, 1, "CAP.CSS: NVM command set");
    assert_eq!(cap >> 48 & 0xF, 0, "CAP.MPSMIN: 4 KiB");
    let vs = admin.property_get(wire::VS, false).ok().value() as u32;
    assert!(vs >= 0x0001_0300, "VS {vs:#x}");
    assert_eq!(
        admin.property_get(wire::CSTS, false).ok().value() & 1,
        0,
        "CSTS.RDY before CC.EN"
    );
    admin.property_set(wire::CC, CC_ENABLE).ok();
    assert_eq!(admin.property_get(wire::CC, false).ok().value() as u32, CC_ENABLE);
    assert_eq!(
        admin.property_get(wire::CSTS, false).ok().value() & 1,
        1,
        "CSTS.RDY after CC.EN"
    );

    // Identify Controller.
    let page = admin.identify(Cns::CONTROLLER, 0).ok().data;
    assert_eq!(page.len(), 4096);
    let idc = IdentifyController::parse(&page).unwrap();
    assert_eq!(idc.cntlid, cntlid);
    assert_eq!(idc.ver, vs, "VER and VS");
    assert_eq!(idc.cntrltype, 1, "CNTRLTYPE: I/O controller");
    assert_eq!(idc.nn, 1, "NN");
    assert_eq!(idc.subnqn, NQN, "SUBNQN");
    assert_eq!((idc.sqes, idc.cqes), (0x66, 0x44), "SQES, CQES");
    assert_eq!(idc.maxcmd, IO_QUEUE_ENTRIES, "MAXCMD");
    let mdts = idc.max_transfer_bytes(4096).expect("MDTS set");
    assert_eq!(mdts, srv.subsystem.max_transfer as u64, "MDTS");
    assert!(mdts >= 64 << 10, "MDTS of {mdts} bytes");
    assert!(idc.sgl_supported(), "SGLS bit 0");
    assert_ne!(idc.sgls & 1 << 20, 0, "SGLS: SGL offsets (in-capsule data)");
    let ioccsz = le32(&page, 1792);
    assert_eq!(ioccsz, (64 + INLINE_DATA) / 16, "IOCCSZ (16-byte units)");
    assert_eq!(le32(&page, 1796), 1, "IORCSZ");
    assert_eq!(le16(&page, 1800), 0, "ICDOFF");
    assert!(page[1803] >= 1, "MSDBD");

    // Identify Namespace: the file's size in its blocks.
    let ns = IdentifyNamespace::parse(&admin.identify(Cns::NAMESPACE, 1).ok().data).unwrap();
    let bs = ns.block_size().unwrap() as usize;
    assert_eq!(bs, srv.block_size);
    assert_eq!(ns.nsze, srv.blocks);
    assert_eq!(ns.nsze * bs as u64, DISK_BYTES, "NSZE × block size = the file");
    assert_eq!((ns.ncap, ns.nuse), (ns.nsze, ns.nsze));

    // Active Namespace ID list: NSID 1; none above it.
    assert_eq!(
        NamespaceList::parse(&admin.identify(Cns::ACTIVE_NAMESPACE_LIST, 0).ok().data).unwrap(),
        [1]
    );
    let empty: [u32; 0] = [];
    assert_eq!(
        NamespaceList::parse(&admin.identify(Cns::ACTIVE_NAMESPACE_LIST, 1).ok().data).unwrap(),
        empty
    );
    // Namespace Identification Descriptors: the NGUID Identify Namespace gives, and a
    // UUID (RFC 9562 variant 10b).
    let descs = parse_namespace_descriptors(&admin.identify(Cns::NAMESPACE_ID_DESCRIPTORS, 1).ok().data).unwrap();
    assert!(descs.contains(&NamespaceDescriptor::Nguid(ns.nguid)), "{descs:?}");
    let uuid = descs
        .iter()
        .find_map(|d| match d {
            NamespaceDescriptor::Uuid(u) => Some(*u),
            _ => None,
        })
        .expect("a UUID descriptor");
    assert_eq!(uuid[8] >> 6, 0b10, "UUID variant");
    // A namespace that does not exist.
    let r = admin.identify(Cns::NAMESPACE, 2);
    assert!(
        r.status().same_code(Status::INVALID_NAMESPACE_OR_FORMAT),
        "{}",
        r.status()
    );

    // Number of Queues, then the I/O queue on its own connection.
    let q = admin
        .exec(
            Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, 3 | 3 << 16, false),
            Xfer::None,
        )
        .ok();
    assert!(q.cqe.dw0 & 0xFFFF >= 1, "granted {:#x}", q.cqe.dw0);
    let mut io = Client::tcp(srv.addr);
    io.initialize(o.hdgst, o.ddgst, o.hpda);
    io.icd_max = ioccsz as usize * 16 - 64;
    io.sqflow_off = o.sqflow_off;
    let c = io.connect(1, o.io_entries, cntlid, NQN, HOST, 0).ok();
    assert_eq!(c.cqe.dw0 as u16, cntlid);
    let mut a = Assoc {
        admin,
        io,
        cntlid,
        bs,
        nsze: ns.nsze,
        mdts_bytes: mdts as usize,
    };
    let lba = at / bs as u64;
    let b = |bytes: usize| (bytes / bs) as u64;

    // Write in-capsule (4 KiB), through R2T in 16 KiB H2CData PDUs (64 KiB), and through
    // R2T at MDTS in PDUs of MAXH2CDATA.
    let small = pattern(at, 4096);
    let mid = pattern(at + 1, 64 << 10);
    let big = pattern(at + 2, a.mdts_bytes);
    let r = a.write(lba, &small).ok();
    assert!(r.r2t.is_none(), "4 KiB should go in-capsule");
    let cmd = Command::write(1, lba + b(4096), a.blocks(mid.len()), false);
    let r = a.io.exec(cmd, Xfer::OutR2t(&mid, 16 << 10)).ok();
    assert!(r.r2t.is_some());
    let big_lba = lba + b(4096 + (64 << 10));
    let r = a.write(big_lba, &big).ok();
    assert!(r.r2t.is_some());
    // A FUA write.
    let fua = pattern(at + 3, 4096);
    let fua_lba = big_lba + b(big.len());
    let cmd = Command::write(1, fua_lba, a.blocks(fua.len()), true);
    a.io.exec(cmd, Xfer::Out(&fua)).ok();

    // Read through C2HData: what was written, at every size.
    assert!(a.read(lba, 4096).ok().data == small);
    assert!(a.read(lba + b(4096), mid.len()).ok().data == mid);
    assert!(a.read(big_lba, big.len()).ok().data == big);
    let mut both = small.clone();
    both.extend_from_slice(&mid);
    assert!(a.read(lba, both.len()).ok().data == both, "a read across two writes");
    assert!(a.read(fua_lba, 4096).ok().data == fua);

    // Flush; the file holds the data where the LBAs say.
    a.io.exec(Command::flush(1), Xfer::None).ok();
    assert!(srv.file_bytes(at, 4096) == small, "the file at the in-capsule write");
    assert!(srv.file_bytes(at + 4096, mid.len()) == mid, "the file at the R2T write");
    assert!(
        srv.file_bytes(big_lba * bs as u64, big.len()) == big,
        "the file at the MDTS write"
    );

    // Write Zeroes and Dataset Management (deallocate), as ONCS says; Compare as ONCS
    // says (a file has none: Invalid Command Opcode).
    let zeros = vec![0u8; 4096];
    if idc.oncs.bits() & 1 << 3 != 0 {
        let cmd = Command::write_zeroes(1, lba, a.blocks(4096), false);
        a.io.exec(cmd, Xfer::None).ok();
        assert!(a.read(lba, 4096).ok().data == zeros, "after Write Zeroes");
    } else {
        let r = a.io.exec(Command::write_zeroes(1, lba, 1, false), Xfer::None);
        assert!(r.status().same_code(Status::INVALID_OPCODE), "{}", r.status());
    }
    let range = DsmRange {
        context_attributes: 0,
        nlb: a.blocks(mid.len()),
        slba: lba + b(4096),
    };
    let attrs = DsmAttributes {
        deallocate: true,
        ..Default::default()
    };
    let dsm =
        a.io.exec(Command::dataset_management(1, 1, attrs), Xfer::Out(&range.to_bytes()));
    if idc.oncs.bits() & 1 << 2 != 0 {
        assert!(dsm.status().is_success(), "{}", dsm.status());
        if ns.dlfeat & 7 == 1 {
            assert!(
                a.read(lba + b(4096), mid.len()).ok().data == vec![0; mid.len()],
                "deallocated blocks read as zeros"
            );
        }
    }
    let cmp =
        a.io.exec(Command::compare(1, big_lba, a.blocks(4096)), Xfer::Out(&big[..4096]));
    if idc.oncs.bits() & 1 != 0 {
        assert!(cmp.status().is_success(), "Compare of equal data: {}", cmp.status());
        let cmd = Command::compare(1, big_lba, a.blocks(4096));
        let r = a.io.exec(cmd, Xfer::Out(&small));
        assert_eq!(r.status().code(), 0x285, "Compare of different data");
    } else {
        assert_eq!(cmp.status().code(), 0x001, "Compare where ONCS says none");
        assert!(cmp.status().dnr());
    }
    // The admin queue still answers.
    a.admin.exec(Command::keep_alive(), Xfer::None).ok();
    a.verified_io(at + (1 << 20), at);
}

#[test]
fn happy_path_without_digests_across_two_poll_groups() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(2);
    happy_path(&srv, Opts::default(), 0);
    // SQ flow control disabled: a Read ends with a C2HData with SUCCESS and no response.
    happy_path(
        &srv,
        Opts {
            sqflow_off: true,
            ..Opts::default()
        },
        4 << 20,
    );
    srv.stop();
}

#[test]
fn happy_path_with_header_and_data_digests() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    happy_path(
        &srv,
        Opts {
            hpda: 3,
            ..Opts::digests()
        },
        8 << 20,
    );
    for (hdgst, ddgst, at) in [(true, false, 12 << 20), (false, true, 16 << 20)] {
        happy_path(
            &srv,
            Opts {
                hdgst,
                ddgst,
                ..Opts::default()
            },
            at,
        );
    }
    srv.stop();
}

#[test]
fn hpda_31_aligns_data_to_128_bytes() {
    // The largest HPDA a host may ask for: data PDUs start their data at 128 bytes.
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    let mut healthy = Assoc::establish(srv.addr, &Opts::default());
    for o in [
        Opts {
            hpda: 31,
            ..Opts::default()
        },
        Opts {
            hpda: 31,
            ..Opts::digests()
        },
    ] {
        let mut a = Assoc::establish(srv.addr, &o);
        a.verified_io(2 << 20, 31);
    }
    healthy.verified_io(0, 1);
    srv.stop();
}

// ---------------------------------------------------------------------------------------
// 2. Malformed input
// ---------------------------------------------------------------------------------------

#[test]
fn pdu_errors_get_a_c2h_term_req_and_close_only_their_connection() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    let addr = srv.addr;
    let mut healthy = Assoc::establish(addr, &Opts::digests());
    let mut round = 0;
    let mut then_healthy = || {
        round += 1;
        healthy.verified_io(0, round);
    };
    let ready = |o: Opts| {
        let mut c = Client::tcp(addr);
        c.initialize(o.hdgst, o.ddgst, o.hpda);
        c
    };
    let ch = |ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32| {
        let mut b = vec![ty, flags, hlen, pdo];
        b.extend_from_slice(&plen.to_le_bytes());
        b
    };
    use wire::*;

    // PDU types a host does not send.
    for ty in [0x0B, CAPSULE_RESP, C2H_DATA, R2T] {
        let mut c = ready(Opts::default());
        let mut b = ch(ty, 0, 24, 0, 24);
        b.resize(24, 0);
        c.send(&b);
        c.expect_term(&format!("PDU type {ty:#x}"), FES_INVALID_HEADER_FIELD, Some(0));
        then_healthy();
    }
    // Reads in flight when a bad PDU arrives (in the same segment): the C2HTermReq is the
    // last thing sent, with no C2HData or CapsuleResp of theirs after it.
    let mut a = Assoc::establish(addr, &Opts::default());
    let mut b = Vec::new();
    for i in 0..8u16 {
        let mut cmd = Command::read(1, i as u64 * 8, a.blocks(32 << 10));
        cmd.set_cid(0x100 + i);
        cmd.set_sgl(sgl(SGL_TRANSPORT, 32 << 10));
        b.extend(a.io.capsule(&cmd, &[]));
    }
    let mut bad = ch(0x0B, 0, 24, 0, 24);
    bad.resize(24, 0);
    b.extend(bad);
    a.io.send(&b);
    loop {
        let p = a.io.recv().expect("the Reads' PDUs, then a C2HTermReq");
        if p.ty == C2H_TERM_REQ {
            assert_eq!(p.u16_at(8), FES_INVALID_HEADER_FIELD);
            break;
        }
        assert!([C2H_DATA, CAPSULE_RESP].contains(&p.ty), "{p:?}");
    }
    a.io.expect_closed("PDUs after a C2HTermReq");
    then_healthy();
    // HLEN wrong for the type.
    let mut c = ready(Opts::default());
    c.send(&ch(CAPSULE_CMD, 0, 24, 0, 72));
    c.expect_term("HLEN 24 on a CapsuleCmd", FES_INVALID_HEADER_FIELD, Some(2));
    then_healthy();
    // PLEN shorter than HLEN.
    let mut c = ready(Opts::default());
    c.send(&ch(CAPSULE_CMD, 0, 72, 0, 40));
    c.expect_term("PLEN < HLEN", FES_INVALID_HEADER_FIELD, Some(4));
    then_healthy();
    // PLEN of almost 4 GiB: in-capsule data far beyond what the target takes.
    let mut c = ready(Opts::default());
    c.send(&ch(CAPSULE_CMD, 0, 72, 72, 0xFFFF_FF00));
    c.expect_term("PLEN of 4 GiB", FES_LIMIT_EXCEEDED, None);
    then_healthy();
    // A PDU before ICReq.
    let mut c = Client::tcp(addr);
    let b = c.capsule(&Command::keep_alive(), &[]);
    c.send(&b);
    c.expect_term("a CapsuleCmd before ICReq", FES_SEQUENCE, None);
    then_healthy();
    // A second ICReq.
    let mut c = ready(Opts::default());
    c.send(&ic_req(false, false, 0));
    c.expect_term("a second ICReq", FES_SEQUENCE, None);
    then_healthy();
    // Header digests: a wrong one, and none when they were negotiated.
    let mut c = ready(Opts::digests());
    let mut b = c.capsule(&Command::keep_alive(), &[]);
    b[72] ^= 0xFF;
    c.send(&b);
    c.expect_term("a header digest mismatch", FES_HEADER_DIGEST, None);
    then_healthy();
    let mut c = ready(Opts::digests());
    c.hdgst = false;
    let b = c.capsule(&Command::keep_alive(), &[]);
    c.send(&b);
    c.expect_term(
        "HDGSTF clear after header digests were negotiated",
        FES_INVALID_HEADER_FIELD,
        Some(1),
    );
    then_healthy();

    // H2CData errors, on the I/O queue of an association of their own.
    let r2t_write = |a: &mut Assoc, bytes: usize| {
        let cid = a.io.next_cid();
        let mut cmd = Command::write(1, 0, a.blocks(bytes), false);
        cmd.set_cid(cid);
        cmd.set_sgl(sgl(SGL_TRANSPORT, bytes));
        let b = a.io.capsule(&cmd, &[]);
        a.io.send(&b);
        let r = a.io.recv_ok();
        assert_eq!(r.ty, R2T, "{r:?}");
        (cid, r.u16_at(10))
    };
    // Beyond MAXH2CDATA.
    let mut a = Assoc::establish(addr, &Opts::default());
    let mdts = a.mdts_bytes;
    let (cid, ttag) = r2t_write(&mut a, mdts);
    let datal = MAXH2CDATA + 4096;
    let mut b = a.io.h2c_data(cid, ttag, 0, datal, &[], true);
    b[4..8].copy_from_slice(&(24 + datal).to_le_bytes());
    b[3] = 24;
    a.io.send(&b);
    a.io.expect_term("H2CData beyond MAXH2CDATA", FES_LIMIT_EXCEEDED, None);
    then_healthy();
    // Beyond the R2T's range: past its end, and starting past its end.
    let mut a = Assoc::establish(addr, &Opts::default());
    let (cid, ttag) = r2t_write(&mut a, 16 << 10);
    let data = pattern(1, (16 << 10) + 512);
    let b = a.io.h2c_data(cid, ttag, 0, data.len() as u32, &data, true);
    a.io.send(&b);
    a.io.expect_term("H2CData past the R2T's range", FES_OUT_OF_RANGE, None);
    then_healthy();
    let mut a = Assoc::establish(addr, &Opts::default());
    let (cid, ttag) = r2t_write(&mut a, 16 << 10);
    let b = a.io.h2c_data(cid, ttag, 16 << 10, 512, &data[..512], true);
    a.io.send(&b);
    a.io.expect_term("H2CData starting past the R2T's range", FES_OUT_OF_RANGE, None);
    then_healthy();
    // A TTAG no R2T gave.
    let mut a = Assoc::establish(addr, &Opts::default());
    let b = a.io.h2c_data(7, 77, 0, 512, &data[..512], true);
    a.io.send(&b);
    a.io.expect_term("H2CData with an unknown TTAG", FES_INVALID_HEADER_FIELD, Some(10));
    then_healthy();
    // More commands outstanding than the queue has entries (4).
    let mut a = Assoc::establish(
        addr,
        &Opts {
            io_entries: 4,
            ..Opts::default()
        },
    );
    for _ in 0..4 {
        r2t_write(&mut a, 4096 * 2);
    }
    let mut cmd = Command::flush(1);
    cmd.set_cid(999);
    let b = a.io.capsule(&cmd, &[]);
    a.io.send(&b);
    a.io.expect_term("a fifth command on a queue of 4 entries", FES_SEQUENCE, None);
    then_healthy();
    srv.stop();
}

#[test]
fn command_errors_get_the_specs_status_and_the_connection_goes_on() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    let addr = srv.addr;
    let mut healthy = Assoc::establish(addr, &Opts::default());
    let mut round = 0;
    let mut then_healthy = || {
        round += 1;
        healthy.verified_io(0, round);
    };
    let ready = || {
        let mut c = Client::tcp(addr);
        c.initialize(false, false, 0);
        c
    };
    #[track_caller]
    fn expect(d: &Done, code: u16, what: &str) {
        assert_eq!(d.status().code(), code, "{what}: status {}", d.status());
        assert!(d.status().dnr(), "{what}: DNR");
    }

    // Commands before Connect: Command Sequence Error; Connect then works.
    let mut c = ready();
    expect(&c.identify(Cns::CONTROLLER, 0), 0x00C, "Identify before Connect");
    expect(&c.property_get(wire::CAP, true), 0x00C, "Property Get before Connect");
    expect(
        &c.exec(Command::read(1, 0, 1), Xfer::In(4096)),
        0x00C,
        "Read before Connect",
    );
    let cntlid = c.connect(0, 32, 0xFFFF, NQN, HOST, 0).ok().cqe.dw0 as u16;
    c.property_set(wire::CC, CC_ENABLE).ok();
    c.exec(
        Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, 0, false),
        Xfer::None,
    )
    .ok();
    then_healthy();

    // An I/O queue the controller did not grant (one was): Connect Invalid Parameters,
    // IATTR 0 and IPO 42 (QID in the SQE); queue 1 then connects on the same connection.
    let mut q = ready();
    let r = q.connect(5, 32, cntlid, NQN, HOST, 0);
    expect(&r, CONNECT_INVALID_PARAMETERS.code(), "Connect of QID 5");
    assert_eq!(r.cqe.dw0, 42, "IATTR/IPO of QID 5");
    // A controller that does not exist: IATTR 1, IPO 16 (CNTLID in the data).
    let r = q.connect(1, 32, 0x7777, NQN, HOST, 0);
    expect(&r, CONNECT_INVALID_PARAMETERS.code(), "Connect to CNTLID 7777h");
    assert_eq!(r.cqe.dw0, 1 << 16 | 16, "IATTR/IPO of CNTLID");
    q.connect(1, 32, cntlid, NQN, HOST, 0).ok();
    then_healthy();
    // A host not allowed: Connect Invalid Host.
    let mut s = ready();
    expect(
        &s.connect(0, 32, 0xFFFF, NQN, STRANGER, 0),
        CONNECT_INVALID_HOST.code(),
        "a stranger's Connect",
    );
    // A subsystem that does not exist: Connect Invalid Parameters, IATTR 1, IPO 256
    // (SUBNQN in the data).
    let r = s.connect(0, 32, 0xFFFF, "nqn.2026-12.io.ironvme:nobody", HOST, 0);
    expect(&r, CONNECT_INVALID_PARAMETERS.code(), "Connect to an unknown subsystem");
    assert_eq!(r.cqe.dw0, 1 << 16 | 256, "IATTR/IPO of SUBNQN");
    // An admin queue naming a controller (the dynamic model wants FFFFh).
    let r = s.connect(0, 32, 1, NQN, HOST, 0);
    expect(&r, CONNECT_INVALID_PARAMETERS.code(), "admin Connect with CNTLID 1");
    assert_eq!(r.cqe.dw0, 1 << 16 | 16);
    then_healthy();

    // I/O errors on an association of their own; SQHD counts every command.
    let mut a = Assoc::establish(addr, &Opts::default());
    let at = 4u64 << 20;
    let lba = at / a.bs as u64;
    a.verified_io(at, 7);
    let n = a.nsze;
    expect(&a.read(n - 1, 2 * a.bs), 0x080, "a Read past the end");
    expect(&a.read(n, a.bs), 0x080, "a Read at NSZE");
    let past = pattern(9, 4096);
    expect(&a.write(n, &past), 0x080, "an in-capsule Write at NSZE");
    expect(&a.write(n, &pattern(9, 64 << 10)), 0x080, "an R2T Write at NSZE");
    let cmd = Command::write_zeroes(1, n - 1, 2, false);
    expect(&a.io.exec(cmd, Xfer::None), 0x080, "Write Zeroes past the end");
    // Dataset Management with one range in the namespace and one past it: LBA Out of
    // Range, and the good range keeps its data (no range is deallocated).
    let kept = pattern(11, a.bs);
    assert!(a.write(lba, &kept).status().is_success(), "a Write before Deallocate");
    let ranges = [(lba, 1), (n - 1, 2)].map(|(slba, nlb)| DsmRange {
        context_attributes: 0,
        nlb,
        slba,
    });
    let data: Vec<u8> = ranges.iter().flat_map(|r| r.to_bytes()).collect();
    let attrs = DsmAttributes {
        deallocate: true,
        ..Default::default()
    };
    let cmd = Command::dataset_management(1, 2, attrs);
    expect(&a.io.exec(cmd, Xfer::Out(&data)), 0x080, "Deallocate past the end");
    assert!(
        a.read(lba, a.bs).ok().data == kept,
        "a refused Deallocate freed a range"
    );
    a.verified_io(at, 8);
    then_healthy();
    // Above MDTS: Invalid Field, and no R2T for the Write.
    let over = a.mdts_bytes + a.bs;
    expect(&a.read(lba, over), 0x002, "a Read above MDTS");
    let r = a.write(lba, &pattern(10, over));
    expect(&r, 0x002, "a Write above MDTS");
    assert!(r.r2t.is_none());
    a.verified_io(at, 9);
    then_healthy();
    // Unknown opcodes: Invalid Command Opcode.
    expect(&a.admin.exec(Command::new(0x3F), Xfer::None), 0x001, "admin opcode 3Fh");
    expect(
        &a.io.exec(Command::new(0x7E).with_nsid(1), Xfer::None),
        0x001,
        "I/O opcode 7Eh",
    );
    expect(
        &a.io.exec(Command::new(0x06).with_nsid(1), Xfer::None),
        0x001,
        "Identify on an I/O queue",
    );
    // A namespace that does not exist.
    expect(
        &a.io.exec(Command::read(2, 0, 1), Xfer::In(a.bs)),
        0x00B,
        "a Read of NSID 2",
    );
    // A data SGL this transport does not use (a Data Block with an address, as over
    // PCIe): SGL Descriptor Type Invalid; then an in-capsule Write and a Read on the same
    // connection, so the stream must still be in step.
    let mut cmd = Command::read(1, lba, a.blocks(4096));
    let cid = a.io.next_cid();
    cmd.set_cid(cid);
    cmd.set_sgl(SglDescriptor::data_block(0x1000, 4096));
    let b = a.io.capsule(&cmd, &[]);
    a.io.send(&b);
    a.io.sent += 1;
    let p = a.io.recv_ok();
    let d = a.io.done(cid, p, Vec::new(), None);
    expect(&d, 0x011, "a Read with a Data Block SGL");
    a.verified_io(at, 11);
    // A Fabrics Property Get on an I/O queue: Invalid Field.
    expect(
        &a.io.property_get(wire::CAP, true),
        0x002,
        "Property Get on an I/O queue",
    );
    a.verified_io(at, 12);
    then_healthy();
    srv.stop();
}

#[test]
fn data_digest_errors_fail_the_command_and_keep_the_connection() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    let mut healthy = Assoc::establish(srv.addr, &Opts::digests());
    let mut a = Assoc::establish(srv.addr, &Opts::digests());
    let at = 2u64 << 20;
    let lba = at / a.bs as u64;
    let before = pattern(1, 64 << 10);
    a.write(lba, &before).ok();
    let corrupt = |b: &mut Vec<u8>| {
        let n = b.len();
        b[n - 1] ^= 0x5A;
    };
    // In-capsule data with a wrong digest: Transient Transport Error, nothing written.
    let cmd = Command::write(1, lba, a.blocks(4096), false);
    let bad = pattern(2, 4096);
    let r = a.io.exec_mangled(cmd, Xfer::Out(&bad), |i, b| {
        if i == 0 {
            corrupt(b)
        }
    });
    assert_eq!(r.status().code(), TRANSIENT_TRANSPORT_ERROR.code(), "{}", r.status());
    assert!(!r.status().dnr(), "a transient transport error may be retried");
    assert!(
        a.read(lba, before.len()).ok().data == before,
        "data with a bad digest was written"
    );
    // The second of four H2CData PDUs with a wrong digest: the same.
    let bad = pattern(3, 64 << 10);
    let cmd = Command::write(1, lba, a.blocks(bad.len()), false);
    let r = a.io.exec_mangled(cmd, Xfer::OutR2t(&bad, 16 << 10), |i, b| {
        if i == 2 {
            corrupt(b)
        }
    });
    assert_eq!(r.status().code(), TRANSIENT_TRANSPORT_ERROR.code(), "{}", r.status());
    assert!(
        a.read(lba, before.len()).ok().data == before,
        "data with a bad digest was written"
    );
    // The connection goes on: the retry succeeds.
    a.write(lba, &bad).ok();
    assert!(a.read(lba, bad.len()).ok().data == bad);
    a.verified_io(at + (1 << 20), 4);
    // Connect data with a wrong digest: the Connect fails, a second one succeeds.
    let mut c = Client::tcp(srv.addr);
    c.initialize(true, true, 0);
    let mut cmd = Command::new(wire::FABRICS);
    cmd.nsid = wire::CONNECT;
    cmd.cdw11 = 31;
    let mut d = vec![0u8; 1024];
    d[16..18].copy_from_slice(&0xFFFFu16.to_le_bytes());
    d[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    let r = c.exec_mangled(cmd, Xfer::Out(&d), |_, b| corrupt(b));
    assert_eq!(r.status().code(), TRANSIENT_TRANSPORT_ERROR.code(), "{}", r.status());
    c.connect(0, 32, 0xFFFF, NQN, HOST, 0).ok();
    healthy.verified_io(0, 5);
    srv.stop();
}

#[test]
fn kato_expiry_ends_the_association_and_only_it() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let mut srv = Server::start(1);
    let mut healthy = Assoc::establish(srv.addr, &Opts::default());
    const KATO: Duration = Duration::from_millis(500);
    let mut a = Assoc::establish(
        srv.addr,
        &Opts {
            kato_ms: KATO.as_millis() as u32,
            ..Opts::default()
        },
    );
    // Keep Alive every 200 ms keeps it alive for three times KATO.
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < 3 * KATO {
        a.admin.exec(Command::keep_alive(), Xfer::None).ok();
        round += 1;
        a.verified_io(4 << 20, round);
        std::thread::sleep(Duration::from_millis(200));
    }
    a.admin.exec(Command::keep_alive(), Xfer::None).ok();
    let last = Instant::now();
    // Silence: the target ends the association, both of its connections.
    a.io.expect_closed("the I/O queue after KATO");
    a.admin.expect_closed("the admin queue after KATO");
    let t = last.elapsed();
    assert!(t >= KATO, "closed {t:?} after the last Keep Alive, before KATO");
    assert!(
        t < KATO * 2 + Duration::from_secs(1),
        "closed only {t:?} after the last Keep Alive"
    );
    // The controller is gone: an I/O queue cannot join it.
    let mut c = Client::tcp(srv.addr);
    c.initialize(false, false, 0);
    let r = c.connect(1, 32, a.cntlid, NQN, HOST, 0);
    assert_eq!(r.status().code(), CONNECT_INVALID_PARAMETERS.code(), "{}", r.status());
    // The other association (KATO 0) is untouched.
    healthy.verified_io(0, 1);
    srv.stop();
}

// ---------------------------------------------------------------------------------------
// 3. A flood of connections
// ---------------------------------------------------------------------------------------

/// This process's resident set, bytes.
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into `l`, a valid rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    if l.rlim_cur >= want {
        return;
    }
    assert!(
        l.rlim_max >= want,
        "the flood test needs {want} file descriptors; the hard limit is {}",
        l.rlim_max
    );
    l.rlim_cur = want;
    // SAFETY: setrlimit reads `l`, a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
}

#[test]
fn a_flood_of_connections_is_bounded_and_spares_the_healthy_one() {
    let _g = GATE.write().unwrap_or_else(PoisonError::into_inner);
    // Both ends of every connection are in this process.
    raise_nofile(2 * MAX_CONNECTIONS as u64 + 1024);
    let mut srv = Server::start(1);
    let addr = srv.addr;
    let healthy = Assoc::establish(addr, &Opts::default());
    assert_eq!(srv.connections(), 2);

    // The healthy association does verified I/O all along, on a thread of its own.
    let done = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let io = {
        let (done, rounds) = (Arc::clone(&done), Arc::clone(&rounds));
        let mut healthy = healthy;
        std::thread::spawn(move || {
            let mut seed = 0;
            while !done.load(Ordering::Relaxed) {
                seed += 1;
                healthy.verified_io(0, seed);
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            healthy
        })
    };
    // Its buffers and allocator arena in use before the first measurement.
    wait_until("warm-up I/O", Duration::from_secs(20), || {
        rounds.load(Ordering::Relaxed) >= 16
    });
    let rss_before = vm_rss();

    // Fill the target up to MAX_CONNECTIONS: idle connections and half ICReqs,
    // in batches so the listen backlog never overflows.
    let flood_n = MAX_CONNECTIONS - 2;
    let half_icreq = ic_req(false, false, 0);
    let mut flood = Vec::with_capacity(flood_n);
    let started = Instant::now();
    while flood.len() < flood_n {
        for _ in 0..(flood_n - flood.len()).min(128) {
            let mut s = TcpStream::connect(addr).unwrap();
            if flood.len() % 2 == 1 {
                s.write_all(&half_icreq[..64]).unwrap();
            }
            flood.push(s);
        }
        let want = 2 + flood.len();
        wait_until("the target taking the flood", Duration::from_secs(20), || {
            srv.connections() == want
        });
    }
    let filled_in = started.elapsed();
    assert_eq!(srv.connections(), MAX_CONNECTIONS);
    let at_full = rounds.load(Ordering::Relaxed);

    // Beyond the bound: each new connection is closed at once.
    for i in 0..16 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&ic_req(false, false, 0));
        let mut b = [0u8; 128];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("connection {} beyond MAX_CONNECTIONS was served: {other:?}", i + 1),
        }
    }
    assert_eq!(srv.connections(), MAX_CONNECTIONS);
    // The healthy association kept going through it all.
    wait_until("healthy I/O with the target full", Duration::from_secs(20), || {
        rounds.load(Ordering::Relaxed) >= at_full + 8
    });
    let grown = vm_rss().saturating_sub(rss_before);

    // What the flood may cost: a connection that has not sent a whole ICReq owns no heap
    // (its Vecs stay empty until ICReq and Connect), only its entry in the poll group's
    // slab (twice over, as the slab grows by doubling), its generation and free-list
    // words, and its passage through the acceptor's channel; plus 4 MiB for the
    // allocator's granularity and the measurement's noise.
    let slab_entry = std::mem::size_of::<Option<(Conn, Instant)>>();
    let per_conn = 2 * slab_entry
        + 2 * std::mem::size_of::<u32>()
        + 2 * std::mem::size_of::<usize>()
        + 2 * std::mem::size_of::<(mio::net::TcpStream, SocketAddr)>();
    let bound = MAX_CONNECTIONS * per_conn + (4 << 20);
    eprintln!(
        "flood: {flood_n} connections in {filled_in:?}; RSS grew {} KiB (bound {} KiB: {per_conn} bytes a connection)",
        grown >> 10,
        bound >> 10
    );
    assert!(
        grown as usize <= bound,
        "RSS grew {grown} bytes for {flood_n} connections; the bound is {bound} ({per_conn} a connection)"
    );

    // The flood leaves; the target is back to the healthy two and takes new connections.
    drop(flood);
    wait_until("the flood's connections closing", Duration::from_secs(20), || {
        srv.connections() == 2
    });
    done.store(true, Ordering::Relaxed);
    let mut healthy = io.join().expect("the healthy I/O failed");
    healthy.verified_io(0, 1 << 20);
    let mut c = Client::tcp(addr);
    c.initialize(false, false, 0);
    srv.stop();
}

// ---------------------------------------------------------------------------------------
// 4. `ironvme serve`
// ---------------------------------------------------------------------------------------

/// Kills the child if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends each line of `r` to the returned channel.
fn lines(r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Receives lines until one satisfies `f` (within `limit`); returns it, and keeps every
/// line in `seen`.
fn line_where(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    f: impl Fn(&str) -> bool,
) -> Option<String> {
    let started = Instant::now();
    while let Some(left) = limit.checked_sub(started.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if f(&l) {
                    return Some(l);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// The number after `key` in a stats line ("connections 2  IOPS 0  I/Os 3  errors 0").
fn stat(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()?.parse().ok()
}

/// The CPUs this process may run on (/proc/self/status, Cpus_allowed_list), ascending.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    list.split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => a.parse::<usize>().unwrap()..=b.parse().unwrap(),
            None => r.parse::<usize>().unwrap()..=r.parse().unwrap(),
        })
        .collect()
}

#[test]
fn ironvme_serve_refuses_a_cpumask_naming_a_cpu_it_may_not_use() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let (_dir, file) = disk_image();
    let not_allowed = (0..1024).find(|c| !allowed_cpus().contains(c)).unwrap();
    for (mask, says) in [
        (
            format!("[{not_allowed}]"),
            format!("CPU {not_allowed} is not one this process may run on"),
        ),
        ("0x".to_string(), "not a hex mask".to_string()),
        ("[2-1]".to_string(), "bad range".to_string()),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironvme"))
            .args(["serve", "--nvme-tcp", "127.0.0.1:0", "--nqn", NQN, "--namespace"])
            .arg(&file)
            .args(["--allow-any-host", "--cpumask", &mask])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ironvme serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--cpumask {mask} was accepted");
        assert!(stderr.contains(&says), "--cpumask {mask}: {stderr}");
    }
}

/// An `ironvme serve` child serving `file` as NSID 1 of subsystem NQN on 127.0.0.1 (a
/// port the OS picks), with `extra` flags and an info log: its stdout and stderr lines,
/// the stderr lines seen so far, and the address it bound (from its log).
struct Spawned {
    child: Child,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
    err_seen: Vec<String>,
    addr: SocketAddr,
}

fn spawn_serve(file: &std::path::Path, extra: &[&str]) -> Spawned {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ironvme"))
        .args(["serve", "--nvme-tcp", "127.0.0.1:0", "--nqn", NQN, "--namespace"])
        .arg(file)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ironvme serve");
    let mut child = Child(child);
    let out = lines(child.0.stdout.take().unwrap());
    let err = lines(child.0.stderr.take().unwrap());
    let mut err_seen = Vec::new();
    let serving = line_where(&err, &mut err_seen, Duration::from_secs(30), |l| {
        l.contains("serving NVMe/TCP")
    })
    .unwrap_or_else(|| panic!("no \"serving NVMe/TCP\" line:\n{}", err_seen.join("\n")));
    let addr: SocketAddr = serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {serving:?}"));
    Spawned {
        child,
        out,
        err,
        err_seen,
        addr,
    }
}

/// A zeroed DISK_BYTES image file in a new temporary directory (kept while the
/// directory lives).
fn disk_image() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file).unwrap().set_len(DISK_BYTES).unwrap();
    (dir, file)
}

/// The /proc/PID/task/TID directories of process `pid`'s threads named `name`.
fn threads_named(pid: u32, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| t.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// CPU time (user + system, clock ticks) of the thread named `name` of process `pid`.
fn thread_cpu_ticks(pid: u32, name: &str) -> u64 {
    let task = threads_named(pid, name)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no thread {name} in process {pid}"));
    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
    // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

#[test]
fn a_poll_group_keeps_polling_for_its_idle_spin_after_work_and_sleeps_without_one() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let (_dir, file) = disk_image();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let window = Duration::from_millis(600);
    for (spin_us, polling) in [("1000000", true), ("0", false)] {
        let s = spawn_serve(
            &file,
            &["--allow-host", HOST, "--stats", "0", "--idle-spin-us", spin_us],
        );
        let mut a = Assoc::establish(s.addr, &Opts::default());
        a.verified_io(0, 7);
        // Within the second after that work: a poll group with a 1 s idle spin polls the
        // whole window (about 0.6 s of CPU, less on a busy machine); without one it
        // sleeps in epoll_wait, waking every 100 ms.
        let before = thread_cpu_ticks(s.child.0.id(), "nvmf-pg0");
        std::thread::sleep(window);
        let used_ms = (thread_cpu_ticks(s.child.0.id(), "nvmf-pg0") - before) * 1000 / hz;
        if polling {
            assert!(
                used_ms >= 150,
                "--idle-spin-us {spin_us}: the poll group used {used_ms} ms of CPU in {window:?}"
            );
        } else {
            assert!(
                used_ms <= 40,
                "--idle-spin-us {spin_us}: the poll group used {used_ms} ms of CPU in {window:?}"
            );
        }
        drop(a);
    }
}

#[test]
fn ironvme_serve_prints_stats_and_exits_0_on_sigterm() {
    let _g = GATE.read().unwrap_or_else(PoisonError::into_inner);
    let (_dir, file) = disk_image();
    // The poll group pinned (--cpumask, a list as SPDK reads it) to the last CPU this
    // test may run on. With only one allowed, an unpinned thread would show the same list:
    // the pinning is then not checked.
    let allowed = allowed_cpus();
    let cpu = *allowed.last().expect("no CPU in this process's affinity");
    let mask = format!("[{cpu}]");
    let Spawned {
        mut child,
        out,
        err,
        mut err_seen,
        addr,
    } = spawn_serve(&file, &["--allow-host", HOST, "--stats", "1", "--cpumask", &mask]);
    let mut out_seen = Vec::new();

    // Its poll group thread (started after that line) runs on that CPU only.
    let pid = child.0.id();
    let pinned = || -> Vec<String> {
        threads_named(pid, "nvmf-pg0")
            .into_iter()
            .filter_map(|t| {
                let status = std::fs::read_to_string(t.join("status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|v| v.trim().to_string())
            })
            .collect()
    };
    if allowed.len() > 1 {
        // The thread is named before it pins itself: wait for the pinning, then check.
        let want = vec![cpu.to_string()];
        let started = Instant::now();
        while pinned() != want && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pinned(), want, "poll group nvmf-pg0's CPUs (--cpumask {mask})");
    } else {
        eprintln!("one CPU allowed ({cpu}): --cpumask pinning not checked");
    }

    // One host: an association, some I/O.
    let mut a = Assoc::establish(addr, &Opts::default());
    for i in 0..4 {
        a.verified_io(0, i);
    }
    // A stats line that sees it (two connections: admin and I/O queue).
    let stats = line_where(&out, &mut out_seen, Duration::from_secs(10), |l| {
        l.starts_with("connections ") && l.contains("IOPS") && stat(l, "connections") == Some(2)
    })
    .unwrap_or_else(|| panic!("no stats line with 2 connections on stdout:\n{}", out_seen.join("\n")));
    assert!(
        stat(&stats, "IOPS").is_some() && stat(&stats, "I/Os").is_some(),
        "{stats:?}"
    );

    // SIGTERM with the host still connected: exit status 0 within a few seconds.
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill sends a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(5) {
            while let Ok(l) = err.try_recv() {
                err_seen.push(l);
            }
            panic!(
                "ironvme serve did not exit within 5 s of SIGTERM; stdout:\n{}\nstderr:\n{}",
                out_seen.join("\n"),
                err_seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "ironvme serve exited with {status}");
    // The host sees its connections closed.
    a.io.expect_closed("the I/O queue after SIGTERM");
}
