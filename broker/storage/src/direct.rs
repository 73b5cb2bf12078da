//! Direct I/O for active segments (opt-in: [`crate::IoThread::set_direct_io`]).
//!
//! The buffered write path copies every append into the page cache, whose fresh pages are the
//! largest and least stable cost on our machines (docs/performance.md). With direct I/O the
//! active segment keeps a *tail* in memory: appends are copied (under the log's lock) into
//! aligned chunks, and the I/O thread writes them with `O_DIRECT` from there, a whole number of
//! blocks at a time. The chunks' memory is reused, so steady writing touches no new memory.
//!
//! - **Partial blocks.** A write covers `[align_down(start), align_up(end))` of the file: the
//!   partial block before an append is written again with it. Its last partial block is written
//!   from a private copy taken under the log's lock (the appender goes on writing the next
//!   append into that block of the chunk), with zeros after the end. Only one thread writes, in
//!   order, so the later write of a block always wins. Its bytes below the old end are the same
//!   in both versions, so even a torn sector write leaves acknowledged bytes intact. The file is
//!   longer than the log (by less than a block) until a roll or a clean close cuts the zeros
//!   off; recovery cuts them too ([`is_padding`]).
//! - **Chunks.** A batch never spans two chunks: when the next batch does not fit, a new chunk
//!   starts at the block boundary below the log end, with that partial block copied into it.
//!   Chunks overlap by that block.
//! - **Reads.** Recent data is not in the page cache, so readers of the tail are served from
//!   the chunks (up to `cache bytes` per partition; a rolled segment keeps its tail until the
//!   next roll). Older data is read through the page cache (a map of the file), only below the
//!   first cached batch. Blocks wholly below it were written for the last time; for the one
//!   holding it (rewritten while the log end is in it) the kernel's dropping of cached pages
//!   after a direct write keeps readers right, and the bytes they read are the same in every
//!   version of the block.
//! - **Memory.** A tail holds at most its segment's share (`cache bytes`, per partition), and
//!   all the tails of a directory together at most the directory's budget ([`TailBudget`]):
//!   when a new chunk takes the directory over it, the appender's own tail lets go of its older
//!   written chunks and its spares, then the other tails of their spares and, appended to least
//!   recently first, of everything already written ([`Tail::shed`]), down to a copy of their
//!   partial last block. What cannot be let go at that moment (bytes not yet written, the
//!   appender's newest chunk, tails in use) can keep the directory over its budget.
//! - **Ready chunks.** New memory costs page faults at its first touch, which would zero it
//!   under the log's lock while appends wait (on the development VM 5–7 ms per 2 MiB chunk): a
//!   partition's full-size chunks after its creation or a restart, and a stall's. The
//!   directory's filler thread keeps a few chunks of the full size mapped and faulted in,
//!   within the budget ([`TailBudget::start_filler`]); a tail that needs a new full-size chunk
//!   and has no spare takes one of those first. (A tail's growing first chunks, 64 KiB to half
//!   the full size, are still mapped by the appender.)
//! - **Memory safety.** A chunk is shared between the appender (which writes bytes at or after
//!   the log end, under the log's lock), the I/O thread (which hands whole blocks below the end
//!   of the append it writes to the kernel, by raw pointer) and readers (which hold views of
//!   *published* bytes only). Neither of the last two touches bytes the appender may still
//!   write; no Rust reference ever covers bytes another thread writes. A chunk or block buffer
//!   is reused only when nothing else holds it (`Arc::get_mut`, which orders the other
//!   holders' last use before the reuse).

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use bytes::Bytes;

use crate::lock;
use crate::segment::Segment;

/// Alignment of direct writes (offsets, lengths and memory): 4 KiB suits every logical block
/// size up to 4 KiB, which covers the disks we run on.
pub(crate) const BLOCK: u64 = 4096;
/// Chunks are a quarter of the cache, at most this large (2 MiB with the default cache: a batch
/// of the default `max.message.bytes` fits; a larger batch gets a chunk of a multiple of the
/// size).
const CHUNK_MAX: u64 = 4 << 20;
/// And at least a block: a small cache gets small chunks.
const CHUNK_MIN: u64 = BLOCK;
/// A tail's first chunk (then doubled up to the chunk size).
const CHUNK_START: u64 = 64 << 10;
/// Chunks that left the cache kept for reuse: at least this many, and as many as the tail's
/// share holds (when the I/O thread lags, chunks that could not leave yet are all let go of at
/// once later; kept, the next ones need no new memory).
const SPARE_MIN: usize = 2;
/// Last-block buffers kept for reuse.
const BLOCKS_KEPT: usize = 32;

pub(crate) fn align_down(x: u64) -> u64 {
    x & !(BLOCK - 1)
}

pub(crate) fn align_up(x: u64) -> u64 {
    (x + BLOCK - 1) & !(BLOCK - 1)
}

