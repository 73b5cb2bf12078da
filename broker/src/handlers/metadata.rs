//! Metadata (key 3): brokers, cluster id, controller, and topics with their ids and partitions.
//! Unknown topics named by a client are created when `auto.create.topics.enable` is on and the
//! request allows it (v4+), with `num.partitions` partitions.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};
use uuid::Uuid;

use super::{respond, sb, Response};
use crate::state::{Broker, Topic};

pub(super) async fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: MetadataRequest,
) -> Response {
    let mut r = MetadataResponse::default();
    let (host, port) = broker.args.advertised();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(broker.node_id());
    b.host = sb(host);
    b.port = port;
    r.brokers = vec![b];
    r.cluster_id = Some(sb(broker.cluster_id.clone()));
    r.controller_id = BrokerId(broker.node_id());
    r.cluster_authorized_operations = i32::MIN;
    // v0 has no flag and always auto-creates; v4+ says so per request.
    let auto_create = broker.args.auto_create_topics_enable
        && (h.api_version < 4 || req.allow_auto_topic_creation);
    match req.topics {
        None => {
            for t in broker.topics() {
                r.topics.push(describe(broker, &t, h.api_version));
            }
        }
        Some(topics) if topics.is_empty() && h.api_version == 0 => {
            // v0: an empty list means all topics.
            for t in broker.topics() {
                r.topics.push(describe(broker, &t, h.api_version));
            }
        }
        Some(topics) => {
            for want in topics {
                let topic = match &want.name {
                    Some(name) => {
                        let name = name.0.as_str();
                        match broker.topic(name) {
                            Some(t) => Ok(t),
                            None if auto_create => broker
                                .create_topic(name, -1, -1, BTreeMap::new(), false)
                                .await
                                .or_else(|e| {
                                    // Lost a race with another creator: use theirs.
                                    broker.topic(name).ok_or(e.code)
                                }),
                            None => Err(ec::UNKNOWN_TOPIC_OR_PARTITION),
                        }
                    }
                    None => broker.topic_by_id(want.topic_id).ok_or(ec::UNKNOWN_TOPIC_ID),
                };
                match topic {
                    Ok(t) => r.topics.push(describe(broker, &t, h.api_version)),
                    Err(code) => {
                        let mut t = MetadataResponseTopic::default();
                        t.error_code = code;
                        t.name = want.name.clone();
                        t.topic_id = if want.name.is_some() || h.api_version < 10 {
                            Uuid::nil()
                        } else {
                            want.topic_id
                        };
                        t.topic_authorized_operations = i32::MIN;
                        r.topics.push(t);
                    }
                }
            }
        }
    }
    respond(h, &r)
}

fn describe(broker: &Broker, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(topic.wire_name.clone());
    if version >= 10 {
        t.topic_id = topic.id;
    }
    t.topic_authorized_operations = i32::MIN;
    let node = BrokerId(broker.node_id());
    t.partitions = (0..topic.partition_count())
        .map(|i| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.leader_id = node;
            if version >= 7 {
                p.leader_epoch = 0;
            }
            p.replica_nodes = vec![node];
            p.isr_nodes = vec![node];
            p
        })
        .collect();
    t
}
