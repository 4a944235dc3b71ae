//! The NVMe/TCP target under a fuzzer (`fuzz/fuzz_targets/nvme_tcp.rs`): the real
//! connection state machine ([`Conn`]) run the way a poll group runs it, on bytes a
//! hostile host chose; the PDUs a host sends, built with their lengths and digests right;
//! and a little script language of host steps that the fuzz target's mode 1 reads. Also
//! writes the fuzz target's seeds (`fuzz/corpus/nvme_tcp`). Not part of ironvme's
//! interface.
//!
//! # Transport
//!
//! [`Conn`] owns a `mio::net::TcpStream`. The [`Rig`] gives it one end of a Unix stream
//! socket pair (`socketpair(2)`) as one: `Read` on it is `recv(2)` and the vectored
//! writes are `writev(2)`, which a Unix stream socket serves as a TCP socket does, and
//! [`Conn`] calls nothing TCP-specific. So a run needs no port and no network stack, and
//! leaves no TIME_WAIT behind. The host's end is wrapped as a std `TcpStream` too, so
//! that its writes are `send(MSG_NOSIGNAL)`: libFuzzer's `main` does not ignore SIGPIPE
//! as Rust's does. A `Conn` generic over its stream would make all this an in-memory
//! duplex.
//!
//! # The loop
//!
//! [`Rig::run`] writes each segment of host bytes to its connection (in pieces of
//! `chunk` bytes when asked, so headers arrive split), and after each piece turns the
//! poll group's loop once: [`Conn::on_readable`] for a connection with input (or parked
//! with buffers free), ring and poll the backends and hand completions to their
//! connections, [`Conn::flush`], end a queue whose association died, remove ended
//! connections (an admin queue's removal ends its controller), and read what the target
//! sent. A segment is done after two turns that wrote nothing and left every connection
//! idle: input drained (or parked), nothing on the backends, nothing to send. After the last, the
//! host shuts down its writing side of every connection and the loop turns until every
//! connection is removed and the backends are idle. Time-driven events (KATO, the
//! connect timeout) are left out: they would make runs differ.

#![doc(hidden)]

use super::conn::{self, Conn, End};
use super::ctrl::{self, DISCOVERY_NQN, HostPolicy, Subsystem, Target};
use super::pdu::{self, CommonHeader, PduError, flags, pdu_type};
use super::{Backends, Group, Namespace, Stats, TAG_SLOT_BITS};
use crate::export::Backing;
use ironvme_nvme::block::Completion;
use ironvme_nvme::cmd::Command;
use ironvme_nvme::parse::le32;
use ironvme_nvme::sgl::SglDescriptor;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The NVM subsystem the fuzz target serves, to any host: two namespaces.
pub const SUBSYSTEM_NQN: &str = "nqn.2026-12.io.ironvme:fuzz";
/// A subsystem only [`HOST_NQN`] may connect to, without namespaces.
pub const RESTRICTED_NQN: &str = "nqn.2026-12.io.ironvme:fuzz-restricted";
/// The host NQN the scripted Connects use (the one [`RESTRICTED_NQN`] allows).
pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6d1c5e0a-3f3b-4a53-9d9e-1b0c1f1e0a01";
/// Another host's NQN.
pub const STRANGER_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000beef";
/// Connections a run opens at most.
pub const MAX_CONNS: usize = 4;
/// Loop turns a run may take before it counts as hung.
pub const MAX_TURNS: usize = 1 << 20;

/// The target the fuzzer attacks: the discovery subsystem, [`SUBSYSTEM_NQN`] with two
/// namespaces on `backing`, and [`RESTRICTED_NQN`]; two listeners (IPv4 and IPv6) for
/// the discovery log. A fresh one per run, so controller IDs start at 1 every time.
pub fn target(backing: &Arc<Backing>) -> Target {
    let namespaces = (0..2)
        .map(|i| Namespace::new(SUBSYSTEM_NQN, i as u32 + 1, Arc::clone(backing), i))
        .collect();
    let sub = |nqn: &str, namespaces, hosts| {
        Arc::new(Subsystem::new(
            nqn.into(),
            "FUZZ0001".into(),
            "ironvme fuzz".into(),
            namespaces,
            hosts,
        ))
    };
    Target {
        subsystems: vec![
            sub(DISCOVERY_NQN, Vec::new(), HostPolicy::Any),
            sub(SUBSYSTEM_NQN, namespaces, HostPolicy::Any),
            sub(RESTRICTED_NQN, Vec::new(), HostPolicy::Only(vec![HOST_NQN.into()])),
        ],
        listeners: vec![
            SocketAddr::from(([127, 0, 0, 1], 4420)),
            SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 4420)),
        ],
    }
}

/// How a connection ended, and what it was bound to.
#[derive(Debug)]
pub struct Closed {
    /// Why it ended.
    pub end: End,
    /// The protocol error a C2HTermReq was sent for, if one was.
    pub terminated: Option<PduError>,
    /// (CNTLID, QID) after a successful Connect.
    pub bound: Option<(u16, u16)>,
}

/// One connection of a run: the target's side and the host's.
struct Peer {
    conn: Option<Conn>,
    host: TcpStream,
    /// Host bytes not yet taken by the socket.
    pending: Vec<u8>,
    shut: bool,
    /// The host read the end of the target's output.
    eof: bool,
    closed: Option<Closed>,
}

/// The poll group's backends and counters, kept across runs (creating them allocates
/// every pool buffer).
pub struct Rig {
    backends: Backends,
    stats: Stats,
    pool: Vec<usize>,
    done: Vec<(usize, Completion)>,
}

impl Rig {
    /// Backends for `target`'s namespaces (as [`super::serve`] makes them).
    ///
    /// Errors: the backend's, as text.
    pub fn new(target: &Target) -> Result<Rig, String> {
        let mut all: Vec<&Namespace> = target.subsystems.iter().flat_map(|s| s.namespaces.iter()).collect();
        all.sort_by_key(|n| n.index);
        let backends = Backends::new(&all)?;
        let pool = backends.ns.iter().map(|n| n.pool.len()).collect();
        Ok(Rig {
            backends,
            stats: Stats::default(),
            pool,
            done: Vec::new(),
        })
    }

