//! The Identify data structures the simulator returns: Identify Controller (Base
//! Specification 2.0, Figure 275), Identify Namespace (NVM Command Set 1.0, Figure 97),
//! the active namespace list and the namespace identification descriptors.

use super::config::SimConfig;
use super::features::WCTEMP_KELVIN;
use super::namespace::Namespace;

/// Identify data structures are 4096 bytes.
pub(super) const IDENTIFY_LEN: usize = 4096;
/// PCI vendor ID of QEMU's controller (Red Hat, 1b36:0010).
pub(super) const VID: u16 = 0x1b36;
/// PCI subsystem vendor ID (Red Hat / virtio, 1af4).
pub(super) const SSVID: u16 = 0x1af4;
/// Abort Command Limit, 0's based.
pub(super) const ACL: u8 = 3;
/// Asynchronous Event Request Limit, 0's based (AERL + 1 outstanding).
pub(super) const AERL: u8 = 3;
/// Error Log Page Entries, 0's based (64 entries).
pub(super) const ELPE: u8 = 63;
/// Number of Power States Supported, 0's based (one state).
pub(super) const NPSS: u8 = 0;
/// OACS: Format NVM (bit 1), Firmware Download/Commit (bit 2), and Namespace Management
/// (bit 3: the simulator has Namespace Attachment only, as QEMU 7.2).
pub(super) const OACS: u16 = 0x000E;
/// ONCS: Compare (bit 0), Dataset Management (bit 2), Write Zeroes (bit 3), Timestamp
/// (bit 6), Verify (bit 7).
pub(super) const ONCS: u16 = 0x00CD;
/// LPA: SMART per namespace (bit 0), extended data for Get Log Page (bit 2).
pub(super) const LPA: u8 = 0x05;
/// FRMW: slot 1 read-only (bit 0), one slot (bits 3:1).
pub(super) const FRMW: u8 = 0x03;
/// The composite temperature the SMART log reports, Kelvin.
pub(super) const TEMPERATURE_KELVIN: u16 = 308;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes `s` as a space-padded ASCII field of `len` bytes (longer strings are cut).
pub(super) fn put_ascii(b: &mut [u8], at: usize, len: usize, s: &str) {
    let field = &mut b[at..at + len];
    field.fill(b' ');
    for (dst, src) in field.iter_mut().zip(s.bytes()) {
        *dst = if src.is_ascii_graphic() || src == b' ' {
            src
        } else {
            b'?'
        };
    }
}

/// Identify Controller (CNS 01h).
pub(super) fn controller(cfg: &SimConfig) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put16(&mut b, 0, VID);
    put16(&mut b, 2, SSVID);
    put_ascii(&mut b, 4, 20, &cfg.serial);
    put_ascii(&mut b, 24, 40, &cfg.model);
    put_ascii(&mut b, 64, 8, &cfg.firmware);
    b[72] = 6; // RAB
    b[73..76].copy_from_slice(&[0x00, 0x54, 0x52]); // IEEE OUI 52:54:00, least significant byte first
    b[77] = cfg.mdts;
    put16(&mut b, 78, 0); // CNTLID
    put32(&mut b, 80, super::regs::VERSION);
    put32(&mut b, 92, 1 << 8); // OAES: Namespace Attribute Notices, as QEMU 7.2
    b[111] = 1; // CNTRLTYPE: I/O controller
    put16(&mut b, 256, OACS);
    b[258] = ACL;
    b[259] = AERL;
    b[260] = FRMW;
    b[261] = LPA;
    b[262] = ELPE;
    b[263] = NPSS;
    put16(&mut b, 266, WCTEMP_KELVIN);
    put16(&mut b, 268, 373); // CCTEMP
    b[512] = 0x66; // SQES: 64 bytes required and maximum
    b[513] = 0x44; // CQES: 16 bytes required and maximum
    put16(&mut b, 514, (cfg.mqes as u32 + 1).min(0xFFFF) as u16); // MAXCMD
    put32(&mut b, 516, cfg.namespaces.len() as u32); // NN
    put16(&mut b, 520, ONCS);
    // VWC: present, and Flush with the broadcast NSID is supported (bits 2:1 = 11b).
    b[525] = if cfg.vwc { 0x07 } else { 0 };
    put32(&mut b, 536, cfg.sgl as u32); // SGLS: supported, no alignment requirement
    let nqn = format!("nqn.2019-08.org.qemu:{}", cfg.serial);
    let n = nqn.len().min(255); // keep a terminating NUL
    b[768..768 + n].copy_from_slice(&nqn.as_bytes()[..n]);
    // PSD0: 25 W maximum power (MP in centiwatts), entry latency 16 µs, exit latency 4 µs.
    put16(&mut b, 2048, 2500);
    put32(&mut b, 2048 + 4, 16);
    put32(&mut b, 2048 + 8, 4);
    b
}

