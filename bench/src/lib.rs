//! Shared pieces of Millrace's storage benchmarks (`benches/storage_log.rs`): the record batches
//! they append, the log configuration they use, the "plain file" baselines they compare against,
//! and the bookkeeping that keeps a long benchmark from filling the disk. [`perf_tool`] holds the
//! parts of the `millrace-bench` perf tools that follow Kafka's own tools.
//!
//! Every log figure in the benchmarks has a baseline partner that moves the same bytes through
//! the same file system with plain system calls (`write` + `fdatasync`, `pread`), so a result
//! reads as "the log reaches x% of what the disk and kernel give a trivial program".
//!
//! Sizes follow Kafka's usual producer settings: records of 1 KiB ([`RECORD_BYTES`]) in batches
//! of 16 KiB (`batch.size` default) or 1 MiB (a large, throughput-tuned producer).

pub mod perf_tool;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use millrace_storage::batch::{BatchBuilder, BatchHeader, Record};
use millrace_storage::{Log, LogConfig, LogDir};

/// Value size of every record the append and read benchmarks write.
pub const RECORD_BYTES: usize = 1024;
/// Payload of a "small" producer batch: 16 records of 1 KiB.
pub const SMALL_BATCH_PAYLOAD: usize = 16 * 1024;
/// Payload of a "large" producer batch: 1024 records of 1 KiB.
pub const LARGE_BATCH_PAYLOAD: usize = 1024 * 1024;
/// `segment.bytes` of the benchmark logs: large enough that rolling is rare.
pub const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// `max.message.bytes` of the benchmark logs: room for a 1 MiB batch and its overhead.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// Bytes a benchmark lets one writer (a log or a baseline file) hold before starting afresh.
pub const DISK_CAP_BYTES: u64 = 1024 * 1024 * 1024;

/// One uncompressed v2 batch of `payload_bytes / RECORD_BYTES` records (at least one), each with
/// a [`RECORD_BYTES`]-byte value and timestamp `timestamp_ms`. The batch is a little larger than
/// `payload_bytes`: 61 bytes of header and a few bytes of framing per record.
pub fn record_batch(payload_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let records = (payload_bytes / RECORD_BYTES).max(1);
    let mut b = BatchBuilder::new();
    let mut value = vec![0u8; RECORD_BYTES];
    for i in 0..records {
        // Not all zeroes, and not the same in every record: nothing downstream should be able
        // to shortcut a page of identical bytes.
        let seed = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (j, chunk) in value.chunks_mut(8).enumerate() {
            let v = seed.wrapping_add(j as u64).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        b.value(timestamp_ms, &value);
    }
    b.build()
}

/// A batch of `records` records of `value_bytes` each, the i-th stamped `first_timestamp_ms + i`.
/// Used to fill the logs the lookup benchmarks search.
pub fn small_batch(records: usize, value_bytes: usize, first_timestamp_ms: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..records {
        let value = vec![(i as u8).wrapping_add(first_timestamp_ms as u8); value_bytes];
        b.push(Record {
            timestamp: first_timestamp_ms + i as i64,
            value: Some(value),
            ..Record::default()
        });
    }
    b.build()
}

/// The topic config of every benchmark log: Kafka's defaults and Millrace's `flush.messages=1`
/// (every append group-committed), with [`SEGMENT_BYTES`] segments, [`MAX_MESSAGE_BYTES`]
/// batches allowed, and no time-based retention or rolling to interfere.
pub fn bench_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        segment_ms: i64::MAX,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..LogConfig::default()
    }
}

/// Where benchmark files go: `$MILLRACE_BENCH_DIR`, else `$CARGO_TARGET_DIR`, else the
/// workspace's `target/`. Baselines and logs share it, so both hit the same file system.
pub fn bench_root() -> PathBuf {
    for var in ["MILLRACE_BENCH_DIR", "CARGO_TARGET_DIR"] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    workspace.canonicalize().unwrap_or(workspace).join("target")
}

