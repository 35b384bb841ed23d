//! Encodes records into one v2 batch.

use super::header::{TRANSACTIONAL_BIT, write_header};
use super::records::encode_record;
use super::{
    BATCH_HEADER_LEN, BatchError, BatchHeader, LOG_OVERHEAD, MAGIC_V2, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP,
};
use crate::compression::Compression;
use crate::record::Record;

/// Batch-level settings for [`BatchBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Codec for the records section.
    pub compression: Compression,
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub producer_epoch: i16,
    /// Sequence of the first record, or [`NO_SEQUENCE`].
    pub base_sequence: i32,
    /// Whether the batch belongs to a transaction.
    pub transactional: bool,
    /// Leader epoch; usually left unset here and stamped by the log on append.
    pub partition_leader_epoch: i32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            compression: Compression::None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        }
    }
}

/// Accumulates records and encodes them into one v2 batch with base offset 0.
///
/// Records are encoded into a single buffer as they are pushed, after space reserved for the
/// header, so an uncompressed batch is built without copying or per-record allocation.
#[derive(Debug)]
pub struct BatchBuilder {
    opts: BatchOptions,
    /// Header placeholder followed by the uncompressed records.
    buf: Vec<u8>,
    count: i32,
    /// Delta of the last record pushed; -1 before the first.
    last_delta: i32,
    last_offset_delta: Option<i32>,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(opts: BatchOptions) -> Self {
        Self::with_capacity(opts, 1024)
    }

    /// An empty builder whose buffer starts with room for `capacity` bytes of records.
    pub fn with_capacity(opts: BatchOptions, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER_LEN + capacity);
        buf.resize(BATCH_HEADER_LEN, 0);
        BatchBuilder {
            opts,
            buf,
            count: 0,
            last_delta: -1,
            last_offset_delta: None,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
        }
    }

    /// Appends `record` at the offset delta after the last one pushed (so, for a builder fed
    /// only by `push`, the number of records pushed so far).
    pub fn push(&mut self, record: &Record) -> Result<(), BatchError> {
        let delta = self
            .last_delta
            .checked_add(1)
            .ok_or(BatchError::OffsetDeltaOverflow {
                previous: self.last_delta,
            })?;
        self.push_with_delta(delta, record)
    }

    /// Appends `record` at an explicit offset delta, which must exceed every earlier one.
    ///
    /// Compaction uses this to keep surviving records at their original offsets.
    pub fn push_with_delta(
        &mut self,
        offset_delta: i32,
        record: &Record,
    ) -> Result<(), BatchError> {
        if offset_delta <= self.last_delta {
            return Err(BatchError::NonIncreasingOffsetDelta {
                previous: self.last_delta,
                requested: offset_delta,
            });
        }
        if self.count == 0 {
            self.base_timestamp = record.timestamp;
            self.max_timestamp = record.timestamp;
        }
        // Wrapping matches Java's long arithmetic; decoding wraps back.
        let timestamp_delta = record.timestamp.wrapping_sub(self.base_timestamp);
        encode_record(&mut self.buf, timestamp_delta, offset_delta, record)?;
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        self.last_delta = offset_delta;
        self.count += 1;
        Ok(())
    }

    /// Makes the batch cover offsets up to `last_offset_delta` even past its last record.
    ///
    /// Compaction needs this: a batch keeps its last offset (and so the producer's last
    /// sequence) even when its last record is removed.
    pub fn set_last_offset_delta(&mut self, last_offset_delta: i32) {
        self.last_offset_delta = Some(last_offset_delta);
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> usize {
        self.count as usize
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch so far without compression, header included; compare with
    /// `batch.size` to decide when to close a batch.
    pub fn estimated_size(&self) -> usize {
        self.buf.len()
    }

    /// Encodes the batch: base offset 0, CRC computed, records compressed if configured.
    ///
    /// An empty builder is an error unless [`set_last_offset_delta`](Self::set_last_offset_delta)
    /// was called; then it yields an empty batch with [`NO_TIMESTAMP`] timestamps, as
    /// compaction writes to preserve producer state.
    pub fn build(self) -> Result<Vec<u8>, BatchError> {
        let last_offset_delta = match self.last_offset_delta {
            None if self.count == 0 => return Err(BatchError::Empty),
            None => self.last_delta,
            Some(explicit) if explicit < self.last_delta || explicit < 0 => {
                return Err(BatchError::LastOffsetDeltaTooSmall {
                    last_offset_delta: explicit,
                    last_record_delta: self.last_delta,
                });
            }
            Some(explicit) => explicit,
        };
        let mut out = match self.opts.compression {
            Compression::None => self.buf,
            codec => {
                let records = &self.buf[BATCH_HEADER_LEN..];
                let mut out = Vec::with_capacity(BATCH_HEADER_LEN + records.len() / 2 + 64);
                out.resize(BATCH_HEADER_LEN, 0);
                codec.compress_into(records, &mut out).map_err(|source| {
                    BatchError::Compression {
                        records: self.count,
                        source,
                    }
                })?;
                out
            }
        };
        let batch_length =
            i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| BatchError::TooLarge {
                what: "batch",
                len: out.len(),
            })?;
        let mut attributes = self.opts.compression.code();
        if self.opts.transactional {
            attributes |= TRANSACTIONAL_BIT;
        }
        write_header(
            &mut out,
            &BatchHeader {
                base_offset: 0,
                batch_length,
                partition_leader_epoch: self.opts.partition_leader_epoch,
                magic: MAGIC_V2,
                crc: 0,
                attributes,
                last_offset_delta,
                base_timestamp: self.base_timestamp,
                max_timestamp: self.max_timestamp,
                producer_id: self.opts.producer_id,
                producer_epoch: self.opts.producer_epoch,
                base_sequence: self.opts.base_sequence,
                records_count: self.count,
            },
        );
        Ok(out)
    }
}
