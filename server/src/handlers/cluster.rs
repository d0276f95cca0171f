//! DescribeCluster: the cluster id, this node as the only broker and the controller, and
//! (when asked) the cluster operations a client may perform — all of them, as ringlog has
//! no authorizer. Only the broker endpoint exists: asking for controllers (endpoint type 2,
//! version 1 on) is UNSUPPORTED_ENDPOINT_TYPE, as from a Kafka broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{node_id_i32, Broker, NODE_ID};

/// `endpoint_type` of brokers (Kafka's `EndpointType.BROKER`).
pub const ENDPOINT_BROKER: i8 = 1;

/// "Not requested", in `cluster_authorized_operations`.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Kafka's ACL operation codes (`AclOperation`) that apply to the cluster resource: ALTER,
/// CREATE, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE.
const CLUSTER_OPERATIONS: [u8; 7] = [7, 5, 8, 9, 10, 11, 12];

/// The first version with `endpoint_type`.
const ENDPOINT_TYPE_VERSION: i16 = 1;

pub fn handle(
    broker: &Broker,
    request: &DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let endpoint_type = if version >= ENDPOINT_TYPE_VERSION {
        request.endpoint_type
    } else {
        ENDPOINT_BROKER
    };
    let response = DescribeClusterResponse::default().with_endpoint_type(endpoint_type);
    if endpoint_type != ENDPOINT_BROKER {
        let message = format!(
            "endpoint type {endpoint_type} was asked for; ringlog serves only brokers \
             (endpoint type {ENDPOINT_BROKER})"
        );
        return response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_string(message)));
    }
    let node = |id: i32, host: String, port: u16| {
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(id))
            .with_host(StrBytes::from_string(host))
            .with_port(i32::from(port))
            .with_rack(None)
    };
    let (nodes, controller) = if let Some(cluster) = &broker.cluster {
        let nodes = (cluster.live_brokers().into_iter())
            .map(|(id, (host, port))| node(node_id_i32(id), host, port))
            .collect();
        (nodes, cluster.controller().map_or(-1, node_id_i32))
    } else {
        let address = broker.config.advertised_listener;
        let host = address.ip().to_string();
        (vec![node(NODE_ID, host, address.port())], NODE_ID)
    };
    let operations = if request.include_cluster_authorized_operations {
        cluster_operations()
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    response
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(nodes)
        .with_cluster_authorized_operations(operations)
}

/// The bit set of every cluster operation (bit `n` for ACL operation code `n`).
fn cluster_operations() -> i32 {
    CLUSTER_OPERATIONS
        .iter()
        .fold(0, |bits, &operation| bits | (1 << operation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_operation_is_authorized_and_nothing_else() {
        let bits = cluster_operations();
        assert_eq!(
            bits, 0b1_1111_1010_0000,
            "ALTER..IDEMPOTENT_WRITE and CREATE"
        );
        assert_eq!(bits & (1 << 3), 0, "READ is not a cluster operation");
        assert_ne!(bits, AUTHORIZED_OPERATIONS_OMITTED);
    }
}
