//! Fetch (key 1): whole batches from each partition's log, up to `partition_max_bytes` per
//! partition and `max_bytes` overall (the first batch of the first non-empty partition is
//! returned even when larger, so consumers progress), waiting up to `max_wait_ms` for
//! `min_bytes` and waking as soon as any requested partition gets new data. Fetch sessions are
//! declined (session id 0), which Kafka allows: clients then send full requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};
use millrace_storage::{DataChanged, FileSlice, Log};

use super::{Chunk, Response};
use crate::state::Broker;

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

pub(super) async fn handle(broker: &Broker, h: &RequestHeaderInfo, req: FetchRequest) -> Response {
    let v = h.api_version;
    let mut r = FetchResponse::default();
    if req.session_id != 0 {
        r.error_code = FETCH_SESSION_ID_NOT_FOUND;
        return super::respond(h, &r);
    }
    // Resolve the partitions once.
    let mut wanted: Vec<Vec<Option<Arc<Log>>>> = Vec::new();
    let mut unknown_code = Vec::new();
    for t in &req.topics {
        let topic =
            if v >= 13 { broker.topic_by_id(t.topic_id) } else { broker.topic(t.topic.0.as_str()) };
        unknown_code.push(if v >= 13 && topic.is_none() {
            ec::UNKNOWN_TOPIC_ID
        } else {
            ec::UNKNOWN_TOPIC_OR_PARTITION
        });
        wanted.push(
            t.partitions
                .iter()
                .map(|p| topic.as_ref().and_then(|t| t.partition(p.partition)))
                .collect(),
        );
    }
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let max_bytes = if req.max_bytes <= 0 { i32::MAX } else { req.max_bytes } as usize;
    let min_bytes = req.min_bytes.max(0) as usize;
    let mut shutdown = broker.shutdown.subscribe();
    let mut slices: Vec<(Bytes, FileSlice)> = Vec::new();
    loop {
        slices.clear();
        let versions: Vec<(Arc<Log>, u64)> =
            wanted.iter().flatten().flatten().map(|l| (l.clone(), l.data_version())).collect();
        let (responses, total, any_error) =
            read(v, &mut slices, &req, &wanted, &unknown_code, max_bytes);
        let now = Instant::now();
        let stopping = *shutdown.borrow_and_update();
        if total >= min_bytes || any_error || now >= deadline || versions.is_empty() || stopping {
            r.responses = responses;
            break;
        }
        let changed = AnyChanged(versions.iter().map(|(l, seen)| l.data_changed(*seen)).collect());
        tokio::select! {
            _ = tokio::time::timeout(deadline - now, changed) => {}
            _ = shutdown.changed() => {}
        }
    }
    r.session_id = 0;
    // The fetched batches go out as references to the segment memory, not copies, and are
    // sent from the segment files directly where the socket allows it.
    let shared: Vec<Bytes> = r
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter_map(|p| p.records.clone())
        .collect();
    let chunks = millrace_protocol::encode_response_chunks(
        h.api_key,
        h.api_version,
        h.correlation_id,
        &r,
        &shared,
    )?;
    // The record chunks come out in response order, which is the order `read` took the slices
    // in (only those the encoder keeps as chunks): one pass pairs them. A chunk that does not
    // match goes out from memory, as it is.
    let mut slices = slices.into_iter().peekable();
    Ok(Some(
        chunks
            .into_iter()
            .map(|c| {
                match slices.next_if(|(b, _)| b.as_ptr() == c.as_ptr() && b.len() == c.len()) {
                    Some((_, slice)) => Chunk::File { slice, bytes: c },
                    None => Chunk::Mem(c),
                }
            })
            .collect(),
    ))
}

