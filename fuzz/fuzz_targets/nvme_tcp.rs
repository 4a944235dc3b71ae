//! The NVMe/TCP target (`ironvme::export::nvme_tcp`) on hostile hosts: the PDU parsers
//! (`pdu`: common header checks, ICReq, H2CData headers, digests), the command handlers
//! (`ctrl`: Connect and its data, Property Get/Set, Identify, Get Log Page, Get/Set
//! Features, Keep Alive, AER, Abort, the discovery log), and whole sessions of up to four
//! connections run by the real connection state machine (`conn::Conn`) and the poll
//! group's loop over a 1 MiB file-backed namespace, through
//! `ironvme::export::nvme_tcp::fuzzing` (its docs say how: a Unix socket pair stands in
//! for each TCP connection).
//!
//! # Input
//!
//! Byte 0: bits 1:0 the mode, bits 4:2 how the host's bytes arrive — all at once, or in
//! pieces of 1, 2, 5, 8, 24, 72 or 1000 bytes with a turn of the loop between (so headers
//! and data arrive split).
//!
//! - mode 0, **raw**: the rest is what the host sends; `~conn` and a byte n start a
//!   segment for connection n modulo 4, sent once the target has gone idle.
//! - modes 1 and 3, **scripted**: the rest is `fuzzing::Step`s — open a connection with
//!   an ICReq, Connect with its 1024-byte data, any 64-byte SQE with in-capsule data,
//!   H2CData, H2CTermReq, raw bytes — framed with right lengths and digests, so the
//!   fuzzer's bytes go to fields that matter: Connect, CC.EN, I/O queues, R2T.
//! - mode 2, **handlers**: the rest is records of a u16 data length, a 64-byte SQE and
//!   the data, fed to `ctrl::connect`, `ctrl::property` and `ctrl::admin` directly as the
//!   connection dispatches them (the first admin Connect that succeeds binds the rest).
//!
//! Every input's first 32 offsets also go through the PDU parsers, and its bytes choose
//! PDUs for the target's own encoders (C2HData, R2T, CapsuleResp, C2HTermReq).
//!
//! # Oracles
//!
//! 1. Nothing panics, every session ends (`fuzzing::MAX_TURNS`), and every pool buffer
//!    is back at the end of it.
//! 2. `CommonHeader::check` is exact: a layout it accepts adds up to PLEN, carries no
//!    more data than allowed, and is for a type a host sends; `IcReq::parse` accepts only
//!    PFV 0 and HPDA ≤ 31, and refuses with FES 6 naming the field.
//! 3. What the target sends is what a strict host accepts (`fuzzing::Reader`): an
//!    ICResp (granting exactly the digests asked for) or a C2HTermReq first; then only
//!    controller PDU types with right HLEN, PDO (aligned to HPDA), PLEN and flags; both
//!    digests right; a CapsuleResp (success, same CID) right after a C2HData without
//!    SUCCESS; nothing after a C2HTermReq; and, unless the host hung up first, whole
//!    PDUs. The target's encoders produce PDUs this reader accepts.
//! 4. A connection that terminated sent a C2HTermReq with that FES and FEI (unless the
//!    host hung up first), and one that sent it had terminated.
//! 5. Scripted, without raw steps (whose bytes the harness does not parse): every
//!    response, C2HData or R2T names a CID the host sent on that connection and not yet
//!    answered; and the target never terminates for a malformed header or a digest (the
//!    framing is the harness's).
//! 6. Every controller dies with its admin queue: no subsystem keeps a controller after
//!    the session.
//! 7. Handlers: a Connect is accepted only as NVMe-oF 1.1 allows (RECFMT 0, 1024 bytes of
//!    data, a known subsystem and an allowed host, SQSIZE in range, CNTLID FFFFh for an
//!    admin queue, an enabled controller that granted the queue for an I/O queue) and
//!    binds what it asked for; Property Set of CC reads back, and CSTS.RDY follows
//!    CC.EN and SHST CC.SHN; Identify and Get Log Page return 4096 bytes and exactly the
//!    dwords asked for (at most 4 MiB); Identify Controller names its CNTLID, NN and NQN;
//!    the active NSID list ascends past CDW1.NSID; the discovery log counts one record
//!    per listener and allowed subsystem; Number of Queues reads back what was granted
//!    (at most 16); only AER is held; failures carry no data.

