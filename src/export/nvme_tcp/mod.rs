//! The NVMe/TCP target: subsystems of namespaces served to NVMe/TCP hosts such as
//! Linux's nvme-tcp (NVMe/TCP Transport Specification 1.0, NVMe over Fabrics 1.1).
//!
//! # Threads
//!
//! As SPDK's nvmf target: one acceptor thread, and one **poll group** per worker
//! thread. A new connection goes to the poll group with the fewest connections and
//! stays there, so all of a queue's work — reading its PDUs, its commands on the
//! backend, its responses — happens on one thread. Each poll group has its own backend
//! I/O queue and buffer pool per namespace ([`Backends`]): no lock and no allocation per
//! I/O. The queues of one controller may sit on different poll groups; they share the
//! controller ([`ctrl::Ctrl`]) whose lock only admin and Fabrics commands take.
//!
//! A poll group spins (polling the backends, and the sockets with a zero timeout) while
//! it has work — backend operations in flight, or data to read or send — as a polled
//! driver must, and for [`DEFAULT_IDLE_SPIN`] (`serve --idle-spin-us`) after its last
//! work, so that the next command of a host at low queue depth is found by polling
//! rather than by a wakeup; after that it sleeps in `epoll_wait` (through `mio`).
//!
//! # Stopping
//!
//! When [`Stop`] is set, the acceptor stops, and each poll group stops reading commands,
//! waits for its backend operations and sends their responses, flushes every namespace,
//! and closes its connections.

pub mod conn;
pub mod ctrl;
pub mod fuzzing;
pub mod pdu;

use super::{Backing, STOP_POLL, Stop};
use crate::IoQueue;
use conn::Conn;
use ctrl::Target;
use ironvme_nvme::block::{BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op};
use ironvme_nvme::hw::DmaBuf;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bits of a backend tag that hold the command slot; the rest hold the connection's
/// index and generation.
pub const TAG_SLOT_BITS: u32 = 16;
/// Connections the target holds at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection that has not connected (ICReq and Connect) in this time is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backend queue depth, and pool buffers, per namespace per poll group.
pub const BACKEND_DEPTH: usize = 128;
/// How long a poll group keeps polling after its last work before it sleeps in
/// `epoll_wait`: 1 ms, longer than the gap between one command's response and the next
/// command of a host at QD1 (about 0.5 ms in the TCG guest, a few µs on hardware).
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_millis(1);

/// A served namespace.
pub struct Namespace {
    /// What backs it.
    pub backing: Arc<Backing>,
    /// Its geometry.
    pub info: NamespaceInfo,
    /// NGUID and UUID: a stable 128-bit identifier from the subsystem NQN, the NSID and
    /// the backing's spec, so a host that reconnects, or a restarted target, gives the
    /// same one.
    pub uuid: [u8; 16],
    /// Its index in every poll group's [`Backends`].
    pub index: usize,
}

impl Namespace {
    /// Namespace `nsid` of subsystem `nqn`, backed by `backing`, at `index`.
    pub fn new(nqn: &str, nsid: u32, backing: Arc<Backing>, index: usize) -> Namespace {
        let id = format!("{nqn}\0{nsid}\0{}", backing.spec);
        let mut uuid = xxhash_rust::xxh3::xxh3_128(id.as_bytes()).to_le_bytes();
        // RFC 9562 version 8 (custom), variant 10b.
        uuid[6] = (uuid[6] & 0x0F) | 0x80;
        uuid[8] = (uuid[8] & 0x3F) | 0x80;
        Namespace {
            info: backing.info.clone(),
            backing,
            uuid,
            index,
        }
    }
}

/// Counters of the whole target, for the stats line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub connections: AtomicUsize,
    /// I/O commands completed.
    pub ios: AtomicU64,
    /// Commands that failed (refused or failed by the backend).
    pub errors: AtomicU64,
}

struct NsBackend {
    queue: IoQueue,
    info: NamespaceInfo,
    pool: Vec<DmaBuf>,
    /// Operations the queue had no room for, in order.
    waiting: VecDeque<(Op, Option<DmaBuf>, u64)>,
    /// Operations refused at submission, completed with their error on the next poll.
    refused: Vec<Completion>,
}

/// A poll group's backend queues and buffer pools, one per served namespace.
pub struct Backends {
    ns: Vec<NsBackend>,
}

