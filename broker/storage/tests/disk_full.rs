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
use millrace_storage::{
    now_ms, AppendInfo, DirectIo, Flush, IoEngineChoice, Log, LogConfig, StorageError,
};

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

/// The flush policy a run appends under.
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// Millrace's default: every append synced by the policy.
    Default,
    /// Kafka's own flush defaults (never by count or time): only appends made with
    /// `Flush::Now` (what acks=all producers get) are synced, so a failure must reach the
    /// append's sync request as it reaches the policy's syncs.
    Relaxed,
}

impl Policy {
    fn open(self, dir: &Path, engine: IoEngineChoice, direct: Option<u64>) -> Log {
        let io = io(dir, engine);
        io.set_direct_io(direct.map(DirectIo::with_cache));
        let cfg = match self {
            Policy::Default => config(),
            Policy::Relaxed => {
                LogConfig { flush_messages: i64::MAX, flush_ms: i64::MAX, ..config() }
            }
        };
        open(dir, cfg, &io)
    }

    /// Appends `records` as an acks=all produce request does under this policy.
    fn append(self, log: &Log, records: Vec<u8>) -> Result<AppendInfo, StorageError> {
        let flush = match self {
            Policy::Default => Flush::Policy,
            Policy::Relaxed => Flush::Now,
        };
        log.append_bytes(Bytes::from(records), now_ms(), 0, flush)
    }
}

/// Appends until the disk is full, each waiting for its durability.
fn fill_until_full(
    dir: &Path,
    engine: IoEngineChoice,
    direct: Option<u64>,
    policy: Policy,
) -> Vec<(i64, i64, Vec<u8>)> {
    let log = policy.open(dir, engine, direct);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..10_000u64 {
        let b = batch(i, 16, 1000, 0);
        let before = log.offsets();
        match policy
            .append(&log, b.clone())
            .map(|info| (info.base_offset, info.last_offset, info.durable.wait()))
        {
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
        "{engine:?}, direct {direct:?}, {policy:?}: disk full after {} batches: {e}",
        acked.len()
    );
    assert!(matches!(e, StorageError::LogDirFailed { .. } | StorageError::Io { .. }), "{e:?}");
    // The directory now refuses writes with a clear error, and still serves reads.
    let again = policy.append(&log, batch(1, 1, 10, 0)).unwrap_err();
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
    let policies = [Policy::Default, Policy::Relaxed];
    let modes = engines().into_iter().flat_map(|e| [(e, None), (e, Some(256 << 10))]);
    for (engine, direct, policy) in modes.flat_map(|(e, d)| policies.map(|p| (e, d, p))) {
        let Some(mount) = Mount::new(12) else {
            eprintln!("skipped: cannot loop-mount an ext4 image here (needs root and /dev/loop*)");
            return;
        };
        let dir = mount.point.join("data");
        std::fs::create_dir(&dir).unwrap();
        let ballast = mount.point.join("ballast");
        std::fs::write(&ballast, vec![7u8; 2 << 20]).unwrap();

        let acked = fill_until_full(&dir, engine, direct, policy);
        assert!(acked.len() > 50);

        // Free space, restart: everything acknowledged is there and appends continue.
        std::fs::remove_file(&ballast).unwrap();
        let log = policy.open(&dir, engine, direct);
        let all = read_all(&log);
        assert!(all.len() >= acked.len());
        assert_eq!(all[..acked.len()], acked[..]);
        let info = policy.append(&log, batch(99, 3, 100, 0)).unwrap();
        info.durable.wait().unwrap();
        log.close().unwrap();
    }
}
