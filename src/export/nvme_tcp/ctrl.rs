//! Subsystems and the controllers hosts connect to: Fabrics commands (Connect, Property
//! Get/Set), admin commands, and the data they return (NVMe Base 2.0 sections 5 and
//! 3.1.3, NVMe over Fabrics 1.1 section 3.3; Linux `drivers/nvme/target/admin-cmd.c`,
//! `fabrics-cmd.c` and `discovery.c` are the model).
//!
//! Everything here is a pure function of the command, the controller's registers and the
//! subsystem: no sockets and no I/O, so the command handlers can be fuzzed
//! (`fuzz/fuzz_targets/nvme_tcp.rs`). The connection ([`super::conn`]) moves the bytes.
//!
//! A controller (an association: one admin queue and its I/O queues, each its own TCP
//! connection, possibly on different poll groups) is shared by its queues through an
//! `Arc`; its lock is taken by admin and Fabrics commands only, never per I/O.

use super::Namespace;
use ironvme_nvme::cmd::Command;
use ironvme_nvme::parse::le16;
use ironvme_nvme::status::Status;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The well-known NQN of the discovery subsystem (NVMe over Fabrics 1.1, 7.1).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Fabrics command opcode.
pub const FABRICS_OPCODE: u8 = 0x7F;
/// Fabrics command types (FCTYPE, byte 4).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
}
/// Entries of an I/O queue (CAP.MQES + 1) and the most commands outstanding on one.
pub const IO_QUEUE_ENTRIES: u16 = 128;
/// The admin queue's entries (Linux's NVME_AQ_DEPTH).
pub const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// I/O queues granted to a controller at most (Set Features, Number of Queues).
pub const MAX_IO_QUEUES: u16 = 16;
/// Asynchronous Event Requests held per controller (AERL + 1).
pub const AER_LIMIT: u8 = 4;
/// In-capsule data an I/O queue accepts, bytes (IOCCSZ is 64 bytes more, in 16s).
pub const INLINE_DATA: u32 = 8192;
/// Connect data length, bytes (NVMe over Fabrics 1.1, figure 20).
pub const CONNECT_DATA_LEN: usize = 1024;
/// Connect command attribute: disable SQ flow control (SQHD reporting off).
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// Command-specific status codes of Connect (SCT 1h).
pub mod connect_status {
    use ironvme_nvme::status::Status;
    /// Connect Incompatible Format (80h).
    pub const INCOMPATIBLE_FORMAT: Status = Status::new(1, 0x80);
    /// Connect Invalid Parameters (82h); DW0 says which (IATTR bit 16, IPO bits 15:0).
    pub const INVALID_PARAMETERS: Status = Status::new(1, 0x82);
    /// Connect Invalid Host (84h).
    pub const INVALID_HOST: Status = Status::new(1, 0x84);
}

/// Who may connect to a subsystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any host NQN.
    Any,
    /// Only these host NQNs.
    Only(Vec<String>),
}

impl HostPolicy {
    /// Whether `hostnqn` may connect.
    pub fn allows(&self, hostnqn: &str) -> bool {
        match self {
            HostPolicy::Any => true,
            HostPolicy::Only(hosts) => hosts.iter().any(|h| h == hostnqn),
        }
    }
}

/// A subsystem: an NQN, its namespaces (NSIDs 1..=N in order) and its hosts.
pub struct Subsystem {
    /// The subsystem NQN.
    pub nqn: String,
    /// Serial number (Identify Controller SN, at most 20 ASCII bytes).
    pub serial: String,
    /// Model number (MN, at most 40 ASCII bytes).
    pub model: String,
    /// The namespaces; NSID = index + 1.
    pub namespaces: Vec<Namespace>,
    /// Who may connect.
    pub hosts: HostPolicy,
    /// Largest transfer per command, bytes (what MDTS says; a power of two ≥ 4 KiB).
    pub max_transfer: u32,
    controllers: Mutex<HashMap<u16, Arc<Ctrl>>>,
    next_cntlid: AtomicU16,
}

impl Subsystem {
    /// A subsystem serving `namespaces`, whose MDTS is the smallest of theirs (at most
    /// `max_transfer` bytes).
    pub fn new(nqn: String, serial: String, model: String, namespaces: Vec<Namespace>, hosts: HostPolicy) -> Subsystem {
        let limit = namespaces
            .iter()
            .map(|n| n.info.max_transfer_bytes)
            .min()
            .unwrap_or(1 << 17)
            .clamp(4096, 1 << 17);
        // A power of two: MDTS is an exponent of 4 KiB pages.
        let max_transfer = 1u32 << (usize::BITS - 1 - limit.leading_zeros());
        Subsystem {
            nqn,
            serial,
            model,
            namespaces,
            hosts,
            max_transfer,
            controllers: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
        }
    }

