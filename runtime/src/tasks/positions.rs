//! The committed source positions and keyed source state, as in the compacted topic
//! `__sluice_source_positions` (key `<pipeline>/<source>` for a position,
//! `<pipeline>/<source>\0<entry>` for a state entry, such as HTTP ingest's idempotency keys).
//! In a cluster each pipeline has its own, `__sluice_source_positions.<pipeline>`, which
//! moves with it and holds its sinks' offsets too (key: the sink's group).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_connectors::StateEntries;
use sluice_log::{Isolation, Log};
use sluice_task::StopToken;

use super::TaskError;

/// The topic holding source positions.
pub const POSITIONS_TOPIC: &str = "__sluice_source_positions";

/// The positions topic of `pipeline` in a cluster (`.` is in no pipeline name).
pub fn pipeline_positions_topic(pipeline: &str) -> String {
    format!("{POSITIONS_TOPIC}.{pipeline}")
}

/// The committed source positions and keyed source state, as in `__sluice_source_positions`
/// (key `<pipeline>/<source>` for a position, `<pipeline>/<source>\0<entry>` for a state
/// entry). The topic is read once, then only what was appended since, so a source's start
/// does not read the whole topic again.
#[derive(Debug)]
pub struct Positions {
    /// Its topic (one partition).
    topic: String,
    /// The offset after the last record applied.
    next: i64,
    entries: BTreeMap<Bytes, Bytes>,
}

/// The positions shared by a worker's source tasks.
pub type SharedPositions = Arc<Mutex<Positions>>;

impl Positions {
    /// The positions kept in `topic`, read from its start at the first
    /// [`Self::catch_up`].
    pub fn new(topic: &str) -> Positions {
        Positions {
            topic: topic.to_string(),
            next: 0,
            entries: BTreeMap::new(),
        }
    }

    /// Its topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Applies the committed records appended since the last call.
    ///
    /// Call [`wait_stable`] first: other sources' transactions may hold the topic's last
    /// stable offset back for a moment (a position is written just before its transaction
    /// commits), and a later position of a source behind one must not be missed.
    pub(crate) fn catch_up(&mut self, log: &Log) -> Result<(), TaskError> {
        let partition = log.partition(&self.topic, 0)?;
        let mut offset = self.next.max(partition.info().log_start_offset);
        loop {
            let fetched = partition.fetch(offset, 4 << 20, Isolation::ReadCommitted)?;
            if fetched.data.is_empty() {
                break;
            }
            let (records, next) =
                sluice_log::consumer::decode_fetch(&fetched, Isolation::ReadCommitted)
                    .map_err(|e| TaskError::Retryable(format!("{}: {e}", self.topic)))?;
            for r in records {
                let Some(key) = r.record.key else { continue };
                match r.record.value {
                    Some(v) => self.entries.insert(key, v),
                    None => self.entries.remove(&key),
                };
            }
            offset = next;
        }
        self.next = offset;
        Ok(())
    }

    /// The committed position of source `key` and its state entries.
    pub(crate) fn get(&self, key: &str) -> (Option<Bytes>, StateEntries) {
        let prefix = state_key(key, b"");
        let state = self
            .entries
            .range(Bytes::from(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v.to_vec()))
            .collect();
        (self.entries.get(key.as_bytes()).cloned(), state)
    }
}

/// Waits until no transaction holds the positions topic's last stable offset below the end
/// it has now (outside the [`Positions`] lock, so one slow transaction holds up only this
/// source's start).
pub(crate) fn wait_stable(log: &Log, topic: &str, stop: &StopToken) -> Result<(), TaskError> {
    Ok(sluice_task::kept::wait_stable(log, topic, stop)?)
}

/// The positions-topic key of state entry `entry` of source `source`.
pub(crate) fn state_key(source: &str, entry: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 1 + entry.len());
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(entry);
    k
}
