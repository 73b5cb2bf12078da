//! Helpers shared by the storage integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use millrace_storage::batch::{BatchBuilder, BatchHeader};
use millrace_storage::{IoEngineChoice, IoThread, Log, LogConfig};

/// A batch of `n` records whose values are derived from `seed`, with timestamps `ts, ts+1, ...`.
pub fn batch(seed: u64, n: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut v = vec![0u8; value_len];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
        for byte in v.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b.value(ts + i as i64, &v);
    }
    b.build()
}

/// The batches in a read result: `(base_offset, last_offset, bytes)`.
pub fn split(records: &[u8]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let h = BatchHeader::parse(&records[pos..]).expect("whole header");
        let len = h.total_len().expect("valid length");
        assert!(pos + len <= records.len(), "read returned a partial batch");
        out.push((h.base_offset, h.last_offset(), records[pos..pos + len].to_vec()));
        pos += len;
    }
    out
}

/// The batch as the log stores it: base offset and leader epoch 0 written in.
pub fn stored(mut b: Vec<u8>, base_offset: i64) -> Vec<u8> {
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b
}

pub fn io(dir: &Path, choice: IoEngineChoice) -> Arc<IoThread> {
    Arc::new(IoThread::start(dir, choice).expect("io thread"))
}

pub fn open(dir: &Path, config: LogConfig, io: &Arc<IoThread>) -> Log {
    Log::open(dir.join("t-0"), config, io.clone()).expect("open log")
}

/// Reads the whole visible log, batch by batch.
pub fn read_all(log: &Log) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let (start, hw, _) = log.offsets();
    let mut offset = start;
    while offset < hw {
        let r = log.read(offset, 1 << 20, true).expect("read");
        let batches = split(&r.records);
        let Some(last) = batches.last() else { break };
        offset = last.1 + 1;
        out.extend(batches);
    }
    out
}

/// Both write engines; io_uring only where the kernel allows it (said on stderr otherwise).
pub fn engines() -> Vec<IoEngineChoice> {
    let dir = tempfile::tempdir().unwrap();
    match IoThread::start(dir.path(), IoEngineChoice::IoUring) {
        Ok(_) => vec![IoEngineChoice::IoUring, IoEngineChoice::Portable],
        Err(e) => {
            eprintln!("io_uring unavailable here ({e}); testing the portable engine only");
            vec![IoEngineChoice::Portable]
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}

/// A small deterministic xorshift generator for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