    /// Whether this is the discovery subsystem (no namespaces, a discovery controller).
    pub fn is_discovery(&self) -> bool {
        self.nqn == DISCOVERY_NQN
    }

    fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.get((nsid as usize).wrapping_sub(1))
    }

    /// Controllers connected now.
    pub fn controllers(&self) -> usize {
        self.controllers.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Forgets a controller whose admin queue has gone.
    pub fn remove(&self, cntlid: u16) {
        if let Ok(mut c) = self.controllers.lock() {
            c.remove(&cntlid);
        }
    }
}

/// What the target serves: the discovery subsystem first, then the others, and the
/// addresses it listens on (for the discovery log).
pub struct Target {
    /// Subsystem 0 is the discovery subsystem.
    pub subsystems: Vec<Arc<Subsystem>>,
    /// The NVMe/TCP listeners (port IDs are indexes + 1).
    pub listeners: Vec<SocketAddr>,
}

impl Target {
    /// Finds a subsystem by NQN.
    pub fn subsystem(&self, nqn: &str) -> Option<&Arc<Subsystem>> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }
}

/// A controller's registers and settings, changed by admin and Fabrics commands only.
#[derive(Clone, Copy, Debug, Default)]
struct Regs {
    cc: u32,
    csts: u32,
    kato_ms: u32,
    io_queues: u16,
    aec: u32,
}

/// A controller: one association of a host with a subsystem.
pub struct Ctrl {
    /// Controller ID.
    pub cntlid: u16,
    /// Its subsystem.
    pub subsystem: Arc<Subsystem>,
    /// The host NQN that made it.
    pub hostnqn: String,
    /// The host identifier from the Connect data.
    pub hostid: [u8; 16],
    regs: Mutex<Regs>,
    /// Milliseconds since `born` at the last admin command (keep-alive).
    last_admin_ms: AtomicU64,
    born: Instant,
    /// Set when the association ends (admin queue closed, KATO expired, stop): every
    /// queue's connection closes.
    pub dead: AtomicBool,
}

impl Ctrl {
    /// Notes an admin command now (any admin command restarts the keep-alive timer).
    pub fn touch(&self) {
        self.last_admin_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether KATO has run out: no admin command for KATO plus half of it again (the
    /// host sends Keep Alive every KATO/2; the extra half absorbs a slow host).
    pub fn kato_expired(&self) -> bool {
        let kato = self.regs.lock().map(|r| r.kato_ms).unwrap_or(0) as u64;
        kato != 0
            && self.born.elapsed().as_millis() as u64 > self.last_admin_ms.load(Ordering::Relaxed) + kato + kato / 2
    }

    /// Ends the association and forgets it in the subsystem.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.subsystem.remove(self.cntlid);
    }

    /// Whether the association is over.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    fn enabled(&self) -> bool {
        self.regs.lock().map(|r| r.csts & 1 != 0).unwrap_or(false)
    }
}

/// What a queue has after Connect.
pub struct Binding {
    /// The controller.
    pub ctrl: Arc<Ctrl>,
    /// Queue ID (0: admin).
    pub qid: u16,
    /// Entries of the queue (SQSIZE + 1): the most commands outstanding on it.
    pub entries: u16,
    /// SQ flow control disabled: no SQHD to report, and C2HData may carry SUCCESS.
    pub sqflow_disabled: bool,
}

/// A command's result: status, DW0/DW1 and data for the host.
#[derive(Debug, Default)]
pub struct Reply {
    /// Completion status.
    pub status: Status,
    /// Completion DW0.
    pub dw0: u32,
    /// Completion DW1.
    pub dw1: u32,
    /// Data to send to the host (C2HData), at most the command's SGL length.
    pub data: Vec<u8>,
    /// Hold the command without completing it (Asynchronous Event Request).
    pub hold: bool,
}

impl Reply {
    /// A reply with only a status.
    pub fn status(status: Status) -> Reply {
        Reply {
            status,
            ..Default::default()
        }
    }

