//! Criterion benchmarks of the partition log (`millrace-storage`), each next to a baseline that
//! moves the same bytes through the same file system with plain system calls.
//!
//! Run with `cargo bench -p millrace-bench --bench storage_log` (or `bench/run-storage-bench.sh`,
//! which also prints every log figure as a ratio to its baseline). Files go to a temporary
//! directory under `$MILLRACE_BENCH_DIR`, `$CARGO_TARGET_DIR` or the workspace's `target/`;
//! `MILLRACE_IO_ENGINE=portable|io_uring` picks the log directory's write engine (default: auto).
//!
//! Groups and what each function measures (log function → its baseline partner):
//!
//! * `append_16KiB/nowait`, `append_1MiB/nowait` — one appender appending 1 KiB records in
//!   batches of 16 KiB or 1 MiB without waiting for each append's durability.
//!   `log_1_appender` → `baseline_write_then_fdatasync`. The timed region of each sample (each
//!   chunk, see below) is the appends *and* a wait for the last append's durability, so the
//!   log's work is inside the measurement; the baseline writes the same batches with `write`
//!   and makes them durable with one `fdatasync` at the same point. Note that under
//!   `flush.messages=1` the log's I/O thread still fsyncs every group-commit round; the
//!   baseline's single fsync is the floor. Criterion reports the slope (per-append cost as the
//!   number of appends grows), so the closing fsync counts as a fixed cost per sample.
//! * `append_16KiB/durable`, `append_1MiB/durable` — every append waits for its `Durable`.
//!   `log_1_appender` → `baseline_write_fdatasync` (one `write` + `fdatasync` per batch);
//!   `log_8_appenders` → `baseline_8_writers_fdatasync`: 8 threads, each appending to its own
//!   partition of the same log directory (so they share the I/O thread and its fsync rounds),
//!   against 8 threads each doing `write` + `fdatasync` on its own file. One iteration is one
//!   batch per thread; throughput counts all 8.
//! * `append_16KiB/direct_durable`, `append_1MiB/direct_durable` — the same with the log
//!   directory writing with direct I/O (`LogDir::set_direct_io`): every append waits for its
//!   `Durable`. `log_1_appender` → `baseline_odirect_write_fdatasync`: the batch copied into an
//!   aligned buffer after the previous partial block, that block and the batch written with
//!   `O_DIRECT` from the block boundary, then `fdatasync` (the log's own work, with plain system
//!   calls).
//! * `read_256MiB/1MiB_reads` — a sequential scan of a prefilled log of 16 KiB batches (about
//!   256 MiB) with `Log::read(offset, 1 MiB, min_one)`, the next offset taken from the last
//!   batch's header. One iteration is one whole scan; the page cache is warm. `log_read` takes
//!   the zero-copy `Bytes` as they come (it touches only batch headers); `log_read_copy` also
//!   copies every returned byte into a buffer, which is what `baseline_pread` pays: `pread`s of
//!   the same sizes from a file holding the same bytes.
//! * `lookup_by_offset` — `Log::read(random offset, 1, min_one)` returning the one batch that
//!   holds the offset, in a log of 2^19 small batches (4 records of 64 bytes) in 64 MiB segments.
//!   `log_read_one_batch` → `baseline_sorted_vec_pread`: binary search of a dense in-memory
//!   table of every batch's last offset, then `pread` of that batch from a file of the same
//!   bytes (a perfect index over a flat file).
//! * `lookup_by_timestamp` — `Log::offset_for_timestamp(random timestamp)` on the same log.
//!   `log_offset_for_timestamp` → `baseline_sorted_vec_pread` (the same, over max timestamps).
//!
//! Writers never hold more than [`DISK_CAP_BYTES`] (split between the writers of a
//! benchmark): iterations run in chunks that fit, and between chunks the log or file is deleted
//! and created anew with the clock stopped. The single-appender logs roll a segment every
//! 256 MiB inside the measurement, as a real log does; the 8-appender logs (128 MiB each) don't.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use millrace_bench::{
    bench_log_config, bench_root, last_batch_header, pread_exact, record_batch, small_batch,
    timed_in_chunks, BaselineFile, KeyGen, LogSink, Sink, DISK_CAP_BYTES, LARGE_BATCH_PAYLOAD,
    SMALL_BATCH_PAYLOAD,
};
use millrace_storage::batch::BatchHeader;
use millrace_storage::{now_ms, DirectIo, IoEngineChoice, Log, LogDir};
use tempfile::TempDir;

