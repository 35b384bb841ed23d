//! The producer: batches records per partition, picks partitions like Kafka's default
//! partitioner, numbers batches for idempotence and, with a transactional id, writes
//! transactions.
//!
//! A producer is used from one thread (`&mut self`); make one per thread. `send` only buffers
//! until a partition's batch reaches `batch_size`; `flush` (or a transaction commit) appends
//! what is left. An append returns once the batch is in the log and as durable as the log's
//! fsync policy promises.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchBuilder, BatchOptions};
use crate::compression::Compression;
use crate::error::{LogError, Result};
use crate::group::TopicPartition;
use crate::log::{Log, Topic};
use crate::offsets::OFFSETS_TOPIC;
use crate::partition::AppendInfo;
use crate::partitioner::{StickyPartitioner, partition_for_key};
use crate::record::Record;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Compression of each batch. Default none.
    pub compression: Compression,
    /// A partition's batch is appended when it reaches this many (uncompressed) bytes.
    /// Default 64 KiB.
    pub batch_size: usize,
    /// Number batches with a producer id and sequences so a retried batch is not appended
    /// twice. Default on; always on for transactional producers.
    pub idempotent: bool,
    /// How long a transaction may stay open before the log aborts it. Default 60 s.
    pub transaction_timeout: Duration,
    /// When a write counts as done. Default [`Acks::All`], which on a worker alone is the
    /// same as [`Acks::Leader`]; it matters for a cluster's replicated partitions.
    pub acks: Acks,
    /// How long [`Producer::flush`] waits for the in-sync replicas with [`Acks::All`].
    /// Default 30 s (Kafka's `request.timeout.ms`).
    pub replication_timeout: Duration,
    /// In a cluster, the transactional id's records are replicated as a Kafka client's are
    /// ([`crate::log::TxnReplication`]): its coordinator is the leader of the id's partition
    /// of the cluster's transactions topic, which must be this node, and the node that
    /// leads it next finishes or aborts what this producer left. Default off (the id is
    /// this node's alone).
    pub replicated: bool,
}

/// When a write counts as done (Kafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// When this node appended it (`acks=1`).
    Leader,
    /// When every in-sync replica has it (`acks=all`): [`Producer::flush`] waits for the
    /// partitions' high watermarks, and a partition with fewer in-sync replicas than its
    /// `min.insync.replicas` refuses new batches.
    #[default]
    All,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            compression: Compression::None,
            batch_size: 64 * 1024,
            idempotent: true,
            transaction_timeout: Duration::from_secs(60),
            acks: Acks::All,
            replication_timeout: Duration::from_secs(30),
            replicated: false,
        }
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    base_sequence: i32,
}

/// Per-topic producer state, indexed by partition so the hot path does one map lookup.
struct TopicState {
    topic: Arc<Topic>,
    name: Arc<str>,
    sticky: StickyPartitioner,
    open: Vec<Option<OpenBatch>>,
    sequences: Vec<i32>,
}

impl TopicState {
    /// Whether `record` would take the open batch of `partition` past `batch_size` (an
    /// empty batch always takes one record, however large).
    fn batch_full(&self, partition: u32, record: &Record, batch_size: usize) -> bool {
        self.open
            .get(partition as usize)
            .and_then(Option::as_ref)
            .is_some_and(|b| {
                !b.builder.is_empty()
                    && b.builder.estimated_size() + record_size(record) > batch_size
            })
    }
}

/// Writes records to the log. See the module docs.
pub struct Producer {
    log: Log,
    config: ProducerConfig,
    producer_id: i64,
    epoch: i16,
    transactional_id: Option<String>,
    in_txn: bool,
    txn_partitions: BTreeSet<(String, u32)>,
    topics: TopicMap,
    /// With [`Acks::All`]: partitions appended since the last flush, the log end each
    /// reached and the leader epoch of the first append, for the flush to wait on.
    unreplicated: Vec<(Arc<str>, u32, i64, i32)>,
}

/// A producer's topics by name: a short list searched in order, because a producer writes
/// a few topics and each send looks its topic up several times (hashing the name each time
/// cost more than comparing it with one or two others).
#[derive(Default)]
struct TopicMap(Vec<(String, TopicState)>);