/// Opens `path` for direct writes; `Ok(None)` when the file system does not take `O_DIRECT`
/// (tmpfs before Linux 6.6, for one) or says it needs an alignment that [`BLOCK`] does not
/// satisfy, so that the segment is written through the page cache instead.
pub(crate) fn open(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(block_suits(&f).then_some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The direct-I/O alignment the file system asks for (`statx` with `STATX_DIOALIGN`, Linux
/// 6.1+), if it says: `(memory, file offset)`; `(0, 0)` means no direct I/O on this file.
fn dio_align(f: &File) -> Option<(u32, u32)> {
    // SAFETY: statx fills the zeroed struct for the open descriptor (empty path with
    // AT_EMPTY_PATH); the path is a NUL-terminated literal.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        (rc == 0).then_some(stx)?
    };
    (stx.stx_mask & libc::STATX_DIOALIGN != 0)
        .then_some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Whether writes aligned to [`BLOCK`] (memory, offsets and lengths) suit the file. A kernel
/// that does not say is taken to accept them (4 KiB covers the logical block sizes in use).
fn block_suits(f: &File) -> bool {
    #[cfg(test)]
    if tests::REFUSE_ALIGNMENT.get() {
        return false;
    }
    match dio_align(f) {
        None => true,
        Some((mem, off)) => {
            let fits = |a: u32| a != 0 && BLOCK.is_multiple_of(u64::from(a));
            fits(mem) && fits(off)
        }
    }
}

/// A log directory's direct-I/O settings and the memory its tails hold together (module
/// comment, "Memory"). Shared by the directory's tails; segments with a tail register here so
/// that a tail over the budget can make the others let go.
#[derive(Debug)]
pub(crate) struct TailBudget {
    /// Bytes of memory each tail may keep (`cache bytes`).
    per_tail: u64,
    /// Bytes of memory all the tails may hold together.
    limit: u64,
    /// The tails' full chunk size: a quarter of `per_tail`, within [`CHUNK_MIN`, `CHUNK_MAX`].
    chunk_size: u64,
    /// Full-size chunks faulted in ahead of need (counted in `held`), and the filler's state.
    ready: Arc<Ready>,
    /// Bytes held now (chunks, spares and block buffers of every live tail, and the ready
    /// chunks).
    held: AtomicU64,
    /// Ticks for the least-recently-appended order: moved on by each new chunk; an append
    /// stamps its tail with the current tick (a read, so appenders do not all write one line).
    clock: AtomicU64,
    /// What the tails held after the last pass that could not get below the budget (0 after
    /// one that did): the next pass waits until they hold an eighth of the budget more, so
    /// that memory nobody can let go yet does not make every new chunk sweep the directory.
    stuck: AtomicU64,
    /// Segments with a tail, and their tail's last append tick (the tail holds the other
    /// reference: a count of one means the tail is gone).
    tails: Mutex<Vec<(Weak<Segment>, Arc<AtomicU64>)>>,
}

impl TailBudget {
    /// `per_tail` bytes per partition, `limit` for the directory (at least one tail's worth).
    pub(crate) fn new(per_tail: u64, limit: u64) -> Arc<TailBudget> {
        let per_tail = per_tail.min(limit);
        Arc::new(TailBudget {
            per_tail,
            limit,
            chunk_size: align_up((per_tail / 4).clamp(CHUNK_MIN, CHUNK_MAX)),
            ready: Arc::new(Ready::default()),
            held: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            stuck: AtomicU64::new(0),
            tails: Mutex::new(Vec::new()),
        })
    }

    /// Bytes the directory holds for direct I/O: its tails' and the ready chunks.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.held() > self.limit
    }

    /// What a pass of [`TailBudget::reclaim`] brings the directory down to: an eighth below
    /// the budget. The filler fills only below it, so that its chunks never make a pass.
    fn low_water(&self) -> u64 {
        self.limit - self.limit / 8
    }

    /// How many chunks a tail keeps as spares, and the filler ready: as many as a tail's
    /// share holds, at least [`SPARE_MIN`].
    fn chunks_kept(&self) -> usize {
        SPARE_MIN.max((self.per_tail / self.chunk_size) as usize)
    }

    /// Starts the directory's filler thread (`millrace-chunks`), which keeps
    /// [`TailBudget::chunks_kept`] full-size chunks mapped and faulted in for tails that need
    /// new memory ([`Tail::append`] takes them before mapping its own), as long as the
    /// directory stays below [`TailBudget::low_water`]. It stops when the budget is dropped.
    pub(crate) fn start_filler(self: &Arc<Self>) {
        let (ready, budget, want) = (self.ready.clone(), Arc::downgrade(self), self.chunks_kept());
        let spawned = std::thread::Builder::new()
            .name("millrace-chunks".into())
            .spawn(move || fill(&ready, &budget, want));
        if let Err(e) = spawned {
            // Appends map their chunks themselves, as without the filler.
            tracing::warn!(error = %e, "starting the tail chunk filler failed");
        }
    }

    /// A ready chunk of `cap` bytes (the full chunk size only), already counted in `held`.
    /// Wakes the filler either way: to make the next one, or to look at the budget again.
    fn take_ready(&self, cap: u64) -> Option<Arc<ChunkBuf>> {
        if cap != self.chunk_size {
            return None;
        }
        let chunk = lock(&self.ready.state).chunks.pop();
        self.ready.wake.notify_one();
        chunk
    }

    /// Bytes the tails hold: the directory's memory without the ready chunks.
    #[cfg(test)]
    pub(crate) fn tails_held(&self) -> u64 {
        let s = lock(&self.ready.state);
        self.held() - s.chunks.iter().map(|b| b.cap()).sum::<u64>()
    }

    /// Lets go of ready chunks (to `freed`) while the directory holds more than `down_to`:
    /// the first thing a tail over the budget does. Wakes the filler, to fill again once
    /// there is room.
    fn drain_ready(&self, down_to: u64, freed: &mut Vec<Arc<ChunkBuf>>) {
        {
            let mut s = lock(&self.ready.state);
            while self.held() > down_to {
                let Some(b) = s.chunks.pop() else { break };
                self.held.fetch_sub(b.cap(), Ordering::Relaxed);
                freed.push(b);
            }
        }
        self.ready.wake.notify_one();
    }

    /// Lists `segment` (whose tail has `tick`) among the tails that can be made to let go.
    pub(crate) fn register(&self, segment: Weak<Segment>, tick: Arc<AtomicU64>) {
        let mut tails = lock(&self.tails);
        // Forget tails that are gone once in a while, so the list stays as long as the live ones.
        if tails.len() >= 64 && tails.len().is_power_of_two() {
            Self::forget_gone(&mut tails);
        }
        tails.push((segment, tick));
    }

    /// Drops the entries of segments or tails that are gone (the tail holds the tick's other
    /// reference).
    fn forget_gone(tails: &mut Vec<(Weak<Segment>, Arc<AtomicU64>)>) {
        tails.retain(|(s, t)| s.strong_count() > 0 && Arc::strong_count(t) > 1);
    }

    /// Whether a new chunk should make other tails let go: over the budget, and by an eighth
    /// of it more than a pass last could not free.
    fn wants_reclaim(&self) -> bool {
        let held = self.held();
        held > self.limit && held > self.stuck.load(Ordering::Relaxed) + self.limit / 8
    }

    /// Makes the other tails let go until the directory is an eighth below its budget (so
    /// that this runs once per several new chunks, not for each): first their spare chunks
    /// and block buffers (no data), then, appended to least recently first, what they wrote
    /// ([`Tail::shed`]). A tail whose segment is locked (being appended to or read, the
    /// caller's own included) is passed over. The buffers let go of go to `freed`, for the
    /// appender to drop once it holds no lock.
    fn reclaim(&self, freed: &mut Vec<Arc<ChunkBuf>>) {
        let target = self.low_water();
        self.drain_ready(target, freed);
        {
            let mut tails = lock(&self.tails);
            Self::forget_gone(&mut tails);
            let mut order: Vec<(u64, usize)> = tails
                .iter()
                .enumerate()
                .map(|(i, (_, t))| (t.load(Ordering::Relaxed), i))
                .collect();
            order.sort_unstable();
            'passes: for data in [false, true] {
                for &(_, i) in &order {
                    if self.held() <= target {
                        break 'passes;
                    }
                    if let Some(segment) = tails[i].0.upgrade() {
                        segment.shed_tail(data, freed);
                    }
                }
            }
        }
        let held = self.held();
        self.stuck.store(if held > target { held } else { 0 }, Ordering::Relaxed);
    }
}

impl Drop for TailBudget {
    fn drop(&mut self) {
        lock(&self.ready.state).stop = true;
        self.ready.wake.notify_all();
    }
}

/// The ready chunks of a directory and its filler's orders ([`TailBudget::start_filler`]).
#[derive(Debug, Default)]
struct Ready {
    state: Mutex<ReadyState>,
    /// Wakes the filler: a chunk was taken (or asked for), or the budget is gone.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct ReadyState {
    chunks: Vec<Arc<ChunkBuf>>,
    /// The budget is gone: the filler leaves.
    stop: bool,
}

/// The filler thread: keeps `want` full-size chunks ready while the directory is below its
/// low-water mark, each mapped and faulted in here, outside any log's lock.
fn fill(ready: &Ready, budget: &Weak<TailBudget>, want: usize) {
    loop {
        {
            let mut s = lock(&ready.state);
            while !s.stop && s.chunks.len() >= want {
                s = ready.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop {
                return;
            }
        }
        // The budget is not held while a chunk is faulted in (nor while waiting).
        let size = {
            let Some(b) = budget.upgrade() else { return };
            (b.held() + b.chunk_size <= b.low_water()).then_some(b.chunk_size)
        };
        let Some(size) = size else {
            // No room: look again when a tail asks for a chunk, or in a second (tails that let
            // go of memory do not say so).
            let s = lock(&ready.state);
            if !s.stop {
                drop(ready.wake.wait_timeout(s, FILL_RETRY).unwrap_or_else(|e| e.into_inner()));
            }
            continue;
        };
        if budget.strong_count() == 0 {
            return; // the budget went while we looked at it
        }
        let mut chunk = ChunkBuf::new(size);
        if let Some(c) = Arc::get_mut(&mut chunk) {
            c.fault_in();
        }
        let Some(b) = budget.upgrade() else { return };
        let mut s = lock(&ready.state);
        if s.stop {
            return;
        }
        // Counted as it becomes ready, under the lock that [`TailBudget::tails_held`] reads
        // the ready chunks with, and only if there is still room: tails may have taken
        // memory while it was faulted in.
        let low_water = b.low_water();
        let counted = b
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h + size <= low_water).then_some(h + size)
            })
            .is_ok();
        let unused = if counted {
            s.chunks.push(chunk);
            None
        } else {
            Some(chunk)
        };
        drop(s);
        // Unmapped outside the lock.
        drop(unused);
        // Last: if this was the budget's last holder, its drop takes the lock.
        drop(b);
    }
}

