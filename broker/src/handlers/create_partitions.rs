//! CreatePartitions (key 37): grows a topic's partition count (assignments, if given, must be
//! this broker).

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, sb, Response};
use crate::state::Broker;

pub(super) async fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: CreatePartitionsRequest,
) -> Response {
    let mut r = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut res = CreatePartitionsTopicResult::default();
        res.name = t.name.clone();
        let bad_assignment = t.assignments.as_ref().is_some_and(|a| {
            a.iter().any(|x| x.broker_ids.iter().any(|b| b.0 != broker.node_id()))
        });
        let outcome = if bad_assignment {
            Err((
                ec::INVALID_REPLICA_ASSIGNMENT,
                format!("only broker {} exists", broker.node_id()),
            ))
        } else {
            broker
                .create_partitions(t.name.0.as_str(), t.count, req.validate_only)
                .await
                .map_err(|e| (e.code, e.message))
        };
        if let Err((code, msg)) = outcome {
            res.error_code = code;
            res.error_message = Some(sb(msg));
        }
        r.results.push(res);
    }
    respond(h, &r)
}
