//! The storage layer's errors. The broker maps them to Kafka error codes in one place
//! ([`StorageError::kafka_error_code`] gives the mapping it should use).

use std::path::PathBuf;

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything a log operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A batch failed a structural or CRC check (Kafka: CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    /// A batch is well-formed but its records break a rule (Kafka: INVALID_RECORD).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A batch is larger than the topic's `max.message.bytes` (Kafka: MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// A read or delete_records at an offset the log does not hold (Kafka: OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, log_end_offset: i64 },
    /// The log directory had an I/O failure earlier and refuses writes until restart
    /// (Kafka: KAFKA_STORAGE_ERROR).
    #[error("log directory {dir} is offline after an I/O failure: {cause}")]
    LogDirFailed { dir: PathBuf, cause: String },
    /// An I/O error on a named file.
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad configuration value (Kafka: INVALID_CONFIG).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }

    /// The Kafka protocol error code a handler should answer this error with.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            StorageError::CorruptMessage(_) => 2,
            StorageError::OffsetOutOfRange { .. } => 1,
            StorageError::MessageTooLarge { .. } => 10,
            StorageError::InvalidRecord(_) => 87,
            StorageError::InvalidConfig(_) => 40,
            StorageError::LogDirFailed { .. } | StorageError::Io { .. } => 56,
            StorageError::Closed => 56,
        }
    }
}
