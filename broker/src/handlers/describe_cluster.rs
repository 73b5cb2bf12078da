//! DescribeCluster (key 60): this one broker, which is also the controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use millrace_protocol::{error_code, RequestHeaderInfo};

use super::{respond, sb, Response};
use crate::state::Broker;

pub(super) fn handle(
    broker: &Broker,
    h: &RequestHeaderInfo,
    req: DescribeClusterRequest,
) -> Response {
    let mut r = DescribeClusterResponse::default();
    // endpoint_type 1 = brokers; 2 (controllers) is answered with the same single node.
    r.endpoint_type = req.endpoint_type;
    if req.endpoint_type != 1 && req.endpoint_type != 2 {
        r.error_code = error_code::UNSUPPORTED_VERSION;
        r.error_message = Some(sb(format!("unknown endpoint type {}", req.endpoint_type)));
    }
    r.cluster_id = sb(broker.cluster_id.clone());
    r.controller_id = BrokerId(broker.node_id());
    let (host, port) = broker.args.advertised();
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(broker.node_id());
    b.host = sb(host);
    b.port = port;
    r.brokers = vec![b];
    r.cluster_authorized_operations = i32::MIN;
    respond(h, &r)
}