/// How long a filler without room waits before it looks at the budget again, unless a tail
/// asks for a chunk first.
const FILL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// `cap` bytes of block-aligned, zeroed memory.
pub(crate) struct ChunkBuf {
    ptr: NonNull<u8>,
    cap: usize,
    /// `None`: heap memory allocated with [`ChunkBuf::layout`].
    map: Option<memmap2::MmapMut>,
}

/// Buffers from this size up are mapped (anonymous memory of their own): their pages become
/// resident as bytes are written (a huge page's 2 MiB at its first byte) and go back to the
/// system when the buffer is dropped, which heap memory of this size would not reliably do (a
/// tail that lets go must not leave its chunk's pages resident in the allocator).
const MAP_FROM: u64 = 64 << 10;
/// The size of an x86-64 transparent huge page (elsewhere the alignment only wastes address
/// space).
const HUGE_PAGE: u64 = 2 << 20;

// SAFETY: plain memory owned by this value. Which thread touches which bytes, and when, is
// the tail's protocol (module comment); nothing here hands out references across threads.
unsafe impl Send for ChunkBuf {}
// SAFETY: as above.
unsafe impl Sync for ChunkBuf {}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.cap)
    }
}

impl ChunkBuf {
    fn layout(cap: usize) -> Layout {
        // `cap` is a non-zero multiple of BLOCK (a power of two) far below isize::MAX: the
        // layout is valid, so this cannot fail.
        Layout::from_size_align(cap, BLOCK as usize).expect("block-aligned layout")
    }

    fn new(cap: u64) -> Arc<ChunkBuf> {
        if cap >= MAP_FROM {
            // A failed anonymous map is the system out of memory, as a failed allocation is.
            // Whole huge pages where the chunk is made of them: the map is one huge page longer
            // and the chunk its aligned window (the untouched slack costs no memory), so that
            // the kernel can back it with transparent huge pages (asked for below): one page
            // fault per 2 MiB, and a direct write pins a huge page at once instead of 512.
            let huge = cap.is_multiple_of(HUGE_PAGE);
            let len = if huge { cap + HUGE_PAGE } else { cap } as usize;
            match memmap2::MmapMut::map_anon(len) {
                Ok(mut map) => {
                    let base = map.as_mut_ptr();
                    let at = if huge { base.align_offset(HUGE_PAGE as usize) } else { 0 };
                    if huge {
                        // Only advice: without it (or without huge pages) the chunk works the same.
                        let _ = map.advise_range(memmap2::Advice::HugePage, at, cap as usize);
                    }
                    // SAFETY: `at + cap <= len` (the offset to the next boundary is below one
                    // huge page), within the map.
                    let Some(ptr) = NonNull::new(unsafe { base.add(at) }) else {
                        unreachable!("a successful map is not at address 0")
                    };
                    return Arc::new(ChunkBuf { ptr, cap: cap as usize, map: Some(map) });
                }
                Err(e) => tracing::warn!(bytes = cap, error = %e, "mapping a tail chunk failed"),
            }
        }
        let cap = cap as usize;
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else { alloc::handle_alloc_error(layout) };
        Arc::new(ChunkBuf { ptr, cap, map: None })
    }

    fn cap(&self) -> u64 {
        self.cap as u64
    }

    /// Touches every page, so that the memory is resident before anyone copies into it (the
    /// page faults, which zero it, happen on the caller's thread). It stays zeroed.
    fn fault_in(&mut self) {
        let s = self.as_mut_slice();
        for i in (0..s.len()).step_by(BLOCK as usize) {
            // SAFETY: `i` is within the slice; a volatile write so that the store of the zero
            // the memory already holds is not elided.
            unsafe { std::ptr::write_volatile(s.as_mut_ptr().add(i), 0) };
        }
    }

    /// The whole buffer, for its only owner.
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` is the only access (the caller got it from `Arc::get_mut`); the
        // memory is initialised (allocated zeroed) and `cap` long.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Address of byte `at` (`at <= cap`).
    pub(crate) fn ptr(&self, at: usize) -> *const u8 {
        debug_assert!(at <= self.cap);
        // SAFETY: `at` is within the allocation (or one past its end).
        unsafe { self.ptr.as_ptr().add(at) }
    }

    /// Copies `src` to byte `at`.
    ///
    /// # Safety
    /// `[at, at + src.len())` is within the buffer and nobody holds a reference to it.
    unsafe fn copy_in(&self, at: usize, src: *const u8, len: usize) {
        debug_assert!(at + len <= self.cap);
        // SAFETY: in bounds and unaliased (the caller's promise); `src` is another buffer or
        // a disjoint part of this one.
        unsafe {
            let dst = self.ptr.as_ptr().add(at);
            if len >= STREAM_FROM {
                copy_streaming(dst, src, len);
            } else {
                std::ptr::copy_nonoverlapping(src, dst, len);
            }
        }
    }
}

/// Copies of this size and more go around the CPU caches ([`copy_streaming`]).
const STREAM_FROM: usize = 64 << 10;

/// Copies `len` bytes from `src` to `dst` with non-temporal stores where the CPU has them
/// (x86-64): a batch copied into the tail is next read by the device, not by this CPU, so
/// writing it through the caches would first read every line of the destination into them
/// and push other data out (1.5x the speed of `memcpy` for 1 MB batches here). Elsewhere a
/// plain copy. The stores are fenced before returning, so that they are ordered before the
/// lock release that publishes them to the I/O thread.
///
/// # Safety
/// As `copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes, not
/// overlapping.
unsafe fn copy_streaming(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86-64; the accesses stay within `[0, len)` of both buffers
    // (the caller's promise), the streamed ones 64-byte aligned on `dst`.
    unsafe {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Whole cache lines streamed (the first and last partial ones copied plainly).
        let head = dst.align_offset(64).min(len);
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut i = head;
        while i + 64 <= len {
            let a = _mm_loadu_si128(src.add(i).cast::<__m128i>());
            let b = _mm_loadu_si128(src.add(i + 16).cast::<__m128i>());
            let c = _mm_loadu_si128(src.add(i + 32).cast::<__m128i>());
            let d = _mm_loadu_si128(src.add(i + 48).cast::<__m128i>());
            _mm_stream_si128(dst.add(i).cast::<__m128i>(), a);
            _mm_stream_si128(dst.add(i + 16).cast::<__m128i>(), b);
            _mm_stream_si128(dst.add(i + 32).cast::<__m128i>(), c);
            _mm_stream_si128(dst.add(i + 48).cast::<__m128i>(), d);
            i += 64;
        }
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        _mm_sfence();
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's promise.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, len)
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if self.map.is_none() {
            // SAFETY: allocated in `new` with this layout (a map unmaps itself).
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

/// Published bytes of a chunk, the owner behind a `Bytes` handed to readers.
struct ChunkView {
    buf: Arc<ChunkBuf>,
    from: usize,
    len: usize,
}

impl AsRef<[u8]> for ChunkView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: views are made of published bytes only, which are never written again while
        // the chunk is shared (this view holds it), and are within the buffer.
        unsafe { std::slice::from_raw_parts(self.buf.ptr(self.from), self.len) }
    }
}

/// One chunk of the tail: file bytes `[file_start, end)` at `buf[0..]`.
#[derive(Debug)]
struct TailChunk {
    buf: Arc<ChunkBuf>,
    file_start: u64,
    end: u64,
    /// Offset and file position of the first batch that starts in this chunk.
    first: Option<(i64, u64)>,
}

/// Pieces of a direct write: (buffer, from, to).
pub(crate) type DirectPieces = smallvec::SmallVec<[(Arc<ChunkBuf>, usize, usize); 2]>;

/// What the I/O thread writes for one append (or a run of them): `pieces` (whole blocks of
/// chunks) back to back at file position `start`, then `block`, a private copy of the partial
/// last block, with `O_DIRECT` through `file`; the log then ends at `end`.
///
/// The last block is a copy because the appender goes on writing the next append into that
/// block of the chunk while the device may still be reading it; the chunk's blocks the pieces
/// cover are below the log end, never written again.
#[derive(Debug)]
pub(crate) struct DirectWrite {
    pub(crate) file: Arc<File>,
    pub(crate) start: u64,
    pub(crate) pieces: DirectPieces,
    /// `[align_down(end), end)` and zeros to the block boundary; `None` when `end` is aligned.
    pub(crate) block: Option<Arc<ChunkBuf>>,
    pub(crate) end: u64,
}

impl DirectWrite {
    /// One write for appends to a segment that follow each other in the file (non-empty, in
    /// order): write `i + 1` starts at the block where write `i`'s last block was, so their
    /// chunk pieces back to back (neighbours in the same chunk joined) and the last write's
    /// block cover them all.
    pub(crate) fn join<'a>(mut writes: impl Iterator<Item = &'a DirectWrite>) -> DirectWrite {
        let Some(first) = writes.next() else { unreachable!("a run has an append") };
        let mut joined = DirectWrite {
            file: first.file.clone(),
            start: first.start,
            pieces: first.pieces.clone(),
            block: first.block.clone(),
            end: first.end,
        };
        for w in writes {
            debug_assert_eq!(w.start, align_down(joined.end));
            for (buf, from, to) in &w.pieces {
                match joined.pieces.last_mut() {
                    Some((b, _, t)) if Arc::ptr_eq(b, buf) && *t == *from => *t = *to,
                    _ => joined.pieces.push((buf.clone(), *from, *to)),
                }
            }
            joined.block = w.block.clone();
            joined.end = w.end;
        }
        joined
    }

    /// Writes the pieces and the last block (whole blocks, at `start`).
    pub(crate) fn write(&self, iov: &mut Vec<libc::iovec>) -> Result<(), String> {
        let block = self.block.as_ref().map(|b| (b.clone(), 0, BLOCK as usize));
        let parts = self.pieces.iter().chain(block.as_ref()).map(|(buf, from, to)| {
            // SAFETY: whole blocks below the end of the appends this write covers (nobody writes
            // them any more) or the private last block; `self` holds the buffers for the call.
            unsafe { std::slice::from_raw_parts(buf.ptr(*from), to - from) }
        });
        crate::io::pwritev_all(&self.file, self.start, parts, BLOCK as usize, iov).map(|_| ())
    }
}

/// Where a read of the tail starts: a chunk, the file position of its first batch at or before
/// the wanted offset, and how far its bytes are readable.
pub(crate) struct TailHit {
    buf: Arc<ChunkBuf>,
    file_start: u64,
    pub(crate) first_pos: u64,
    pub(crate) limit: u64,
}

impl TailHit {
    /// Readable file bytes `[from, self.limit)` of the chunk (`from >= first_pos`).
    pub(crate) fn data(&self, from: u64) -> &[u8] {
        debug_assert!(from >= self.first_pos && from <= self.limit);
        let at = (from - self.file_start) as usize;
        // SAFETY: bytes below `limit` are published (see `Tail::find`): never written again
        // while this hit holds the chunk; in bounds.
        unsafe { std::slice::from_raw_parts(self.buf.ptr(at), (self.limit - from) as usize) }
    }