/// Concurrent appenders of the `log_8_appenders` benchmarks.
const APPENDERS: usize = 8;
/// Size of the log the read benchmark scans.
const READ_LOG_BYTES: u64 = 256 * 1024 * 1024;
/// `max_bytes` of each read of the scan.
const READ_MAX_BYTES: usize = 1024 * 1024;
/// Batches in the lookup log, and their shape.
const LOOKUP_BATCHES: usize = 1 << 19;
const LOOKUP_RECORDS_PER_BATCH: usize = 4;
const LOOKUP_VALUE_BYTES: usize = 64;
/// Batches per append while filling the lookup log (one produce request's worth).
const LOOKUP_BATCHES_PER_APPEND: usize = 256;
const LOOKUP_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Timestamp of the first record of the lookup log; record `i` has offset `i` and timestamp
/// `LOOKUP_T0 + i`.
const LOOKUP_T0: i64 = 1_700_000_000_000;

fn temp_dir(what: &str) -> TempDir {
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("creating the benchmark root");
    tempfile::Builder::new()
        .prefix(&format!("millrace-bench-{what}-"))
        .tempdir_in(&root)
        .expect("creating a benchmark directory")
}

fn open_log_dir(tmp: &TempDir) -> LogDir {
    let dir = LogDir::open(tmp.path().join("logs"), IoEngineChoice::from_env())
        .expect("opening the log directory");
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "storage_log: log directory engine {:?}, files under {}",
            dir.engine(),
            tmp.path().parent().unwrap_or(tmp.path()).display()
        );
    }
    dir
}

/// A group of the disk benchmarks' shape: 10 samples, 1 s of warm-up, 5 s measured, `bytes`
/// counted per iteration.
fn disk_group<'a>(c: &'a mut Criterion, name: String, bytes: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5)).throughput(Throughput::Bytes(bytes));
    group
}

fn append_nowait(c: &mut Criterion, label: &str, payload: usize) {
    let tmp = temp_dir("append");
    let dir = open_log_dir(&tmp);
    let batch = record_batch(payload, now_ms());
    let len = batch.len() as u64;

    let mut group = disk_group(c, format!("append_{label}/nowait"), len);

    let mut sink = LogSink::open(&dir, "nowait", 0, bench_log_config());
    group.bench_function("log_1_appender", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&mut sink, iters, len, DISK_CAP_BYTES, |s, n| {
                let mut last = None;
                for _ in 0..n {
                    last = Some(s.log().append(&batch).expect("append").durable);
                }
                if let Some(d) = last {
                    d.wait().expect("durable");
                }
            })
        })
    });
    drop(sink);

    let mut file = BaselineFile::create(tmp.path().join("baseline-nowait")).expect("create");
    group.bench_function("baseline_write_then_fdatasync", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&mut file, iters, len, DISK_CAP_BYTES, |f, n| {
                for _ in 0..n {
                    f.write(&batch).expect("write");
                }
                f.sync().expect("fdatasync");
            })
        })
    });
    group.finish();
}

/// `log_1_appender` of a durable group: appends `batch` to `topic` in `dir`, waiting for each.
fn log_1_appender_durable(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &LogDir,
    topic: &str,
    batch: &[u8],
) {
    let len = batch.len() as u64;
    let mut sink = LogSink::open(dir, topic, 0, bench_log_config());
    group.bench_function("log_1_appender", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&mut sink, iters, len, DISK_CAP_BYTES, |s, n| {
                for _ in 0..n {
                    s.log().append(batch).expect("append").durable.wait().expect("durable");
                }
            })
        })
    });
}