impl Backends {
    /// Creates a queue of [`BACKEND_DEPTH`] and as many buffers of the largest transfer
    /// on every namespace, for the calling thread.
    ///
    /// Errors: the backend's, as text naming the namespace.
    pub fn new(namespaces: &[&Namespace]) -> Result<Backends, String> {
        let mut ns = Vec::with_capacity(namespaces.len());
        for n in namespaces {
            let queue = n
                .backing
                .queue(BACKEND_DEPTH)
                .map_err(|e| format!("{}: cannot create an I/O queue: {e}", n.backing.spec))?;
            let chunk = n.info.max_transfer_bytes.clamp(4096, 1 << 17);
            let chunk = 1usize << (usize::BITS - 1 - chunk.leading_zeros());
            let dma = n.backing.device.dma();
            let region = dma
                .allocate(chunk * BACKEND_DEPTH)
                .map_err(|e| format!("{}: cannot allocate I/O buffers: {e}", n.backing.spec))?;
            let pool = region
                .into_chunks(chunk, BACKEND_DEPTH)
                .map_err(|e| format!("{}: cannot split I/O buffers: {e}", n.backing.spec))?;
            ns.push(NsBackend {
                queue,
                info: n.info.clone(),
                pool,
                waiting: VecDeque::with_capacity(BACKEND_DEPTH),
                refused: Vec::with_capacity(BACKEND_DEPTH),
            });
        }
        Ok(Backends { ns })
    }

    /// Namespace `ns`'s geometry.
    pub fn info(&self, ns: usize) -> &NamespaceInfo {
        &self.ns[ns].info
    }

    /// A buffer of the largest transfer from `ns`'s pool, if one is free.
    pub fn take_buffer(&mut self, ns: usize) -> Option<DmaBuf> {
        self.ns[ns].pool.pop()
    }

    /// Gives a buffer back to `ns`'s pool.
    pub fn give_buffer(&mut self, ns: usize, mut buf: DmaBuf) {
        buf.reset_window();
        self.ns[ns].pool.push(buf);
    }

    /// Whether any pool has a buffer (parked connections may go on).
    fn any_buffer(&self) -> bool {
        self.ns.iter().any(|n| !n.pool.is_empty())
    }

    /// Submits `op` on `ns`'s queue, or keeps it until there is room. An operation the
    /// queue refuses completes with its error on the next poll.
    pub fn submit(&mut self, ns: usize, op: Op, buf: Option<DmaBuf>, tag: u64) {
        let n = &mut self.ns[ns];
        if !n.waiting.is_empty() {
            n.waiting.push_back((op, buf, tag));
            return;
        }
        if let Err(e) = n.queue.submit(op, buf, tag) {
            match e.error {
                BlockError::QueueFull(_) => n.waiting.push_back((op, e.buf, tag)),
                other => {
                    tracing::warn!(%other, "backend refused an operation");
                    n.refused.push(Completion {
                        tag,
                        buf: e.buf,
                        result: Err(IoStatus::Os(libc::EINVAL)),
                    });
                }
            }
        }
    }

    /// Operations outstanding on the backends (or waiting for room).
    fn outstanding(&self) -> usize {
        self.ns
            .iter()
            .map(|n| n.queue.outstanding() + n.waiting.len() + n.refused.len())
            .sum()
    }

    /// Rings every queue, collects completions into `out` as (namespace, completion),
    /// and submits waiting operations into the room they left.
    fn poll(&mut self, out: &mut Vec<(usize, Completion)>) {
        for (i, n) in self.ns.iter_mut().enumerate() {
            out.extend(n.refused.drain(..).map(|c| (i, c)));
            if n.queue.outstanding() > 0 {
                n.queue.poll(BACKEND_DEPTH, |c| out.push((i, c)));
            }
            while let Some((op, buf, tag)) = n.waiting.pop_front() {
                if let Err(e) = n.queue.submit(op, buf, tag) {
                    if let BlockError::QueueFull(_) = e.error {
                        n.waiting.push_front((op, e.buf, tag));
                        break;
                    }
                    n.refused.push(Completion {
                        tag,
                        buf: e.buf,
                        result: Err(IoStatus::Os(libc::EINVAL)),
                    });
                }
            }
            if let Err(e) = n.queue.ring() {
                tracing::warn!(%e, "backend ring failed");
            }
        }
    }

    fn ring(&mut self) {
        for n in &mut self.ns {
            if let Err(e) = n.queue.ring() {
                tracing::warn!(%e, "backend ring failed");
            }
        }
    }

    /// Flushes every namespace and waits (stopping).
    fn flush_all(&mut self) {
        for n in &mut self.ns {
            if let Err(e) = ironvme_nvme::block::run_one(&mut n.queue, Op::Flush, None) {
                tracing::warn!(%e, "flush at stop failed");
            }
        }
    }
}

/// A new connection handed to a poll group.
type NewConn = (TcpStream, SocketAddr);

