//! The NBD server (`ironvme::export::nbd`) on hostile clients: its parsers of client bytes
//! (client flags, option headers, `NBD_OPT_INFO`/`NBD_OPT_GO` data, request headers),
//! its request checks, and whole sessions — handshake and transmission — run by
//! `serve_stream` on an in-memory duplex over a 1 MiB file-backed export.
//!
//! # Input
//!
//! - byte 0, bit 0 clear: the rest is the client's whole stream, handshake included.
//! - byte 0, bit 0 set: the rest is the transmission phase only, after a handshake the
//!   target writes itself (client flags, `NBD_OPT_GO` "disk"). The rest is read as
//!   requests: 28 bytes of header (its cookie replaced by the request's index), then, for
//!   a WRITE, its payload (zero-padded to the header's length when that is at most 64 KiB
//!   and the input runs out).
//!
//! Every input also goes through each parser.
//!
//! # Oracles
//!
//! 1. Nothing panics, whatever the bytes, and every session ends.
//! 2. Parsers are total and exact: a header that parses re-encodes to the same bytes; an
//!    `NBD_OPT_GO` payload that parses accounts for every byte.
//! 3. `classify` never accepts a read, write, trim or write zeroes that is misaligned or
//!    reaches past the export, or a READ or WRITE longer than the maximum payload.
//! 4. Transmission mode: the server's output is the expected handshake, then replies with
//!    the simple-reply magic, each naming a request that was sent and not yet answered,
//!    a successful READ's reply carrying exactly its length of data; every request read
//!    before the client's stream ends (short of `NBD_CMD_DISC`, a bad magic or a WRITE
//!    too long to discard) is answered exactly once, with the error `classify` gives, or
//!    success.

#![no_main]

use ironvme::export::nbd::wire::*;
use ironvme::export::nbd::{Action, Export, MAX_DRAIN_BYTES, Plan, Ready, Transport, classify, serve_stream};
use ironvme::export::{Backing, Stop};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const EXPORT_BYTES: u64 = 1 << 20;

fn exports() -> &'static [Export] {
    static EXPORTS: OnceLock<Vec<Export>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ironvme-fuzz-nbd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.img");
        std::fs::File::create(&file).unwrap().set_len(EXPORT_BYTES).unwrap();
        let backing = Backing::open(file.to_str().unwrap()).unwrap();
        vec![Export {
            name: "disk".into(),
            backing: Arc::new(backing),
        }]
    })
}

/// What the client sent, per request index: kind, length, and the reply expected.
struct Sent {
    kind: u16,
    length: u32,
    expect: u32,
}

/// The server's output as a client reads it: the handshake's bytes, then replies.
#[derive(Default)]
struct Replies {
    /// Bytes of output expected before the first reply (transmission mode), or `None`.
    prefix: Option<Vec<u8>>,
    at: usize,
    header: Vec<u8>,
    /// Data bytes of a READ reply still to skip.
    skip: u64,
    answered: Vec<Option<u32>>,
    sent: Vec<Sent>,
    /// All output bytes (raw mode keeps only the first 18, the greeting).
    greeting: Vec<u8>,
}

impl Replies {
    fn feed(&mut self, mut b: &[u8]) {
        if self.greeting.len() < 18 {
            let n = (18 - self.greeting.len()).min(b.len());
            self.greeting.extend_from_slice(&b[..n]);
        }
        let Some(plen) = self.prefix.as_ref().map(Vec::len) else {
            return;
        };
        while !b.is_empty() {
            if self.at < plen {
                let n = (plen - self.at).min(b.len());
                let prefix = self.prefix.as_deref().unwrap_or_default();
                assert_eq!(&b[..n], &prefix[self.at..self.at + n], "handshake output");
                self.at += n;
                b = &b[n..];
            } else if self.skip > 0 {
                let n = (self.skip as usize).min(b.len());
                self.skip -= n as u64;
                b = &b[n..];
            } else {
                let n = (SIMPLE_REPLY_BYTES - self.header.len()).min(b.len());
                self.header.extend_from_slice(&b[..n]);
                b = &b[n..];
                if self.header.len() == SIMPLE_REPLY_BYTES {
                    self.reply();
                }
            }
        }
    }

    fn reply(&mut self) {
        let h = std::mem::take(&mut self.header);
        assert_eq!(h[..4], SIMPLE_REPLY_MAGIC.to_be_bytes(), "reply magic");
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap()) as usize;
        let sent = self.sent.get(cookie).expect("a reply to a request never sent");
        let slot = &mut self.answered[cookie];
        assert!(slot.is_none(), "request {cookie} answered twice");
        *slot = Some(error);
        if sent.kind == CMD_READ && error == 0 {
            self.skip = sent.length as u64;
        }
    }
}

/// An in-memory duplex: the client's bytes in, the server's bytes to a checker.
struct Duplex<'a> {
    input: &'a [u8],
    out: Replies,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.feed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Duplex<'_> {
    fn wait(&mut self, _what: Ready, _timeout: Duration) -> io::Result<()> {
        Ok(()) // reads never block: the input ends with the end of the stream
    }
}

