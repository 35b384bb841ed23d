//! InitProducerId: ids for idempotent producers, and for transactional ones the id's
//! producer with its epoch bumped (fencing older instances).

use std::time::Duration;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Ctx;
use crate::errors;

pub(crate) fn init_producer_id(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let log = &ctx.broker.log;
    let id = req.transactional_id.as_ref().map(|t| t.0.to_string());
    let timeout = Duration::from_millis(req.transaction_timeout_ms.max(0) as u64);
    match log.init_producer_id(id.as_deref(), timeout) {
        Ok((pid, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(errors::code(&e))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
