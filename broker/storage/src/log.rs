//! One partition's log: an ordered set of segments in `<log-dir>/<topic>-<partition>/`, the
//! offsets that describe it, and the operations the broker and processors use (append, read,
//! lookups by timestamp, roll, retention, delete_records, flush, close).
//!
//! Offsets: `log_start_offset <= high_watermark <= log_end_offset`, and the recovery point is
//! `<= log_end_offset`. The log end is the next offset to assign; the high watermark is what
//! readers may see: the durable end under the default `flush.messages=1`, the written end under a
//! relaxed flush policy. Appends are ordered under the log's lock and written by the directory's
//! I/O thread ([`crate::io`]); their [`Durable`] future resolves after the group commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::batch;
use crate::checkpoint::{self, PartitionState};
use crate::config::{LogConfig, TimestampType};
use crate::error::{Result, StorageError};
use crate::io::{self, Appended, Durable, IoThread, LogProgress, Op};
use crate::lock;
use crate::segment::{self, Segment, Truncation};

/// What an append was given.
#[derive(Debug)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub record_count: i64,
    /// The broker's timestamp when the topic uses LogAppendTime, else -1 (as in ProduceResponse).
    pub log_append_time_ms: i64,
    /// Resolves when the records are written to the segment file (in the page cache: they
    /// survive a crash of the process, not of the machine). What acks=1 waits for.
    pub written: Durable,
    /// Resolves when the records are on disk: at the log's next group commit after
    /// [`Flush::Now`], when the flush policy says after [`Flush::Policy`]. What acks=all waits
    /// for.
    pub durable: Durable,
}

/// When an append is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// When the log's flush policy says: at the next group commit under the default
    /// `flush.messages=1`, after `flush.messages` records or `flush.ms` under a relaxed one.
    Policy,
    /// At the log's next group commit whatever the policy, as an explicit [`Log::flush`]: the
    /// caller waits for `durable` (an acks=all producer, which is answered only once its
    /// records are fsynced, also where the topic relaxes `flush.messages` / `flush.ms` for the
    /// others).
    Now,
}

/// What a read returns: whole batches sharing the segment's memory, and the log's offsets at the
/// time of the read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Zero or more whole v2 batches; the first holds the requested offset (or is the first
    /// after it). Empty when nothing is readable at that offset yet.
    pub records: Bytes,
    /// Where `records` lie in their segment file, for senders that can splice from a file
    /// (`sendfile`) instead of copying from memory.
    pub file_slice: Option<FileSlice>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// A byte range of a segment file: `records.len()` bytes at `position`. The file stays open
/// (and its bytes there unchanged) while this is held, even if the segment is deleted.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub file: Arc<std::fs::File>,
    pub position: u64,
}

