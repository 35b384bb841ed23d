//! Orders the records of a query's input partitions (of several topics, for a join) by
//! timestamp before they are processed, like Kafka Streams' partition group: each round takes
//! the buffered record with the smallest timestamp, and stops when a partition that still
//! has unread records has none buffered (its next record might be earlier), so a partition
//! read ahead of another cannot make the other's records look late, and a stream record
//! meets the table rows written before it. Each partition's own order is kept. At equal
//! timestamps a table's record goes first: the stream record then sees that table row.
//! A join's source that takes its event time from a column (`timestamp = 'ts'`) is ordered
//! by that time, as Kafka Streams orders by the extracted timestamp, not the record's.
//!
//! Memory is bounded the way Kafka Streams bounds it (`buffered.records.per.partition`): a
//! partition whose buffer holds [`lane_limit`] records is paused in the consumer until its
//! buffer drains below that, so the consumer fetches the partitions the merger waits for and
//! order is never given up for memory. (Processing ahead when a buffer was full made a topic
//! read ahead in time push the query's stream time past the other topic's records, which
//! then went to the dead-letter topic as late: 7 % of q4's bids at 5 M Nexmark events.)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use sluice_log::{Consumer, ConsumerRecord, Log, TopicPartition};

use crate::error::Result;
use crate::format::Input;
use crate::query::{CompiledQuery, SourceReader};

/// Records buffered per partition at which the partition is paused, for a reader taking up
/// to `max` records at a time: enough for two full takes.
pub fn lane_limit(max: usize) -> usize {
    max.saturating_mul(2).max(1)
}

/// Each input topic of a query with the sources that read it (indices in FROM order).
pub type Routes = HashMap<Arc<str>, Vec<usize>>;

/// A partition's buffered records: (rank of its topic, topic, partition).
type Lane = (u8, Arc<str>, u32);

/// Buffers polled records and hands them out in timestamp order.
#[derive(Debug, Default)]
pub struct Merger {
    buffers: BTreeMap<Lane, VecDeque<ConsumerRecord>>,
    /// Topics whose records go first at equal timestamps (tables), rank 0; others 1.
    first: HashMap<Arc<str>, u8>,
    /// Readers of the topics whose event time is a column: records take that time; and
    /// whether the topic holds change envelopes (the column is in `after`).
    event_time: HashMap<Arc<str>, (SourceReader, bool)>,
}

impl Merger {
    /// The merger of a query's inputs: tables first at equal timestamps, and a join's
    /// sources with an event-time column ordered by it.
    pub fn for_query(query: &CompiledQuery) -> Result<Merger> {
        let mut m = Merger {
            first: query
                .table_topics()
                .into_iter()
                .map(|t| (Arc::from(t), 0))
                .collect(),
            ..Merger::default()
        };
        if let Some(j) = &query.join {
            for s in &j.sources {
                if s.def.timestamp.is_some() && !m.event_time.contains_key(s.def.topic.as_str()) {
                    m.event_time.insert(
                        Arc::from(s.def.topic.as_str()),
                        (
                            SourceReader::new(&s.def)?,
                            s.def.format == crate::format::Format::Debezium,
                        ),
                    );
                }
            }
        }
        Ok(m)
    }

    /// Gives records of the event-time topics their event time (a record whose time does
    /// not decode keeps its own; its source rejects it later). A BIGINT column of a JSON
    /// value is read alone; other records are decoded in full.
    fn event_times(&self, records: &mut [ConsumerRecord]) {
        for (topic, (reader, envelopes)) in &self.event_time {
            let column = reader.json_time_column().filter(|_| !envelopes);
            let mut at = Vec::new();
            for (i, r) in records.iter_mut().enumerate() {
                let Some(value) = r.value.as_deref().filter(|_| &r.topic == topic) else {
                    continue;
                };
                match column.and_then(|c| sluice_format::json::top_level_i64(value, c)) {
                    Some(t) => r.timestamp = t,
                    None => at.push(i),
                }
            }
            if at.is_empty() {
                continue;
            }
            let inputs: Vec<Input<'_>> = at
                .iter()
                .map(|&i| {
                    let input = Input::from(&records[i]);
                    if *envelopes {
                        crate::format::unwrap_debezium(input)
                    } else {
                        input
                    }
                })
                .collect();
            let Ok(rows) = reader.read(&inputs) else {
                continue;
            };
            let times: Vec<(usize, i64)> = rows
                .records
                .iter()
                .zip(rows.times())
                .map(|(&r, &t)| (at[r], t))
                .collect();
            for (i, t) in times {
                records[i].timestamp = t;
            }
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
    pub fn add(&mut self, mut records: Vec<ConsumerRecord>) {
        if !self.event_time.is_empty() {
            self.event_times(&mut records);
        }
        for r in records {
            let lane = self.lane(&r.topic, r.partition);
            self.buffers.entry(lane).or_default().push_back(r);
        }
    }

    /// Buffers `polled`, takes up to `max` records in timestamp order, and pauses the
    /// partitions of `consumer` whose buffers are full (resuming the others). `lanes`: the
    /// number of input partitions.
    pub fn next(
        &mut self,
        consumer: &mut Consumer,
        polled: Vec<ConsumerRecord>,
        lanes: usize,
        max: usize,
    ) -> sluice_log::Result<Vec<ConsumerRecord>> {
        self.add(polled);
        let behind = behind(consumer, lanes)?;
        let out = self.take(max, &behind);
        let limit = lane_limit(max);
        let full: Vec<TopicPartition> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.len() >= limit)
            .map(|((_, topic, partition), _)| TopicPartition {
                topic: topic.to_string(),
                partition: *partition,
            })
            .collect();
        let drained: Vec<TopicPartition> = consumer
            .paused()
            .iter()
            .filter(|tp| !full.contains(tp))
            .cloned()
            .collect();
        consumer.resume(&drained);
        consumer.pause(&full);
        Ok(out)
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
            if waiting {
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
                out.push(r);
            }
        }
        out
    }
}

/// Each input topic of `query` with the sources that read it (indices in FROM order, a
/// table's first), and every partition of those topics.
pub fn inputs(log: &Log, query: &CompiledQuery) -> Result<(Routes, Vec<TopicPartition>)> {
    let mut routes = Routes::new();
    let mut partitions = Vec::new();
    for (i, t) in query.input_topics().into_iter().enumerate() {
        let sources = routes.entry(Arc::from(t.as_str())).or_default();
        sources.push(i);
        if sources.len() == 1 {
            for p in 0..log.topic(&t)?.partition_count() {
                partitions.push(TopicPartition {
                    topic: t.clone(),
                    partition: p,
                });
            }
        }
    }
    for sources in routes.values_mut() {
        query.tables_first(sources);
    }
    Ok((routes, partitions))
}

/// The partitions of `consumer` with records it has not read yet (none to wait for when it
/// reads one partition).
fn behind(consumer: &Consumer, lanes: usize) -> sluice_log::Result<Vec<TopicPartition>> {
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

/// Each record as the input of each source reading its topic (in `routes`' order, tables
/// first: a self-join's table side is up to date when its stream side reads the record),
/// and the index in `records` of each item.
pub fn items<'a>(
    records: &'a [ConsumerRecord],
    routes: &Routes,
) -> (Vec<(usize, Input<'a>)>, Vec<usize>) {
    let mut items = Vec::with_capacity(records.len());
    let mut index = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        for &source in routes.get(&r.topic).map(Vec::as_slice).unwrap_or_default() {
            items.push((source, Input::from(r)));
            index.push(i);
        }
    }
    (items, index)
}