    /// Runs one session: `segments` of host bytes, each for connection `.0` (a new
    /// connection when `.0` is the number opened so far; at most [`MAX_CONNS`]), written
    /// `chunk` bytes at a time (0: as much as the socket takes), the target's output
    /// handed to `output` as the host reads it. Returns how each connection ended.
    ///
    /// Panics if the session does not end within [`MAX_TURNS`] turns of the loop, or if
    /// a buffer is missing from a pool at the end: both are target bugs.
    pub fn run(
        &mut self,
        target: &Target,
        segments: &[(usize, &[u8])],
        chunk: usize,
        output: &mut dyn FnMut(usize, &[u8]),
    ) -> Vec<Closed> {
        let mut peers: Vec<Peer> = Vec::new();
        let mut turns = 0;
        for &(index, bytes) in segments {
            while index >= peers.len() && peers.len() < MAX_CONNS {
                peers.push(self.open(peers.len()));
            }
            let Some(p) = peers.get_mut(index) else {
                continue;
            };
            p.pending.extend_from_slice(bytes);
            // Done after two turns in a row that wrote nothing and ended idle (the second
            // lets a parked connection take a buffer the first gave back): every byte is
            // in, or the target stopped reading (parked, or closing).
            let mut quiet = 0;
            while quiet < 2 {
                let wrote = feed(&mut peers, chunk);
                self.turn(target, &mut peers, output);
                turns += 1;
                assert!(turns < MAX_TURNS, "the session never settled");
                quiet = if !wrote && self.idle(&peers) { quiet + 1 } else { 0 };
            }
        }
        // The host hangs up: its writing side closes once its bytes are in.
        while !peers.iter().all(|p| p.conn.is_none() && p.eof) {
            feed(&mut peers, chunk);
            for p in &mut peers {
                if p.pending.is_empty() && !p.shut {
                    p.shut = true;
                    let _ = p.host.shutdown(Shutdown::Write);
                    if let Some(c) = p.conn.as_mut() {
                        c.drained = false;
                    }
                }
            }
            self.turn(target, &mut peers, output);
            turns += 1;
            assert!(turns < MAX_TURNS, "the session never ended");
        }
        while self.backends.outstanding() > 0 {
            self.done.clear();
            self.backends.poll(&mut self.done);
            for (ns, c) in self.done.drain(..) {
                if let Some(buf) = c.buf {
                    self.backends.give_buffer(ns, buf);
                }
            }
            turns += 1;
            assert!(turns < MAX_TURNS, "backend operations never completed");
        }
        let pool: Vec<usize> = self.backends.ns.iter().map(|n| n.pool.len()).collect();
        assert_eq!(pool, self.pool, "buffers missing from the pools after the session");
        peers.into_iter().filter_map(|p| p.closed).collect()
    }

    fn open(&self, index: usize) -> Peer {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("O_NONBLOCK");
        theirs.set_nonblocking(true).expect("O_NONBLOCK");
        let sock = mio::net::TcpStream::from_std(TcpStream::from(OwnedFd::from(ours)));
        let peer = SocketAddr::from(([192, 0, 2, 1], 49152 + index as u16));
        Peer {
            conn: Some(Conn::new(sock, peer, Group::tag_base(index, 1))),
            host: TcpStream::from(OwnedFd::from(theirs)),
            pending: Vec::new(),
            shut: false,
            eof: false,
            closed: None,
        }
    }

    /// Whether every connection waits for the host (or is gone) and the backends rest.
    /// A parked connection waits for the host too then: with nothing on the backends,
    /// only the host (data for a command holding a buffer, or a hang-up) frees a buffer.
    fn idle(&self, peers: &[Peer]) -> bool {
        self.backends.outstanding() == 0
            && peers.iter().all(|p| match &p.conn {
                None => true,
                Some(c) => c.ended.is_none() && !c.active() && (c.drained || c.parked()),
            })
    }

    /// One turn of the poll group's loop ([`Group::run`]), then the host reads.
    fn turn(&mut self, target: &Target, peers: &mut [Peer], output: &mut dyn FnMut(usize, &[u8])) {
        let any_buffer = self.backends.any_buffer();
        for p in peers.iter_mut() {
            if let Some(c) = p.conn.as_mut()
                && (!c.drained || (c.parked() && any_buffer))
            {
                c.on_readable(target, &mut self.backends, &self.stats);
            }
        }
        self.backends.ring();
        self.done.clear();
        self.backends.poll(&mut self.done);
        for (ns, c) in self.done.drain(..) {
            let index = (c.tag >> TAG_SLOT_BITS >> 24) as usize;
            match peers.get_mut(index).and_then(|p| p.conn.as_mut()) {
                Some(conn) => conn.on_complete(ns, conn::tag_slot(c.tag), c, &mut self.backends, &self.stats),
                None => {
                    if let Some(buf) = c.buf {
                        self.backends.give_buffer(ns, buf);
                    }
                }
            }
        }
        self.backends.ring();
        for p in peers.iter_mut() {
            if let Some(c) = p.conn.as_mut() {
                c.flush(&mut self.backends);
                if let Some(b) = &c.binding
                    && b.ctrl.is_dead()
                    && c.ended.is_none()
                {
                    c.ended = Some(End::Dead);
                }
            }
        }
        for p in peers.iter_mut() {
            let gone = p
                .conn
                .as_ref()
                .is_some_and(|c| c.ended.is_some() && (!c.active() || matches!(c.ended, Some(End::Gone(_)))));
            if gone && let Some(mut c) = p.conn.take() {
                c.release(&mut self.backends);
                if let Some(b) = &c.binding
                    && b.qid == 0
                {
                    b.ctrl.kill();
                }
                p.closed = Some(Closed {
                    end: c.ended.take().unwrap_or(End::Dead),
                    terminated: c.terminated,
                    bound: c.binding.as_ref().map(|b| (b.ctrl.cntlid, b.qid)),
                });
            }
        }
        let mut buf = [0u8; 64 << 10];
        for (i, p) in peers.iter_mut().enumerate() {
            while !p.eof {
                match p.host.read(&mut buf) {
                    Ok(0) => p.eof = true,
                    Ok(n) => output(i, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // WouldBlock; any other error leaves nothing more to read.
                    Err(e) => {
                        p.eof = e.kind() != ErrorKind::WouldBlock;
                        break;
                    }
                }
            }
        }
    }
}

/// Writes what the host has pending on each connection (at most `chunk` bytes each, 0:
/// no limit); returns whether any went in.
fn feed(peers: &mut [Peer], chunk: usize) -> bool {
    let mut wrote = false;
    for p in peers.iter_mut() {
        let Some(c) = p.conn.as_mut() else {
            p.pending.clear(); // the target is gone: nobody reads the rest
            continue;
        };
        if p.pending.is_empty() {
            continue;
        }
        let n = if chunk == 0 {
            p.pending.len()
        } else {
            chunk.min(p.pending.len())
        };
        if let Ok(k) = p.host.write(&p.pending[..n])
            && k > 0
        {
            p.pending.drain(..k);
            c.drained = false;
            wrote = true;
        }
    }
    wrote
}

/// A PDU the target sent, as the host reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// ICResp: the digests granted (byte 11) and MAXH2CDATA.
    IcResp {
        /// Byte 11: bit 0 header digest, bit 1 data digest.
        digests: u8,
        /// MAXH2CDATA, bytes.
        maxh2cdata: u32,
    },
    /// CapsuleResp: the completion queue entry.
    Resp(ironvme_nvme::Completion),
    /// C2HData: `len` bytes at DATAO `datao` for command `cccid`; SUCCESS flag.
    Data {
        /// CCCID.
        cccid: u16,
        /// DATAO.
        datao: u32,
        /// DATAL.
        len: u32,
        /// SUCCESS: no CapsuleResp follows.
        success: bool,
    },
    /// R2T for `datal` bytes at `datao` of command `cccid`, under `ttag`.
    R2t {
        /// CCCID.
        cccid: u16,
        /// TTAG.
        ttag: u16,
        /// R2TO.
        datao: u32,
        /// R2TL.
        datal: u32,
    },
    /// C2HTermReq: FES and FEI.
    Term {
        /// Fatal Error Status.
        fes: u16,
        /// Fatal Error Information (the offending field's offset).
        fei: u32,
    },
}

