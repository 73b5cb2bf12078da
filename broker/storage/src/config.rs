//! Per-topic log configuration, named after Kafka's topic config keys, with Kafka's defaults
//! except where Millrace's single-node durability promise needs another (`flush.messages`).

use crate::error::{Result, StorageError};

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    #[default]
    CreateTime,
    /// The broker stamps each batch with the append time.
    LogAppendTime,
}

/// The topic configs the log honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when the next batch would make it larger.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first batch was appended.
    pub segment_ms: i64,
    /// `segment.index.bytes`: preallocated size of each index file.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: log bytes between two offset/time index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest segments while the log is larger; -1 for no limit.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `flush.messages`: fsync after this many records. 1 (the default) means every append is
    /// group-committed to disk before its durability future resolves and before consumers see it.
    /// Above 1 it governs only appends with [`crate::Flush::Policy`]: one with
    /// [`crate::Flush::Now`] (acks=all) is synced at the next group commit.
    pub flush_messages: i64,
    /// `flush.ms`: fsync at least this often while records are unflushed; `i64::MAX` disables.
    pub flush_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            flush_messages: 1,
            flush_ms: i64::MAX,
        }
    }
}

impl LogConfig {
    /// True when every append must be on disk before it is visible and acknowledged:
    /// the high watermark is then the durable end of the log.
    pub fn sync_every_append(&self) -> bool {
        self.flush_messages <= 1
    }

    /// Rejects values the log cannot work with.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StorageError::InvalidConfig(m.to_string()));
        if self.segment_bytes < 14 || self.segment_bytes > i32::MAX as u64 {
            return bad("segment.bytes must be in [14, 2147483647]");
        }
        if self.segment_ms < 1 {
            return bad("segment.ms must be >= 1");
        }
        if self.segment_index_bytes < 12 * 4 || self.segment_index_bytes > i32::MAX as u64 {
            return bad("segment.index.bytes must be in [48, 2147483647]");
        }
        if self.max_message_bytes < 61 {
            return bad("max.message.bytes must be at least 61");
        }
        if self.retention_ms < -1 || self.retention_bytes < -1 {
            return bad("retention.ms and retention.bytes must be >= -1");
        }
        if self.flush_messages < 1 || self.flush_ms < 0 {
            return bad("flush.messages must be >= 1 and flush.ms >= 0");
        }
        Ok(())
    }
}