#![no_main]

use ironvme::export::Backing;
use ironvme::export::nvme_tcp::ctrl::{self, Binding, Reply, Target};
use ironvme::export::nvme_tcp::fuzzing::{
    self, Closed, Event, MAX_CONNS, Reader, Rig, Script, handler_records, mode, raw_segments,
};
use ironvme::export::nvme_tcp::{conn, pdu};
use ironvme_nvme::cmd::Command;
use ironvme_nvme::cmd::admin as op;
use ironvme_nvme::parse::{le16, le32};
use ironvme_nvme::status::Status;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

const DISK_BYTES: u64 = 1 << 20;
/// Bytes per write of the host, by bits 4:2 of byte 0 (0: all at once).
const CHUNKS: [usize; 8] = [0, 1, 2, 5, 8, 24, 72, 1000];

fn backing() -> &'static Arc<Backing> {
    static BACKING: OnceLock<Arc<Backing>> = OnceLock::new();
    BACKING.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ironvme-fuzz-nvme-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.img");
        std::fs::File::create(&file).unwrap().set_len(DISK_BYTES).unwrap();
        Arc::new(Backing::open(file.to_str().unwrap()).unwrap())
    })
}

thread_local! {
    /// The poll group's backends, made once (they allocate every pool buffer).
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

/// Oracle 2, and the encoders against the reader (oracle 3).
fn parsers(b: &[u8]) {
    for at in 0..b.len().min(32) {
        let b = &b[at..];
        if b.len() < pdu::CH_LEN {
            break;
        }
        let ch = pdu::CommonHeader::parse(b[..pdu::CH_LEN].try_into().unwrap());
        assert_eq!(ch.to_bytes()[..], b[..pdu::CH_LEN], "the common header re-encodes");
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            for max in [conn::ADMIN_DATA as u32, conn::MAXH2CDATA] {
                let Ok(l) = ch.check(hd, dd, max) else {
                    continue;
                };
                let hlen = match ch.pdu_type {
                    pdu::pdu_type::IC_REQ => pdu::IC_LEN,
                    pdu::pdu_type::CAPSULE_CMD => pdu::CMD_HLEN,
                    pdu::pdu_type::H2C_DATA | pdu::pdu_type::H2C_TERM_REQ => pdu::DATA_HLEN,
                    t => panic!("accepted PDU type {t:#x}"),
                };
                let digests = hd && matches!(ch.pdu_type, pdu::pdu_type::CAPSULE_CMD | pdu::pdu_type::H2C_DATA);
                assert_eq!(l.header, hlen + if digests { pdu::DIGEST_LEN } else { 0 }, "{ch:?}");
                let total = l.header + l.pad + l.data + if l.ddgst { pdu::DIGEST_LEN } else { 0 };
                assert_eq!(total, ch.plen as usize, "{ch:?} {l:?}");
                assert!(l.data <= max as usize, "{ch:?} {l:?}");
                assert!(!l.ddgst || (dd && l.data > 0), "{ch:?} {l:?}");
                if l.data > 0 {
                    assert_eq!(l.header + l.pad, ch.pdo as usize, "{ch:?} {l:?}");
                }
                if ch.pdu_type == pdu::pdu_type::IC_REQ {
                    assert_eq!(ch.plen as usize, pdu::IC_LEN);
                }
            }
        }
        if b.len() >= pdu::IC_LEN {
            match pdu::IcReq::parse(b) {
                Ok(r) => {
                    assert!(r.pfv == 0 && r.hpda <= 31 && r.hpda == b[10]);
                    assert_eq!(
                        (r.hdgst, r.ddgst, r.maxr2t),
                        (b[11] & 1 != 0, b[11] & 2 != 0, le32(b, 12))
                    );
                }
                Err(e) => assert!(
                    e.fes == pdu::fes::UNSUPPORTED_PARAMETER && matches!(e.offset, 8 | 10),
                    "{e}"
                ),
            }
        } else {
            assert!(pdu::IcReq::parse(b).is_err());
        }
        if b.len() >= pdu::DATA_HLEN {
            let h = pdu::DataHeader::parse(b);
            assert_eq!(
                (h.cccid, h.ttag, h.datao, h.datal),
                (le16(b, 8), le16(b, 10), le32(b, 12), le32(b, 16))
            );
        }
    }
    encoders(b);
}