/// A baseline that writes `batch` and fdatasyncs after each, as function `name`.
fn baseline_write_fdatasync(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    file: &mut BaselineFile,
    batch: &[u8],
) {
    let len = batch.len() as u64;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(file, iters, len, DISK_CAP_BYTES, |f, n| {
                for _ in 0..n {
                    f.write(batch).expect("write");
                    f.sync().expect("fdatasync");
                }
            })
        })
    });
}

fn append_durable(c: &mut Criterion, label: &str, payload: usize) {
    let tmp = temp_dir("append");
    let dir = open_log_dir(&tmp);
    let batch = record_batch(payload, now_ms());
    let len = batch.len() as u64;

    let mut group = disk_group(c, format!("append_{label}/durable"), len);
    log_1_appender_durable(&mut group, &dir, "durable", &batch);
    let mut file = BaselineFile::create(tmp.path().join("baseline-durable")).expect("create");
    baseline_write_fdatasync(&mut group, "baseline_write_fdatasync", &mut file, &batch);
    drop(file);

    let cap = DISK_CAP_BYTES / APPENDERS as u64;
    group.throughput(Throughput::Bytes(len * APPENDERS as u64));
    let mut sinks: Vec<LogSink<'_>> = (0..APPENDERS)
        .map(|p| LogSink::open(&dir, "durable8", p as i32, bench_log_config()))
        .collect();
    group.bench_function("log_8_appenders", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&mut sinks, iters, len, cap, |sinks, n| {
                std::thread::scope(|scope| {
                    for s in sinks.iter() {
                        let batch = &batch;
                        scope.spawn(move || {
                            for _ in 0..n {
                                let info = s.log().append(batch).expect("append");
                                info.durable.wait().expect("durable");
                            }
                        });
                    }
                });
            })
        })
    });
    drop(sinks);

    let mut files: Vec<BaselineFile> = (0..APPENDERS)
        .map(|i| BaselineFile::create(tmp.path().join(format!("baseline-durable8-{i}"))))
        .collect::<std::io::Result<_>>()
        .expect("create");
    group.bench_function("baseline_8_writers_fdatasync", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&mut files, iters, len, cap, |files, n| {
                std::thread::scope(|scope| {
                    for f in files.iter_mut() {
                        let batch = &batch;
                        scope.spawn(move || {
                            for _ in 0..n {
                                f.write(batch).expect("write");
                                f.sync().expect("fdatasync");
                            }
                        });
                    }
                });
            })
        })
    });
    group.finish();
}

/// With direct I/O (`LogDir::set_direct_io`): one appender waiting for every append, against
/// the same copy and `O_DIRECT` write + `fdatasync` done with plain system calls.
fn append_direct(c: &mut Criterion, label: &str, payload: usize) {
    let tmp = temp_dir("append-direct");
    let batch = record_batch(payload, now_ms());
    let len = batch.len() as u64;
    // Where the file system refuses O_DIRECT the log would write through the page cache: there
    // is nothing to compare, so the group is skipped.
    let path = tmp.path().join("baseline-direct");
    let mut file = match BaselineFile::create_direct(path, batch.len()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("append_{label}/direct_durable skipped: O_DIRECT refused here ({e})");
            return;
        }
    };
    let dir = open_log_dir(&tmp);
    dir.set_direct_io(Some(DirectIo::with_cache(8 << 20)));

    let mut group = disk_group(c, format!("append_{label}/direct_durable"), len);
    log_1_appender_durable(&mut group, &dir, "direct", &batch);
    baseline_write_fdatasync(&mut group, "baseline_odirect_write_fdatasync", &mut file, &batch);
    group.finish();
}

fn append(c: &mut Criterion) {
    for (label, payload) in [("16KiB", SMALL_BATCH_PAYLOAD), ("1MiB", LARGE_BATCH_PAYLOAD)] {
        append_nowait(c, label, payload);
        append_durable(c, label, payload);
        append_direct(c, label, payload);
    }
}

