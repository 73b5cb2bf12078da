//! FindCoordinator (key 10): there is no group or transaction coordinator yet, so every key gets
//! COORDINATOR_NOT_AVAILABLE (retriable), as a Kafka cluster answers while its coordinator is
//! not up. The API is listed anyway because librdkafka treats it as the sign of a broker new
//! enough for LZ4 (and would silently stop compressing with LZ4 without it).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, sb, Response};

const MESSAGE: &str = "this broker has no group or transaction coordinator yet";

pub(super) fn handle(h: &RequestHeaderInfo, req: FindCoordinatorRequest) -> Response {
    let mut r = FindCoordinatorResponse::default();
    if h.api_version < 4 {
        r.error_code = ec::COORDINATOR_NOT_AVAILABLE;
        if h.api_version >= 1 {
            r.error_message = Some(sb(MESSAGE));
        }
        r.node_id = BrokerId(-1);
        r.port = -1;
    } else {
        r.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key;
                c.node_id = BrokerId(-1);
                c.port = -1;
                c.error_code = ec::COORDINATOR_NOT_AVAILABLE;
                c.error_message = Some(sb(MESSAGE));
                c
            })
            .collect();
    }
    respond(h, &r)
}
