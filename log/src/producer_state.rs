//! Per-partition state of idempotent and transactional producers: which sequences each
//! producer id has written, at which epoch, and which transactions are open.
//!
//! This is a pure state machine: the partition asks it to check a batch before appending and
//! tells it what was appended. It is rebuilt on open by replaying batch headers.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::batch::BatchHeader;

/// How many recent batches per producer are remembered for duplicate detection (Kafka's 5
/// in-flight requests).
const REMEMBERED_BATCHES: usize = 5;

/// What to do with a batch from a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Append it.
    Append,
    /// It was appended before (a retry): answer with its original offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// Why a batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceError {
    /// The producer's epoch is older than one already seen.
    Fenced { current_epoch: i16 },
    /// Sequences are not contiguous.
    OutOfOrder { expected: i32 },
}

#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// First offset of the open transaction, if one is open in this partition.
    txn_first_offset: Option<i64>,
    /// The latest coordinator epoch of its markers (appended, copied from a leader or
    /// replayed at open; a marker that found nothing open raises it only in memory).
    coordinator_epoch: i32,
}

/// A transaction that was aborted, for read_committed filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// Producer id.
    pub producer_id: i64,
    /// First offset the transaction wrote in this partition.
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// All producers of one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions by first offset: the smallest bounds the last stable offset.
    open_txns: BTreeMap<i64, i64>,
    aborted: Vec<AbortedTxn>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

impl ProducerStates {
    /// Checks a data batch before it is appended.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        if h.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // A new producer id starts at sequence 0; transactional batches may also carry -1
            // sequences when idempotence is off, which Kafka forbids, so we require 0.
            return if h.base_sequence <= 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder { expected: 0 })
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err(SequenceError::Fenced {
                current_epoch: entry.epoch,
            });
        }
        if h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        if h.producer_epoch > entry.epoch || entry.batches.is_empty() {
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder { expected: 0 })
            };
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence())
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if h.base_sequence != expected {
            return Err(SequenceError::OutOfOrder { expected });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records an appended data batch (offsets assigned).
    pub fn on_data(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if h.base_sequence >= 0 {
            entry.batches.push_back(BatchMeta {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
            });
            if entry.batches.len() > REMEMBERED_BATCHES {
                entry.batches.pop_front();
            }
        }
        if h.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(h.base_offset);
            self.open_txns.insert(h.base_offset, h.producer_id);
        }
    }

    /// The last offset of every producer's last data batch (of its current epoch): the
    /// batch compaction keeps, emptied if need be, so the producer's sequence survives.
    pub fn last_data_offsets(&self) -> HashMap<i64, i64> {
        self.producers
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, b.last_offset)))
            .collect()
    }

    /// Whether `producer_id` has an open transaction here.
    pub fn has_open_txn(&self, producer_id: i64) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.txn_first_offset.is_some())
    }

    /// Records a transaction marker appended at `offset`, written by the coordinator in
    /// `coordinator_epoch` (0 when unknown).
    pub fn on_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        offset: i64,
        coordinator_epoch: i32,
    ) {
        let entry = self.producers.entry(producer_id).or_default();
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if let Some(first) = entry.txn_first_offset.take() {
            self.open_txns.remove(&first);
            if !commit {
                self.aborted.push(AbortedTxn {
                    producer_id,
                    first_offset: first,
                    last_offset: offset,
                });
            }
        }
    }

    /// Raises a producer's epoch without a marker (fencing through the coordinator): a
    /// transaction ended by a newer instance or a timeout may include partitions the old
    /// instance has not written yet, and its buffered batches must be refused there too.
    pub fn fence(&mut self, producer_id: i64, epoch: i16, coordinator_epoch: i32) {
        let entry = self.producers.entry(producer_id).or_default();
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
    }

    /// The latest coordinator epoch of a producer's markers here (0: none known).
    pub fn coordinator_epoch(&self, producer_id: i64) -> i32 {
        self.producers
            .get(&producer_id)
            .map_or(0, |e| e.coordinator_epoch)
    }

    /// The latest epoch seen for a producer, if it wrote here.
    pub fn current_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|e| e.epoch)
    }

    /// The first offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open_txns.keys().next().copied()
    }

    /// Producer ids with an open transaction here.
    pub fn open_txn_producers(&self) -> Vec<i64> {
        self.open_txns.values().copied().collect()
    }

    /// Aborted transactions overlapping `[from, to)`.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below the log start (after retention).
    pub fn trim_below(&mut self, log_start: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    /// Whether offset `offset` written by `producer_id` belongs to an aborted transaction.
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        self.aborted.iter().any(|a| {
            a.producer_id == producer_id && a.first_offset <= offset && offset <= a.last_offset
        })
    }
}
