//! Replication: [`Vde::send`] writes a volume snapshot as a stream (`docs/vde-stream.md`),
//! whole or as the changes since an earlier snapshot, and [`Vde::recv`] applies one
//! atomically on another store, ZFS's `send`/`recv` over any pipe.
//!
//! # Finding the changes
//!
//! An incremental from base snapshot B (txg `b`) to snapshot S walks S's extent map and
//! skips every subtree whose pointer was born at or before `b`: copy-on-write gives a
//! node a birth at least that of anything below it, so such a subtree is shared with B
//! unchanged. Extents born after `b` are shipped as Write records; unchanged data is
//! never read. Ranges that B mapped and S does not (overwritten with zeros, zeroed or
//! deallocated) are shipped as Free records: B's extent map is walked skipping every
//! subtree S shares (the pointers the first walk skipped), so only B's rewritten leaves
//! are read, and what of their entries S's rewritten leaves do not cover is what S no
//! longer maps. Metadata read and memory are proportional to what
//! changed, not to the volume.
//!
//! # Receiving
//!
//! A stream is applied to a hidden volume `VOL%recv` (a clone of the base snapshot for an
//! incremental, a new volume for a full stream) that users do not see. Only when the
//! End record has verified does one txg make it the volume (for an incremental into an
//! existing volume: its extent map and dead list replace the volume's, which equal the
//! base's) and take the snapshot with the sender's GUID. A receive that stops, is killed
//! or loses power leaves the volume as it was and the hidden volume holding a prefix of
//! the stream (volume writes are durable in order): [`Vde::recv_token`] says where to
//! resume, `send -t` sends the rest, and `recv -A` ([`Vde::recv_abort`]) discards it.

use super::VdeError;
use super::block::{BLOCK, NodeKind};
use super::dataset::{
    DatasetKind, DatasetRec, Head, decode_entry, lookup, not_found, put_head, snapshot_head, store_rec, take_head,
    with_datasets,
};
use super::store::Vde;
use super::stream::{Record, StreamError, StreamHeader, StreamReader, StreamWriter};
use super::tree::{Tree, Visit};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use xxhash_rust::xxh3::xxh3_64;

/// A receive flushes what it wrote every this many bytes (a resume starts at most this
/// far back).
pub const RECV_FLUSH_BYTES: u64 = 8 << 20;

/// What a receive does to its volume ([`Vde::recv_target`]).
enum Target {
    /// The volume does not exist: a full stream makes it, an incremental makes it a
    /// clone of the base (name, record).
    New { base: Option<(String, DatasetRec)> },
    /// An incremental onto the existing volume, from its snapshot `base`; with -F, the
    /// `newer` snapshots are deleted and the volume (`written` since the base, or with
    /// newer snapshots) rolled back first.
    Existing {
        base: String,
        base_rec: DatasetRec,
        newer: Vec<String>,
        written: bool,
    },
}

/// The hidden volume a receive into `vol` writes.
pub fn recv_name(vol: &str) -> String {
    format!("{vol}%recv")
}

/// What [`Vde::send`] shipped (the statistics `vde send --json` prints).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SendStats {
    /// The snapshot sent (`VOL@SNAP`) and the base (`VOL@BASE`, or empty for a full
    /// stream).
    pub snapshot: String,
    /// The base snapshot, empty for a full stream.
    pub base: String,
    /// Data extents shipped (pieces of the extent map, up to 128 KiB each).
    pub extents: u64,
    /// Write records and the data bytes they carry.
    pub writes: u64,
    /// Data bytes in Write records.
    pub write_bytes: u64,
    /// Free records and the bytes they free.
    pub frees: u64,
    /// Bytes the Free records free.
    pub free_bytes: u64,
    /// Stream bytes, header and End record included.
    pub stream_bytes: u64,
    /// The volume's size at the snapshot, bytes.
    pub volume_bytes: u64,
    /// Volume blocks (4 KiB) neither written nor freed by the stream.
    pub blocks_skipped: u64,
    /// `stream_bytes / volume_bytes`.
    pub efficiency: f64,
}

