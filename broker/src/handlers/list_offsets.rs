//! ListOffsets (key 2): earliest (-2), latest (-1), max timestamp (-3), earliest local (-4),
//! latest tiered (-5, no tiered storage: -1), or the first record at or after a timestamp.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use millrace_protocol::records::{decode_records, OwnedRecord};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};
use millrace_storage::{batch::BatchHeader, Log, TimestampLookup};

use super::{respond, Response};
use crate::state::Broker;

pub(super) fn handle(broker: &Broker, h: &RequestHeaderInfo, req: ListOffsetsRequest) -> Response {
    let mut r = ListOffsetsResponse::default();
    for t in req.topics {
        let topic = broker.topic(t.name.0.as_str());
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                Some(log) => match lookup(&log, p.timestamp) {
                    Ok((offset, timestamp)) => {
                        pr.offset = offset;
                        pr.timestamp = timestamp;
                        if h.api_version >= 4 {
                            pr.leader_epoch = 0;
                        }
                    }
                    Err(code) => pr.error_code = code,
                },
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    respond(h, &r)
}

fn lookup(log: &Log, timestamp: i64) -> Result<(i64, i64), i16> {
    // `target`: the timestamp looked for; `None` for the max timestamp (that of the batch).
    let found = |l: Option<TimestampLookup>, target: Option<i64>| match l {
        Some(TimestampLookup { record: Some((offset, ts)), .. }) => (offset, ts),
        // A compressed batch: decompress it to find the record.
        Some(TimestampLookup { batch, record: None }) => {
            let start = log.log_start_offset();
            match decode_records(&batch) {
                Ok((_, records)) => {
                    let mut remaining = records.iter().filter(|r| r.offset >= start);
                    let hit = match target {
                        Some(t) => remaining.find(|r| r.timestamp >= t),
                        // The largest timestamp, the first record carrying it on ties.
                        None => remaining.fold(None, |best: Option<&OwnedRecord>, r| match best {
                            Some(b) if b.timestamp >= r.timestamp => Some(b),
                            _ => Some(r),
                        }),
                    };
                    hit.map(|r| (r.offset, r.timestamp)).unwrap_or((-1, -1))
                }
                Err(_) => BatchHeader::parse(&batch)
                    .map(|h| (h.base_offset.max(start), h.max_timestamp))
                    .unwrap_or((-1, -1)),
            }
        }
        None => (-1, -1),
    };
    Ok(match timestamp {
        -1 => (log.high_watermark(), -1),
        -2 | -4 => (log.log_start_offset(), -1),
        -3 => found(log.max_timestamp().map_err(|e| e.kafka_error_code())?, None),
        -5 => (-1, -1),
        t if t < 0 => return Err(ec::INVALID_REQUEST),
        t => found(log.offset_for_timestamp(t).map_err(|e| e.kafka_error_code())?, Some(t)),
    })
}
