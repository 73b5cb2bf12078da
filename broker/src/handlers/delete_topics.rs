//! DeleteTopics (key 20): by name (v1-5) or by name or topic id (v6+).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};
use uuid::Uuid;

use super::{respond, sb, topic_name, Response};
use crate::state::Broker;

pub(super) async fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: DeleteTopicsRequest,
) -> Response {
    let wanted: Vec<(Option<String>, Uuid)> = if h.api_version >= 6 {
        req.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        req.topic_names.iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect()
    };
    let mut r = DeleteTopicsResponse::default();
    for (name, id) in wanted {
        let mut res = DeletableTopicResult::default();
        let topic = match &name {
            Some(n) => broker.topic(n),
            None => broker.topic_by_id(id),
        };
        match topic {
            None => {
                res.name = name.as_deref().map(topic_name);
                res.topic_id = id;
                res.error_code = if name.is_some() {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    ec::UNKNOWN_TOPIC_ID
                };
            }
            Some(t) => {
                res.name = Some(t.wire_name.clone());
                if h.api_version >= 6 {
                    res.topic_id = t.id;
                }
                if let Err(e) = broker.delete_topic(&t.name).await {
                    res.error_code = e.code;
                    res.error_message = (h.api_version >= 5).then(|| sb(e.message));
                }
            }
        }
        r.responses.push(res);
    }
    respond(h, &r)
}
