//! NVMe/TCP PDUs: their headers, byte by byte, and the digests (NVMe/TCP Transport
//! Specification 1.0, section 3.6; Linux `include/linux/nvme-tcp.h`).
//!
//! Every PDU starts with an 8-byte common header (CH): type, flags, HLEN (header length
//! in bytes, without the header digest), PDO (offset of the data from the start of the
//! PDU, 0 when there is none) and PLEN (the whole PDU's length in bytes: header, header
//! digest, padding, data, data digest). The parsers here are total: any bytes give a
//! value or a [`PduError`] that says which field is wrong, the FES (fatal error status)
//! to put in a termination PDU and the offset of the offending field.
//!
//! Digests are CRC32C (Castagnoli, the `crc32c` crate), stored little-endian after the
//! header (HDGST, over the header) and after the data (DDGST, over the data only).

use ironvme_nvme::parse::{le16, le32};

/// PDU types (PDU-type field, byte 0 of the common header).
pub mod pdu_type {
    /// Initialize Connection Request (host to controller).
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to Controller Terminate Connection Request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to Host Terminate Connection Request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command Capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response Capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to Controller Data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to Host Data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to Transfer.
    pub const R2T: u8 = 0x09;
}

/// Common header flags (byte 1).
pub mod flags {
    /// HDGSTF: a header digest follows the header.
    pub const HDGST: u8 = 0x01;
    /// DDGSTF: a data digest follows the data.
    pub const DDGST: u8 = 0x02;
    /// LAST_PDU (data PDUs): the last data PDU of the command's transfer.
    pub const LAST_PDU: u8 = 0x04;
    /// SUCCESS (C2HData): the command succeeded; no Response Capsule follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal Error Status of a termination PDU (NVMe/TCP 1.0, figure 26).
pub mod fes {
    /// Invalid PDU Header Field; FEI is the offset of the field.
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU Sequence Error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header Digest Error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data Transfer Out of Range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data Transfer Limit Exceeded (R2T Limit Exceeded).
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported Parameter; FEI is the offset of the field.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Common header length in bytes.
pub const CH_LEN: usize = 8;
/// ICReq and ICResp: HLEN = PLEN = 128 bytes.
pub const IC_LEN: usize = 128;
/// CapsuleCmd header: CH + the 64-byte submission queue entry.
pub const CMD_HLEN: usize = 72;
/// CapsuleResp header: CH + the 16-byte completion queue entry.
pub const RESP_HLEN: usize = 24;
/// H2CData, C2HData, R2T and the termination PDUs: 24-byte headers.
pub const DATA_HLEN: usize = 24;
/// A digest's length in bytes.
pub const DIGEST_LEN: usize = 4;
/// The largest header ironvme reads, with its digest.
pub const MAX_HEADER: usize = IC_LEN + DIGEST_LEN;
/// A termination PDU carries at most this many bytes of the offending PDU's header.
pub const TERM_MAX_DATA: usize = 152 - DATA_HLEN;

/// Why a PDU was refused: the termination PDU's fatal error status and field offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} (FES {fes:#x}, byte {offset})")]
pub struct PduError {
    /// The Fatal Error Status ([`fes`]).
    pub fes: u16,
    /// The offset of the offending field in the PDU (the FEI), for header field errors.
    pub offset: u32,
    /// What was wrong, for logs.
    pub what: &'static str,
}

impl PduError {
    const fn field(offset: u32, what: &'static str) -> PduError {
        PduError {
            fes: fes::INVALID_HEADER_FIELD,
            offset,
            what,
        }
    }
}

/// The common header (CH), bytes 0..8 of every PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    /// PDU type ([`pdu_type`]).
    pub pdu_type: u8,
    /// Flags ([`flags`]).
    pub flags: u8,
    /// HLEN: header length in bytes, without the header digest.
    pub hlen: u8,
    /// PDO: offset of the data in the PDU, in bytes (0: no data).
    pub pdo: u8,
    /// PLEN: the whole PDU's length in bytes.
    pub plen: u32,
}

impl CommonHeader {
    /// Parses the first 8 bytes.
    pub fn parse(b: &[u8; CH_LEN]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: le32(b, 4),
        }
    }

    /// The 8 bytes.
    pub fn to_bytes(self) -> [u8; CH_LEN] {
        let p = self.plen.to_le_bytes();
        [self.pdu_type, self.flags, self.hlen, self.pdo, p[0], p[1], p[2], p[3]]
    }