/// Scans `log` from its start to its high watermark with reads of at most `READ_MAX_BYTES`,
/// handing each read's records to `consume`; returns the bytes read.
fn scan(log: &Log, mut consume: impl FnMut(&[u8])) -> u64 {
    let (start, high_watermark, _) = log.offsets();
    let mut offset = start;
    let mut total = 0u64;
    while offset < high_watermark {
        let read = log.read(offset, READ_MAX_BYTES, true).expect("read");
        let Some(last) = last_batch_header(&read.records) else {
            panic!("read at {offset} below the high watermark {high_watermark} returned nothing")
        };
        consume(&read.records);
        total += read.records.len() as u64;
        offset = last.last_offset() + 1;
    }
    total
}

fn read(c: &mut Criterion) {
    let tmp = temp_dir("read");
    let dir = open_log_dir(&tmp);
    let batch = record_batch(SMALL_BATCH_PAYLOAD, now_ms());
    let sink = LogSink::open(&dir, "read", 0, bench_log_config());
    let mut file = BaselineFile::create(tmp.path().join("baseline-read")).expect("create");
    let mut last = None;
    while file.stored_bytes() < READ_LOG_BYTES {
        last = Some(sink.log().append(&batch).expect("append").durable);
        file.write(&batch).expect("write");
    }
    if let Some(d) = last {
        d.wait().expect("durable");
    }
    file.sync().expect("fdatasync");
    let log = sink.log();
    assert_eq!(log.size_bytes(), file.stored_bytes());

    // One scan up front: the sizes of the reads, for the baseline to repeat.
    let mut sizes = Vec::new();
    let total = scan(log, |r| sizes.push(r.len()));
    assert_eq!(total, file.stored_bytes(), "a scan must return every byte of the log once");
    let reader = std::fs::File::open(file.path()).expect("open");

    let mut group = disk_group(c, "read_256MiB/1MiB_reads".to_string(), total);
    group.bench_function("log_read", |b| {
        b.iter(|| {
            scan(log, |r| {
                black_box(r);
            })
        });
    });
    let mut buf = vec![0u8; READ_MAX_BYTES * 2];
    group.bench_function("log_read_copy", |b| {
        b.iter(|| {
            scan(log, |r| {
                buf[..r.len()].copy_from_slice(r);
                black_box(&buf);
            })
        });
    });
    group.bench_function("baseline_pread", |b| {
        b.iter(|| {
            let mut position = 0u64;
            for &n in &sizes {
                pread_exact(&reader, &mut buf, position, n);
                black_box(&buf);
                position += n as u64;
            }
            position
        });
    });
    group.finish();
}

/// A log of many small batches and a dense table of them, for the lookup benchmarks.
struct LookupLog {
    /// Per batch, in order: last offset, max timestamp, file position, length.
    last_offsets: Vec<i64>,
    max_timestamps: Vec<i64>,
    positions: Vec<u64>,
    lens: Vec<usize>,
    /// The same batches in one plain file.
    baseline: BaselineFile,
}

fn fill_lookup_log(log: &Log, baseline_path: std::path::PathBuf) -> LookupLog {
    let mut t = LookupLog {
        last_offsets: Vec::with_capacity(LOOKUP_BATCHES),
        max_timestamps: Vec::with_capacity(LOOKUP_BATCHES),
        positions: Vec::with_capacity(LOOKUP_BATCHES),
        lens: Vec::with_capacity(LOOKUP_BATCHES),
        baseline: BaselineFile::create(baseline_path).expect("create"),
    };
    let per = LOOKUP_RECORDS_PER_BATCH as i64;
    let mut request = Vec::new();
    let mut last = None;
    for i in 0..LOOKUP_BATCHES {
        let first_offset = i as i64 * per;
        let b = small_batch(LOOKUP_RECORDS_PER_BATCH, LOOKUP_VALUE_BYTES, LOOKUP_T0 + first_offset);
        t.last_offsets.push(first_offset + per - 1);
        t.max_timestamps.push(LOOKUP_T0 + first_offset + per - 1);
        t.positions.push(t.baseline.stored_bytes() + request.len() as u64);
        t.lens.push(b.len());
        request.extend_from_slice(&b);
        if (i + 1) % LOOKUP_BATCHES_PER_APPEND == 0 || i + 1 == LOOKUP_BATCHES {
            last = Some(log.append(&request).expect("append").durable);
            t.baseline.write(&request).expect("write");
            request.clear();
        }
    }
    if let Some(d) = last {
        d.wait().expect("durable");
    }
    t.baseline.sync().expect("fdatasync");
    t
}