/// What [`Vde::recv`] applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecvStats {
    /// The snapshot made, `VOL@SNAP`.
    pub snapshot: String,
    /// Write records applied and their data bytes.
    pub writes: u64,
    /// Data bytes written.
    pub write_bytes: u64,
    /// Free records applied.
    pub frees: u64,
    /// Bytes freed.
    pub free_bytes: u64,
    /// Stream bytes read.
    pub stream_bytes: u64,
    /// The volume offset the stream started at (non-zero for a resumed stream), bytes.
    pub resumed_at: u64,
}

/// Where an interrupted receive stopped: enough for the sender to send the rest
/// (ZFS's `receive_resume_token`). Text form: `1-TO-FROM-OFFSET-SUM`, hex fields, SUM the
/// low 32 bits of the xxh3-64 of the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeToken {
    /// The target snapshot's GUID.
    pub to_guid: u64,
    /// The base snapshot's GUID, 0 for a full stream.
    pub from_guid: u64,
    /// Volume bytes received: the resumed stream starts here (a multiple of 4096).
    pub offset: u64,
}

impl std::fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = format!("1-{:x}-{:x}-{:x}", self.to_guid, self.from_guid, self.offset);
        write!(f, "{body}-{:x}", xxh3_64(body.as_bytes()) as u32)
    }
}

impl std::str::FromStr for ResumeToken {
    type Err = VdeError;

    fn from_str(s: &str) -> Result<ResumeToken, VdeError> {
        let bad = || VdeError::Unsupported(format!("{s:?} is not a resume token (vde recv-token prints one)"));
        let (body, sum) = s.trim().rsplit_once('-').ok_or_else(bad)?;
        if u32::from_str_radix(sum, 16).ok() != Some(xxh3_64(body.as_bytes()) as u32) {
            return Err(bad());
        }
        let f: Vec<&str> = body.split('-').collect();
        if f.len() != 4 || f[0] != "1" {
            return Err(bad());
        }
        let hex = |x: &str| u64::from_str_radix(x, 16).map_err(|_| bad());
        let t = ResumeToken {
            to_guid: hex(f[1])?,
            from_guid: hex(f[2])?,
            offset: hex(f[3])?,
        };
        // One spelling per token: the one Display prints (no '+', capitals or leading
        // zeros).
        if t.to_guid == 0 || t.offset % BLOCK as u64 != 0 || t.to_string() != s.trim() {
            return Err(bad());
        }
        Ok(t)
    }
}

fn stream_err(e: StreamError) -> VdeError {
    match e {
        StreamError::Io(e) => VdeError::Io {
            what: "the stream".into(),
            source: Box::new(e),
        },
        e => VdeError::Unsupported(format!("refused: {e}")),
    }
}

/// Writes Write and Free records in volume order: a Write per piece of an extent as the
/// lane reads it (straight from its staging buffer), the Frees between them.
struct Emitter<W: Write> {
    w: StreamWriter<W>,
    /// Free ranges (blocks), ascending, not yet written.
    frees: std::vec::IntoIter<(u64, u64)>,
    next_free: Option<(u64, u64)>,
    /// Blocks before this were sent by an earlier stream (resume).
    skip_to: u64,
}

impl<W: Write> Emitter<W> {
    /// Frees starting before block `upto`.
    fn frees_before(&mut self, upto: u64) -> Result<(), VdeError> {
        while let Some((s, n)) = self.next_free.filter(|f| f.0 < upto) {
            let (s, n) = clip(s, n, self.skip_to);
            if n > 0 {
                self.w.free(s * BLOCK as u64, n * BLOCK as u64).map_err(stream_err)?;
            }
            self.next_free = self.frees.next();
        }
        Ok(())
    }
}

/// Appends range `s..s + n` (at or after the last one's start) to `out`, merging it with
/// the last one when they touch or overlap.
fn push_merged(out: &mut Vec<(u64, u64)>, s: u64, n: u64) {
    match out.last_mut() {
        Some(l) if s <= l.0 + l.1 => l.1 = l.1.max(s + n - l.0),
        _ => out.push((s, n)),
    }
}

/// `s..s + n` without the blocks before `from`.
fn clip(s: u64, n: u64, from: u64) -> (u64, u64) {
    if s >= from {
        (s, n)
    } else {
        (from, (s + n).saturating_sub(from))
    }
}

