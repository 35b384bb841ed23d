//! Values a task keeps in a compacted one-partition topic inside its transactions (in a
//! cluster, a pipeline's input positions): reading the committed latest value of a key.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::{Isolation, Log, LogError};

use crate::StopToken;

/// Waits until no transaction holds `topic`'s (partition 0) last stable offset below the
/// end it has now: a value is written just before its transaction commits, and a later
/// value behind an open transaction must not be missed. Woken by appends (a commit marker)
/// and by `stop`; gives up after 60 s (retryably).
pub fn wait_stable(log: &Log, topic: &str, stop: &StopToken) -> Result<(), LogError> {
    let partition = log.partition(topic, 0)?;
    let end = partition.info().high_watermark;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let generation = log.append_generation();
        if partition.info().last_stable_offset >= end || stop.is_stopped() {
            return Ok(());
        }
        let now = Instant::now();
        if now > deadline {
            return Err(LogError::TxnTimedOut(format!(
                "{topic}: a transaction stayed open for 60 s (a former instance of a task of this pipeline that is not fenced yet?); cannot read the committed positions"
            )));
        }
        log.wait_for_append(generation, deadline - now);
    }
}

/// The latest committed value of `key` in `topic` (partition 0), after [`wait_stable`];
/// `None` when it has none (or its last record is a tombstone). Reads the whole topic:
/// for small compacted topics.
pub fn latest(
    log: &Log,
    topic: &str,
    key: &[u8],
    stop: &StopToken,
) -> Result<Option<Bytes>, LogError> {
    wait_stable(log, topic, stop)?;
    scan(log, topic, key, Isolation::ReadCommitted)
}

/// The latest value of `key` in `topic` (partition 0), for a key only ever written outside
/// transactions: read at once, without waiting for other writers' open transactions (which
/// may be those of tasks not started yet, which alone would end them).
pub fn latest_written(log: &Log, topic: &str, key: &[u8]) -> Result<Option<Bytes>, LogError> {
    scan(log, topic, key, Isolation::ReadUncommitted)
}

fn scan(
    log: &Log,
    topic: &str,
    key: &[u8],
    isolation: Isolation,
) -> Result<Option<Bytes>, LogError> {
    let partition = log.partition(topic, 0)?;
    let mut offset = partition.info().log_start_offset;
    let mut value = None;
    loop {
        let fetched = partition.fetch(offset, 4 << 20, isolation)?;
        if fetched.data.is_empty() {
            return Ok(value);
        }
        let (records, next) = sluice_log::consumer::decode_fetch(&fetched, isolation)
            .map_err(|e| LogError::InvalidRequest(format!("{topic}: {e}")))?;
        for r in records {
            if r.record.key.as_deref() == Some(key) {
                value = r.record.value;
            }
        }
        offset = next;
    }
}
