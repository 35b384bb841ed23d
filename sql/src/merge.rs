//! Orders the records of a query's input partitions (of several topics, for a join) by
//! timestamp before they are processed, like Kafka Streams' partition group: each round takes
//! the buffered record with the smallest timestamp, and stops when a partition that still
//! has unread records has none buffered (its next record might be earlier), so a partition
//! read ahead of another cannot make the other's records look late, and a stream record
//! meets the table rows written before it. Each partition's own order is kept. At equal
//! timestamps a table's record goes first: the stream record then sees that table row.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use sluice_log::{Consumer, ConsumerRecord, TopicPartition};

/// Records buffered beyond which the merger processes even while a partition is missing
/// (bounded memory beats perfect order).
const MERGE_BUFFER_LIMIT: usize = 200_000;

/// A partition's buffered records: (rank of its topic, topic, partition).
type Lane = (u8, Arc<str>, u32);

/// Buffers polled records and hands them out in timestamp order.
#[derive(Debug, Default)]
pub struct Merger {
    buffers: BTreeMap<Lane, VecDeque<ConsumerRecord>>,
    buffered: usize,
    /// Topics whose records go first at equal timestamps (tables), rank 0; others 1.
    first: HashMap<Arc<str>, u8>,
}

impl Merger {
    /// A merger where the records of `tables` go before others at equal timestamps.
    pub fn new(tables: impl IntoIterator<Item = String>) -> Merger {
        Merger {
            first: tables.into_iter().map(|t| (Arc::from(t), 0)).collect(),
            ..Merger::default()
        }
    }

    fn lane(&self, topic: &Arc<str>, partition: u32) -> Lane {
        (
            self.first.get(topic).copied().unwrap_or(1),
            Arc::clone(topic),
            partition,
        )
    }

    /// Buffers polled records.
    pub fn add(&mut self, records: Vec<ConsumerRecord>) {
        self.buffered += records.len();
        for r in records {
            let lane = self.lane(&r.topic, r.partition);
            self.buffers.entry(lane).or_default().push_back(r);
        }
    }

    /// Records buffered.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Up to `max` records in timestamp order; `behind`: partitions with unread records.
    pub fn take(&mut self, max: usize, behind: &[TopicPartition]) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        if self.buffers.len() <= 1 && behind.is_empty() {
            // One partition: its order is the order.
            for b in self.buffers.values_mut() {
                let n = b.len().min(max);
                out.extend(b.drain(..n));
            }
            self.buffered -= out.len();
            return out;
        }
        let behind: Vec<Lane> = behind
            .iter()
            .map(|tp| self.lane(&Arc::from(tp.topic.as_str()), tp.partition))
            .collect();
        while out.len() < max {
            let waiting = behind
                .iter()
                .any(|l| self.buffers.get(l).is_none_or(|b| b.is_empty()));
            if waiting && self.buffered < MERGE_BUFFER_LIMIT {
                break;
            }
            let next = self
                .buffers
                .iter()
                .filter_map(|(l, b)| b.front().map(|r| (r.timestamp, l)))
                .min()
                .map(|(_, l)| l.clone());
            let Some(lane) = next else { break };
            if let Some(r) = self.buffers.get_mut(&lane).and_then(|b| b.pop_front()) {
                self.buffered -= 1;
                out.push(r);
            }
        }
        out
    }
}

/// The partitions of `consumer` with records it has not read yet (none to wait for when it
/// reads one partition).
pub fn behind(consumer: &Consumer, lanes: usize) -> sluice_log::Result<Vec<TopicPartition>> {
    if lanes <= 1 {
        return Ok(Vec::new());
    }
    Ok(consumer
        .lag()?
        .into_iter()
        .filter(|(_, lag)| *lag > 0)
        .map(|(tp, _)| tp)
        .collect())
}

/// The runs of consecutive records of one topic: a query takes each run through the
/// sources reading that topic.
pub fn topic_runs(records: &[ConsumerRecord]) -> Vec<(Arc<str>, std::ops::Range<usize>)> {
    let mut runs: Vec<(Arc<str>, std::ops::Range<usize>)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match runs.last_mut() {
            Some((t, range)) if *t == r.topic => range.end = i + 1,
            _ => runs.push((Arc::clone(&r.topic), i..i + 1)),
        }
    }
    runs
}