    /// Whether a header digest follows the header.
    pub fn has_hdgst(self) -> bool {
        self.flags & flags::HDGST != 0
    }

    /// Whether a data digest follows the data.
    pub fn has_ddgst(self) -> bool {
        self.flags & flags::DDGST != 0
    }

    /// The header's bytes to read after the common header: the rest of the header, its
    /// digest if any, and the padding up to PDO when data follows (or up to PLEN when
    /// there is no data). Checks the fields against what the PDU type must have and what
    /// the connection negotiated (`hdgst`, `ddgst`), and that the lengths add up.
    ///
    /// Errors: [`PduError`] naming the field (HLEN at byte 2, PDO at 3, PLEN at 4, flags at
    /// 1, type at 0) or a header digest that was negotiated but not flagged.
    pub fn check(self, hdgst: bool, ddgst: bool, max_data: u32) -> Result<PduLayout, PduError> {
        let hlen = match self.pdu_type {
            pdu_type::IC_REQ => IC_LEN,
            pdu_type::CAPSULE_CMD => CMD_HLEN,
            pdu_type::H2C_DATA | pdu_type::H2C_TERM_REQ => DATA_HLEN,
            _ => return Err(PduError::field(0, "a PDU type a host does not send")),
        };
        if self.hlen as usize != hlen {
            return Err(PduError::field(2, "HLEN is not the PDU type's header length"));
        }
        let is_ic = self.pdu_type == pdu_type::IC_REQ;
        let term = self.pdu_type == pdu_type::H2C_TERM_REQ;
        // Digests apply after ICReq; a termination request has none.
        let want_h = hdgst && !is_ic && !term;
        if self.has_hdgst() != want_h {
            return Err(PduError::field(1, "HDGSTF does not match the negotiated header digest"));
        }
        let header = hlen + if want_h { DIGEST_LEN } else { 0 };
        let plen = self.plen as usize;
        if plen < header {
            return Err(PduError::field(4, "PLEN is shorter than the header"));
        }
        if is_ic || term || plen == header {
            // No data section (a termination request's data is the offending header, read
            // as padding up to PLEN, bounded here).
            if self.pdo != 0 && !term {
                return Err(PduError::field(3, "PDO is set on a PDU without data"));
            }
            if (is_ic && plen != IC_LEN) || plen > header + TERM_MAX_DATA {
                return Err(PduError::field(4, "PLEN is wrong for the PDU type"));
            }
            if self.has_ddgst() && !term {
                return Err(PduError::field(1, "DDGSTF on a PDU without data"));
            }
            return Ok(PduLayout {
                header,
                pad: plen - header,
                data: 0,
                ddgst: false,
            });
        }
        let want_d = ddgst;
        if self.has_ddgst() != want_d {
            return Err(PduError::field(1, "DDGSTF does not match the negotiated data digest"));
        }
        let pdo = self.pdo as usize;
        if pdo < header {
            return Err(PduError::field(3, "PDO points into the header"));
        }
        let trailer = if want_d { DIGEST_LEN } else { 0 };
        if plen < pdo + trailer + 1 {
            return Err(PduError::field(4, "PLEN leaves no room for the data"));
        }
        let data = plen - pdo - trailer;
        if data > max_data as usize {
            return Err(PduError {
                fes: fes::DATA_LIMIT_EXCEEDED,
                offset: 4,
                what: "the PDU carries more data than the target accepts",
            });
        }
        Ok(PduLayout {
            header,
            pad: pdo - header,
            data,
            ddgst: want_d,
        })
    }
}

/// Where a checked PDU's parts are, in bytes after the common header's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PduLayout {
    /// Header with its digest.
    pub header: usize,
    /// Padding between the header digest and the data (or the termination request's
    /// data, which is read and dropped).
    pub pad: usize,
    /// Data bytes.
    pub data: usize,
    /// Whether a data digest follows the data.
    pub ddgst: bool,
}

