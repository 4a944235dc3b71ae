//! The key index: a B+tree of variable-length keys (1..=255 bytes) to inode numbers, one
//! node per metadata block.
//!
//! Leaves hold `(key, inode)` pairs in key order; interior nodes hold `n` separator keys
//! and `n + 1` children, child `i` covering keys in `[key[i-1], key[i])`. A node splits
//! when its encoding outgrows the block payload; a node that empties is removed from its
//! parent, and a root with one child is replaced by it, so the tree never keeps empty
//! nodes. Nodes reach the device only through a [`NodeStore`] — the VDE's journalled
//! metadata cache — so every change is part of a transaction.

use super::VdeError;
use super::format::{MAX_KEY, PAYLOAD, get16, get64, put16, put64};

/// One decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// Keys and their inode numbers.
    Leaf {
        /// Keys, ascending.
        keys: Vec<Vec<u8>>,
        /// `inos[i]` is the inode of `keys[i]`.
        inos: Vec<u64>,
    },
    /// Separators and children.
    Interior {
        /// Separator keys, ascending.
        keys: Vec<Vec<u8>>,
        /// Child node numbers, one more than the keys.
        children: Vec<u64>,
    },
}

/// Where nodes live. Node 0 is never a tree node; it stands for "no tree".
pub trait NodeStore {
    /// Reads node `id`.
    ///
    /// Errors: [`VdeError::Corrupt`] or an I/O error.
    fn load(&mut self, id: u64) -> Result<Node, VdeError>;
    /// Writes node `id` (as part of the current transaction).
    ///
    /// Errors: an I/O error.
    fn store(&mut self, id: u64, node: &Node) -> Result<(), VdeError>;
    /// Allocates a node number.
    ///
    /// Errors: [`VdeError::NoSpace`] when the index region is full.
    fn alloc(&mut self) -> Result<u64, VdeError>;
    /// Frees node `id`.
    fn free(&mut self, id: u64);
}

impl Node {
    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Node::Leaf { keys, .. } => 2 + keys.iter().map(|k| 1 + k.len() + 8).sum::<usize>(),
            Node::Interior { keys, .. } => 10 + keys.iter().map(|k| 1 + k.len() + 8).sum::<usize>(),
        }
    }

    /// Whether this is a leaf.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Node::Leaf { .. })
    }

    /// Encodes into a block payload ([`PAYLOAD`] bytes).
    pub fn encode(&self, p: &mut [u8]) {
        debug_assert!(self.encoded_len() <= PAYLOAD);
        p[..PAYLOAD].fill(0);
        let (keys, vals, mut at) = match self {
            Node::Leaf { keys, inos } => (keys, &inos[..], 2),
            Node::Interior { keys, children } => {
                put64(p, 2, children[0]);
                (keys, &children[1..], 10)
            }
        };
        put16(p, 0, keys.len() as u16);
        for (k, v) in keys.iter().zip(vals) {
            p[at] = k.len() as u8;
            p[at + 1..at + 1 + k.len()].copy_from_slice(k);
            put64(p, at + 1 + k.len(), *v);
            at += 1 + k.len() + 8;
        }
    }

    /// Decodes a payload; `leaf` comes from the block's kind.
    ///
    /// Errors: a description of the inconsistency (keys out of order or empty, entries
    /// running past the payload).
    pub fn decode(p: &[u8], leaf: bool) -> Result<Node, String> {
        let n = get16(p, 0) as usize;
        let mut at = if leaf { 2 } else { 10 };
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut vals = Vec::with_capacity(n + 1);
        if !leaf {
            vals.push(get64(p, 2));
        }
        for i in 0..n {
            let len = *p.get(at).ok_or("entries run past the block")? as usize;
            if len == 0 || at + 1 + len + 8 > PAYLOAD {
                return Err(format!("entry {i} has length {len} or runs past the block"));
            }
            let k = p[at + 1..at + 1 + len].to_vec();
            if keys.last().is_some_and(|prev| *prev >= k) {
                return Err(format!("key {i} is not greater than key {}", i.wrapping_sub(1)));
            }
            vals.push(get64(p, at + 1 + len));
            keys.push(k);
            at += 1 + len + 8;
        }
        Ok(if leaf {
            Node::Leaf { keys, inos: vals }
        } else {
            Node::Interior { keys, children: vals }
        })
    }
}