/// The header of the last whole batch in `records` (as returned by [`Log::read`]), found by
/// walking the batch headers from the start.
pub fn last_batch_header(records: &[u8]) -> Option<BatchHeader> {
    let mut pos = 0usize;
    let mut last = None;
    while let Some(h) = records.get(pos..).and_then(BatchHeader::parse) {
        let len = h.total_len()?;
        if pos + len > records.len() {
            break;
        }
        last = Some(h);
        pos += len;
    }
    last
}

/// Something a benchmark writes to until it holds too much, then starts afresh.
pub trait Sink {
    /// Bytes it holds now.
    fn stored_bytes(&self) -> u64;
    /// Throws everything away and starts empty.
    fn recycle(&mut self) -> std::io::Result<()>;
}

/// Runs `iters` iterations of a write benchmark and returns the time they took, keeping `sink`
/// under `cap` bytes: iterations run in chunks that fit under the cap, `chunk(sink, n)` runs `n`
/// of them and must leave them complete (durable, where that is what is measured), and `sink` is
/// recycled between chunks with the clock stopped.
pub fn timed_in_chunks<S: Sink>(
    sink: &mut S,
    iters: u64,
    bytes_per_iter: u64,
    cap: u64,
    mut chunk: impl FnMut(&mut S, u64),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut remaining = iters;
    while remaining > 0 {
        if sink.stored_bytes() + bytes_per_iter > cap {
            sink.recycle().expect("recycling a benchmark sink");
        }
        let room = cap.saturating_sub(sink.stored_bytes()) / bytes_per_iter.max(1);
        let n = remaining.min(room.max(1));
        let start = Instant::now();
        chunk(sink, n);
        elapsed += start.elapsed();
        remaining -= n;
    }
    elapsed
}

/// Several sinks written at the same rate (one per writer thread): full when the fullest is,
/// recycled together.
impl<S: Sink> Sink for Vec<S> {
    fn stored_bytes(&self) -> u64 {
        self.iter().map(Sink::stored_bytes).max().unwrap_or(0)
    }
    fn recycle(&mut self) -> std::io::Result<()> {
        self.iter_mut().try_for_each(Sink::recycle)
    }
}

/// A partition log in a [`LogDir`] that is deleted and created anew when recycled.
#[derive(Debug)]
pub struct LogSink<'d> {
    dir: &'d LogDir,
    topic: String,
    partition: i32,
    config: LogConfig,
    log: Option<Log>,
}

impl<'d> LogSink<'d> {
    /// Opens (creating) `topic-partition` in `dir`, emptied first if it holds anything.
    pub fn open(dir: &'d LogDir, topic: &str, partition: i32, config: LogConfig) -> Self {
        let mut sink = LogSink { dir, topic: topic.to_string(), partition, config, log: None };
        sink.reopen().expect("opening a benchmark log");
        if sink.stored_bytes() > 0 {
            sink.recycle().expect("emptying a benchmark log");
        }
        sink
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let log = self
            .dir
            .open_log(&self.topic, self.partition, self.config.clone())
            .map_err(std::io::Error::other)?;
        self.log = Some(log);
        Ok(())
    }

    pub fn log(&self) -> &Log {
        self.log.as_ref().expect("a benchmark log is open between recycles")
    }
}

impl Sink for LogSink<'_> {
    fn stored_bytes(&self) -> u64 {
        self.log().size_bytes()
    }
    fn recycle(&mut self) -> std::io::Result<()> {
        if let Some(log) = self.log.take() {
            self.dir.delete_log(log).map_err(std::io::Error::other)?;
        }
        self.reopen()
    }
}

impl Drop for LogSink<'_> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let _ = self.dir.delete_log(log);
        }
    }
}