/// ICReq (NVMe/TCP 1.0 figure 27), bytes after the common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PFV: PDU format version (0).
    pub pfv: u16,
    /// HPDA: host PDU data alignment, in dwords, 0's based (data the controller sends
    /// starts at a multiple of (HPDA+1)×4 bytes).
    pub hpda: u8,
    /// Header digest asked for.
    pub hdgst: bool,
    /// Data digest asked for.
    pub ddgst: bool,
    /// MAXR2T: R2Ts the host accepts outstanding per command, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    /// Parses an ICReq's 128 bytes.
    ///
    /// Errors: an unsupported PFV (byte 8) or HPDA above 31 (byte 10).
    pub fn parse(b: &[u8]) -> Result<IcReq, PduError> {
        if b.len() < IC_LEN {
            return Err(PduError::field(4, "ICReq is shorter than 128 bytes"));
        }
        let pfv = le16(b, 8);
        if pfv != 0 {
            return Err(PduError {
                fes: fes::UNSUPPORTED_PARAMETER,
                offset: 8,
                what: "PDU format version other than 0",
            });
        }
        if b[10] > 31 {
            return Err(PduError {
                fes: fes::UNSUPPORTED_PARAMETER,
                offset: 10,
                what: "HPDA above 31",
            });
        }
        Ok(IcReq {
            pfv,
            hpda: b[10],
            hdgst: b[11] & 1 != 0,
            ddgst: b[11] & 2 != 0,
            maxr2t: le32(b, 12),
        })
    }
}

/// An ICResp: CPDA 0 (data from the host may start anywhere), the digests granted and
/// MAXH2CDATA in bytes.
pub fn ic_resp(hdgst: bool, ddgst: bool, maxh2cdata: u32) -> [u8; IC_LEN] {
    let mut b = [0u8; IC_LEN];
    b[..CH_LEN].copy_from_slice(
        &CommonHeader {
            pdu_type: pdu_type::IC_RESP,
            flags: 0,
            hlen: IC_LEN as u8,
            pdo: 0,
            plen: IC_LEN as u32,
        }
        .to_bytes(),
    );
    b[11] = hdgst as u8 | (ddgst as u8) << 1;
    b[12..16].copy_from_slice(&maxh2cdata.to_le_bytes());
    b
}

/// The fields of an H2CData PDU after the common header (also R2T's and C2HData's
/// shape): CCCID at 8, TTAG at 10, DATAO at 12, DATAL at 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// CCCID: the command's CID.
    pub cccid: u16,
    /// TTAG: the transfer tag of the R2T it answers (H2CData, R2T).
    pub ttag: u16,
    /// DATAO: offset of this PDU's data in the command's transfer, bytes.
    pub datao: u32,
    /// DATAL: this PDU's data length, bytes.
    pub datal: u32,
}

impl DataHeader {
    /// Parses bytes 8..24 of an H2CData header.
    pub fn parse(b: &[u8]) -> DataHeader {
        DataHeader {
            cccid: le16(b, 8),
            ttag: le16(b, 10),
            datao: le32(b, 12),
            datal: le32(b, 16),
        }
    }

    /// A 24-byte header of `pdu_type` (C2HData or R2T) with these fields.
    fn to_bytes(self, pdu_type: u8, flags: u8, pdo: u8, plen: u32) -> [u8; DATA_HLEN] {
        let mut b = [0u8; DATA_HLEN];
        b[..CH_LEN].copy_from_slice(
            &CommonHeader {
                pdu_type,
                flags,
                hlen: DATA_HLEN as u8,
                pdo,
                plen,
            }
            .to_bytes(),
        );
        b[8..10].copy_from_slice(&self.cccid.to_le_bytes());
        b[10..12].copy_from_slice(&self.ttag.to_le_bytes());
        b[12..16].copy_from_slice(&self.datao.to_le_bytes());
        b[16..20].copy_from_slice(&self.datal.to_le_bytes());
        b
    }
}

/// The most bytes an [`OutHeader`] holds: HPDA 31 puts a data PDU's data at byte 128.
const OUT_HEADER_MAX: usize = 128;

/// What the controller sends, built in place: a header of at most 24 bytes, its digest,
/// and the padding up to PDO (128 bytes in all at most). The data (if any) and its
/// digest go out beside it.
#[derive(Clone, Copy, Debug)]
pub struct OutHeader {
    bytes: [u8; OUT_HEADER_MAX],
    len: u8,
}

impl OutHeader {
    /// The header bytes to send, with digest and padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn new(header: &[u8], hdgst: bool, pad_to: usize) -> OutHeader {
        let mut bytes = [0u8; OUT_HEADER_MAX];
        bytes[..header.len()].copy_from_slice(header);
        let mut len = header.len();
        if hdgst {
            bytes[len..len + DIGEST_LEN].copy_from_slice(&digest(header).to_le_bytes());
            len += DIGEST_LEN;
        }
        let len = len.max(pad_to);
        OutHeader { bytes, len: len as u8 }
    }
}