/// Which child of an interior node with `keys` covers `key`.
fn child_index(keys: &[Vec<u8>], key: &[u8]) -> usize {
    keys.partition_point(|k| k.as_slice() <= key)
}

/// The inode of `key`, if present.
///
/// Errors: the store's.
pub fn lookup<S: NodeStore>(s: &mut S, root: u64, key: &[u8]) -> Result<Option<u64>, VdeError> {
    let mut id = root;
    let mut depth = 0;
    while id != 0 {
        depth += 1;
        if depth > 64 {
            return Err(cycle(id));
        }
        match s.load(id)? {
            Node::Leaf { keys, inos } => {
                return Ok(keys.binary_search_by(|k| k.as_slice().cmp(key)).ok().map(|i| inos[i]));
            }
            Node::Interior { keys, children } => id = children[child_index(&keys, key)],
        }
    }
    Ok(None)
}

fn cycle(id: u64) -> VdeError {
    VdeError::Corrupt {
        block: id,
        kind: "key index node",
        reason: "the key index is deeper than 64 levels (a cycle)".into(),
    }
}

/// Inserts or replaces `key → ino`. Returns the new root and the inode `key` had before.
///
/// Errors: the store's; [`VdeError::NoSpace`] when nodes run out (the tree may then
/// hold the change partially: the caller abandons the transaction).
pub fn insert<S: NodeStore>(s: &mut S, root: u64, key: &[u8], ino: u64) -> Result<(u64, Option<u64>), VdeError> {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY);
    if root == 0 {
        let id = s.alloc()?;
        s.store(
            id,
            &Node::Leaf {
                keys: vec![key.to_vec()],
                inos: vec![ino],
            },
        )?;
        return Ok((id, None));
    }
    let (old, split) = insert_rec(s, root, key, ino, 0)?;
    let root = match split {
        None => root,
        Some((sep, right)) => {
            let id = s.alloc()?;
            s.store(
                id,
                &Node::Interior {
                    keys: vec![sep],
                    children: vec![root, right],
                },
            )?;
            id
        }
    };
    Ok((root, old))
}

type Split = Option<(Vec<u8>, u64)>;

fn insert_rec<S: NodeStore>(
    s: &mut S,
    id: u64,
    key: &[u8],
    ino: u64,
    depth: usize,
) -> Result<(Option<u64>, Split), VdeError> {
    if depth > 64 {
        return Err(cycle(id));
    }
    let mut node = s.load(id)?;
    let old = match &mut node {
        Node::Leaf { keys, inos } => match keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => Some(std::mem::replace(&mut inos[i], ino)),
            Err(i) => {
                keys.insert(i, key.to_vec());
                inos.insert(i, ino);
                None
            }
        },
        Node::Interior { keys, children } => {
            let i = child_index(keys, key);
            let (old, split) = insert_rec(s, children[i], key, ino, depth + 1)?;
            match split {
                None => return Ok((old, None)),
                Some((sep, right)) => {
                    keys.insert(i, sep);
                    children.insert(i + 1, right);
                }
            }
            old
        }
    };
    if node.encoded_len() <= PAYLOAD {
        s.store(id, &node)?;
        return Ok((old, None));
    }
    let (left, sep, right) = split(node);
    let rid = s.alloc()?;
    s.store(id, &left)?;
    s.store(rid, &right)?;
    Ok((old, Some((sep, rid))))
}