/// A ListOffsets answer by timestamp.
#[derive(Debug, Clone)]
pub struct TimestampLookup {
    /// The batch holding the record.
    pub batch: Bytes,
    /// `(offset, timestamp)` of the first record at or after the target, when the batch is
    /// uncompressed; `None` when the caller must decompress `batch` to pick the record.
    pub record: Option<(i64, i64)>,
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionResult {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

/// What opening a log found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// The previous shutdown wrote the clean marker, so nothing was scanned.
    pub clean: bool,
    /// Segments scanned with full CRC checks.
    pub segments_recovered: usize,
    pub truncations: Vec<Truncation>,
    /// Segments deleted because an earlier one was cut.
    pub segments_dropped: usize,
}

#[derive(Debug)]
struct Inner {
    config: LogConfig,
    segments: BTreeMap<i64, Arc<Segment>>,
    log_end_offset: i64,
    log_start_offset: i64,
    closed: bool,
}

/// See the module comment.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    io: Arc<IoThread>,
    progress: Arc<LogProgress>,
    inner: Mutex<Inner>,
    state: Arc<Mutex<PartitionState>>,
    report: OpenReport,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Bytes at the start of a batch that the log rewrites (baseOffset, batchLength,
/// partitionLeaderEpoch); none of them is covered by the CRC.
pub(crate) const BATCH_PATCH_LEN: usize = 16;

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it if the last shutdown was not
    /// clean.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig, io: Arc<IoThread>) -> Result<Log> {
        config.validate()?;
        let dir = dir.into();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                checkpoint::sync_dir(parent).map_err(|e| StorageError::io(parent, e))?;
            }
        }
        let stored = PartitionState::read(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let clean = stored.is_some_and(|s| s.clean);
        let mut state = stored.unwrap_or_default();
        let mut bases = scan_dir(&dir)?;
        // Segments wholly below the saved log start were being deleted when the process
        // stopped (or their deletion did not reach the disk): remove them now. Left in place,
        // a later segment whose deletion did reach the disk would look like a gap in the log
        // below, and everything after it would be dropped.
        let below = bases.windows(2).take_while(|w| w[1] <= state.log_start_offset).count();
        for base in bases.drain(..below) {
            tracing::info!(log = %dir.display(), segment = base,
                "removing a segment below the log start left by an unfinished deletion");
            segment::remove_files(&dir, base).map_err(|e| StorageError::io(&dir, e))?;
        }

        let mut report = OpenReport { clean, ..OpenReport::default() };
        let mut segments = BTreeMap::new();
        let mut recovered_any = false;
        let mut first_recovered = usize::MAX;
        let mut prev_next: Option<i64> = None;
        for (i, &base) in bases.iter().enumerate() {
            // Offsets are contiguous across segments. A gap means the write of the last batches
            // before a roll never reached the disk while the next segment exists: the log ends
            // at the gap.
            if let Some(expected) = prev_next.filter(|&p| p != base) {
                let t = Truncation {
                    segment_base_offset: base,
                    position: 0,
                    bytes: 0,
                    first_offset_cut: Some(expected),
                    reason: format!("offsets {expected}..{base} are missing before segment {base}"),
                };
                drop_from(&dir, &bases[i..], t, &mut report);
                break;
            }
            let next_base = bases.get(i + 1).copied();
            let recover = !clean && next_base.is_none_or(|n| n > state.recovery_point);
            let (seg, truncation) =
                Segment::open(&dir, base, &config, recover, next_base.is_some())?;
            if recover {
                report.segments_recovered += 1;
                recovered_any = true;
                first_recovered = first_recovered.min(i);
            }
            prev_next = Some(seg.state().next_offset);
            segments.insert(base, Arc::new(seg));
            if let Some(t) = truncation {
                // Everything after a cut is unreachable: drop later segments.
                drop_from(&dir, &bases[i + 1..], t, &mut report);
                break;
            }
        }
        if segments.is_empty() {
            let base = state.log_start_offset.max(0);
            segments.insert(base, Segment::create(&dir, base, &config, io.direct_io().as_ref())?);
            checkpoint::sync_dir(&dir).map_err(|e| StorageError::io(&dir, e))?;
        } else if let Some(active) = segments.values().next_back() {
            // Indexes loaded trimmed get their preallocation back; rebuilt ones have it.
            active.reopen_for_append(&config, io.direct_io().as_ref())?;
        }
        let (first_base, active) = match (segments.keys().next(), segments.values().next_back()) {
            (Some(&b), Some(a)) => (b, a.clone()),
            _ => unreachable!("a log always has an active segment"),
        };
        let log_end_offset = active.state().next_offset;
        if recovered_any {
            // What the scan kept may only be in the page cache (the process, not the machine,
            // crashed): make it durable before calling it durable.
            for seg in segments.values().skip(first_recovered) {
                seg.file.sync_data().map_err(|e| StorageError::io(&seg.log_path, e))?;
            }
            checkpoint::sync_dir(&dir).map_err(|e| StorageError::io(&dir, e))?;
        }
        state.log_start_offset = state.log_start_offset.max(first_base).min(log_end_offset);
        state.recovery_point = active.base_offset;
        state.clean = false;
        state.write(&dir).map_err(|e| StorageError::io(&dir, e))?;

        let progress = Arc::new(LogProgress::new(
            io.new_log_id(),
            log_end_offset,
            config.flush_messages,
            config.flush_ms,
        ));
        let log_start_offset = state.log_start_offset;
        Ok(Log {
            dir,
            io,
            progress,
            inner: Mutex::new(Inner {
                config,
                segments,
                log_end_offset,
                log_start_offset,
                closed: false,
            }),
            state: Arc::new(Mutex::new(state)),
            report,
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the log found (clean start, segments scanned, truncations).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    pub fn config(&self) -> LogConfig {
        lock(&self.inner).config.clone()
    }

    /// Changes the topic config; new segment sizes and flush policy apply from the next append.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let mut inner = lock(&self.inner);
        self.progress.flush_messages.store(config.flush_messages, Ordering::Relaxed);
        self.progress.flush_ms.store(config.flush_ms, Ordering::Relaxed);
        inner.config = config;
        Ok(())
    }

    fn check_writable(&self, inner: &Inner) -> Result<()> {
        if inner.closed {
            return Err(StorageError::Closed);
        }
        self.io.health().check()?;
        if self.progress.write_failed.load(Ordering::Acquire) {
            return Err(self.io.health().error());
        }
        Ok(())
    }

    /// Appends the v2 batches in `records` (one produce partition's record set) with the
    /// current time and leader epoch 0.
    pub fn append(&self, records: &[u8]) -> Result<AppendInfo> {
        self.append_at(records, now_ms(), 0)
    }

    /// [`Log::append_bytes`] for a borrowed record set (copied once), fsynced as the flush
    /// policy says.
    pub fn append_at(&self, records: &[u8], now_ms: i64, leader_epoch: i32) -> Result<AppendInfo> {
        self.append_bytes(Bytes::copy_from_slice(records), now_ms, leader_epoch, Flush::Policy)
    }

    /// Validates, assigns offsets and queues the write. Returns at once; `durable` resolves
    /// when the records are on disk, which `flush` makes the next group commit or leaves to
    /// the flush policy. On any error the log is unchanged.
    ///
    /// Through the page cache the record bytes are not copied: each batch is written as its
    /// first 16 bytes with the broker's base offset and leader epoch (a small new buffer)
    /// followed by the rest of the caller's `Bytes`, in one vectored write. Only LogAppendTime,
    /// which rewrites fields under the CRC, copies the batches. With direct I/O each batch is
    /// copied once, into the segment's tail (see `direct`).
    pub fn append_bytes(
        &self,
        records: Bytes,
        now_ms: i64,
        leader_epoch: i32,
        flush: Flush,
    ) -> Result<AppendInfo> {
        let max_message_bytes = lock(&self.inner).config.max_message_bytes;
        let batches = batch::validate(&records, max_message_bytes)?;

        // Buffers the direct tail let go of: dropped after the locks below (declared first).
        let mut freed = Vec::new();
        let mut inner = lock(&self.inner);
        self.check_writable(&inner)?;
        let config = inner.config.clone();
        // `validate` used the config read before the lock; a concurrent set_config may have
        // lowered the limit since.
        if let Some(b) = batches.iter().find(|b| b.len > config.max_message_bytes) {
            return Err(StorageError::MessageTooLarge {
                size: b.len,
                max: config.max_message_bytes,
            });
        }
        let log_append_time = config.message_timestamp_type == TimestampType::LogAppendTime;
        let base_offset = inner.log_end_offset;
        let record_count: i64 = batches.iter().map(|b| i64::from(b.record_count)).sum();
        let last_offset = base_offset + record_count - 1;

        let mut active = self.active(&inner);
        if self.needs_roll(&active, &config, records.len() as u64, last_offset, now_ms) {
            active = self.roll_locked(&mut inner)?;
        }
        let mut next = base_offset;
        let mut st = active.state();
        let published = active.published_len();
        let mut position = None;
        // LogAppendTime rewrites fields under the CRC: copy and patch the whole record set.
        let mut copy = log_append_time.then(|| BytesMut::from(&records[..]));
        let mut chunks = io::Pieces::new();
        for b in &batches {
            let mut head = [0u8; BATCH_PATCH_LEN];
            let max_ts = if let Some(data) = copy.as_mut() {
                let bytes = &mut data[b.position..b.position + b.len];
                batch::assign(bytes, next, leader_epoch);
                batch::set_log_append_time(bytes, now_ms);
                now_ms
            } else {
                head.copy_from_slice(&records[b.position..b.position + BATCH_PATCH_LEN]);
                batch::assign(&mut head, next, leader_epoch);
                b.max_timestamp
            };
            let body = &records[b.position + BATCH_PATCH_LEN..b.position + b.len];
            match (st.tail.as_mut(), copy.as_ref()) {
                // Direct I/O: the batch is copied into the segment's tail, written from there.
                (Some(tail), Some(data)) => {
                    tail.append(&[&data[b.position..b.position + b.len]], next, published);
                }
                (Some(tail), None) => tail.append(&[&head, body], next, published),
                (None, Some(_)) => {} // written whole below
                (None, None) => {
                    chunks.push(io::Piece::Head(head));
                    chunks.push(io::Piece::Bytes(records.slice_ref(body)));
                }
            }
            let last = next + i64::from(b.record_count) - 1;
            let pos = Segment::reserve(
                &mut st,
                active.base_offset,
                next,
                last,
                b.len as u64,
                max_ts,
                &config,
                now_ms,
            );
            position.get_or_insert(pos);
            next = last + 1;
        }
        let position = position.unwrap_or(st.reserved_len);
        let end = st.reserved_len;
        let data = match st.tail.as_mut() {
            Some(tail) => {
                tail.take_freed(&mut freed);
                io::AppendData::Direct(tail.write_for(position, end))
            }
            None => {
                if let Some(data) = copy {
                    chunks.push(io::Piece::Bytes(data.freeze()));
                }
                io::AppendData::Buffered(chunks)
            }
        };
        drop(st);
        let ((durable, done), (written, written_done)) = io::durable_pairs();
        self.io.submit(Op::Append {
            append: Appended {
                log: self.progress.clone(),
                segment: active,
                end_offset: next,
                records: record_count,
                sync_now: flush == Flush::Now,
                written: written_done,
                done,
            },
            position,
            data,
        })?;
        inner.log_end_offset = next;
        Ok(AppendInfo {
            base_offset,
            last_offset,
            record_count,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            written,
            durable,
        })
    }

    fn active(&self, inner: &Inner) -> Arc<Segment> {
        match inner.segments.values().next_back() {
            Some(s) => s.clone(),
            None => unreachable!("a log always has an active segment"),
        }
    }

    fn needs_roll(
        &self,
        active: &Segment,
        config: &LogConfig,
        size: u64,
        last_offset: i64,
        now_ms: i64,
    ) -> bool {
        let st = active.state();
        if st.reserved_len == 0 {
            return false;
        }
        st.reserved_len + size > config.segment_bytes
            || st.first_append_ms.is_some_and(|t| now_ms.saturating_sub(t) >= config.segment_ms)
            || st.indexes_full()
            || last_offset - active.base_offset > i64::from(i32::MAX)
    }

    /// Starts a new segment at the log end (no-op when the active segment is empty).
    pub fn roll(&self) -> Result<()> {
        let mut inner = lock(&self.inner);
        self.check_writable(&inner)?;
        if self.active(&inner).state().reserved_len > 0 {
            self.roll_locked(&mut inner)?;
        }
        Ok(())
    }

    fn roll_locked(&self, inner: &mut Inner) -> Result<Arc<Segment>> {
        let old = self.active(inner);
        let base = inner.log_end_offset;
        // A failure here is an I/O failure of the directory, as a failed write is.
        let fail = |e: StorageError| {
            self.io.health().fail(format!("rolling to segment {base} failed: {e}"));
            e
        };
        let direct = self.io.direct_io();
        let new = Segment::create(&self.dir, base, &inner.config, direct.as_ref()).map_err(fail)?;
        old.pass_spares(&new);
        checkpoint::sync_dir(&self.dir).map_err(|e| fail(StorageError::io(&self.dir, e)))?;
        // A direct tail is kept for one roll, for readers just behind; the one before goes,
        // its memory to the new segment's tail.
        if let Some((_, prev)) = inner.segments.range(..old.base_offset).next_back() {
            prev.hand_tail_to(&new);
        }
        inner.segments.insert(base, new.clone());
        // The old segment is sealed (its indexes trimmed and synced: a few milliseconds of
        // file operations) on the directory's background thread, so that appends to the new
        // segment do not wait for it, as Kafka flushes a rolled segment asynchronously. Only
        // then, and once everything before `base` is synced, does the recovery point move past
        // it: until it has, recovery rebuilds the old segment's indexes instead of trusting
        // them. Jobs run in order, so recovery points are written in order too.
        let (state, dir, log) = (self.state.clone(), self.dir.clone(), self.progress.clone());
        let (io, health) = (self.io.submitter(), self.io.health().clone());
        self.io
            .background(Box::new(move || {
                if let Err(e) = old.seal() {
                    health.fail(format!("sealing {} failed: {e}", old.log_path.display()));
                    return;
                }
                if io.sync_and_wait(&log).is_err() {
                    return; // the directory failed; the recovery point stays
                }
                // Its writes are all done: the zeros after a direct write's end can go.
                if let Err(e) = old.trim_padding() {
                    health.fail(format!("trimming {} failed: {e}", old.log_path.display()));
                    return;
                }
                drop(old);
                let mut s = lock(&state);
                if base > s.recovery_point {
                    s.recovery_point = base;
                    if let Err(e) = s.write(&dir) {
                        health.fail(format!("checkpoint write failed: {e}"));
                    }
                }
            }))
            .map_err(fail)?;
        Ok(new)
    }

    /// Offsets `(log_start_offset, high_watermark, log_end_offset)`.
    pub fn offsets(&self) -> (i64, i64, i64) {
        let inner = lock(&self.inner);
        (inner.log_start_offset, self.high_watermark_locked(&inner), self.log_end_locked(&inner))
    }

    fn log_end_locked(&self, inner: &Inner) -> i64 {
        if self.progress.write_failed.load(Ordering::Acquire) {
            self.progress.written_end.load(Ordering::Acquire)
        } else {
            inner.log_end_offset
        }
    }

    fn high_watermark_locked(&self, inner: &Inner) -> i64 {
        let hw = if inner.config.sync_every_append() {
            self.progress.durable_end.load(Ordering::Acquire)
        } else {
            self.progress.written_end.load(Ordering::Acquire)
        };
        hw.max(inner.log_start_offset)
    }

    pub fn log_start_offset(&self) -> i64 {
        lock(&self.inner).log_start_offset
    }
    pub fn high_watermark(&self) -> i64 {
        let inner = lock(&self.inner);
        self.high_watermark_locked(&inner)
    }
    pub fn log_end_offset(&self) -> i64 {
        let inner = lock(&self.inner);
        self.log_end_locked(&inner)
    }
    /// Offsets before this are known to be on disk with their indexes; recovery scans from the
    /// segment holding it.
    pub fn recovery_point(&self) -> i64 {
        lock(&self.state).recovery_point
    }
    /// One past the last offset known to be fsynced.
    pub fn durable_end(&self) -> i64 {
        self.progress.durable_end.load(Ordering::Acquire)
    }

    /// Size of all segments in bytes.
    pub fn size_bytes(&self) -> u64 {
        lock(&self.inner).segments.values().map(|s| s.published_len()).sum()
    }
    pub fn segment_count(&self) -> usize {
        lock(&self.inner).segments.len()
    }
    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        lock(&self.inner).segments.keys().copied().collect()
    }

    /// A counter that changes whenever data becomes visible to readers (for long polls).
    pub fn data_version(&self) -> u64 {
        self.progress.version.load(Ordering::Acquire)
    }

    /// A future that resolves when `data_version()` differs from `seen` (for async long polls).
    pub fn data_changed(&self, seen: u64) -> io::DataChanged {
        io::DataChanged { progress: self.progress.clone(), seen }
    }

    /// Blocks until `data_version()` differs from `seen` or `timeout` passes.
    pub fn wait_for_data(&self, seen: u64, timeout: Duration) {
        let (m, cv) = &self.progress.changed;
        let g = lock(m);
        if self.data_version() != seen {
            return;
        }
        let _ = cv.wait_timeout_while(g, timeout, |_| self.data_version() == seen);
    }

    /// Reads whole batches from `offset`, at most `max_bytes` (but at least one whole batch when
    /// `min_one`, as Kafka does for the first partition of a fetch), never past the high
    /// watermark. A batch that holds `offset` is returned whole.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadResult> {
        let (segments, log_start_offset, high_watermark, log_end_offset) = {
            let inner = lock(&self.inner);
            let hw = self.high_watermark_locked(&inner);
            let leo = self.log_end_locked(&inner);
            if offset < inner.log_start_offset || offset > leo {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: inner.log_start_offset,
                    log_end_offset: leo,
                });
            }
            let from = inner.segments.range(..=offset).next_back().map_or(i64::MIN, |(b, _)| *b);
            let segs: Vec<Arc<Segment>> = if offset >= hw {
                Vec::new()
            } else {
                inner.segments.range(from..hw).map(|(_, s)| s.clone()).collect()
            };
            (segs, inner.log_start_offset, hw, leo)
        };
        let mut records = Bytes::new();
        let mut file_slice = None;
        for seg in segments {
            if let Some((r, position)) = seg.read(offset, high_watermark, max_bytes, min_one)? {
                records = r;
                file_slice =
                    position.map(|position| FileSlice { file: seg.file.clone(), position });
                break;
            }
        }
        Ok(ReadResult { records, file_slice, high_watermark, log_start_offset, log_end_offset })
    }

    fn visible_segments(&self) -> (Vec<Arc<Segment>>, i64, i64) {
        let inner = lock(&self.inner);
        let hw = self.high_watermark_locked(&inner);
        (inner.segments.values().cloned().collect(), inner.log_start_offset, hw)
    }

    /// The first record (below the high watermark, at or after the log start) whose timestamp
    /// is `>= timestamp`, for ListOffsets; `None` if there is none.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampLookup>> {
        let (segments, log_start, hw) = self.visible_segments();
        for seg in segments {
            let (next, max_ts) = {
                let st = seg.state();
                (st.next_offset, st.max_timestamp)
            };
            if next <= log_start || max_ts < timestamp {
                continue;
            }
            if let Some(found) = seg.find_by_timestamp(timestamp, log_start, hw)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (ListOffsets MAX_TIMESTAMP, -3); the first such
    /// record when several share it.
    pub fn max_timestamp(&self) -> Result<Option<TimestampLookup>> {
        let (segments, log_start, hw) = self.visible_segments();
        let mut best: Option<(i64, Arc<Segment>)> = None;
        for seg in segments.iter().cloned() {
            let (next, max_ts) = {
                let st = seg.state();
                (st.next_offset, st.max_timestamp)
            };
            if next <= log_start || seg.published_len() == 0 {
                continue;
            }
            if best.as_ref().is_none_or(|(t, _)| max_ts > *t) {
                best = Some((max_ts, seg));
            }
        }
        let Some((ts, seg)) = best else { return Ok(None) };
        if let Some(found) = seg.find_by_timestamp(ts, log_start, hw)? {
            return Ok(Some(found));
        }
        // The largest timestamp belongs to records below the log start (delete_records moved it
        // into that segment): find the largest among the records that remain.
        let mut best: Option<(i64, Bytes)> = None;
        for seg in segments.iter().filter(|s| s.state().next_offset > log_start) {
            if let Some((t, b)) = seg.max_timestamp_from(log_start, hw)? {
                if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                    best = Some((t, b));
                }
            }
        }
        Ok(best.map(|(t, batch)| {
            // `None` for a compressed batch: the caller decompresses it.
            let record = batch::first_record_at_or_after(&batch, t, log_start).flatten();
            TimestampLookup { batch, record }
        }))
    }

    /// Queues a sync of everything appended so far; the future resolves when it is on disk.
    pub fn flush(&self) -> Result<Durable> {
        let (durable, done) = io::durable_pair();
        self.io.submit(Op::Sync { log: self.progress.clone(), done: Some(done) })?;
        Ok(durable)
    }

    /// Advances the log start offset to `offset` (DeleteRecords). `offset` may not pass the
    /// high watermark; a smaller offset than the current start changes nothing. Returns the new
    /// log start offset, which is durable when this returns.
    pub fn delete_records(&self, offset: i64) -> Result<i64> {
        let mut inner = lock(&self.inner);
        self.check_writable(&inner)?;
        let hw = self.high_watermark_locked(&inner);
        if offset > hw || offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: inner.log_start_offset,
                log_end_offset: hw,
            });
        }
        if offset > inner.log_start_offset {
            self.set_log_start(&mut inner, offset)?;
            self.delete_front(&mut inner, |_, _| false)?;
        }
        Ok(inner.log_start_offset)
    }

    fn set_log_start(&self, inner: &mut Inner, offset: i64) -> Result<()> {
        let mut s = lock(&self.state);
        s.log_start_offset = offset;
        s.write(&self.dir).map_err(|e| StorageError::io(&self.dir, e))?;
        inner.log_start_offset = offset;
        Ok(())
    }

    /// Deletes non-active segments from the front while they are wholly below the log start or
    /// `expired(segment, bytes_remaining)` says so (and they are below the high watermark).
    fn delete_front(
        &self,
        inner: &mut Inner,
        expired: impl Fn(&Segment, u64) -> bool,
    ) -> Result<RetentionResult> {
        let mut result = RetentionResult::default();
        let hw = self.high_watermark_locked(inner);
        let mut total: u64 = inner.segments.values().map(|s| s.published_len()).sum();
        let mut doomed = Vec::new();
        for (i, seg) in inner.segments.values().enumerate() {
            if i + 1 == inner.segments.len() {
                break; // the active segment stays
            }
            let next = seg.state().next_offset;
            if next > hw || !(next <= inner.log_start_offset || expired(seg, total)) {
                break;
            }
            total -= seg.published_len();
            doomed.push(seg.clone());
        }
        if doomed.is_empty() {
            result.log_start_offset = inner.log_start_offset;
            return Ok(result);
        }
        for seg in &doomed {
            inner.segments.remove(&seg.base_offset);
        }
        let first = *inner.segments.keys().next().unwrap_or(&inner.log_end_offset);
        if first > inner.log_start_offset {
            self.set_log_start(inner, first)?;
        }
        result.segments_deleted = doomed.len();
        result.bytes_deleted = doomed.iter().map(|s| s.published_len()).sum();
        result.log_start_offset = inner.log_start_offset;
        // The segments are gone from the log and the log start is durable past them; their
        // files are deleted on the background thread (see `Segment::delete_files` and
        // `finish_delete`), as Kafka deletes asynchronously: unlinking a large cached file takes
        // long (0.19 s for 1 GiB here) and stalls the disk. Files left by a crash before that
        // lie wholly below the log start and are removed by the next open.
        let (dir, health) = (self.dir.clone(), self.io.health().clone());
        self.io.background(Box::new(move || {
            for seg in doomed {
                let done = seg.delete_files(&dir).and_then(|d| Ok((seg.finish_delete(&d)?, d)));
                match done {
                    Ok((true, _)) => {}
                    // A reader still holds it: finished once it lets go.
                    Ok((false, doomed)) => io::linger(seg, doomed),
                    Err(e) => {
                        health.fail(format!("deleting {} failed: {e}", seg.log_path.display()));
                        return;
                    }
                }
            }
        }))?;
        Ok(result)
    }

    /// Applies `retention.ms` and `retention.bytes` at time `now_ms`: whole segments are deleted
    /// from the front and the log start offset advances. When every record is expired, the
    /// active segment is rolled so it can go too, as Kafka does.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionResult> {
        let mut inner = lock(&self.inner);
        self.check_writable(&inner)?;
        let config = inner.config.clone();
        let expired = |seg: &Segment, total: u64| {
            let max_ts = seg.state().max_timestamp;
            (config.retention_ms >= 0 && now_ms.saturating_sub(max_ts) > config.retention_ms)
                || (config.retention_bytes >= 0
                    && total.saturating_sub(seg.published_len()) >= config.retention_bytes as u64)
        };
        let active = self.active(&inner);
        let active_expired = {
            let st = active.state();
            st.reserved_len > 0
                && st.next_offset <= self.high_watermark_locked(&inner)
                && config.retention_ms >= 0
                && now_ms.saturating_sub(st.max_timestamp) > config.retention_ms
        };
        if active_expired {
            self.roll_locked(&mut inner)?;
        }
        self.delete_front(&mut inner, expired)
    }

    /// Syncs everything, trims the active segment's indexes and writes the clean-shutdown
    /// marker, so that the next open skips recovery. Further appends fail with `Closed`.
    pub fn close(&self) -> Result<()> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        // Rolled segments are sealed and the recovery point written first (no roll can queue
        // more meanwhile: that happens under the lock held here).
        self.io.background_barrier();
        self.io.sync_and_wait(&self.progress)?;
        if self.progress.write_failed.load(Ordering::Acquire) || self.io.health().is_failed() {
            return Err(self.io.health().error());
        }
        let active = self.active(&inner);
        active.trim_padding().map_err(|e| StorageError::io(&active.log_path, e))?;
        active.trim_indexes().map_err(|e| StorageError::io(&active.log_path, e))?;
        let mut s = lock(&self.state);
        s.clean = true;
        s.recovery_point = inner.log_end_offset;
        s.write(&self.dir).map_err(|e| StorageError::io(&self.dir, e))
    }
}