/// The target's own PDUs, shaped by the input, read back by the strict reader.
fn encoders(b: &[u8]) {
    if b.len() < 12 {
        return;
    }
    let d = pdu::Digests {
        hdgst: b[0] & 1 != 0,
        ddgst: b[0] & 2 != 0,
        hpda: b[1] & 31,
    };
    let cid = le16(b, 2);
    let len = le32(b, 4) % (64 << 10) + 1;
    let data: Vec<u8> = b.iter().copied().cycle().take(len as usize).collect();
    let mut wire = pdu::ic_resp(d.hdgst, d.ddgst, conn::MAXH2CDATA).to_vec();
    let mut cqe = ironvme_nvme::Completion::from_bytes(&[0; 16]);
    cqe.cid = cid;
    wire.extend_from_slice(d.r2t(cid, le16(b, 8), 0, len).as_bytes());
    wire.extend_from_slice(d.capsule_resp(&cqe.to_bytes()).as_bytes());
    let success = b[10] & 1 != 0;
    wire.extend_from_slice(d.c2h_data(cid, 0, len, true, success).as_bytes());
    wire.extend_from_slice(&data);
    if d.ddgst {
        wire.extend_from_slice(&pdu::digest(&data).to_le_bytes());
    }
    if !success {
        wire.extend_from_slice(d.capsule_resp(&cqe.to_bytes()).as_bytes());
    }
    let err = pdu::PduError {
        fes: le16(b, 0),
        offset: le32(b, 2),
        what: "fuzz",
    };
    wire.extend_from_slice(&pdu::c2h_term_req(err, &b[..(b[11] as usize).min(b.len())]));
    let mut r = Reader::new(d.hpda);
    let mut events = Vec::new();
    if let Err(e) = r.feed(&wire, &mut events) {
        panic!("the target's own PDUs ({d:?}): {e}; read {events:?}");
    }
    assert!(r.at_boundary(), "{events:?}");
    assert_eq!(events.len(), 5 + !success as usize, "{events:?}");
    assert!(matches!(events.last(), Some(Event::Term { fes, fei }) if *fes == err.fes && *fei == err.offset));
}

/// What the host read on one connection, and what it still owes answers for.
struct Host {
    reader: Option<Reader>,
    events: Vec<Event>,
    /// The first bytes the host sent (its ICReq, if it sent one).
    ic: Vec<u8>,
    /// CIDs sent and not answered yet, with their counts (scripted mode only).
    due: Option<HashMap<u16, u32>>,
}

impl Host {
    fn read(&mut self, i: usize, b: &[u8]) {
        let hpda = self.ic.get(10).copied().unwrap_or(0);
        let r = self.reader.get_or_insert_with(|| Reader::new(hpda));
        let from = self.events.len();
        if let Err(e) = r.feed(b, &mut self.events) {
            panic!("connection {i}: {e}; read before: {:?}", self.events);
        }
        for at in from..self.events.len() {
            match self.events[at] {
                Event::IcResp { digests, maxh2cdata } => {
                    let asked = pdu::IcReq::parse(&self.ic).expect("an ICResp to no valid ICReq");
                    assert_eq!(digests, asked.hdgst as u8 | (asked.ddgst as u8) << 1, "digests granted");
                    assert_eq!(maxh2cdata, conn::MAXH2CDATA);
                }
                Event::Resp(c) => self.answered(i, c.cid, true),
                Event::Data { cccid, success, .. } => self.answered(i, cccid, success),
                Event::R2t { cccid, .. } => self.answered(i, cccid, false),
                Event::Term { .. } => {}
            }
        }
    }

    fn answered(&mut self, i: usize, cid: u16, done: bool) {
        let Some(due) = self.due.as_mut() else {
            return;
        };
        let n = due.get_mut(&cid);
        assert!(
            n.as_ref().is_some_and(|n| **n > 0),
            "connection {i}: an answer for CID {cid:#x}, which is not outstanding; read {:?}",
            self.events
        );
        if done && let Some(n) = n {
            *n -= 1;
        }
    }
}