    /// A reply with an error status, Do Not Retry set.
    pub fn error(status: Status) -> Reply {
        Reply::status(status.with_dnr(true))
    }

    fn data(data: Vec<u8>) -> Reply {
        Reply {
            data,
            ..Default::default()
        }
    }
}

/// A NUL-padded string field of the Connect data.
fn nqn_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Connect (NVMe over Fabrics 1.1, 3.3): checks the command and its 1024-byte data,
/// and makes a controller (admin queue) or joins one (I/O queue).
///
/// Errors: Connect's statuses, with DW0 naming the bad parameter (IATTR bit 16: in the
/// data; IPO bits 15:0: its offset).
pub fn connect(target: &Target, cmd: &Command, data: &[u8]) -> Result<Binding, Reply> {
    let invalid = |in_data: bool, offset: u16| {
        let mut r = Reply::error(connect_status::INVALID_PARAMETERS);
        r.dw0 = (in_data as u32) << 16 | offset as u32;
        r
    };
    let recfmt = cmd.cdw10 as u16;
    let qid = (cmd.cdw10 >> 16) as u16;
    let sqsize = cmd.cdw11 as u16;
    let cattr = (cmd.cdw11 >> 16) as u8;
    if recfmt != 0 {
        return Err(Reply::error(connect_status::INCOMPATIBLE_FORMAT));
    }
    if data.len() < CONNECT_DATA_LEN {
        return Err(Reply::error(Status::DATA_SGL_LENGTH_INVALID));
    }
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[..16]);
    let cntlid = le16(data, 16);
    let subnqn = nqn_field(&data[256..512]);
    let hostnqn = nqn_field(&data[512..768]);
    let Some(subsystem) = target.subsystem(&subnqn) else {
        return Err(invalid(true, 256));
    };
    if !subsystem.is_discovery() && !subsystem.hosts.allows(&hostnqn) {
        return Err(Reply::error(connect_status::INVALID_HOST));
    }
    let max_entries = if qid == 0 {
        ADMIN_QUEUE_ENTRIES
    } else {
        IO_QUEUE_ENTRIES
    };
    if sqsize == 0 || sqsize >= max_entries {
        return Err(invalid(false, 44));
    }
    let sqflow_disabled = cattr & CATTR_DISABLE_SQFLOW != 0;
    if qid == 0 {
        if cntlid != 0xFFFF {
            // The dynamic controller model: the host must ask for any controller.
            return Err(invalid(true, 16));
        }
        let mut ctrls = subsystem
            .controllers
            .lock()
            .map_err(|_| Reply::error(Status::INTERNAL_ERROR))?;
        if ctrls.len() >= 0xFFEF {
            return Err(Reply::error(Status::new(1, 0x81).with_dnr(false)));
        }
        let mut id;
        loop {
            id = subsystem.next_cntlid.fetch_add(1, Ordering::Relaxed);
            if (1..0xFFF0).contains(&id) && !ctrls.contains_key(&id) {
                break;
            }
        }
        let ctrl = Arc::new(Ctrl {
            cntlid: id,
            subsystem: Arc::clone(subsystem),
            hostnqn,
            hostid,
            regs: Mutex::new(Regs {
                kato_ms: cmd.cdw12,
                ..Default::default()
            }),
            last_admin_ms: AtomicU64::new(0),
            born: Instant::now(),
            dead: AtomicBool::new(false),
        });
        ctrls.insert(id, Arc::clone(&ctrl));
        return Ok(Binding {
            ctrl,
            qid,
            entries: sqsize + 1,
            sqflow_disabled,
        });
    }
    let ctrl = subsystem
        .controllers
        .lock()
        .ok()
        .and_then(|c| c.get(&cntlid).cloned())
        .filter(|c| !c.is_dead() && c.hostnqn == hostnqn)
        .ok_or_else(|| invalid(true, 16))?;
    let granted = ctrl.regs.lock().map(|r| r.io_queues).unwrap_or(0);
    if !ctrl.enabled() || qid > granted {
        return Err(invalid(false, 42));
    }
    Ok(Binding {
        ctrl,
        qid,
        entries: sqsize + 1,
        sqflow_disabled,
    })
}

/// CAP: MQES, CQR, TO (500 ms units), CSS (NVM command set); MPSMIN = MPSMAX = 4 KiB.
fn cap() -> u64 {
    (IO_QUEUE_ENTRIES as u64 - 1) | 1 << 16 | 10 << 24 | 1 << 37
}

