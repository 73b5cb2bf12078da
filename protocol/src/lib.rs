//! Millrace's Kafka wire codec, without I/O: frame limits, request header parsing, the one table
//! of supported API versions (which drives both the ApiVersions answer and the version check),
//! request body decoding and response encoding on top of the `kafka-protocol` crate, and an
//! allocator guard that keeps hostile element counts from aborting the process.
//!
//! Start at [`parse_header`] and [`decode_body`] (requests) and [`encode_response`] (responses).
//! Record batches are never decoded here: they stay raw `Bytes` from the socket to the log and
//! back.

pub mod alloc;
mod chunked;
mod codec;
pub mod records;
mod versions;

pub use chunked::{ChunkedBuf, ZERO_COPY_MIN};
pub use codec::{
    decode_body, encode_response, encode_response_chunks, parse_header, response_header_version,
    DecodeError, RequestHeaderInfo, FRAME_LEN_PREFIX,
};
pub use kafka_protocol;
pub use versions::{supported_range, SUPPORTED_APIS};

/// Kafka error codes the broker answers with (from the protocol guide's error table).
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_FETCH_SIZE: i16 = 4;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const INVALID_RECORD: i16 = 87;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INCONSISTENT_TOPIC_ID: i16 = 103;
}
