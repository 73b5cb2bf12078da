//! The write path of one log directory: a thread that owns an io_uring (or, where io_uring is not
//! available, plain `pwrite`/`fdatasync`), takes appends and syncs over a bounded channel, and
//! group-commits: every round it writes everything that queued up, publishes it to readers in
//! order, then issues one `fdatasync` per dirty file of each log whose flush policy asks for one,
//! and resolves the [`Durable`] futures those syncs cover. Appends that arrive while a round's
//! syncs run wait in the channel and share the next round's syncs.
//!
//! Any write or sync error marks the whole directory failed (as Kafka takes a log directory
//! offline): the failed log is cut back to what was published before, every pending future
//! resolves with [`StorageError::LogDirFailed`], and later appends are refused until restart.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::segment::Segment;

/// Capacity of the channel into the I/O thread; appenders block (backpressure) beyond it.
pub(crate) const OPS_QUEUE_MAX: usize = 4096;
/// Operations taken into one round at most.
const ROUND_OPS_MAX: usize = 1024;
/// io_uring submission queue size.
const RING_ENTRIES: u32 = 256;

/// Which engine a directory's I/O thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngineKind {
    /// io_uring submission of writes and `fdatasync`s.
    IoUring,
    /// Positional `write` and `fdatasync` system calls, one at a time.
    Portable,
}

/// Choice of engine: `Auto` tries io_uring and falls back when the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngineChoice {
    #[default]
    Auto,
    IoUring,
    Portable,
}