/// VS: NVMe 1.4.
const VERSION: u32 = 0x0001_0400;

/// Property Get and Property Set (NVMe over Fabrics 1.1, 3.4 and 3.5): CAP, VS, CC and
/// CSTS. Setting CC.EN makes the controller ready; CC.SHN completes shutdown at once
/// (every completed write has reached the backend's queue; Flush is the host's to send).
pub fn property(ctrl: &Ctrl, cmd: &Command) -> Reply {
    let set = cmd.nsid as u8 == fctype::PROPERTY_SET;
    let size8 = cmd.cdw10 & 7 == 1;
    let offset = cmd.cdw11;
    let Ok(mut regs) = ctrl.regs.lock() else {
        return Reply::error(Status::INTERNAL_ERROR);
    };
    if set {
        if offset != 0x14 || size8 {
            return Reply::error(Status::INVALID_FIELD);
        }
        let cc = cmd.cdw12;
        regs.cc = cc;
        let en = cc & 1 != 0;
        let shn = (cc >> 14) & 3;
        regs.csts = (regs.csts & !1) | en as u32;
        if shn != 0 {
            // SHST = 10b: shutdown processing complete.
            regs.csts = (regs.csts & !(3 << 2)) | 2 << 2;
        } else {
            regs.csts &= !(3 << 2);
        }
        return Reply::default();
    }
    let value: u64 = match (offset, size8) {
        (0x00, true) => cap(),
        (0x08, false) => VERSION as u64,
        (0x14, false) => regs.cc as u64,
        (0x1C, false) => regs.csts as u64,
        _ => return Reply::error(Status::INVALID_FIELD),
    };
    Reply {
        dw0: value as u32,
        dw1: (value >> 32) as u32,
        ..Default::default()
    }
}

/// An admin command on `ctrl`. `data` is the command's data from the host (none of the
/// supported admin commands takes any).
pub fn admin(target: &Target, ctrl: &Ctrl, cmd: &Command) -> Reply {
    use ironvme_nvme::cmd::admin as op;
    ctrl.touch();
    let discovery = ctrl.subsystem.is_discovery();
    match cmd.opcode() {
        op::IDENTIFY => identify(ctrl, cmd),
        op::GET_LOG_PAGE => get_log_page(target, ctrl, cmd),
        op::KEEP_ALIVE => Reply::default(),
        op::SET_FEATURES | op::GET_FEATURES if !discovery || cmd.cdw10 as u8 == 0x0F || cmd.cdw10 as u8 == 0x0B => {
            features(ctrl, cmd)
        }
        op::ASYNC_EVENT_REQUEST => Reply {
            hold: true,
            ..Default::default()
        },
        // Abort: the command was not aborted (DW0 bit 0).
        op::ABORT if !discovery => Reply {
            dw0: 1,
            ..Default::default()
        },
        _ => Reply::error(Status::INVALID_OPCODE),
    }
}