struct GroupHandle {
    tx: mpsc::Sender<NewConn>,
    waker: Arc<Waker>,
    load: Arc<AtomicUsize>,
}

const WAKER: Token = Token(0);

/// One poll group: its connections (a slab whose index + 1 is the mio token) and
/// backends.
struct Group {
    target: Arc<Target>,
    stats: Arc<Stats>,
    poll: Poll,
    rx: mpsc::Receiver<NewConn>,
    load: Arc<AtomicUsize>,
    conns: Vec<Option<(Conn, Instant)>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    backends: Backends,
    /// See [`DEFAULT_IDLE_SPIN`].
    idle_spin: Duration,
}

/// How long a poll group may wait in `epoll_wait` now: not at all while it is `busy` or
/// less than `idle_spin` has passed since it stopped being busy (`idle_since`, which this
/// keeps: `None` while busy), else [`STOP_POLL`]. `now` is read only when idle.
fn epoll_timeout(
    busy: bool,
    idle_since: &mut Option<Instant>,
    idle_spin: Duration,
    now: impl FnOnce() -> Instant,
) -> Duration {
    if busy {
        *idle_since = None;
        return Duration::ZERO;
    }
    if idle_spin.is_zero() {
        return STOP_POLL;
    }
    let now = now();
    let since = *idle_since.get_or_insert(now);
    if now.duration_since(since) < idle_spin {
        Duration::ZERO
    } else {
        STOP_POLL
    }
}

impl Group {
    fn tag_base(index: usize, generation: u32) -> u64 {
        ((index as u64) << 24 | (generation as u64 & 0xFF_FFFF)) << TAG_SLOT_BITS
    }

    fn add(&mut self, (mut sock, peer): NewConn) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.gens.push(0);
            self.conns.len() - 1
        });
        self.gens[index] = self.gens[index].wrapping_add(1);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, Token(index + 1), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(%peer, %e, "cannot poll a new connection");
            self.free.push(index);
            self.load.fetch_sub(1, Ordering::Relaxed);
            self.stats.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let _ = sock.set_nodelay(true);
        let conn = Conn::new(sock, peer, Self::tag_base(index, self.gens[index]));
        self.conns[index] = Some((conn, Instant::now()));
    }

    fn remove(&mut self, index: usize) {
        let Some((mut conn, _)) = self.conns[index].take() else {
            return;
        };
        conn.release(&mut self.backends);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        if let Some(b) = &conn.binding
            && b.qid == 0
        {
            tracing::info!(peer = %conn.peer, cntlid = b.ctrl.cntlid, "controller's admin queue closed");
            b.ctrl.kill();
        }
        match &conn.ended {
            Some(conn::End::Gone(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                tracing::info!(peer = %conn.peer, %e, "connection closed")
            }
            _ => tracing::debug!(peer = %conn.peer, "connection closed"),
        }
        // The generation changes, so completions still due for it find nobody.
        self.gens[index] = self.gens[index].wrapping_add(1);
        self.free.push(index);
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn run(mut self, stop: Stop) {
        let mut events = Events::with_capacity(256);
        let mut done: Vec<(usize, Completion)> = Vec::with_capacity(BACKEND_DEPTH * 4);
        let mut last_tick = Instant::now();
        let mut stopping_since: Option<Instant> = None;
        let mut idle_since: Option<Instant> = None;
        // The last pass had events or completions: work that may have started and ended
        // within it (a Connect, a Keep Alive, an R2T) restarts the idle window too.
        let mut worked = false;
        loop {
            let busy = worked
                || self.backends.outstanding() > 0
                || self
                    .conns
                    .iter()
                    .flatten()
                    .any(|(c, _)| c.active() || (!c.drained && c.ended.is_none()));
            let timeout = epoll_timeout(busy, &mut idle_since, self.idle_spin, Instant::now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(%e, "poll group: epoll failed");
                return;
            }
            worked = !events.is_empty();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                if let Some(Some((c, _))) = self.conns.get_mut(ev.token().0 - 1) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.drained = false;
                    }
                }
            }
            if stopping_since.is_none() {
                while let Ok(nc) = self.rx.try_recv() {
                    self.add(nc);
                }
            }
            let stopping = stopping_since.is_some();
            let any_buffer = self.backends.any_buffer();
            for i in 0..self.conns.len() {
                if let Some((c, _)) = self.conns[i].as_mut()
                    && !stopping
                    && (!c.drained || (c.parked() && any_buffer))
                {
                    c.on_readable(&self.target, &mut self.backends, &self.stats);
                }
            }
            self.backends.ring();
            done.clear();
            self.backends.poll(&mut done);
            worked |= !done.is_empty();
            for (ns, c) in done.drain(..) {
                let slot = conn::tag_slot(c.tag);
                if c.result.is_ok() {
                    self.stats.ios.fetch_add(1, Ordering::Relaxed);
                }
                let high = c.tag >> TAG_SLOT_BITS;
                let index = (high >> 24) as usize;
                let current = self
                    .gens
                    .get(index)
                    .is_some_and(|g| g & 0xFF_FFFF == (high & 0xFF_FFFF) as u32);
                match self.conns.get_mut(index).and_then(|c| c.as_mut()).filter(|_| current) {
                    Some((conn, _)) => conn.on_complete(ns, slot, c, &mut self.backends, &self.stats),
                    None => {
                        if let Some(buf) = c.buf {
                            self.backends.give_buffer(ns, buf);
                        }
                    }
                }
            }
            self.backends.ring();
            for i in 0..self.conns.len() {
                if let Some((c, _)) = self.conns[i].as_mut() {
                    c.flush(&mut self.backends);
                }
            }
            // Timers: KATO, dead associations, connect timeouts, stop.
            if last_tick.elapsed() >= STOP_POLL || stopping {
                last_tick = Instant::now();
                for i in 0..self.conns.len() {
                    let Some((c, born)) = self.conns[i].as_mut() else {
                        continue;
                    };
                    if let Some(b) = &c.binding {
                        if b.qid == 0 && b.ctrl.kato_expired() {
                            tracing::warn!(peer = %c.peer, cntlid = b.ctrl.cntlid, "keep-alive timeout (KATO): ending the association");
                            b.ctrl.kill();
                        }
                        if b.ctrl.is_dead() && c.ended.is_none() {
                            c.ended = Some(conn::End::Dead);
                        }
                    } else if born.elapsed() > CONNECT_TIMEOUT && c.ended.is_none() {
                        tracing::warn!(peer = %c.peer, "no Connect within {CONNECT_TIMEOUT:?}: closing");
                        c.ended = Some(conn::End::Dead);
                    }
                }
                if stop.is_set() && stopping_since.is_none() {
                    stopping_since = Some(Instant::now());
                }
            }
            for i in 0..self.conns.len() {
                let end = matches!(&self.conns[i], Some((c, _)) if c.ended.is_some() && (!c.active() || matches!(c.ended, Some(conn::End::Gone(_)))));
                if end {
                    self.remove(i);
                }
            }
            if let Some(since) = stopping_since {
                let drained = self.backends.outstanding() == 0 && self.conns.iter().flatten().all(|(c, _)| !c.active());
                if drained || since.elapsed() > Duration::from_secs(10) {
                    if !drained {
                        tracing::warn!("stopping: I/O still outstanding after 10 s");
                    }
                    self.backends.flush_all();
                    for i in 0..self.conns.len() {
                        self.remove(i);
                    }
                    return;
                }
            }
        }
    }
}

