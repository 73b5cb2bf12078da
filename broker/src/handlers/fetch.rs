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

use super::{Chunk, Deferred, Response};
use crate::state::Broker;

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// Starts a Fetch: the partitions are looked up and read now, in request order (a fetch sees
/// the effects of the requests before it and none after, as with Kafka); only when that first
/// read cannot answer (fewer than `min_bytes` within `max_wait_ms`) is the rest, the long poll,
/// left to the returned future.
pub(super) fn start(broker: &Arc<Broker>, h: &RequestHeaderInfo, req: FetchRequest) -> Deferred {
    let ready = |r: Response| -> Deferred { Box::pin(std::future::ready(r)) };
    if req.session_id != 0 {
        let mut r = FetchResponse::default();
        r.error_code = FETCH_SESSION_ID_NOT_FOUND;
        return ready(super::respond(h, &r));
    }
    let mut fetch = Fetch::new(broker, h.clone(), req);
    match fetch.attempt() {
        Attempt::Answer(r) => ready(r),
        Attempt::Wait(versions) => Box::pin(async move { fetch.long_poll(versions).await }),
    }
}

/// A Fetch being answered.
struct Fetch {
    h: RequestHeaderInfo,
    req: FetchRequest,
    /// The requested partitions' logs, by topic (`None`: unknown), resolved once.
    wanted: Vec<Vec<Option<Arc<Log>>>>,
    unknown_code: Vec<i16>,
    deadline: Instant,
    max_bytes: usize,
    min_bytes: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

enum Attempt {
    Answer(Response),
    /// Not enough data yet: wait for any of these logs to change (from the versions seen).
    Wait(Vec<(Arc<Log>, u64)>),
}

impl Fetch {
    fn new(broker: &Arc<Broker>, h: RequestHeaderInfo, req: FetchRequest) -> Fetch {
        let v = h.api_version;
        let mut wanted: Vec<Vec<Option<Arc<Log>>>> = Vec::new();
        let mut unknown_code = Vec::new();
        for t in &req.topics {
            let topic = if v >= 13 {
                broker.topic_by_id(t.topic_id)
            } else {
                broker.topic(t.topic.0.as_str())
            };
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
        let shutdown = broker.shutdown.subscribe();
        Fetch { h, req, wanted, unknown_code, deadline, max_bytes, min_bytes, shutdown }
    }

    /// Reads every requested partition; answers if that is enough (or time is up, or an error,
    /// or shutdown), else says what to wait for.
    fn attempt(&mut self) -> Attempt {
        let mut slices: Vec<(Bytes, FileSlice)> = Vec::new();
        // The versions are taken before the read: a change after them wakes the wait.
        let versions: Vec<(Arc<Log>, u64)> =
            self.wanted.iter().flatten().flatten().map(|l| (l.clone(), l.data_version())).collect();
        let (responses, total, any_error) = read(
            self.h.api_version,
            &mut slices,
            &self.req,
            &self.wanted,
            &self.unknown_code,
            self.max_bytes,
        );
        let stopping = *self.shutdown.borrow_and_update();
        if total >= self.min_bytes
            || any_error
            || Instant::now() >= self.deadline
            || versions.is_empty()
            || stopping
        {
            return Attempt::Answer(answer(&self.h, responses, slices));
        }
        Attempt::Wait(versions)
    }

    /// Waits for new data (or the deadline, or shutdown) and reads again, until it can answer.
    async fn long_poll(mut self, mut versions: Vec<(Arc<Log>, u64)>) -> Response {
        loop {
            let now = Instant::now();
            let changed =
                AnyChanged(versions.iter().map(|(l, seen)| l.data_changed(*seen)).collect());
            tokio::select! {
                _ = tokio::time::timeout(self.deadline.saturating_duration_since(now), changed) => {}
                _ = self.shutdown.changed() => {}
            }
            match self.attempt() {
                Attempt::Answer(r) => return r,
                Attempt::Wait(v) => versions = v,
            }
        }
    }
}

/// Encodes the answer: the fetched batches go out as references to the segment memory, not
/// copies, and are sent from the segment files directly where the socket allows it.
fn answer(
    h: &RequestHeaderInfo,
    responses: Vec<FetchableTopicResponse>,
    slices: Vec<(Bytes, FileSlice)>,
) -> Response {
    let mut r = FetchResponse::default();
    r.session_id = 0;
    r.responses = responses;
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
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::ApiKey;
    use millrace_storage::batch::BatchBuilder;
    use millrace_storage::Flush;

    use super::*;
    use crate::handlers::testing;
    use crate::handlers::topic_name;

    /// Every partition whose record set the encoder keeps as a chunk of its own goes out by
    /// sendfile, also after partitions whose small record sets were copied into the frame.
    #[tokio::test]
    async fn large_record_sets_after_small_ones_still_go_out_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let broker = testing::broker(&dir);
        let t = testing::topic_t(&broker, 4).await;
        // Partitions 0 and 2 get a small batch, 1 and 3 a large one.
        for p in 0..4 {
            let value = vec![b'v'; if p % 2 == 0 { 10 } else { 4000 }];
            let batch = BatchBuilder::new().value(1, &value).build();
            let log = t.partition(p).unwrap();
            log.append_bytes(Bytes::from(batch), 1, 0, Flush::Policy)
                .unwrap()
                .durable
                .await
                .unwrap();
        }
        let h = testing::header(ApiKey::Fetch, 12);
        let partitions = (0..4)
            .map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1 << 20))
            .collect();
        let req =
            FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name("t"))
                    .with_partitions(partitions)]);
        let chunks = start(&broker, &h, req).await.unwrap().unwrap();
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