fn put_str(page: &mut [u8], at: usize, len: usize, s: &str, pad: u8) {
    let field = &mut page[at..at + len];
    field.fill(pad);
    let b = s.as_bytes();
    let n = b.len().min(len);
    field[..n].copy_from_slice(&b[..n]);
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn identify(ctrl: &Ctrl, cmd: &Command) -> Reply {
    let sub = &ctrl.subsystem;
    let cns = cmd.cdw10 as u8;
    let mut page = vec![0u8; 4096];
    match cns {
        0x01 => identify_controller(ctrl, &mut page),
        0x00 | 0x03 => {
            let Some(ns) = sub.namespace(cmd.nsid) else {
                return Reply::error(Status::INVALID_NAMESPACE_OR_FORMAT);
            };
            if cns == 0 {
                identify_namespace(ns, &mut page);
            } else {
                // Namespace Identification Descriptors: NGUID (type 2) and UUID (type 3),
                // both the namespace's stable 128-bit identifier.
                put(&mut page, 0, &[2, 16, 0, 0]);
                put(&mut page, 4, &ns.uuid);
                put(&mut page, 20, &[3, 16, 0, 0]);
                put(&mut page, 24, &ns.uuid);
            }
        }
        0x02 => {
            // Active NSIDs above CDW1.NSID, ascending.
            let after = cmd.nsid;
            if after >= 0xFFFF_FFFE {
                return Reply::error(Status::INVALID_NAMESPACE_OR_FORMAT);
            }
            let ids = (1..=sub.namespaces.len() as u32).filter(|&n| n > after).take(1024);
            for (i, n) in ids.enumerate() {
                put(&mut page, i * 4, &n.to_le_bytes());
            }
        }
        _ => return Reply::error(Status::INVALID_FIELD),
    }
    Reply::data(page)
}

/// Identify Controller (NVMe Base 2.0 figure 275; fabrics fields per NVMe-oF 1.1 4.1).
fn identify_controller(ctrl: &Ctrl, page: &mut [u8]) {
    let sub = &ctrl.subsystem;
    put_str(page, 4, 20, &sub.serial, b' ');
    put_str(page, 24, 40, &sub.model, b' ');
    put_str(page, 64, 8, env!("CARGO_PKG_VERSION"), b' ');
    page[72] = 6; // RAB
    page[76] = 1 << 1; // CMIC: the subsystem may have several controllers.
    page[77] = (sub.max_transfer / 4096).trailing_zeros() as u8; // MDTS
    put(page, 78, &ctrl.cntlid.to_le_bytes());
    put(page, 80, &VERSION.to_le_bytes());
    page[111] = if sub.is_discovery() { 2 } else { 1 }; // CNTRLTYPE
    page[258] = 3; // ACL (0's based)
    page[259] = AER_LIMIT - 1; // AERL (0's based)
    page[260] = 0x3; // FRMW: slot 1 read-only, one slot
    page[261] = 1 << 2; // LPA: extended data for Get Log Page
    put(page, 320, &10u16.to_le_bytes()); // KAS: 100 ms units, 1 s granularity
    page[512] = 0x66; // SQES
    page[513] = 0x44; // CQES
    put(page, 514, &IO_QUEUE_ENTRIES.to_le_bytes()); // MAXCMD
    put(page, 516, &(sub.namespaces.len() as u32).to_le_bytes()); // NN
    let all = |f: fn(&Namespace) -> bool| !sub.namespaces.is_empty() && sub.namespaces.iter().all(f);
    let oncs = (all(|n| n.info.compare) as u16)
        | (sub.namespaces.iter().any(|n| n.info.deallocate) as u16) << 2
        | (all(|n| n.info.write_zeroes) as u16) << 3;
    put(page, 520, &oncs.to_le_bytes());
    // VWC present: the host sends Flush, which reaches every backend as Flush.
    page[525] = if sub.is_discovery() { 0 } else { 1 };
    // SGLS: SGLs supported; SGL offsets (in-capsule data).
    put(page, 536, &(1u32 | 1 << 20).to_le_bytes());
    put_str(page, 768, 256, &sub.nqn, 0);
    // IOCCSZ and IORCSZ (16-byte units), ICDOFF 0, FCATT 0 (dynamic), MSDBD 1.
    put(page, 1792, &((64 + INLINE_DATA) / 16).to_le_bytes());
    put(page, 1796, &1u32.to_le_bytes());
    page[1803] = 1;
}

/// Identify Namespace (NVMe Base 2.0 figure 276 / NVM Command Set 1.0 figure 97).
fn identify_namespace(ns: &Namespace, page: &mut [u8]) {
    let blocks = ns.info.blocks.to_le_bytes();
    put(page, 0, &blocks); // NSZE
    put(page, 8, &blocks); // NCAP
    put(page, 16, &blocks); // NUSE
    page[25] = 0; // NLBAF: one format
    page[26] = 0; // FLBAS: format 0, no metadata
    page[30] = 1; // NMIC: may be attached to several controllers
    // DLFEAT: deallocated blocks read as zeros (bits 2:0 = 001b) when the backend says so.
    if ns.info.deallocate_zeroes {
        page[33] = 1;
    }
    put(page, 48, &(ns.info.capacity_bytes() as u128).to_le_bytes()); // NVMCAP
    put(page, 104, &ns.uuid); // NGUID
    // LBAF0: MS 0, LBADS = log2(block size), RP 0.
    page[128 + 2] = ns.info.block_size.trailing_zeros() as u8;
}

fn features(ctrl: &Ctrl, cmd: &Command) -> Reply {
    use ironvme_nvme::cmd::admin as op;
    let set = cmd.opcode() == op::SET_FEATURES;
    let fid = cmd.cdw10 as u8;
    let Ok(mut regs) = ctrl.regs.lock() else {
        return Reply::error(Status::INTERNAL_ERROR);
    };
    let dw0 = match (fid, set) {
        // Number of Queues: NSQR/NCQR, 0's based; grant at most MAX_IO_QUEUES.
        (0x07, true) => {
            let (nsqr, ncqr) = (cmd.cdw11 as u16, (cmd.cdw11 >> 16) as u16);
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Reply::error(Status::INVALID_FIELD);
            }
            let n = nsqr.min(ncqr).min(MAX_IO_QUEUES - 1);
            regs.io_queues = n + 1;
            (n as u32) << 16 | n as u32
        }
        (0x07, false) => {
            let n = regs.io_queues.saturating_sub(1) as u32;
            n << 16 | n
        }
        (0x0F, true) => {
            regs.kato_ms = cmd.cdw11;
            0
        }
        (0x0F, false) => regs.kato_ms,
        (0x0B, true) => {
            regs.aec = cmd.cdw11;
            0
        }
        (0x0B, false) => regs.aec,
        // Volatile Write Cache: enabled, and not changeable.
        (0x06, false) => 1,
        _ => return Reply::error(Status::INVALID_FIELD),
    };
    Reply {
        dw0,
        ..Default::default()
    }
}

