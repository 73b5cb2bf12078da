//! Behaviour of one partition log through its public API, on both write engines.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use millrace_storage::batch::BatchHeader;
use millrace_storage::{DirectIo, Flush, Log, LogConfig, StorageError, TimestampType};

#[test]
fn append_assigns_offsets_and_reads_back_byte_exact() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let io = io(dir.path(), engine);
        let log = open(dir.path(), LogConfig::default(), &io);
        assert_eq!(log.offsets(), (0, 0, 0));
        let mut expected = Vec::new();
        let mut next = 0;
        for i in 0..50u64 {
            let n = 1 + (i as usize % 7);
            let b = batch(i, n, 100, 1_000 + i as i64);
            let info = log.append(&b).unwrap();
            assert_eq!((info.base_offset, info.last_offset), (next, next + n as i64 - 1));
            assert_eq!(info.log_append_time_ms, -1);
            info.durable.wait().unwrap();
            expected.push((next, next + n as i64 - 1, stored(b, next)));
            next += n as i64;
        }
        // Several batches in one append (as a produce request may carry): one vectored write.
        let three: Vec<Vec<u8>> = (0..3).map(|i| batch(100 + i, 2, 50, 7)).collect();
        let info = log.append(&three.concat()).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (next, next + 5));
        info.durable.wait().unwrap();
        for b in three {
            expected.push((next, next + 1, stored(b, next)));
            next += 2;
        }
        assert_eq!(log.offsets(), (0, next, next));
        assert_eq!(read_all(&log), expected, "engine {engine:?}");
        // A read in the middle of a batch returns that whole batch.
        let (b, l, bytes) = &expected[10];
        let r = log.read(b + 1, 1, true).unwrap();
        assert_eq!(r.records.as_ref(), &bytes[..]);
        assert!(l > b, "batch 10 has several records");
        // max_bytes without min_one returns nothing when the first batch does not fit.
        assert!(log.read(*b, 10, false).unwrap().records.is_empty());
        // At the end: empty; past the end: out of range.
        assert!(log.read(next, 1 << 20, true).unwrap().records.is_empty());
        assert!(matches!(log.read(next + 1, 1, true), Err(StorageError::OffsetOutOfRange { .. })));
        log.close().unwrap();
    }
}

#[test]
fn invalid_batches_are_rejected_and_leave_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config = LogConfig { max_message_bytes: 2_000, ..LogConfig::default() };
    let log = open(dir.path(), config, &io);
    log.append(&batch(1, 3, 10, 5)).unwrap().durable.wait().unwrap();
    let before = (log.offsets(), log.size_bytes());

    let mut bad_crc = batch(2, 3, 10, 5);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let e = log.append(&bad_crc).unwrap_err();
    assert!(matches!(e, StorageError::CorruptMessage(_)), "{e}");
    assert_eq!(e.kafka_error_code(), 2);

    let e = log.append(&batch(3, 3, 1_000, 5)).unwrap_err();
    assert!(matches!(e, StorageError::MessageTooLarge { .. }), "{e}");
    assert_eq!(e.kafka_error_code(), 10);

    // A good batch followed by a truncated one: nothing of the append is taken.
    let mut two = batch(4, 2, 10, 5);
    two.extend_from_slice(&batch(5, 2, 10, 5)[..70]);
    assert!(log.append(&two).is_err());
    assert!(log.append(&[]).is_err());
    assert!(log.append(&[0u8; 3]).is_err());

    assert_eq!((log.offsets(), log.size_bytes()), before);
    log.append(&batch(6, 1, 10, 5)).unwrap().durable.wait().unwrap();
    assert_eq!(log.log_end_offset(), 4);
}

#[test]
fn log_append_time_rewrites_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config =
        LogConfig { message_timestamp_type: TimestampType::LogAppendTime, ..LogConfig::default() };
    let log = open(dir.path(), config, &io);
    let info = log.append_at(&batch(1, 4, 10, 5), 1_700_000_000_000, 7).unwrap();
    assert_eq!(info.log_append_time_ms, 1_700_000_000_000);
    info.durable.wait().unwrap();
    let r = log.read(0, 1 << 20, true).unwrap();
    let h = BatchHeader::parse(&r.records).unwrap();
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, 1_700_000_000_000);
    assert_eq!(h.partition_leader_epoch, 7);
    // The stored batch still passes validation (CRC recomputed).
    millrace_storage::batch::validate(&r.records, 1 << 20).unwrap();
}

