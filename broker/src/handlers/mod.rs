//! One file per Kafka API. [`decode`] turns a request body into a typed [`Request`] (in the
//! connection's reader, so a malformed body closes the connection at once); [`handle`] answers
//! it. Every API here is in `millrace_protocol::SUPPORTED_APIS`, which already checked the version.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use millrace_protocol::{decode_body, encode_response, DecodeError, RequestHeaderInfo};

use crate::state::Broker;

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod find_coordinator;
mod incremental_alter_configs;
mod list_offsets;
mod metadata;
mod produce;

/// A decoded request.
#[derive(Debug)]
pub(crate) enum Request {
    ApiVersions(ApiVersionsRequest),
    /// ApiVersions at a version we do not speak: answered with the v0 body.
    UnsupportedApiVersions,
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DeleteRecords(DeleteRecordsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    CreatePartitions(CreatePartitionsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    FindCoordinator(FindCoordinatorRequest),
}

/// Decodes the body of a request whose header was accepted.
pub(crate) fn decode(h: &RequestHeaderInfo, mut body: Bytes) -> Result<Request, DecodeError> {
    if h.unsupported_api_versions {
        return Ok(Request::UnsupportedApiVersions);
    }
    let v = h.api_version;
    let b = &mut body;
    Ok(match h.api_key {
        ApiKey::ApiVersions => Request::ApiVersions(decode_body(b, v)?),
        ApiKey::Metadata => Request::Metadata(decode_body(b, v)?),
        ApiKey::Produce => Request::Produce(decode_body(b, v)?),
        ApiKey::Fetch => Request::Fetch(decode_body(b, v)?),
        ApiKey::ListOffsets => Request::ListOffsets(decode_body(b, v)?),
        ApiKey::CreateTopics => Request::CreateTopics(decode_body(b, v)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(decode_body(b, v)?),
        ApiKey::DeleteRecords => Request::DeleteRecords(decode_body(b, v)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(decode_body(b, v)?),
        ApiKey::CreatePartitions => Request::CreatePartitions(decode_body(b, v)?),
        ApiKey::IncrementalAlterConfigs => Request::IncrementalAlterConfigs(decode_body(b, v)?),
        ApiKey::DescribeCluster => Request::DescribeCluster(decode_body(b, v)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(decode_body(b, v)?),
        other => {
            return Err(DecodeError::Malformed {
                what: "request",
                why: format!("{other:?} is in the supported table but has no handler"),
            })
        }
    })
}

/// A response frame as chunks to write in order (see `millrace_protocol::ChunkedBuf`), or
/// `None` when the request gets no response.
pub(crate) type Response = Result<Option<Chunks>, String>;

/// A response frame's pieces; most responses are one piece (no allocation for the list).
pub(crate) type Chunks = smallvec::SmallVec<[Chunk; 1]>;

/// A piece of a response frame.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Bytes in memory.
    Mem(Bytes),
    /// Record batches sent straight from their segment file (`sendfile`); `bytes` is the same
    /// data mapped in memory, the fallback if the file cannot be spliced.
    File { slice: millrace_storage::FileSlice, bytes: Bytes },
}

/// The part of a request that may finish later (a durability wait, a long poll). The
/// connection's writer finishes these one at a time, in request order, while the reader goes on
/// with the order-sensitive part of the next requests.
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Starts answering a decoded request. Everything that must happen in request order (appends,
/// topic changes) happens before this returns; what is left is the returned future.
pub(crate) async fn start(
    broker: &Arc<Broker>,
    h: &RequestHeaderInfo,
    request: Request,
) -> Deferred {
    let done = |r: Response| -> Deferred { Box::pin(std::future::ready(r)) };
    match request {
        Request::ApiVersions(r) => done(api_versions::handle(h, r)),
        Request::UnsupportedApiVersions => done(api_versions::unsupported(h)),
        Request::Metadata(r) => done(metadata::handle(broker, h, r).await),
        Request::Produce(r) => produce::start(broker, h, r),
        Request::Fetch(r) => fetch::start(broker, h, r),
        Request::ListOffsets(r) => done(list_offsets::handle(broker, h, r)),
        Request::CreateTopics(r) => done(create_topics::handle(broker, h, r).await),
        Request::DeleteTopics(r) => done(delete_topics::handle(broker, h, r).await),
        Request::DeleteRecords(r) => done(delete_records::handle(broker, h, r)),
        Request::DescribeConfigs(r) => done(describe_configs::handle(broker, h, r)),
        Request::CreatePartitions(r) => done(create_partitions::handle(broker, h, r).await),
        Request::IncrementalAlterConfigs(r) => {
            done(incremental_alter_configs::handle(broker, h, r).await)
        }
        Request::DescribeCluster(r) => done(describe_cluster::handle(broker, h, r)),
        Request::FindCoordinator(r) => done(find_coordinator::handle(h, r)),
    }
}

/// Encodes `body` as the response to `h`.
pub(crate) fn respond<T: Encodable>(h: &RequestHeaderInfo, body: &T) -> Response {
    encode_response(h.api_key, h.api_version, h.correlation_id, body)
        .map(|b| Some(smallvec::smallvec![Chunk::Mem(b.freeze())]))
}

pub(crate) fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(sb(s))
}

/// What the handlers' unit tests share: a broker on a temporary data directory, and a request
/// header.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use clap::Parser;
    use kafka_protocol::messages::ApiKey;
    use millrace_protocol::RequestHeaderInfo;

    use crate::config::ServeArgs;
    use crate::state::{Broker, Topic};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// A broker with default settings on `dir` (not serving: handlers are called directly).
    pub(crate) fn broker(dir: &tempfile::TempDir) -> Arc<Broker> {
        let data = dir.path().to_str().unwrap_or_else(|| panic!("a UTF-8 temporary directory"));
        let args = Cli::parse_from(["millrace", "--data-dir", data, "--listen", "127.0.0.1:0"]);
        Arc::new(Broker::open(args.serve).unwrap_or_else(|e| panic!("broker opens: {e}")))
    }

    /// Topic `t` with `partitions` partitions and no config overrides, created on `broker`.
    pub(crate) async fn topic_t(broker: &Broker, partitions: i32) -> Arc<Topic> {
        let created = broker.create_topic("t", partitions, 1, Default::default(), false).await;
        created.unwrap_or_else(|e| panic!("topic t is created: {e:?}"))
    }

    pub(crate) fn header(api_key: ApiKey, api_version: i16) -> RequestHeaderInfo {
        RequestHeaderInfo {
            api_key,
            api_version,
            correlation_id: 7,
            client_id: None,
            unsupported_api_versions: false,
        }
    }
}