/// The most data one C2HData carries from this target: a Get Log Page's 4 MiB.
pub const MAX_C2H_DATA: usize = 4 << 20;

/// What the host reads on one connection: the target's PDUs, each checked field by field
/// as a strict host would (types a controller sends, HLEN, PDO aligned to HPDA, PLEN
/// adding up, flags matching the negotiated digests, both digests correct, a CapsuleResp
/// right after a C2HData without SUCCESS, nothing after a C2HTermReq).
#[derive(Debug)]
pub struct Reader {
    hpda: u8,
    framing: Option<HostPdus>,
    buf: Vec<u8>,
    plen: usize,
    tail: Option<u16>,
    ended: bool,
}

impl Reader {
    /// A reader for a connection whose ICReq asked for HPDA `hpda`.
    pub fn new(hpda: u8) -> Reader {
        Reader {
            hpda,
            framing: None,
            buf: Vec::new(),
            plen: 0,
            tail: None,
            ended: false,
        }
    }

    /// Whether the output so far ends where a PDU ends (and no CapsuleResp is still due).
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty() && self.tail.is_none()
    }

    /// Reads `b`, appending each whole PDU to `events`.
    ///
    /// Errors: what is wrong with the first malformed PDU.
    pub fn feed(&mut self, mut b: &[u8], events: &mut Vec<Event>) -> Result<(), String> {
        while !b.is_empty() {
            if self.ended {
                return Err(format!("{} bytes after a C2HTermReq", b.len()));
            }
            let want = if self.buf.len() < pdu::CH_LEN {
                pdu::CH_LEN
            } else {
                self.plen
            };
            let n = (want - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.buf.len() == pdu::CH_LEN {
                let ch = CommonHeader::parse(self.buf[..pdu::CH_LEN].try_into().unwrap_or(&[0; 8]));
                self.plen = self.check_ch(ch).map_err(|e| format!("{e}: {ch:?}"))?;
            }
            if self.buf.len() >= pdu::CH_LEN && self.buf.len() == self.plen {
                let ch = CommonHeader::parse(self.buf[..pdu::CH_LEN].try_into().unwrap_or(&[0; 8]));
                events.push(self.pdu(ch).map_err(|e| format!("{e}: {ch:?}"))?);
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// The PDU's length, from a common header that is right for where it comes.
    fn check_ch(&self, ch: CommonHeader) -> Result<usize, &'static str> {
        let plen = ch.plen as usize;
        if ch.pdu_type == pdu_type::C2H_TERM_REQ {
            if (ch.hlen as usize, ch.flags, ch.pdo) != (pdu::DATA_HLEN, 0, 0) {
                return Err("C2HTermReq: HLEN, flags or PDO");
            }
            if !(pdu::DATA_HLEN..=pdu::DATA_HLEN + pdu::TERM_MAX_DATA).contains(&plen) {
                return Err("C2HTermReq: PLEN");
            }
            return Ok(plen);
        }
        let Some(f) = self.framing else {
            if (ch.pdu_type, ch.flags, ch.hlen as usize, ch.pdo, plen)
                != (pdu_type::IC_RESP, 0, pdu::IC_LEN, 0, pdu::IC_LEN)
            {
                return Err("the first PDU is neither an ICResp nor a C2HTermReq");
            }
            return Ok(plen);
        };
        if self.tail.is_some() && ch.pdu_type != pdu_type::CAPSULE_RESP {
            return Err("no CapsuleResp after a C2HData without SUCCESS");
        }
        let hd = if f.hdgst { pdu::DIGEST_LEN } else { 0 };
        let hflag = if f.hdgst { flags::HDGST } else { 0 };
        match ch.pdu_type {
            pdu_type::CAPSULE_RESP | pdu_type::R2T => {
                let hlen = if ch.pdu_type == pdu_type::R2T {
                    pdu::DATA_HLEN
                } else {
                    pdu::RESP_HLEN
                };
                if (ch.hlen as usize, ch.flags, ch.pdo, plen) != (hlen, hflag, 0, hlen + hd) {
                    return Err("CapsuleResp or R2T: HLEN, flags, PDO or PLEN");
                }
                Ok(plen)
            }
            pdu_type::C2H_DATA => {
                let dd = if f.ddgst { pdu::DIGEST_LEN } else { 0 };
                let dflag = if f.ddgst { flags::DDGST } else { 0 };
                let align = (self.hpda as usize + 1) * 4;
                let pdo = (pdu::DATA_HLEN + hd).div_ceil(align) * align;
                if ch.hlen as usize != pdu::DATA_HLEN || ch.pdo as usize != pdo {
                    return Err("C2HData: HLEN, or PDO not after the header aligned to HPDA");
                }
                if ch.flags & !flags::SUCCESS != hflag | dflag | flags::LAST_PDU {
                    return Err("C2HData: flags (digests, LAST_PDU)");
                }
                if plen <= pdo + dd || plen > pdo + MAX_C2H_DATA + dd {
                    return Err("C2HData: PLEN");
                }
                Ok(plen)
            }
            _ => Err("a PDU type a controller does not send"),
        }
    }

    /// Checks a whole PDU's header fields and digests.
    fn pdu(&mut self, ch: CommonHeader) -> Result<Event, &'static str> {
        let b = &self.buf;
        if ch.pdu_type == pdu_type::C2H_TERM_REQ {
            self.ended = true;
            return Ok(Event::Term {
                fes: u16::from_le_bytes([b[8], b[9]]),
                fei: le32(b, 10),
            });
        }
        let Some(f) = self.framing else {
            // ICResp: PFV 0, CPDA 0.
            if b[8..11] != [0, 0, 0] || b[11] > 3 {
                return Err("ICResp: PFV, CPDA or digest bits");
            }
            self.framing = Some(HostPdus::negotiated(b[11]));
            return Ok(Event::IcResp {
                digests: b[11],
                maxh2cdata: le32(b, 12),
            });
        };
        let hlen = ch.hlen as usize;
        if f.hdgst && pdu::digest(&b[..hlen]) != le32(b, hlen) {
            return Err("header digest");
        }
        match ch.pdu_type {
            pdu_type::CAPSULE_RESP => {
                let cqe = ironvme_nvme::Completion::from_bytes(b[8..24].try_into().unwrap_or(&[0; 16]));
                if let Some(cid) = self.tail.take()
                    && (cqe.cid != cid || !cqe.status().is_success())
                {
                    return Err("the CapsuleResp after a C2HData: another CID, or not success");
                }
                Ok(Event::Resp(cqe))
            }
            pdu_type::R2T => {
                let h = pdu::DataHeader::parse(b);
                if h.datal == 0 {
                    return Err("R2T for 0 bytes");
                }
                Ok(Event::R2t {
                    cccid: h.cccid,
                    ttag: h.ttag,
                    datao: h.datao,
                    datal: h.datal,
                })
            }
            _ => {
                let h = pdu::DataHeader::parse(b);
                let pdo = ch.pdo as usize;
                let end = ch.plen as usize - if f.ddgst { pdu::DIGEST_LEN } else { 0 };
                if h.datal as usize != end - pdo {
                    return Err("C2HData: DATAL is not the PDU's data");
                }
                if f.ddgst && pdu::digest(&b[pdo..end]) != le32(b, end) {
                    return Err("data digest");
                }
                let success = ch.flags & flags::SUCCESS != 0;
                if !success {
                    self.tail = Some(h.cccid);
                }
                Ok(Event::Data {
                    cccid: h.cccid,
                    datao: h.datao,
                    len: h.datal,
                    success,
                })
            }
        }
    }
}

/// The PDUs a host sends on a connection, framed as it negotiated: header and data
/// digests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostPdus {
    /// Header digests negotiated.
    pub hdgst: bool,
    /// Data digests negotiated.
    pub ddgst: bool,
}