#[test]
fn segments_roll_by_size_and_time_and_reopen_cleanly() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let io = io(dir.path(), engine);
        let config = LogConfig {
            segment_bytes: 4_096,
            index_interval_bytes: 512,
            segment_ms: 60_000,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), &io);
        let mut next = 0;
        for i in 0..100u64 {
            let info = log.append_at(&batch(i, 3, 100, i as i64), 1_000, 0).unwrap();
            next = info.last_offset + 1;
        }
        log.flush().unwrap().wait().unwrap();
        let segments = log.segment_base_offsets();
        assert!(segments.len() >= 9, "{segments:?}");
        // Time-based roll: a batch appended segment.ms after the segment's first one.
        log.append_at(&batch(999, 1, 10, 0), 1_000 + 60_000, 0).unwrap().durable.wait().unwrap();
        assert_eq!(log.segment_count(), segments.len() + 1);
        next += 1;
        let all = read_all(&log);
        assert_eq!(all.last().unwrap().1, next - 1);
        // Files are named by base offset in 20 digits; sealed indexes are trimmed (sealing runs
        // on the background thread, which close waits for).
        let name = format!("{:020}", segments[1]);
        let log_dir = dir.path().join("t-0");
        assert!(log_dir.join(format!("{name}.log")).exists());
        log.close().unwrap();
        let idx_len = std::fs::metadata(log_dir.join(format!("{name}.index"))).unwrap().len();
        assert!(idx_len < 1024 && idx_len.is_multiple_of(8), "trimmed offset index: {idx_len}");
        drop(log);
        // A clean open leaves the sealed segments' trimmed indexes alone: no cut, no sync (a
        // cut to the same length would still stamp the files, and each sync costs a disk
        // flush, times thousands of segments at a broker's start).
        let stamps = |kind: &str| -> Vec<std::time::SystemTime> {
            segments[..segments.len() - 1]
                .iter()
                .map(|b| log_dir.join(format!("{b:020}.{kind}")))
                .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
                .collect()
        };
        let before = (stamps("index"), stamps("timeindex"));
        std::thread::sleep(Duration::from_millis(20));

        let log = open(dir.path(), config, &io);
        let report = log.open_report().clone();
        assert!(report.clean && report.segments_recovered == 0, "{report:?}");
        assert_eq!((stamps("index"), stamps("timeindex")), before, "sealed indexes touched");
        assert_eq!(log.offsets(), (0, next, next));
        assert_eq!(read_all(&log), all);
        // Appends continue where they were.
        let info = log.append(&batch(5, 2, 10, 5)).unwrap();
        assert_eq!(info.base_offset, next);
        info.durable.wait().unwrap();
    }
}

#[test]
fn unclean_reopen_recovers_only_from_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config = LogConfig { segment_bytes: 8_192, ..LogConfig::default() };
    let log = open(dir.path(), config.clone(), &io);
    for i in 0..200u64 {
        log.append(&batch(i, 2, 100, 10)).unwrap();
    }
    log.flush().unwrap().wait().unwrap();
    let all = read_all(&log);
    let segments = log.segment_count();
    // Rolled segments are sealed, and the recovery point moved, in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.recovery_point() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(log.recovery_point() > 0);
    drop(log); // no close: unclean
    let log = open(dir.path(), config, &io);
    let report = log.open_report().clone();
    assert!(!report.clean);
    assert!(
        report.segments_recovered >= 1 && report.segments_recovered <= 2,
        "{report:?} of {segments}"
    );
    assert!(report.truncations.is_empty());
    assert_eq!(read_all(&log), all);
}