impl IoEngineChoice {
    /// Reads `MILLRACE_IO_ENGINE` (`auto`, `io_uring`, `portable`); `Auto` when unset.
    pub fn from_env() -> IoEngineChoice {
        match std::env::var("MILLRACE_IO_ENGINE").as_deref() {
            Ok("io_uring") | Ok("uring") => IoEngineChoice::IoUring,
            Ok("portable") | Ok("sync") => IoEngineChoice::Portable,
            _ => IoEngineChoice::Auto,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durable: the future an append returns.

#[derive(Debug, Default)]
struct DurableSlot {
    result: Option<std::result::Result<(), (PathBuf, String)>>,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct DurableInner {
    slot: Mutex<DurableSlot>,
    ready: Condvar,
}

/// Resolves when an append is on disk (`Ok`) or can no longer get there (`Err`). Usable as a
/// `Future` from async code or with the blocking [`Durable::wait`]. Dropping it does not cancel
/// anything.
#[derive(Debug)]
pub struct Durable {
    inner: Arc<DurableInner>,
}

/// The I/O thread's end of a [`Durable`].
#[derive(Debug)]
pub(crate) struct Completer {
    inner: Arc<DurableInner>,
}

pub(crate) fn durable_pair() -> (Durable, Completer) {
    let inner = Arc::new(DurableInner::default());
    (Durable { inner: inner.clone() }, Completer { inner })
}

impl Completer {
    pub(crate) fn complete(self, result: std::result::Result<(), (PathBuf, String)>) {
        let waker = {
            let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.result = Some(result);
            slot.waker.take()
        };
        self.inner.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn to_result(r: &std::result::Result<(), (PathBuf, String)>) -> Result<()> {
    r.clone().map_err(|(dir, cause)| StorageError::LogDirFailed { dir, cause })
}

impl Durable {
    /// Blocks the calling thread until the append is durable. Not for async contexts.
    pub fn wait(self) -> Result<()> {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &slot.result {
                return to_result(r);
            }
            slot = self.inner.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether it has resolved.
    pub fn is_done(&self) -> bool {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner()).result.is_some()
    }
}

impl Future for Durable {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        match &slot.result {
            Some(r) => Poll::Ready(to_result(r)),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state between a log and the I/O thread.

/// Whether a log directory is still writable.
#[derive(Debug)]
pub(crate) struct DirHealth {
    dir: PathBuf,
    failed: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl DirHealth {
    pub(crate) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.error());
        }
        Ok(())
    }
    pub(crate) fn error(&self) -> StorageError {
        let (dir, cause) = self.failure();
        StorageError::LogDirFailed { dir, cause }
    }
    fn failure(&self) -> (PathBuf, String) {
        let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.dir.clone(), cause.unwrap_or_else(|| "unknown".into()))
    }
    pub(crate) fn fail(&self, cause: String) {
        let mut c = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none() {
            tracing::error!(dir = %self.dir.display(), %cause, "log directory failed; it refuses writes until restart");
            *c = Some(cause);
        }
        self.failed.store(true, Ordering::Release);
    }
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// A log's offsets that the I/O thread moves forward.
#[derive(Debug)]
pub(crate) struct LogProgress {
    pub(crate) id: u64,
    /// One past the last offset whose bytes are written (readable).
    pub(crate) written_end: AtomicI64,
    /// One past the last offset that is fsynced.
    pub(crate) durable_end: AtomicI64,
    /// Policy copied from the log's config (`flush.messages`, `flush.ms`).
    pub(crate) flush_messages: AtomicI64,
    pub(crate) flush_ms: AtomicI64,
    /// Set when a write of this log failed; the log rolls back its in-memory state.
    pub(crate) write_failed: AtomicBool,
    /// Bumped when new data becomes visible; readers may wait on `changed`.
    pub(crate) version: AtomicU64,
    pub(crate) changed: (Mutex<()>, Condvar),
}

impl LogProgress {
    pub(crate) fn new(id: u64, end: i64, flush_messages: i64, flush_ms: i64) -> LogProgress {
        LogProgress {
            id,
            written_end: AtomicI64::new(end),
            durable_end: AtomicI64::new(end),
            flush_messages: AtomicI64::new(flush_messages),
            flush_ms: AtomicI64::new(flush_ms),
            write_failed: AtomicBool::new(false),
            version: AtomicU64::new(0),
            changed: (Mutex::new(()), Condvar::new()),
        }
    }

    fn notify(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        let _g = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.1.notify_all();
    }
}

/// A callback the I/O thread runs in order with the appends before it, after syncing the log
/// (used to advance the recovery point once a rolled segment is on disk).
pub(crate) type AfterSync = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

pub(crate) enum Op {
    Append {
        log: Arc<LogProgress>,
        segment: Arc<Segment>,
        position: u64,
        data: Bytes,
        end_offset: i64,
        records: i64,
        done: Completer,
    },
    /// Sync everything written so far for `log`, then run `then`.
    Sync {
        log: Arc<LogProgress>,
        done: Option<Completer>,
        then: Option<AfterSync>,
    },
    Shutdown,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Append { position, end_offset, .. } => {
                write!(f, "Append(pos {position}, end {end_offset})")
            }
            Op::Sync { .. } => f.write_str("Sync"),
            Op::Shutdown => f.write_str("Shutdown"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engines.

struct WriteJob<'a> {
    file: &'a File,
    position: u64,
    data: &'a [u8],
}

trait Engine {
    /// Writes every job fully; one result per job.
    fn write(&mut self, jobs: &[WriteJob<'_>]) -> Vec<std::io::Result<()>>;
    /// `fdatasync`s every file; one result per file.
    fn sync(&mut self, files: &[&File]) -> Vec<std::io::Result<()>>;
}

struct Portable;

impl Engine for Portable {
    fn write(&mut self, jobs: &[WriteJob<'_>]) -> Vec<std::io::Result<()>> {
        jobs.iter().map(|j| j.file.write_all_at(j.data, j.position)).collect()
    }
    fn sync(&mut self, files: &[&File]) -> Vec<std::io::Result<()>> {
        files.iter().map(|f| f.sync_data()).collect()
    }
}

struct Uring {
    ring: io_uring::IoUring,
}

impl Uring {
    fn new() -> std::io::Result<Uring> {
        let ring = io_uring::IoUring::new(RING_ENTRIES)?;
        // Probe with a no-op so a ring that can be created but not used (seccomp) is caught here.
        let nop = io_uring::opcode::Nop::new().build().user_data(u64::MAX);
        // SAFETY: a Nop references no memory.
        unsafe {
            ring.submission_shared().push(&nop).map_err(|_| std::io::Error::other("sq full"))?
        };
        let mut ring = ring;
        ring.submit_and_wait(1)?;
        let res = ring.completion().next().map(|c| c.result()).unwrap_or(-libc::EIO);
        if res < 0 {
            return Err(std::io::Error::from_raw_os_error(-res));
        }
        Ok(Uring { ring })
    }

    /// Runs `n` operations, `make(i, done)` building the entry for the rest of operation `i`
    /// (`done` bytes of it already complete), resubmitting short writes until each finishes.
    fn run(
        &mut self,
        n: usize,
        len_of: impl Fn(usize) -> usize,
        make: impl Fn(usize, usize) -> io_uring::squeue::Entry,
    ) -> Vec<std::io::Result<()>> {
        let mut results: Vec<Option<std::io::Result<()>>> = (0..n).map(|_| None).collect();
        let mut done = vec![0usize; n];
        let mut queue: VecDeque<usize> = (0..n).collect();
        let mut in_flight = 0usize;
        while !queue.is_empty() || in_flight > 0 {
            while let Some(&i) = queue.front() {
                let entry = make(i, done[i]).user_data(i as u64);
                // SAFETY: the entry points into buffers and files borrowed by the caller for the
                // whole of this call, and we wait for every submitted entry before returning.
                let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
                if !pushed {
                    break;
                }
                queue.pop_front();
                in_flight += 1;
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The ring itself failed: fail everything not yet finished.
                let msg = e.to_string();
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(std::io::Error::other(msg.clone())));
                }
                // In-flight entries still reference caller memory; drain them before returning.
                while in_flight > 0 {
                    let _ = self.ring.submit_and_wait(in_flight);
                    in_flight -= self.ring.completion().count().min(in_flight);
                }
                return results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
            }
            let completed: Vec<(u64, i32)> =
                self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (ud, res) in completed {
                if ud == u64::MAX {
                    continue;
                }
                let i = ud as usize;
                in_flight -= 1;
                if res < 0 {
                    if -res == libc::EINTR || -res == libc::EAGAIN {
                        queue.push_back(i);
                    } else {
                        results[i] = Some(Err(std::io::Error::from_raw_os_error(-res)));
                    }
                    continue;
                }
                done[i] += res as usize;
                let len = len_of(i);
                if done[i] >= len {
                    results[i] = Some(Ok(()));
                } else if res == 0 {
                    results[i] = Some(Err(std::io::ErrorKind::WriteZero.into()));
                } else {
                    queue.push_back(i);
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }
}

impl Engine for Uring {
    fn write(&mut self, jobs: &[WriteJob<'_>]) -> Vec<std::io::Result<()>> {
        use io_uring::{opcode, types};
        self.run(
            jobs.len(),
            |i| jobs[i].data.len(),
            |i, done| {
                let j = &jobs[i];
                let rest = &j.data[done..];
                opcode::Write::new(types::Fd(j.file.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
                    .offset(j.position + done as u64)
                    .build()
            },
        )
    }
    fn sync(&mut self, files: &[&File]) -> Vec<std::io::Result<()>> {
        use io_uring::{opcode, types};
        self.run(
            files.len(),
            |_| 0,
            |i, _| {
                opcode::Fsync::new(types::Fd(files[i].as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The thread.

/// A log directory's I/O thread. Dropping it finishes queued work and joins the thread.
#[derive(Debug)]
pub struct IoThread {
    tx: SyncSender<Op>,
    health: Arc<DirHealth>,
    kind: IoEngineKind,
    join: Mutex<Option<JoinHandle<()>>>,
    next_log_id: AtomicU64,
}

/// Per-log state only the I/O thread touches.
struct Pending {
    log: Arc<LogProgress>,
    dirty: Vec<Arc<File>>,
    waiters: VecDeque<Completer>,
    unflushed_records: i64,
    first_unflushed: Option<Instant>,
    force: bool,
    after: Vec<AfterSync>,
}

impl IoThread {
    /// Starts the I/O thread for `dir`.
    pub fn start(dir: &Path, choice: IoEngineChoice) -> Result<IoThread> {
        let uring = match choice {
            IoEngineChoice::Portable => None,
            IoEngineChoice::IoUring => Some(Uring::new().map_err(|e| StorageError::io(dir, e))?),
            IoEngineChoice::Auto => Uring::new()
                .inspect_err(|e| {
                    tracing::info!(error = %e, "io_uring unavailable; using the portable write path")
                })
                .ok(),
        };
        let (engine, kind): (Box<dyn Engine + Send>, _) = match uring {
            Some(u) => (Box::new(u), IoEngineKind::IoUring),
            None => (Box::new(Portable), IoEngineKind::Portable),
        };
        let health = Arc::new(DirHealth {
            dir: dir.to_owned(),
            failed: AtomicBool::new(false),
            cause: Mutex::new(None),
        });
        let (tx, rx) = mpsc::sync_channel(OPS_QUEUE_MAX);
        let h = health.clone();
        let join = std::thread::Builder::new()
            .name(format!("millrace-io {}", dir.display()))
            .spawn(move || run(engine, rx, h))
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(IoThread {
            tx,
            health,
            kind,
            join: Mutex::new(Some(join)),
            next_log_id: AtomicU64::new(1),
        })
    }

    /// The engine in use.
    pub fn engine(&self) -> IoEngineKind {
        self.kind
    }

    pub(crate) fn health(&self) -> &Arc<DirHealth> {
        &self.health
    }

    pub(crate) fn new_log_id(&self) -> u64 {
        self.next_log_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn submit(&self, op: Op) -> Result<()> {
        self.tx.send(op).map_err(|_| StorageError::Closed)
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.tx.send(Op::Shutdown);
        if let Some(j) = self.join.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = j.join();
        }
    }
}

fn run(mut engine: Box<dyn Engine + Send>, rx: Receiver<Op>, health: Arc<DirHealth>) {
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut ops: Vec<Op> = Vec::with_capacity(ROUND_OPS_MAX);
    let mut shutdown = false;
    while !shutdown {
        // Wait for work, or for the earliest flush.ms deadline.
        let deadline = pending
            .values()
            .filter_map(|p| {
                let ms = p.log.flush_ms.load(Ordering::Relaxed);
                p.first_unflushed.map(|t| t + Duration::from_millis(ms.clamp(0, 1 << 40) as u64))
            })
            .min();
        let first = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            },
        };
        ops.extend(first);
        while ops.len() < ROUND_OPS_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        round(engine.as_mut(), &mut ops, &mut pending, &health, &mut shutdown);
    }
    // Resolve whatever is left so no waiter hangs.
    for (_, p) in pending.drain() {
        for w in p.waiters {
            w.complete(Err((PathBuf::new(), "log directory closed".into())));
        }
    }
}

fn round(
    engine: &mut dyn Engine,
    ops: &mut Vec<Op>,
    pending: &mut HashMap<u64, Pending>,
    health: &DirHealth,
    shutdown: &mut bool,
) {
    // 1. Writes, in submission order.
    let mut appends = Vec::new();
    let mut syncs = Vec::new();
    for op in ops.drain(..) {
        match op {
            Op::Append { .. } => appends.push(op),
            Op::Sync { .. } => syncs.push(op),
            Op::Shutdown => *shutdown = true,
        }
    }
    if !appends.is_empty() {
        let results = if health.is_failed() {
            Vec::new()
        } else {
            let jobs: Vec<WriteJob<'_>> = appends
                .iter()
                .map(|op| match op {
                    Op::Append { segment, position, data, .. } => {
                        WriteJob { file: &segment.file, position: *position, data }
                    }
                    _ => unreachable!("only appends were collected"),
                })
                .collect();
            engine.write(&jobs)
        };
        let mut failed_logs: HashMap<u64, ()> = HashMap::new();
        for (i, op) in appends.into_iter().enumerate() {
            let Op::Append { log, segment, position, data, end_offset, records, done } = op else {
                continue;
            };
            let result = results.get(i);
            let ok = matches!(result, Some(Ok(()))) && !failed_logs.contains_key(&log.id);
            if !ok {
                if let Some(Err(e)) = result {
                    health.fail(format!("write to {} failed: {e}", segment.log_path.display()));
                }
                if failed_logs.insert(log.id, ()).is_none() {
                    // Cut back to what readers were given; later writes of this log are dropped.
                    let keep = segment.published_len();
                    if let Err(e) = segment.truncate_after_failure(keep) {
                        tracing::error!(error = %e, "could not truncate after a failed write");
                    }
                    log.write_failed.store(true, Ordering::Release);
                }
                done.complete(Err(fail_info(health)));
                continue;
            }
            segment.publish(position + data.len() as u64);
            log.written_end.store(end_offset, Ordering::Release);
            let p = pending.entry(log.id).or_insert_with(|| Pending::new(log.clone()));
            if !p.dirty.iter().any(|f| Arc::ptr_eq(f, &segment.file)) {
                p.dirty.push(segment.file.clone());
            }
            p.waiters.push_back(done);
            p.unflushed_records += records;
            p.first_unflushed.get_or_insert_with(Instant::now);
            if log.flush_messages.load(Ordering::Relaxed) > 1 {
                log.notify(); // visible before it is durable under this policy
            }
        }
    }
    for op in syncs {
        if let Op::Sync { log, done, then } = op {
            let p = pending.entry(log.id).or_insert_with(|| Pending::new(log.clone()));
            p.force = true;
            p.waiters.extend(done);
            p.after.extend(then);
        }
    }

    // 2. Group commit: one fdatasync per dirty file of each log that is due.
    let now = Instant::now();
    let due: Vec<u64> = pending.iter().filter(|(_, p)| p.is_due(now)).map(|(id, _)| *id).collect();
    if due.is_empty() {
        return;
    }
    let mut files: Vec<Arc<File>> = Vec::new();
    for id in &due {
        for f in &pending[id].dirty {
            if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                files.push(f.clone());
            }
        }
    }
    let results = if health.is_failed() {
        Vec::new()
    } else {
        let refs: Vec<&File> = files.iter().map(|f| f.as_ref()).collect();
        engine.sync(&refs)
    };
    if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
        health.fail(format!("fdatasync failed: {e}"));
    }
    for id in due {
        let Some(mut p) = pending.remove(&id) else { continue };
        if health.is_failed() {
            for w in p.waiters.drain(..) {
                w.complete(Err(fail_info(health)));
            }
            p.after.clear();
            continue;
        }
        let written = p.log.written_end.load(Ordering::Acquire);
        p.log.durable_end.fetch_max(written, Ordering::AcqRel);
        // Callbacks first: a waiter released here may rely on them having run.
        for f in p.after.drain(..) {
            if let Err(e) = f() {
                health.fail(format!("checkpoint write failed: {e}"));
            }
        }
        for w in p.waiters.drain(..) {
            w.complete(Ok(()));
        }
        p.log.notify();
    }
}

fn fail_info(health: &DirHealth) -> (PathBuf, String) {
    health.failure()
}

impl Pending {
    fn new(log: Arc<LogProgress>) -> Pending {
        Pending {
            log,
            dirty: Vec::new(),
            waiters: VecDeque::new(),
            unflushed_records: 0,
            first_unflushed: None,
            force: false,
            after: Vec::new(),
        }
    }

    fn is_due(&self, now: Instant) -> bool {
        let flush_messages = self.log.flush_messages.load(Ordering::Relaxed);
        let flush_ms = self.log.flush_ms.load(Ordering::Relaxed);
        self.force
            || (self.unflushed_records > 0
                && (self.unflushed_records >= flush_messages
                    || self.first_unflushed.is_some_and(|t| {
                        now.duration_since(t).as_millis() >= flush_ms.max(0) as u128
                    })))
    }
}
