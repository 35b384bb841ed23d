//! InitProducerId: ids for idempotent producers, and for transactional ones the id's
//! producer with its epoch bumped (fencing older instances), at the id's coordinator.

use std::time::Duration;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Ctx;
use crate::errors;

/// Transactional ids Kafka clients may not take: the worker's tasks'.
const RESERVED_PREFIX: &str = "sluice-";

pub(crate) fn init_producer_id(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let log = &ctx.broker.log;
    let id = req.transactional_id.as_ref().map(|t| t.0.to_string());
    let timeout = Duration::from_millis(req.transaction_timeout_ms.max(0) as u64);
    let refused = |code| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    // The worker's own tasks' ids (`sluice-source-…`, `sluice-sink-…`, `sluice-query-…`): a
    // client taking one would fence a pipeline's task and abort its transaction. (The
    // tasks' producers are the log's own: no node asks for one over the wire either.)
    if id
        .as_deref()
        .is_some_and(|id| id.starts_with(RESERVED_PREFIX))
    {
        tracing::warn!(client = %ctx.client, peer = %ctx.peer, "A Kafka client asked for a transactional id of the worker's own tasks; refused.");
        return refused(kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let mut answer = None;
    let code = match &id {
        // A transactional id: only at its coordinator (in a cluster).
        Some(id) => super::transactions::at_coordinator(ctx, id, || {
            answer = Some(log.init_producer_id(Some(id), timeout)?);
            Ok(())
        }),
        None => match log.init_producer_id(None, timeout) {
            Ok(a) => {
                answer = Some(a);
                0
            }
            Err(e) => errors::code(&e),
        },
    };
    match answer {
        Some((pid, epoch)) if code == 0 => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
        _ => refused(code),
    }
}