/// Runs a raw or scripted session and checks it (oracles 1, 3 to 6).
fn session(target: &Target, chunk: usize, segments: &[(usize, &[u8])], script: Option<&Script>) {
    let mut hosts: Vec<Host> = (0..MAX_CONNS)
        .map(|i| Host {
            reader: None,
            events: Vec::new(),
            ic: segments
                .iter()
                .filter(|s| s.0 == i)
                .flat_map(|s| s.1.iter().copied())
                .take(pdu::IC_LEN)
                .collect(),
            // Raw steps may hold capsules of their own: no accounting then.
            due: script.filter(|s| !s.raw).map(|s| {
                let mut due = HashMap::new();
                for &cid in s.cids.get(i).into_iter().flatten() {
                    *due.entry(cid).or_insert(0) += 1;
                }
                due
            }),
        })
        .collect();
    let closed: Vec<Closed> = RIG.with(|rig| {
        let mut rig = rig.borrow_mut();
        let rig = rig.get_or_insert_with(|| Rig::new(target).expect("backends"));
        rig.run(target, segments, chunk, &mut |i, b| hosts[i].read(i, b))
    });
    for (i, (c, h)) in closed.iter().zip(&hosts).enumerate() {
        let hung_up = matches!(c.end, conn::End::Gone(_));
        if !hung_up {
            assert!(
                h.reader.as_ref().is_none_or(Reader::at_boundary),
                "connection {i}: a PDU cut short: {c:?}"
            );
        }
        let term = h.events.iter().find_map(|e| match e {
            Event::Term { fes, fei } => Some((*fes, *fei)),
            _ => None,
        });
        match (c.terminated, term) {
            (Some(e), Some(t)) => assert_eq!((e.fes, e.offset), t, "connection {i}: {e}"),
            (Some(e), None) => assert!(hung_up, "connection {i}: terminated ({e}) without a C2HTermReq"),
            (None, Some(t)) => panic!("connection {i}: a C2HTermReq {t:?} without termination"),
            (None, None) => {}
        }
        if let (Some(s), Some(e)) = (script, c.terminated)
            && !s.raw
        {
            // The framing is the script's: only the fields it leaves to the fuzzer may
            // be refused (data limits, H2CData's CCCID/TTAG/DATAL/DATAO, ICReq's PFV and
            // HPDA, sequence errors), never a header's own fields or a digest.
            let ok = matches!(
                (e.fes, e.offset),
                (pdu::fes::PDU_SEQUENCE_ERROR, 0)
                    | (pdu::fes::DATA_LIMIT_EXCEEDED, 4)
                    | (pdu::fes::DATA_OUT_OF_RANGE, 0)
                    | (pdu::fes::INVALID_HEADER_FIELD, 10 | 16)
                    | (pdu::fes::UNSUPPORTED_PARAMETER, 8 | 10)
            );
            assert!(
                ok,
                "connection {i}: a well-framed script terminated: {e}; read {:?}",
                h.events
            );
        }
    }
    for s in &target.subsystems {
        assert_eq!(s.controllers(), 0, "{}: a controller outlived its admin queue", s.nqn);
    }
}

fn nqn_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Oracle 7 for Connect.
fn check_connect(target: &Target, admin: Option<&Binding>, cmd: &Command, data: &[u8], r: &Result<Binding, Reply>) {
    let b = match r {
        Err(reply) => {
            assert!(!reply.status.is_success() && reply.data.is_empty(), "{reply:?}");
            return;
        }
        Ok(b) => b,
    };
    let (qid, sqsize, cattr) = ((cmd.cdw10 >> 16) as u16, cmd.cdw11 as u16, (cmd.cdw11 >> 16) as u8);
    assert_eq!(cmd.cdw10 as u16, 0, "RECFMT");
    assert!(data.len() >= ctrl::CONNECT_DATA_LEN);
    let sub = &b.ctrl.subsystem;
    assert_eq!(sub.nqn, nqn_field(&data[256..512]));
    assert!(target.subsystem(&sub.nqn).is_some_and(|s| Arc::ptr_eq(s, sub)));
    assert_eq!(b.ctrl.hostnqn, nqn_field(&data[512..768]));
    assert!(
        sub.is_discovery() || sub.hosts.allows(&b.ctrl.hostnqn),
        "a host not allowed"
    );
    assert_eq!((b.qid, b.entries), (qid, sqsize.wrapping_add(1)));
    assert!(sqsize > 0);
    assert_eq!(b.sqflow_disabled, cattr & ctrl::CATTR_DISABLE_SQFLOW != 0);
    if qid == 0 {
        assert_eq!(le16(data, 16), 0xFFFF, "an admin queue for a given CNTLID");
        assert!(b.entries <= ctrl::ADMIN_QUEUE_ENTRIES && (1..0xFFF0).contains(&b.ctrl.cntlid));
    } else {
        assert!(b.entries <= ctrl::IO_QUEUE_ENTRIES);
        assert_eq!(b.ctrl.cntlid, le16(data, 16));
        assert!(!b.ctrl.is_dead());
        // Connected to the admin queue's controller when it is the one named.
        if let Some(a) = admin.filter(|a| a.ctrl.cntlid == b.ctrl.cntlid && Arc::ptr_eq(&a.ctrl.subsystem, sub)) {
            assert!(Arc::ptr_eq(&a.ctrl, &b.ctrl));
            let csts = ctrl::property(&a.ctrl, &fuzzing::property_get(0, 0x1C, false)).dw0;
            assert_eq!(csts & 1, 1, "an I/O queue on a controller not ready");
        }
    }
}

