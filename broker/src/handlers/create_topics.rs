//! CreateTopics (key 19): partitions (or -1 for `num.partitions`), replication factor 1 or -1,
//! manual assignments onto this broker, topic configs (validated), and `validate_only`.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, sb, Response};
use crate::state::{Broker, TopicError};
use crate::topic_config::TOPIC_CONFIGS;

pub(super) async fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: CreateTopicsRequest,
) -> Response {
    let mut r = CreateTopicsResponse::default();
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut res = CreatableTopicResult::default();
        res.name = t.name.clone();
        res.num_partitions = -1;
        res.replication_factor = -1;
        let outcome = async {
            if duplicates.contains(&name) {
                return Err(TopicError::new(
                    ec::INVALID_REQUEST,
                    "topic named more than once in the request",
                ));
            }
            let mut partitions = t.num_partitions;
            if !t.assignments.is_empty() {
                if t.num_partitions != -1 || t.replication_factor != -1 {
                    return Err(TopicError::new(
                        ec::INVALID_REQUEST,
                        "both assignments and partitions/replication factor given",
                    ));
                }
                for (i, a) in t.assignments.iter().enumerate() {
                    if a.partition_index != i as i32
                        || a.broker_ids.iter().any(|b| b.0 != broker.node_id())
                        || a.broker_ids.len() != 1
                    {
                        return Err(TopicError::new(
                            ec::INVALID_REPLICA_ASSIGNMENT,
                            format!(
                                "assignments must place partitions 0.. on broker {} alone",
                                broker.node_id()
                            ),
                        ));
                    }
                }
                partitions = t.assignments.len() as i32;
            }
            let mut configs = BTreeMap::new();
            for c in &t.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            let topic = broker
                .create_topic(&name, partitions, t.replication_factor, configs, req.validate_only)
                .await?;
            Ok((topic, broker.partitions_or_default(partitions)))
        }
        .await;
        match outcome {
            Ok((topic, partitions)) => {
                if h.api_version >= 7 {
                    res.topic_id = topic.id;
                }
                if h.api_version < 5 {
                    r.topics.push(res);
                    continue;
                }
                // A validate-only topic has no logs: report the count it would have.
                res.num_partitions =
                    if req.validate_only { partitions } else { topic.partition_count() };
                res.replication_factor = 1;
                let overrides = topic.configs.read().unwrap_or_else(|e| e.into_inner()).clone();
                res.configs = Some(
                    TOPIC_CONFIGS
                        .iter()
                        .map(|k| {
                            let mut c = CreatableTopicConfigs::default();
                            c.name = sb(k.name);
                            let o = overrides.get(k.name);
                            c.value = Some(sb(o
                                .cloned()
                                .unwrap_or_else(|| (k.default)(&broker.log_defaults))));
                            c.config_source = if o.is_some() { 1 } else { 5 };
                            c
                        })
                        .collect(),
                );
            }
            Err(e) => {
                res.error_code = e.code;
                res.error_message = Some(sb(e.message));
            }
        }
        r.topics.push(res);
    }
    respond(h, &r)
}
