//! A real full disk: a small ext4 image, loop-mounted (needs root and loop devices; the test
//! says so and returns when it cannot mount). Appends fail cleanly when the disk fills, every
//! acknowledged record stays readable, the directory refuses further writes, and after space
//! is freed a restart recovers everything acknowledged and takes appends again; through the page
//! cache and with direct I/O, under the default flush policy and under Kafka's (where only
//! acks=all appends, `Flush::Now`, are synced).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::*;
use millrace_storage::{now_ms, DirectIo, Flush, IoEngineChoice, Log, LogConfig, StorageError};

struct Mount {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn new(mib: u64) -> Option<Mount> {
        let dir = tempfile::tempdir().ok()?;
        let image = dir.path().join("fs.img");
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).ok()?;
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        let f = std::fs::File::create(&image).ok()?;
        f.set_len(mib << 20).ok()?;
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            || !ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&point))
        {
            return None;
        }
        Some(Mount { point, _dir: dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        segment_index_bytes: 64 * 1024,
        max_message_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// Kafka's own flush defaults (never by count or time): only appends made with `Flush::Now`
/// (what acks=all producers get) are synced.
fn relaxed() -> LogConfig {
    LogConfig { flush_messages: i64::MAX, flush_ms: i64::MAX, ..config() }
}

/// Appends until the disk is full, each waiting for its durability; `relaxed`: under
/// [`relaxed`], every append made with `Flush::Now`, so a failure must reach the append's sync
/// request as it reaches the policy's syncs.
fn fill_until_full(
    dir: &Path,
    engine: IoEngineChoice,
    direct: Option<u64>,
    relaxed_policy: bool,
) -> Vec<(i64, i64, Vec<u8>)> {
    let io = io(dir, engine);
    io.set_direct_io(direct.map(DirectIo::with_cache));
    let cfg = if relaxed_policy { relaxed() } else { config() };
    let log = Log::open(dir.join("t-0"), cfg, io.clone()).unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..10_000u64 {
        let b = batch(i, 16, 1000, 0);
        let before = log.offsets();
        let appended = if relaxed_policy {
            log.append_bytes(Bytes::copy_from_slice(&b), now_ms(), 0, Flush::Now)
        } else {
            log.append(&b)
        };
        match appended.map(|info| (info.base_offset, info.last_offset, info.durable.wait())) {
            Ok((base, last, Ok(()))) => acked.push((base, last, stored(b, base))),
            Ok((_, _, Err(e))) | Err(e) => {
                // Nothing of the failed append is visible.
                let after = log.offsets();
                assert!(after.1 <= before.2 && after.2 <= before.2 + 16, "{before:?} -> {after:?}");
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("the disk never filled up");
    eprintln!(
        "{engine:?}, direct {direct:?}, relaxed {relaxed_policy}: disk full after {} batches: {e}",
        acked.len()
    );
    assert!(matches!(e, StorageError::LogDirFailed { .. } | StorageError::Io { .. }), "{e:?}");
    // The directory now refuses writes with a clear error, and still serves reads.
    let again = if relaxed_policy {
        log.append_bytes(Bytes::from(batch(1, 1, 10, 0)), now_ms(), 0, Flush::Now)
    } else {
        log.append(&batch(1, 1, 10, 0))
    }
    .unwrap_err();
    assert!(matches!(again, StorageError::LogDirFailed { .. }), "{again:?}");
    assert_eq!(again.kafka_error_code(), 56);
    let (_, hw, leo) = log.offsets();
    let acked_end = acked.last().map_or(0, |a| a.1 + 1);
    assert_eq!((hw, leo), (acked_end, acked_end));
    assert_eq!(read_all(&log), acked);
    acked
}

#[test]
fn full_disk_fails_cleanly_and_loses_nothing_acknowledged() {
    init_tracing();
    // Both engines, through the page cache and with direct I/O, under the default flush policy
    // and under Kafka's (acks=all appends synced on request).
    let modes = engines().into_iter().flat_map(|e| {
        [(e, None), (e, Some(256 << 10))]
            .into_iter()
            .flat_map(|(e, d)| [(e, d, false), (e, d, true)])
    });
    for (engine, direct, relaxed_policy) in modes {
        let Some(mount) = Mount::new(12) else {
            eprintln!("skipped: cannot loop-mount an ext4 image here (needs root and /dev/loop*)");
            return;
        };
        let dir = mount.point.join("data");
        std::fs::create_dir(&dir).unwrap();
        let ballast = mount.point.join("ballast");
        std::fs::write(&ballast, vec![7u8; 2 << 20]).unwrap();

        let acked = fill_until_full(&dir, engine, direct, relaxed_policy);
        assert!(acked.len() > 50);

        // Free space, restart: everything acknowledged is there and appends continue.
        std::fs::remove_file(&ballast).unwrap();
        let io = io(&dir, engine);
        io.set_direct_io(direct.map(DirectIo::with_cache));
        let cfg = if relaxed_policy { relaxed() } else { config() };
        let log = Log::open(dir.join("t-0"), cfg, io.clone()).unwrap();
        let all = read_all(&log);
        assert!(all.len() >= acked.len());
        assert_eq!(all[..acked.len()], acked[..]);
        let info = if relaxed_policy {
            log.append_bytes(Bytes::from(batch(99, 3, 100, 0)), now_ms(), 0, Flush::Now)
        } else {
            log.append(&batch(99, 3, 100, 0))
        }
        .unwrap();
        info.durable.wait().unwrap();
        log.close().unwrap();
    }
}