/// Oracle 7 for Property Get and Set.
fn check_property(c: &ctrl::Ctrl, cmd: &Command, r: &Reply) {
    let set = cmd.nsid as u8 == ctrl::fctype::PROPERTY_SET;
    let size8 = cmd.cdw10 & 7 == 1;
    assert!(r.data.is_empty() && !r.hold);
    if !r.status.is_success() {
        assert_eq!(r.status, Status::INVALID_FIELD.with_dnr(true));
        return;
    }
    let get = |offset| ctrl::property(c, &fuzzing::property_get(0, offset, false));
    if set {
        assert_eq!((cmd.cdw11, size8), (0x14, false), "Property Set of {:#x}", cmd.cdw11);
        assert_eq!(get(0x14).dw0, cmd.cdw12, "CC reads back");
        let csts = get(0x1C).dw0;
        assert_eq!(csts & 1, cmd.cdw12 & 1, "CSTS.RDY follows CC.EN");
        let shst = if (cmd.cdw12 >> 14) & 3 != 0 { 2 } else { 0 };
        assert_eq!((csts >> 2) & 3, shst, "CSTS.SHST follows CC.SHN");
        return;
    }
    match (cmd.cdw11, size8) {
        (0x00, true) => assert_eq!(r.dw0 & 0xFFFF, ctrl::IO_QUEUE_ENTRIES as u32 - 1, "CAP.MQES"),
        (0x08, false) => assert_eq!(r.dw0, 0x0001_0400),
        (0x14 | 0x1C, false) => assert_eq!(r.dw1, 0),
        other => panic!("Property Get of {other:?} succeeded"),
    }
}