/// Serves `target` on `listeners` until `stop` is set, with one poll group per entry of
/// `placement`: the CPU its thread is pinned to (`sched_setaffinity`), or `None` for
/// one the scheduler places. An empty `placement` is one unpinned poll group. Each
/// keeps polling for `idle_spin` after its last work ([`DEFAULT_IDLE_SPIN`]; zero:
/// it sleeps as soon as it has none).
///
/// Errors: a poll group cannot start (pinning, backend queue or buffers), or polling
/// fails.
pub fn serve(
    listeners: Vec<std::net::TcpListener>,
    target: Arc<Target>,
    placement: &[Option<usize>],
    idle_spin: Duration,
    stop: Stop,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let namespaces: Vec<&Namespace> = {
        let mut all: Vec<&Namespace> = target.subsystems.iter().flat_map(|s| s.namespaces.iter()).collect();
        all.sort_by_key(|n| n.index);
        all
    };
    std::thread::scope(|s| -> Result<(), String> {
        let mut handles = Vec::new();
        let started = Arc::new(Mutex::new(Vec::<Result<(), String>>::new()));
        let mut joins = Vec::new();
        let unpinned = [None];
        let placement = if placement.is_empty() { &unpinned[..] } else { placement };
        for (g, &cpu) in placement.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| format!("eventfd: {e}"))?);
            let load = Arc::new(AtomicUsize::new(0));
            handles.push(GroupHandle {
                tx,
                waker,
                load: Arc::clone(&load),
            });
            let (target, stats, stop, namespaces, started) = (
                Arc::clone(&target),
                Arc::clone(&stats),
                stop.clone(),
                &namespaces,
                Arc::clone(&started),
            );
            joins.push(
                std::thread::Builder::new()
                    .name(format!("nvmf-pg{g}"))
                    .spawn_scoped(s, move || {
                        let backends = match cpu.map_or(Ok(()), pin_thread).and_then(|()| Backends::new(namespaces)) {
                            Ok(b) => b,
                            Err(e) => {
                                started.lock().map(|mut v| v.push(Err(e))).ok();
                                stop.set();
                                return;
                            }
                        };
                        started.lock().map(|mut v| v.push(Ok(()))).ok();
                        Group {
                            target,
                            stats,
                            poll,
                            rx,
                            load,
                            conns: Vec::new(),
                            gens: Vec::new(),
                            free: Vec::new(),
                            backends,
                            idle_spin,
                        }
                        .run(stop)
                    })
                    .map_err(|e| format!("cannot start a poll group thread: {e}"))?,
            );
        }
        let accepted = accept_loop(listeners, &handles, &stop, &stats);
        for h in &handles {
            let _ = h.waker.wake();
        }
        for j in joins {
            let _ = j.join();
        }
        if let Ok(v) = started.lock()
            && let Some(Err(e)) = v.iter().find(|r| r.is_err())
        {
            return Err(e.clone());
        }
        accepted
    })
}