impl HostPdus {
    /// An ICReq (PFV 0) with HPDA and byte 11 (bit 0 HDGST_ENABLE, bit 1 DDGST_ENABLE)
    /// as given, MAXR2T 0.
    pub fn ic_req(hpda: u8, digests: u8) -> [u8; pdu::IC_LEN] {
        let mut b = [0u8; pdu::IC_LEN];
        b[..pdu::CH_LEN].copy_from_slice(
            &CommonHeader {
                pdu_type: pdu_type::IC_REQ,
                flags: 0,
                hlen: pdu::IC_LEN as u8,
                pdo: 0,
                plen: pdu::IC_LEN as u32,
            }
            .to_bytes(),
        );
        b[10] = hpda;
        b[11] = digests;
        b
    }

    /// The digests an ICReq with `digests` as byte 11 negotiates (the target grants both).
    pub fn negotiated(digests: u8) -> HostPdus {
        HostPdus {
            hdgst: digests & 1 != 0,
            ddgst: digests & 2 != 0,
        }
    }

    /// A PDU of `pdu_type` with header `h` (from byte 8 on), `pad` bytes of padding
    /// after the header digest and `data` (with its digest), when there is data.
    fn pdu(self, pdu_type: u8, extra: u8, h: &[u8], pad: usize, data: &[u8]) -> Vec<u8> {
        let hlen = pdu::CH_LEN + h.len();
        let header = hlen + if self.hdgst { pdu::DIGEST_LEN } else { 0 };
        let has_data = !data.is_empty();
        let pdo = if has_data { (header + pad).min(255) } else { 0 };
        let ddgst = has_data && self.ddgst;
        let plen = if has_data { pdo + data.len() } else { header } + if ddgst { pdu::DIGEST_LEN } else { 0 };
        let f = (if self.hdgst { flags::HDGST } else { 0 }) | (if ddgst { flags::DDGST } else { 0 }) | extra;
        let mut b = CommonHeader {
            pdu_type,
            flags: f,
            hlen: hlen as u8,
            pdo: pdo as u8,
            plen: plen as u32,
        }
        .to_bytes()
        .to_vec();
        b.extend_from_slice(h);
        if self.hdgst {
            let d = pdu::digest(&b);
            b.extend_from_slice(&d.to_le_bytes());
        }
        if has_data {
            b.resize(pdo, 0);
            b.extend_from_slice(data);
            if ddgst {
                b.extend_from_slice(&pdu::digest(data).to_le_bytes());
            }
        }
        b
    }

    /// A CapsuleCmd: the 64-byte SQE and its in-capsule data, `pad` bytes of padding
    /// before the data (PDO at most 255).
    pub fn capsule(self, sqe: &[u8; 64], data: &[u8], pad: usize) -> Vec<u8> {
        self.pdu(pdu_type::CAPSULE_CMD, 0, sqe, pad, data)
    }

    /// An H2CData PDU: `data` at `datao` of command `cccid`'s transfer, answering R2T
    /// `ttag`; `last` sets LAST_PDU.
    pub fn h2c_data(self, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut h = [0u8; pdu::DATA_HLEN - pdu::CH_LEN];
        h[..2].copy_from_slice(&cccid.to_le_bytes());
        h[2..4].copy_from_slice(&ttag.to_le_bytes());
        h[4..8].copy_from_slice(&datao.to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.pdu(pdu_type::H2C_DATA, if last { flags::LAST_PDU } else { 0 }, &h, 0, data)
    }

    /// An H2CTermReq with fatal error status `fes` (no digests, no data).
    pub fn h2c_term_req(fes: u16) -> Vec<u8> {
        let mut h = [0u8; pdu::DATA_HLEN - pdu::CH_LEN];
        h[..2].copy_from_slice(&fes.to_le_bytes());
        HostPdus::default().pdu(pdu_type::H2C_TERM_REQ, 0, &h, 0, &[])
    }
}

/// A Fabrics Connect command (RECFMT 0) for queue `qid` of `sqsize + 1` entries, KATO
/// `kato_ms`, its 1024 bytes of data in the capsule.
pub fn connect_cmd(cid: u16, qid: u16, sqsize: u16, cattr: u8, kato_ms: u32) -> Command {
    let mut c = Command {
        cdw0: ctrl::FABRICS_OPCODE as u32,
        nsid: ctrl::fctype::CONNECT as u32,
        cdw10: (qid as u32) << 16,
        cdw11: sqsize as u32 | (cattr as u32) << 16,
        cdw12: kato_ms,
        ..Default::default()
    };
    c.set_cid(cid);
    in_capsule(&mut c, ctrl::CONNECT_DATA_LEN);
    c
}

/// Connect's data: HOSTID, CNTLID, SUBNQN and HOSTNQN (NVMe over Fabrics 1.1 figure 20).
pub fn connect_data(cntlid: u16, subnqn: &str, hostnqn: &str) -> Vec<u8> {
    let mut d = vec![0u8; ctrl::CONNECT_DATA_LEN];
    d[..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(hostnqn.as_bytes()).to_le_bytes());
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let put = |d: &mut [u8], at: usize, s: &str| {
        let n = s.len().min(256);
        d[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
    };
    put(&mut d, 256, subnqn);
    put(&mut d, 512, hostnqn);
    d
}

/// Property Get of the property at `offset`, 8 bytes wide when `size8`.
pub fn property_get(cid: u16, offset: u32, size8: bool) -> Command {
    let mut c = Command {
        cdw0: ctrl::FABRICS_OPCODE as u32,
        nsid: ctrl::fctype::PROPERTY_GET as u32,
        cdw10: size8 as u32,
        cdw11: offset,
        ..Default::default()
    };
    c.set_cid(cid);
    c
}

/// Property Set of the 4-byte property at `offset` to `value`.
pub fn property_set(cid: u16, offset: u32, value: u32) -> Command {
    let mut c = Command {
        cdw0: ctrl::FABRICS_OPCODE as u32,
        nsid: ctrl::fctype::PROPERTY_SET as u32,
        cdw11: offset,
        cdw12: value,
        ..Default::default()
    };
    c.set_cid(cid);
    c
}

/// Describes `len` bytes of in-capsule data in `cmd`'s DPTR (Data Block, offset 0).
pub fn in_capsule(cmd: &mut Command, len: usize) {
    cmd.set_sgl(SglDescriptor {
        addr: 0,
        len: len as u32,
        reserved: [0; 3],
        id: 0x01,
    });
}

/// Asks for `len` bytes moved by C2HData or R2T/H2CData in `cmd`'s DPTR (Transport SGL
/// Data Block).
pub fn by_transport(cmd: &mut Command, len: u32) {
    cmd.set_sgl(SglDescriptor {
        addr: 0,
        len,
        reserved: [0; 3],
        id: 0x5A,
    });
}

/// One step of a scripted session (the fuzz target's mode 1): what a host does, with
/// the framing — lengths, PDO, digests — done right, so the fuzzer spends its bytes on
/// fields that matter. Each step is a tag byte (its value modulo 7), then its fields,
/// little-endian; a step cut short by the input's end is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Tag 0, 2 bytes: opens the next connection and sends an ICReq with this HPDA and
    /// byte 11 (digests); later steps go to it. The first connection is open from the
    /// start: as the first step, Open sends its ICReq.
    Open {
        /// HPDA (above 31 is refused).
        hpda: u8,
        /// ICReq byte 11: bit 0 header digest, bit 1 data digest.
        digests: u8,
    },
    /// Tag 1, 1 byte: later steps go to connection `n` modulo those open, once all
    /// before have been answered (the host waits for the target to go idle).
    Switch(u8),
    /// Tag 2, 16 bytes: a Connect capsule and its 1024-byte data.
    Connect {
        /// CID.
        cid: u16,
        /// QID (0: admin).
        qid: u16,
        /// SQSIZE (0's based).
        sqsize: u16,
        /// CATTR.
        cattr: u8,
        /// KATO, ms.
        kato: u32,
        /// CNTLID in the data.
        cntlid: u16,
        /// SUBNQN: modulo 4, discovery, [`SUBSYSTEM_NQN`], [`RESTRICTED_NQN`], unknown.
        subsystem: u8,
        /// HOSTNQN: modulo 4, [`HOST_NQN`], [`STRANGER_NQN`], empty, 256 bytes without NUL.
        host: u8,
    },
    /// Tag 3, 67 bytes and the data: a CapsuleCmd.
    Capsule {
        /// Bits 1:0: DPTR as in `sqe` (0), in-capsule data of the data's length (1),
        /// Transport SGL of the SQE's own length (2) or of the data's length (3).
        /// Bits 7:2: padding before the data, in dwords.
        sgl: u8,
        /// The submission queue entry.
        sqe: [u8; 64],
        /// In-capsule data (u16 length, then the bytes; cut at the input's end).
        data: Vec<u8>,
    },
    /// Tag 4, 11 bytes and the data: an H2CData PDU.
    H2cData {
        /// Bit 0: LAST_PDU.
        last: u8,
        /// CCCID.
        cccid: u16,
        /// TTAG.
        ttag: u16,
        /// DATAO.
        datao: u32,
        /// The data (u16 length, then the bytes).
        data: Vec<u8>,
    },
    /// Tag 5, 2 bytes: an H2CTermReq with this FES.
    Term(u16),
    /// Tag 6, a u16 length and the bytes: sent as they are.
    Raw(Vec<u8>),
}

/// Reads the front of `b` off it.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u8(b: &mut &[u8]) -> Option<u8> {
    take(b, 1).map(|v| v[0])
}