fn parsers(b: &[u8], plan: &Plan) {
    match Request::parse(b) {
        Ok(r) => {
            assert_eq!(r.to_bytes()[..], b[..REQUEST_BYTES], "request re-encodes");
            check_classify(&r, plan);
        }
        Err(WireError::Short { .. }) => assert!(b.len() < REQUEST_BYTES),
        Err(_) => assert_ne!(b[..4], REQUEST_MAGIC.to_be_bytes()),
    }
    if let Ok(h) = OptionHeader::parse(b) {
        assert_eq!(h.to_bytes()[..], b[..OPTION_HEADER_BYTES], "option header re-encodes");
    }
    if let Ok(f) = ClientFlags::parse(b) {
        let v = u32::from_be_bytes(b[..4].try_into().unwrap());
        assert_eq!(v, f.fixed_newstyle as u32 | (f.no_zeroes as u32) << 1);
    }
    if let Ok(r) = InfoRequest::parse(b) {
        assert_eq!(4 + r.name.len() + 2 + r.infos.len(), b.len(), "GO data accounted for");
        assert!(r.name.len() <= MAX_STRING_BYTES);
    }
}

fn check_classify(r: &Request, plan: &Plan) {
    let bs = plan.block_size as u64;
    let within = |lba: u64, blocks: u64| {
        blocks > 0 && (lba + blocks) * bs <= plan.size_bytes && r.offset == lba * bs && r.length as u64 == blocks * bs
    };
    match classify(r, plan) {
        Ok(Action::Read { lba, blocks }) | Ok(Action::Write { lba, blocks, .. }) => {
            assert!(within(lba, blocks) && blocks * bs <= plan.max_payload as u64, "{r:?}");
        }
        Ok(Action::WriteZeroes { lba, blocks, .. }) | Ok(Action::Trim { lba, blocks, .. }) => {
            assert!(within(lba, blocks), "{r:?}");
        }
        Ok(Action::Nothing) => assert!(r.length == 0 || r.kind == CMD_TRIM, "{r:?}"),
        Ok(Action::Flush) => assert_eq!(r.kind, CMD_FLUSH),
        Ok(Action::Disconnect) => assert_eq!(r.kind, CMD_DISC),
        Err(e) => assert!(e == EINVAL || e == ENOSPC),
    }
}

/// The client's stream for transmission mode, and what it sent.
fn transmission_stream(mut b: &[u8], plan: &Plan) -> (Vec<u8>, Vec<Sent>) {
    let mut s = 3u32.to_be_bytes().to_vec();
    let mut go = vec![0, 0, 0, 4];
    go.extend_from_slice(b"disk");
    go.extend_from_slice(&[0, 0]);
    s.extend_from_slice(
        &OptionHeader {
            option: OPT_GO,
            len: go.len() as u32,
        }
        .to_bytes(),
    );
    s.extend_from_slice(&go);
    let mut sent = Vec::new();
    while b.len() >= REQUEST_BYTES {
        let Ok(mut r) = Request::parse(b) else {
            break; // a bad magic: the server closes here
        };
        b = &b[REQUEST_BYTES..];
        r.cookie = sent.len() as u64;
        s.extend_from_slice(&r.to_bytes());
        let expect = classify(&r, plan).err().unwrap_or(0);
        let mut last = r.kind == CMD_DISC;
        if r.kind == CMD_WRITE && expect != 0 && r.length as u64 > MAX_DRAIN_BYTES {
            last = true; // answered at once, then closed: the payload is never read
        } else if r.kind == CMD_WRITE {
            let len = r.length as usize;
            let n = len.min(b.len());
            s.extend_from_slice(&b[..n]);
            b = &b[n..];
            if n < len {
                if len > 64 << 10 {
                    break; // the payload never arrives whole: no reply is due
                }
                s.resize(s.len() + len - n, 0);
            }
        }
        if r.kind != CMD_DISC {
            sent.push(Sent {
                kind: r.kind,
                length: r.length,
                expect,
            });
        }
        if last {
            break;
        }
    }
    s.extend_from_slice(b);
    (s, sent)
}

fn handshake_output(plan: &Plan) -> Vec<u8> {
    let mut o = greeting().to_vec();
    o.extend_from_slice(&option_reply(OPT_GO, REP_INFO, 12));
    o.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    o.extend_from_slice(&export_size_flags(plan.size_bytes, plan.transmission_flags()));
    o.extend_from_slice(&option_reply(OPT_GO, REP_INFO, 14));
    let (min, preferred, max) = plan.block_sizes();
    o.extend_from_slice(&info_block_size(min, preferred, max));
    o.extend_from_slice(&option_reply(OPT_GO, REP_ACK, 0));
    o
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let exports = exports();
    let plan = Plan::new(&exports[0].backing.info, true).unwrap();
    for at in 0..rest.len().min(64) {
        parsers(&rest[at..], &plan);
    }
    let stop = Stop::default();
    if mode & 1 == 0 {
        let mut d = Duplex {
            input: rest,
            out: Replies::default(),
        };
        let _ = serve_stream(&mut d, "fuzz", exports, &stop);
        assert_eq!(d.out.greeting, greeting(), "the session starts with the greeting");
        return;
    }
    let (stream, sent) = transmission_stream(rest, &plan);
    let mut d = Duplex {
        input: &stream,
        out: Replies {
            prefix: Some(handshake_output(&plan)),
            answered: sent.iter().map(|_| None).collect(),
            sent,
            ..Default::default()
        },
    };
    serve_stream(&mut d, "fuzz", exports, &stop).unwrap();
    let out = &d.out;
    assert!(out.header.is_empty() && out.skip == 0, "a reply was cut short");
    for (i, (s, got)) in out.sent.iter().zip(&out.answered).enumerate() {
        assert_eq!(*got, Some(s.expect), "request {i} (command {})", s.kind);
    }
});
