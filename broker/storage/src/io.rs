//! The write path of one log directory: a thread that owns an io_uring (or, where io_uring is not
//! available, plain `pwrite`/`fdatasync`) and takes appends and syncs over a bounded channel.
//!
//! Appends are written (`pwritev`, on this thread) as soon as they arrive and published to
//! readers in order. Group commit is per log: when a log has published appends waiting under
//! `flush.messages=1` (or its relaxed `flush.messages` / `flush.ms` is due, or a flush was asked
//! for, explicitly or by an append with [`crate::Flush::Now`]) and no sync of it is running,
//! one `fdatasync` per dirty segment file is submitted, covering everything published so
//! far; when they all complete, the log's durable end advances and the [`Durable`] futures they
//! cover resolve. Appends that arrive meanwhile are written at once and wait for that log's next
//! sync, while other logs' writes and syncs proceed independently. With io_uring the syncs of
//! all logs are in flight together and the thread sleeps in `io_uring_enter`, woken by
//! completions or by an eventfd that [`IoThread::submit`] writes when it sleeps; the portable
//! engine runs each operation in turn.
//!
//! Beside it runs the directory's background thread, for work that would otherwise hold up
//! appends or syncs: sealing a rolled segment and then checkpointing the recovery point, and
//! deleting segments ([`IoThread::background`]). Its jobs run in order and may wait for the
//! I/O thread.
//!
//! Any write or sync error marks the whole directory failed (as Kafka takes a log directory
//! offline): the failed log is cut back to what was published before, every pending future
//! resolves with [`StorageError::LogDirFailed`], and later appends are refused until restart.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::direct::{DirectWrite, TailBudget};
use crate::error::{Result, StorageError};
use crate::log::BATCH_PATCH_LEN;
use crate::segment::Segment;

/// Capacity of the channel into the I/O thread; appenders block (backpressure) beyond it.
pub(crate) const OPS_QUEUE_MAX: usize = 4096;
/// Operations taken into one round at most.
const ROUND_OPS_MAX: usize = 1024;
/// Capacity of the background thread's queue; a roll or a retention pass blocks beyond it.
const BACKGROUND_QUEUE_MAX: usize = 256;
/// io_uring submission queue size.
const RING_ENTRIES: u32 = 256;

/// Which engine a directory's I/O thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngineKind {
    /// `fdatasync`s submitted through io_uring, many in flight (writes are `pwritev` either way).
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
// Bursts: appends submitted together.

/// Callers in the middle of submitting several appends (one produce request's partitions).
static BURSTS: AtomicUsize = AtomicUsize::new(0);

/// Held while a caller submits several appends that would best be synced together: an I/O
/// thread then leaves a lone fdatasync to io_uring rather than doing it on the spot (which
/// would hold the rest of the burst back until it finished).
#[derive(Debug)]
pub struct AppendBurst(());

impl AppendBurst {
    pub fn start() -> AppendBurst {
        BURSTS.fetch_add(1, Ordering::AcqRel);
        AppendBurst(())
    }
}