fn take_u16(b: &mut &[u8]) -> Option<u16> {
    take(b, 2).map(|v| u16::from_le_bytes([v[0], v[1]]))
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    take(b, 4).map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// A u16 length, then that many bytes (fewer if the input ends).
fn take_data(b: &mut &[u8]) -> Option<Vec<u8>> {
    let len = take_u16(b)? as usize;
    let n = len.min(b.len());
    take(b, n).map(<[u8]>::to_vec)
}

fn put_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

impl Step {
    /// Reads one step off the front of `b`; `None` at the end.
    pub fn decode(b: &mut &[u8]) -> Option<Step> {
        Some(match take_u8(b)? % 7 {
            0 => Step::Open {
                hpda: take_u8(b)?,
                digests: take_u8(b)?,
            },
            1 => Step::Switch(take_u8(b)?),
            2 => Step::Connect {
                cid: take_u16(b)?,
                qid: take_u16(b)?,
                sqsize: take_u16(b)?,
                cattr: take_u8(b)?,
                kato: take_u32(b)?,
                cntlid: take_u16(b)?,
                subsystem: take_u8(b)?,
                host: take_u8(b)?,
            },
            3 => Step::Capsule {
                sgl: take_u8(b)?,
                sqe: take(b, 64)?.try_into().ok()?,
                data: take_data(b)?,
            },
            4 => Step::H2cData {
                last: take_u8(b)?,
                cccid: take_u16(b)?,
                ttag: take_u16(b)?,
                datao: take_u32(b)?,
                data: take_data(b)?,
            },
            5 => Step::Term(take_u16(b)?),
            _ => Step::Raw(take_data(b)?),
        })
    }

    /// The step's bytes ([`Step::decode`] reads them back).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        match self {
            Step::Open { hpda, digests } => o.extend_from_slice(&[0, *hpda, *digests]),
            Step::Switch(n) => o.extend_from_slice(&[1, *n]),
            Step::Connect {
                cid,
                qid,
                sqsize,
                cattr,
                kato,
                cntlid,
                subsystem,
                host,
            } => {
                o.push(2);
                o.extend_from_slice(&cid.to_le_bytes());
                o.extend_from_slice(&qid.to_le_bytes());
                o.extend_from_slice(&sqsize.to_le_bytes());
                o.push(*cattr);
                o.extend_from_slice(&kato.to_le_bytes());
                o.extend_from_slice(&cntlid.to_le_bytes());
                o.extend_from_slice(&[*subsystem, *host]);
            }
            Step::Capsule { sgl, sqe, data } => {
                o.extend_from_slice(&[3, *sgl]);
                o.extend_from_slice(sqe);
                put_data(&mut o, data);
            }
            Step::H2cData {
                last,
                cccid,
                ttag,
                datao,
                data,
            } => {
                o.extend_from_slice(&[4, *last]);
                o.extend_from_slice(&cccid.to_le_bytes());
                o.extend_from_slice(&ttag.to_le_bytes());
                o.extend_from_slice(&datao.to_le_bytes());
                put_data(&mut o, data);
            }
            Step::Term(fes) => {
                o.push(5);
                o.extend_from_slice(&fes.to_le_bytes());
            }
            Step::Raw(bytes) => {
                o.push(6);
                put_data(&mut o, bytes);
            }
        }
        o
    }
}

/// A scripted session as bytes on the wire.
#[derive(Debug, Default)]
pub struct Script {
    /// Host bytes per connection, in the order the host sends them.
    pub segments: Vec<(usize, Vec<u8>)>,
    /// The CIDs of the capsules sent on each connection, in order.
    pub cids: Vec<Vec<u16>>,
    /// Each connection's ICReq, if its first step opened it.
    pub ic_reqs: Vec<Option<[u8; pdu::IC_LEN]>>,
    /// Whether a [`Step::Raw`] put bytes of the fuzzer's own framing on the wire.
    pub raw: bool,
}

