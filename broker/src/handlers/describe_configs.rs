//! DescribeConfigs (key 32): topic configs (override or default, with their source) and the
//! broker's static configs.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use millrace_protocol::{error_code as ec, RequestHeaderInfo};

use super::{respond, sb, Response};
use crate::state::Broker;
use crate::topic_config::TOPIC_CONFIGS;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// config_source values.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

pub(super) fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: DescribeConfigsRequest,
) -> Response {
    let mut r = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let wanted = |name: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        let entry = |name: &str, value: String, source: i8, config_type: i8, doc: &str| {
            let mut c = DescribeConfigsResourceResult::default();
            c.name = sb(name);
            c.value = Some(sb(value));
            c.config_source = source;
            if h.api_version >= 3 {
                c.config_type = config_type;
            }
            if h.api_version >= 3 {
                c.documentation = req.include_documentation.then(|| sb(doc));
            }
            c
        };
        match res.resource_type {
            TOPIC => match broker.topic(res.resource_name.as_str()) {
                None => {
                    out.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
                    out.error_message =
                        Some(sb(format!("unknown topic {:?}", res.resource_name.as_str())));
                }
                Some(t) => {
                    let overrides = t.configs.read().unwrap_or_else(|e| e.into_inner()).clone();
                    for k in TOPIC_CONFIGS.iter().filter(|k| wanted(k.name)) {
                        let (value, source) = match overrides.get(k.name) {
                            Some(v) => (v.clone(), DYNAMIC_TOPIC_CONFIG),
                            None => ((k.default)(&broker.log_defaults), DEFAULT_CONFIG),
                        };
                        out.configs.push(entry(k.name, value, source, k.config_type, k.doc));
                    }
                }
            },
            BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != broker.node_id().to_string() {
                    out.error_code = ec::INVALID_REQUEST;
                    out.error_message = Some(sb(format!("unknown broker {name:?}")));
                } else {
                    let a = &broker.args;
                    let (host, port) = a.advertised();
                    // The pool the runtime runs (its size was fixed at start); its default
                    // depends on the machine, so an unset value says DEFAULT_CONFIG, as Kafka.
                    let threads = tokio::runtime::Handle::try_current()
                        .map_or_else(|_| a.network_threads(), |h| h.metrics().num_workers());
                    let threads_source = match a.num_network_threads {
                        Some(_) => STATIC_BROKER_CONFIG,
                        None => DEFAULT_CONFIG,
                    };
                    const STATIC: i8 = STATIC_BROKER_CONFIG;
                    let items: [(&str, String, i8, i8); 11] = [
                        ("node.id", a.node_id.to_string(), 3, STATIC),
                        ("listeners", format!("PLAINTEXT://{}", a.listen), 2, STATIC),
                        ("advertised.listeners", format!("PLAINTEXT://{host}:{port}"), 2, STATIC),
                        ("log.dirs", a.data_dir.join("logs").display().to_string(), 2, STATIC),
                        ("num.partitions", a.num_partitions.to_string(), 3, STATIC),
                        (
                            "auto.create.topics.enable",
                            a.auto_create_topics_enable.to_string(),
                            1,
                            STATIC,
                        ),
                        (
                            "socket.request.max.bytes",
                            a.socket_request_max_bytes.to_string(),
                            3,
                            STATIC,
                        ),
                        ("max.connections", a.max_connections.to_string(), 3, STATIC),
                        ("num.network.threads", threads.to_string(), 3, threads_source),
                        ("log.retention.ms", a.log_retention_ms.to_string(), 5, STATIC),
                        ("message.max.bytes", a.message_max_bytes.to_string(), 3, STATIC),
                    ];
                    for (k, v, ty, source) in items.into_iter().filter(|(k, ..)| wanted(k)) {
                        let mut c = entry(k, v, source, ty, "");
                        c.read_only = true; // static: IncrementalAlterConfigs refuses them
                        out.configs.push(c);
                    }
                }
            }
            other => {
                out.error_code = ec::INVALID_REQUEST;
                out.error_message = Some(sb(format!("resource type {other} is not supported")));
            }
        }
        r.results.push(out);
    }
    respond(h, &r)
}
