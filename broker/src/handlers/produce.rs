//! Produce (key 0): appends each partition's record set to its log. acks=0 gets no response,
//! acks=1 is answered once the batches are written to the segment file (in the page cache, so
//! they survive a crash of the broker process, as with Kafka), acks=-1 (all) once they are
//! fsynced (the log's next group commit, also under a relaxed `flush.messages` / `flush.ms`,
//! which then govern acks=0 and acks=1 alone); neither wait holds up the appends of the
//! connection's later requests (their answers follow in order). `timeout_ms` is one deadline
//! for the whole request, counted from its arrival.

use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};
use millrace_storage::{now_ms, Durable, Flush};

use super::{respond, sb, Deferred, Response};
use crate::state::Broker;

/// Appends every partition's records now (in request order); the returned future waits for
/// durability (acks=all) and encodes the answer.
pub(super) fn start(broker: &Broker, h: &RequestHeaderInfo, req: ProduceRequest) -> Deferred {
    let acks = req.acks;
    // Several partitions: their fsyncs should start together, not one after another.
    let partitions: usize = req.topic_data.iter().map(|t| t.partition_data.len()).sum();
    let _burst = (partitions > 1).then(millrace_storage::AppendBurst::start);
    let mut waits: Waits = Waits::new();
    let mut r = ProduceResponse::default();
    for (ti, topic_data) in req.topic_data.into_iter().enumerate() {
        let topic = if h.api_version >= 13 {
            broker.topic_by_id(topic_data.topic_id)
        } else {
            broker.topic(topic_data.name.0.as_str())
        };
        // An unknown topic id (v13+) is UNKNOWN_TOPIC_ID; a known topic without the partition,
        // or an unknown name, UNKNOWN_TOPIC_OR_PARTITION (as Kafka, and as Fetch answers).
        let unknown = if h.api_version >= 13 && topic.is_none() {
            ec::UNKNOWN_TOPIC_ID
        } else {
            ec::UNKNOWN_TOPIC_OR_PARTITION
        };
        let mut t = TopicProduceResponse::default();
        // Not a view of the request: the response outlives the append, and the request's
        // buffer should go back to the connection's pool as soon as its records are written.
        t.name = match &topic {
            Some(topic) => topic.wire_name.clone(),
            None => super::topic_name(&topic_data.name),
        };
        t.topic_id = topic_data.topic_id;
        for (pi, pd) in topic_data.partition_data.into_iter().enumerate() {
            let mut p = PartitionProduceResponse::default();
            p.index = pd.index;
            p.base_offset = -1;
            p.log_append_time_ms = -1;
            p.log_start_offset = -1;
            let log = topic.as_ref().and_then(|t| t.partition(pd.index));
            // Compressed batches are checked (bounded decompression) once, before the append.
            let checked = pd.records.map(|records| {
                millrace_protocol::records::check_compressed(&records).map(|()| records)
            });
            match (acks, log, checked) {
                (a, _, _) if !matches!(a, -1..=1) => p.error_code = ec::INVALID_REQUIRED_ACKS,
                (_, None, _) => p.error_code = unknown,
                (_, Some(_), None) => {
                    p.error_code = ec::INVALID_RECORD;
                    p.error_message = (h.api_version >= 8).then(|| sb("null record set"));
                }
                (_, Some(_), Some(Err(why))) => {
                    p.error_code = ec::CORRUPT_MESSAGE;
                    p.error_message = (h.api_version >= 8).then(|| sb(why));
                }
                (_, Some(log), Some(Ok(records))) => match log.append_bytes(
                    records,
                    now_ms(),
                    0,
                    // acks=all is answered once the records are fsynced (the brief's promise),
                    // at the next group commit also where the topic relaxes flush.messages /
                    // flush.ms, which then apply to acks=0 and acks=1 alone. Waiting for the
                    // policy instead would leave acks=all unanswered under Kafka's own
                    // defaults (both Long.MAX_VALUE) until the request timed out.
                    if acks == -1 { Flush::Now } else { Flush::Policy },
                ) {
                    Ok(info) => {
                        p.base_offset = info.base_offset;
                        p.log_append_time_ms = info.log_append_time_ms;
                        if h.api_version >= 5 {
                            p.log_start_offset = log.log_start_offset();
                        }
                        match acks {
                            -1 => waits.push((ti, pi, info.durable)),
                            1 => waits.push((ti, pi, info.written)),
                            _ => {}
                        }
                    }
                    Err(e) => {
                        p.error_code = e.kafka_error_code();
                        p.error_message = (h.api_version >= 8).then(|| sb(e.to_string()));
                    }
                },
            }
            t.partition_responses.push(p);
        }
        r.responses.push(t);
    }
    if acks == 0 {
        // Durability still happens; the client asked for no answer.
        return Box::pin(std::future::ready(Ok(None)));
    }
    // One deadline for the whole request, from its arrival (as Kafka's timeout_ms), however
    // long it waits behind earlier requests and however many partitions it has.
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.max(0) as u64);
    // Without the client id, a view of the request's buffer.
    let h = RequestHeaderInfo { client_id: None, ..h.clone() };
    Box::pin(async move { finish(&h, r, waits, deadline).await })
}

