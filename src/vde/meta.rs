//! Metadata: the block cache, the write-ahead journal, checkpoints and replay.
//!
//! Every metadata change is made to a block image in the current transaction
//! ([`Meta::write`]). [`Meta::commit`] writes the transaction to the journal as one run
//! of blocks — a descriptor, the block images, a commit record — and flushes; only then
//! is the change acknowledged, and only then do the images count as committed. Committed
//! images stay in memory ("dirty") until a checkpoint writes them to their home blocks,
//! flushes, and records in the superblock that the journal is empty. Replay at open
//! re-applies every complete transaction the superblock has not yet checkpointed.
//!
//! Memory is bounded: dirty images never outnumber the journal's blocks (a checkpoint
//! runs first), and clean blocks sit in an LRU cache of a fixed number of blocks.

use super::VdeError;
use super::bitmap::Bitmap;
use super::btree::{Node, NodeStore};
use super::format::*;
use super::lane::Lane;
use lru::LruCache;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use xxhash_rust::xxh3::xxh3_64;

/// Bytes of a descriptor before its entries.
const DESC_HEADER: usize = 32;
/// Largest number of block images in one transaction.
const MAX_TX_BLOCKS: usize = 160;

/// The metadata state, used under the VDE's global metadata lock.
pub struct Meta {
    /// Where the regions are.
    pub layout: Layout,
    /// The superblock as last written.
    pub sb: Superblock,
    pub(super) lane: Lane,
    clean: LruCache<u64, Box<Block>>,
    dirty: HashMap<u64, Box<Block>>,
    tx: BTreeMap<u64, Box<Block>>,
    /// New data extents the current transaction makes reachable (checked at replay when
    /// it is the journal's last transaction).
    tx_data: Vec<DataExtent>,
    /// The sequence number of the transaction being built.
    pub seq: u64,
    jpos: u64,
    /// Inode allocation map.
    pub inode_map: Bitmap,
    /// Key-index node allocation map (node 0, the header, is always set).
    pub index_map: Bitmap,
    /// Data-block allocation map as the committed metadata has it.
    pub data_map: Bitmap,
    /// Root node of the key index (0: empty) and object count, from the index header.
    pub root: u64,
    /// Objects in the store.
    pub objects: u64,
    /// Where the next inode search starts.
    pub inode_hint: u64,
    /// Set when a metadata write failed: the in-memory state may then differ from the
    /// device and nothing more is written until the store is reopened.
    pub poisoned: Option<String>,
    /// Counters for reports.
    pub stats: MetaStats,
    /// Superblock copies that were damaged at open (the next checkpoint rewrote them).
    pub bad_superblocks: Vec<String>,
    repair_superblock: bool,
    /// Opened read-only: nothing is ever written (see [`Meta::open`]).
    read_only: bool,
}

/// Counters of metadata work since open.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MetaStats {
    /// Transactions committed.
    pub commits: u64,
    /// Checkpoints done.
    pub checkpoints: u64,
    /// Transactions replayed at open.
    pub replayed: u64,
    /// A torn last transaction was discarded at open (its data was not all on the device).
    pub discarded_torn: bool,
}