impl TopicMap {
    fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|(n, _)| n == name)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    fn get(&self, name: &str) -> Option<&TopicState> {
        self.position(name).map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut TopicState> {
        self.position(name).map(|i| &mut self.0[i].1)
    }

    fn insert(&mut self, name: String, state: TopicState) {
        match self.position(&name) {
            Some(i) => self.0[i].1 = state,
            None => self.0.push((name, state)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &TopicState)> {
        self.0.iter().map(|(n, s)| (n, s))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut TopicState> {
        self.0.iter_mut().map(|(_, s)| s)
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("producer_id", &self.producer_id)
            .field("epoch", &self.epoch)
            .field("transactional_id", &self.transactional_id)
            .finish()
    }
}

/// The batch size to aim for on a topic whose `max.message.bytes` is `max`: a batch that
/// outgrew the topic's limit would fail whole at its append.
fn capped(batch_size: usize, max: u32) -> usize {
    batch_size.min((max as usize).saturating_sub(crate::batch::BATCH_HEADER_LEN + 64))
}

fn record_size(record: &Record) -> usize {
    record.key.as_ref().map_or(0, |k| k.len())
        + record.value.as_ref().map_or(0, |v| v.len())
        + record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
        + 16
}

impl Producer {
    pub(crate) fn new(
        log: Log,
        config: ProducerConfig,
        transactional_id: Option<String>,
    ) -> Result<Producer> {
        let (producer_id, epoch) = match &transactional_id {
            Some(id) if config.replicated => {
                log.coordinated(id, || log.txn_init(id, config.transaction_timeout, true))?
            }
            Some(id) => log.txn_init(id, config.transaction_timeout, false)?,
            None if config.idempotent => (log.allocate_producer_id()?, 0),
            None => (-1, -1),
        };
        Ok(Producer {
            log,
            config,
            producer_id,
            epoch,
            transactional_id,
            in_txn: false,
            txn_partitions: BTreeSet::new(),
            topics: TopicMap::default(),
            unreplicated: Vec::new(),
        })
    }

    /// The producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The producer epoch.
    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    fn topic_state(&mut self, name: &str) -> Result<&mut TopicState> {
        if !self.topics.contains_key(name) {
            let topic = self.log.topic_or_create(name)?;
            let state = TopicState {
                name: Arc::from(topic.name()),
                topic,
                sticky: StickyPartitioner::default(),
                open: Vec::new(),
                sequences: Vec::new(),
            };
            self.topics.insert(name.to_string(), state);
        }
        self.topics
            .get_mut(name)
            .ok_or_else(|| LogError::UnknownTopic(name.into()))
    }

    /// Buffers a record, choosing its partition: murmur2 of the key, or sticky round robin for
    /// records without a key. Returns the append of a batch this send completed, if any.
    pub fn send(&mut self, topic: &str, record: Record) -> Result<Option<AppendInfo>> {
        let batch_size = self.config.batch_size;
        let state = self.topic_state(topic)?;
        let n = state.topic.partition_count();
        let partition = match &record.key {
            Some(k) => partition_for_key(k, n),
            None => {
                let p = state.sticky.partition(n);
                // A keyless record that would overflow the sticky partition's batch closes
                // it and goes to the next partition, as in Kafka (abort-on-new-batch).
                let max = state.topic.config().max_message_bytes;
                let full = state.batch_full(p, &record, capped(batch_size, max));
                if full {
                    let completed = self.flush_partition(topic, p)?;
                    let p = self.topic_state(topic)?.sticky.partition(n);
                    return self.send_to(topic, p, record).map(|c| c.or(completed));
                }
                p
            }
        };
        self.send_to(topic, partition, record)
    }

    /// Buffers a record for an explicit partition.
    pub fn send_to(
        &mut self,
        topic: &str,
        partition: u32,
        record: Record,
    ) -> Result<Option<AppendInfo>> {
        if self.transactional_id.is_some() && !self.in_txn {
            return Err(
                self.txn_state_error("send outside a transaction: call begin_transaction first")
            );
        }
        let batch_size = self.config.batch_size;
        let compressed = self.config.compression != Compression::None;
        let state = self.topic_state(topic)?;
        let n = state.topic.partition_count();
        if partition >= n {
            return Err(LogError::UnknownPartition {
                topic: topic.into(),
                partition,
                partitions: n,
            });
        }
        // A record that cannot fit the topic's `max.message.bytes` even alone is refused
        // here, alone: buffered, it would make the append of its whole batch fail, and the
        // records sharing the batch with it. Uncompressed only (compression may make it fit).
        let max = state.topic.config().max_message_bytes;
        if !compressed {
            let size = crate::batch::BATCH_HEADER_LEN + record_size(&record) + 16;
            if size > max as usize {
                return Err(LogError::RecordTooLarge {
                    topic: topic.into(),
                    partition,
                    size,
                    max,
                });
            }
        }
        let p = partition as usize;
        if state.open.len() < n as usize {
            state.open.resize_with(n as usize, || None);
            state.sequences.resize(n as usize, 0);
        }
        let full = state.batch_full(partition, &record, capped(batch_size, max));
        let completed = if full {
            self.flush_partition(topic, partition)?
        } else {
            None
        };
        let needs_batch = self.topics.get(topic).is_some_and(|s| s.open[p].is_none());
        if needs_batch {
            // In a cluster: this node must lead the partition, with enough in-sync replicas
            // for acks=all.
            self.log
                .check_write(topic, partition, self.config.acks == Acks::All)?;
            if let Some(id) = &self.transactional_id {
                let tp = (topic.to_string(), partition);
                if !self.txn_partitions.contains(&tp) {
                    self.in_coordinator(id, || {
                        self.log.txn_add_partitions(
                            id,
                            self.producer_id,
                            self.epoch,
                            std::slice::from_ref(&tp),
                        )
                    })?;
                    self.txn_partitions.insert(tp);
                }
            }
        }
        let (producer_id, epoch, compression) =
            (self.producer_id, self.epoch, self.config.compression);
        let transactional = self.transactional_id.is_some();
        let state = self.topic_state(topic)?;
        let open = state.open[p].get_or_insert_with(|| {
            let base_sequence = if producer_id >= 0 {
                state.sequences[p]
            } else {
                -1
            };
            OpenBatch {
                builder: BatchBuilder::new(BatchOptions {
                    compression,
                    producer_id,
                    producer_epoch: epoch,
                    base_sequence,
                    transactional,
                    partition_leader_epoch: -1,
                }),
                base_sequence,
            }
        });
        open.builder
            .push(&record)
            .map_err(|source| LogError::Batch {
                topic: topic.to_string(),
                partition,
                source,
            })?;
        Ok(completed)
    }

    fn flush_partition(&mut self, topic: &str, partition: u32) -> Result<Option<AppendInfo>> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Ok(None);
        };
        let p = partition as usize;
        let Some(open) = state.open.get_mut(p).and_then(Option::take) else {
            return Ok(None);
        };
        if open.builder.is_empty() {
            return Ok(None);
        }
        let count = open.builder.record_count() as i32;
        let batch = open.builder.build().map_err(|source| LogError::Batch {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        let name = Arc::clone(&state.name);
        // Read before the append: a leadership change in between makes the wait refuse,
        // never pass wrongly.
        let epoch = match self.config.acks {
            Acks::All => Some(self.log.partition(&name, partition)?.leader_epoch()),
            Acks::Leader => None,
        };
        let info = self.log.append(&name, partition, batch)?;
        if let Some(epoch) = epoch {
            let end = info.last_offset + 1;
            match self
                .unreplicated
                .iter_mut()
                .find(|(t, p, _, _)| **t == *name && *p == partition)
            {
                // The first append's epoch stays: a later one in another epoch means the
                // first may be gone.
                Some(u) => u.2 = u.2.max(end),
                None => self
                    .unreplicated
                    .push((Arc::clone(&name), partition, end, epoch)),
            }
        }
        if let Some(state) = self.topics.get_mut(topic) {
            if self.producer_id >= 0 {
                state.sequences[p] = open.base_sequence.wrapping_add(count) & i32::MAX;
            }
            state.sticky.on_new_batch();
        }
        Ok(Some(info))
    }

    /// Appends every buffered batch. On error, the batches not yet appended stay buffered.
    pub fn flush(&mut self) -> Result<Vec<(Arc<str>, u32, AppendInfo)>> {
        let mut pending = Vec::new();
        for (name, state) in self.topics.iter() {
            for (p, open) in state.open.iter().enumerate() {
                if open.is_some() {
                    pending.push((name.clone(), Arc::clone(&state.name), p as u32));
                }
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        for (name, arc, p) in pending {
            if let Some(info) = self.flush_partition(&name, p)? {
                out.push((arc, p, info));
            }
        }
        self.wait_replicated()?;
        Ok(out)
    }

    /// With [`Acks::All`]: waits until every in-sync replica has what this producer appended
    /// since the last wait (at once for partitions of this node alone).
    fn wait_replicated(&mut self) -> Result<()> {
        // One deadline for them all.
        let deadline = std::time::Instant::now() + self.config.replication_timeout;
        while let Some((topic, partition, end, epoch)) = self.unreplicated.last().cloned() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            self.log
                .partition(&topic, partition)?
                .wait_high_watermark(end, epoch, left)?;
            // The ISR may have shrunk below min.insync.replicas meanwhile (Kafka's
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND): on fewer copies than asked.
            if let Err(e @ LogError::NotEnoughReplicas { .. }) =
                self.log.check_write(&topic, partition, true)
            {
                self.unreplicated.pop();
                return Err(e);
            }
            self.unreplicated.pop();
        }
        Ok(())
    }

    /// Runs a change of the transaction coordinator's state for this producer's id: for a
    /// replicated id, where this node coordinates it now (as a Kafka client's request).
    fn in_coordinator<T>(&self, id: &str, change: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.config.replicated {
            self.log.coordinated(id, change)
        } else {
            change()
        }
    }

    fn txn_state_error(&self, reason: &str) -> LogError {
        LogError::InvalidTxnState {
            transactional_id: self.transactional_id.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn txn_id(&self) -> Result<String> {
        self.transactional_id
            .clone()
            .ok_or_else(|| self.txn_state_error("not a transactional producer"))
    }

    /// Starts a transaction.
    pub fn begin_transaction(&mut self) -> Result<()> {
        self.txn_id()?;
        if self.in_txn {
            return Err(self.txn_state_error("a transaction is already open"));
        }
        self.in_txn = true;
        self.txn_partitions.clear();
        Ok(())
    }

    /// Commits a group's consumed offsets as part of the transaction (consume-transform-produce).
    pub fn send_offsets_to_transaction(
        &mut self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        let id = self.txn_id()?;
        if !self.in_txn {
            return Err(self.txn_state_error("send_offsets_to_transaction outside a transaction"));
        }
        if self.config.replicated {
            // The next coordinator's markers would not reach this node's own offsets.
            return Err(self.txn_state_error(
                "a replicated transactional id's offsets cannot go to this node's __consumer_offsets; keep them in a replicated topic of the transaction",
            ));
        }
        let p = self.log.offsets_partition(group);
        let (values, records) = Log::offset_commit(group, offsets);
        let tp = (OFFSETS_TOPIC.to_string(), p);
        if !self.txn_partitions.contains(&tp) {
            self.in_coordinator(&id, || {
                self.log.txn_add_partitions(
                    &id,
                    self.producer_id,
                    self.epoch,
                    std::slice::from_ref(&tp),
                )
            })?;
            self.txn_partitions.insert(tp);
        }
        for r in records {
            self.send_to(OFFSETS_TOPIC, p, r)?;
        }
        self.flush_partition(OFFSETS_TOPIC, p)?;
        self.log.txn_add_offsets(self.producer_id, group, &values);
        Ok(())
    }

    /// Flushes and commits the open transaction: all its records and offsets become visible
    /// to read_committed readers at once.
    pub fn commit_transaction(&mut self) -> Result<()> {
        let id = self.txn_id()?;
        if !self.in_txn {
            return Err(self.txn_state_error("commit without an open transaction"));
        }
        self.flush()?;
        let mut marked = Vec::new();
        if self.config.acks == Acks::All {
            for (topic, partition) in &self.txn_partitions {
                let p = self.log.partition(topic, *partition)?;
                let epoch = p.leader_epoch();
                marked.push((p, epoch));
            }
        }
        self.in_coordinator(&id, || {
            self.log.txn_end(&id, self.producer_id, self.epoch, true)
        })?;
        self.in_txn = false;
        // The commit markers, on every in-sync replica too. (The transaction is committed
        // here whatever this wait says: an error means its markers are not known to be
        // replicated, and a new leader of a partition may not have them.)
        let deadline = std::time::Instant::now() + self.config.replication_timeout;
        for (p, epoch) in marked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            p.wait_high_watermark(p.log_end_offset(), epoch, left)?;
        }
        Ok(())
    }

    /// Drops buffered records and aborts the open transaction.
    pub fn abort_transaction(&mut self) -> Result<()> {
        let id = self.txn_id()?;
        if !self.in_txn {
            return Err(self.txn_state_error("abort without an open transaction"));
        }
        // Unsent batches never consumed their sequence numbers (they are taken at flush).
        for state in self.topics.values_mut() {
            state.open.iter_mut().for_each(|b| *b = None);
        }
        self.in_coordinator(&id, || {
            self.log.txn_end(&id, self.producer_id, self.epoch, false)
        })?;
        self.in_txn = false;
        // Aborted: nothing of it is waited for.
        self.unreplicated.clear();
        Ok(())
    }
}