/// Splits an overfull node near its byte midpoint: left, separator, right.
fn split(node: Node) -> (Node, Vec<u8>, Node) {
    let half = node.encoded_len() / 2;
    match node {
        Node::Leaf { mut keys, mut inos } => {
            let mut acc = 2;
            let mut at = 0;
            while at < keys.len() - 1 && acc < half {
                acc += 1 + keys[at].len() + 8;
                at += 1;
            }
            let at = at.max(1);
            let rk = keys.split_off(at);
            let ri = inos.split_off(at);
            let sep = rk[0].clone();
            (Node::Leaf { keys, inos }, sep, Node::Leaf { keys: rk, inos: ri })
        }
        Node::Interior { mut keys, mut children } => {
            let mut acc = 10;
            let mut at = 0;
            while at < keys.len() - 2 && acc < half {
                acc += 1 + keys[at].len() + 8;
                at += 1;
            }
            let at = at.max(1);
            let mut rk = keys.split_off(at);
            let rc = children.split_off(at + 1);
            let sep = rk.remove(0);
            (
                Node::Interior { keys, children },
                sep,
                Node::Interior { keys: rk, children: rc },
            )
        }
    }
}

/// Removes `key`. Returns the new root and the inode it had, if it was present.
///
/// Errors: the store's.
pub fn remove<S: NodeStore>(s: &mut S, root: u64, key: &[u8]) -> Result<(u64, Option<u64>), VdeError> {
    if root == 0 {
        return Ok((0, None));
    }
    let (old, empty) = remove_rec(s, root, key, 0)?;
    let mut root = root;
    if empty {
        s.free(root);
        return Ok((0, old));
    }
    // Collapse roots with a single child.
    loop {
        match s.load(root)? {
            Node::Interior { keys, children } if keys.is_empty() => {
                s.free(root);
                root = children[0];
            }
            _ => return Ok((root, old)),
        }
    }
}

fn remove_rec<S: NodeStore>(s: &mut S, id: u64, key: &[u8], depth: usize) -> Result<(Option<u64>, bool), VdeError> {
    if depth > 64 {
        return Err(cycle(id));
    }
    let mut node = s.load(id)?;
    let old = match &mut node {
        Node::Leaf { keys, inos } => match keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => {
                keys.remove(i);
                Some(inos.remove(i))
            }
            Err(_) => return Ok((None, false)),
        },
        Node::Interior { keys, children } => {
            let i = child_index(keys, key);
            let (old, child_empty) = remove_rec(s, children[i], key, depth + 1)?;
            if !child_empty {
                return Ok((old, false));
            }
            s.free(children[i]);
            children.remove(i);
            if !keys.is_empty() {
                keys.remove(i.saturating_sub(1));
            }
            old
        }
    };
    let empty = match &node {
        Node::Leaf { keys, .. } => keys.is_empty(),
        Node::Interior { children, .. } => children.is_empty(),
    };
    if !empty {
        s.store(id, &node)?;
    }
    Ok((old, empty))
}

/// Appends to `out`, in key order, up to `limit` entries whose keys start with `prefix`
/// and are greater than `after` (or all of them with the prefix, for `None`).
///
/// Errors: the store's.
pub fn scan<S: NodeStore>(
    s: &mut S,
    root: u64,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    out: &mut Vec<(Vec<u8>, u64)>,
) -> Result<(), VdeError> {
    if root == 0 || limit == 0 {
        return Ok(());
    }
    let (from, exclusive) = match after {
        Some(a) if a >= prefix => (a, true),
        _ => (prefix, false),
    };
    scan_rec(s, root, prefix, from, exclusive, limit, out, 0).map(|_| ())
}