/// Checks lookups against the dense table before timing them: a benchmark of wrong answers is
/// worthless.
fn check_lookups(log: &Log, t: &LookupLog, reader: &std::fs::File) {
    let mut keys = KeyGen::new(7);
    let end = *t.last_offsets.last().expect("batches") + 1;
    let mut buf = Vec::new();
    for _ in 0..2000 {
        let offset = keys.in_range(0, end);
        let i = t.last_offsets.partition_point(|&l| l < offset);
        let records = log.read(offset, 1, true).expect("read").records;
        let h = BatchHeader::parse(&records).expect("a batch");
        assert_eq!(records.len(), t.lens[i], "read({offset}, 1, true) must return one batch");
        assert_eq!(h.last_offset(), t.last_offsets[i], "wrong batch for offset {offset}");
        pread_exact(reader, &mut buf, t.positions[i], t.lens[i]);
        // Bytes 0..16 are the broker's (base offset, leader epoch); the rest is the producer's.
        assert_eq!(records[16..], buf[16..], "batch bytes differ for offset {offset}");

        let ts = LOOKUP_T0 + keys.in_range(0, end);
        let found = log.offset_for_timestamp(ts).expect("lookup").expect("a record");
        assert_eq!(found.record, Some((ts - LOOKUP_T0, ts)), "offset_for_timestamp({ts})");
    }
}

fn lookup(c: &mut Criterion) {
    let tmp = temp_dir("lookup");
    let dir = open_log_dir(&tmp);
    let config =
        millrace_storage::LogConfig { segment_bytes: LOOKUP_SEGMENT_BYTES, ..bench_log_config() };
    let sink = LogSink::open(&dir, "lookup", 0, config);
    let log = sink.log();
    let t = fill_lookup_log(log, tmp.path().join("baseline-lookup"));
    let reader = std::fs::File::open(t.baseline.path()).expect("open");
    check_lookups(log, &t, &reader);
    let end = *t.last_offsets.last().expect("batches") + 1;
    eprintln!(
        "storage_log: lookup log of {} batches, {} records, {} bytes in {} segments",
        LOOKUP_BATCHES,
        end,
        log.size_bytes(),
        log.segment_count()
    );

    let mut group = c.benchmark_group("lookup_by_offset");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    let mut keys = KeyGen::new(1);
    group.bench_function("log_read_one_batch", |b| {
        b.iter(|| black_box(log.read(keys.in_range(0, end), 1, true).expect("read")));
    });
    let mut keys = KeyGen::new(1);
    let mut buf = Vec::new();
    group.bench_function("baseline_sorted_vec_pread", |b| {
        b.iter(|| {
            let offset = keys.in_range(0, end);
            let i = t.last_offsets.partition_point(|&l| l < offset);
            pread_exact(&reader, &mut buf, t.positions[i], t.lens[i]);
            black_box(&buf);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("lookup_by_timestamp");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    let mut keys = KeyGen::new(2);
    group.bench_function("log_offset_for_timestamp", |b| {
        b.iter(|| {
            let ts = LOOKUP_T0 + keys.in_range(0, end);
            black_box(log.offset_for_timestamp(ts).expect("lookup"))
        });
    });
    let mut keys = KeyGen::new(2);
    group.bench_function("baseline_sorted_vec_pread", |b| {
        b.iter(|| {
            let ts = LOOKUP_T0 + keys.in_range(0, end);
            let i = t.max_timestamps.partition_point(|&m| m < ts);
            pread_exact(&reader, &mut buf, t.positions[i], t.lens[i]);
            black_box(&buf);
        });
    });
    group.finish();
}

criterion_group!(benches, append, read, lookup);
criterion_main!(benches);