/// Pins the calling thread to `cpu` (sched_setaffinity(2) on thread ID 0: the caller).
fn pin_thread(cpu: usize) -> Result<(), String> {
    crate::cli::io_shared::cpus::pin_current_thread(&[cpu]).map_err(|e| format!("a poll group: {e}"))?;
    tracing::info!(cpu, "poll group pinned");
    Ok(())
}

fn accept_loop(
    listeners: Vec<std::net::TcpListener>,
    groups: &[GroupHandle],
    stop: &Stop,
    stats: &Stats,
) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut ls = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        l.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
        let mut l = TcpListener::from_std(l);
        poll.registry()
            .register(&mut l, Token(i), Interest::READABLE)
            .map_err(|e| format!("listener: {e}"))?;
        ls.push(l);
    }
    let mut events = Events::with_capacity(16);
    while !stop.is_set() {
        if let Err(e) = poll.poll(&mut events, Some(STOP_POLL))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(format!("epoll: {e}"));
        }
        for ev in events.iter() {
            let l = &ls[ev.token().0];
            loop {
                match l.accept() {
                    Ok((sock, peer)) => {
                        if stats.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                            tracing::warn!(%peer, "refusing a connection: {MAX_CONNECTIONS} are open");
                            drop(sock);
                            continue;
                        }
                        let Some(g) = groups.iter().min_by_key(|g| g.load.load(Ordering::Relaxed)) else {
                            continue;
                        };
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        g.load.fetch_add(1, Ordering::Relaxed);
                        if g.tx.send((sock, peer)).is_ok() {
                            let _ = g.waker.wake();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EMFILE and friends: log and wait for the next event.
                        tracing::warn!(%e, "accept failed");
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_group_polls_while_busy_and_for_its_idle_spin_after_then_sleeps() {
        let spin = Duration::from_micros(1000);
        let t0 = Instant::now();
        let at = |us: u64| move || t0 + Duration::from_micros(us);
        let mut since = Some(t0);
        assert_eq!(epoll_timeout(true, &mut since, spin, at(0)), Duration::ZERO);
        assert_eq!(since, None, "work ends an idle period");
        // Idle from 10 µs on: it keeps polling until 1 ms has passed.
        assert_eq!(epoll_timeout(false, &mut since, spin, at(10)), Duration::ZERO);
        assert_eq!(since, Some(t0 + Duration::from_micros(10)));
        assert_eq!(epoll_timeout(false, &mut since, spin, at(1009)), Duration::ZERO);
        assert_eq!(epoll_timeout(false, &mut since, spin, at(1010)), STOP_POLL);
        assert_eq!(epoll_timeout(false, &mut since, spin, at(50_000)), STOP_POLL);
        // Work again restarts the window.
        assert_eq!(epoll_timeout(true, &mut since, spin, at(60_000)), Duration::ZERO);
        assert_eq!(epoll_timeout(false, &mut since, spin, at(60_500)), Duration::ZERO);
    }

    #[test]
    fn without_an_idle_spin_an_idle_poll_group_sleeps_at_once() {
        let mut since = None;
        let never = || -> Instant { panic!("the clock is not read without an idle spin") };
        assert_eq!(epoll_timeout(false, &mut since, Duration::ZERO, never), STOP_POLL);
        assert_eq!(epoll_timeout(true, &mut since, Duration::ZERO, never), Duration::ZERO);
    }
}
