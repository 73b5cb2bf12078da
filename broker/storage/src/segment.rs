//! One segment of a partition log: a `.log` file of v2 record batches and its two sparse indexes,
//! all named by the segment's base offset in 20 digits (`00000000000000000000.log`).
//!
//! Writes do not happen here: the log reserves a file position under its lock
//! ([`Segment::reserve`]) and the log directory's I/O thread writes the bytes, then publishes the
//! new readable length ([`Segment::publish`]). Readers only ever look at the published prefix,
//! through a read-only map of the file that is re-made larger when more has been published; the
//! `Bytes` handed out keep their map alive, so they stay valid after a roll, a retention delete
//! (unlinking does not unmap) or a later remap.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use crate::batch::{self, BatchHeader};
use crate::config::LogConfig;
use crate::direct::{self, Tail, TailBudget};
use crate::error::{Result, StorageError};
use crate::index::{self, IndexFile, OffsetIndex, TimeIndex, OFFSET_ENTRY, TIME_ENTRY};
use crate::lock;
use crate::log::TimestampLookup;

/// File name stem of a segment: its base offset in 20 digits, as Kafka names them.
pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// What recovery cut from a segment's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment_base_offset: i64,
    /// File position the segment was cut at.
    pub position: u64,
    pub bytes: u64,
    /// First offset of the batch that was cut, when its header was readable.
    pub first_offset_cut: Option<i64>,
    pub reason: String,
}

/// Append-side state and the indexes, behind one lock.
#[derive(Debug)]
pub(crate) struct SegmentState {
    pub(crate) offset_index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    /// Bytes handed to appends; at least the published length.
    pub(crate) reserved_len: u64,
    /// One past the last offset appended to this segment (the base offset when empty).
    pub(crate) next_offset: i64,
    /// Largest batch max timestamp in the segment; -1 when empty.
    pub(crate) max_timestamp: i64,
    /// Base offset of the first batch that reached `max_timestamp`.
    pub(crate) offset_of_max_timestamp: i64,
    bytes_since_index: u64,
    /// When the first batch was appended (wall clock, ms), for `segment.ms`.
    pub(crate) first_append_ms: Option<i64>,
    pub(crate) sealed: bool,
    /// With direct I/O: the segment's newest bytes in memory, where appends are copied to be
    /// written from and recent reads are served from (see `direct`).
    pub(crate) tail: Option<Tail>,
}

/// See the module comment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) log_path: PathBuf,
    pub(crate) file: Arc<File>,
    published_len: AtomicU64,
    /// Below this position the file's pages were dropped from the page cache (see
    /// [`Segment::drop_cached_behind`]); only the I/O thread moves it.
    cache_dropped_to: AtomicU64,
    view: RwLock<Bytes>,
    state: Mutex<SegmentState>,
}

/// Asks the kernel to drop `file`'s cached pages in `[from, from + len)` (`len` 0: to the end);
/// whether it took the advice.
fn drop_cached(file: &File, from: u64, len: u64) -> bool {
    // SAFETY: plain system call on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    rc == 0
}

/// Paths of a segment's three files.
pub(crate) fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
    let stem = file_stem(base_offset);
    (
        dir.join(format!("{stem}.log")),
        dir.join(format!("{stem}.index")),
        dir.join(format!("{stem}.timeindex")),
    )
}

/// Batch headers of `data` from `pos`, stopping at the first that is not whole.
struct Batches<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Iterator for Batches<'_> {
    type Item = (usize, BatchHeader, usize);
    fn next(&mut self) -> Option<Self::Item> {
        let h = BatchHeader::parse(self.data.get(self.pos..)?)?;
        let len = h.total_len()?;
        if self.pos + len > self.data.len() {
            return None;
        }
        let at = self.pos;
        self.pos += len;
        Some((at, h, len))
    }
}

