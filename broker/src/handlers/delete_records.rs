//! DeleteRecords (key 21): moves each partition's log start offset (-1 means the high
//! watermark) and answers the new low watermark.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, Response};
use crate::state::Broker;

pub(super) fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: DeleteRecordsRequest,
) -> Response {
    let mut r = DeleteRecordsResponse::default();
    for t in req.topics {
        let topic = broker.topic(t.name.0.as_str());
        let mut tr = DeleteRecordsTopicResult::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            pr.low_watermark = -1;
            match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                Some(log) => {
                    let offset = if p.offset == -1 { log.high_watermark() } else { p.offset };
                    match log.delete_records(offset) {
                        Ok(low) => pr.low_watermark = low,
                        Err(e) => pr.error_code = e.kafka_error_code(),
                    }
                }
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    respond(h, &r)
}