    /// A `Bytes` over file bytes `[from, to)` of the chunk, sharing its memory.
    pub(crate) fn bytes(&self, from: u64, to: u64) -> Bytes {
        debug_assert!(from >= self.first_pos && to <= self.limit && from <= to);
        Bytes::from_owner(ChunkView {
            buf: self.buf.clone(),
            from: (from - self.file_start) as usize,
            len: (to - from) as usize,
        })
    }
}

/// The in-memory tail of a direct-written segment. Lives in the segment's state (its lock).
#[derive(Debug)]
pub(crate) struct Tail {
    /// The segment file opened with `O_DIRECT`.
    file: Arc<File>,
    chunks: VecDeque<TailChunk>,
    spare: Vec<Arc<ChunkBuf>>,
    /// Buffers let go of during an append (by this tail or, over the budget, by others): the
    /// appender drops them once it has released its locks ([`Tail::take_freed`]), so that
    /// unmapping them does not hold up the partition.
    freed: Vec<Arc<ChunkBuf>>,
    /// One-block buffers for the last block of writes, reused once their write is done.
    blocks: Vec<Arc<ChunkBuf>>,
    /// While there is no chunk yet: the file's bytes of the partial block before `end`.
    seed: Vec<u8>,
    /// One past the last byte appended.
    end: u64,
    /// Bytes of the chunks in `chunks`.
    cached: u64,
    /// Bytes of memory this tail holds (chunks, spares and blocks), counted in `budget`.
    held: u64,
    budget: Arc<TailBudget>,
    /// The budget's clock at this tail's last append.
    tick: Arc<AtomicU64>,
    /// Size of the next chunk: a tail starts (and starts again after letting go) with small
    /// chunks, doubled with each new one up to the budget's `chunk_size`, so that a partition
    /// written to now and then does not hold a whole chunk for a few batches.
    next_chunk: u64,
    /// The segment before this one (set at the roll that started it): a chunk this tail needs
    /// and has no spare for is first taken from that segment's tail, its oldest, so that a
    /// partition's cache stays its newest bytes across a roll without mapping new memory.
    before: Weak<Segment>,
}

impl Tail {
    /// A tail for a segment whose file holds `end` bytes; `seed` is the file's partial block
    /// before `end` (`end - align_down(end)` bytes).
    pub(crate) fn new(file: File, end: u64, seed: Vec<u8>, budget: Arc<TailBudget>) -> Tail {
        debug_assert_eq!(seed.len() as u64, end - align_down(end));
        Tail {
            file: Arc::new(file),
            chunks: VecDeque::new(),
            spare: Vec::new(),
            freed: Vec::new(),
            blocks: Vec::new(),
            seed,
            end,
            cached: 0,
            held: 0,
            tick: Arc::new(AtomicU64::new(budget.clock.fetch_add(1, Ordering::Relaxed) + 1)),
            next_chunk: budget.chunk_size.min(CHUNK_START),
            budget,
            before: Weak::new(),
        }
    }

    /// The tick to register this tail's segment with ([`TailBudget::register`]).
    pub(crate) fn registration(&self) -> (&Arc<TailBudget>, Arc<AtomicU64>) {
        (&self.budget, self.tick.clone())
    }

    fn charge(&mut self, n: u64) {
        self.held += n;
        self.budget.held.fetch_add(n, Ordering::Relaxed);
    }