/// Returns true when the scan is finished (limit reached or past the prefix).
#[allow(clippy::too_many_arguments)]
fn scan_rec<S: NodeStore>(
    s: &mut S,
    id: u64,
    prefix: &[u8],
    from: &[u8],
    exclusive: bool,
    limit: usize,
    out: &mut Vec<(Vec<u8>, u64)>,
    depth: usize,
) -> Result<bool, VdeError> {
    if depth > 64 {
        return Err(cycle(id));
    }
    match s.load(id)? {
        Node::Leaf { keys, inos } => {
            for (k, ino) in keys.into_iter().zip(inos) {
                if k.as_slice() < from || (exclusive && k.as_slice() == from) {
                    continue;
                }
                if !k.starts_with(prefix) {
                    return Ok(true);
                }
                out.push((k, ino));
                if out.len() >= limit {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::Interior { keys, children } => {
            let first = child_index(&keys, from);
            for &c in &children[first..] {
                if scan_rec(s, c, prefix, from, exclusive, limit, out, depth + 1)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Default)]
    struct Mem {
        nodes: HashMap<u64, Node>,
        next: u64,
    }

    impl NodeStore for Mem {
        fn load(&mut self, id: u64) -> Result<Node, VdeError> {
            Ok(self.nodes[&id].clone())
        }
        fn store(&mut self, id: u64, node: &Node) -> Result<(), VdeError> {
            assert!(node.encoded_len() <= PAYLOAD);
            let mut p = vec![0u8; PAYLOAD];
            node.encode(&mut p);
            assert_eq!(&Node::decode(&p, node.is_leaf()).unwrap(), node);
            self.nodes.insert(id, node.clone());
            Ok(())
        }
        fn alloc(&mut self) -> Result<u64, VdeError> {
            self.next += 1;
            Ok(self.next)
        }
        fn free(&mut self, id: u64) {
            assert!(self.nodes.remove(&id).is_some(), "double free of {id}");
        }
    }

    fn key(i: u32, len: usize) -> Vec<u8> {
        let mut k = format!("{i:08}").into_bytes();
        k.resize(len.max(8), b'x');
        k
    }

    #[test]
    fn thousands_of_long_keys_split_and_empty_out() {
        let mut s = Mem::default();
        let mut root = 0;
        for i in 0..3000 {
            root = insert(&mut s, root, &key(i * 7919 % 3000, 200), i as u64).unwrap().0;
        }
        assert!(s.nodes.len() > 100);
        let mut all = Vec::new();
        scan(&mut s, root, b"", None, usize::MAX, &mut all).unwrap();
        assert_eq!(all.len(), 3000);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        for i in 0..3000 {
            let (r, old) = remove(&mut s, root, &key(i, 200)).unwrap();
            assert!(old.is_some());
            root = r;
        }
        assert_eq!(root, 0);
        assert!(s.nodes.is_empty(), "{} nodes leaked", s.nodes.len());
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..3, 0u16..400, 1usize..255), 1..400)) {
            let mut s = Mem::default();
            let mut root = 0;
            let mut model = BTreeMap::new();
            for (n, (op, k, len)) in ops.into_iter().enumerate() {
                let k = key(k as u32, len);
                match op {
                    0 | 1 => {
                        let (r, old) = insert(&mut s, root, &k, n as u64).unwrap();
                        root = r;
                        prop_assert_eq!(old, model.insert(k.clone(), n as u64));
                    }
                    _ => {
                        let (r, old) = remove(&mut s, root, &k).unwrap();
                        root = r;
                        prop_assert_eq!(old, model.remove(&k));
                    }
                }
                prop_assert_eq!(lookup(&mut s, root, &k).unwrap(), model.get(&k).copied());
            }
            let mut all = Vec::new();
            scan(&mut s, root, b"", None, usize::MAX, &mut all).unwrap();
            prop_assert_eq!(all, model.clone().into_iter().collect::<Vec<_>>());
            let mut page = Vec::new();
            scan(&mut s, root, b"0000001", None, 5, &mut page).unwrap();
            let want: Vec<_> = model.iter().filter(|(k, _)| k.starts_with(b"0000001")).take(5).map(|(k, v)| (k.clone(), *v)).collect();
            prop_assert_eq!(&page, &want);
            if let Some((last, _)) = page.last() {
                let mut next = Vec::new();
                scan(&mut s, root, b"0000001", Some(last), 5, &mut next).unwrap();
                let want: Vec<_> = model.iter().filter(|(k, _)| k.starts_with(b"0000001") && *k > last).take(5).map(|(k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(next, want);
            }
        }
    }
}