/// Oracle 7 for admin commands.
fn check_admin(target: &Target, c: &ctrl::Ctrl, cmd: &Command, r: &Reply) {
    assert_eq!(r.hold, cmd.opcode() == op::ASYNC_EVENT_REQUEST, "{cmd:?}");
    assert!(r.data.len() <= fuzzing::MAX_C2H_DATA);
    if !r.status.is_success() {
        assert!(r.data.is_empty(), "{cmd:?} failed ({}) with data", r.status);
        return;
    }
    let sub = &c.subsystem;
    let nn = sub.namespaces.len() as u32;
    match cmd.opcode() {
        op::IDENTIFY => {
            let p = &r.data;
            assert_eq!(p.len(), 4096);
            match cmd.cdw10 as u8 {
                0x01 => {
                    assert_eq!(le16(p, 78), c.cntlid);
                    assert_eq!(le32(p, 516), nn);
                    assert_eq!(nqn_field(&p[768..1024]), sub.nqn);
                }
                0x00 | 0x03 => {
                    assert!((1..=nn).contains(&cmd.nsid), "Identify of NSID {}", cmd.nsid);
                    if cmd.cdw10 as u8 == 0 {
                        let ns = &sub.namespaces[cmd.nsid as usize - 1];
                        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), ns.info.blocks);
                    }
                }
                0x02 => {
                    let ids: Vec<u32> = p.chunks(4).map(|w| le32(w, 0)).take_while(|&n| n != 0).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids.iter().all(|&n| n > cmd.nsid && n <= nn));
                    assert_eq!(ids.len() as u32, nn.saturating_sub(cmd.nsid));
                }
                cns => panic!("Identify CNS {cns:#x} succeeded"),
            }
        }
        op::GET_LOG_PAGE => {
            let dwords = ((cmd.cdw11 & 0xFFFF) << 16 | cmd.cdw10 >> 16) as usize + 1;
            assert_eq!(r.data.len(), dwords.min(1 << 20) * 4);
            let offset = (cmd.cdw13 as u64) << 32 | cmd.cdw12 as u64;
            if cmd.cdw10 as u8 == 0x70 && offset == 0 && r.data.len() >= 16 {
                assert!(sub.is_discovery());
                let allowed = target
                    .subsystems
                    .iter()
                    .filter(|s| !s.is_discovery() && s.hosts.allows(&c.hostnqn))
                    .count();
                let numrec = u64::from_le_bytes(r.data[8..16].try_into().unwrap());
                assert_eq!(numrec as usize, allowed * target.listeners.len());
            }
        }
        op::SET_FEATURES if cmd.cdw10 as u8 == 0x07 => {
            let (nsqa, ncqa) = (r.dw0 & 0xFFFF, r.dw0 >> 16);
            assert!(nsqa == ncqa && nsqa < ctrl::MAX_IO_QUEUES as u32);
            assert!(nsqa <= (cmd.cdw11 & 0xFFFF).min(cmd.cdw11 >> 16));
            let mut get = *cmd;
            get.cdw0 = op::GET_FEATURES as u32;
            assert_eq!(ctrl::admin(target, c, &get).dw0, r.dw0, "Number of Queues reads back");
        }
        op::KEEP_ALIVE | op::ASYNC_EVENT_REQUEST | op::ABORT | op::SET_FEATURES | op::GET_FEATURES => {
            assert!(r.data.is_empty());
        }
        other => panic!("admin opcode {other:#x} succeeded"),
    }
    if sub.is_discovery() {
        // A discovery controller has no Abort, and of the features only KATO and AEN.
        assert_ne!(cmd.opcode(), op::ABORT);
        if matches!(cmd.opcode(), op::SET_FEATURES | op::GET_FEATURES) {
            assert!(matches!(cmd.cdw10 as u8, 0x0F | 0x0B), "feature {:#x}", cmd.cdw10 as u8);
        }
    }
}

/// Mode 2: the handlers, as the connection dispatches them.
fn handlers(target: &Target, b: &[u8]) {
    let mut admin: Option<Binding> = None;
    let mut others: Vec<Binding> = Vec::new();
    for (cmd, data) in handler_records(b) {
        let fabrics = cmd.opcode() == ctrl::FABRICS_OPCODE;
        let fct = cmd.nsid as u8;
        if fabrics && fct == ctrl::fctype::CONNECT {
            let r = ctrl::connect(target, &cmd, data);
            check_connect(target, admin.as_ref(), &cmd, data, &r);
            if let Ok(b) = r {
                if b.qid == 0 && admin.is_none() {
                    admin = Some(b);
                } else {
                    others.push(b);
                }
            }
            continue;
        }
        let Some(a) = &admin else {
            continue;
        };
        if fabrics {
            if matches!(fct, ctrl::fctype::PROPERTY_GET | ctrl::fctype::PROPERTY_SET) {
                let r = ctrl::property(&a.ctrl, &cmd);
                check_property(&a.ctrl, &cmd, &r);
            }
            continue;
        }
        let r = ctrl::admin(target, &a.ctrl, &cmd);
        check_admin(target, &a.ctrl, &cmd, &r);
    }
    for b in admin.iter().chain(&others).filter(|b| b.qid == 0) {
        b.ctrl.kill();
    }
    for s in &target.subsystems {
        assert_eq!(s.controllers(), 0, "{}", s.nqn);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    parsers(rest);
    let target = fuzzing::target(backing());
    let chunk = CHUNKS[(first >> 2 & 7) as usize];
    match first & 3 {
        mode::RAW => session(&target, chunk, &raw_segments(rest), None),
        mode::HANDLERS => handlers(&target, rest),
        _ => {
            let script = Script::decode(rest);
            let segments: Vec<(usize, &[u8])> = script.segments.iter().map(|(i, b)| (*i, b.as_slice())).collect();
            session(&target, chunk, &segments, Some(&script));
        }
    }
});
