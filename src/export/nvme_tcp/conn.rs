//! One NVMe/TCP connection (one queue of one controller): receiving PDUs straight into
//! their destinations, running commands on the poll group's backend queues, and sending
//! responses with vectored writes.
//!
//! # Zero copy
//!
//! A Write's data — in-capsule or in H2CData PDUs — is read from the socket straight
//! into the DMA buffer the backend then writes; a Read's C2HData payload is written to
//! the socket straight from the DMA buffer the backend filled, in one vectored write
//! with its header and the response. Only headers (at most 132 bytes per PDU) pass
//! through a staging array. Data digests are computed over the DMA buffer in place.
//!
//! # Bounds
//!
//! A connection holds at most its queue's entries of commands (SQSIZE + 1 from
//! Connect; a host that sends more is terminated), each with at most one buffer from
//! the poll group's pool; a command that finds the pool empty parks the connection (no
//! more reads from its socket) until a buffer returns. Admin data is at most
//! [`ADMIN_DATA`] bytes.

use super::ctrl::{self, Binding, Reply, Target};
use super::pdu::{self, CommonHeader, DataHeader, Digests, IcReq, OutHeader, PduError, PduLayout, fes, pdu_type};
use super::{Backends, Stats, TAG_SLOT_BITS};
use ironvme_nvme::block::Op;
use ironvme_nvme::cmd::{Command, nvm as io};
use ironvme_nvme::completion::Completion;
use ironvme_nvme::hw::DmaBuf;
use ironvme_nvme::parse::{le16, le32, le64};
use ironvme_nvme::sgl::SglDescriptor;
use ironvme_nvme::status::Status;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// The most data an admin or Fabrics command carries to the target (Connect's 1024 B).
pub const ADMIN_DATA: usize = 8192;
/// MAXH2CDATA: the most data per H2CData PDU, bytes.
pub const MAXH2CDATA: u32 = 128 * 1024;
/// SGL descriptor identifier of in-capsule data: Data Block, Offset subtype.
const SGL_INCAPSULE: u8 = 0x01;
/// SGL descriptor identifier of data moved by R2T/H2CData or C2HData: Transport SGL
/// Data Block, transport-specific subtype.
const SGL_TRANSPORT: u8 = 0x5A;
/// Transient Transport Error (generic status 22h): what a command whose data failed its
/// digest completes with; the host may retry it.
const TRANSIENT_TRANSPORT_ERROR: Status = Status::new(0, 0x22);

/// Where a PDU's data goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// Into the command slot's DMA buffer at this offset.
    Slot { slot: u16, at: usize },
    /// Into the admin data array; then run this command.
    Admin(Command),
    /// Read and dropped (data of a command refused before its data arrived).
    Discard,
}

#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Reading the 8-byte common header.
    Ch,
    /// Reading the rest of the header (and its digest) up to `layout.header`.
    Header(CommonHeader, PduLayout),
    /// Reading padding, then data.
    Pad {
        left: usize,
        dest: Dest,
        data: usize,
        ddgst: bool,
    },
    /// Reading `left` more bytes of data into `dest`, `done` already.
    Data {
        dest: Dest,
        done: usize,
        len: usize,
        ddgst: bool,
    },
    /// Reading the 4-byte data digest.
    Ddgst { dest: Dest, len: usize, have: usize },
    /// A command waits for a buffer from the pool: nothing more is read.
    Parked(Command, PduLayout),
    /// A termination PDU was queued: nothing more is read.
    Closing,
}

#[derive(Debug)]
enum SlotState {
    Free,
    /// Waiting for data from the host (in-capsule or H2CData).
    Receiving,
    /// Operations on the backend.
    Backend,
}

/// A command in flight on an I/O queue.
#[derive(Debug)]
struct Slot {
    state: SlotState,
    cmd: Command,
    /// The namespace's index in the poll group's backends.
    ns: usize,
    buf: Option<DmaBuf>,
    /// Bytes of data the command moves.
    len: usize,
    /// Bytes received so far.
    got: usize,
    /// Backend operations still outstanding.
    ops: u16,
    /// A FUA write: Flush once the write completes, before answering (backends may
    /// ignore FUA, as QEMU's controller does).
    then_flush: bool,
    status: Status,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            state: SlotState::Free,
            cmd: Command::default(),
            ns: 0,
            buf: None,
            len: 0,
            got: 0,
            ops: 0,
            then_flush: false,
            status: Status::SUCCESS,
        }
    }
}

enum Head {
    Small(OutHeader),
    Bytes(Vec<u8>),
}

enum Payload {
    None,
    /// A backend buffer going back to namespace `ns`'s pool once sent.
    Dma(DmaBuf, usize),
    Bytes(Vec<u8>),
}

/// One PDU (or a data PDU and its response) waiting to be sent.
struct Out {
    head: Head,
    data: Payload,
    ddgst: Option<[u8; 4]>,
    tail: Option<OutHeader>,
}