#[test]
fn lookups_by_timestamp_and_max_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config =
        LogConfig { segment_bytes: 2_048, index_interval_bytes: 256, ..LogConfig::default() };
    let log = open(dir.path(), config, &io);
    // Batch i holds 4 records with timestamps 100*i .. 100*i+3; batch 7 goes back in time.
    for i in 0..40i64 {
        let ts = if i == 7 { 5 } else { 100 * i };
        log.append(&batch(i as u64, 4, 50, ts)).unwrap();
    }
    log.flush().unwrap().wait().unwrap();
    let find = |t| log.offset_for_timestamp(t).unwrap().and_then(|l| l.record);
    assert_eq!(find(0), Some((0, 0)));
    assert_eq!(find(102), Some((4 + 2, 102)));
    assert_eq!(find(103), Some((7, 103)));
    assert_eq!(find(104), Some((8, 200)));
    assert_eq!(find(1_000), Some((40, 1_000)));
    assert_eq!(find(3_903), Some((159, 3_903)));
    assert_eq!(find(3_904), None);
    // Batch 7 (offsets 28..31) is older than its neighbours: the answer is the first record in
    // offset order whose timestamp is at or after the target, not the closest timestamp.
    assert_eq!(find(6), Some((4, 100)));
    assert_eq!(find(701), Some((32, 800)));
    let max = log.max_timestamp().unwrap().unwrap();
    assert_eq!(max.record, Some((159, 3_903)));
}

#[test]
fn delete_records_and_retention_advance_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config = LogConfig { segment_bytes: 2_048, ..LogConfig::default() };
    let log = open(dir.path(), config.clone(), &io);
    for i in 0..60i64 {
        log.append_at(&batch(i as u64, 2, 100, 1_000 + i), 1_000 + i, 0).unwrap();
    }
    log.flush().unwrap().wait().unwrap();
    let (_, hw, leo) = log.offsets();
    assert_eq!((hw, leo), (120, 120));
    let segments = log.segment_count();

    assert!(matches!(log.delete_records(121), Err(StorageError::OffsetOutOfRange { .. })));
    assert_eq!(log.delete_records(31).unwrap(), 31);
    assert_eq!(log.log_start_offset(), 31);
    assert!(log.segment_count() < segments);
    assert!(matches!(log.read(30, 1, true), Err(StorageError::OffsetOutOfRange { .. })));
    // The batch holding 31 starts at 30: it is returned whole.
    let r = log.read(31, 1, true).unwrap();
    assert_eq!(split(&r.records)[0].0, 30);
    assert_eq!(r.log_start_offset, 31);
    assert_eq!(log.delete_records(10).unwrap(), 31, "moving back is a no-op");

    // The log start survives an unclean restart.
    drop(log);
    let log = open(dir.path(), config.clone(), &io);
    assert_eq!(log.log_start_offset(), 31);

    // retention.bytes keeps the newest segments within the limit.
    let size = log.size_bytes();
    log.set_config(LogConfig {
        retention_bytes: (size / 2) as i64,
        retention_ms: -1,
        ..config.clone()
    })
    .unwrap();
    let r = log.enforce_retention(10_000).unwrap();
    assert!(r.segments_deleted > 0);
    assert!(log.size_bytes() <= size / 2 + 2_048, "{} of {size}", log.size_bytes());
    assert_eq!(log.log_start_offset(), log.segment_base_offsets()[0]);

    // retention.ms: everything older than 1 s at t=10 s goes, the active segment included.
    log.set_config(LogConfig { retention_ms: 1_000, ..config }).unwrap();
    let r = log.enforce_retention(10_000).unwrap();
    assert!(r.segments_deleted > 0);
    assert_eq!(log.offsets(), (120, 120, 120));
    assert_eq!(log.segment_count(), 1);
    let info = log.append(&batch(1, 1, 10, 0)).unwrap();
    assert_eq!(info.base_offset, 120);
    info.durable.wait().unwrap();
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), LogConfig::default(), &io);
    assert_eq!(log.offsets(), (120, 121, 121));
}