/// The baseline writer: a plain file written sequentially with `write_all` (or through an
/// aligned buffer with `O_DIRECT`, [`BaselineFile::create_direct`]), made durable with
/// `sync_data` (`fdatasync`), and removed and created anew when recycled.
#[derive(Debug)]
pub struct BaselineFile {
    path: PathBuf,
    file: File,
    len: u64,
    /// With `O_DIRECT`: the staging buffer. Appends are copied into it after the partial last
    /// block of the previous one, and that block and the new bytes are written with `pwrite`
    /// at the block boundary (the same copy and the same partial-block rewrite the direct-I/O
    /// log does, with plain system calls).
    direct: Option<AlignedBuf>,
}

/// `len` bytes at a block-aligned address, as `O_DIRECT` needs: an aligned window of a larger
/// `Vec`, which is never resized, so the window does not move.
#[derive(Debug)]
pub struct AlignedBuf {
    backing: Vec<u8>,
    at: usize,
    len: usize,
}

/// The alignment of [`AlignedBuf`] and of direct writes here.
pub const DIRECT_BLOCK: usize = 4096;

impl AlignedBuf {
    /// `len` bytes, byte `i` set to `fill(i)`.
    pub fn new(len: usize, fill: impl Fn(usize) -> u8) -> AlignedBuf {
        let backing = vec![0u8; len + DIRECT_BLOCK];
        let at = backing.as_ptr().align_offset(DIRECT_BLOCK);
        let mut b = AlignedBuf { backing, at, len };
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = fill(i);
        }
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.backing[self.at..self.at + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.backing[self.at..self.at + self.len]
    }
}

/// Creates (truncating) `path` for writing, with `O_DIRECT` if `direct`.
pub fn create_file(path: &Path, direct: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(path)
}

impl BaselineFile {
    /// Creates (truncating) the file at `path`.
    pub fn create(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let file = create_file(&path, false)?;
        Ok(BaselineFile { path, file, len: 0, direct: None })
    }

    /// Creates (truncating) the file at `path` for `O_DIRECT` appends of up to `max_append`
    /// bytes (an error where the file system refuses `O_DIRECT`).
    pub fn create_direct(path: impl Into<PathBuf>, max_append: usize) -> std::io::Result<Self> {
        let path = path.into();
        let file = create_file(&path, true)?;
        let cap = (max_append + 2 * DIRECT_BLOCK).div_ceil(DIRECT_BLOCK) * DIRECT_BLOCK;
        let buf = AlignedBuf::new(cap, |_| 0);
        Ok(BaselineFile { path, file, len: 0, direct: Some(buf) })
    }