impl Out {
    fn parts(&self) -> [&[u8]; 4] {
        let head = match &self.head {
            Head::Small(h) => h.as_bytes(),
            Head::Bytes(b) => b,
        };
        let data: &[u8] = match &self.data {
            Payload::None => &[],
            Payload::Dma(b, _) => b.as_slice(),
            Payload::Bytes(b) => b,
        };
        let dg: &[u8] = self.ddgst.as_ref().map_or(&[], |d| d);
        let tail = self.tail.as_ref().map_or(&[][..], |t| t.as_bytes());
        [head, data, dg, tail]
    }

    fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }
}

/// Why a connection ends.
#[derive(Debug)]
pub enum End {
    /// The peer closed it, or a socket error.
    Gone(std::io::Error),
    /// A protocol error: a termination PDU was sent.
    Terminated(PduError),
    /// The association ended (admin queue gone, KATO expired).
    Dead,
}

/// A connection.
pub struct Conn {
    pub(super) sock: TcpStream,
    pub(super) peer: SocketAddr,
    /// This connection's slab index and generation, for backend tags.
    tag_base: u64,
    ready: bool,
    digests: Digests,
    pub(super) binding: Option<Binding>,
    rx: Rx,
    hdr: [u8; pdu::MAX_HEADER],
    hdr_have: usize,
    admin_data: Vec<u8>,
    tx: VecDeque<Out>,
    tx_off: usize,
    slots: Vec<Slot>,
    busy: usize,
    held_aers: u8,
    sq_received: u32,
    /// Set once the socket said WouldBlock on read: no more input until the next event.
    pub(super) drained: bool,
    pub(super) ended: Option<End>,
    /// The protocol error a termination PDU was sent for.
    pub(super) terminated: Option<PduError>,
}

impl Conn {
    /// A new connection; `tag_base` identifies it in backend tags.
    pub fn new(sock: TcpStream, peer: SocketAddr, tag_base: u64) -> Conn {
        Conn {
            sock,
            peer,
            tag_base,
            ready: false,
            digests: Digests::default(),
            binding: None,
            rx: Rx::Ch,
            hdr: [0; pdu::MAX_HEADER],
            hdr_have: 0,
            admin_data: Vec::new(),
            tx: VecDeque::new(),
            tx_off: 0,
            slots: Vec::new(),
            busy: 0,
            held_aers: 0,
            sq_received: 0,
            drained: false,
            ended: None,
            terminated: None,
        }
    }

    /// Whether the connection has commands on the backend or output to send.
    pub fn active(&self) -> bool {
        !self.tx.is_empty() || self.slots.iter().any(|s| matches!(s.state, SlotState::Backend))
    }

    /// Whether it waits for a pool buffer.
    pub fn parked(&self) -> bool {
        matches!(self.rx, Rx::Parked(..))
    }

    fn qid(&self) -> u16 {
        self.binding.as_ref().map_or(0, |b| b.qid)
    }

    fn max_data(&self) -> u32 {
        match &self.binding {
            Some(b) if b.qid > 0 => MAXH2CDATA.max(ctrl::INLINE_DATA),
            _ => ADMIN_DATA as u32,
        }
    }

    /// Reads and handles as much input as the socket has (until it would block, the
    /// connection parks, or it ends).
    pub fn on_readable(&mut self, target: &Target, backends: &mut Backends, stats: &Stats) {
        while self.ended.is_none() && !self.drained {
            if let Rx::Parked(cmd, layout) = self.rx {
                if !self.capsule(cmd, layout, target, backends, stats) {
                    return;
                }
                continue;
            }
            if matches!(self.rx, Rx::Closing) {
                return;
            }
            if let Err(e) = self.step(target, backends, stats) {
                self.terminate(e);
            }
        }
    }

