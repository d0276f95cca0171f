//! InitProducerId (API 22), versions 0 to 5, for idempotent producers: every request gets a
//! producer id no one has had in this data directory (the engine's durable allocator; in a
//! cluster, combined with the node id so no two nodes hand out the same one) at epoch 0. That is what Kafka answers a producer without a transactional id, also when it
//! passes its current id and epoch (v3+, KIP-360): for an idempotent producer a fresh id
//! is as good as a bumped epoch, since sequence state is per producer id.
//!
//! Transactions are not implemented. A request with a transactional id is answered with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), the code Kafka gives a producer that may not
//! use a transactional id: clients treat it as fatal and say "Transactional Id
//! authorization failed" at `initTransactions()`, where a coordinator error
//! (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR) would have them retry until their
//! timeout with no hint. The log line and the tests say why. An empty transactional id is
//! INVALID_REQUEST, as Kafka answers it.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::errors;

pub fn handle(broker: &Broker, request: &InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(transactional_id) = &request.transactional_id {
        if transactional_id.0.is_empty() {
            return refused(ResponseError::InvalidRequest.code());
        }
        tracing::info!(
            transactional_id = %transactional_id.0.as_str(),
            "InitProducerId refused: ringlog does not support transactions"
        );
        return refused(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let allocated = broker.engine.allocate_producer_id();
    match allocated.map(|id| cluster_wide(broker, id)) {
        Ok(Some(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Ok(None) => {
            tracing::warn!("InitProducerId: this node's producer ids are spent");
            refused(ResponseError::UnknownServerError.code())
        }
        Err(error) => {
            tracing::warn!(%error, "InitProducerId: no producer id could be reserved");
            refused(errors::code(&error))
        }
    }
}

/// A node's producer id made unique in its cluster: every node allocates from its own
/// durable counter, so in a cluster the id is the counter shifted past the 31 bits of the
/// node id, which fills them. Alone, the counter is the id. `None` once the counter passes
/// what 63 bits hold (2^32 producers per node).
fn cluster_wide(broker: &Broker, id: i64) -> Option<i64> {
    let Some(cluster) = &broker.cluster else {
        return Some(id);
    };
    let node = i64::try_from(cluster.node_id()).ok()?;
    id.checked_mul(1 << 31)
        .filter(|shifted| *shifted >= 0)
        .map(|shifted| shifted | node)
}