impl Script {
    /// The wire bytes of `steps`, framed as each connection negotiated.
    pub fn new(steps: &[Step]) -> Script {
        let mut s = Script {
            segments: Vec::new(),
            cids: vec![Vec::new()],
            ic_reqs: vec![None],
            raw: false,
        };
        let mut framing = vec![HostPdus::default()];
        let mut at = 0usize;
        let mut boundary = false;
        for step in steps {
            let f = framing[at];
            let bytes = match step {
                Step::Open { hpda, digests } => {
                    // The first connection is open from the start: an Open before
                    // anything was sent on it is its ICReq.
                    let fresh = s.segments.is_empty();
                    if framing.len() == MAX_CONNS && !fresh {
                        continue;
                    }
                    let ic = HostPdus::ic_req(*hpda, *digests);
                    if !fresh {
                        framing.push(HostPdus::default());
                        s.cids.push(Vec::new());
                        s.ic_reqs.push(None);
                        at = framing.len() - 1;
                    }
                    framing[at] = HostPdus::negotiated(*digests);
                    s.ic_reqs[at] = Some(ic);
                    ic.to_vec()
                }
                Step::Switch(n) => {
                    at = *n as usize % framing.len();
                    boundary = true;
                    continue;
                }
                Step::Connect {
                    cid,
                    qid,
                    sqsize,
                    cattr,
                    kato,
                    cntlid,
                    subsystem,
                    host,
                } => {
                    let subnqn = [
                        DISCOVERY_NQN,
                        SUBSYSTEM_NQN,
                        RESTRICTED_NQN,
                        "nqn.2026-12.io.ironvme:none",
                    ][*subsystem as usize % 4];
                    let long = "h".repeat(256);
                    let hostnqn = [HOST_NQN, STRANGER_NQN, "", &long][*host as usize % 4];
                    s.cids[at].push(*cid);
                    let cmd = connect_cmd(*cid, *qid, *sqsize, *cattr, *kato);
                    f.capsule(&cmd.to_bytes(), &connect_data(*cntlid, subnqn, hostnqn), 0)
                }
                Step::Capsule { sgl, sqe, data } => {
                    let mut cmd = Command::from_bytes(sqe);
                    match sgl & 3 {
                        1 => in_capsule(&mut cmd, data.len()),
                        2 => {
                            let len = SglDescriptor::from_dptr(cmd.dptr).len;
                            by_transport(&mut cmd, len)
                        }
                        3 => by_transport(&mut cmd, data.len() as u32),
                        _ => {}
                    }
                    s.cids[at].push(cmd.cid());
                    f.capsule(&cmd.to_bytes(), data, (sgl >> 2) as usize * 4)
                }
                Step::H2cData {
                    last,
                    cccid,
                    ttag,
                    datao,
                    data,
                } => f.h2c_data(*cccid, *ttag, *datao, data, last & 1 != 0),
                Step::Term(fes) => HostPdus::h2c_term_req(*fes),
                Step::Raw(bytes) => {
                    s.raw = true;
                    bytes.clone()
                }
            };
            match s.segments.last_mut() {
                Some((c, b)) if *c == at && !boundary => b.extend_from_slice(&bytes),
                _ => s.segments.push((at, bytes)),
            }
            boundary = false;
        }
        s
    }

    /// Reads steps from `b` to its end and frames them.
    pub fn decode(mut b: &[u8]) -> Script {
        let mut steps = Vec::new();
        while let Some(s) = Step::decode(&mut b) {
            steps.push(s);
        }
        Script::new(&steps)
    }
}

/// The fuzz target's input modes (the low two bits of byte 0).
pub mod mode {
    /// Raw: the rest is what the host sends; [`super::SWITCH`] and a byte n start a
    /// segment for connection n modulo 4 (sent once the target is idle).
    pub const RAW: u8 = 0;
    /// Scripted: the rest is [`super::Step`]s.
    pub const SCRIPT: u8 = 1;
    /// The command handlers of `ctrl` called directly: records of a u16 data length, a
    /// 64-byte SQE and the data.
    pub const HANDLERS: u8 = 2;
}

/// In raw mode, these bytes and one more (the connection, modulo 4) start a segment.
pub const SWITCH: &[u8] = b"~conn";

/// Splits raw-mode input into segments by connection at each [`SWITCH`].
pub fn raw_segments(mut b: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let next = b.windows(SWITCH.len() + 1).position(|w| w.starts_with(SWITCH));
        let Some(i) = next else {
            out.push((at, b));
            return out;
        };
        out.push((at, &b[..i]));
        at = b[i + SWITCH.len()] as usize % MAX_CONNS;
        b = &b[i + SWITCH.len() + 1..];
    }
}

/// A handlers-mode record: a u16 data length, the SQE, the data.
pub fn handler_record(cmd: &Command, data: &[u8]) -> Vec<u8> {
    let mut o = (data.len() as u16).to_le_bytes().to_vec();
    o.extend_from_slice(&cmd.to_bytes());
    o.extend_from_slice(data);
    o
}

/// Reads handlers-mode records: (SQE, data).
pub fn handler_records(mut b: &[u8]) -> Vec<(Command, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(sqe)) = (take_u16(&mut b), take(&mut b, 64)) {
        let n = (len as usize).min(b.len());
        let data = take(&mut b, n).unwrap_or_default();
        out.push((Command::from_bytes(sqe.try_into().unwrap_or(&[0; 64])), data));
    }
    out
}