#[test]
fn relaxed_flush_policy_shows_data_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let config = LogConfig { flush_messages: 1_000_000, flush_ms: 200, ..LogConfig::default() };
    let log = open(dir.path(), config, &io);
    let info = log.append(&batch(1, 3, 10, 5)).unwrap();
    let seen = log.data_version();
    // Written (page cache, what acks=1 waits for) comes before durable (flush.ms = 200).
    info.written.wait().unwrap();
    assert!(!info.durable.is_done());
    let file = dir.path().join("t-0").join(format!("{:020}.log", 0));
    assert!(std::fs::metadata(file).unwrap().len() > 61);
    // Visible once written, durable only at the next flush (flush.ms = 200).
    let t = std::time::Instant::now();
    while log.high_watermark() < 3 {
        log.wait_for_data(seen, Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    info.durable.wait().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150), "flushed by flush.ms, not at once");
    assert_eq!(log.durable_end(), 3);
}

/// Under Kafka's own flush defaults (both `Long.MAX_VALUE`: never by count or time), an append
/// with `Flush::Now` (an acks=all producer's) is synced at the next group commit, together with
/// what the policy left unsynced before it, and the policy still governs `Flush::Policy`.
#[test]
fn a_flush_now_append_is_synced_whatever_the_policy() {
    for engine in engines() {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let io = io(dir.path(), engine);
            if direct {
                io.set_direct_io(Some(DirectIo::with_cache(1 << 20)));
            }
            let config =
                LogConfig { flush_messages: i64::MAX, flush_ms: i64::MAX, ..LogConfig::default() };
            let log = open(dir.path(), config, &io);
            let first = log.append(&batch(1, 3, 10, 5)).unwrap();
            first.written.wait().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert!(!first.durable.is_done(), "the policy never syncs by itself");
            assert_eq!(log.durable_end(), 0);

            let now = log.append_bytes(Bytes::from(batch(2, 2, 10, 6)), 7, 0, Flush::Now).unwrap();
            let t = std::time::Instant::now();
            while !now.durable.is_done() {
                assert!(t.elapsed() < Duration::from_secs(5), "{engine:?} direct={direct}");
                std::thread::sleep(Duration::from_millis(1));
            }
            now.durable.wait().unwrap();
            assert!(first.durable.is_done(), "the sync covers the appends before it");
            first.durable.wait().unwrap();
            assert_eq!(log.durable_end(), 5);

            let later = log.append(&batch(3, 1, 10, 7)).unwrap();
            later.written.wait().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert!(!later.durable.is_done(), "{engine:?} direct={direct}: policy again");
            assert_eq!(log.offsets(), (0, 6, 6), "visible once written under this policy");
            log.close().unwrap();
        }
    }
}

/// A `Flush::Now` append that arrives while its log's sync runs waits for the next group
/// commit, which must still come under a policy that never syncs by itself. Two logs flushed
/// together put their syncs in the io_uring ring (in flight while the I/O thread goes on); the
/// append follows a moment later. Many rounds, on both engines.
#[test]
fn a_flush_now_append_behind_a_running_sync_is_synced_next() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let io = io(dir.path(), engine);
        let config =
            LogConfig { flush_messages: i64::MAX, flush_ms: i64::MAX, ..LogConfig::default() };
        let a = open(dir.path(), config.clone(), &io);
        let b = Log::open(dir.path().join("t-1"), config, io.clone()).unwrap();
        for i in 0..300u64 {
            for log in [&a, &b] {
                let _ = log.append(&batch(i, 1, 64_000, 5)).unwrap();
            }
            let flushed = [a.flush().unwrap(), b.flush().unwrap()];
            // Spread over the sync's time: sometimes before it starts, mostly while it runs.
            let spin = std::time::Instant::now();
            while spin.elapsed() < Duration::from_micros(i % 200) {
                std::hint::spin_loop();
            }
            let now = a.append_bytes(Bytes::from(batch(i, 1, 10, 6)), 7, 0, Flush::Now).unwrap();
            let t = std::time::Instant::now();
            while !now.durable.is_done() {
                assert!(t.elapsed() < Duration::from_secs(5), "{engine:?}, round {i}");
                std::thread::yield_now();
            }
            now.durable.wait().unwrap();
            for f in flushed {
                f.wait().unwrap();
            }
        }
        assert_eq!(a.durable_end(), 600);
        a.close().unwrap();
        b.close().unwrap();
    }
}