impl Meta {
    /// Opens the metadata of a formatted store: picks the newer valid superblock, reads
    /// the region directory, replays the journal and checkpoints, then loads the
    /// allocation maps and the index header.
    ///
    /// `read_only`: only reads, ever. Replay then only reads the journal to see whether
    /// the store is clean; if a checkpoint would have to write anything (transactions not
    /// yet checkpointed, a damaged superblock copy to repair) the open fails with
    /// [`VdeError::NeedsRecovery`]. Later commits fail with [`VdeError::ReadOnly`] and
    /// checkpoints do nothing.
    ///
    /// Errors: [`VdeError::NotFormatted`], [`VdeError::Corrupt`], [`VdeError::NeedsRecovery`],
    /// I/O errors.
    pub fn open(mut lane: Lane, device_blocks: u64, cache_blocks: usize, read_only: bool) -> Result<Meta, VdeError> {
        let mut sbs = Vec::new();
        let mut errors = Vec::new();
        let mut raw = vec![0u8; 2 * BLOCK];
        lane.read(0, &mut raw)?;
        if raw.iter().all(|&b| b == 0) {
            return Err(VdeError::NotFormatted);
        }
        for (i, &at) in SUPER_BLOCKS.iter().enumerate() {
            let b: &Block = raw[i * BLOCK..(i + 1) * BLOCK].try_into().expect("one block");
            match Superblock::decode(b, at) {
                Ok(sb) => sbs.push(sb),
                Err(e @ VdeError::Unsupported(_)) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        let Some(sb) = sbs.iter().copied().max_by_key(|s| s.generation) else {
            return Err(errors.into_iter().next().unwrap_or(VdeError::NotFormatted));
        };
        let bad_superblocks: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        // The format counts 4 KiB blocks, so a store reads the same through any logical
        // block size that divides 4 KiB (a file opened with 512 B or 4 KiB blocks): the
        // superblock's lba_size is informational.
        let mut dir = Box::new([0u8; BLOCK]);
        lane.read(REGION_DIR_BLOCK, &mut dir[..])?;
        let layout = Layout::decode(&dir, device_blocks)?;
        if layout.total_blocks != sb.total_blocks {
            return Err(VdeError::Corrupt {
                block: REGION_DIR_BLOCK,
                kind: Kind::RegionDir.name(),
                reason: format!(
                    "covers {} blocks, the superblock says {}",
                    layout.total_blocks, sb.total_blocks
                ),
            });
        }
        let mut meta = Meta {
            layout,
            sb,
            lane,
            clean: LruCache::new(NonZeroUsize::new(cache_blocks.max(16)).expect("non-zero")),
            dirty: HashMap::new(),
            tx: BTreeMap::new(),
            tx_data: Vec::new(),
            seq: sb.journal_seq,
            jpos: 0,
            inode_map: Bitmap::new(layout.inode_count()),
            index_map: Bitmap::new(layout.index_nodes()),
            data_map: Bitmap::new(layout.data.blocks),
            root: 0,
            objects: 0,
            inode_hint: 0,
            poisoned: None,
            stats: MetaStats::default(),
            repair_superblock: !bad_superblocks.is_empty(),
            bad_superblocks,
            read_only,
        };
        meta.replay()?;
        if read_only {
            meta.check_clean()?;
        }
        meta.checkpoint()?;
        meta.load_committed()?;
        Ok(meta)
    }

    /// For a read-only open after replay: fails with [`VdeError::NeedsRecovery`] when a
    /// checkpoint would write (replayed transactions, a superblock copy to repair).
    fn check_clean(&self) -> Result<(), VdeError> {
        let mut why = Vec::new();
        if !self.dirty.is_empty() || self.seq != self.sb.journal_seq {
            why.push(format!(
                "its journal holds {} transaction(s) not yet checkpointed",
                self.stats.replayed
            ));
        }
        if self.repair_superblock {
            why.push(format!(
                "a superblock copy is damaged ({})",
                self.bad_superblocks.join("; ")
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(VdeError::NeedsRecovery(why.join(", and ")))
        }
    }

    /// Loads the allocation maps and the index header from the committed state.
    fn load_committed(&mut self) -> Result<(), VdeError> {
        self.load_maps()?;
        let h = self.read(self.layout.index.start, Kind::IndexHeader)?;
        self.root = get64(&h[..], 0);
        self.objects = get64(&h[..], 8);
        if self.root >= self.layout.index_nodes() {
            return Err(VdeError::Corrupt {
                block: self.layout.index.start,
                kind: Kind::IndexHeader.name(),
                reason: format!("root node {} is outside the index", self.root),
            });
        }
        Ok(())
    }

    /// Abandons the current transaction and reloads the in-memory state from the
    /// committed metadata.
    ///
    /// Errors: reading the committed state (the caller then poisons the store).
    pub fn rollback(&mut self) -> Result<(), VdeError> {
        // Every in-memory change puts a block in the transaction: none, nothing to undo.
        if self.tx.is_empty() {
            return Ok(());
        }
        self.tx.clear();
        self.tx_data.clear();
        self.load_committed()
    }

    fn load_maps(&mut self) -> Result<(), VdeError> {
        let l = self.layout;
        for (region, which) in [(l.index_map, 0), (l.inode_map, 1), (l.data_map, 2)] {
            for n in 0..region.blocks {
                let b = self.read(region.start + n, Kind::Bitmap)?;
                let map = match which {
                    0 => &mut self.index_map,
                    1 => &mut self.inode_map,
                    _ => &mut self.data_map,
                };
                map.load_block(n, &b[..PAYLOAD]);
                if n + 1 == region.blocks && !map.tail_is_clear() {
                    return Err(VdeError::Corrupt {
                        block: region.start + n,
                        kind: Kind::Bitmap.name(),
                        reason: "bits set beyond the end of the map".into(),
                    });
                }
            }
        }
        if !self.index_map.get(0) {
            return Err(VdeError::Corrupt {
                block: l.index_map.start,
                kind: Kind::Bitmap.name(),
                reason: "the index header's bit is clear".into(),
            });
        }
        Ok(())
    }

    /// A copy of metadata block `blockno`, which must be of `kind`: from the current
    /// transaction, the committed images, the cache, or the device (verified).
    ///
    /// Errors: [`VdeError::Corrupt`] naming the block; I/O errors.
    pub fn read(&mut self, blockno: u64, kind: Kind) -> Result<Box<Block>, VdeError> {
        self.read_kinds(blockno, &[kind]).map(|(b, _)| b)
    }

    /// Like [`Meta::read`] for a block that may be any of `kinds`; returns its kind.
    ///
    /// Errors: as [`Meta::read`].
    pub fn read_kinds(&mut self, blockno: u64, kinds: &[Kind]) -> Result<(Box<Block>, Kind), VdeError> {
        let kind_of = |b: &Block| {
            Kind::from_u32(get32(b, PAYLOAD + 4))
                .filter(|k| kinds.contains(k))
                .unwrap_or(kinds[0])
        };
        if let Some(b) = self.tx.get(&blockno).or_else(|| self.dirty.get(&blockno)) {
            return Ok((b.clone(), kind_of(b)));
        }
        if let Some(b) = self.clean.get(&blockno) {
            return Ok((b.clone(), kind_of(b)));
        }
        let mut b = Box::new([0u8; BLOCK]);
        self.lane.read(blockno, &mut b[..])?;
        let kind = kind_of(&b);
        verify(&b, kind, blockno)?;
        self.clean.put(blockno, b.clone());
        Ok((b, kind))
    }

    /// Puts block `blockno` (payload filled, trailer not yet) into the current
    /// transaction as a `kind` block.
    pub fn write(&mut self, blockno: u64, kind: Kind, mut block: Box<Block>) {
        seal(&mut block, kind, self.seq, blockno);
        self.clean.pop(&blockno);
        self.tx.insert(blockno, block);
    }

    /// Records that the current transaction makes `e` reachable.
    pub fn note_new_data(&mut self, e: DataExtent) {
        self.tx_data.push(e);
    }

    /// Writes the allocation-map block holding bit `bit` of `which` map into the
    /// transaction.
    pub fn write_map_block(&mut self, which: MapKind, bit: u64) {
        let n = Bitmap::block_of(bit);
        let (region, map) = match which {
            MapKind::Index => (self.layout.index_map, &self.index_map),
            MapKind::Inode => (self.layout.inode_map, &self.inode_map),
            MapKind::Data => (self.layout.data_map, &self.data_map),
        };
        let mut b = Box::new([0u8; BLOCK]);
        map.store_block(n, &mut b[..PAYLOAD]);
        self.write(region.start + n, Kind::Bitmap, b);
    }

    /// Writes the index header (root, object count) into the transaction.
    pub fn write_header(&mut self) {
        let mut b = Box::new([0u8; BLOCK]);
        put64(&mut b[..], 0, self.root);
        put64(&mut b[..], 8, self.objects);
        self.write(self.layout.index.start, Kind::IndexHeader, b);
    }

    /// Reads inode `ino`.
    ///
    /// Errors: [`VdeError::Corrupt`] (bad block, or a slot that does not decode or is
    /// free, or an extent outside the data region, or more extent blocks than the data
    /// region holds: what a reader would otherwise allocate for the object is bounded by
    /// the device); I/O errors.
    pub fn inode(&mut self, ino: u64) -> Result<Inode, VdeError> {
        let (blockno, slot) = self.inode_slot(ino)?;
        let b = self.read(blockno, Kind::Inodes)?;
        let corrupt = |reason: String| VdeError::Corrupt {
            block: blockno,
            kind: Kind::Inodes.name(),
            reason: format!("inode {ino}: {reason}"),
        };
        let inode = match Inode::decode(&b[slot..slot + INODE_SIZE]).map_err(corrupt)? {
            Some(i) => i,
            None => return Err(corrupt("the index points at a free inode".into())),
        };
        let data = self.layout.data;
        if let Some(e) = inode
            .extents
            .iter()
            .find(|e| e.start < data.start || e.start + e.blocks > data.end())
        {
            return Err(corrupt(format!("an extent outside the data region: {e:?}")));
        }
        let blocks: u64 = inode.extents.iter().map(|e| e.blocks).sum();
        if blocks > data.blocks {
            return Err(corrupt(format!(
                "{blocks} extent blocks, more than the data region's {}",
                data.blocks
            )));
        }
        Ok(inode)
    }

    fn inode_slot(&self, ino: u64) -> Result<(u64, usize), VdeError> {
        if ino >= self.layout.inode_count() {
            return Err(VdeError::Corrupt {
                block: self.layout.index.start,
                kind: Kind::IndexLeaf.name(),
                reason: format!("inode number {ino} is outside the inode table"),
            });
        }
        Ok((
            self.layout.inodes.start + ino / INODES_PER_BLOCK,
            (ino % INODES_PER_BLOCK) as usize * INODE_SIZE,
        ))
    }

    /// Writes inode `ino` (or frees its slot, for `None`) into the transaction.
    ///
    /// Errors: reading the inode block.
    pub fn set_inode(&mut self, ino: u64, inode: Option<&Inode>) -> Result<(), VdeError> {
        let (blockno, slot) = self.inode_slot(ino)?;
        let mut b = self.read(blockno, Kind::Inodes)?;
        match inode {
            Some(i) => i.encode(&mut b[slot..slot + INODE_SIZE]),
            None => b[slot..slot + INODE_SIZE].fill(0),
        }
        self.write(blockno, Kind::Inodes, b);
        Ok(())
    }

    /// Makes the current transaction durable: journal write and flush (checkpointing
    /// first if the journal lacks room). Data the transaction references must have been
    /// written before; the flush makes it durable too.
    ///
    /// Errors: I/O errors; the store is then poisoned.
    pub fn commit(&mut self) -> Result<(), VdeError> {
        self.check_poison()?;
        if self.tx.is_empty() {
            return Ok(());
        }
        if self.read_only {
            self.tx.clear();
            self.tx_data.clear();
            return Err(VdeError::ReadOnly);
        }
        let n = self.tx.len();
        let room = PAYLOAD - DESC_HEADER - 24 * self.tx_data.len();
        if n > MAX_TX_BLOCKS || n * 16 > room {
            return self.poison(format!("a transaction of {n} blocks is larger than the journal allows"));
        }
        let need = n as u64 + 2;
        if self.jpos + need > self.layout.journal.blocks || self.dirty.len() + n > self.layout.journal.blocks as usize {
            self.checkpoint()?;
        }
        let r = self.write_tx();
        match r {
            Ok(()) => {
                let tx = std::mem::take(&mut self.tx);
                self.dirty.extend(tx);
                self.tx_data.clear();
                self.jpos += need;
                self.seq += 1;
                self.stats.commits += 1;
                Ok(())
            }
            Err(e) => self.poison(format!("journal write failed: {e}")),
        }
    }

    fn write_tx(&mut self) -> Result<(), VdeError> {
        let n = self.tx.len();
        let start = self.layout.journal.start + self.jpos;
        let mut run = vec![0u8; (n + 2) * BLOCK];
        let (desc, rest) = run.split_at_mut(BLOCK);
        put64(desc, 0, self.seq);
        put32(desc, 8, n as u32);
        put32(desc, 12, self.tx_data.len() as u32);
        desc[16..32].copy_from_slice(&self.sb.uuid);
        let mut at = DESC_HEADER;
        for (i, (home, img)) in self.tx.iter().enumerate() {
            put64(desc, at, *home);
            put64(desc, at + 8, xxh3_64(&img[..]));
            at += 16;
            rest[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(&img[..]);
        }
        for e in &self.tx_data {
            put64(desc, at, e.start);
            put64(desc, at + 8, e.blocks);
            put64(desc, at + 16, e.checksum);
            at += 24;
        }
        let desc: &mut Block = desc.try_into().expect("one block");
        seal(desc, Kind::JournalDescriptor, self.seq, start);
        let desc_sum = xxh3_64(&desc[..]);
        let commit: &mut Block = (&mut rest[n * BLOCK..]).try_into().expect("one block");
        put64(commit, 0, self.seq);
        put32(commit, 8, n as u32);
        put64(commit, 16, desc_sum);
        commit[24..40].copy_from_slice(&self.sb.uuid);
        seal(commit, Kind::JournalCommit, self.seq, start + n as u64 + 1);
        self.lane.write(start, &run)?;
        self.lane.flush()
    }

    /// Writes every committed image home, flushes, records the empty journal in the
    /// other superblock copy, and flushes again.
    ///
    /// Does nothing on a read-only store (which never has anything to write home: it
    /// opens only when clean and commits nothing).
    ///
    /// Errors: I/O errors; the store is then poisoned.
    pub fn checkpoint(&mut self) -> Result<(), VdeError> {
        self.check_poison()?;
        if self.read_only {
            return Ok(());
        }
        if self.dirty.is_empty() && self.jpos == 0 && self.sb.journal_seq == self.seq && !self.repair_superblock {
            return Ok(());
        }
        let r = self.write_home();
        match r {
            Ok(()) => {
                self.jpos = 0;
                self.repair_superblock = false;
                for (k, v) in std::mem::take(&mut self.dirty) {
                    self.clean.put(k, v);
                }
                self.stats.checkpoints += 1;
                Ok(())
            }
            Err(e) => self.poison(format!("checkpoint failed: {e}")),
        }
    }

    fn write_home(&mut self) -> Result<(), VdeError> {
        let mut blocks: Vec<(u64, &Block)> = self.dirty.iter().map(|(k, v)| (*k, &**v)).collect();
        blocks.sort_unstable_by_key(|b| b.0);
        self.lane.write_scattered(&blocks)?;
        self.lane.flush()?;
        let sb = Superblock {
            generation: self.sb.generation + 1,
            journal_seq: self.seq,
            ..self.sb
        };
        let at = SUPER_BLOCKS[(sb.generation % 2) as usize];
        self.lane.write(at, &sb.encode(at)[..])?;
        self.lane.flush()?;
        self.sb = sb;
        Ok(())
    }

    /// Reads the journal from its start and re-applies every complete transaction from
    /// the superblock's `journal_seq` on, in order, into the committed images. The last
    /// transaction counts only if the data extents it references read back with their
    /// checksums (its flush may not have completed).
    fn replay(&mut self) -> Result<(), VdeError> {
        let j = self.layout.journal;
        let mut pos = 0;
        // The transaction at the journal's start opens the latest checkpoint epoch: its
        // sequence number is at least the superblock's (greater when the newest superblock
        // copy was lost and an older one is in use); the rest follow it one by one.
        let mut seq = None;
        let mut first_seq = None;
        let mut txs: Vec<Replayed> = Vec::new();
        let mut desc = Box::new([0u8; BLOCK]);
        while pos + 2 <= j.blocks {
            let at = j.start + pos;
            self.lane.read(at, &mut desc[..])?;
            let this = get64(&desc[..], 0);
            if verify(&desc, Kind::JournalDescriptor, at).is_err()
                || seq.is_some_and(|s| this != s)
                || this < self.sb.journal_seq
                || desc[16..32] != self.sb.uuid
            {
                break;
            }
            let seq_now = this;
            let n = get32(&desc[..], 8) as usize;
            let m = get32(&desc[..], 12) as usize;
            if n == 0 || n > MAX_TX_BLOCKS || DESC_HEADER + 16 * n + 24 * m > PAYLOAD || pos + n as u64 + 2 > j.blocks {
                break;
            }
            let mut rest = vec![0u8; (n + 1) * BLOCK];
            self.lane.read(at + 1, &mut rest)?;
            let commit: &Block = rest[n * BLOCK..].try_into().expect("one block");
            if verify(commit, Kind::JournalCommit, at + n as u64 + 1).is_err()
                || get64(commit, 0) != seq_now
                || get32(commit, 8) as usize != n
                || get64(commit, 16) != xxh3_64(&desc[..])
            {
                break;
            }
            let mut images = Vec::with_capacity(n);
            let mut ok = true;
            for i in 0..n {
                let home = get64(&desc[..], DESC_HEADER + 16 * i);
                let img = &rest[i * BLOCK..(i + 1) * BLOCK];
                if xxh3_64(img) != get64(&desc[..], DESC_HEADER + 16 * i + 8) || home >= self.layout.total_blocks {
                    ok = false;
                    break;
                }
                let img: Box<Block> = Box::new(img.try_into().expect("one block"));
                // The checksums above prove the image is what the writer journalled, not
                // that it is a sealed metadata block for `home`: a block the cache would
                // serve unchecked and the checkpoint would write home.
                let sealed = Kind::from_u32(get32(&img[..], PAYLOAD + 4))
                    .ok_or_else(|| "no metadata block kind".to_string())
                    .and_then(|kind| verify(&img, kind, home).map_err(|e| e.to_string()));
                if let Err(why) = sealed {
                    return Err(VdeError::Corrupt {
                        block: at,
                        kind: Kind::JournalDescriptor.name(),
                        reason: format!("journal transaction {seq_now}: the image of block {home}: {why}"),
                    });
                }
                images.push((home, img));
            }
            if !ok {
                break;
            }
            let extents = (0..m)
                .map(|i| {
                    let o = DESC_HEADER + 16 * n + 24 * i;
                    DataExtent {
                        start: get64(&desc[..], o),
                        blocks: get64(&desc[..], o + 8),
                        checksum: get64(&desc[..], o + 16),
                    }
                })
                .collect();
            txs.push((images, extents));
            pos += n as u64 + 2;
            seq = Some(seq_now + 1);
            first_seq.get_or_insert(seq_now);
        }
        self.check_journal_tail(pos, seq.unwrap_or(self.sb.journal_seq))?;
        if let Some((_, extents)) = txs.last() {
            let extents = extents.clone();
            for e in extents {
                if !self.extent_matches(&e)? {
                    txs.pop();
                    self.stats.discarded_torn = true;
                    break;
                }
            }
        }
        self.stats.replayed = txs.len() as u64;
        self.seq = first_seq.map_or(self.sb.journal_seq, |f| f + txs.len() as u64);
        for (images, _) in txs {
            for (home, img) in images {
                self.dirty.insert(home, img);
            }
        }
        Ok(())
    }

    /// Replay stopped at journal block `pos` expecting transaction `seq`. If a valid
    /// descriptor of a later transaction of this store lies beyond, a transaction in the
    /// middle of the journal is damaged and stopping would silently drop acknowledged
    /// changes: refuse to open instead.
    fn check_journal_tail(&mut self, pos: u64, seq: u64) -> Result<(), VdeError> {
        let j = self.layout.journal;
        let mut at = pos + 1;
        let mut buf = vec![0u8; 64 * BLOCK];
        while at < j.blocks {
            let n = (j.blocks - at).min(64);
            self.lane.read(j.start + at, &mut buf[..n as usize * BLOCK])?;
            for i in 0..n as usize {
                let b: &Block = buf[i * BLOCK..(i + 1) * BLOCK].try_into().expect("one block");
                let blockno = j.start + at + i as u64;
                if verify(b, Kind::JournalDescriptor, blockno).is_ok() && b[16..32] == self.sb.uuid && get64(b, 0) > seq
                {
                    return Err(VdeError::Corrupt {
                        block: j.start + pos,
                        kind: Kind::JournalDescriptor.name(),
                        reason: format!(
                            "journal transaction {seq} is damaged but transaction {} follows at block {blockno}: \
                             replaying would lose acknowledged changes",
                            get64(b, 0)
                        ),
                    });
                }
            }
            at += n;
        }
        Ok(())
    }

    /// Whether data extent `e` holds bytes with its checksum.
    pub fn extent_matches(&mut self, e: &DataExtent) -> Result<bool, VdeError> {
        let l = self.layout;
        if e.blocks == 0 || e.blocks > MAX_EXTENT_BLOCKS || e.start < l.data.start || e.start + e.blocks > l.data.end()
        {
            return Ok(false);
        }
        let mut buf = vec![0u8; e.blocks as usize * BLOCK];
        self.lane.read(e.start, &mut buf)?;
        Ok(xxh3_64(&buf) == e.checksum)
    }

    /// Fails with the poison reason if the store is poisoned.
    pub fn check_poison(&self) -> Result<(), VdeError> {
        match &self.poisoned {
            Some(why) => Err(VdeError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, why: String) -> Result<T, VdeError> {
        self.tx.clear();
        self.tx_data.clear();
        self.poisoned = Some(why.clone());
        Err(VdeError::Poisoned(why))
    }

    /// Marks the store poisoned (a failure left memory and device out of step).
    pub fn poison_now(&mut self, why: String) -> VdeError {
        self.poison::<()>(why).expect_err("poison always fails")
    }
}

/// A transaction read back from the journal: its block images (home block number,
/// image) and the data extents it made reachable.
type Replayed = (Vec<(u64, Box<Block>)>, Vec<DataExtent>);

/// Which allocation map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Key-index nodes.
    Index,
    /// Inodes.
    Inode,
    /// Data blocks.
    Data,
}

impl NodeStore for Meta {
    fn load(&mut self, id: u64) -> Result<Node, VdeError> {
        if id == 0 || id >= self.layout.index_nodes() {
            return Err(VdeError::Corrupt {
                block: self.layout.index.start,
                kind: Kind::IndexInterior.name(),
                reason: format!("child node {id} is outside the index"),
            });
        }
        let blockno = self.layout.index.start + id;
        let (b, kind) = self.read_kinds(blockno, &[Kind::IndexLeaf, Kind::IndexInterior])?;
        Node::decode(&b[..PAYLOAD], kind == Kind::IndexLeaf).map_err(|reason| VdeError::Corrupt {
            block: blockno,
            kind: kind.name(),
            reason,
        })
    }

    fn store(&mut self, id: u64, node: &Node) -> Result<(), VdeError> {
        let mut b = Box::new([0u8; BLOCK]);
        node.encode(&mut b[..PAYLOAD]);
        let kind = if node.is_leaf() {
            Kind::IndexLeaf
        } else {
            Kind::IndexInterior
        };
        self.write(self.layout.index.start + id, kind, b);
        Ok(())
    }

    fn alloc(&mut self) -> Result<u64, VdeError> {
        let id = self.index_map.find_clear(1).ok_or(VdeError::NoSpace {
            what: "key index nodes",
        })?;
        self.index_map.set(id, true);
        self.write_map_block(MapKind::Index, id);
        Ok(id)
    }

    fn free(&mut self, id: u64) {
        self.index_map.set(id, false);
        self.write_map_block(MapKind::Index, id);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Vde, VdeError, VdeOptions};
    use super::*;
    use crate::{Backend, Device, OpenOptions};
    use std::os::unix::fs::FileExt;

    /// A 256-block (1 MiB) image file in a fresh temporary directory (kept alive by the
    /// returned guard).
    fn scratch_image() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vde.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(256 * BLOCK as u64)
            .unwrap();
        (dir, path)
    }

    /// `path` opened on the psync backend with 4 KiB blocks.
    fn psync(path: &std::path::Path) -> Device {
        let o = OpenOptions {
            backend: Some(Backend::Psync),
            file_block_size: Some(4096),
            ..Default::default()
        };
        Device::open(path.to_str().unwrap(), &o).unwrap()
    }

    /// Caught by the allocation bound of fuzz/fuzz_targets/vde_open.rs: an inode (in a
    /// block with a valid checksum) whose extents lie outside the data region, or overlap
    /// to more blocks than the region holds, was served by `get`, which allocated the sum
    /// of the extents first — up to 30 × 256 blocks (30 MiB) on a 1 MiB store — and for
    /// an extent on the superblock returned the superblock's bytes as the object.
    #[test]
    fn inodes_reaching_outside_the_data_region_are_corrupt() {
        let (_dir, path) = scratch_image();
        let device = || psync(&path);
        let vde = Vde::format(device(), 0, VdeOptions::default()).unwrap();
        vde.put(b"k", b"value").unwrap();
        let ino = vde.stat(b"k").unwrap().inode;
        let layout = vde.info().unwrap().layout;
        vde.close().unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let image = std::fs::read(&path).unwrap();
        let extent = |start: u64, blocks: u64| {
            let bytes = &image[(start * BLOCK as u64) as usize..((start + blocks) * BLOCK as u64) as usize];
            DataExtent {
                start,
                blocks,
                checksum: xxh3_64(bytes),
            }
        };
        let data = layout.data;
        let whole = data.blocks.min(MAX_EXTENT_BLOCKS);
        for (extents, why) in [
            (vec![extent(0, 1)], "an extent outside the data region"),
            (vec![extent(data.start, whole); 30], "more than the data region's"),
        ] {
            // Rewrite the inode with checksums that match, as a forger would.
            let blockno = layout.inodes.start + ino / INODES_PER_BLOCK;
            let at = (ino % INODES_PER_BLOCK) as usize * INODE_SIZE;
            let mut b = Box::new([0u8; BLOCK]);
            file.read_exact_at(&mut b[..], blockno * BLOCK as u64).unwrap();
            let mut inode = Inode::decode(&b[at..at + INODE_SIZE]).unwrap().unwrap();
            inode.size = extents.iter().map(|e| e.blocks).sum::<u64>() * BLOCK as u64;
            inode.extents = extents;
            inode.encode(&mut b[at..at + INODE_SIZE]);
            let generation = get64(&b[..], PAYLOAD + 8);
            seal(&mut b, Kind::Inodes, generation, blockno);
            file.write_all_at(&b[..], blockno * BLOCK as u64).unwrap();
            let vde = Vde::open(device(), VdeOptions::default()).unwrap();
            match vde.get(b"k") {
                Err(VdeError::Corrupt { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                Ok(v) => panic!("get returned {} bytes ({why})", v.len()),
                Err(e) => panic!("{why}: {e}"),
            }
        }
    }

    fn block(image: &mut [u8], n: u64) -> &mut Block {
        (&mut image[n as usize * BLOCK..(n as usize + 1) * BLOCK])
            .try_into()
            .unwrap()
    }

    /// Caught by the get oracle of fuzz/fuzz_targets/vde_open.rs (input
    /// fuzz/corpus/vde_open/journal-image-with-broken-trailer): a journal transaction
    /// whose descriptor, image checksums and commit record all agree, but whose
    /// inode-table image has a broken trailer, was replayed; the store served objects from
    /// that unverified block, and the checkpoint wrote it home, where the next open found
    /// it corrupt.
    #[test]
    fn journal_images_must_be_sealed_blocks_of_their_home() {
        let (_dir, path) = scratch_image();
        let device = || psync(&path);
        let vde = Vde::format(device(), 0, VdeOptions::default()).unwrap();
        vde.checkpoint().unwrap();
        vde.put(b"k", b"value").unwrap();
        let layout = vde.info().unwrap().layout;
        // The put's transaction is in the journal and not yet checkpointed.
        let mut image = std::fs::read(&path).unwrap();
        drop(vde);
        let at = layout.journal.start;
        let n = get32(&block(&mut image, at)[..], 8) as u64;
        let i = (0..n)
            .find(|&i| get64(&block(&mut image, at)[..], DESC_HEADER + 16 * i as usize) == layout.inodes.start)
            .expect("the transaction holds the inode block");
        // Break the image's trailer (its generation), then make every journal checksum
        // agree again, as a buggy or malicious writer would.
        block(&mut image, at + 1 + i)[PAYLOAD + 8] ^= 1;
        let sum = xxh3_64(&block(&mut image, at + 1 + i)[..]);
        put64(&mut block(&mut image, at)[..], DESC_HEADER + 16 * i as usize + 8, sum);
        let generation = get64(&block(&mut image, at)[..], PAYLOAD + 8);
        seal(block(&mut image, at), Kind::JournalDescriptor, generation, at);
        let desc_sum = xxh3_64(&block(&mut image, at)[..]);
        let commit = block(&mut image, at + n + 1);
        put64(&mut commit[..], 16, desc_sum);
        let generation = get64(&commit[..], PAYLOAD + 8);
        seal(commit, Kind::JournalCommit, generation, at + n + 1);
        std::fs::write(&path, &image).unwrap();
        match Vde::open(device(), VdeOptions::default()) {
            Err(VdeError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains(&format!("the image of block {}", layout.inodes.start)),
                    "{reason}"
                )
            }
            Ok(vde) => panic!(
                "opened, and get(k) = {:?} from an inode block with a broken trailer",
                vde.get(b"k").map(|v| v.len())
            ),
            Err(e) => panic!("{e}"),
        }
    }
}