/// The seeds of `fuzz/corpus/nvme_tcp`, by name: an ICReq, an ICReq and an admin Connect
/// with its data, a Property Get after them, whole sessions (raw and scripted, with and
/// without digests) that enable the controller, connect an I/O queue and move data
/// in-capsule and by R2T/H2CData, a discovery session, and handler records.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use ironvme_nvme::features::{FeatureId, FeatureSelect};
    let plain = HostPdus::default();
    let raw = |parts: &[&[u8]]| [&[mode::RAW][..], &parts.concat()].concat();
    let ic = HostPdus::ic_req(0, 0);
    let admin_connect = |f: HostPdus, sub: &str| {
        f.capsule(
            &connect_cmd(1, 0, 31, 0, 0).to_bytes(),
            &connect_data(0xFFFF, sub, HOST_NQN),
            0,
        )
    };
    let cap = plain.capsule(&property_get(2, 0, true).to_bytes(), &[], 0);
    let mut s = vec![
        ("raw-icreq", raw(&[&ic])),
        ("raw-connect", raw(&[&ic, &admin_connect(plain, SUBSYSTEM_NQN)])),
        (
            "raw-property-get",
            raw(&[&ic, &admin_connect(plain, SUBSYSTEM_NQN), &cap]),
        ),
    ];
    // A discovery session: the log page, as `nvme discover` reads it.
    let mut log = Command::get_log_page(ironvme_nvme::log::LogPageId(0x70), 0, 0, 4096, 0, false).unwrap_or_default();
    log.set_cid(3);
    by_transport(&mut log, 4096);
    s.push((
        "raw-discovery",
        raw(&[
            &ic,
            &admin_connect(plain, DISCOVERY_NQN),
            &plain.capsule(&property_set(2, 0x14, 1).to_bytes(), &[], 0),
            &plain.capsule(&log.to_bytes(), &[], 0),
        ]),
    ));
    for (name, digests) in [("raw-session", 0u8), ("raw-session-digests", 3)] {
        let f = HostPdus::negotiated(digests);
        let ic = HostPdus::ic_req(if digests == 0 { 0 } else { 1 }, digests);
        let mut parts: Vec<Vec<u8>> = vec![ic.to_vec(), admin_connect(f, SUBSYSTEM_NQN)];
        for cmd in admin_session() {
            parts.push(f.capsule(&cmd.to_bytes(), &[], 0));
        }
        parts.push([SWITCH, &[1]].concat());
        parts.push(ic.to_vec());
        let io_connect = connect_cmd(1, 1, 127, 0, 0);
        parts.push(f.capsule(&io_connect.to_bytes(), &connect_data(1, SUBSYSTEM_NQN, HOST_NQN), 0));
        for (cmd, data) in io_session() {
            parts.push(f.capsule(&cmd.to_bytes(), &data, 0));
        }
        // Once the commands before are answered (a new segment), a 4 KiB write by R2T:
        // the target answers with TTAG 0, the first free slot.
        parts.push([SWITCH, &[1]].concat());
        let mut w = Command::write(1, 16, 8, false);
        w.set_cid(40);
        by_transport(&mut w, 4096);
        parts.push(f.capsule(&w.to_bytes(), &[], 0));
        parts.push(f.h2c_data(40, 0, 0, &[0x5A; 2048], false));
        parts.push(f.h2c_data(40, 0, 2048, &[0xA5; 2048], true));
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        s.push((name, raw(&refs)));
    }
    // A pool run dry: the first I/O queue holds every buffer of namespace 1 (128 writes
    // waiting for their H2CData), so a write on the second parks its connection until
    // the first queue's data for one of them arrives and that write completes.
    let f = plain;
    let mut parts: Vec<Vec<u8>> = vec![ic.to_vec(), admin_connect(f, SUBSYSTEM_NQN)];
    for cmd in admin_session() {
        parts.push(f.capsule(&cmd.to_bytes(), &[], 0));
    }
    for (qid, cmds) in [(1u16, 128u16), (2, 1)] {
        parts.push([SWITCH, &[qid as u8]].concat());
        parts.push(ic.to_vec());
        let io_connect = connect_cmd(1, qid, 127, 0, 0);
        parts.push(f.capsule(&io_connect.to_bytes(), &connect_data(1, SUBSYSTEM_NQN, HOST_NQN), 0));
        for i in 0..cmds {
            let mut w = Command::write(1, i as u64, 1, false);
            w.set_cid(100 + i);
            if qid == 1 {
                by_transport(&mut w, 512);
                parts.push(f.capsule(&w.to_bytes(), &[], 0));
            } else {
                in_capsule(&mut w, 512);
                parts.push(f.capsule(&w.to_bytes(), &[9; 512], 0));
            }
        }
    }
    parts.push([SWITCH, &[1]].concat());
    parts.push(f.h2c_data(100, 0, 0, &[3; 512], true));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    s.push(("raw-pool-dry", raw(&refs)));
    // The same as steps.
    let mut steps = vec![
        Step::Open { hpda: 0, digests: 3 },
        Step::Connect {
            cid: 1,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato: 0,
            cntlid: 0xFFFF,
            subsystem: 1,
            host: 0,
        },
    ];
    for cmd in admin_session() {
        steps.push(Step::Capsule {
            sgl: 0,
            sqe: cmd.to_bytes(),
            data: Vec::new(),
        });
    }
    steps.push(Step::Open { hpda: 2, digests: 0 });
    steps.push(Step::Connect {
        cid: 1,
        qid: 1,
        sqsize: 127,
        cattr: ctrl::CATTR_DISABLE_SQFLOW,
        kato: 0,
        cntlid: 1,
        subsystem: 1,
        host: 0,
    });
    for (cmd, data) in io_session() {
        steps.push(Step::Capsule {
            sgl: !data.is_empty() as u8, // in-capsule data described afresh
            sqe: cmd.to_bytes(),
            data,
        });
    }
    steps.push(Step::Switch(1));
    let mut w = Command::write(2, 0, 1, false);
    w.set_cid(41);
    steps.push(Step::Capsule {
        sgl: 2,
        sqe: {
            by_transport(&mut w, 512);
            w.to_bytes()
        },
        data: Vec::new(),
    });
    steps.push(Step::H2cData {
        last: 1,
        cccid: 41,
        ttag: 0,
        datao: 0,
        data: vec![7; 512],
    });
    steps.push(Step::Switch(0));
    let mut gf = Command::get_features(FeatureId::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0);
    gf.set_cid(50);
    steps.push(Step::Capsule {
        sgl: 0,
        sqe: gf.to_bytes(),
        data: Vec::new(),
    });
    steps.push(Step::Term(1));
    let script: Vec<u8> = steps.iter().flat_map(Step::encode).collect();
    s.push(("script-session", [&[mode::SCRIPT][..], &script].concat()));
    // Handlers: Connect, enable, then every admin command the session uses.
    let mut h = vec![mode::HANDLERS];
    h.extend(handler_record(
        &connect_cmd(1, 0, 31, 0, 0),
        &connect_data(0xFFFF, SUBSYSTEM_NQN, HOST_NQN),
    ));
    for cmd in admin_session() {
        h.extend(handler_record(&cmd, &[]));
    }
    h.extend(handler_record(
        &connect_cmd(1, 1, 127, 0, 0),
        &connect_data(1, SUBSYSTEM_NQN, HOST_NQN),
    ));
    s.push(("handlers-session", h));
    s
}

/// An admin queue's bring-up as Linux's host does it, give or take: CAP, enable, CSTS,
/// VS, Identify Controller, Number of Queues, KATO, AEN config, AERs, the active NSID
/// list, Identify Namespace and its descriptors, log pages, Keep Alive, Abort.
fn admin_session() -> Vec<Command> {
    use ironvme_nvme::features::{FeatureId, FeatureSelect};
    use ironvme_nvme::identify::Cns;
    use ironvme_nvme::log::LogPageId;
    let mut v = vec![
        property_get(0, 0x00, true),
        property_set(0, 0x14, 0x0046_0001),
        property_get(0, 0x1C, false),
        property_get(0, 0x08, false),
        property_get(0, 0x14, false),
        Command::identify(Cns::CONTROLLER, 0, 0),
        Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, 3 << 16 | 3, false),
        Command::set_features(FeatureId(0x0F), 0, 0, false),
        Command::set_features(FeatureId(0x0B), 0, 0x100, false),
        Command::async_event_request(),
        Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 0, 0),
        Command::identify(Cns::NAMESPACE, 1, 0),
        Command::identify(Cns::NAMESPACE_ID_DESCRIPTORS, 2, 0),
        Command::keep_alive(),
        Command::abort(0, 7),
        Command::get_features(FeatureId(0x0F), FeatureSelect::Current, 0, 0),
        Command::get_features(FeatureId(0x0B), FeatureSelect::Current, 0, 0),
        Command::get_features(FeatureId(0x06), FeatureSelect::Current, 0, 0),
    ];
    for lid in [0x01u8, 0x02, 0x03, 0x04] {
        if let Some(c) = Command::get_log_page(LogPageId(lid), 0xFFFF_FFFF, 0, 512, 0, false) {
            v.push(c);
        }
    }
    for (i, c) in v.iter_mut().enumerate() {
        c.set_cid(10 + i as u16);
        let sgl = SglDescriptor::from_dptr(c.dptr);
        if c.opcode() != ctrl::FABRICS_OPCODE && sgl.id == 0 {
            by_transport(c, 4096);
        }
    }
    v
}