    /// Reads into `buf`; Ok(0) means would block (and sets `drained`).
    fn read_into(sock: &mut TcpStream, drained: &mut bool, ended: &mut Option<End>, buf: &mut [u8]) -> usize {
        loop {
            match sock.read(buf) {
                Ok(0) => {
                    *ended = Some(End::Gone(ErrorKind::UnexpectedEof.into()));
                    return 0;
                }
                Ok(n) => return n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    *drained = true;
                    return 0;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    *ended = Some(End::Gone(e));
                    return 0;
                }
            }
        }
    }

    /// One step of the receive state machine.
    fn step(&mut self, target: &Target, backends: &mut Backends, stats: &Stats) -> Result<(), PduError> {
        match self.rx {
            Rx::Ch => {
                let n = Self::read_into(
                    &mut self.sock,
                    &mut self.drained,
                    &mut self.ended,
                    &mut self.hdr[self.hdr_have..pdu::CH_LEN],
                );
                self.hdr_have += n;
                if self.hdr_have < pdu::CH_LEN {
                    return Ok(());
                }
                let ch = CommonHeader::parse(self.hdr[..pdu::CH_LEN].try_into().unwrap_or(&[0; 8]));
                if !self.ready && ch.pdu_type != pdu_type::IC_REQ {
                    return Err(PduError {
                        fes: fes::PDU_SEQUENCE_ERROR,
                        offset: 0,
                        what: "a PDU before ICReq",
                    });
                }
                if self.ready && ch.pdu_type == pdu_type::IC_REQ {
                    return Err(PduError {
                        fes: fes::PDU_SEQUENCE_ERROR,
                        offset: 0,
                        what: "a second ICReq",
                    });
                }
                let layout = ch.check(self.digests.hdgst, self.digests.ddgst, self.max_data())?;
                self.rx = Rx::Header(ch, layout);
            }
            Rx::Header(ch, layout) => {
                let n = Self::read_into(
                    &mut self.sock,
                    &mut self.drained,
                    &mut self.ended,
                    &mut self.hdr[self.hdr_have..layout.header],
                );
                self.hdr_have += n;
                if self.hdr_have < layout.header {
                    return Ok(());
                }
                self.hdr_have = 0;
                self.header(ch, layout, target, backends, stats)?;
            }
            Rx::Pad {
                left,
                dest,
                data,
                ddgst,
            } => {
                let mut sink = [0u8; 256];
                let want = left.min(sink.len());
                let n = Self::read_into(&mut self.sock, &mut self.drained, &mut self.ended, &mut sink[..want]);
                self.rx = if n == left {
                    if data == 0 {
                        Rx::Ch
                    } else {
                        Rx::Data {
                            dest,
                            done: 0,
                            len: data,
                            ddgst,
                        }
                    }
                } else {
                    Rx::Pad {
                        left: left - n,
                        dest,
                        data,
                        ddgst,
                    }
                };
            }
            Rx::Data { dest, done, len, ddgst } => {
                let n = match dest {
                    Dest::Slot { slot, at } => {
                        let Some(buf) = self.slots[slot as usize].buf.as_mut() else {
                            return Err(seq_error("data for a command without a buffer"));
                        };
                        let b = &mut buf.as_mut_slice()[at + done..at + len];
                        Self::read_into(&mut self.sock, &mut self.drained, &mut self.ended, b)
                    }
                    Dest::Admin(_) => {
                        let b = &mut self.admin_data[done..len];
                        Self::read_into(&mut self.sock, &mut self.drained, &mut self.ended, b)
                    }
                    Dest::Discard => {
                        let mut sink = [0u8; 4096];
                        let want = (len - done).min(sink.len());
                        Self::read_into(&mut self.sock, &mut self.drained, &mut self.ended, &mut sink[..want])
                    }
                };
                let done = done + n;
                self.rx = if done < len {
                    Rx::Data { dest, done, len, ddgst }
                } else if ddgst {
                    Rx::Ddgst { dest, len, have: 0 }
                } else {
                    self.rx = Rx::Ch;
                    self.data_done(dest, len, target, backends, stats);
                    return Ok(());
                };
            }
            Rx::Ddgst { dest, len, have } => {
                let n = Self::read_into(
                    &mut self.sock,
                    &mut self.drained,
                    &mut self.ended,
                    &mut self.hdr[have..pdu::DIGEST_LEN],
                );
                let have = have + n;
                if have < pdu::DIGEST_LEN {
                    self.rx = Rx::Ddgst { dest, len, have };
                    return Ok(());
                }
                let got = le32(&self.hdr, 0);
                let want = match dest {
                    Dest::Slot { slot, at } => self.slots[slot as usize]
                        .buf
                        .as_ref()
                        .map(|b| pdu::digest(&b.as_slice()[at..at + len])),
                    Dest::Admin(_) => Some(pdu::digest(&self.admin_data[..len])),
                    Dest::Discard => Some(got),
                };
                self.rx = Rx::Ch;
                if want != Some(got) {
                    // A data digest error fails the command with Transient Transport Error
                    // (NVMe/TCP 1.0, 7.4.6.2), not the connection: the header was good, so
                    // the stream is still in step.
                    tracing::warn!(peer = %self.peer, "data digest mismatch: failing the command");
                    match dest {
                        Dest::Slot { slot, .. } => {
                            let s = &mut self.slots[slot as usize];
                            if s.status == Status::SUCCESS {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                                s.status = TRANSIENT_TRANSPORT_ERROR;
                            }
                        }
                        Dest::Admin(cmd) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            self.respond(&cmd, Reply::status(TRANSIENT_TRANSPORT_ERROR));
                            return Ok(());
                        }
                        Dest::Discard => {}
                    }
                }
                self.data_done(dest, len, target, backends, stats);
            }
            Rx::Parked(..) | Rx::Closing => {}
        }
        Ok(())
    }

    /// A whole header has arrived.
    fn header(
        &mut self,
        ch: CommonHeader,
        layout: PduLayout,
        target: &Target,
        backends: &mut Backends,
        stats: &Stats,
    ) -> Result<(), PduError> {
        let hlen = ch.hlen as usize;
        if layout.header > hlen {
            let want = le32(&self.hdr, hlen);
            if pdu::digest(&self.hdr[..hlen]) != want {
                return Err(PduError {
                    fes: fes::HEADER_DIGEST_ERROR,
                    offset: 0,
                    what: "header digest mismatch",
                });
            }
        }
        match ch.pdu_type {
            pdu_type::IC_REQ => {
                let req = IcReq::parse(&self.hdr[..pdu::IC_LEN])?;
                self.digests = Digests {
                    hdgst: req.hdgst,
                    ddgst: req.ddgst,
                    hpda: req.hpda,
                };
                self.ready = true;
                self.rx = Rx::Ch;
                self.queue(Out {
                    head: Head::Bytes(pdu::ic_resp(req.hdgst, req.ddgst, MAXH2CDATA).to_vec()),
                    data: Payload::None,
                    ddgst: None,
                    tail: None,
                });
            }
            pdu_type::H2C_TERM_REQ => {
                let fes = le16(&self.hdr, 8);
                tracing::warn!(peer = %self.peer, fes, "the host terminated the connection (H2CTermReq)");
                self.ended = Some(End::Gone(std::io::Error::other(format!("H2CTermReq, FES {fes:#x}"))));
            }
            pdu_type::CAPSULE_CMD => {
                // Every capsule moves the SQ head (SQHD), whether the command runs or is
                // refused.
                self.sq_received = self.sq_received.wrapping_add(1);
                let sqe: &[u8; 64] = self.hdr[8..72].try_into().unwrap_or(&[0; 64]);
                let cmd = Command::from_bytes(sqe);
                self.capsule(cmd, layout, target, backends, stats);
            }
            pdu_type::H2C_DATA => self.h2c_data(layout)?,
            _ => return Err(seq_error("an unexpected PDU type")),
        }
        Ok(())
    }

    /// Starts reading a PDU's padding and data into `dest` (or goes back to headers).
    fn expect_data(&mut self, layout: PduLayout, dest: Dest) {
        self.rx = if layout.pad > 0 {
            Rx::Pad {
                left: layout.pad,
                dest,
                data: layout.data,
                ddgst: layout.ddgst,
            }
        } else if layout.data > 0 {
            Rx::Data {
                dest,
                done: 0,
                len: layout.data,
                ddgst: layout.ddgst,
            }
        } else {
            Rx::Ch
        };
    }

    /// A command capsule. Returns false if it parked (no buffer).
    fn capsule(
        &mut self,
        cmd: Command,
        layout: PduLayout,
        target: &Target,
        backends: &mut Backends,
        stats: &Stats,
    ) -> bool {
        let sgl = SglDescriptor::from_dptr(cmd.dptr);
        let inline = layout.data;
        if inline > 0 && (sgl.id != SGL_INCAPSULE || sgl.len as usize != inline || sgl.addr != 0) {
            // In-capsule data must be described by an offset-0 Data Block descriptor.
            self.respond(&cmd, Reply::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr(true)));
            self.expect_data(layout, Dest::Discard);
            return true;
        }
        let admin = self.binding.as_ref().is_none_or(|b| b.qid == 0) || cmd.opcode() == ctrl::FABRICS_OPCODE;
        if admin {
            if inline > ADMIN_DATA {
                self.respond(&cmd, Reply::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr(true)));
                self.expect_data(layout, Dest::Discard);
                return true;
            }
            self.admin_data.clear();
            self.admin_data.resize(inline, 0);
            if inline > 0 {
                self.expect_data(layout, Dest::Admin(cmd));
            } else {
                self.rx = Rx::Ch;
                self.run_admin(cmd, target);
            }
            return true;
        }
        // An I/O command: a slot, and a buffer if it moves data.
        if self.busy >= self.slots.len() {
            self.terminate(seq_error("more commands outstanding than the queue has entries"));
            return true;
        }
        let (ns, len) = match io_check(&cmd, target, self.binding.as_ref(), backends) {
            Ok(v) => v,
            Err(status) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                self.respond(&cmd, Reply::status(status));
                self.expect_data(layout, Dest::Discard);
                return true;
            }
        };
        let host_data = matches!(cmd.opcode(), io::WRITE | io::COMPARE | io::DATASET_MANAGEMENT);
        if inline > 0 && !host_data {
            self.respond(&cmd, Reply::status(Status::INVALID_FIELD.with_dnr(true)));
            self.expect_data(layout, Dest::Discard);
            return true;
        }
        if len > 0 && inline == 0 && sgl.id != SGL_TRANSPORT {
            self.respond(&cmd, Reply::status(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(true)));
            self.expect_data(layout, Dest::Discard);
            return true;
        }
        if len > 0 && sgl.len as usize != len {
            self.respond(&cmd, Reply::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr(true)));
            self.expect_data(layout, Dest::Discard);
            return true;
        }
        let buf = if len > 0 {
            let Some(mut buf) = backends.take_buffer(ns) else {
                self.rx = Rx::Parked(cmd, layout);
                return false;
            };
            if buf.set_window(0, len).is_err() {
                backends.give_buffer(ns, buf);
                self.respond(&cmd, Reply::status(Status::INVALID_FIELD.with_dnr(true)));
                self.expect_data(layout, Dest::Discard);
                return true;
            }
            Some(buf)
        } else {
            None
        };
        let Some(slot) = self.slots.iter().position(|s| matches!(s.state, SlotState::Free)) else {
            if let Some(b) = buf {
                backends.give_buffer(ns, b);
            }
            self.terminate(seq_error("no free command slot"));
            return true;
        };
        self.busy += 1;
        self.slots[slot] = Slot {
            state: SlotState::Receiving,
            cmd,
            ns,
            buf,
            len,
            got: 0,
            ops: 0,
            then_flush: false,
            status: Status::SUCCESS,
        };
        let slot = slot as u16;
        if host_data && len > 0 {
            if inline > 0 {
                self.expect_data(layout, Dest::Slot { slot, at: 0 });
            } else {
                // Ask for all of it; the host splits it into H2CData PDUs of at most
                // MAXH2CDATA bytes. TTAG is the slot.
                self.rx = Rx::Ch;
                let r2t = self.digests.r2t(cmd.cid(), slot, 0, len as u32);
                self.queue(Out {
                    head: Head::Small(r2t),
                    data: Payload::None,
                    ddgst: None,
                    tail: None,
                });
            }
        } else {
            self.rx = Rx::Ch;
            self.submit(slot, backends);
        }
        true
    }

    /// An H2CData header: find its command and read the data into its buffer.
    fn h2c_data(&mut self, layout: PduLayout) -> Result<(), PduError> {
        let h = DataHeader::parse(&self.hdr);
        let out_of_range = |what| PduError {
            fes: fes::DATA_OUT_OF_RANGE,
            offset: 0,
            what,
        };
        let slot = self
            .slots
            .get(h.ttag as usize)
            .filter(|s| matches!(s.state, SlotState::Receiving) && s.cmd.cid() == h.cccid)
            .ok_or(PduError {
                fes: fes::INVALID_HEADER_FIELD,
                offset: 10,
                what: "H2CData for no command waiting for data (TTAG or CCCID)",
            })?;
        if h.datal as usize != layout.data {
            return Err(PduError {
                fes: fes::INVALID_HEADER_FIELD,
                offset: 16,
                what: "DATAL differs from the PDU's data length",
            });
        }
        if h.datao as usize != slot.got {
            return Err(out_of_range("DATAO is not where the previous H2CData ended"));
        }
        if slot.got + layout.data > slot.len {
            return Err(out_of_range("H2CData past the command's transfer length"));
        }
        let at = slot.got;
        self.expect_data(layout, Dest::Slot { slot: h.ttag, at });
        Ok(())
    }

    /// A PDU's data has all arrived (and its digest matched).
    fn data_done(&mut self, dest: Dest, len: usize, target: &Target, backends: &mut Backends, _stats: &Stats) {
        match dest {
            Dest::Admin(cmd) => self.run_admin(cmd, target),
            Dest::Slot { slot, .. } => {
                let s = &mut self.slots[slot as usize];
                s.got += len;
                if s.got == s.len {
                    // A command whose data failed its digest fails without running.
                    if s.status == Status::SUCCESS {
                        self.submit(slot, backends);
                    } else {
                        self.finish(slot, backends);
                    }
                }
            }
            Dest::Discard => {}
        }
    }

    /// An admin or Fabrics command with its data in `admin_data`.
    fn run_admin(&mut self, cmd: Command, target: &Target) {
        let is_fabrics = cmd.opcode() == ctrl::FABRICS_OPCODE;
        let fct = cmd.nsid as u8;
        let reply = match (&self.binding, is_fabrics) {
            (None, true) if fct == ctrl::fctype::CONNECT => match ctrl::connect(target, &cmd, &self.admin_data) {
                Ok(binding) => {
                    tracing::info!(
                        peer = %self.peer,
                        subsystem = %binding.ctrl.subsystem.nqn,
                        host = %binding.ctrl.hostnqn,
                        cntlid = binding.ctrl.cntlid,
                        qid = binding.qid,
                        entries = binding.entries,
                        "connected"
                    );
                    let dw0 = binding.ctrl.cntlid as u32;
                    if binding.qid > 0 {
                        self.slots = (0..binding.entries).map(|_| Slot::free()).collect();
                    }
                    self.binding = Some(binding);
                    Reply {
                        dw0,
                        ..Default::default()
                    }
                }
                Err(reply) => {
                    let data = &self.admin_data;
                    let nqn = |r: std::ops::Range<usize>| {
                        data.get(r)
                            .map(|b| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(b)).into_owned())
                            .unwrap_or_default()
                    };
                    tracing::warn!(
                        peer = %self.peer,
                        subsystem = %nqn(256..512),
                        host = %nqn(512..768),
                        status = %reply.status,
                        "Connect refused"
                    );
                    reply
                }
            },
            (None, _) => Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr(true)),
            (Some(_), true) if fct == ctrl::fctype::CONNECT => {
                Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr(true))
            }
            (Some(b), true) if b.qid == 0 && matches!(fct, ctrl::fctype::PROPERTY_GET | ctrl::fctype::PROPERTY_SET) => {
                b.ctrl.touch();
                ctrl::property(&b.ctrl, &cmd)
            }
            (Some(_), true) => Reply::status(Status::INVALID_FIELD.with_dnr(true)),
            (Some(b), false) => {
                let r = ctrl::admin(target, &b.ctrl, &cmd);
                if r.hold {
                    if self.held_aers >= ctrl::AER_LIMIT {
                        Reply::status(Status::AER_LIMIT_EXCEEDED.with_dnr(true))
                    } else {
                        self.held_aers += 1;
                        return;
                    }
                } else {
                    r
                }
            }
        };
        let sgl = SglDescriptor::from_dptr(cmd.dptr);
        let mut reply = reply;
        if !reply.data.is_empty() {
            if sgl.id != SGL_TRANSPORT {
                reply = Reply::status(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(true));
            } else {
                reply.data.truncate(sgl.len as usize);
            }
        }
        self.respond(&cmd, reply);
    }

    /// Queues the response to `cmd` (with its data, if any).
    fn respond(&mut self, cmd: &Command, reply: Reply) {
        let cqe = self.cqe(cmd.cid(), reply.status, reply.dw0, reply.dw1);
        let resp = self.digests.capsule_resp(&cqe);
        if reply.data.is_empty() {
            self.queue(Out {
                head: Head::Small(resp),
                data: Payload::None,
                ddgst: None,
                tail: None,
            });
            return;
        }
        let len = reply.data.len() as u32;
        let head = self.digests.c2h_data(cmd.cid(), 0, len, true, false);
        let ddgst = self.digests.ddgst.then(|| pdu::digest(&reply.data).to_le_bytes());
        self.queue(Out {
            head: Head::Small(head),
            data: Payload::Bytes(reply.data),
            ddgst,
            tail: Some(resp),
        });
    }

    fn cqe(&self, cid: u16, status: Status, dw0: u32, dw1: u32) -> [u8; 16] {
        let sqflow_off = self.binding.as_ref().is_some_and(|b| b.sqflow_disabled);
        let entries = self.binding.as_ref().map_or(ctrl::ADMIN_QUEUE_ENTRIES, |b| b.entries) as u32;
        let sqhd = if sqflow_off {
            0
        } else {
            (self.sq_received % entries.max(1)) as u16
        };
        let mut c = Completion::new(cid, self.qid(), sqhd, status, false, dw0);
        c.dw1 = dw1;
        c.to_bytes()
    }

    /// Submits a slot's operations to its namespace's backend queue: one operation, or
    /// one Deallocate per Dataset Management range. No allocation.
    fn submit(&mut self, slot: u16, backends: &mut Backends) {
        let tag = self.tag_base | slot as u64;
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Backend;
        let cmd = s.cmd;
        let ns = s.ns;
        let slba = cmd.cdw10 as u64 | (cmd.cdw11 as u64) << 32;
        let nlb = (cmd.cdw12 & 0xFFFF) + 1;
        let op = match cmd.opcode() {
            io::READ => Op::Read { lba: slba },
            io::WRITE => {
                s.then_flush = cmd.cdw12 & 1 << 30 != 0;
                Op::Write { lba: slba, fua: false }
            }
            io::COMPARE => Op::Compare { lba: slba },
            io::FLUSH => Op::Flush,
            io::WRITE_ZEROES => Op::WriteZeroes {
                lba: slba,
                blocks: nlb,
                deallocate: cmd.cdw12 & 1 << 25 != 0,
            },
            io::DATASET_MANAGEMENT => {
                let Some(buf) = s.buf.take() else {
                    self.finish(slot, backends);
                    return;
                };
                // Deallocate is advisory: without AD, or on a backend that cannot, it
                // succeeds doing nothing.
                if cmd.cdw11 & 1 << 2 != 0 && backends.info(ns).deallocate {
                    let ranges = buf.as_slice()[..s.len].chunks_exact(16).filter_map(dsm_range);
                    let blocks = backends.info(ns).blocks;
                    let past_end = |op: Op| match op {
                        Op::Deallocate { lba, blocks: n } => lba.checked_add(n as u64).is_none_or(|e| e > blocks),
                        _ => false,
                    };
                    if ranges.clone().any(past_end) {
                        // No range is deallocated when one is out of range.
                        s.status = Status::LBA_OUT_OF_RANGE.with_dnr(true);
                    } else {
                        s.ops = ranges.clone().count() as u16;
                        for op in ranges {
                            backends.submit(ns, op, None, tag);
                        }
                    }
                }
                backends.give_buffer(ns, buf);
                if self.slots[slot as usize].ops == 0 {
                    self.finish(slot, backends);
                }
                return;
            }
            _ => {
                self.finish(slot, backends);
                return;
            }
        };
        s.ops = 1;
        let buf = if op.needs_buffer() { s.buf.take() } else { None };
        backends.submit(ns, op, buf, tag);
    }

    /// A backend operation of `slot` completed.
    pub fn on_complete(
        &mut self,
        ns: usize,
        slot: u16,
        c: ironvme_nvme::block::Completion,
        backends: &mut Backends,
        stats: &Stats,
    ) {
        let Some(s) = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| matches!(s.state, SlotState::Backend))
        else {
            if let Some(buf) = c.buf {
                backends.give_buffer(ns, buf);
            }
            return;
        };
        if let Some(buf) = c.buf {
            s.buf = Some(buf);
        }
        if let Err(e) = c.result {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if s.status == Status::SUCCESS {
                s.status = match e {
                    ironvme_nvme::block::IoStatus::Nvme(st) => st,
                    ironvme_nvme::block::IoStatus::Os(_) => Status::INTERNAL_ERROR,
                };
            }
        }
        s.ops = s.ops.saturating_sub(1);
        if s.ops == 0 && s.then_flush && s.status == Status::SUCCESS {
            s.then_flush = false;
            s.ops = 1;
            // The write's buffer is done with: back to the pool now, so a connection that
            // ends while the Flush runs has nothing to give back.
            if let Some(buf) = s.buf.take() {
                backends.give_buffer(ns, buf);
            }
            backends.submit(ns, Op::Flush, None, self.tag_base | slot as u64);
        } else if s.ops == 0 {
            self.finish(slot, backends);
        }
    }

    /// Sends a slot's result (and a Read's data) and frees the slot.
    fn finish(&mut self, slot: u16, backends: &mut Backends) {
        let s = std::mem::replace(&mut self.slots[slot as usize], Slot::free());
        self.busy -= 1;
        let cid = s.cmd.cid();
        let is_read = s.cmd.opcode() == io::READ;
        let ok = s.status == Status::SUCCESS;
        if self.terminated.is_some() {
            // Nothing follows a C2HTermReq: the result is dropped, the buffer returned.
            if let Some(buf) = s.buf {
                backends.give_buffer(s.ns, buf);
            }
            return;
        }
        let cqe = self.cqe(cid, s.status, 0, 0);
        match s.buf {
            Some(buf) if is_read && ok => {
                let sqflow_off = self.binding.as_ref().is_some_and(|b| b.sqflow_disabled);
                let head = self.digests.c2h_data(cid, 0, s.len as u32, true, sqflow_off);
                let ddgst = self.digests.ddgst.then(|| pdu::digest(buf.as_slice()).to_le_bytes());
                let tail = (!sqflow_off).then(|| self.digests.capsule_resp(&cqe));
                self.queue(Out {
                    head: Head::Small(head),
                    data: Payload::Dma(buf, s.ns),
                    ddgst,
                    tail,
                });
            }
            other => {
                if let Some(buf) = other {
                    backends.give_buffer(s.ns, buf);
                }
                let resp = self.digests.capsule_resp(&cqe);
                self.queue(Out {
                    head: Head::Small(resp),
                    data: Payload::None,
                    ddgst: None,
                    tail: None,
                });
            }
        }
    }

    /// Queues a PDU to send; nothing is queued after the C2HTermReq ([`Conn::terminate`]
    /// queues it last), as NVMe/TCP 1.0, 3.6.2.9 ends the connection with it.
    fn queue(&mut self, out: Out) {
        if self.terminated.is_some() {
            debug_assert!(!matches!(out.data, Payload::Dma(..)), "finish returns buffers first");
            return;
        }
        self.tx.push_back(out);
    }

    /// Sends what the socket takes; returns sent buffers to the pools.
    pub fn flush(&mut self, backends: &mut Backends) {
        while !self.tx.is_empty() && !matches!(self.ended, Some(End::Gone(_))) {
            let mut slices: [IoSlice<'_>; 32] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut n = 0;
            let mut skip = self.tx_off;
            'gather: for out in &self.tx {
                for part in out.parts() {
                    if part.is_empty() {
                        continue;
                    }
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                    if n == slices.len() {
                        break 'gather;
                    }
                }
            }
            let sent = match self.sock.write_vectored(&slices[..n]) {
                Ok(0) => {
                    self.ended = Some(End::Gone(ErrorKind::WriteZero.into()));
                    break;
                }
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.ended = Some(End::Gone(e));
                    break;
                }
            };
            self.tx_off += sent;
            while let Some(front) = self.tx.front() {
                let len = front.len();
                if self.tx_off < len {
                    break;
                }
                self.tx_off -= len;
                if let Some(Out {
                    data: Payload::Dma(buf, ns),
                    ..
                }) = self.tx.pop_front()
                {
                    backends.give_buffer(ns, buf);
                }
            }
        }
        if self.tx.is_empty() && matches!(self.rx, Rx::Closing) && self.ended.is_none() {
            self.ended = Some(End::Dead);
        }
    }

    /// Queues a C2HTermReq for `err` and stops reading; the connection ends once it is
    /// sent.
    pub fn terminate(&mut self, err: PduError) {
        tracing::warn!(peer = %self.peer, fes = err.fes, offset = err.offset, "terminating the connection: {}", err.what);
        let culprit = self.hdr[..pdu::CH_LEN].to_vec();
        self.queue(Out {
            head: Head::Bytes(pdu::c2h_term_req(err, &culprit)),
            data: Payload::None,
            ddgst: None,
            tail: None,
        });
        self.rx = Rx::Closing;
        self.terminated = Some(err);
    }

    /// Gives back every buffer the connection holds that is not on a backend (the
    /// connection is going away).
    pub fn release(&mut self, backends: &mut Backends) {
        // A buffer in a slot is the slot's, whatever its state: one on a backend is not
        // in the slot (it returns with its completion).
        for s in &mut self.slots {
            if let Some(buf) = s.buf.take() {
                backends.give_buffer(s.ns, buf);
            }
        }
        while let Some(out) = self.tx.pop_front() {
            if let Payload::Dma(buf, ns) = out.data {
                backends.give_buffer(ns, buf);
            }
        }
    }
}

