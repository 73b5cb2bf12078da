//! IncrementalAlterConfigs (key 44): SET / DELETE / APPEND / SUBTRACT on topic configs, validated
//! as a whole and applied to every partition's log, then persisted. Broker configs are static
//! here and answered with INVALID_REQUEST.

use std::collections::BTreeMap;

use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, sb, Response};
use crate::state::{Broker, TopicError};
use crate::topic_config;

const TOPIC: i8 = 2;

pub(super) async fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: IncrementalAlterConfigsRequest,
) -> Response {
    let mut r = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let outcome: Result<(), (i16, String)> = async {
            if res.resource_type != TOPIC {
                return Err((ec::INVALID_REQUEST, "only topic configs can be altered".to_string()));
            }
            broker
                .alter_topic_configs(
                    res.resource_name.as_str(),
                    |configs| {
                        apply(broker, configs, &res.configs)
                            .map_err(|(code, message)| TopicError::new(code, message))
                    },
                    req.validate_only,
                )
                .await
                .map_err(|e| (e.code, e.message))
        }
        .await;
        if let Err((code, msg)) = outcome {
            out.error_code = code;
            out.error_message = Some(sb(msg));
        }
        r.responses.push(out);
    }
    respond(h, &r)
}

/// Applies one resource's operations, in order, to a copy of its overrides.
fn apply(
    broker: &Broker,
    configs: &mut BTreeMap<String, String>,
    ops: &[AlterableConfig],
) -> Result<(), (i16, String)> {
    for c in ops {
        let name = c.name.to_string();
        let Some(key) = topic_config::key(&name) else {
            return Err((ec::INVALID_CONFIG, format!("unknown topic config {name:?}")));
        };
        let value = c.value.as_ref().map(|v| v.to_string());
        match c.config_operation {
            0 => {
                let v = value.ok_or((ec::INVALID_REQUEST, format!("SET {name} needs a value")))?;
                configs.insert(name, v);
            }
            1 => {
                configs.remove(&name);
            }
            2 | 3 if key.config_type == 7 => {
                let v = value.ok_or((ec::INVALID_REQUEST, format!("{name} needs a value")))?;
                let current = configs
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| (key.default)(&broker.log_defaults));
                let mut items: Vec<String> = current
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for x in v.split(',').map(|s| s.trim().to_string()) {
                    if c.config_operation == 2 && !items.contains(&x) {
                        items.push(x);
                    } else if c.config_operation == 3 {
                        items.retain(|i| *i != x);
                    }
                }
                configs.insert(name, items.join(","));
            }
            2 | 3 => {
                return Err((
                    ec::INVALID_CONFIG,
                    format!("{name} is not a list; APPEND/SUBTRACT do not apply"),
                ))
            }
            op => return Err((ec::INVALID_REQUEST, format!("unknown config operation {op}"))),
        }
    }
    Ok(())
}
