//! Millrace's storage: the partitioned append-only log that every other part of the broker
//! stands on. Kafka v2 record batches are stored byte for byte in segment files with sparse,
//! memory-mapped offset and time indexes; appends are written by one I/O thread per log
//! directory (io_uring, with a portable fallback) and group-committed with one `fdatasync` per
//! partition per round; recovery after a crash never serves a torn batch.
//!
//! Start reading at [`LogDir`] (a directory of partitions and its I/O thread) and [`Log`] (one
//! partition). The on-disk formats, recovery cases and invariants are in
//! `docs/design/storage.md`. This crate knows nothing of the network; the broker maps its
//! [`StorageError`]s to Kafka error codes.

/// Locks `m`. A poisoned lock means a panic elsewhere while holding it, which is a bug there;
/// every mutation under this crate's locks is completed before anything that can fail (a push,
/// a pop, a store), so the data is still consistent and the others go on.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod batch;
mod checkpoint;
pub mod config;
mod direct;
pub mod error;
mod index;
pub mod io;
mod log;
mod segment;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::config::{LogConfig, TimestampType};
pub use crate::error::{Result, StorageError};
pub use crate::io::{
    AppendBurst, DataChanged, DirectIo, Durable, IoEngineChoice, IoEngineKind, IoThread,
};
pub use crate::log::{
    now_ms, AppendInfo, FileSlice, Flush, Log, OpenReport, ReadResult, RetentionResult,
    TimestampLookup,
};
pub use crate::segment::Truncation;

/// A log directory: partition logs in `<path>/<topic>-<partition>/` sharing one I/O thread.
#[derive(Debug)]
pub struct LogDir {
    path: PathBuf,
    io: Arc<IoThread>,
}

impl LogDir {
    /// Opens (creating if needed) a log directory and starts its I/O thread.
    pub fn open(path: impl Into<PathBuf>, engine: IoEngineChoice) -> Result<LogDir> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|e| StorageError::io(&path, e))?;
        let io = Arc::new(IoThread::start(&path, engine)?);
        Ok(LogDir { path, io })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`IoThread::set_page_cache_window`].
    pub fn set_page_cache_window(&self, window: Option<u64>) {
        self.io.set_page_cache_window(window);
    }

    /// See [`IoThread::set_direct_io`].
    pub fn set_direct_io(&self, direct: Option<DirectIo>) {
        self.io.set_direct_io(direct);
    }

    /// See [`IoThread::direct_io_memory`].
    pub fn direct_io_memory(&self) -> u64 {
        self.io.direct_io_memory()
    }

    /// The write engine the I/O thread runs.
    pub fn engine(&self) -> IoEngineKind {
        self.io.engine()
    }

    /// Directory name of a partition: `<topic>-<partition>`, as Kafka names them.
    pub fn partition_dir_name(topic: &str, partition: i32) -> String {
        format!("{topic}-{partition}")
    }

    /// Opens (creating if needed) the log of one partition.
    pub fn open_log(&self, topic: &str, partition: i32, config: LogConfig) -> Result<Log> {
        if topic.is_empty() || topic.contains('/') || topic == "." || topic == ".." {
            return Err(StorageError::InvalidConfig(format!("invalid topic name {topic:?}")));
        }
        let dir = self.path.join(Self::partition_dir_name(topic, partition));
        Log::open(dir, config, self.io.clone())
    }

    /// The `(topic, partition)` pairs that have a directory here.
    pub fn partitions(&self) -> Result<Vec<(String, i32)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(|e| StorageError::io(&self.path, e))? {
            let entry = entry.map_err(|e| StorageError::io(&self.path, e))?;
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((topic, p)) = name.rsplit_once('-') {
                if let Ok(p) = p.parse::<i32>() {
                    out.push((topic.to_string(), p));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Closes a log and removes its directory.
    pub fn delete_log(&self, log: Log) -> Result<()> {
        let dir = log.dir().to_owned();
        let _ = log.close();
        drop(log);
        std::fs::remove_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        checkpoint::sync_dir(&self.path).map_err(|e| StorageError::io(&self.path, e))
    }
}