impl Segment {
    /// Creates a new empty segment (its files are truncated if they exist). `direct`: write it
    /// with direct I/O, its tail's memory counted in that budget (and the tail registered
    /// there).
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        direct: Option<&Arc<TailBudget>>,
    ) -> Result<Arc<Segment>> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let offset_index = OffsetIndex(
            IndexFile::create(&index_path, OFFSET_ENTRY, config.segment_index_bytes)
                .map_err(|e| StorageError::io(&index_path, e))?,
        );
        let time_index = TimeIndex(
            IndexFile::create(&time_path, TIME_ENTRY, config.segment_index_bytes)
                .map_err(|e| StorageError::io(&time_path, e))?,
        );
        let tail = match direct {
            Some(budget) => {
                open_direct(&log_path)?.map(|f| Tail::new(f, 0, Vec::new(), budget.clone()))
            }
            None => None,
        };
        let segment = Arc::new(Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            published_len: AtomicU64::new(0),
            cache_dropped_to: AtomicU64::new(0),
            view: RwLock::new(Bytes::new()),
            state: Mutex::new(SegmentState {
                offset_index,
                time_index,
                reserved_len: 0,
                next_offset: base_offset,
                max_timestamp: -1,
                offset_of_max_timestamp: base_offset,
                bytes_since_index: 0,
                first_append_ms: None,
                sealed: false,
                tail,
            }),
        });
        segment.register_tail();
        Ok(segment)
    }

    /// Opens an existing segment. With `recover`, every batch is checked (CRC included), a
    /// torn or corrupt tail is cut off and both indexes are rebuilt; without it the trimmed
    /// indexes are loaded and sanity-checked, and rebuilt (with the same full check) if they
    /// fail. `sealed` says whether a later segment exists.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        recover: bool,
        sealed: bool,
    ) -> Result<(Segment, Option<Truncation>)> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let len = file.metadata().map_err(|e| StorageError::io(&log_path, e))?.len();
        let loaded = if recover {
            None
        } else {
            Self::load_indexes(&file, &index_path, &time_path, base_offset, len)
                .map_err(|e| StorageError::io(&index_path, e))?
        };
        let (state, truncation, len) = match loaded {
            Some(state) => (state, None, len),
            None => {
                if !recover {
                    tracing::warn!(segment = %log_path.display(), "index missing or failed its sanity check; rebuilding it");
                }
                Self::rebuild(&file, &log_path, &index_path, &time_path, base_offset, len, config)?
            }
        };
        let seg = Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            published_len: AtomicU64::new(len),
            cache_dropped_to: AtomicU64::new(0),
            view: RwLock::new(Bytes::new()),
            state: Mutex::new(state),
        };
        if sealed {
            seg.seal().map_err(|e| StorageError::io(&index_path, e))?;
        }
        Ok((seg, truncation))
    }

    /// Loads trimmed indexes and derives the append state from them; `None` if they are
    /// missing or insane.
    fn load_indexes(
        file: &File,
        index_path: &Path,
        time_path: &Path,
        base_offset: i64,
        len: u64,
    ) -> io::Result<Option<SegmentState>> {
        let Some(offset_index) = IndexFile::open_trimmed(index_path, OFFSET_ENTRY)? else {
            return Ok(None);
        };
        let Some(time_index) = IndexFile::open_trimmed(time_path, TIME_ENTRY)? else {
            return Ok(None);
        };
        let (offset_index, time_index) = (OffsetIndex(offset_index), TimeIndex(time_index));
        if !offset_index.is_sane(len) {
            return Ok(None);
        }
        // Find the last batch by scanning headers from the last offset index entry.
        let map = map_file(file, len)?;
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        let start = match offset_index.lookup(u32::MAX) {
            Some((rel, pos)) => {
                // The entry must point at a batch with that base offset.
                match BatchHeader::parse(&data[pos as usize..]) {
                    Some(h) if h.base_offset == base_offset + i64::from(rel) => pos as usize,
                    _ => return Ok(None),
                }
            }
            None => 0,
        };
        // The time index holds the max timestamp up to its last entry; the batches scanned
        // from the last offset index entry cover the rest.
        let (mut max_timestamp, mut offset_of_max_timestamp) = match time_index.last() {
            Some((t, o)) => (t, base_offset + i64::from(o)),
            None => (-1, base_offset),
        };
        let mut it = Batches { data, pos: start };
        let mut next_offset = base_offset;
        for (_, h, _) in it.by_ref() {
            if h.base_offset < next_offset || h.last_offset() < h.base_offset {
                return Ok(None);
            }
            next_offset = h.last_offset() + 1;
            if h.max_timestamp > max_timestamp {
                (max_timestamp, offset_of_max_timestamp) = (h.max_timestamp, h.base_offset);
            }
        }
        if it.pos as u64 != len {
            return Ok(None); // trailing bytes: not a clean segment
        }
        if !time_index.is_sane((next_offset - base_offset) as u64) {
            return Ok(None);
        }
        Ok(Some(SegmentState {
            offset_index,
            time_index,
            reserved_len: len,
            next_offset,
            max_timestamp,
            offset_of_max_timestamp,
            bytes_since_index: 0,
            first_append_ms: (len > 0).then_some(max_timestamp),
            sealed: false,
            tail: None,
        }))
    }

    /// Full scan: checks every batch, cuts the file at the first bad one, rebuilds indexes.
    fn rebuild(
        file: &File,
        log_path: &Path,
        index_path: &Path,
        time_path: &Path,
        base_offset: i64,
        len: u64,
        config: &LogConfig,
    ) -> Result<(SegmentState, Option<Truncation>, u64)> {
        let offset_index = OffsetIndex(
            IndexFile::create(index_path, OFFSET_ENTRY, config.segment_index_bytes)
                .map_err(|e| StorageError::io(index_path, e))?,
        );
        let time_index = TimeIndex(
            IndexFile::create(time_path, TIME_ENTRY, config.segment_index_bytes)
                .map_err(|e| StorageError::io(time_path, e))?,
        );
        let mut state = SegmentState {
            offset_index,
            time_index,
            reserved_len: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_index: 0,
            first_append_ms: None,
            sealed: false,
            tail: None,
        };
        let map = map_file(file, len).map_err(|e| StorageError::io(log_path, e))?;
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        let mut pos = 0usize;
        let mut bad: Option<(Option<i64>, String)> = None;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(h) = BatchHeader::parse(rest) else {
                bad = Some((None, format!("{} bytes are less than a batch header", rest.len())));
                break;
            };
            let why = match h.total_len() {
                _ if h.magic != batch::MAGIC_V2 => Some(format!("magic {}", h.magic)),
                None => Some(format!("batchLength {}", h.batch_length)),
                Some(n) if n > rest.len() => {
                    Some(format!("batch of {n} bytes but only {} on disk (torn write)", rest.len()))
                }
                Some(n) if batch::compute_crc(&rest[..n]) != h.crc => {
                    Some("CRC-32C mismatch".to_string())
                }
                Some(_) if h.base_offset < state.next_offset => Some(format!(
                    "base offset {} is below the expected {}",
                    h.base_offset, state.next_offset
                )),
                Some(_)
                    if h.last_offset_delta < 0
                        || h.last_offset() - base_offset > i64::from(u32::MAX) =>
                {
                    Some(format!("lastOffsetDelta {}", h.last_offset_delta))
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                bad = Some((Some(h.base_offset), why));
                break;
            }
            let n = h.total_len().unwrap_or(0);
            let rel = (h.base_offset - base_offset) as u32;
            state.index_batch(rel, pos as u64, n as u64, h.max_timestamp, h.base_offset, config);
            state.next_offset = h.last_offset() + 1;
            pos += n;
        }
        // What a direct write leaves after the log's end (zeros to the block boundary) is not a
        // torn write: cut it without a report.
        if bad.is_some() && direct::is_padding(pos as u64, &data[pos..]) {
            tracing::debug!(segment = %log_path.display(), position = pos, "cutting direct-write padding");
            bad = None;
            file.set_len(pos as u64).map_err(|e| StorageError::io(log_path, e))?;
        }
        drop(map);
        state.reserved_len = pos as u64;
        state.first_append_ms = (pos > 0).then_some(state.max_timestamp);
        let truncation = match bad {
            Some((first_offset_cut, reason)) => {
                file.set_len(pos as u64).map_err(|e| StorageError::io(log_path, e))?;
                Some(Truncation {
                    segment_base_offset: base_offset,
                    position: pos as u64,
                    bytes: len - pos as u64,
                    first_offset_cut,
                    reason,
                })
            }
            None => None,
        };
        Ok((state, truncation, pos as u64))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SegmentState> {
        lock(&self.state)
    }

    /// Bytes written and readable.
    pub(crate) fn published_len(&self) -> u64 {
        self.published_len.load(Ordering::Acquire)
    }

    /// Shrinks the (unreferenced) log file to nothing, `DELETE_STEP` bytes at a time.
    fn cut_gradually(&self) -> io::Result<()> {
        // Its pages first, in one go: dropping cached pages does not touch the disk.
        drop_cached(&self.file, 0, 0);
        let mut len = self.file.metadata()?.len();
        while len > DELETE_STEP {
            len -= DELETE_STEP;
            self.file.set_len(len)?;
            std::thread::sleep(DELETE_PAUSE);
        }
        Ok(())
    }

    /// Makes `[0, len)` readable; called by the I/O thread once the write completed.
    pub(crate) fn publish(&self, len: u64) {
        self.published_len.fetch_max(len, Ordering::AcqRel);
    }

    /// With the page-cache window on, asks the kernel to drop this file's cached pages more
    /// than `window` bytes behind `end` (the end of what was just synced), in steps of at
    /// least `CACHE_DROP_STEP`. Only synced pages are asked for: the kernel skips dirty pages
    /// and pages under writeback, and they would stay cached for good. It also skips pages a
    /// reader has mapped. Nothing is lost and no reader is disturbed: a later read of a dropped
    /// page comes from the disk.
    pub(crate) fn drop_cached_behind(&self, end: u64, window: u64) {
        let from = self.cache_dropped_to.load(Ordering::Relaxed);
        if end < from.saturating_add(window).saturating_add(CACHE_DROP_STEP) {
            return;
        }
        let to = (end - window) & !(CACHE_DROP_STEP - 1);
        if to <= from {
            return;
        }
        // Advice that fails (it cannot, on an open regular file) only leaves pages cached.
        if drop_cached(&self.file, from, to - from) {
            self.cache_dropped_to.store(to, Ordering::Relaxed);
        }
    }

    /// Cuts the file back to `len` after a failed write. Maps cover at most the published
    /// length, which is never more than `len`, so no reader can touch the cut part.
    pub(crate) fn truncate_after_failure(&self, len: u64) -> io::Result<()> {
        debug_assert!(len >= self.published_len());
        self.file.set_len(len)
    }

    /// Cuts what a direct write left after the log's end (zeros to the block boundary) and
    /// syncs the cut, once every write of this segment is done. A no-op for other segments.
    pub(crate) fn trim_padding(&self) -> io::Result<()> {
        let len = self.published_len();
        if self.file.metadata()?.len() > len {
            self.file.set_len(len)?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// At a roll: lets go of this segment's direct tail (reads go through the file from now
    /// on), its memory going to `next`'s tail for reuse ([`Tail::adopt`]).
    pub(crate) fn hand_tail_to(&self, next: &Segment) {
        let Some(tail) = self.state().tail.take() else { return };
        if let Some(to) = next.state().tail.as_mut() {
            to.adopt(tail);
        }
    }

    /// Lists this segment's direct tail, if it has one, with its directory's budget, so that
    /// other tails over the budget can make it let go ([`Segment::shed_tail`]).
    fn register_tail(self: &Arc<Self>) {
        let st = self.state();
        if let Some((budget, tick)) = st.tail.as_ref().map(Tail::registration) {
            budget.register(Arc::downgrade(self), tick);
        }
    }

    /// Makes the direct tail let go of its spares and, with `data`, of what is written
    /// ([`Tail::shed`]; the buffers go to `freed`), unless the segment's state is locked (being
    /// appended to or read): the caller may hold another segment's lock, so this never waits.
    pub(crate) fn shed_tail(&self, data: bool, freed: &mut Vec<Arc<direct::ChunkBuf>>) {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let published = self.published_len();
        if let Some(tail) = st.tail.as_mut() {
            tail.shed(published, data, freed);
        }
    }

    /// At a roll: hands the direct tail's spare chunks to `next`'s tail, which takes the
    /// chunks it needs next from this one's ([`Segment::yield_chunk`]).
    pub(crate) fn pass_spares(self: &Arc<Self>, next: &Segment) {
        let mut from = self.state();
        let mut to = next.state();
        if let (Some(from), Some(to)) = (from.tail.as_mut(), to.tail.as_mut()) {
            from.pass_spares(to);
            to.follows(Arc::downgrade(self));
        }
    }

    /// The oldest chunk of the direct tail, for the next segment's tail ([`Tail::yield_oldest`]),
    /// unless the segment's state is locked: the caller holds the next segment's lock, so this
    /// never waits.
    pub(crate) fn yield_chunk(&self, cap: u64) -> Option<Arc<direct::ChunkBuf>> {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let published = self.published_len();
        st.tail.as_mut()?.yield_oldest(published, cap)
    }

    /// A `Bytes` over at least the first `upto` published bytes, sharing the file's map.
    fn view(&self, upto: u64) -> Result<Bytes> {
        {
            let v = self.view.read().unwrap_or_else(|e| e.into_inner());
            if v.len() as u64 >= upto {
                return Ok(v.clone());
            }
        }
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        if v.len() as u64 >= upto {
            return Ok(v.clone());
        }
        let len = self.published_len();
        debug_assert!(upto <= len);
        let map = map_file(&self.file, len).map_err(|e| StorageError::io(&self.log_path, e))?;
        *v = match map {
            Some(map) => Bytes::from_owner(MappedFile { map, _file: self.file.clone() }),
            None => Bytes::new(),
        };
        Ok(v.clone())
    }

    /// Exactly the published bytes, sharing the file's map; `None` for an empty segment.
    fn published_view(&self) -> Result<Option<Bytes>> {
        let len = self.published_len();
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(self.view(len)?.slice(..len as usize)))
    }

    /// The offset index's entry at or before `offset`: `(relative offset, position)`.
    fn index_hint(st: &SegmentState, base_offset: i64, offset: i64) -> Option<(u32, u32)> {
        let rel = u32::try_from((offset - base_offset).max(0)).unwrap_or(u32::MAX);
        st.offset_index.lookup(rel)
    }

    /// Whether `at` (the bytes at an index entry's position) starts the batch the entry names.
    fn hint_matches(&self, relative_offset: u32, at: Option<&[u8]>) -> bool {
        at.and_then(BatchHeader::parse)
            .is_some_and(|h| h.base_offset == self.base_offset + i64::from(relative_offset))
    }

    /// Position of the batch holding `offset` (or the first after it), scanning forward from
    /// the index's `hint` (see [`Segment::index_hint`]). An index entry that does not point at
    /// the batch it names (a corrupt index) is ignored and the scan starts at the segment's
    /// beginning.
    fn position_of(
        &self,
        data: &[u8],
        offset: i64,
        hint: Option<(u32, u32)>,
    ) -> Option<(usize, BatchHeader, usize)> {
        let mut start = 0usize;
        if let Some((r, p)) = hint {
            if self.hint_matches(r, data.get(p as usize..)) {
                start = p as usize;
            } else {
                tracing::warn!(segment = %self.log_path.display(), entry_offset = r, entry_position = p,
                    "offset index entry does not match the log; scanning from the segment start")
            }
        }
        Batches { data, pos: start }.find(|(_, h, _)| h.last_offset() >= offset)
    }

    /// [`Segment::position_of`] with the index looked up here.
    fn position_of_offset(&self, data: &[u8], offset: i64) -> Option<(usize, BatchHeader, usize)> {
        let hint = Self::index_hint(&self.state(), self.base_offset, offset);
        self.position_of(data, offset, hint)
    }

    /// Whole batches starting with the one that holds `offset` (or the first after it), below
    /// `end_offset`, up to `max_bytes` (at least one batch when `min_one`), with their file
    /// position when they were read through the file (`None` when they come from a direct
    /// tail's memory). `None` when this segment has no batch at or after `offset` below
    /// `end_offset` (the caller moves on to the next segment); an empty `Bytes` when the first
    /// batch does not fit the budget.
    pub(crate) fn read(
        &self,
        offset: i64,
        end_offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        // Recent data of a direct-written segment is in memory (and not in the page cache); older
        // data is read from the file only up to the first cached batch.
        // One look at the segment's state: the index hint, and the tail's part.
        let (hit, hint, cached_from) = {
            let st = self.state();
            let hint = Self::index_hint(&st, self.base_offset, offset);
            match st.tail.as_ref() {
                Some(tail) => (tail.find(offset, self.published_len()), hint, tail.cached_from()),
                None => (None, hint, None),
            }
        };
        let Some(hit) = hit else {
            return self.read_file(offset, end_offset, max_bytes, min_one, hint, cached_from);
        };
        // Start at the index's hint when it points into the chunk at the batch it names.
        let mut start = hit.first_pos;
        if let Some((r, p)) = hint {
            let p = u64::from(p);
            if p > start && p < hit.limit && self.hint_matches(r, Some(hit.data(p))) {
                start = p;
            }
        }
        let data = hit.data(start);
        let found = Batches { data, pos: 0 }.find(|(_, h, _)| h.last_offset() >= offset);
        let Some((at, h, n)) = found else { return Ok(None) };
        match take_batches(data, at, h, n, end_offset, max_bytes, min_one) {
            None => Ok(None),
            Some((a, b)) => Ok(Some((hit.bytes(start + a as u64, start + b as u64), None))),
        }
    }

    /// [`Segment::read`] through the file's map, not past file position `upto`.
    fn read_file(
        &self,
        offset: i64,
        end_offset: i64,
        max_bytes: usize,
        min_one: bool,
        hint: Option<(u32, u32)>,
        upto: Option<u64>,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        let Some(view) = self.published_view()? else { return Ok(None) };
        let data = match upto {
            Some(u) => &view[..(u as usize).min(view.len())],
            None => &view[..],
        };
        let Some((start, h, n)) = self.position_of(data, offset, hint) else {
            return Ok(None);
        };
        match take_batches(data, start, h, n, end_offset, max_bytes, min_one) {
            None => Ok(None),
            Some((a, b)) => Ok(Some((view.slice(a..b), Some(a as u64)))),
        }
    }

    /// The first record below `end_offset` and at or after `min_offset` whose timestamp is
    /// `>= timestamp`: its batch, and `(offset, timestamp)` unless the batch is compressed (then
    /// the caller decompresses it to pick the record).
    pub(crate) fn find_by_timestamp(
        &self,
        timestamp: i64,
        min_offset: i64,
        end_offset: i64,
    ) -> Result<Option<TimestampLookup>> {
        if self.published_len() == 0 {
            return Ok(None);
        }
        let start_offset = match self.state().time_index.lookup(timestamp) {
            Some((_, rel)) => self.base_offset + i64::from(rel),
            None => self.base_offset,
        }
        .max(min_offset);
        if start_offset >= end_offset {
            return Ok(None);
        }
        let Some(view) = self.published_view()? else { return Ok(None) };
        let data = &view[..];
        let Some((start, _, _)) = self.position_of_offset(data, start_offset) else {
            return Ok(None);
        };
        for (pos, h, n) in (Batches { data, pos: start }) {
            if h.base_offset >= end_offset {
                break;
            }
            if h.max_timestamp < timestamp {
                continue;
            }
            let batch = view.slice(pos..pos + n);
            match batch::first_record_at_or_after(&batch, timestamp, min_offset) {
                Some(Some(record)) => {
                    return Ok(Some(TimestampLookup { batch, record: Some(record) }))
                }
                Some(None) => continue,
                None => return Ok(Some(TimestampLookup { batch, record: None })),
            }
        }
        Ok(None)
    }

    /// The batch (below `end_offset`) holding the largest timestamp among records at or after
    /// `min_offset`, with that timestamp; the first such batch on ties. Scans batch headers, and
    /// the records of an uncompressed batch that straddles `min_offset`.
    pub(crate) fn max_timestamp_from(
        &self,
        min_offset: i64,
        end_offset: i64,
    ) -> Result<Option<(i64, Bytes)>> {
        let Some(view) = self.published_view()? else { return Ok(None) };
        let data = &view[..];
        let Some((start, _, _)) = self.position_of_offset(data, min_offset) else {
            return Ok(None);
        };
        let mut best: Option<(i64, usize, usize)> = None;
        for (pos, h, n) in (Batches { data, pos: start }) {
            if h.base_offset >= end_offset {
                break;
            }
            let ts = if h.base_offset < min_offset && !h.is_log_append_time() {
                match batch::records(&data[pos..pos + n]) {
                    Some(rs) => match rs
                        .iter()
                        .filter(|r| r.offset >= min_offset)
                        .map(|r| r.timestamp)
                        .max()
                    {
                        Some(t) => t,
                        None => continue,
                    },
                    None => h.max_timestamp, // compressed: the header's bound
                }
            } else {
                h.max_timestamp
            };
            if best.is_none_or(|(t, _, _)| ts > t) {
                best = Some((ts, pos, n));
            }
        }
        Ok(best.map(|(t, pos, n)| (t, view.slice(pos..pos + n))))
    }

    /// Reserves file space for one batch and indexes it; the caller writes the bytes.
    pub(crate) fn reserve(
        st: &mut SegmentState,
        base_offset: i64,
        batch_base: i64,
        batch_last: i64,
        len: u64,
        max_timestamp: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> u64 {
        let pos = st.reserved_len;
        let rel = (batch_base - base_offset) as u32;
        st.index_batch(rel, pos, len, max_timestamp, batch_base, config);
        st.reserved_len += len;
        st.next_offset = batch_last + 1;
        st.first_append_ms.get_or_insert(now_ms);
        pos
    }

    /// Writes the final time index entry and trims both indexes to their entries, synced: the
    /// segment takes no more appends. The segment's lock is held only to add that entry and to
    /// swap the index maps for maps of their entries; cutting the preallocated files and
    /// syncing them (several milliseconds: a cut frees blocks, which the file system may
    /// discard) happen without it, so that readers just behind a roll
    /// (consumers at the log end) and the next segment's tail ([`Segment::yield_chunk`]) do
    /// not wait for the disk. Until the cut is synced the files are longer than their entries,
    /// as before a seal: recovery rebuilds such indexes, and the recovery point moves past the
    /// segment only once this has returned.
    pub(crate) fn seal(&self) -> io::Result<()> {
        let files = {
            let mut st = self.state();
            if st.sealed {
                return Ok(());
            }
            if st.reserved_len > 0 {
                let (t, o) =
                    (st.max_timestamp, (st.offset_of_max_timestamp - self.base_offset) as u32);
                st.time_index.maybe_push(t, o);
            }
            // Set before the work is done: a seal that fails fails the directory (the caller
            // sees to it), and nothing seals a segment twice.
            st.sealed = true;
            [st.offset_index.0.detach_trimmed()?, st.time_index.0.detach_trimmed()?]
        };
        for (f, len) in files.iter().flatten() {
            index::cut(f, *len)?;
        }
        Ok(())
    }

    /// Trims the indexes of the active segment at a clean close, keeping it appendable on the
    /// next open (indexes are preallocated again then).
    pub(crate) fn trim_indexes(&self) -> io::Result<()> {
        let mut st = self.state();
        st.offset_index.0.trim()?;
        st.time_index.0.trim()
    }

    /// Preallocates the (trimmed) indexes again so the active segment can take appends, and
    /// with `direct` gives it a tail seeded with the file's last partial block.
    pub(crate) fn reopen_for_append(
        self: &Arc<Self>,
        config: &LogConfig,
        direct: Option<&Arc<TailBudget>>,
    ) -> Result<()> {
        let mut st = self.state();
        if let Some(budget) = direct {
            if let Some(f) = open_direct(&self.log_path)? {
                let end = self.published_len();
                let mut seed = vec![0u8; (end - direct::align_down(end)) as usize];
                std::os::unix::fs::FileExt::read_exact_at(
                    &*self.file,
                    &mut seed,
                    direct::align_down(end),
                )
                .map_err(|e| StorageError::io(&self.log_path, e))?;
                st.tail = Some(Tail::new(f, end, seed, budget.clone()));
            }
        }
        st.offset_index
            .0
            .grow(config.segment_index_bytes)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        st.time_index
            .0
            .grow(config.segment_index_bytes)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        st.sealed = false;
        drop(st);
        self.register_tail();
        Ok(())
    }

    /// Takes the segment's files out of the log directory: the index files are removed and the
    /// log file is renamed to `<name>.log.deleted`, durably, so that no later step can leave a
    /// shortened segment under its own name (a crash during the cut below would otherwise look
    /// like a torn segment to the next open, which would cut the log there). The open removes
    /// `.deleted` files. Readers keep their bytes. Returns the `.deleted` path for
    /// [`Segment::finish_delete`].
    pub(crate) fn delete_files(&self, dir: &Path) -> io::Result<PathBuf> {
        let (log, index, time) = paths(dir, self.base_offset);
        let mut doomed = log.clone().into_os_string();
        doomed.push(DELETED_SUFFIX);
        let doomed = PathBuf::from(doomed);
        unless_gone(std::fs::rename(&log, &doomed))?;
        unless_gone(std::fs::remove_file(index))?;
        unless_gone(std::fs::remove_file(time))?;
        crate::checkpoint::sync_dir(dir)?;
        Ok(doomed)
    }

    /// Once nothing but the caller refers to the segment or its file (no reader has it, and no
    /// read result, mapped view or file slice is alive: each holds the file), cuts the file
    /// down in steps with pauses between them and removes it; `Ok(false)` while something
    /// still does (try again later). Freeing a large file's blocks at once holds up every
    /// other write to the disk (with online discard, as on these machines: fdatasyncs of
    /// 256 KiB took up to 27 ms during the unlink of a 256 MiB file, against 0.8 ms before;
    /// 1.9 ms when it was cut 8 MiB at a time with 2 ms pauses), and would happen on whichever
    /// thread let go of the file last.
    pub(crate) fn finish_delete(self: &Arc<Self>, doomed: &Path) -> io::Result<bool> {
        if Arc::strong_count(self) > 1 {
            return Ok(false);
        }
        // No reader can get the segment any more (the direct-I/O budget may still reach it for
        // a moment, to let go of a tail's memory: it touches nothing else); drop our own view.
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Bytes::new();
        if Arc::strong_count(&self.file) > 1 {
            return Ok(false);
        }
        self.cut_gradually()?;
        unless_gone(std::fs::remove_file(doomed))?;
        Ok(true)
    }
}

impl SegmentState {
    /// Adds index entries for a batch at `pos` when `index.interval.bytes` have passed, and
    /// tracks the max timestamp.
    fn index_batch(
        &mut self,
        rel: u32,
        pos: u64,
        len: u64,
        max_timestamp: i64,
        batch_base: i64,
        config: &LogConfig,
    ) {
        if self.bytes_since_index >= config.index_interval_bytes && pos > 0 {
            // A full index makes the log roll before the next append (see `Log::needs_roll`).
            self.offset_index.push(rel, pos as u32);
            let segment_base = batch_base - i64::from(rel);
            let max_rel = (self.offset_of_max_timestamp - segment_base) as u32;
            self.time_index.maybe_push(self.max_timestamp, max_rel);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.offset_of_max_timestamp = batch_base;
        }
    }

    pub(crate) fn indexes_full(&self) -> bool {
        self.offset_index.0.is_full() || self.time_index.0.is_full()
    }
}

/// The range of `data` a read returns: the batch `h` (`n` bytes at `start`) and the whole
/// batches after it below `end_offset` within `max_bytes`; `None` when `h` is at or past
/// `end_offset`, an empty range when it does not fit and `min_one` is off.
fn take_batches(
    data: &[u8],
    start: usize,
    h: BatchHeader,
    n: usize,
    end_offset: i64,
    max_bytes: usize,
    min_one: bool,
) -> Option<(usize, usize)> {
    if h.base_offset >= end_offset {
        return None;
    }
    if n > max_bytes && !min_one {
        return Some((start, start));
    }
    let mut end = start + n;
    for (pos, h, n) in (Batches { data, pos: end }) {
        if h.base_offset >= end_offset || pos + n - start > max_bytes {
            break;
        }
        end = pos + n;
    }
    Some((start, end))
}

/// [`direct::open`], as a storage error.
fn open_direct(path: &Path) -> Result<Option<File>> {
    let f = direct::open(path).map_err(|e| StorageError::io(path, e))?;
    if f.is_none() {
        tracing::warn!(segment = %path.display(), "the file system does not take O_DIRECT with 4 KiB alignment; writing this segment through the page cache");
    }
    Ok(f)
}

/// `r`, with "not found" counted as success: for removing files that may already be gone.
fn unless_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Removes whichever of the segment at `base`'s three files exist (trying all three); the
/// first error, if any.
pub(crate) fn remove_files(dir: &Path, base: i64) -> io::Result<()> {
    let (log, index, time) = paths(dir, base);
    [log, index, time]
        .into_iter()
        .map(|p| unless_gone(std::fs::remove_file(p)))
        .fold(Ok(()), Result::and)
}

/// Appended to a segment file's name before it is cut down and removed (see
/// `Segment::delete_files`); such files are removed when the log opens.
pub(crate) const DELETED_SUFFIX: &str = ".deleted";

/// The page-cache window drops pages in steps of at least this many bytes (a power of two).
const CACHE_DROP_STEP: u64 = 4 << 20;

/// Bytes a deleted segment's file is cut by at a time, and the pause after each cut.
#[cfg(not(test))]
const DELETE_STEP: u64 = 8 << 20;
/// Small enough for the unit tests' small segments to be cut in steps.
#[cfg(test)]
const DELETE_STEP: u64 = 512;
const DELETE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// A map of a segment file and the file itself: while any view of the map is alive, the file's
/// reference count says so (see `Segment::finish_delete`).
struct MappedFile {
    map: Mmap,
    _file: Arc<File>,
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// A read-only map of the first `len` bytes of `file`, `None` for an empty file.
fn map_file(file: &File, len: u64) -> io::Result<Option<Mmap>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: `len` never exceeds the file's size: it is the published length or the size just
    // read at open, and a log file is only truncated at open (before any map exists), after a
    // failed write down to a length no map extends past, when its deleted segment is cut
    // down, which `finish_delete` does only once no map of it is alive (every map's `Bytes`
    // holds the file, and it checks the count), or down to its published length (direct-write
    // padding). Nothing else writes inside the published range (a direct write rewrites the
    // block holding the published end with the same bytes below it), so the mapped bytes do
    // not change under readers.
    let map = unsafe { MmapOptions::new().len(len as usize).map(file)? };
    Ok(Some(map))
}