impl Drop for AppendBurst {
    fn drop(&mut self) {
        BURSTS.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------------------------------------
// Durable: the future an append returns.

#[derive(Debug, Default)]
struct DurableSlot {
    result: Option<std::result::Result<(), (PathBuf, String)>>,
    waker: Option<Waker>,
}

/// Two slots, so that an append's two futures (written, durable) take one allocation.
#[derive(Debug, Default)]
struct DurableInner {
    slots: [Mutex<DurableSlot>; 2],
    /// One per slot (a condition variable is used with one mutex only).
    ready: [Condvar; 2],
}

/// Resolves when an append is on disk (`Ok`) or can no longer get there (`Err`). Usable as a
/// `Future` from async code or with the blocking [`Durable::wait`]. Dropping it does not cancel
/// anything.
#[derive(Debug)]
pub struct Durable {
    inner: Arc<DurableInner>,
    slot: usize,
}

/// The I/O thread's end of a [`Durable`].
#[derive(Debug)]
pub(crate) struct Completer {
    inner: Arc<DurableInner>,
    slot: usize,
}

pub(crate) fn durable_pair() -> (Durable, Completer) {
    let inner = Arc::new(DurableInner::default());
    (Durable { inner: inner.clone(), slot: 0 }, Completer { inner, slot: 0 })
}

/// Two independent pairs in one allocation.
pub(crate) fn durable_pairs() -> ((Durable, Completer), (Durable, Completer)) {
    let inner = Arc::new(DurableInner::default());
    let pair =
        |slot| (Durable { inner: inner.clone(), slot }, Completer { inner: inner.clone(), slot });
    (pair(0), pair(1))
}

impl Completer {
    pub(crate) fn complete(self, result: std::result::Result<(), (PathBuf, String)>) {
        self.set(|| result);
    }

    /// Answers the waiter unless it has its answer already (`result` is only built then).
    fn set(&self, result: impl FnOnce() -> std::result::Result<(), (PathBuf, String)>) {
        let waker = {
            let mut slot = self.inner.slots[self.slot].lock().unwrap_or_else(|e| e.into_inner());
            if slot.result.is_some() {
                return;
            }
            slot.result = Some(result());
            slot.waker.take()
        };
        self.inner.ready[self.slot].notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Completer {
    /// A completer dropped without an answer (a path that forgot it) fails its waiter rather
    /// than leaving it waiting forever.
    fn drop(&mut self) {
        self.set(|| {
            Err((PathBuf::new(), "the append was dropped before it completed".to_string()))
        });
    }
}

fn to_result(r: &std::result::Result<(), (PathBuf, String)>) -> Result<()> {
    r.clone().map_err(|(dir, cause)| StorageError::LogDirFailed { dir, cause })
}

impl Durable {
    /// Blocks the calling thread until the append is durable. Not for async contexts.
    pub fn wait(self) -> Result<()> {
        let mut slot = self.inner.slots[self.slot].lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &slot.result {
                return to_result(r);
            }
            slot = self.inner.ready[self.slot].wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether it has resolved.
    pub fn is_done(&self) -> bool {
        self.inner.slots[self.slot].lock().unwrap_or_else(|e| e.into_inner()).result.is_some()
    }
}

impl Future for Durable {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut slot = self.inner.slots[self.slot].lock().unwrap_or_else(|e| e.into_inner());
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
    pub(crate) fn failure(&self) -> (PathBuf, String) {
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
    /// Tasks waiting (asynchronously) for `version` to change.
    pub(crate) wakers: Mutex<Vec<Waker>>,
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
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn notify(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        {
            let _g = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
            self.changed.1.notify_all();
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }
}

/// Resolves when a log's visible data changes (see [`crate::Log::data_changed`]).
#[derive(Debug)]
pub struct DataChanged {
    pub(crate) progress: Arc<LogProgress>,
    pub(crate) seen: u64,
}

impl Future for DataChanged {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.progress.version.load(Ordering::Acquire) != self.seen {
            return Poll::Ready(());
        }
        {
            let mut wakers = self.progress.wakers.lock().unwrap_or_else(|e| e.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // Re-check: a notify between the first check and the registration would be missed.
        if self.progress.version.load(Ordering::Acquire) != self.seen {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Work for a directory's background thread (see [`IoThread::background`]).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// On a background thread: deleted segments whose files something still holds, with their
    /// `.deleted` paths, retried until nothing does (see [`linger`]).
    static LINGERING: std::cell::RefCell<Vec<(Arc<Segment>, PathBuf)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// From a background job: finish deleting `segment` (see `Segment::finish_delete`) once nothing
/// holds its file any more. The thread retries every `LINGER_RETRY` and after every job; what is
/// left at shutdown stays as a `.deleted` file, which the next open removes.
pub(crate) fn linger(segment: Arc<Segment>, doomed: PathBuf) {
    LINGERING.with(|l| l.borrow_mut().push((segment, doomed)));
}

const LINGER_RETRY: Duration = Duration::from_millis(500);

fn background_loop(queue: &Receiver<Job>, health: &DirHealth) {
    loop {
        let waiting = LINGERING.with(|l| !l.borrow().is_empty());
        let job = if waiting {
            match queue.recv_timeout(LINGER_RETRY) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match queue.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        };
        if let Some(job) = job {
            // A job that panics (a bug) must not take the thread, and with it the seals and
            // checkpoints of every later roll, down unnoticed.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                health.fail("a background job (seal, checkpoint or delete) panicked".into());
            }
        }
        let lingering = LINGERING.with(|l| std::mem::take(&mut *l.borrow_mut()));
        for (segment, doomed) in lingering {
            match segment.finish_delete(&doomed) {
                Ok(true) => {}
                Ok(false) => linger(segment, doomed),
                Err(e) => health.fail(format!("deleting {} failed: {e}", doomed.display())),
            }
        }
    }
}

/// A piece of an append: a batch's first bytes with its offset and epoch assigned (kept inline:
/// no allocation per batch), or a slice of the request's own buffer.
#[derive(Debug)]
pub(crate) enum Piece {
    Head([u8; BATCH_PATCH_LEN]),
    Bytes(Bytes),
}

impl Piece {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Piece::Head(h) => h,
            Piece::Bytes(b) => b,
        }
    }
}

/// An append's pieces: a head and a body per batch; requests of up to two batches need no
/// allocation for the list.
pub(crate) type Pieces = smallvec::SmallVec<[Piece; 4]>;

/// What an append writes.
#[derive(Debug)]
pub(crate) enum AppendData {
    /// Through the page cache, at the append's position.
    Buffered(Pieces),
    /// With direct I/O, from the segment's tail.
    Direct(DirectWrite),
}

pub(crate) enum Op {
    Append {
        /// What is published and synced once the bytes are written.
        append: Appended,
        position: u64,
        /// The bytes to write: patched batch heads and slices of the request, in order, or
        /// whole blocks of a direct tail.
        data: AppendData,
    },
    /// Sync everything written so far for `log`.
    Sync {
        log: Arc<LogProgress>,
        done: Option<Completer>,
    },
    Shutdown,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Append { append, position, .. } => {
                write!(f, "Append(pos {position}, end {})", append.end_offset)
            }
            Op::Sync { .. } => f.write_str("Sync"),
            Op::Shutdown => f.write_str("Shutdown"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engines: where fsyncs are executed.

/// Tag of the io_uring read on the wake eventfd.
const WAKE_TAG: u64 = u64::MAX;

/// Executes fsyncs, possibly asynchronously; completions come back by tag with a result like a
/// system call's (`0`, or `-errno`). Writes need no engine: see [`write_all_at`].
trait Engine {
    /// Queues an `fdatasync`.
    fn fsync(&mut self, tag: u64, fd: RawFd);
    /// Operations queued or running.
    fn in_flight(&self) -> usize;
    /// Submits what is queued and collects completions into `out`. With `wait`, blocks until at
    /// least one completes, [`IoThread::submit`] wakes it, or `deadline` passes.
    fn complete(&mut self, wait: bool, deadline: Option<Instant>, out: &mut Vec<(u64, i32)>);
}

/// Runs each operation at once with the plain system call.
struct Portable {
    done: Vec<(u64, i32)>,
}

fn errno_of(e: &std::io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// `fdatasync(fd)` on the calling thread, as a completion result (`0` or `-errno`).
fn fdatasync_now(fd: RawFd) -> i32 {
    // SAFETY: plain system call on a descriptor the caller keeps open.
    let rc = unsafe { libc::fdatasync(fd) };
    if rc < 0 {
        errno_of(&std::io::Error::last_os_error())
    } else {
        0
    }
}

impl Engine for Portable {
    fn fsync(&mut self, tag: u64, fd: RawFd) {
        self.done.push((tag, fdatasync_now(fd)));
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn complete(&mut self, _wait: bool, _deadline: Option<Instant>, out: &mut Vec<(u64, i32)>) {
        out.append(&mut self.done);
    }
}

/// io_uring: the fsyncs of many logs in flight at once; a read on an eventfd lets submitters
/// wake the thread while it waits for completions.
struct Uring {
    ring: io_uring::IoUring,
    /// Entries not yet accepted by a full submission queue.
    backlog: VecDeque<io_uring::squeue::Entry>,
    in_flight: usize,
    wake_fd: OwnedFd,
    /// Target of the eventfd read; boxed so its address is stable while the read is armed.
    wake_buf: Box<[u8; 8]>,
}

impl Uring {
    fn new(wake_fd: OwnedFd) -> std::io::Result<Uring> {
        let mut ring = io_uring::IoUring::new(RING_ENTRIES)?;
        // Probe with a no-op so a ring that can be created but not used (seccomp) is caught here.
        let nop = io_uring::opcode::Nop::new().build().user_data(0);
        // SAFETY: a Nop references no memory.
        unsafe { ring.submission().push(&nop).map_err(|_| std::io::Error::other("sq full"))? };
        ring.submit_and_wait(1)?;
        let res = ring.completion().next().map(|c| c.result()).unwrap_or(-libc::EIO);
        if res < 0 {
            return Err(std::io::Error::from_raw_os_error(-res));
        }
        let mut u = Uring {
            ring,
            backlog: VecDeque::new(),
            in_flight: 0,
            wake_fd,
            wake_buf: Box::new([0; 8]),
        };
        u.arm_wake();
        Ok(u)
    }

    fn arm_wake(&mut self) {
        let entry = io_uring::opcode::Read::new(
            io_uring::types::Fd(self.wake_fd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE_TAG);
        self.backlog.push_back(entry);
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) {
        self.in_flight += 1;
        self.backlog.push_back(entry);
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: every entry (an fsync, the eventfd read into the boxed wake buffer) points
            // at memory and descriptors that stay valid until its completion is reaped: the
            // files are held by the log's sync group, the buffer by `self`.
            if unsafe { self.ring.submission().push(entry).is_err() } {
                break;
            }
            self.backlog.pop_front();
        }
    }
}

impl Engine for Uring {
    fn fsync(&mut self, tag: u64, fd: RawFd) {
        let entry = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd))
            .flags(io_uring::types::FsyncFlags::DATASYNC)
            .build()
            .user_data(tag);
        self.push(entry);
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn complete(&mut self, wait: bool, deadline: Option<Instant>, out: &mut Vec<(u64, i32)>) {
        loop {
            self.flush_backlog();
            let want = usize::from(wait && out.is_empty());
            let r = match deadline {
                Some(d) if want > 0 => {
                    let ts = io_uring::types::Timespec::from(
                        d.saturating_duration_since(Instant::now()),
                    );
                    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(want, &args)
                }
                _ => self.ring.submitter().submit_and_wait(want),
            };
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {} // reap, then retry
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let mut rearm = false;
            for c in self.ring.completion() {
                if c.user_data() == WAKE_TAG {
                    rearm = true;
                } else {
                    self.in_flight -= 1;
                    out.push((c.user_data(), c.result()));
                }
            }
            if rearm {
                self.arm_wake();
                self.flush_backlog();
            }
            if !wait || !out.is_empty() || rearm || deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The thread.

/// A log directory's I/O thread, and its background thread for the work that must not hold up
/// appends or syncs (sealing a rolled segment, deleting one: see `Log::roll_locked`). Dropping it finishes the
/// queued background work, then the queued I/O, and joins both threads.
#[derive(Debug)]
pub struct IoThread {
    submitter: Submitter,
    health: Arc<DirHealth>,
    kind: IoEngineKind,
    join: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Option<(SyncSender<Job>, JoinHandle<()>)>>,
    next_log_id: AtomicU64,
    page_cache_window: Arc<AtomicU64>,
    /// See [`IoThread::set_direct_io`]; `None` when off.
    direct_io: Mutex<Option<Arc<TailBudget>>>,
}

/// Direct-I/O settings of a log directory ([`IoThread::set_direct_io`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectIo {
    /// Bytes of each partition's newest data kept in memory (`--log-direct-io-cache-bytes`).
    pub cache_bytes: u64,
    /// Bytes of memory all the directory's partitions may hold together for it
    /// (`--log-direct-io-memory-bytes`); the partitions appended to least recently let go first.
    pub memory_bytes: u64,
}

impl DirectIo {
    /// The broker's default budget for a directory: 256 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

    /// `cache_bytes` per partition, within the default budget for the directory.
    pub fn with_cache(cache_bytes: u64) -> DirectIo {
        DirectIo { cache_bytes, memory_bytes: Self::DEFAULT_MEMORY_BYTES }
    }
}

/// Sends operations to the I/O thread (waking it when it sleeps on io_uring completions).
#[derive(Debug, Clone)]
pub(crate) struct Submitter {
    tx: SyncSender<Op>,
    /// Set while the thread waits on io_uring completions: a submitter then writes `wake_fd`.
    sleeping: Arc<AtomicBool>,
    wake_fd: Option<Arc<OwnedFd>>,
}

impl Submitter {
    pub(crate) fn submit(&self, op: Op) -> Result<()> {
        self.tx.send(op).map_err(|_| StorageError::Closed)?;
        if let Some(fd) = &self.wake_fd {
            if self.sleeping.load(Ordering::SeqCst) {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writing 8 bytes from a valid buffer to an eventfd we own.
                unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            }
        }
        Ok(())
    }

    /// Blocks until everything `log` appended before this call is on disk.
    pub(crate) fn sync_and_wait(&self, log: &Arc<LogProgress>) -> Result<()> {
        let (durable, done) = durable_pair();
        self.submit(Op::Sync { log: log.clone(), done: Some(done) })?;
        durable.wait()
    }
}

impl IoThread {
    /// Starts the I/O thread for `dir`.
    pub fn start(dir: &Path, choice: IoEngineChoice) -> Result<IoThread> {
        let make_uring = || -> std::io::Result<(Uring, Arc<OwnedFd>)> {
            // SAFETY: eventfd returns a new descriptor or -1.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let reader = owned.try_clone()?;
            Ok((Uring::new(reader)?, Arc::new(owned)))
        };
        let uring = match choice {
            IoEngineChoice::Portable => None,
            IoEngineChoice::IoUring => Some(make_uring().map_err(|e| StorageError::io(dir, e))?),
            IoEngineChoice::Auto => make_uring()
                .inspect_err(|e| {
                    tracing::info!(error = %e, "io_uring unavailable; using the portable write path")
                })
                .ok(),
        };
        let (engine, kind, wake_fd): (Box<dyn Engine + Send>, _, _) = match uring {
            Some((u, fd)) => (Box::new(u), IoEngineKind::IoUring, Some(fd)),
            None => (Box::new(Portable { done: Vec::new() }), IoEngineKind::Portable, None),
        };
        let health = Arc::new(DirHealth {
            dir: dir.to_owned(),
            failed: AtomicBool::new(false),
            cause: Mutex::new(None),
        });
        let sleeping = Arc::new(AtomicBool::new(false));
        let page_cache_window = Arc::new(AtomicU64::new(u64::MAX));
        let (tx, rx) = mpsc::sync_channel(OPS_QUEUE_MAX);
        let mut looper = Looper {
            engine,
            rx,
            health: health.clone(),
            sleeping: sleeping.clone(),
            logs: HashMap::new(),
            idle: HashMap::new(),
            idle_prune_at: 64,
            tags: HashMap::new(),
            next_tag: 1,
            shutdown: false,
            ids: Vec::new(),
            page_cache_window: page_cache_window.clone(),
            direct: Vec::new(),
        };
        let join = std::thread::Builder::new()
            .name(format!("millrace-io {}", dir.display()))
            .spawn(move || looper.run())
            .map_err(|e| StorageError::io(dir, e))?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(BACKGROUND_QUEUE_MAX);
        let bg_health = health.clone();
        let background = std::thread::Builder::new()
            .name(format!("millrace-bg {}", dir.display()))
            .spawn(move || background_loop(&queue, &bg_health))
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(IoThread {
            submitter: Submitter { tx, sleeping, wake_fd },
            health,
            kind,
            join: Mutex::new(Some(join)),
            background: Mutex::new(Some((jobs, background))),
            next_log_id: AtomicU64::new(1),
            page_cache_window,
            direct_io: Mutex::new(None),
        })
    }

    /// Keeps at most about `window` bytes of each segment file's most recently written data in
    /// the page cache: as appends go on, older pages are dropped (`POSIX_FADV_DONTNEED`), so
    /// that writing keeps reusing the same memory instead of taking new pages. `None` (the
    /// default) leaves the page cache to the kernel, as Kafka does. Readers further behind
    /// than the window read from the disk. See `docs/design/storage.md`, "Page-cache window".
    pub fn set_page_cache_window(&self, window: Option<u64>) {
        let w = window.map_or(u64::MAX, |w| w.min(u64::MAX - 1));
        self.page_cache_window.store(w, Ordering::Relaxed);
    }

    /// Writes the active segments of logs opened (and segments rolled) from now on with direct
    /// I/O, bypassing the page cache, and serves their newest `cache_bytes` (per partition,
    /// within `memory_bytes` for the directory) from memory; `None` (the default) writes
    /// through the page cache, as Kafka does. Readers further behind read through the page
    /// cache, from the disk. Where the file system does not take `O_DIRECT`, segments are
    /// written through the page cache. See `docs/design/storage.md`, "Direct I/O".
    pub fn set_direct_io(&self, direct: Option<DirectIo>) {
        let budget = direct.map(|d| {
            let budget = TailBudget::new(d.cache_bytes, d.memory_bytes);
            budget.start_filler();
            budget
        });
        *self.direct_io.lock().unwrap_or_else(|e| e.into_inner()) = budget;
    }

    /// The memory budget new direct tails count in, `None` with direct I/O off.
    pub(crate) fn direct_io(&self) -> Option<Arc<TailBudget>> {
        self.direct_io.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes of memory the directory holds for direct I/O: its tails' and the chunks kept
    /// ready for them (0 with direct I/O off).
    pub fn direct_io_memory(&self) -> u64 {
        self.direct_io().map_or(0, |b| b.held())
    }

    /// Bytes of memory the directory's direct tails hold, without the ready chunks.
    #[cfg(test)]
    pub(crate) fn direct_io_tail_memory(&self) -> u64 {
        self.direct_io().map_or(0, |b| b.tails_held())
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
        self.submitter.submit(op)
    }

    pub(crate) fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// See [`Submitter::sync_and_wait`].
    pub(crate) fn sync_and_wait(&self, log: &Arc<LogProgress>) -> Result<()> {
        self.submitter.sync_and_wait(log)
    }

    /// Runs `job` on the directory's background thread, after the jobs queued before it. A job
    /// may wait for the I/O thread; it must not hold a reference to this `IoThread`.
    pub(crate) fn background(&self, job: Job) -> Result<()> {
        let bg = self.background.lock().unwrap_or_else(|e| e.into_inner());
        match bg.as_ref() {
            Some((jobs, _)) => jobs.send(job).map_err(|_| StorageError::Closed),
            None => Err(StorageError::Closed),
        }
    }

    /// Blocks until every background job queued before this call has run.
    pub(crate) fn background_barrier(&self) {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        if self
            .background(Box::new(move || {
                let _ = tx.send(());
            }))
            .is_ok()
        {
            // An error means the job was dropped unrun: the thread is gone, nothing is queued.
            let _ = rx.recv();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        // Background jobs first: they may wait for the I/O thread.
        let bg = self.background.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((jobs, thread)) = bg {
            drop(jobs);
            let _ = thread.join();
        }
        let _ = self.submit(Op::Shutdown);
        if let Some(j) = self.join.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = j.join();
        }
    }
}

/// Writes `chunks`, in order, at `offset` of `file`; returns how many bytes that was. Buffered
/// writes are done here, on the I/O thread: ext4 cannot take them without possibly blocking, so
/// io_uring would hand every one to an io-wq worker thread, and on these machines the wake-ups
/// and context switches of that hand-off cost more CPU than the copy into the page cache itself
/// (docs/design/storage.md, "Write path").
fn write_all_at(
    file: &File,
    chunks: &[Piece],
    offset: u64,
    iov: &mut Vec<libc::iovec>,
) -> std::result::Result<usize, String> {
    pwritev_all(file, offset, chunks.iter().map(Piece::bytes), 1, iov)
}

/// Writes `parts` back to back at `offset` of `file` with `pwritev` (at most `IOV_MAX` iovecs
/// a call; short writes continued, EINTR retried); returns how many bytes that was. Each call
/// must write a multiple of `unit` bytes (a direct write stopping mid-block is an error).
/// Public for the benchmarks' plain-file baselines, which write the same way.
pub fn pwritev_all<'a>(
    file: &File,
    offset: u64,
    parts: impl Iterator<Item = &'a [u8]> + Clone,
    unit: usize,
    iov: &mut Vec<libc::iovec>,
) -> std::result::Result<usize, String> {
    let len: usize = parts.clone().map(<[u8]>::len).sum();
    let mut written = 0;
    while written < len {
        iovecs_over(parts.clone(), written, iov);
        // SAFETY: `file` is open; the iovecs point into `parts`, borrowed for the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                (offset + written as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 && (n as usize).is_multiple_of(unit) => written += n as usize,
            n if n > 0 => return Err(format!("write stopped at {n} bytes, mid-block")),
            0 => return Err("wrote zero bytes".to_string()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e.to_string());
                }
            }
        }
    }
    Ok(len)
}

/// Fills `v` with iovecs covering `parts` after the first `skip` bytes (at most `IOV_MAX` of
/// them; a longer list is written in several calls, as short writes are).
fn iovecs_over<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    mut skip: usize,
    v: &mut Vec<libc::iovec>,
) {
    v.clear();
    for c in parts {
        if skip >= c.len() {
            skip -= c.len();
            continue;
        }
        let rest = &c[skip..];
        skip = 0;
        v.push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
        if v.len() == IOV_MAX {
            break;
        }
    }
}

/// Iovecs per write call (Linux's UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// One group commit of one log: an fdatasync per dirty file, all in flight together.
struct SyncGroup {
    remaining: usize,
    covers: i64,
    waiters: Vec<Completer>,
    error: Option<String>,
    /// Each dirty segment, with the end of what this commit syncs of it.
    files: Vec<(Arc<Segment>, u64)>,
}

/// An append to publish and sync once it is written (or to fail).
pub(crate) struct Appended {
    pub(crate) log: Arc<LogProgress>,
    pub(crate) segment: Arc<Segment>,
    /// The log end offset after the append.
    pub(crate) end_offset: i64,
    pub(crate) records: i64,
    /// The appender waits for `done` ([`crate::Flush::Now`]): the log's next group commit is
    /// due whatever its flush policy.
    pub(crate) sync_now: bool,
    /// Resolves once the bytes are written (in the page cache, readable).
    pub(crate) written: Completer,
    /// Resolves once they are on disk.
    pub(crate) done: Completer,
}

/// Per-log state only the I/O thread touches.
struct LogIo {
    progress: Arc<LogProgress>,
    /// Published appends waiting for a sync.
    waiting: Vec<Completer>,
    /// Explicit syncs, and `None` for each [`crate::Flush::Now`] append (they cover every
    /// append before them, all published).
    requests: Vec<Option<Completer>>,
    dirty: Vec<(Arc<Segment>, u64)>,
    unsynced_records: i64,
    first_unsynced: Option<Instant>,
    sync: Option<SyncGroup>,
    /// The lists of the last finished group commit, emptied, for the next one: a log that is
    /// written steadily allocates nothing per commit.
    spare_waiters: Vec<Completer>,
    spare_files: Vec<(Arc<Segment>, u64)>,
}

struct Looper {
    engine: Box<dyn Engine + Send>,
    rx: Receiver<Op>,
    health: Arc<DirHealth>,
    sleeping: Arc<AtomicBool>,
    /// Logs with work pending (only these are looked at each round).
    logs: HashMap<u64, LogIo>,
    /// Live logs with nothing pending, parked with their lists' memory for their next append.
    idle: HashMap<u64, LogIo>,
    /// `idle`'s size at which entries of logs that are gone are next pruned.
    idle_prune_at: usize,
    /// The log of each fsync in flight, by tag.
    tags: HashMap<u64, u64>,
    next_tag: u64,
    shutdown: bool,
    /// Scratch list of log ids, kept to reuse its memory.
    ids: Vec<u64>,
    /// See [`IoThread::set_page_cache_window`].
    page_cache_window: Arc<AtomicU64>,
    /// Direct appends taken and not yet written (see [`Looper::take`]).
    direct: Vec<(Appended, DirectWrite)>,
}

/// The page-cache window in bytes, `None` when off.
fn page_cache_window(w: &AtomicU64) -> Option<u64> {
    match w.load(Ordering::Relaxed) {
        u64::MAX => None,
        w => Some(w),
    }
}

impl LogIo {
    /// No waiter, and no sync requested or running.
    fn nothing_waits(&self) -> bool {
        self.waiting.is_empty() && self.requests.is_empty() && self.sync.is_none()
    }

    /// Nothing pending: nothing waits and nothing is unsynced.
    fn is_idle(&self) -> bool {
        self.nothing_waits() && self.unsynced_records == 0
    }

    /// Whether a group commit is due: an explicit sync is waiting, or the unsynced records
    /// reached `flush.messages` or are older than `flush.ms`.
    fn due(&self, now: Instant) -> bool {
        let flush_messages = self.progress.flush_messages.load(Ordering::Relaxed);
        let flush_ms = self.progress.flush_ms.load(Ordering::Relaxed).max(0) as u128;
        !self.requests.is_empty()
            || (self.unsynced_records > 0
                && (self.unsynced_records >= flush_messages
                    || self
                        .first_unsynced
                        .is_some_and(|t| now.duration_since(t).as_millis() >= flush_ms)))
    }
}

fn log_io<'a>(
    logs: &'a mut HashMap<u64, LogIo>,
    idle: &mut HashMap<u64, LogIo>,
    progress: &Arc<LogProgress>,
) -> &'a mut LogIo {
    logs.entry(progress.id).or_insert_with(|| {
        idle.remove(&progress.id).unwrap_or_else(|| LogIo {
            progress: progress.clone(),
            waiting: Vec::new(),
            requests: Vec::new(),
            dirty: Vec::new(),
            unsynced_records: 0,
            first_unsynced: None,
            sync: None,
            spare_waiters: Vec::new(),
            spare_files: Vec::new(),
        })
    })
}

impl Looper {
    fn run(&mut self) {
        let mut completions = Vec::new();
        // The iovec list of every write, kept to reuse its memory (not `Send`: a local).
        let mut iov = Vec::new();
        loop {
            // 1. Take what has queued up.
            let mut took = 0;
            while took < ROUND_OPS_MAX && !self.shutdown {
                match self.rx.try_recv() {
                    Ok(op) => {
                        self.take(op, &mut iov);
                        took += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown = true;
                        break;
                    }
                }
            }
            self.write_direct(&mut iov);
            // 2. Start the group commits that are due. A lone fdatasync, with nothing else in
            // flight and no burst of appends being submitted, runs right here: handing it to
            // io_uring would cost an io-wq worker's wake-up and the completion's, for no
            // overlap (docs/design/storage.md, "Write path"). Several run in the ring, in
            // parallel.
            let now = Instant::now();
            let due = self.logs.values().filter(|l| l.sync.is_none() && l.due(now)).count();
            let mut inline =
                due == 1 && self.engine.in_flight() == 0 && BURSTS.load(Ordering::Acquire) == 0;
            if inline {
                // An append that came in meanwhile would wait for the whole sync: write it
                // now, and leave this round's sync to the ring.
                if let Ok(op) = self.rx.try_recv() {
                    self.handle(op, &mut iov);
                    inline = false;
                    took += 1; // not idle: step 3 must not block
                }
            }
            // Listed after that append, so that its log (perhaps not among the round's logs
            // before) gets its sync this round: otherwise, with nothing in flight, step 3 would
            // block until the next operation, which a producer waiting for this one's answer
            // may never send.
            let mut ids = std::mem::take(&mut self.ids);
            ids.clear();
            ids.extend(self.logs.keys().copied());
            for &id in &ids {
                self.maybe_sync(id, now, inline);
            }
            self.ids = ids;
            // 3. Collect completions; wait when there is nothing else to do.
            if self.engine.in_flight() > 0 {
                let deadline = self.deadline();
                let mut wait = took == 0;
                if wait {
                    self.sleeping.store(true, Ordering::SeqCst);
                    // An op sent before the flag was set would not wake us: look once more.
                    if let Ok(op) = self.rx.try_recv() {
                        self.handle(op, &mut iov);
                        wait = false;
                    }
                }
                self.engine.complete(wait, deadline, &mut completions);
                self.sleeping.store(false, Ordering::SeqCst);
                for (tag, res) in completions.drain(..) {
                    self.completed(tag, res);
                }
            } else if took == 0 {
                if self.shutdown {
                    if self.idle() {
                        break;
                    }
                    // Unsynced data under a relaxed policy: sync it before leaving.
                    for log in self.logs.values_mut() {
                        if log.sync.is_none()
                            && (log.unsynced_records > 0 || !log.waiting.is_empty())
                        {
                            log.requests.push(None);
                        }
                    }
                    if self.logs.values().all(|l| l.requests.is_empty() && l.sync.is_none()) {
                        break;
                    }
                    continue;
                }
                let op = match self.deadline() {
                    Some(d) => {
                        match self.rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                            Ok(op) => Some(op),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => {
                                self.shutdown = true;
                                None
                            }
                        }
                    }
                    None => match self.rx.recv() {
                        Ok(op) => Some(op),
                        Err(_) => {
                            self.shutdown = true;
                            None
                        }
                    },
                };
                if let Some(op) = op {
                    self.handle(op, &mut iov);
                }
            }
            self.park_idle_logs();
        }
        // Resolve whatever is left so no waiter hangs.
        for (_, log) in self.logs.drain() {
            let closed = || Err((PathBuf::new(), "log directory closed".to_string()));
            for w in log.waiting {
                w.complete(closed());
            }
            for d in log.requests.into_iter().flatten() {
                d.complete(closed());
            }
        }
    }

    /// Moves logs with nothing pending out of the per-round map: a live one is parked in
    /// `idle` with its lists' memory, one that is gone (only this thread holds its progress) is
    /// forgotten. Parked logs that went away are pruned whenever `idle` has doubled.
    fn park_idle_logs(&mut self) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(self.logs.iter().filter(|(_, l)| l.is_idle()).map(|(id, _)| *id));
        for id in &ids {
            if let Some(l) = self.logs.remove(id) {
                if Arc::strong_count(&l.progress) > 1 {
                    self.idle.insert(*id, l);
                }
            }
        }
        self.ids = ids;
        if self.idle.len() >= self.idle_prune_at {
            self.idle.retain(|_, l| Arc::strong_count(&l.progress) > 1);
            self.idle_prune_at = (2 * self.idle.len()).max(64);
        }
    }

    fn idle(&self) -> bool {
        self.engine.in_flight() == 0 && self.logs.values().all(LogIo::nothing_waits)
    }

    /// The earliest `flush.ms` deadline of a log with unsynced data.
    fn deadline(&self) -> Option<Instant> {
        self.logs
            .values()
            .filter(|l| l.sync.is_none())
            .filter_map(|l| {
                let ms = l.progress.flush_ms.load(Ordering::Relaxed).clamp(0, 1 << 40) as u64;
                l.first_unsynced.map(|t| t + Duration::from_millis(ms))
            })
            .min()
    }

    fn tag(&mut self, log_id: u64) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.tags.insert(tag, log_id);
        tag
    }

    /// Takes one operation and finishes it, direct writes included.
    fn handle(&mut self, op: Op, iov: &mut Vec<libc::iovec>) {
        self.take(op, iov);
        self.write_direct(iov);
    }

    /// Takes one operation. Direct appends are only queued, for [`Looper::write_direct`]: the
    /// appends of a round to one segment are written together (they share partial blocks, and a
    /// direct write waits for the device). Anything else is done at once, after the queued
    /// direct appends (a log's appends are published in order).
    fn take(&mut self, op: Op, iov: &mut Vec<libc::iovec>) {
        match op {
            Op::Append { append, position, data } => {
                if self.health.is_failed() {
                    append.written.complete(Err(self.health.failure()));
                    append.done.complete(Err(self.health.failure()));
                    return;
                }
                let pieces = match data {
                    AppendData::Direct(write) => {
                        self.direct.push((append, write));
                        return;
                    }
                    AppendData::Buffered(pieces) => pieces,
                };
                self.write_direct(iov);
                let result = if self.health.is_failed() {
                    Err(self.health.failure().1) // a queued direct write just failed
                } else {
                    write_all_at(&append.segment.file, &pieces, position, iov)
                        .map(|len| position + len as u64)
                };
                drop(pieces);
                self.appended(append, result);
            }
            Op::Sync { log, done } => {
                if self.health.is_failed() {
                    if let Some(d) = done {
                        d.complete(Err(self.health.failure()));
                    }
                    return;
                }
                log_io(&mut self.logs, &mut self.idle, &log).requests.push(done);
            }
            Op::Shutdown => self.shutdown = true,
        }
    }

    /// Writes the queued direct appends: one write per run of appends to the same segment,
    /// covering all of them (from the segment's tail), then publishes each.
    fn write_direct(&mut self, iov: &mut Vec<libc::iovec>) {
        if self.direct.is_empty() {
            return;
        }
        let mut queued = std::mem::take(&mut self.direct);
        // After a failed write nothing later is written: the directory fails (when the first
        // failure is published) and every later append with it.
        let mut failed = self.health.is_failed().then(|| self.health.failure().1);
        // Per run of appends to one segment: its length and its write's result. A segment's
        // appends are queued in file order, back to back, so a run is one write.
        let mut runs: smallvec::SmallVec<[(usize, std::result::Result<(), String>); 4]> =
            smallvec::SmallVec::new();
        for run in queued.chunk_by(|a, b| Arc::ptr_eq(&a.0.segment, &b.0.segment)) {
            let result = match (&failed, run) {
                (Some(cause), _) => Err(cause.clone()),
                (None, [(_, w)]) => w.write(iov),
                (None, _) => DirectWrite::join(run.iter().map(|(_, w)| w)).write(iov),
            };
            if let Err(cause) = &result {
                failed.get_or_insert_with(|| cause.clone());
            }
            runs.push((run.len(), result));
        }
        let mut appends = queued.drain(..);
        for (n, result) in runs {
            for (a, w) in appends.by_ref().take(n) {
                self.appended(a, result.clone().map(|()| w.end));
            }
        }
        drop(appends);
        self.direct = queued; // keeps its memory
    }

    /// Publishes a written append and queues it for the log's next sync, or fails the directory.
    fn appended(&mut self, a: Appended, result: std::result::Result<u64, String>) {
        let Appended { log, segment, end_offset, records, sync_now, written, done } = a;
        let l = log_io(&mut self.logs, &mut self.idle, &log);
        match result {
            Ok(end) => {
                // Published to readers at once, in offset order (the channel's order).
                segment.publish(end);
                l.progress.written_end.store(end_offset, Ordering::Release);
                match l.dirty.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &segment)) {
                    Some((_, e)) => *e = (*e).max(end),
                    None => l.dirty.push((segment, end)),
                }
                written.complete(Ok(()));
                l.waiting.push(done);
                if sync_now && l.requests.is_empty() {
                    // As an explicit flush: due whatever flush.messages / flush.ms say (one
                    // entry is enough; the next sync takes every waiting append).
                    l.requests.push(None);
                }
                l.unsynced_records += records;
                l.first_unsynced.get_or_insert_with(Instant::now);
                if l.progress.flush_messages.load(Ordering::Relaxed) > 1 {
                    l.progress.notify(); // visible before durable under this policy
                }
            }
            Err(cause) => {
                if !self.health.is_failed() {
                    self.health
                        .fail(format!("write to {} failed: {cause}", segment.log_path.display()));
                }
                l.progress.write_failed.store(true, Ordering::Release);
                // Cut back to what readers were given (the write may have reached the file in
                // part).
                if let Err(e) = segment.truncate_after_failure(segment.published_len()) {
                    tracing::error!(error = %e, "could not truncate after a failed write");
                }
                written.complete(Err(self.health.failure()));
                done.complete(Err(self.health.failure()));
            }
        }
    }

    fn completed(&mut self, tag: u64, res: i32) {
        if let Some(id) = self.tags.remove(&tag) {
            self.sync_completed(id, res);
        }
    }

    /// Starts a group commit for log `id` if one is due and none is running; with `inline`, a
    /// commit of a single file is done on this thread, at once.
    fn maybe_sync(&mut self, id: u64, now: Instant, inline: bool) {
        let failed = self.health.is_failed();
        let Some(l) = self.logs.get_mut(&id) else { return };
        if l.sync.is_some() {
            return;
        }
        if failed {
            let f = self.health.failure();
            for w in l.waiting.drain(..) {
                w.complete(Err(f.clone()));
            }
            for d in l.requests.drain(..).flatten() {
                d.complete(Err(f.clone()));
            }
            // Nothing of this log will be synced any more: forget its unsynced data, so that
            // the log is dropped and its flush.ms deadline does not keep waking the thread.
            l.unsynced_records = 0;
            l.first_unsynced = None;
            l.dirty.clear();
            return;
        }
        if !l.due(now) {
            return;
        }
        let files = std::mem::replace(&mut l.dirty, std::mem::take(&mut l.spare_files));
        let mut waiters = std::mem::replace(&mut l.waiting, std::mem::take(&mut l.spare_waiters));
        waiters.extend(l.requests.drain(..).flatten());
        l.unsynced_records = 0;
        l.first_unsynced = None;
        let covers = l.progress.written_end.load(Ordering::Acquire);
        // The sync group holds the files open while these descriptors are in use.
        let fds: smallvec::SmallVec<[RawFd; 4]> =
            files.iter().map(|(s, _)| s.file.as_raw_fd()).collect();
        l.sync = Some(SyncGroup { remaining: fds.len(), covers, waiters, error: None, files });
        match fds[..] {
            [] => self.finish_sync(id),
            [fd] if inline => self.sync_completed(id, fdatasync_now(fd)),
            _ => {
                for fd in fds {
                    let tag = self.tag(id);
                    self.engine.fsync(tag, fd);
                }
            }
        }
    }

    fn sync_completed(&mut self, id: u64, res: i32) {
        let Some(l) = self.logs.get_mut(&id) else { return };
        let Some(s) = l.sync.as_mut() else { return };
        s.remaining -= 1;
        if res < 0 {
            s.error.get_or_insert(std::io::Error::from_raw_os_error(-res).to_string());
        }
        if s.remaining == 0 {
            self.finish_sync(id);
        }
    }

    fn finish_sync(&mut self, id: u64) {
        let Some(l) = self.logs.get_mut(&id) else { return };
        let Some(mut s) = l.sync.take() else { return };
        if let Some(e) = s.error {
            self.health.fail(format!("fdatasync failed: {e}"));
        }
        let synced = !self.health.is_failed();
        if synced {
            l.progress.durable_end.fetch_max(s.covers, Ordering::AcqRel);
        }
        for w in s.waiters.drain(..) {
            w.complete(if synced { Ok(()) } else { Err(self.health.failure()) });
        }
        l.spare_waiters = s.waiters;
        if synced {
            l.progress.notify();
            // After the acknowledgements: the page-cache window (dropping pages can take a while).
            if let Some(w) = page_cache_window(&self.page_cache_window) {
                for (segment, end) in &s.files {
                    segment.drop_cached_behind(*end, w);
                }
            }
        }
        s.files.clear();
        l.spare_files = s.files;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_completer_fails_its_waiter_and_an_answer_stands() {
        let (durable, completer) = durable_pair();
        drop(completer);
        assert!(matches!(durable.wait(), Err(StorageError::LogDirFailed { .. })));

        let (durable, completer) = durable_pair();
        completer.complete(Ok(()));
        assert!(durable.wait().is_ok(), "the drop after an answer changes nothing");
    }
}