    fn credit(&mut self, n: u64) {
        self.held -= n;
        self.budget.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Copies one batch (`parts`, back to back, starting with offset `base_offset`) to the log
    /// end. `published` is the segment's published length (chunks wholly below it may leave
    /// the cache).
    pub(crate) fn append(&mut self, parts: &[&[u8]], base_offset: i64, published: u64) {
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let pos = self.end;
        let end = pos + n;
        let fits = self.chunks.back().is_some_and(|c| align_up(end) - c.file_start <= c.buf.cap());
        if !fits {
            self.start_chunk(pos, end, published);
        }
        let Some(c) = self.chunks.back_mut() else { unreachable!("start_chunk pushed a chunk") };
        let mut at = (pos - c.file_start) as usize;
        for p in parts {
            // SAFETY: at or after the log end and below align_up(end), within the chunk (it
            // fits): no reader sees these bytes before they are published, and the I/O thread
            // only reads them.
            unsafe { c.buf.copy_in(at, p.as_ptr(), p.len()) };
            at += p.len();
        }
        c.end = end;
        c.first.get_or_insert((base_offset, pos));
        self.end = end;
        self.tick.store(self.budget.clock.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn start_chunk(&mut self, pos: u64, end: u64, published: u64) {
        let start = align_down(pos);
        let need = align_up(end) - start;
        // A multiple of the chunk size, so that chunks of large batches are reused too.
        let size = self.next_chunk;
        self.next_chunk = (size * 2).min(self.budget.chunk_size);
        let cap = need.div_ceil(size) * size;
        // `get_mut` (not a count) so that the last reader's or write's use of a spare happens
        // before it is written again.
        let free = self.spare.iter_mut().position(|b| b.cap() >= cap && Arc::get_mut(b).is_some());
        let buf = match free {
            Some(i) => self.spare.swap_remove(i),
            None => match self.before.upgrade().and_then(|s| s.yield_chunk(cap)) {
                Some(b) => {
                    self.charge(b.cap());
                    b
                }
                None => match self.budget.take_ready(cap) {
                    Some(b) => {
                        // Already counted in the directory's memory by the filler.
                        self.held += b.cap();
                        b
                    }
                    None => {
                        self.charge(cap);
                        ChunkBuf::new(cap)
                    }
                },
            },
        };
        let k = (pos - start) as usize;
        if k > 0 {
            let src = match self.chunks.back() {
                Some(c) => c.buf.ptr((start - c.file_start) as usize),
                None => self.seed.as_ptr(),
            };
            // SAFETY: `buf` is unshared (new, ready, yielded by the segment before, or a spare
            // nothing else holds); the source bytes were copied in by this appender, below the
            // log end.
            unsafe { buf.copy_in(0, src, k) };
        }
        self.cached += buf.cap();
        self.chunks.push_back(TailChunk { buf, file_start: start, end: pos, first: None });
        self.seed = Vec::new();
        // A new chunk advances the clock; `append` stamps this tail with it when done (no other
        // tail's reclaim looks at it before: they skip a segment whose lock is held).
        self.budget.clock.fetch_add(1, Ordering::Relaxed);
        // Over the budget, ready chunks go before any tail's memory: they are the least use to
        // anyone. Then down to this tail's share; then, still over the budget, the other tails
        // let go (their spares before anyone's data) before this one evicts for the budget:
        // spares kept by an idle partition must not cost a busy one its cached data.
        if self.budget.over() {
            self.budget.drain_ready(self.budget.limit, &mut self.freed);
        }
        self.evict(published, false);
        if self.budget.wants_reclaim() {
            self.budget.reclaim(&mut self.freed);
        }
        self.evict(published, true);
    }

    /// Lets the oldest chunks go while over this tail's share (or, with `budget`, the
    /// directory's budget), but only chunks that are wholly published (their last block was
    /// written for the last time) and never the newest.
    pub(crate) fn evict(&mut self, published: u64, budget: bool) {
        while self.chunks.len() > 1
            && (self.cached > self.budget.per_tail || (budget && self.budget.over()))
        {
            match self.chunks.front() {
                Some(c) if c.end <= published => {}
                _ => break,
            }
            let Some(c) = self.chunks.pop_front() else { break };
            self.cached -= c.buf.cap();
            // Smaller chunks than the next one would never be taken again. As many as the
            // directory's budget allows are kept: a disk that stalls makes the cache grow by
            // what is not written yet, and the next stall would otherwise map that memory anew
            // (page faults zeroing it, under the partition's lock, while appends wait). A roll
            // passes on only as many as a tail keeps ([`Tail::pass_spares`]).
            if c.buf.cap() >= self.next_chunk && !self.budget.over() {
                self.spare.push(c.buf);
            } else {
                self.credit(c.buf.cap());
                self.freed.push(c.buf);
            }
        }
        if self.budget.over() && !self.spare.is_empty() {
            let n = self.spare.iter().map(|b| b.cap()).sum();
            self.credit(n);
            self.freed.append(&mut self.spare);
        }
    }

    /// How many spare chunks this tail keeps: as many as its cache has chunks, at least
    /// [`SPARE_MIN`].
    fn spares_kept(&self) -> usize {
        self.budget.chunks_kept()
    }

    /// At a roll, takes over the memory of `prev`, the tail being let go of (the segment's
    /// before the one just rolled, kept until now for readers just behind): its chunks and
    /// spares of a whole chunk or more become this tail's spares, up to as many as it keeps,
    /// so that a busy partition's new segment fills its cache with memory already in use
    /// instead of mapping new memory, whose first touch costs page faults (on the development
    /// VM ≈ 7 ms of CPU per 2 MiB chunk, under the partition's lock: the rolls' latency
    /// spikes). The rest, and buffers from another directory's budget, go to `freed`, dropped
    /// by the next appender outside the locks.
    pub(crate) fn adopt(&mut self, mut prev: Tail) {
        let same = Arc::ptr_eq(&self.budget, &prev.budget);
        let keep = self.spares_kept();
        let mut moved = 0;
        let chunks = prev.chunks.drain(..).map(|c| c.buf);
        for b in chunks.chain(prev.spare.drain(..)) {
            if same
                && b.cap() >= self.budget.chunk_size
                && self.spare.len() < keep
                && !self.budget.over()
            {
                moved += b.cap();
                self.spare.push(b);
            } else {
                self.freed.push(b);
            }
        }
        self.freed.append(&mut prev.blocks);
        self.freed.append(&mut prev.freed);
        // `prev` gives back all it held when dropped; what moved counts here from now on.
        drop(prev);
        self.charge(moved);
    }

    /// For the next segment's tail (see `before`): this tail's oldest chunk, if it holds at
    /// least `cap` bytes, is wholly written (`published` is the segment's published length)
    /// and nothing else uses it. Reads of its bytes go through the file from then on, as after
    /// an eviction. This tail takes no more appends (its segment has rolled).
    pub(crate) fn yield_oldest(&mut self, published: u64, cap: u64) -> Option<Arc<ChunkBuf>> {
        let c = self.chunks.front_mut()?;
        if c.end > published || c.buf.cap() < cap || Arc::get_mut(&mut c.buf).is_none() {
            return None;
        }
        let c = self.chunks.pop_front()?;
        self.cached -= c.buf.cap();
        self.credit(c.buf.cap());
        Some(c.buf)
    }

    /// Moves the buffers let go of during appends into `to` (see `freed`).
    pub(crate) fn take_freed(&mut self, to: &mut Vec<Arc<ChunkBuf>>) {
        to.append(&mut self.freed);
    }

    /// Lets go of its spare chunks and block buffers and, with `data`, of everything it holds
    /// that is written (`published` is the segment's published length): all chunks when the
    /// whole tail is, keeping a copy of the partial last block to start the next chunk with.
    /// Reads of it go through the file from then on; the next append takes a chunk again. The
    /// buffers go to `freed` (the caller drops them when it holds no lock).
    pub(crate) fn shed(&mut self, published: u64, data: bool, freed: &mut Vec<Arc<ChunkBuf>>) {
        let mut n: u64 = self.spare.iter().map(|b| b.cap()).sum();
        n += BLOCK * self.blocks.len() as u64;
        freed.append(&mut self.spare);
        freed.append(&mut self.blocks);
        if data {
            if self.end <= published {
                if let Some(c) = self.chunks.back() {
                    let at = (align_down(self.end) - c.file_start) as usize;
                    let k = (self.end - align_down(self.end)) as usize;
                    // SAFETY: the newest chunk holds file bytes `[align_down(end), end)` (it
                    // starts at or below that boundary), copied in by the appender, whose lock
                    // the caller holds: nobody writes them.
                    self.seed = unsafe { std::slice::from_raw_parts(c.buf.ptr(at), k) }.to_vec();
                }
            }
            while let Some(c) = self.chunks.front() {
                if c.end > published {
                    break;
                }
                self.cached -= c.buf.cap();
                n += c.buf.cap();
                if let Some(c) = self.chunks.pop_front() {
                    freed.push(c.buf);
                }
            }
            if self.chunks.is_empty() {
                self.next_chunk = self.budget.chunk_size.min(CHUNK_START);
            }
        }
        self.credit(n);
    }

    /// Hands this tail's spare chunks (as many as a tail keeps) and its chunk size reached to
    /// `to` (the next segment's tail, at a roll), if both count in the same budget; otherwise
    /// lets the spares go.
    pub(crate) fn pass_spares(&mut self, to: &mut Tail) {
        let n: u64 = self.spare.iter().map(|b| b.cap()).sum();
        self.credit(n);
        if Arc::ptr_eq(&self.budget, &to.budget) {
            let keep = to.spares_kept().saturating_sub(to.spare.len());
            if self.spare.len() > keep {
                // Dropped by the new tail's next appender, outside the locks.
                to.freed.extend(self.spare.drain(keep..));
            }
            let n: u64 = self.spare.iter().map(|b| b.cap()).sum();
            to.charge(n);
            to.spare.append(&mut self.spare);
            // A partition written to enough to roll goes on with chunks of the size it had
            // reached: starting again from small ones would map new memory for each, and let it
            // go again once they are too small to be taken as spares.
            to.next_chunk = to.next_chunk.max(self.next_chunk);
        } else {
            self.spare.clear();
        }
    }

    /// Sets the segment before this tail's (see `before`).
    pub(crate) fn follows(&mut self, before: Weak<Segment>) {
        self.before = before;
    }

    /// The write for bytes `[start, end)` just appended (through one or more chunks), `end`
    /// being the log end.
    pub(crate) fn write_for(&mut self, start: u64, end: u64) -> DirectWrite {
        debug_assert_eq!(end, self.end);
        let lo = align_down(start);
        let hi = align_down(end);
        let block = (hi < end).then(|| self.last_block(hi, end));
        DirectWrite { file: self.file.clone(), start: lo, pieces: self.pieces(lo, hi), block, end }
    }

    /// Pieces of the chunks covering file bytes `[lo, hi)` (aligned, below the log end, in the
    /// cache), contiguous on file.
    fn pieces(&self, lo: u64, hi: u64) -> DirectPieces {
        let mut upper = hi;
        let mut pieces = DirectPieces::new();
        for c in self.chunks.iter().rev() {
            let from = lo.max(c.file_start);
            if from < upper {
                pieces.push((
                    c.buf.clone(),
                    (from - c.file_start) as usize,
                    (upper - c.file_start) as usize,
                ));
            }
            upper = upper.min(c.file_start);
            if c.file_start <= lo {
                break;
            }
        }
        pieces.reverse();
        pieces
    }

    /// A private copy of file bytes `[hi, end)` (the partial last block) followed by zeros.
    fn last_block(&mut self, hi: u64, end: u64) -> Arc<ChunkBuf> {
        let i = match self.blocks.iter_mut().position(|b| Arc::get_mut(b).is_some()) {
            Some(i) => i,
            None => {
                self.charge(BLOCK);
                self.blocks.push(ChunkBuf::new(BLOCK));
                self.blocks.len() - 1
            }
        };
        let Some(c) = self.chunks.back() else { unreachable!("an append made a chunk") };
        let n = (end - hi) as usize;
        let at = (hi - c.file_start) as usize;
        // SAFETY: file bytes `[hi, end)` are in the newest chunk (it starts at or below the
        // block boundary under the log end) and were copied in by this appender: nobody writes
        // them any more.
        let src = unsafe { std::slice::from_raw_parts(c.buf.ptr(at), n) };
        let buf = &mut self.blocks[i];
        let Some(b) = Arc::get_mut(buf) else { unreachable!("found unshared above") };
        let b = b.as_mut_slice();
        b[..n].copy_from_slice(src);
        b[n..].fill(0);
        let out = buf.clone();
        // A burst of writes in flight may have grown the pool; keep a few.
        if self.blocks.len() > BLOCKS_KEPT {
            self.blocks.swap_remove(i);
            self.credit(BLOCK);
        }
        out
    }

    /// The chunk holding the batch with `offset`, if it is cached: the newest chunk whose first
    /// batch is at or before `offset`, readable up to `published`.
    pub(crate) fn find(&self, offset: i64, published: u64) -> Option<TailHit> {
        let c = self.chunks.iter().rev().find(|c| c.first.is_some_and(|(o, _)| o <= offset))?;
        let (_, first_pos) = c.first?;
        let limit = c.end.min(published);
        (first_pos <= limit).then(|| TailHit {
            buf: c.buf.clone(),
            file_start: c.file_start,
            first_pos,
            limit,
        })
    }

    /// File position of the first cached batch: reads through the page cache stop there.
    pub(crate) fn cached_from(&self) -> Option<u64> {
        self.chunks.iter().find_map(|c| c.first.map(|(_, p)| p))
    }

    /// Bytes of memory the tail holds (chunks and spares).
    #[cfg(test)]
    pub(crate) fn memory(&self) -> u64 {
        self.cached + self.spare.iter().map(|b| b.cap()).sum::<u64>()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Whether `rest`, the bytes after the last whole batch at file position `pos`, is the zero
/// padding a direct write leaves: zeros up to the next block boundary and no further.
pub(crate) fn is_padding(pos: u64, rest: &[u8]) -> bool {
    !rest.is_empty() && pos + rest.len() as u64 == align_up(pos) && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Makes [`block_suits`] say no on this thread: the fallback of a file system whose
        /// direct-I/O alignment 4 KiB does not satisfy, which the file systems here never need.
        pub(crate) static REFUSE_ALIGNMENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn tail(budget: u64) -> (tempfile::TempDir, Tail) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        (dir, Tail::new(f, 0, Vec::new(), TailBudget::new(budget, u64::MAX)))
    }

    fn covered(w: &DirectWrite) -> Vec<u8> {
        let mut out = Vec::new();
        let block = w.block.as_ref().map(|b| (b.clone(), 0, BLOCK as usize));
        for (b, f, t) in w.pieces.iter().chain(block.as_ref()) {
            // SAFETY: test: single thread.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(b.ptr(*f), t - f) });
        }
        out
    }

    #[test]
    fn writes_cover_whole_blocks_and_rewrite_the_partial_one() {
        let (_d, mut t) = tail(1 << 20);
        t.append(&[b"abc", b"de"], 0, 0);
        let w = t.write_for(0, 5);
        assert_eq!((w.start, w.end), (0, 5));
        let bytes = covered(&w);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[..5], b"abcde");
        assert!(bytes[5..].iter().all(|&b| b == 0));
        t.append(&[&[7u8; 5000]], 1, 5);
        let w = t.write_for(5, 5005);
        assert_eq!(w.start, 0);
        let bytes = covered(&w);
        assert_eq!(bytes.len(), 8192);
        assert_eq!(&bytes[..5], b"abcde");
        assert!(bytes[5..5005].iter().all(|&b| b == 7));
        assert!(bytes[5005..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_batch_that_does_not_fit_starts_a_chunk_with_the_partial_block() {
        let (_d, mut t) = tail(0); // chunks of one block, one kept
        let big = vec![1u8; 8192 - 100]; // a chunk of its own size (two blocks)
        t.append(&[&big], 0, 0);
        t.append(&[&[2u8; 300]], 10, 0); // spans the chunk's end: a new chunk
        assert_eq!(t.chunks.len(), 2, "nothing is published: the old chunk stays");
        let w = t.write_for(big.len() as u64, big.len() as u64 + 300);
        let start = align_down(big.len() as u64);
        assert_eq!(w.start, start);
        assert_eq!(w.pieces.len(), 1, "the new chunk alone covers the whole block");
        assert!(w.block.is_some(), "and the last block is a private copy");
        let bytes = covered(&w);
        let k = (big.len() as u64 - start) as usize;
        assert!(bytes[..k].iter().all(|&b| b == 1), "the partial block was carried over");
        assert!(bytes[k..k + 300].iter().all(|&b| b == 2));
        // Reads: offset 10 is in the new chunk, offset 3 in the old one.
        let published = big.len() as u64 + 300;
        let hit = t.find(10, published).unwrap();
        assert_eq!(hit.first_pos, big.len() as u64);
        assert_eq!(hit.data(hit.first_pos), &[2u8; 300][..]);
        assert_eq!(t.find(3, published).unwrap().first_pos, 0);
        // Once published, the old chunk leaves the cache and its memory is kept for reuse.
        t.evict(published, true);
        assert_eq!(t.chunks.len(), 1);
        assert_eq!(t.cached_from(), Some(big.len() as u64));
        assert!(t.find(3, published).is_none());
        assert_eq!(t.memory(), 2 * 8192);
    }

    #[test]
    fn a_write_spanning_two_chunks_is_contiguous_on_file() {
        let (_d, mut t) = tail(1 << 30);
        let a = vec![1u8; CHUNK_MAX as usize - 5000];
        t.append(&[&a], 0, 0);
        let p1 = a.len() as u64;
        t.append(&[&[2u8; 1000]], 1, 0);
        t.append(&[&[3u8; 9000]], 2, 0); // new chunk
        let w = t.write_for(p1, p1 + 10_000);
        assert_eq!(w.pieces.len(), 2);
        assert!(w.block.is_some());
        let bytes = covered(&w);
        assert_eq!(w.start, align_down(p1));
        assert_eq!(bytes.len() as u64, align_up(p1 + 10_000) - align_down(p1));
        let off = (p1 - align_down(p1)) as usize;
        assert!(bytes[..off].iter().all(|&b| b == 1));
        assert!(bytes[off..off + 1000].iter().all(|&b| b == 2));
        assert!(bytes[off + 1000..off + 10_000].iter().all(|&b| b == 3));
    }

    /// A write of more pieces than one `pwritev` takes (a round of many appends that each
    /// started a chunk) goes out in several calls, whole.
    #[test]
    fn a_write_of_more_than_iov_max_pieces_is_written_whole() {
        use crate::io::IOV_MAX;
        let (d, mut t) = tail(0); // chunks of one block
        let mut want = Vec::new();
        for i in 0..(IOV_MAX + 300) {
            // Each batch is one block and a bit: every one starts a chunk of two blocks.
            let b = vec![(i % 251) as u8; 4096 + 7];
            t.append(&[&b], i as i64, 0);
            want.extend_from_slice(&b);
        }
        let end = want.len() as u64;
        let mut w = t.write_for(0, end);
        assert!(w.pieces.len() > IOV_MAX, "{} pieces", w.pieces.len());
        let path = d.path().join("f");
        let Some(f) = open(&path).unwrap() else {
            eprintln!("skipped: no O_DIRECT here");
            return;
        };
        w.file = Arc::new(f);
        w.write(&mut Vec::new()).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..want.len()], &want[..]);
    }

    /// Where the kernel reports the file system's direct-I/O alignment, 4 KiB satisfies it
    /// here (ext4), and `open` takes the file for direct writes.
    #[test]
    fn the_reported_alignment_suits_whole_blocks() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let f = File::open(&path).unwrap();
        match dio_align(&f) {
            Some((mem, off)) => {
                eprintln!("direct I/O alignment: memory {mem}, offsets {off}");
                if off == 0 {
                    assert!(open(&path).unwrap().is_none(), "no direct I/O: falls back");
                } else {
                    assert!(block_suits(&f));
                    assert!(open(&path).unwrap().is_some());
                }
            }
            None => eprintln!("this kernel does not report direct-I/O alignment"),
        }
    }

    /// Writes of appends that follow each other, joined, cover the same bytes as one write of
    /// them all, across a chunk change and appends inside one block.
    #[test]
    fn joined_writes_cover_what_one_write_would() {
        let (_d, mut t) = tail(0);
        let mut writes = Vec::new();
        let mut pos = 0u64;
        for (i, len) in [100usize, 5000, 30, 9000, 7].into_iter().enumerate() {
            t.append(&[&vec![i as u8 + 1; len]], i as i64, 0);
            writes.push(t.write_for(pos, pos + len as u64));
            pos += len as u64;
        }
        let joined = DirectWrite::join(writes.iter());
        let whole = t.write_for(0, pos);
        assert_eq!((joined.start, joined.end), (whole.start, whole.end));
        assert_eq!(covered(&joined), covered(&whole));
    }

    /// A tail of 16 KiB chunks (a 64 KiB share) holding `n` appends of 10,000 bytes, all
    /// written (the last one's write returned, so its block buffer is free again).
    fn written_tail(n: usize, budget: &Arc<TailBudget>) -> (tempfile::TempDir, Tail) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        let mut t = Tail::new(f, 0, Vec::new(), budget.clone());
        for i in 0..n {
            let pos = t.end;
            t.append(&[&[i as u8; 10_000]], i as i64, pos);
            drop(t.write_for(pos, pos + 10_000));
        }
        (dir, t)
    }

    /// The addresses of the chunks ready in `b`.
    fn ready(b: &TailBudget) -> Vec<usize> {
        lock(&b.ready.state).chunks.iter().map(|c| c.ptr(0) as usize).collect()
    }

    /// Waits (at most 10 s) for the filler to bring `b` to `n` ready chunks.
    fn wait_ready(b: &TailBudget, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ready(b).len() != n {
            assert!(std::time::Instant::now() < deadline, "{} ready, not {n}", ready(b).len());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Whether the `len` bytes from `ptr` (page-aligned, mapped) are all resident.
    fn resident(ptr: *const u8, len: usize) -> bool {
        let mut pages = vec![0u8; len.div_ceil(4096)];
        // SAFETY: test: a mapped, page-aligned range, and a byte per page to fill.
        let r = unsafe { libc::mincore(ptr as *mut libc::c_void, len, pages.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        pages.iter().all(|p| p & 1 == 1)
    }

    #[test]
    fn the_filler_keeps_full_size_chunks_ready_for_tails_that_need_new_memory() {
        // 256 KiB per tail: chunks of 64 KiB (a tail's first chunk is already that size), as
        // many ready as a tail's share holds (4).
        let budget = TailBudget::new(256 << 10, 64 << 20);
        budget.start_filler();
        wait_ready(&budget, 4);
        assert_eq!(budget.held(), 4 * (64 << 10), "ready chunks count in the budget");
        let before = ready(&budget);
        // Faulted in: resident before anyone writes them (a chunk just mapped is not).
        assert!(before.iter().all(|&p| resident(p as *const u8, 64 << 10)));
        assert!(!resident(ChunkBuf::new(64 << 10).ptr(0), 64 << 10));
        let (_dir, mut t) = written_tail(0, &budget);
        t.append(&[&[7u8; 1000]], 0, 0);
        let took = t.chunks.back().unwrap().buf.ptr(0) as usize;
        assert!(before.contains(&took), "the tail's new chunk is a ready one");
        assert_eq!(t.held, 64 << 10);
        // Faulted in and still zeroed after what was copied.
        let c = &t.chunks.back().unwrap().buf;
        // SAFETY: test: bytes past the log end, which nothing writes now.
        assert!(unsafe { std::slice::from_raw_parts(c.ptr(1000), (64 << 10) - 1000) }
            .iter()
            .all(|&b| b == 0));
        // The filler makes another in its place: the tail's chunk and 4 ready.
        wait_ready(&budget, 4);
        assert_eq!(budget.held(), 5 * (64 << 10));
        // A chunk of another size (a batch larger than the chunk) is mapped by the tail.
        let pos = t.end;
        t.append(&[&vec![8u8; 100 << 10]], 1, pos);
        assert!(!ready(&budget).contains(&(t.chunks.back().unwrap().buf.ptr(0) as usize)));
        assert_eq!(ready(&budget).len(), 4);
        drop(t);
        assert_eq!(budget.held(), 4 * (64 << 10), "the tail gave back what it held");
    }

    #[test]
    fn the_filler_stays_below_the_low_water_mark_and_tails_over_the_budget_let_ready_chunks_go() {
        // A budget of 256 KiB: its low-water mark (224 KiB) leaves room for 3 ready chunks of
        // 64 KiB, not the 4 a tail's share would.
        let budget = TailBudget::new(256 << 10, 256 << 10);
        budget.start_filler();
        wait_ready(&budget, 3);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(ready(&budget).len(), 3);
        assert_eq!(budget.held(), 3 * (64 << 10));
        // Only as many go as bring the directory down to what is asked.
        let mut freed = Vec::new();
        budget.drain_ready(2 * (64 << 10) + 1000, &mut freed);
        assert_eq!(freed.len(), 1);
        drop(freed);
        // Filled again: there is room.
        wait_ready(&budget, 3);
        // A batch of 200 KiB takes a chunk of 256 KiB (not a ready size): the directory goes
        // over its budget, and the ready chunks go before any tail's memory.
        let (_dir, mut t) = written_tail(0, &budget);
        t.append(&[&vec![9u8; 200 << 10]], 0, 0);
        assert!(ready(&budget).is_empty());
        assert_eq!(budget.held(), 256 << 10);
        assert_eq!(t.chunks.len(), 1, "the appender's data stays");
        // Back below the low-water mark, the filler fills again.
        drop(t);
        wait_ready(&budget, 3);
    }

    #[test]
    fn a_dropped_budget_stops_its_filler() {
        let budget = TailBudget::new(256 << 10, 64 << 20);
        budget.start_filler();
        wait_ready(&budget, 4);
        let state = budget.ready.clone();
        drop(budget);
        // The filler holds the other reference until it leaves.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&state) > 1 {
            assert!(std::time::Instant::now() < deadline, "the filler did not stop");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(lock(&state.state).stop);
    }

    #[test]
    fn a_rolled_tail_yields_its_oldest_written_chunk_to_the_next() {
        let budget = TailBudget::new(64 << 10, u64::MAX);
        let (_d, mut old) = written_tail(6, &budget);
        let end = old.end;
        let chunks = old.chunks.len();
        let oldest = old.chunks.front().map(|c| c.buf.cap()).unwrap();
        let first = old.chunks.front().and_then(|c| c.first).map(|(o, _)| o).unwrap();
        // Not before it is written.
        assert!(old.yield_oldest(0, 4096).is_none());
        // Not while a reader holds it.
        let hit = old.find(first, end).unwrap();
        assert!(old.yield_oldest(end, 4096).is_none());
        drop(hit);
        // Not when it is smaller than the next tail needs.
        assert!(old.yield_oldest(end, oldest + 4096).is_none());
        let held = budget.held();
        let b = old.yield_oldest(end, 4096).expect("the oldest chunk");
        assert_eq!(b.cap(), oldest);
        assert_eq!(old.chunks.len(), chunks - 1);
        // Its bytes are read from the file from now on: the tail starts at the next chunk.
        assert!(old.find(first, end).is_none());
        assert!(old.cached_from().is_some_and(|p| p > 0));
        assert_eq!(budget.held(), held - oldest, "the taker counts it from now on");
        assert_eq!(old.held, budget.held());
    }

    #[test]
    fn a_new_tail_adopts_the_released_tails_chunks_as_spares() {
        let budget = TailBudget::new(64 << 10, u64::MAX);
        let (_d, prev) = written_tail(12, &budget);
        let (_d2, mut next) = written_tail(0, &budget);
        let prev_chunks = prev.chunks.len() + prev.spare.len();
        assert!(prev_chunks > next.spares_kept(), "more than a tail keeps: {prev_chunks}");
        next.adopt(prev);
        assert_eq!(next.spare.len(), next.spares_kept());
        assert!(next.spare.iter().all(|b| b.cap() >= next.budget.chunk_size));
        assert_eq!(budget.held(), next.held, "what was not kept is not counted");
        let held = budget.held();
        let mut freed = Vec::new();
        next.take_freed(&mut freed);
        assert!(!freed.is_empty(), "the rest is dropped by the next appender");
        // The next chunk comes from the spares: no new memory.
        next.append(&[&[1u8; 10_000]], 0, 0);
        assert_eq!(budget.held(), held);
        assert_eq!(next.spare.len(), next.spares_kept() - 1);
    }

    /// A tail that lets go keeps only the partial last block (nothing when the log end is
    /// aligned) and counts its memory back; its next append starts a chunk from that block and
    /// the write covers the same bytes as before. Bytes not yet written are never let go.
    #[test]
    fn a_tail_that_lets_go_starts_again_from_its_partial_block() {
        let (_d, mut t) = tail(64 << 10);
        let budget = t.budget.clone();
        t.append(&[&[5u8; 5000]], 0, 0);
        let _ = t.write_for(0, 5000);
        assert!(budget.held() > 0);
        assert_eq!(budget.held(), t.held);
        let mut freed = Vec::new();
        t.shed(5000, false, &mut freed); // spares and blocks only
        assert_eq!(t.chunks.len(), 1);
        assert_eq!(budget.held(), t.cached, "the block buffer went");
        t.shed(4096, true, &mut freed); // the last block is not written yet: the chunk stays
        assert_eq!(t.chunks.len(), 1);
        t.shed(5000, true, &mut freed);
        assert!(t.chunks.is_empty() && t.find(0, 5000).is_none() && t.cached_from().is_none());
        assert_eq!(t.seed, vec![5u8; 5000 - 4096]);
        assert_eq!(budget.held(), 0);
        assert_eq!(freed.len(), 2, "the chunk and the block, for the caller to drop");
        drop(freed);
        t.append(&[&[6u8; 100]], 1, 5000);
        let w = t.write_for(5000, 5100);
        assert_eq!((w.start, w.end), (4096, 5100));
        let bytes = covered(&w);
        assert_eq!(bytes.len(), 4096);
        assert!(bytes[..5000 - 4096].iter().all(|&b| b == 5), "the kept block came first");
        assert!(bytes[5000 - 4096..5100 - 4096].iter().all(|&b| b == 6));
        assert!(bytes[5100 - 4096..].iter().all(|&b| b == 0));
        assert_eq!(t.find(1, 5100).map(|h| h.first_pos), Some(5000));
        // At a roll the spares go to the next segment's tail, counted once.
        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(d2.path().join("f"), b"").unwrap();
        let f = File::options().write(true).open(d2.path().join("f")).unwrap();
        let mut next = Tail::new(f, 0, Vec::new(), budget.clone());
        let spare = ChunkBuf::new(64 << 10);
        t.charge(spare.cap());
        t.spare.push(spare);
        let before = budget.held();
        t.pass_spares(&mut next);
        assert_eq!((t.spare.len(), next.spare.len()), (0, 1));
        assert_eq!(budget.held(), before);
        drop(w);
        drop(t);
        drop(next);
        assert_eq!(budget.held(), 0, "dropped tails count their memory back");
    }

    /// The streaming copy copies exactly: every length around its 64-byte steps, from and to
    /// every alignment, and nothing outside the destination range changes.
    #[test]
    fn streaming_copies_are_exact() {
        let src: Vec<u8> =
            (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 1000, 65_536, 69_000] {
            for (s_off, d_off) in [(0, 0), (1, 0), (0, 1), (3, 13), (15, 16)] {
                let mut dst = vec![0xAAu8; len + 64];
                // SAFETY: both ranges are within their vectors, which do not overlap.
                unsafe {
                    copy_streaming(dst.as_mut_ptr().add(d_off), src.as_ptr().add(s_off), len)
                };
                assert_eq!(
                    &dst[d_off..d_off + len],
                    &src[s_off..s_off + len],
                    "{len} {s_off} {d_off}"
                );
                assert!(dst[..d_off].iter().chain(&dst[d_off + len..]).all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn padding_is_zeros_to_the_block_boundary_only() {
        assert!(is_padding(4000, &[0; 96]));
        assert!(!is_padding(4000, &[0; 97]));
        assert!(!is_padding(4000, &[0; 95]));
        assert!(!is_padding(4000, &[0, 0, 1]));
        assert!(!is_padding(4096, &[]));
    }
}