fn get_log_page(target: &Target, ctrl: &Ctrl, cmd: &Command) -> Reply {
    let lid = cmd.cdw10 as u8;
    let dwords = ((cmd.cdw11 & 0xFFFF) << 16 | cmd.cdw10 >> 16) as usize + 1;
    let offset = (cmd.cdw13 as u64) << 32 | cmd.cdw12 as u64;
    let discovery = ctrl.subsystem.is_discovery();
    let page = match lid {
        0x70 if discovery => discovery_log(target, &ctrl.hostnqn),
        // Error Information, SMART / Health Information, Changed Namespace List: nothing
        // to report (no errors are logged; health is the backend's to report).
        0x01 if !discovery => vec![0u8; 64],
        0x02 if !discovery => vec![0u8; 512],
        0x04 if !discovery => vec![0u8; 4096],
        0x03 if !discovery => {
            let mut p = vec![0u8; 512];
            p[0] = 1; // AFI: slot 1 active
            put_str(&mut p, 8, 8, env!("CARGO_PKG_VERSION"), b' ');
            p
        }
        _ => return Reply::error(Status::INVALID_LOG_PAGE),
    };
    if offset % 4 != 0 || offset > page.len() as u64 {
        return Reply::error(Status::INVALID_FIELD);
    }
    let mut data = vec![0u8; dwords.min(1 << 20) * 4];
    let from = &page[offset as usize..];
    let n = from.len().min(data.len());
    data[..n].copy_from_slice(&from[..n]);
    Reply::data(data)
}

/// The discovery log page (NVMe over Fabrics 1.1, 5.3): a 1024-byte header (GENCTR,
/// NUMREC, RECFMT) and one 1024-byte entry per (listener, subsystem the host may use).
pub fn discovery_log(target: &Target, hostnqn: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    for (port, addr) in target.listeners.iter().enumerate() {
        for sub in target
            .subsystems
            .iter()
            .filter(|s| !s.is_discovery() && s.hosts.allows(hostnqn))
        {
            let mut e = vec![0u8; 1024];
            e[0] = 3; // TRTYPE: TCP
            e[1] = if addr.is_ipv4() { 1 } else { 2 }; // ADRFAM
            e[2] = 2; // SUBTYPE: NVM subsystem
            // TREQ 0: secure channel not specified (libnvme 1.3 adds a `tls` option the 6.1
            // kernel refuses when bits 1:0 are set).
            e[3] = 0;
            put(&mut e, 4, &(port as u16 + 1).to_le_bytes()); // PORTID
            put(&mut e, 6, &0xFFFFu16.to_le_bytes()); // CNTLID: dynamic
            put(&mut e, 8, &ADMIN_QUEUE_ENTRIES.to_le_bytes()); // ASQSZ
            put_str(&mut e, 32, 32, &addr.port().to_string(), 0);
            put_str(&mut e, 256, 256, &sub.nqn, 0);
            put_str(&mut e, 512, 256, &addr.ip().to_string(), 0);
            entries.push(e);
        }
    }
    let mut page = vec![0u8; 1024];
    put(&mut page, 0, &1u64.to_le_bytes()); // GENCTR
    put(&mut page, 8, &(entries.len() as u64).to_le_bytes()); // NUMREC
    for e in entries {
        page.extend_from_slice(&e);
    }
    page
}