/// Logs a recovery cut and deletes the segments `doomed` that follow it.
fn drop_from(dir: &Path, doomed: &[i64], t: Truncation, report: &mut OpenReport) {
    tracing::warn!(
        log = %dir.display(),
        segment = t.segment_base_offset,
        position = t.position,
        bytes_cut = t.bytes,
        segments_dropped = doomed.len(),
        reason = %t.reason,
        "recovery cut the log: {} bytes at position {} of segment {}, offsets from {} on removed",
        t.bytes,
        t.position,
        t.segment_base_offset,
        t.first_offset_cut.map_or("?".to_string(), |o| o.to_string()),
    );
    report.truncations.push(t);
    for &later in doomed {
        let _ = segment::remove_files(dir, later);
        report.segments_dropped += 1;
    }
}

impl Drop for Log {
    /// A log dropped without `close` stays marked unclean (the next open recovers it), but its
    /// queued work, such as a recovery-point checkpoint after a roll, finishes first so that
    /// nothing of this instance touches the directory after the drop.
    fn drop(&mut self) {
        let closed = lock(&self.inner).closed;
        if !closed {
            self.io.background_barrier();
            let _ = self.io.sync_and_wait(&self.progress);
        }
    }
}

/// Lists segment base offsets in a partition directory and removes leftovers: temp files,
/// segment files a crash left half deleted (`.deleted`) and index files without a `.log`.
fn scan_dir(dir: &Path) -> Result<Vec<i64>> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") || name.ends_with(segment::DELETED_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let Some((stem, ext)) = name.split_once('.') else { continue };
        let Ok(base) = stem.parse::<i64>() else { continue };
        if stem.len() != 20 {
            continue;
        }
        match ext {
            "log" => logs.push(base),
            "index" | "timeindex" => indexes.push((base, entry.path())),
            _ => {}
        }
    }
    logs.sort_unstable();
    for (base, path) in indexes {
        if logs.binary_search(&base).is_err() {
            tracing::info!(file = %path.display(), "removing an index without its segment");
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::batch::{BatchBuilder, BatchHeader};
    use crate::direct;
    use crate::io::DirectIo;
    use crate::io::IoEngineChoice;
    use crate::segment::DELETED_SUFFIX;

    fn batch(ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..4 {
            b.value(ts + i, &[ts as u8; 100]);
        }
        b.build()
    }

    /// Every visible batch: `(base offset, bytes)`.
    fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
        let (mut offset, hw, _) = log.offsets();
        let mut out = Vec::new();
        while offset < hw {
            let r = log.read(offset, 1 << 20, true).unwrap();
            let mut pos = 0;
            while pos < r.records.len() {
                let h = BatchHeader::parse(&r.records[pos..]).unwrap();
                let len = h.total_len().unwrap();
                out.push((h.base_offset, r.records[pos..pos + len].to_vec()));
                offset = h.last_offset() + 1;
                pos += len;
            }
        }
        out
    }

    fn index_sizes(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with("index"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    }

    /// A directory whose I/O thread writes with direct I/O (a tail cache of `cache` bytes), and
    /// a config with segments of `segment_bytes`.
    fn direct_dir(cache: u64, segment_bytes: u64) -> (tempfile::TempDir, Arc<IoThread>, LogConfig) {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        io.set_direct_io(Some(DirectIo::with_cache(cache)));
        (dir, io, LogConfig { segment_bytes, ..LogConfig::default() })
    }

    fn file_len(log: &Log, base: i64) -> u64 {
        let (path, _, _) = segment::paths(log.dir(), base);
        std::fs::metadata(path).unwrap().len()
    }

    /// With direct I/O the log file grows in whole blocks (the zeros after the log's end are
    /// cut at a roll and at a clean close, and by recovery without a report), recent reads
    /// come from the tail's memory (no file slice) and older ones from the file, stopping
    /// where the cache begins; whatever the path, every batch reads back byte-exact, across
    /// rolls, a clean reopen and an unclean one.
    #[test]
    fn direct_io_writes_whole_blocks_and_serves_the_tail_from_memory() {
        let (dir, io, config) = direct_dir(16 << 10, 96 << 10);
        let log = Log::open(dir.path().join("t-0"), config.clone(), io.clone()).unwrap();
        assert!(log.active(&lock(&log.inner)).state().tail.is_some(), "O_DIRECT unavailable");
        let b = batch(0);
        log.append(&b).unwrap().durable.wait().unwrap();
        assert_eq!(file_len(&log, 0), 4096, "one whole block on disk");
        let r = log.read(0, 1 << 20, true).unwrap();
        assert_eq!(r.records.len(), b.len());
        assert!(r.file_slice.is_none(), "the newest batch comes from memory");

        let mut want = read_all(&log);
        // Until there are a few segments and the active one holds more than its cache.
        let mut i = 0;
        while log.segment_count() < 3 || log.active(&lock(&log.inner)).published_len() < 40 << 10 {
            i += 1;
            let info = log.append(&batch(i)).unwrap();
            info.durable.wait().unwrap();
            let r = log.read(info.base_offset, 1 << 20, true).unwrap();
            assert!(r.file_slice.is_none(), "append {i}: the newest batch comes from memory");
            want.push((info.base_offset, r.records.to_vec()));
        }
        io.background_barrier();
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3, "{bases:?}");
        for &base in &bases[..bases.len() - 1] {
            let len = file_len(&log, base);
            assert_ne!(len % 4096, 0, "rolled segment {base} keeps its padding ({len})");
        }
        // The start of the active segment is no longer cached: read from the file, and only
        // up to the cache.
        let active = *bases.last().unwrap();
        let r = log.read(active, 1 << 20, true).unwrap();
        let position = r.file_slice.as_ref().map(|f| f.position);
        assert_eq!(position, Some(0), "read through the file");
        let published = log.active(&lock(&log.inner)).published_len();
        assert!((r.records.len() as u64) < published, "the file read stopped at the cache");
        assert_eq!(read_all(&log), want);

        log.close().unwrap();
        assert_eq!(file_len(&log, active), published, "a clean close cuts the padding");
        drop(log);
        let log = Log::open(dir.path().join("t-0"), config.clone(), io.clone()).unwrap();
        assert!(log.open_report().clean);
        assert_eq!(read_all(&log), want);
        for i in i + 1..i + 20 {
            let info = log.append(&batch(i)).unwrap();
            info.durable.wait().unwrap();
            let r = log.read(info.base_offset, 1 << 20, true).unwrap();
            want.push((info.base_offset, r.records.to_vec()));
        }
        assert_eq!(read_all(&log), want);
        drop(log); // unclean: the active segment keeps its padding
        let log = Log::open(dir.path().join("t-0"), config, io).unwrap();
        let report = log.open_report();
        assert!(!report.clean && report.segments_recovered > 0, "{report:?}");
        assert!(report.truncations.is_empty(), "padding is not a torn write: {report:?}");
        assert_eq!(read_all(&log), want);
    }

    /// The logs of one directory share its direct-I/O memory budget: once more of them take a
    /// chunk than the budget holds, the ones appended to least recently let go of what they
    /// wrote, the directory's tails never hold much more than the budget, and every batch
    /// reads back byte-exact: from the file once let go, after more appends to a log that let
    /// go (its next chunk starts from the kept partial block), and after a reopen.
    #[test]
    fn direct_tails_of_many_logs_share_the_directory_budget() {
        const CHUNK: u64 = 16 << 10; // a quarter of the per-partition cache
        const BUDGET: u64 = 8 * CHUNK;
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        io.set_direct_io(Some(DirectIo { cache_bytes: 4 * CHUNK, memory_bytes: BUDGET }));
        let open = |p: usize| {
            Log::open(dir.path().join(format!("t-{p}")), LogConfig::default(), io.clone()).unwrap()
        };
        let logs: Vec<Log> = (0..12).map(open).collect();
        assert!(logs[0].active(&lock(&logs[0].inner)).state().tail.is_some(), "no O_DIRECT");
        let mut want = vec![Vec::new(); logs.len()];
        let mut most = 0;
        let append = |log: &Log, i: i64, want: &mut Vec<(i64, Vec<u8>)>, most: &mut u64| {
            let info = log.append(&batch(i)).unwrap();
            info.durable.wait().unwrap();
            *most = (*most).max(io.direct_io_memory());
            let r = log.read(info.base_offset, 1 << 20, true).unwrap();
            assert!(r.file_slice.is_none(), "the newest batch comes from memory");
            want.push((info.base_offset, r.records.to_vec()));
        };
        for round in 0..6 {
            for (p, log) in logs.iter().enumerate() {
                append(log, round * 100 + p as i64, &mut want[p], &mut most);
            }
        }
        // Twelve tails of a chunk and a block each would hold 240 KiB; the budget is 128.
        assert!(most <= BUDGET + CHUNK, "held {most} bytes, budget {BUDGET}");
        // The first logs let go: even their newest batch is read through the file.
        let r = logs[0].read(want[0].last().unwrap().0, 1 << 20, true).unwrap();
        assert!(r.file_slice.is_some(), "log 0 still holds its tail");
        for (p, log) in logs.iter().enumerate() {
            assert_eq!(read_all(log), want[p], "log {p}");
        }
        for round in 6..9 {
            append(&logs[0], round * 100, &mut want[0], &mut most);
        }
        assert_eq!(read_all(&logs[0]), want[0]);
        drop(logs); // unclean: active segments keep their padding
        assert_eq!(io.direct_io_tail_memory(), 0, "the tails' memory is counted back");
        for (p, want) in want.iter().enumerate() {
            let log = open(p);
            assert!(log.open_report().truncations.is_empty(), "{:?}", log.open_report());
            assert_eq!(&read_all(&log), want, "log {p} after reopen");
        }
    }

    /// Where the file system refuses `O_DIRECT` (tmpfs before Linux 6.6), segments are written
    /// through the page cache, with a warning, and work as usual; where it takes it, they are
    /// written directly. Either way on tmpfs, whichever this kernel does.
    #[test]
    fn direct_io_on_tmpfs_is_direct_or_falls_back() {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        // SAFETY: statfs fills the zeroed struct from a NUL-terminated path.
        let tmpfs = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c"/dev/shm".as_ptr(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC
        };
        if !tmpfs {
            eprintln!("skipped: no tmpfs at /dev/shm");
            return;
        }
        let shm = Path::new("/dev/shm");
        let dir = tempfile::tempdir_in(shm).unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        io.set_direct_io(Some(DirectIo::with_cache(1 << 20)));
        let log = Log::open(dir.path().join("t-0"), LogConfig::default(), io).unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let takes_direct = direct::open(&probe).unwrap().is_some();
        eprintln!("tmpfs takes O_DIRECT here: {takes_direct}");
        assert_eq!(log.active(&lock(&log.inner)).state().tail.is_some(), takes_direct);
        let mut want = Vec::new();
        for i in 0..50 {
            let info = log.append(&batch(i)).unwrap();
            info.durable.wait().unwrap();
            want.push(info.base_offset);
        }
        let got: Vec<i64> = read_all(&log).iter().map(|b| b.0).collect();
        assert_eq!(got, want);
    }

    /// Where the file system asks for a direct-I/O alignment that 4 KiB does not satisfy (made
    /// up here: the file systems of these machines never do), segments are written through the
    /// page cache instead: no tail, and appends, reads, rolls and a reopen work as usual.
    #[test]
    fn direct_io_falls_back_where_the_alignment_does_not_suit() {
        struct Refuse;
        impl Drop for Refuse {
            fn drop(&mut self) {
                direct::tests::REFUSE_ALIGNMENT.set(false);
            }
        }
        direct::tests::REFUSE_ALIGNMENT.set(true);
        let _refuse = Refuse; // until the end of the test, even a failed one
        let (dir, io, config) = direct_dir(64 << 10, 8 << 10);
        let log = Log::open(dir.path().join("t-0"), config.clone(), io.clone()).unwrap();
        let mut want = Vec::new();
        for i in 0..60 {
            assert!(log.active(&lock(&log.inner)).state().tail.is_none(), "append {i}");
            let info = log.append(&batch(i)).unwrap();
            info.durable.wait().unwrap();
            let r = log.read(info.base_offset, 1 << 20, true).unwrap();
            assert!(r.file_slice.is_some(), "read through the page cache");
            want.push((info.base_offset, r.records.to_vec()));
        }
        assert!(log.segment_count() > 2);
        assert_eq!(read_all(&log), want);
        drop(log);
        let log = Log::open(dir.path().join("t-0"), config, io.clone()).unwrap();
        assert!(log.open_report().truncations.is_empty());
        assert_eq!(read_all(&log), want);
        assert_eq!(io.direct_io_tail_memory(), 0);
    }

    /// Appends from several threads, queued faster than they are written (the I/O thread
    /// writes each round's appends to a segment together), across rolls and a tail cache
    /// smaller than a round: every batch reads back byte-exact, in offset order.
    #[test]
    fn direct_appends_queued_together_all_read_back() {
        let (dir, io, config) = direct_dir(8 << 10, 100 << 10);
        let log = Arc::new(Log::open(dir.path().join("t-0"), config, io).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut pending = Vec::new();
                    for i in 0..300 {
                        let b = batch(t * 1000 + i);
                        let info = log.append(&b).unwrap();
                        mine.push((info.base_offset, b));
                        pending.push(info.durable);
                    }
                    for d in pending {
                        d.wait().unwrap();
                    }
                    mine
                })
            })
            .collect();
        let mut want: Vec<(i64, Vec<u8>)> =
            threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        want.sort_by_key(|w| w.0);
        let got = read_all(&log);
        assert_eq!(got.len(), want.len());
        for ((go, gb), (wo, wb)) in got.iter().zip(&want) {
            assert_eq!(go, wo);
            // The stored batch has the broker's base offset and epoch written in.
            assert_eq!(gb[16..], wb[16..], "batch at {go}");
        }
        assert!(log.segment_count() > 3);
    }

    /// A reader at the tail while an appender writes with direct I/O and a cache of a few
    /// chunks: reads come from chunks that are being evicted and reused meanwhile, and the
    /// reader holds on to some results for a while (so reuse must wait for it). Every batch read
    /// is whole, valid and the one appended at that offset.
    #[test]
    fn direct_tail_reads_while_appending_stay_whole() {
        let (dir, io, config) = direct_dir(12 << 10, 1 << 30);
        let log = Arc::new(Log::open(dir.path().join("t-0"), config, io).unwrap());
        let (from_memory, _) = read_while_appending(log, None);
        assert!(from_memory > 100, "only {from_memory} reads came from the tail");
    }

    /// The same while another log of the directory keeps taking chunks over a budget of two:
    /// the read log's tail is let go of again and again, so reads of its newest bytes go
    /// through the file, including the block the next direct write rewrites.
    #[test]
    fn direct_reads_of_a_tail_let_go_while_appending_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        io.set_direct_io(Some(DirectIo { cache_bytes: 64 << 10, memory_bytes: 32 << 10 }));
        let open = |name: &str| {
            Arc::new(Log::open(dir.path().join(name), LogConfig::default(), io.clone()).unwrap())
        };
        let (from_memory, from_file) = read_while_appending(open("t-0"), Some(open("u-0")));
        assert!(from_file > 10 && from_memory > 0, "{from_file} file reads, {from_memory} not");
    }

    /// Appends 3000 batches to `log` from one thread (and as many to `pressure`, if given, from
    /// another) while this one reads `log` at its end, holding some results a while; checks
    /// every batch read. Returns how many reads came from memory and how many from the file.
    fn read_while_appending(log: Arc<Log>, pressure: Option<Arc<Log>>) -> (usize, usize) {
        const BATCHES: i64 = 3000;
        let appenders: Vec<_> = std::iter::once(log.clone())
            .chain(pressure)
            .map(|log| {
                std::thread::spawn(move || {
                    for i in 0..BATCHES {
                        let info = log.append(&batch(i)).unwrap();
                        if i % 7 == 0 {
                            info.durable.wait().unwrap();
                        }
                    }
                })
            })
            .collect();
        // Checks a read result that starts at offset `at`; returns the offset after it.
        let check = |records: &Bytes, mut at: i64| -> i64 {
            let batches = crate::batch::validate(records, 1 << 20).unwrap();
            for b in &batches {
                let h = BatchHeader::parse(&records[b.position..]).unwrap();
                assert_eq!(h.base_offset, at, "batches in offset order, none skipped");
                let i = at / 4;
                let body = &records[b.position..b.position + b.len];
                assert!(body.windows(100).any(|w| w.iter().all(|&x| x == i as u8)), "batch {i}");
                at = h.last_offset() + 1;
            }
            at
        };
        let mut held = std::collections::VecDeque::new();
        let mut next = 0i64;
        let (mut from_memory, mut from_file) = (0, 0);
        while next < BATCHES * 4 {
            let r = log.read(next, 2048, true).unwrap();
            if r.records.is_empty() {
                std::thread::yield_now();
                continue;
            }
            match r.file_slice {
                None => from_memory += 1,
                Some(_) => from_file += 1,
            }
            let after = check(&r.records, next);
            held.push_back((r.records, next));
            next = after;
            // What a reader holds stays as it was, however far the tail moved meanwhile.
            if held.len() > 16 {
                let (records, at) = held.pop_front().unwrap();
                check(&records, at);
            }
        }
        for a in appenders {
            a.join().unwrap();
        }
        (from_memory, from_file)
    }

    /// A roll seals the old segment on the background thread, and only then moves the
    /// recovery point past it. A crash after some rolls were sealed and others not (simulated:
    /// the thread is held while the directory is copied, as a crash would leave it) leaves
    /// unsealed segments with preallocated indexes after the recovery point; the next open
    /// rebuilds exactly those, trusts the sealed ones before it, loses nothing and serves
    /// lookups by timestamp. Once the thread runs, every rolled segment is sealed and the
    /// recovery point is at the last roll.
    #[test]
    fn segments_rolled_but_not_yet_sealed_are_recovered_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        let config =
            LogConfig { segment_bytes: 2_048, index_interval_bytes: 256, ..LogConfig::default() };
        let log = Log::open(dir.path().join("t-0"), config.clone(), io.clone()).unwrap();
        for i in 0..10 {
            log.append(&batch(i * 10)).unwrap().durable.wait().unwrap();
        }
        io.background_barrier();
        let sealed = log.segment_count() - 1;
        assert!(sealed >= 2, "{sealed} sealed segments");
        let point = *log.segment_base_offsets().last().unwrap();
        assert_eq!(log.recovery_point(), point);

        let (release, held) = mpsc::channel::<()>();
        io.background(Box::new(move || {
            let _ = held.recv();
        }))
        .unwrap();
        for i in 10..30 {
            log.append(&batch(i * 10)).unwrap().durable.wait().unwrap();
        }
        let segments = log.segment_count();
        assert!(segments >= sealed + 4, "{segments} segments");
        assert_eq!(log.recovery_point(), point, "nothing sealed since");
        let written = read_all(&log);
        assert_eq!(written.len(), 30);

        let crashed = tempfile::tempdir().unwrap();
        std::fs::create_dir(crashed.path().join("t-0")).unwrap();
        for e in std::fs::read_dir(dir.path().join("t-0")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), crashed.path().join("t-0").join(e.file_name())).unwrap();
        }
        let trimmed =
            |dir: &Path| index_sizes(dir).iter().filter(|(_, len)| *len < 10_000_000).count() / 2;
        assert_eq!(trimmed(&crashed.path().join("t-0")), sealed);

        release.send(()).unwrap();
        io.background_barrier();
        assert_eq!(log.recovery_point(), *log.segment_base_offsets().last().unwrap());
        assert_eq!(trimmed(&dir.path().join("t-0")), segments - 1);
        log.close().unwrap();

        let io2 = Arc::new(IoThread::start(crashed.path(), IoEngineChoice::Auto).unwrap());
        let recovered = Log::open(crashed.path().join("t-0"), config, io2).unwrap();
        let report = recovered.open_report().clone();
        assert!(!report.clean);
        // From the segment holding the recovery point (the active one at the barrier) on.
        assert_eq!(report.segments_recovered, segments - sealed, "{report:?}");
        assert!(report.truncations.is_empty(), "{report:?}");
        assert_eq!(read_all(&recovered), written);
        let found = recovered.offset_for_timestamp(153).unwrap().and_then(|l| l.record);
        assert_eq!(found, Some((15 * 4 + 3, 153)));
    }

    /// Retention deletes a segment's files on the background thread. A segment nobody reads is
    /// cut down gradually, then unlinked; one whose bytes a reader still holds (a read
    /// result's mapped view and file slice) waits under its `.deleted` name, the reader's bytes
    /// intact, and goes once the reader lets go.
    #[test]
    fn deleted_segments_go_and_their_readers_keep_their_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        let config = LogConfig { segment_bytes: 2_048, ..LogConfig::default() };
        let log = Log::open(dir.path().join("t-0"), config, io.clone()).unwrap();
        for i in 0..20 {
            log.append(&batch(i * 10)).unwrap().durable.wait().unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 5, "{bases:?}");
        let logs = || {
            let mut v: Vec<_> = std::fs::read_dir(dir.path().join("t-0"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".log"))
                .collect();
            v.sort();
            v
        };
        // A reader holds the second segment's bytes; nobody holds the first's.
        let held = log.read(bases[1], 1 << 20, true).unwrap();
        let slice = held.file_slice.clone().unwrap();
        let copy = held.records.to_vec();
        assert_eq!(log.delete_records(bases[2]).unwrap(), bases[2]);
        io.background_barrier();
        assert_eq!(logs().len(), bases.len() - 2, "{:?}", logs());
        assert_eq!(&held.records[..], &copy[..]);
        let mut again = vec![0u8; copy.len()];
        slice.file.read_exact_at(&mut again, slice.position).unwrap();
        assert_eq!(again, copy);
        // The held segment's file waits under its `.deleted` name until the reader lets go.
        let deleted = || {
            std::fs::read_dir(dir.path().join("t-0"))
                .unwrap()
                .filter(|e| {
                    e.as_ref().unwrap().file_name().to_string_lossy().ends_with(DELETED_SUFFIX)
                })
                .count()
        };
        assert_eq!(deleted(), 1);
        drop((held, slice));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while deleted() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(deleted(), 0, "the file went once its reader let go");
        log.close().unwrap();

        // A crash while a file was being cut leaves it under its `.deleted` name, next to its
        // indexes: the open removes them all and cuts nothing.
        let dir0 = dir.path().join("t-0");
        let stale = dir0.join(format!("{:020}.log{DELETED_SUFFIX}", bases[0]));
        std::fs::write(&stale, vec![7u8; 1000]).unwrap();
        std::fs::write(dir0.join(format!("{:020}.index", bases[0])), [0u8; 80]).unwrap();
        let io2 = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        let log = Log::open(dir0.clone(), LogConfig::default(), io2).unwrap();
        assert!(log.open_report().truncations.is_empty(), "{:?}", log.open_report());
        assert!(!stale.exists());
        assert!(!dir0.join(format!("{:020}.index", bases[0])).exists());
        assert_eq!(log.offsets().0, bases[2]);
        assert_eq!(read_all(&log).len(), 20 - bases[2] as usize / 4);
    }

    /// A deletion below the log start that did not fully reach the disk (an earlier segment's
    /// file back, a later one gone) must not look like a gap in the log: the open removes what
    /// lies wholly below the log start and cuts nothing.
    #[test]
    fn segments_left_below_the_log_start_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(IoThread::start(dir.path(), IoEngineChoice::Auto).unwrap());
        let config = LogConfig { segment_bytes: 2_048, ..LogConfig::default() };
        let part = dir.path().join("t-0");
        let log = Log::open(part.clone(), config.clone(), io.clone()).unwrap();
        for i in 0..20 {
            log.append(&batch(i * 10)).unwrap().durable.wait().unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 5, "{bases:?}");
        let written = read_all(&log);
        let first = segment::paths(&part, bases[0]);
        let saved: Vec<Vec<u8>> =
            [&first.0, &first.1, &first.2].iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert_eq!(log.delete_records(bases[3]).unwrap(), bases[3]);
        io.background_barrier();
        drop(log); // unclean
                   // The first segment's deletion "did not reach the disk"; the next two's did.
        for (p, b) in [&first.0, &first.1, &first.2].iter().zip(&saved) {
            std::fs::write(p, b).unwrap();
        }
        let log = Log::open(part.clone(), config, io.clone()).unwrap();
        let report = log.open_report().clone();
        assert!(report.truncations.is_empty() && report.segments_dropped == 0, "{report:?}");
        assert!(!first.0.exists());
        assert_eq!(log.segment_base_offsets(), bases[3..].to_vec());
        let kept: Vec<_> = written.into_iter().filter(|(b, _)| *b >= bases[3]).collect();
        assert_eq!(read_all(&log), kept);
    }
}