/// An I/O queue's commands with in-capsule data where they carry any: Write, Read,
/// Compare, Flush, Write Zeroes, Dataset Management (Deallocate), and an unknown opcode.
fn io_session() -> Vec<(Command, Vec<u8>)> {
    use ironvme_nvme::cmd::{DsmAttributes, DsmRange};
    let bs = 512u32;
    let mut v = Vec::new();
    let mut w = Command::write(1, 0, 1, true);
    in_capsule(&mut w, bs as usize);
    v.push((w, vec![0xEE; bs as usize]));
    let mut r = Command::read(1, 0, 1);
    by_transport(&mut r, bs);
    v.push((r, Vec::new()));
    let mut c = Command::compare(1, 0, 1);
    in_capsule(&mut c, bs as usize);
    v.push((c, vec![0xEE; bs as usize]));
    v.push((Command::flush(1), Vec::new()));
    v.push((Command::write_zeroes(2, 8, 4, true), Vec::new()));
    let range = DsmRange {
        context_attributes: 0,
        nlb: 8,
        slba: 64,
    }
    .to_bytes();
    let mut d = Command::dataset_management(
        1,
        1,
        DsmAttributes {
            deallocate: true,
            ..Default::default()
        },
    );
    in_capsule(&mut d, range.len());
    v.push((d, range.to_vec()));
    v.push((
        Command {
            cdw0: 0x7E,
            nsid: 1,
            ..Default::default()
        },
        Vec::new(),
    ));
    for (i, (c, _)) in v.iter_mut().enumerate() {
        c.set_cid(20 + i as u16);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing() -> (tempfile::TempDir, Arc<Backing>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file).unwrap().set_len(1 << 20).unwrap();
        let b = Arc::new(Backing::open(file.to_str().unwrap()).unwrap());
        (dir, b)
    }

    /// The fuzz target's seeds are what [`seeds`] builds today; `IRONVME_BLESS=1`
    /// rewrites them.
    #[test]
    fn the_fuzz_seeds_are_todays_encoding() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nvme_tcp");
        for (name, want) in seeds() {
            let path = dir.join(name);
            if std::env::var_os("IRONVME_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &want).unwrap();
            }
            let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(got == want, "{} differs from today's encoding", path.display());
        }
    }

    #[test]
    fn steps_round_trip() {
        let s = seeds();
        let (_, script) = s.iter().find(|(n, _)| *n == "script-session").unwrap();
        let mut b = &script[1..];
        let mut again = Vec::new();
        while let Some(step) = Step::decode(&mut b) {
            again.extend(step.encode());
        }
        assert_eq!(again, script[1..]);
    }

    /// Runs a raw or scripted seed; how each connection closed, and what it read.
    fn session(rig: &mut Rig, t: &Target, bytes: &[u8]) -> (Vec<Closed>, Vec<Vec<Event>>) {
        let script;
        let segs: Vec<(usize, &[u8])> = match bytes[0] & 3 {
            mode::RAW => raw_segments(&bytes[1..]),
            _ => {
                script = Script::decode(&bytes[1..]);
                script.segments.iter().map(|(i, b)| (*i, b.as_slice())).collect()
            }
        };
        let mut readers: Vec<Option<Reader>> = (0..MAX_CONNS).map(|_| None).collect();
        let mut events = vec![Vec::new(); MAX_CONNS];
        let closed = rig.run(t, &segs, 7, &mut |i, b| {
            let hpda = segs
                .iter()
                .find(|s| s.0 == i)
                .map_or(0, |s| s.1.get(10).copied().unwrap_or(0));
            let r = readers[i].get_or_insert_with(|| Reader::new(hpda));
            if let Err(e) = r.feed(b, &mut events[i]) {
                panic!("connection {i}: {e}; read before: {:?}", events[i]);
            }
        });
        for (r, c) in readers.iter().zip(&closed) {
            assert!(r.as_ref().is_none_or(Reader::at_boundary), "{c:?}");
        }
        (closed, events)
    }

    fn failed(events: &[Event]) -> Vec<(u16, u16)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Resp(c) if !c.status().is_success() => Some((c.cid, c.status().code())),
                _ => None,
            })
            .collect()
    }

    /// The seeds reach what they are for: the sessions connect an admin and an I/O
    /// queue, enable the controller and have every command answered, and only those
    /// meant to fail fail.
    #[test]
    fn the_seeds_reach_connect_enable_and_io() {
        let (_dir, backing) = backing();
        assert_eq!(backing.info.block_size, 512, "io_session assumes 512-byte blocks");
        let mut rig = Rig::new(&target(&backing)).unwrap();
        for (name, bytes) in seeds() {
            if bytes[0] & 3 == mode::HANDLERS {
                continue;
            }
            let t = target(&backing);
            let (closed, events) = session(&mut rig, &t, &bytes);
            let bound: Vec<_> = closed.iter().map(|c| c.bound).collect();
            let answered = |i: usize| {
                events[i]
                    .iter()
                    .filter(|e| matches!(e, Event::Resp(_) | Event::Data { success: true, .. }))
                    .count()
            };
            match name {
                "raw-icreq" => assert!(matches!(events[0][..], [Event::IcResp { digests: 0, .. }])),
                "raw-pool-dry" => {
                    assert_eq!(bound, [Some((1, 0)), Some((1, 1)), Some((1, 2))], "{name}");
                    // 128 R2Ts, one write done; the parked write done once unparked.
                    let r2ts = events[1].iter().filter(|e| matches!(e, Event::R2t { .. })).count();
                    assert_eq!((r2ts, answered(1)), (128, 2), "{name}: {:?}", events[1]);
                    assert_eq!(answered(2), 2, "{name}: {:?}", events[2]);
                    assert!(failed(&events[1]).is_empty() && failed(&events[2]).is_empty(), "{name}");
                }
                "raw-connect" | "raw-property-get" | "raw-discovery" => {
                    assert_eq!(bound, [Some((1, 0))], "{name}");
                    assert!(failed(&events[0]).is_empty(), "{name}: {:?}", events[0]);
                }
                _ => {
                    assert_eq!(bound, [Some((1, 0)), Some((1, 1))], "{name}");
                    // The AER is held; the rest succeed.
                    let admin = 1 + admin_session().len() - 1 + (name == "script-session") as usize;
                    assert_eq!(answered(0), admin, "{name}: {:?}", events[0]);
                    assert!(failed(&events[0]).is_empty(), "{name}: {:?}", events[0]);
                    // Only the unknown opcode fails (Invalid Command Opcode), and Compare
                    // where the backend has none.
                    let io = 1 + io_session().len() + 1;
                    assert_eq!(answered(1), io, "{name}: {:?}", events[1]);
                    let mut want = vec![(26, 0x01)];
                    if !backing.info.compare {
                        want.insert(0, (22, 0x01));
                    }
                    assert_eq!(failed(&events[1]), want, "{name}: {:?}", events[1]);
                }
            }
            for c in &closed {
                if name == "script-session" && c.bound == Some((1, 0)) {
                    // It ends with an H2CTermReq.
                    assert!(matches!(c.end, End::Gone(_)), "{c:?}");
                    continue;
                }
                assert!(c.terminated.is_none(), "{name}: {c:?}");
            }
            assert_eq!(
                t.subsystems[1].controllers(),
                0,
                "{name}: the controller outlived its admin queue"
            );
        }
    }
}