/// Connection parameters that shape every PDU the controller sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// Header digests negotiated.
    pub hdgst: bool,
    /// Data digests negotiated.
    pub ddgst: bool,
    /// HPDA from the ICReq: data in PDUs to the host starts at a multiple of
    /// (HPDA+1)×4 bytes.
    pub hpda: u8,
}

impl Digests {
    fn flags(self, data: bool) -> u8 {
        (if self.hdgst { flags::HDGST } else { 0 }) | (if self.ddgst && data { flags::DDGST } else { 0 })
    }

    fn header_len(self, hlen: usize) -> usize {
        hlen + if self.hdgst { DIGEST_LEN } else { 0 }
    }

    /// PDO of a data PDU to the host: after the header and its digest, aligned to HPDA.
    fn data_offset(self, hlen: usize) -> usize {
        let align = (self.hpda as usize + 1) * 4;
        self.header_len(hlen).div_ceil(align) * align
    }

    /// A CapsuleResp carrying the 16-byte completion queue entry.
    pub fn capsule_resp(self, cqe: &[u8; 16]) -> OutHeader {
        let mut h = [0u8; RESP_HLEN];
        let plen = self.header_len(RESP_HLEN) as u32;
        h[..CH_LEN].copy_from_slice(
            &CommonHeader {
                pdu_type: pdu_type::CAPSULE_RESP,
                flags: self.flags(false),
                hlen: RESP_HLEN as u8,
                pdo: 0,
                plen,
            }
            .to_bytes(),
        );
        h[8..24].copy_from_slice(cqe);
        OutHeader::new(&h, self.hdgst, 0)
    }

    /// A C2HData header for `datal` bytes at `datao` of command `cccid`; its data (and,
    /// with data digests, the digest of the data) follow it.
    pub fn c2h_data(self, cccid: u16, datao: u32, datal: u32, last: bool, success: bool) -> OutHeader {
        let pdo = self.data_offset(DATA_HLEN);
        let plen = pdo + datal as usize + if self.ddgst { DIGEST_LEN } else { 0 };
        let f = self.flags(true) | if last { flags::LAST_PDU } else { 0 } | if success { flags::SUCCESS } else { 0 };
        let h = DataHeader {
            cccid,
            ttag: 0,
            datao,
            datal,
        }
        .to_bytes(pdu_type::C2H_DATA, f, pdo as u8, plen as u32);
        OutHeader::new(&h, self.hdgst, pdo)
    }

    /// An R2T asking for `len` bytes at `offset` of command `cccid` under `ttag`.
    pub fn r2t(self, cccid: u16, ttag: u16, offset: u32, len: u32) -> OutHeader {
        let plen = self.header_len(DATA_HLEN) as u32;
        let h = DataHeader {
            cccid,
            ttag,
            datao: offset,
            datal: len,
        }
        .to_bytes(pdu_type::R2T, self.flags(false), 0, plen);
        OutHeader::new(&h, self.hdgst, 0)
    }
}

/// A C2HTermReq for `err`, carrying the first bytes of the offending PDU's header
/// (`culprit`, at most [`TERM_MAX_DATA`] bytes). Sent without digests, as the
/// specification asks.
pub fn c2h_term_req(err: PduError, culprit: &[u8]) -> Vec<u8> {
    let culprit = &culprit[..culprit.len().min(TERM_MAX_DATA)];
    let mut b = vec![0u8; DATA_HLEN + culprit.len()];
    b[..CH_LEN].copy_from_slice(
        &CommonHeader {
            pdu_type: pdu_type::C2H_TERM_REQ,
            flags: 0,
            hlen: DATA_HLEN as u8,
            pdo: 0,
            plen: (DATA_HLEN + culprit.len()) as u32,
        }
        .to_bytes(),
    );
    b[8..10].copy_from_slice(&err.fes.to_le_bytes());
    b[10..14].copy_from_slice(&err.offset.to_le_bytes());
    b[DATA_HLEN..].copy_from_slice(culprit);
    b
}