/// A small deterministic hash of the serial number and NSID, for identifiers.
fn identifier(serial: &str, nsid: u32, salt: u64) -> u64 {
    // FNV-1a
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for byte in serial.bytes().chain(nsid.to_le_bytes()) {
        h ^= byte as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The namespace's EUI-64 (IEEE OUI 52:54:00 in the top bytes).
pub(super) fn eui64(serial: &str, nsid: u32) -> [u8; 8] {
    let mut e = identifier(serial, nsid, 1).to_be_bytes();
    e[..3].copy_from_slice(&[0x52, 0x54, 0x00]);
    e
}

/// The namespace's NGUID.
pub(super) fn nguid(serial: &str, nsid: u32) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&identifier(serial, nsid, 2).to_be_bytes());
    g[8..].copy_from_slice(&identifier(serial, nsid, 3).to_be_bytes());
    g
}

/// The namespace's UUID (version 4 layout).
pub(super) fn uuid(serial: &str, nsid: u32) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&identifier(serial, nsid, 4).to_be_bytes());
    u[8..].copy_from_slice(&identifier(serial, nsid, 5).to_be_bytes());
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    u
}

/// Identify Namespace (CNS 00h) for an active namespace; zeros for an inactive NSID.
pub(super) fn namespace(ns: &Namespace, serial: &str, nsid: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    if !ns.is_active() {
        return b;
    }
    put64(&mut b, 0, ns.blocks); // NSZE
    put64(&mut b, 8, ns.blocks); // NCAP
    put64(&mut b, 16, ns.blocks); // NUSE
    b[24] = 0; // NSFEAT
    b[25] = 1; // NLBAF: two formats, 0's based
    b[26] = ns.lba_format(); // FLBAS
    // MC, DPC, DPS: no metadata, no protection information.
    b[33] = 0x09; // DLFEAT: deallocated blocks read as zeros; Write Zeroes may deallocate
    b[104..120].copy_from_slice(&nguid(serial, nsid));
    b[120..128].copy_from_slice(&eui64(serial, nsid));
    put32(&mut b, 128, 9 << 16); // LBAF0: 512-byte data, no metadata
    put32(&mut b, 132, 12 << 16); // LBAF1: 4096-byte data, no metadata
    b
}

/// Active Namespace ID list (CNS 02h): active NSIDs greater than `after`, ascending.
pub(super) fn active_list(namespaces: &[Namespace], after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let active = (1..=namespaces.len() as u32).filter(|&id| id > after && namespaces[id as usize - 1].is_active());
    for (i, nsid) in active.take(IDENTIFY_LEN / 4).enumerate() {
        put32(&mut b, i * 4, nsid);
    }
    b
}

/// Namespace Identification Descriptor list (CNS 03h): EUI64, NGUID, UUID and CSI.
pub(super) fn descriptors(serial: &str, nsid: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut at = 0;
    let mut put = |nidt: u8, id: &[u8]| {
        b[at] = nidt;
        b[at + 1] = id.len() as u8;
        b[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    put(1, &eui64(serial, nsid));
    put(2, &nguid(serial, nsid));
    put(3, &uuid(serial, nsid));
    put(4, &[0]); // CSI: NVM command set
    b
}
