//! The one dead-letter rule of every task: where input that cannot be used goes, and the
//! headers that say why.
//!
//! A task's dead letters go to `<owner>.dlq` ([`dlq_topic`]): the owner of a pipeline's
//! sources and sinks is the pipeline, the owner of a query is its output topic (a query may
//! belong to no pipeline; its output topic names it uniquely). Each dead letter keeps the
//! input's key, its raw value and its timestamp when it had them, with three headers:
//! `sluice.error` (why), `sluice.source` (where: `file:line`, `topic/partition/offset`, an
//! HTTP request) and `sluice.task` (which task: `source <pipeline>/<name>`,
//! `sink <pipeline>/<name>`, `query <id>`). A key or value over [`MAX_KEPT_BYTES`] is cut
//! to that (the reason says so). A dead letter commits in the same transaction as the work
//! around it, so it is there exactly once.

use bytes::Bytes;
use sluice_log::{Header, LogError, Producer, Record};

/// Header saying why the record was rejected.
pub const ERROR_HEADER: &str = "sluice.error";
/// Header saying where the record came from.
pub const SOURCE_HEADER: &str = "sluice.source";
/// Header naming the task that rejected the record.
pub const TASK_HEADER: &str = "sluice.task";

/// The dead-letter topic of `owner` (a pipeline, or a query's output topic).
pub fn dlq_topic(owner: &str) -> String {
    format!("{owner}.dlq")
}

/// Input a task could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: String,
    /// Where it came from.
    pub origin: String,
    /// The input's key, if it had one.
    pub key: Option<Bytes>,
    /// The raw input.
    pub value: Option<Bytes>,
    /// The input's timestamp (ms), if it had one; else the time it was rejected.
    pub timestamp: Option<i64>,
}

/// The most of an input's key or value a dead letter keeps: the rest is cut (the reason says
/// so), so that a dead letter always fits the dead-letter topic, even for input rejected for
/// being too large.
pub const MAX_KEPT_BYTES: usize = 64 * 1024;

impl DeadLetter {
    /// The record for the dead-letter topic, from task `task`.
    pub fn into_record(self, task: &str) -> Record {
        let mut reason = self.reason;
        let mut cut = |b: Option<Bytes>, what: &str| {
            b.map(|b| {
                if b.len() <= MAX_KEPT_BYTES {
                    return b;
                }
                reason.push_str(&format!(
                    " (the {what} is cut to its first {MAX_KEPT_BYTES} of {} bytes)",
                    b.len()
                ));
                b.slice(..MAX_KEPT_BYTES)
            })
        };
        let key = cut(self.key, "key");
        let value = cut(self.value, "value");
        Record {
            key,
            value,
            headers: vec![
                Header {
                    key: ERROR_HEADER.into(),
                    value: Some(Bytes::from(reason)),
                },
                Header {
                    key: SOURCE_HEADER.into(),
                    value: Some(Bytes::from(self.origin)),
                },
                Header {
                    key: TASK_HEADER.into(),
                    value: Some(Bytes::from(task.to_string())),
                },
            ],
            timestamp: self.timestamp.unwrap_or_else(sluice_log::record::now_ms),
        }
    }
}

/// Sends `record` to `topic`, or, when the topic cannot take it (too large even alone for
/// `max.message.bytes`, or without a key for a compacted topic), sends it to `dlq` as a
/// dead letter from task `task` instead of failing: one such input must not stop a task.
/// Returns whether it went to `topic`.
pub fn send_or_dead_letter(
    producer: &mut Producer,
    topic: &str,
    record: Record,
    dlq: &str,
    task: &str,
) -> sluice_log::Result<bool> {
    let (key, value, timestamp) = (record.key.clone(), record.value.clone(), record.timestamp);
    match producer.send(topic, record) {
        Ok(_) => Ok(true),
        Err(e @ (LogError::RecordTooLarge { .. } | LogError::InvalidRecord { .. })) => {
            let letter = DeadLetter {
                reason: e.to_string(),
                origin: format!("a record for topic {topic}"),
                key,
                value,
                timestamp: Some(timestamp),
            };
            producer.send_to(dlq, 0, letter.into_record(task))?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