/// CRC32C of `bytes`, as HDGST and DDGST carry it (little-endian on the wire).
pub fn digest(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(pdu_type: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader {
            pdu_type,
            flags,
            hlen,
            pdo,
            plen,
        }
    }

    #[test]
    fn the_common_header_round_trips() {
        let h = ch(pdu_type::CAPSULE_CMD, 3, 72, 76, 0x1234_5678);
        assert_eq!(CommonHeader::parse(&h.to_bytes()), h);
        assert_eq!(h.to_bytes(), [4, 3, 72, 76, 0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn capsules_with_and_without_data_and_digests() {
        // A command without data.
        let l = ch(pdu_type::CAPSULE_CMD, 0, 72, 0, 72)
            .check(false, false, 8192)
            .unwrap();
        assert_eq!((l.header, l.pad, l.data, l.ddgst), (72, 0, 0, false));
        // In-capsule data of 4096 bytes after a header digest, data digest on.
        let l = ch(pdu_type::CAPSULE_CMD, 3, 72, 76, 76 + 4096 + 4)
            .check(true, true, 8192)
            .unwrap();
        assert_eq!((l.header, l.pad, l.data, l.ddgst), (76, 0, 4096, true));
        // Padding up to a PDO of 128.
        let l = ch(pdu_type::H2C_DATA, 0, 24, 128, 128 + 512)
            .check(false, false, 8192)
            .unwrap();
        assert_eq!((l.header, l.pad, l.data), (24, 104, 512));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (ch(pdu_type::C2H_DATA, 0, 24, 0, 24), 0, fes::INVALID_HEADER_FIELD),
            (ch(pdu_type::CAPSULE_CMD, 0, 24, 0, 72), 2, fes::INVALID_HEADER_FIELD),
            (ch(pdu_type::CAPSULE_CMD, 1, 72, 0, 76), 1, fes::INVALID_HEADER_FIELD),
            (ch(pdu_type::CAPSULE_CMD, 0, 72, 0, 10), 4, fes::INVALID_HEADER_FIELD),
            (ch(pdu_type::CAPSULE_CMD, 0, 72, 8, 100), 3, fes::INVALID_HEADER_FIELD),
            (
                ch(pdu_type::CAPSULE_CMD, 0, 72, 72, 72 + 9000),
                4,
                fes::DATA_LIMIT_EXCEEDED,
            ),
            (ch(pdu_type::IC_REQ, 0, 128, 0, 129), 4, fes::INVALID_HEADER_FIELD),
            (ch(pdu_type::H2C_DATA, 2, 24, 24, 100), 1, fes::INVALID_HEADER_FIELD),
        ];
        for (h, offset, want) in cases {
            let e = h.check(false, false, 8192).unwrap_err();
            assert_eq!((e.offset, e.fes), (offset, want), "{h:?}: {e}");
        }
    }

    #[test]
    fn icreq_fields() {
        let mut b = [0u8; 128];
        b[10] = 3;
        b[11] = 3;
        b[12] = 7;
        let r = IcReq::parse(&b).unwrap();
        assert_eq!((r.hpda, r.hdgst, r.ddgst, r.maxr2t), (3, true, true, 7));
        b[8] = 1;
        assert_eq!(IcReq::parse(&b).unwrap_err().offset, 8);
        assert!(IcReq::parse(&b[..20]).is_err());
    }

    #[test]
    fn outgoing_pdus_have_the_lengths_the_host_checks() {
        let d = Digests {
            hdgst: true,
            ddgst: true,
            hpda: 1,
        };
        let c = d.c2h_data(7, 4096, 512, true, false);
        let h = CommonHeader::parse(c.as_bytes()[..8].try_into().unwrap());
        // Header 24 + digest 4 = 28, aligned to 8: PDO 32; PLEN adds data and digest.
        assert_eq!((h.pdo, h.plen, c.as_bytes().len()), (32, 32 + 512 + 4, 32));
        assert_eq!(h.flags, flags::HDGST | flags::DDGST | flags::LAST_PDU);
        assert_eq!(&c.as_bytes()[24..28], &digest(&c.as_bytes()[..24]).to_le_bytes());
        assert_eq!(DataHeader::parse(c.as_bytes()).datao, 4096);
        let r = Digests::default().capsule_resp(&[1; 16]);
        assert_eq!(r.as_bytes().len(), 24);
        assert_eq!(CommonHeader::parse(r.as_bytes()[..8].try_into().unwrap()).plen, 24);
        let t = c2h_term_req(PduError::field(2, "x"), &[9; 200]);
        assert_eq!(t.len(), 152);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 152);
    }

    #[test]
    fn the_digest_is_crc32c() {
        // The CRC-32C check value (RFC 3720, B.4): "123456789" gives 0xE3069283.
        assert_eq!(digest(b"123456789"), 0xE306_9283);
    }
}