impl Vde {
    /// Every dataset with GUID `guid`, as (name, record); a received one keeps its
    /// sender's, so one store may not hold two with one GUID from one sender, but
    /// several would all be found.
    fn by_guid(&self, guid: u64) -> Result<Vec<(String, DatasetRec)>, VdeError> {
        Ok(self
            .datasets_with_prefix(b"")?
            .into_iter()
            .filter(|(_, r)| r.guid == guid)
            .map(|(n, r)| (String::from_utf8_lossy(&n).into_owned(), r))
            .collect())
    }

    /// The snapshot with GUID `guid`.
    fn snapshot_by_guid(&self, guid: u64, what: &str) -> Result<(String, DatasetRec), VdeError> {
        self.by_guid(guid)?
            .into_iter()
            .find(|(_, r)| r.kind == DatasetKind::Snapshot)
            .ok_or_else(|| VdeError::NotFound(format!("{what} (a snapshot with GUID {guid:#x}) is not on this store")))
    }

    /// Whether snapshot `base` precedes snapshot `snap` in `snap`'s history: an earlier
    /// snapshot of its volume, or of the volume its origin belongs to, and so on.
    fn precedes(&self, base: &str, base_rec: &DatasetRec, snap: &str, snap_rec: &DatasetRec) -> Result<bool, VdeError> {
        let (mut vol, mut upto) = (
            snap.split_once('@').map_or(snap, |x| x.0).to_string(),
            snap_rec.created_txg,
        );
        for _ in 0..1024 {
            if base.split_once('@').map(|x| x.0) == Some(vol.as_str()) && base_rec.created_txg < upto {
                return Ok(true);
            }
            let v = self.dataset(&vol)?;
            if v.origin.is_empty() {
                return Ok(false);
            }
            let origin = String::from_utf8_lossy(&v.origin).into_owned();
            let o = self.dataset(&origin)?;
            if base == origin {
                return Ok(true);
            }
            vol = origin.split_once('@').map_or(origin.as_str(), |x| x.0).to_string();
            upto = o.created_txg;
        }
        Ok(false)
    }