    /// Appends `data`: `write_all` at the end of the file; with `O_DIRECT`, copied after the
    /// partial last block and written from the block boundary.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.direct {
            None => self.file.write_all(data)?,
            Some(d) => {
                let carried = (self.len % DIRECT_BLOCK as u64) as usize;
                let end = carried + data.len();
                let padded = end.div_ceil(DIRECT_BLOCK) * DIRECT_BLOCK;
                let buf = d.as_mut_slice();
                buf[carried..end].copy_from_slice(data);
                buf[end..padded].fill(0);
                self.file.write_all_at(&buf[..padded], self.len - carried as u64)?;
                // The new partial block moves to the front for the next append.
                let last = end / DIRECT_BLOCK * DIRECT_BLOCK;
                buf.copy_within(last..end, 0);
            }
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// `fdatasync`.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for BaselineFile {
    fn stored_bytes(&self) -> u64 {
        self.len
    }
    fn recycle(&mut self) -> std::io::Result<()> {
        // Replace the file, not `self`: dropping the old `BaselineFile` would delete the new
        // file at the same path.
        std::fs::remove_file(&self.path)?;
        self.file = create_file(&self.path, self.direct.is_some())?;
        self.len = 0;
        // Commit the unlink now (as `LogDir::delete_log` does for a log), so that freeing the
        // old file's blocks is not paid by the next timed `fdatasync`.
        if let Some(parent) = self.path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for BaselineFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads `len` bytes at `position` of `file` into `buf` (resized to `len`) with `pread`.
pub fn pread_exact(file: &File, buf: &mut Vec<u8>, position: u64, len: usize) {
    buf.resize(len, 0);
    file.read_exact_at(buf, position).expect("pread of a baseline file");
}

/// A small, fast, deterministic pseudo-random generator (SplitMix64) for picking lookup keys;
/// the benchmarks need reproducible keys, not good randomness.
#[derive(Debug, Clone)]
pub struct KeyGen(u64);

impl KeyGen {
    pub fn new(seed: u64) -> Self {
        KeyGen(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi)`; `hi > lo`.
    pub fn in_range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
}

/// Requests of a fixed size arriving at a fixed rate, as from a producer that sends one every
/// `interval` (its linger): request `j` carries what arrived in `[j, j + 1) * interval` and is
/// there at `(j + 1) * interval` after the start. A paced baseline (`millrace-bench
/// baseline-disk --rate-mb`) takes them as an ideal group-committing writer would: everything
/// that has arrived, in one write and one sync.
#[derive(Debug)]
pub struct Paced {
    interval: Duration,
    total: u64,
    next: u64,
}

impl Paced {
    /// `total` requests, one every `interval`.
    pub fn new(interval: Duration, total: u64) -> Paced {
        Paced { interval, total, next: 0 }
    }

    /// When request `j` is there, from the start.
    pub fn arrival(&self, j: u64) -> Duration {
        self.interval.saturating_mul(u32::try_from(j + 1).unwrap_or(u32::MAX))
    }

    /// The requests there at `elapsed` and not taken yet, at most `max` of them (empty when
    /// none is); they count as taken.
    pub fn take(&mut self, elapsed: Duration, max: u64) -> std::ops::Range<u64> {
        let there = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        let end = there.min(self.total).min(self.next + max);
        let start = self.next;
        self.next = self.next.max(end);
        start..self.next
    }

    /// When the next request not taken is there; `None` once all are taken.
    pub fn next_arrival(&self) -> Option<Duration> {
        (self.next < self.total).then(|| self.arrival(self.next))
    }
}

/// Adds to `hist` (microseconds) the latencies of `records` records sent in one request whose
/// answer came `latency` after the request was sent: they arrived evenly over the `interval`
/// before it (the client's linger), so theirs spread over `[latency, latency + interval]`.
pub fn record_spread(
    hist: &mut hdrhistogram::Histogram<u64>,
    latency: Duration,
    interval: Duration,
    records: u64,
) {
    const POINTS: u64 = 16;
    let points = records.clamp(1, POINTS);
    for k in 0..points {
        let count = records / points + u64::from(k < records % points);
        let at = latency + interval.mul_f64((k as f64 + 0.5) / points as f64);
        if count > 0 {
            hist.saturating_record_n(at.as_micros().max(1) as u64, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_storage::batch;

    #[test]
    fn batches_have_the_intended_size_and_validate() {
        for payload in [SMALL_BATCH_PAYLOAD, LARGE_BATCH_PAYLOAD] {
            let b = record_batch(payload, 1_000);
            let h = BatchHeader::parse(&b).unwrap();
            assert_eq!(h.record_count as usize, payload / RECORD_BYTES);
            assert!(b.len() > payload && b.len() < payload + payload / 64 + 64, "{}", b.len());
            assert!(b.len() <= MAX_MESSAGE_BYTES);
            batch::validate(&b, MAX_MESSAGE_BYTES).unwrap();
        }
        let s = small_batch(4, 64, 7);
        let h = BatchHeader::parse(&s).unwrap();
        assert_eq!((h.base_timestamp, h.max_timestamp, h.record_count), (7, 10, 4));
    }

    #[test]
    fn last_batch_header_walks_to_the_last_whole_batch() {
        let a = small_batch(2, 10, 100);
        let b = small_batch(3, 10, 200);
        let mut both = a.clone();
        both.extend_from_slice(&b);
        assert_eq!(last_batch_header(&both).unwrap().max_timestamp, 202);
        assert_eq!(last_batch_header(&both[..both.len() - 1]).unwrap().max_timestamp, 101);
        assert!(last_batch_header(&[]).is_none());
    }

    #[test]
    fn paced_requests_are_taken_as_they_arrive() {
        let ms = Duration::from_millis;
        let mut p = Paced::new(ms(2), 5);
        assert_eq!(p.next_arrival(), Some(ms(2)));
        assert!(p.take(ms(1), 10).is_empty()); // the first is there at 2 ms
        assert_eq!(p.take(ms(2), 10), 0..1);
        assert!(p.take(ms(3), 10).is_empty()); // taken already
        assert_eq!(p.next_arrival(), Some(ms(4)));
        // Behind: everything there is taken together, up to `max`.
        assert_eq!(p.take(ms(9), 2), 1..3);
        assert_eq!(p.take(ms(9), 10), 3..4);
        // Never more than `total`.
        assert_eq!(p.take(ms(100), 10), 4..5);
        assert_eq!(p.next_arrival(), None);
        assert!(p.take(ms(200), 10).is_empty());
    }

    #[test]
    fn record_spread_covers_the_linger() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        record_spread(&mut h, Duration::from_micros(500), Duration::from_micros(1000), 100);
        assert_eq!(h.len(), 100);
        // Spread over [0.5, 1.5] ms: the fastest record waited the least of the linger.
        assert!((500..600).contains(&h.min()), "{}", h.min());
        assert!((1400..1500).contains(&h.max()), "{}", h.max());
        assert!(h.mean() > 950.0 && h.mean() < 1050.0, "{}", h.mean());
        // Fewer records than points: one value each.
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        record_spread(&mut h, Duration::from_micros(500), Duration::from_micros(1000), 3);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn baseline_file_recycles_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let mut f = BaselineFile::create(&path).unwrap();
        let mut chunks = 0;
        timed_in_chunks(&mut f, 10, 3, 7, |f, n| {
            for _ in 0..n {
                f.write(b"abc").unwrap();
            }
            f.sync().unwrap();
            chunks += 1;
            assert_eq!(std::fs::metadata(f.path()).unwrap().len(), f.stored_bytes());
        });
        assert_eq!(chunks, 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 6);
        drop(f);
        assert!(!path.exists());
    }

    #[test]
    fn log_sink_recycles_to_an_empty_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::open(tmp.path(), millrace_storage::IoEngineChoice::Portable).unwrap();
        let batch = record_batch(SMALL_BATCH_PAYLOAD, 1);
        let len = batch.len() as u64;
        let mut sink = LogSink::open(&dir, "t", 0, bench_log_config());
        let mut appended = 0;
        timed_in_chunks(&mut sink, 7, len, 3 * len, |s, n| {
            assert!(s.stored_bytes() + n * len <= 3 * len);
            for _ in 0..n {
                s.log().append(&batch).unwrap().durable.wait().unwrap();
            }
            appended += n;
        });
        assert_eq!(appended, 7);
        assert_eq!(sink.stored_bytes(), len); // 3 + 3, recycled, then 1
        assert_eq!(sink.log().log_end_offset(), (SMALL_BATCH_PAYLOAD / RECORD_BYTES) as i64);
        let part = tmp.path().join("t-0");
        drop(sink);
        assert!(!part.exists());
    }

    #[test]
    fn chunks_stay_under_the_cap() {
        struct Counter {
            stored: u64,
            recycles: u32,
        }
        impl Sink for Counter {
            fn stored_bytes(&self) -> u64 {
                self.stored
            }
            fn recycle(&mut self) -> std::io::Result<()> {
                self.stored = 0;
                self.recycles += 1;
                Ok(())
            }
        }
        let mut c = Counter { stored: 0, recycles: 0 };
        let mut ran = 0;
        timed_in_chunks(&mut c, 25, 10, 100, |c, n| {
            c.stored += 10 * n;
            assert!(c.stored <= 100);
            ran += n;
        });
        assert_eq!((ran, c.recycles), (25, 2));
    }
}