/// What a response waits for, by topic and partition index (no allocation for up to four).
type Waits = smallvec::SmallVec<[(usize, usize, Durable); 4]>;

async fn finish(
    h: &RequestHeaderInfo,
    mut r: ProduceResponse,
    waits: Waits,
    deadline: tokio::time::Instant,
) -> Response {
    for (ti, pi, durable) in waits {
        let p = &mut r.responses[ti].partition_responses[pi];
        match tokio::time::timeout_at(deadline, durable).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                p.error_code = e.kafka_error_code();
                p.error_message = (h.api_version >= 8).then(|| sb(e.to_string()));
            }
            Err(_) => {
                p.error_code = ec::REQUEST_TIMED_OUT;
                p.error_message =
                    (h.api_version >= 8).then(|| sb("not written within the request's timeout_ms"));
            }
        }
    }
    respond(h, &r)
}

#[cfg(test)]
mod tests {
    use bytes::Buf as _;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::Decodable as _;

    use super::*;
    use crate::handlers::testing;
    use crate::handlers::Chunk;

    /// v13 addresses topics by id: an unknown id is UNKNOWN_TOPIC_ID, but a known topic's
    /// missing partition is UNKNOWN_TOPIC_OR_PARTITION, as in Kafka and as Fetch answers it.
    #[tokio::test]
    async fn v13_tells_an_unknown_topic_id_from_a_missing_partition() {
        let dir = tempfile::tempdir().unwrap();
        let broker = testing::broker(&dir);
        let t = testing::topic_t(&broker, 1).await;
        let h = testing::header(ApiKey::Produce, 13);
        let missing_partition = PartitionProduceData::default().with_index(5);
        let req =
            ProduceRequest::default().with_acks(1).with_timeout_ms(1000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_topic_id(t.id)
                    .with_partition_data(vec![missing_partition.clone()]),
                TopicProduceData::default()
                    .with_topic_id(uuid::Uuid::new_v4())
                    .with_partition_data(vec![missing_partition]),
            ]);
        let Some(chunks) = start(&broker, &h, req).await.unwrap() else {
            panic!("acks=1 gets an answer")
        };
        let mut frame = bytes::BytesMut::new();
        for c in chunks {
            let Chunk::Mem(b) = c else { panic!("an in-memory answer") };
            frame.extend_from_slice(&b);
        }
        let mut frame = frame.freeze();
        frame.advance(4 + 4 + 1); // length, correlation id, header tags (flexible header v1)
        let r = ProduceResponse::decode(&mut frame, 13).unwrap();
        let codes: Vec<i16> =
            r.responses.iter().map(|t| t.partition_responses[0].error_code).collect();
        assert_eq!(codes, [ec::UNKNOWN_TOPIC_OR_PARTITION, ec::UNKNOWN_TOPIC_ID]);
        broker.close();
    }
}