#[test]
fn many_appenders_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engines()[0]);
    let logs: Vec<_> = (0..8)
        .map(|p| {
            millrace_storage::Log::open(
                dir.path().join(format!("t-{p}")),
                LogConfig::default(),
                io.clone(),
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for log in &logs {
            s.spawn(move || {
                for i in 0..200u64 {
                    log.append(&batch(i, 2, 100, 5)).unwrap().durable.wait().unwrap();
                }
            });
        }
    });
    for log in &logs {
        assert_eq!(log.offsets(), (0, 400, 400));
        assert_eq!(read_all(log).len(), 200);
    }
}

#[test]
fn appends_in_a_burst_are_synced_while_the_burst_is_held() {
    // A burst only changes where an fdatasync runs (io_uring rather than the I/O thread); it
    // must never hold durability back, on either engine.
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let io = io(dir.path(), engine);
        let logs: Vec<_> = (0..3)
            .map(|p| open(&dir.path().join(format!("t-{p}")), LogConfig::default(), &io))
            .collect();
        let _burst = millrace_storage::AppendBurst::start();
        for round in 0..3u64 {
            let waits: Vec<_> = logs
                .iter()
                .map(|log| log.append(&batch(round, 2, 50, 5)).unwrap().durable)
                .collect();
            for w in waits {
                w.wait().unwrap();
            }
        }
        for log in &logs {
            assert_eq!(log.durable_end(), 6, "{engine:?}");
        }
    }
}

/// Share of `path`'s pages in `range` (a fraction of the file) that are in the page cache.
fn resident_share(path: &std::path::Path, range: std::ops::Range<f64>) -> f64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only map of a file nothing truncates while the test looks at it.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = map.len().div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: `v` has one byte per page of the mapping, as mincore requires.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    let (a, b) = ((range.start * pages as f64) as usize, (range.end * pages as f64) as usize);
    v[a..b].iter().filter(|p| *p & 1 == 1).count() as f64 / (b - a) as f64
}

/// Whether the file system of `dir` lets `POSIX_FADV_DONTNEED` drop a synced file's pages
/// (not on tmpfs, where the page cache is the storage, nor wherever the advice is a no-op).
fn dontneed_drops_pages(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.join("probe");
    std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain system call on an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let dropped = resident_share(&path, 0.0..1.0) < 0.05;
    std::fs::remove_file(&path).unwrap();
    dropped
}

#[test]
fn page_cache_window_drops_older_pages_and_reads_stay_whole() {
    let probe = tempfile::tempdir().unwrap();
    if !dontneed_drops_pages(probe.path()) {
        eprintln!("POSIX_FADV_DONTNEED drops no pages in the temp dir (tmpfs?): skipped");
        return;
    }
    for engine in engines() {
        for window in [Some(1u64 << 20), None] {
            let dir = tempfile::tempdir().unwrap();
            let io = io(dir.path(), engine);
            io.set_page_cache_window(window);
            let log = open(dir.path(), LogConfig::default(), &io);
            let mut written = Vec::new();
            for i in 0..160u64 {
                let b = batch(i, 16, 8_000, i as i64);
                let info = log.append(&b).unwrap();
                info.durable.wait().unwrap();
                written.push((info.base_offset, info.last_offset, stored(b, info.base_offset)));
            }
            // 20 MB in one segment; the first half is far behind the last MiB.
            let file = dir.path().join("t-0").join(format!("{:020}.log", 0));
            let old = resident_share(&file, 0.0..0.5);
            let newest = resident_share(&file, 0.97..1.0);
            match window {
                Some(_) => assert!(old < 0.05 && newest > 0.9, "window: {old} {newest}"),
                None => assert!(old > 0.9 && newest > 0.9, "no window: {old} {newest}"),
            }
            assert_eq!(read_all(&log), written, "{window:?}");
            log.close().unwrap();
        }
    }
}