    /// Sends snapshot `snap` (`VOL@SNAP`) to `out` as a stream: whole, or with `base`
    /// (`VOL@BASE`, an earlier snapshot of its volume or of its origin's) the changes
    /// since it. `resume_offset` (bytes, a multiple of 4096) leaves out what an
    /// interrupted receive has ([`ResumeToken::offset`]); `progress` sees the volume
    /// offset reached (bytes).
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (not snapshots, a base
    /// that does not precede `snap`), [`VdeError::DataCorrupt`] (a data block fails its
    /// checksum: nothing more is sent, and the stream has no End record), I/O errors
    /// (the device's, or writing `out`).
    pub fn send(
        &self,
        snap: &str,
        base: Option<&str>,
        resume_offset: u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SendStats, VdeError> {
        let (vol, _) = snap
            .split_once('@')
            .ok_or_else(|| VdeError::Unsupported(format!("send a snapshot, VOL@SNAP, not {snap:?}")))?;
        let s = self.dataset(snap)?;
        let v = self.dataset(vol)?;
        let b = match base {
            None => None,
            Some(bn) => {
                let b = self.dataset(bn)?;
                if b.kind != DatasetKind::Snapshot || !self.precedes(bn, &b, snap, &s)? {
                    return Err(VdeError::Unsupported(format!(
                        "the base {bn} is not a snapshot earlier in {snap}'s history"
                    )));
                }
                Some(b)
            }
        };
        if resume_offset % BLOCK as u64 != 0 || resume_offset > s.size {
            return Err(VdeError::Unsupported(format!(
                "resume offset {resume_offset} in a volume of {} bytes",
                s.size
            )));
        }
        let min = b.as_ref().map_or(0, |b| b.created_txg);
        let frees = match &b {
            Some(b) => self.freed(&s, b)?,
            None => Vec::new(),
        };
        let header = StreamHeader {
            compat: 0,
            incompat: 0,
            store_uuid: self.state()?.sb.uuid,
            volume_guid: v.guid,
            from_guid: b.as_ref().map_or(0, |b| b.guid),
            from_txg: min,
            to_guid: s.guid,
            to_txg: s.created_txg,
            volume_bytes: s.size,
            name: snap.to_string(),
            resume_offset,
        };
        let mut stats = SendStats {
            snapshot: snap.to_string(),
            base: base.unwrap_or_default().to_string(),
            volume_bytes: s.size,
            ..SendStats::default()
        };
        let mut frees = frees.into_iter();
        let next_free = frees.next();
        let mut em = Emitter {
            w: StreamWriter::new(out, &header).map_err(stream_err)?,
            frees,
            next_free,
            skip_to: resume_offset / BLOCK as u64,
        };
        {
            let mut st = self.state()?;
            let (first, total) = (st.sb.pool_start(), st.sb.total_blocks);
            let end = s.size / BLOCK as u64;
            let mut lane = self.lane()?;
            Tree::walk(&mut st.io(), NodeKind::Extents, s.extents, min, &mut |vis| {
                let Visit::Entry { key, value } = vis else {
                    return Ok(());
                };
                let (vb, e) = decode_entry(key, value, first, total)?;
                // Nothing past the snapshot's size is its contents.
                let len = e.len.min(end.saturating_sub(vb));
                if e.birth <= min || len == 0 || vb + len <= em.skip_to {
                    return Ok(());
                }
                // The blocks to send, each piece checked and written as the lane reads it.
                let from = em.skip_to.saturating_sub(vb);
                let piece = e.slice(from, len - from);
                em.frees_before(vb + from)?;
                let mut at = 0;
                lane.read_with(piece.pba, piece.len as usize * BLOCK, &mut |bytes| {
                    let n = (bytes.len() / BLOCK) as u64;
                    self.vol_verify(snap, vb + from + at, &piece.slice(at, n), bytes)?;
                    em.w.write((vb + from + at) * BLOCK as u64, bytes).map_err(stream_err)?;
                    at += n;
                    Ok(())
                })?;
                stats.extents += 1;
                progress((vb + len) * BLOCK as u64);
                Ok(())
            })?;
        }
        em.frees_before(u64::MAX)?;
        let t = em.w.finish().map_err(stream_err)?;
        stats.writes = t.writes;
        stats.write_bytes = t.write_bytes;
        stats.frees = t.frees;
        stats.free_bytes = t.free_bytes;
        stats.stream_bytes = t.stream_bytes + super::stream::FRAME_BYTES as u64 + 40;
        let carried = (t.write_bytes + t.free_bytes) / BLOCK as u64;
        stats.blocks_skipped = (s.size / BLOCK as u64).saturating_sub(carried);
        stats.efficiency = stats.stream_bytes as f64 / s.size.max(1) as f64;
        progress(s.size);
        Ok(stats)
    }

    /// Ranges (blocks, ascending, merged) that base `b` maps and snapshot `s` does not,
    /// within `s`'s size. See the module's documentation.
    fn freed(&self, s: &DatasetRec, b: &DatasetRec) -> Result<Vec<(u64, u64)>, VdeError> {
        let min = b.created_txg;
        // S's rewritten leaves: every entry (any birth), and the subtrees S shares with B.
        let mut shared = HashSet::new();
        let mut smap: BTreeMap<u64, u64> = BTreeMap::new();
        let mut cand: Vec<(u64, u64)> = Vec::new();
        {
            let mut st = self.state()?;
            let (first, total) = (st.sb.pool_start(), st.sb.total_blocks);
            let mut prune = |p: &super::block::BlockPtr| {
                let old = p.birth <= min;
                if old {
                    shared.insert(p.addr);
                }
                old
            };
            Tree::walk_pruned(&mut st.io(), NodeKind::Extents, s.extents, &mut prune, &mut |vis| {
                if let Visit::Entry { key, value } = vis {
                    let (vb, e) = decode_entry(key, value, first, total)?;
                    smap.insert(vb, e.len);
                }
                Ok(())
            })?;
            Tree::walk_pruned(
                &mut st.io(),
                NodeKind::Extents,
                b.extents,
                &mut |p| shared.contains(&p.addr),
                &mut |vis| {
                    if let Visit::Entry { key, value } = vis {
                        let (vb, e) = decode_entry(key, value, first, total)?;
                        cand.push((vb, e.len));
                    }
                    Ok(())
                },
            )?;
        }
        // Every entry of a rewritten leaf of B that S still maps (whole or in pieces) is
        // in a rewritten leaf of S: a leaf S shares with B holds the same entries in both,
        // and one map never holds a key twice nor overlapping extents. So what S's
        // rewritten leaves leave uncovered of B's rewritten leaves is unmapped in S.
        let end = s.size / BLOCK as u64;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (v, n) in cand {
            let (v, e) = (v.min(end), (v + n).min(end));
            let mut at = v;
            if let Some((&k, &len)) = smap.range(..=v).next_back() {
                at = at.max((k + len).min(e));
            }
            for (&k, &len) in smap.range(at..e) {
                if k > at {
                    push_merged(&mut out, at, k - at);
                }
                at = at.max((k + len).min(e));
            }
            if at < e {
                push_merged(&mut out, at, e - at);
            }
        }
        Ok(out)
    }

    /// [`Vde::send`] for the rest of an interrupted receive: the snapshots are found by
    /// the token's GUIDs.
    ///
    /// Errors: as [`Vde::send`]; [`VdeError::NotFound`] when a snapshot it names is gone.
    pub fn send_resume(
        &self,
        token: &ResumeToken,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SendStats, VdeError> {
        // A store that received one snapshot twice holds two datasets with its GUID: take
        // a target and base that belong together.
        let snaps = |guid: u64, what: &str| -> Result<Vec<(String, DatasetRec)>, VdeError> {
            let v: Vec<_> = self
                .by_guid(guid)?
                .into_iter()
                .filter(|(_, r)| r.kind == DatasetKind::Snapshot)
                .collect();
            if v.is_empty() {
                return Err(VdeError::NotFound(format!(
                    "{what} (a snapshot with GUID {guid:#x}) is not on this store"
                )));
            }
            Ok(v)
        };
        let targets = snaps(token.to_guid, "the token's snapshot")?;
        let (snap, base) = if token.from_guid == 0 {
            (targets[0].0.clone(), None)
        } else {
            let bases = snaps(token.from_guid, "the token's base")?;
            let mut pair = None;
            'find: for (t, tr) in &targets {
                for (b, br) in &bases {
                    if self.precedes(b, br, t, tr)? {
                        pair = Some((t.clone(), Some(b.clone())));
                        break 'find;
                    }
                }
            }
            pair.ok_or_else(|| {
                VdeError::Unsupported(format!(
                    "the token's base (GUID {:#x}) does not precede its snapshot (GUID {:#x}) here",
                    token.from_guid, token.to_guid
                ))
            })?
        };
        self.send(&snap, base.as_deref(), token.offset, out, progress)
    }

    /// Where the interrupted receive into `vol` stopped, or `None` if none is waiting.
    ///
    /// Errors: I/O errors, [`VdeError::Corrupt`].
    pub fn recv_token(&self, vol: &str) -> Result<Option<ResumeToken>, VdeError> {
        let hidden = recv_name(vol);
        let mut st = self.state()?;
        let Some(h) = lookup(&mut st, hidden.as_bytes())? else {
            return Ok(None);
        };
        let from_guid = if h.origin.is_empty() {
            0
        } else {
            lookup(&mut st, &h.origin)?.ok_or_else(|| not_found(&h.origin))?.guid
        };
        Ok(Some(ResumeToken {
            to_guid: h.guid,
            from_guid,
            offset: h.recv_offset,
        }))
    }

    /// Discards the interrupted receive into `vol` (ZFS's `recv -A`). Returns whether
    /// there was one.
    ///
    /// Errors: I/O errors.
    pub fn recv_abort(&self, vol: &str) -> Result<bool, VdeError> {
        match self.vol_remove_named(&recv_name(vol), false) {
            Ok(()) => Ok(true),
            Err(VdeError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Receives a stream from `input` into volume `vol`: a full stream makes a new
    /// volume; an incremental applies onto `vol` (whose newest snapshot must be the
    /// stream's base, and which must not have been written since, unless `force`: then,
    /// once the stream has verified, newer snapshots are deleted and `vol` rolled back to
    /// the base), or makes `vol` a clone of the base when `vol` does not exist. The
    /// snapshot `vol@SNAP` appears, with the sender's GUID, only once the whole stream
    /// has verified; until then `vol` and its snapshots are unchanged. What arrives is
    /// made durable every [`RECV_FLUSH_BYTES`] and recorded for [`Vde::recv_token`]. A
    /// stream that continues a waiting receive (the same GUIDs, starting at or before
    /// where it stopped) resumes it. `progress` sees stream bytes read.
    ///
    /// Errors: [`VdeError::Unsupported`] for a refused stream (corrupt, truncated, of an
    /// unknown version or feature, out of range: the message says why; what arrived is
    /// kept for a resume or [`Vde::recv_abort`]) or a refused target (GUID mismatch,
    /// missing base, written since the base, a snapshot to delete with clones, another
    /// receive waiting); [`VdeError::Exists`], [`VdeError::NoSpace`], I/O errors.
    pub fn recv(
        &self,
        vol: &str,
        force: bool,
        input: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RecvStats, VdeError> {
        super::dataset::check_name("volume", vol)?;
        let mut r = StreamReader::new(input).map_err(stream_err)?;
        let h = r.header().clone();
        let snap_part = h.name.split_once('@').map_or("", |x| x.1).to_string();
        let full = format!("{vol}@{snap_part}");
        let hidden = recv_name(vol);
        match self.dataset(&full) {
            Ok(_) => return Err(VdeError::Exists(full)),
            Err(VdeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let target = self.recv_target(vol, &h, force)?;
        match self.recv_token(vol)? {
            Some(t) => {
                if t.to_guid != h.to_guid || t.from_guid != h.from_guid {
                    return Err(VdeError::Unsupported(format!(
                        "a partial receive into {vol} is waiting (resume it with `vde send -t {t}`, or discard it \
                         with `vde recv -A`); this stream is not its continuation"
                    )));
                }
                if h.resume_offset > t.offset {
                    return Err(VdeError::Unsupported(format!(
                        "the stream resumes at byte {}, but {vol}'s receive has only {} bytes: send with the token {t}",
                        h.resume_offset, t.offset
                    )));
                }
            }
            None if h.resume_offset > 0 => {
                return Err(VdeError::Unsupported(format!(
                    "the stream resumes a receive at byte {}, but none into {vol} is waiting",
                    h.resume_offset
                )));
            }
            None => self.recv_begin(&hidden, &h, &target)?,
        }
        let mut stats = RecvStats {
            snapshot: full.clone(),
            resumed_at: h.resume_offset,
            ..RecvStats::default()
        };
        let (mut unflushed, mut applied_to) = (0u64, h.resume_offset);
        loop {
            // What arrived becomes durable, and is recorded as arrived, every
            // RECV_FLUSH_BYTES: a resume starts at most that far back.
            if unflushed >= RECV_FLUSH_BYTES {
                self.recv_progress(&hidden, applied_to)?;
                unflushed = 0;
            }
            let rec = match r.next_record() {
                Ok(rec) => rec,
                Err(e) => {
                    // What was applied before the bad or missing record is good: record
                    // it, so a resume starts there.
                    let _ = self.recv_progress(&hidden, applied_to);
                    return Err(stream_err(e));
                }
            };
            match rec {
                Some(Record::Write { offset, data }) => {
                    self.vol_write(&hidden, offset / BLOCK as u64, &data, false)?;
                    stats.writes += 1;
                    stats.write_bytes += data.len() as u64;
                    unflushed += data.len() as u64;
                    applied_to = offset + data.len() as u64;
                }
                Some(Record::Free { offset, len }) => {
                    self.vol_unmap(&hidden, offset / BLOCK as u64, len / BLOCK as u64)?;
                    stats.frees += 1;
                    stats.free_bytes += len;
                    applied_to = offset + len;
                }
                None => break,
            }
            progress(r.position());
        }
        stats.stream_bytes = r.position();
        self.recv_progress(&hidden, h.volume_bytes)?;
        self.recv_finish(vol, &hidden, &full, &h, force)?;
        Ok(stats)
    }

    /// Makes what the receive into `hidden` wrote durable, then records `offset` (bytes
    /// of the volume whose records are applied) as where a resume would start.
    fn recv_progress(&self, hidden: &str, offset: u64) -> Result<(), VdeError> {
        self.vol_flush()?;
        let mut st = self.state()?;
        let mut hd = take_head(&mut st, hidden.as_bytes())?;
        hd.rec.recv_offset = offset;
        hd.dirty = true;
        put_head(&mut st, hidden.as_bytes(), hd);
        st.commit(&self.log)
    }

    /// What a stream with header `h` would do to `vol`, checked against the store as it
    /// is now; changes nothing. Checked when a receive starts or resumes, and again
    /// before it finishes.
    fn recv_target(&self, vol: &str, h: &StreamHeader, force: bool) -> Result<Target, VdeError> {
        let existing = match self.dataset(vol) {
            Ok(r) => Some(r),
            Err(VdeError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if h.from_guid == 0 {
            if existing.is_some() {
                return Err(VdeError::Exists(format!(
                    "{vol} (a full stream makes a new volume; receive it under another name)"
                )));
            }
            return Ok(Target::New { base: None });
        }
        if existing.is_none() {
            let (base, rec) = self.snapshot_by_guid(h.from_guid, "the stream's base")?;
            return Ok(Target::New {
                base: Some((base, rec)),
            });
        }
        // Listing the snapshots commits open heads: the volume's record below is current.
        let snaps = self.snapshots_of(vol)?;
        let v = self.dataset(vol)?;
        if v.kind != DatasetKind::Volume {
            return Err(VdeError::Unsupported(format!("{vol} is not a volume")));
        }
        if v.guid != h.volume_guid {
            return Err(VdeError::Unsupported(format!(
                "{vol} is another volume than the stream's (GUID {:#x}, the stream's {:#x})",
                v.guid, h.volume_guid
            )));
        }
        let Some(at) = snaps.iter().position(|(_, r)| r.guid == h.from_guid) else {
            return Err(VdeError::Unsupported(format!(
                "{vol} has no snapshot with the stream's base GUID {:#x}",
                h.from_guid
            )));
        };
        let base = String::from_utf8_lossy(&snaps[at].0).into_owned();
        let newer: Vec<String> = snaps[at + 1..]
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        let written = v.extents != snaps[at].1.extents || v.dead_blocks != 0;
        if !force && !newer.is_empty() {
            return Err(VdeError::Unsupported(format!(
                "{vol} has {} snapshot(s) newer than the stream's base {base}; -F deletes them",
                newer.len()
            )));
        }
        if !force && written {
            return Err(VdeError::Unsupported(format!(
                "{vol} was written after its snapshot {base}, the stream's base; -F rolls it back"
            )));
        }
        if let Some((n, r)) = snaps[at + 1..].iter().find(|(_, r)| r.clones > 0) {
            return Err(VdeError::Unsupported(format!(
                "-F would delete {}, which has {} clone(s); nothing was changed",
                String::from_utf8_lossy(n),
                r.clones
            )));
        }
        Ok(Target::Existing {
            base,
            base_rec: snaps[at].1.clone(),
            newer,
            written,
        })
    }

    /// Makes the hidden volume of a new receive, in one txg: a new volume or a clone of
    /// the base, of the stream's size when that is not smaller, carrying the target
    /// snapshot's GUID (which names the stream it receives).
    fn recv_begin(&self, hidden: &str, h: &StreamHeader, target: &Target) -> Result<(), VdeError> {
        let base = match target {
            Target::New { base: None } => return self.vol_create_named(hidden, h.volume_bytes, h.to_guid),
            Target::New { base: Some((b, _)) } => b,
            Target::Existing { base, .. } => base,
        };
        let (bv, bs) = base.split_once('@').expect("a snapshot name");
        self.clone_named(bv, bs, hidden, h.to_guid, h.volume_bytes)
    }

    /// Makes the hidden volume `vol` and snapshot `full`. With `force`, first deletes
    /// the snapshots newer than the base and rolls `vol` back (each its own txg); then
    /// one txg swaps or renames the hidden volume in and takes the snapshot.
    fn recv_finish(&self, vol: &str, hidden: &str, full: &str, h: &StreamHeader, force: bool) -> Result<(), VdeError> {
        if self.dataset(hidden)?.size != h.volume_bytes {
            self.vol_resize_named(hidden, h.volume_bytes)?;
        }
        let target = self.recv_target(vol, h, force)?;
        if let Target::Existing {
            base, newer, written, ..
        } = &target
        {
            for n in newer.iter().rev() {
                self.snap_remove(vol, n.split_once('@').map_or("", |x| x.1))?;
            }
            if *written || !newer.is_empty() {
                self.rollback(vol, base.split_once('@').map_or("", |x| x.1))?;
            }
        }
        let _t = self.topology();
        let mut st = self.state()?;
        // Every head's trees written: the records below are current.
        st.commit(&self.log)?;
        let hid = lookup(&mut st, hidden.as_bytes())?.ok_or_else(|| not_found(hidden.as_bytes()))?;
        let existing = lookup(&mut st, vol.as_bytes())?;
        // Checked again under the lock, before anything changes: refusing here leaves the
        // store as it was (and usable).
        let origin = match (&existing, &target) {
            (Some(v), Target::Existing { base_rec, .. }) => {
                let o = lookup(&mut st, &hid.origin)?.ok_or_else(|| not_found(&hid.origin))?;
                if v.extents != o.extents || v.dead_blocks != 0 || v.prev_txg != hid.prev_txg || o.guid != base_rec.guid
                {
                    return Err(VdeError::Unsupported(format!("{vol} changed during the receive")));
                }
                Some(o)
            }
            (None, Target::New { .. }) => None,
            _ => return Err(VdeError::Unsupported(format!("{vol} changed during the receive"))),
        };
        let r = (|| {
            match origin {
                Some(mut o) => {
                    // Into the existing volume, which holds exactly the base: the
                    // received extent map and dead list replace its own.
                    let mut vh = take_head(&mut st, vol.as_bytes())?;
                    vh.rec.extents = hid.extents;
                    vh.rec.deadlist = hid.deadlist;
                    vh.rec.refer_blocks = hid.refer_blocks;
                    vh.rec.dead_blocks = hid.dead_blocks;
                    vh.rec.size = hid.size;
                    vh.extents = Tree::open(NodeKind::Extents, hid.extents);
                    vh.deadlist = Tree::open(NodeKind::Deadlist, hid.deadlist);
                    vh.dirty = true;
                    let rec = vh.rec.clone();
                    put_head(&mut st, vol.as_bytes(), vh);
                    store_rec(&mut st, vol.as_bytes(), &rec)?;
                    o.clones = o.clones.saturating_sub(1);
                    store_rec(&mut st, &hid.origin, &o)?;
                }
                None => {
                    let rec = DatasetRec {
                        guid: h.volume_guid,
                        recv_offset: 0,
                        ..hid.clone()
                    };
                    st.heads.insert(vol.as_bytes().to_vec(), Head::new(rec.clone()));
                    store_rec(&mut st, vol.as_bytes(), &rec)?;
                }
            }
            st.heads.remove(hidden.as_bytes());
            with_datasets(&mut st, |t, st| t.remove(&mut st.io(), hidden.as_bytes()).map(|_| ()))?;
            snapshot_head(&mut st, vol.as_bytes(), full.as_bytes(), h.to_guid)
        })();
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_a_changed_one_is_refused() {
        let t = ResumeToken {
            to_guid: 0xfeed_beef_1234,
            from_guid: 0,
            offset: 16 << 20,
        };
        let text = t.to_string();
        assert_eq!(text.parse::<ResumeToken>().unwrap(), t);
        assert_eq!(format!(" {text}\n").parse::<ResumeToken>().unwrap(), t);
        for bad in [
            text.replacen("1-", "2-", 1),
            text.replacen("-1000000-", "-2000000-", 1),
            text.to_uppercase(),
            text.replacen("1-f", "1-+f", 1),
            text[..text.len() - 1].to_string(),
            String::new(),
        ] {
            assert!(bad.parse::<ResumeToken>().is_err(), "{bad:?}");
        }
    }
}