fn seq_error(what: &'static str) -> PduError {
    PduError {
        fes: fes::PDU_SEQUENCE_ERROR,
        offset: 0,
        what,
    }
}

/// Checks an I/O command against its namespace; returns the namespace's backend index
/// and the bytes of data it moves.
fn io_check(
    cmd: &Command,
    target: &Target,
    binding: Option<&Binding>,
    backends: &Backends,
) -> Result<(usize, usize), Status> {
    let dnr = |s: Status| s.with_dnr(true);
    let Some(b) = binding else {
        return Err(dnr(Status::COMMAND_SEQUENCE_ERROR));
    };
    let _ = target;
    let sub = &b.ctrl.subsystem;
    let ns = sub
        .namespaces
        .get((cmd.nsid as usize).wrapping_sub(1))
        .ok_or(dnr(Status::INVALID_NAMESPACE_OR_FORMAT))?;
    let info = backends.info(ns.index);
    let bs = info.block_size as u64;
    let slba = cmd.cdw10 as u64 | (cmd.cdw11 as u64) << 32;
    let nlb = (cmd.cdw12 & 0xFFFF) as u64 + 1;
    let in_range = || slba.checked_add(nlb).is_some_and(|end| end <= info.blocks);
    let len = match cmd.opcode() {
        io::READ | io::WRITE | io::COMPARE => {
            if cmd.opcode() == io::COMPARE && !info.compare {
                return Err(dnr(Status::INVALID_OPCODE));
            }
            if !in_range() {
                return Err(dnr(Status::LBA_OUT_OF_RANGE));
            }
            let len = nlb * bs;
            if len > sub.max_transfer as u64 {
                return Err(dnr(Status::INVALID_FIELD));
            }
            len as usize
        }
        io::WRITE_ZEROES => {
            if !info.write_zeroes {
                return Err(dnr(Status::INVALID_OPCODE));
            }
            if !in_range() {
                return Err(dnr(Status::LBA_OUT_OF_RANGE));
            }
            0
        }
        io::FLUSH => 0,
        io::DATASET_MANAGEMENT => ((cmd.cdw10 & 0xFF) as usize + 1) * 16,
        _ => return Err(dnr(Status::INVALID_OPCODE)),
    };
    Ok((ns.index, len))
}

/// One Dataset Management range (NVMe Base 2.0 figure 390, 16 bytes: context
/// attributes, NLB, SLBA) as a Deallocate; `None` for a range of zero blocks.
fn dsm_range(r: &[u8]) -> Option<Op> {
    let nlb = le32(r, 4);
    let slba = le64(r, 8);
    (nlb > 0).then_some(Op::Deallocate { lba: slba, blocks: nlb })
}

/// The slot a backend tag names.
pub fn tag_slot(tag: u64) -> u16 {
    (tag & ((1 << TAG_SLOT_BITS) - 1)) as u16
}