fn read(
    v: i16,
    slices: &mut Vec<(Bytes, FileSlice)>,
    req: &FetchRequest,
    wanted: &[Vec<Option<Arc<Log>>>],
    unknown_code: &[i16],
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(req.topics.len());
    for ((t, logs), unknown) in req.topics.iter().zip(wanted).zip(unknown_code) {
        let mut tr = FetchableTopicResponse::default();
        tr.topic = t.topic.clone();
        tr.topic_id = t.topic_id;
        for (p, log) in t.partitions.iter().zip(logs) {
            let mut pd = PartitionData::default();
            pd.partition_index = p.partition;
            pd.high_watermark = -1;
            pd.last_stable_offset = -1;
            pd.log_start_offset = -1;
            pd.preferred_read_replica = BrokerId(-1);
            pd.aborted_transactions = (req.isolation_level == 1).then(Vec::new);
            pd.records = Some(Bytes::new());
            match log {
                None => {
                    pd.error_code = *unknown;
                    any_error = true;
                }
                Some(log) => {
                    let budget = (p.partition_max_bytes.max(0) as usize)
                        .min(max_bytes.saturating_sub(total));
                    match log.read(p.fetch_offset, budget, total == 0) {
                        Ok(res) => {
                            total += res.records.len();
                            pd.high_watermark = res.high_watermark;
                            pd.last_stable_offset = res.high_watermark;
                            if v >= 5 {
                                pd.log_start_offset = res.log_start_offset;
                            }
                            // Only record sets the encoder keeps as chunks of their own (smaller
                            // ones are copied into the frame) can go out with sendfile.
                            if let Some(slice) = res
                                .file_slice
                                .filter(|_| res.records.len() >= millrace_protocol::ZERO_COPY_MIN)
                            {
                                slices.push((res.records.clone(), slice));
                            }
                            pd.records = Some(res.records);
                        }
                        Err(e) => {
                            let (start, hw, _) = log.offsets();
                            pd.high_watermark = hw;
                            pd.last_stable_offset = hw;
                            if v >= 5 {
                                pd.log_start_offset = start;
                            }
                            pd.error_code = e.kafka_error_code();
                            any_error = true;
                        }
                    }
                }
            }
            tr.partitions.push(pd);
        }
        out.push(tr);
    }
    (out, total, any_error)
}

/// Resolves when any of the logs' visible data changes.
struct AnyChanged(Vec<DataChanged>);

impl Future for AnyChanged {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for f in self.0.iter_mut() {
            if Pin::new(f).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::ApiKey;
    use millrace_storage::batch::BatchBuilder;

    use super::*;
    use crate::config::ServeArgs;
    use crate::handlers::topic_name;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Every partition whose record set the encoder keeps as a chunk of its own goes out by
    /// sendfile, also after partitions whose small record sets were copied into the frame.
    #[tokio::test]
    async fn large_record_sets_after_small_ones_still_go_out_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let args = Cli::parse_from(["millrace", "--data-dir", data, "--listen", "127.0.0.1:0"]);
        let broker = Broker::open(args.serve).unwrap();
        let t = broker.create_topic("t", 4, 1, BTreeMap::new(), false).await.unwrap();
        // Partitions 0 and 2 get a small batch, 1 and 3 a large one.
        for p in 0..4 {
            let value = vec![b'v'; if p % 2 == 0 { 10 } else { 4000 }];
            let batch = BatchBuilder::new().value(1, &value).build();
            let log = t.partition(p).unwrap();
            log.append_bytes(Bytes::from(batch), 1, 0).unwrap().durable.await.unwrap();
        }
        let h = RequestHeaderInfo {
            api_key: ApiKey::Fetch,
            api_version: 12,
            correlation_id: 1,
            client_id: None,
            unsupported_api_versions: false,
        };
        let partitions = (0..4)
            .map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1 << 20))
            .collect();
        let req =
            FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name("t"))
                    .with_partitions(partitions)]);
        let chunks = handle(&broker, &h, req).await.unwrap().unwrap();
        let files: Vec<usize> = chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::File { bytes, .. } => Some(bytes.len()),
                Chunk::Mem(_) => None,
            })
            .collect();
        assert_eq!(files.len(), 2, "the two large record sets go out by sendfile: {files:?}");
        assert!(files.iter().all(|&n| n > 4000));
        broker.close();
    }
}
