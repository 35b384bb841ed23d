//! The Kafka RecordBatch v2 (magic 2) codec: the on-disk and on-wire unit of the log.
//!
//! Layout (big-endian), offsets in bytes:
//!
//! ```text
//!  0 baseOffset i64          27 baseTimestamp i64
//!  8 batchLength i32         35 maxTimestamp i64
//! 12 partitionLeaderEpoch i32 43 producerId i64
//! 16 magic i8 (= 2)          51 producerEpoch i16
//! 17 crc u32 (CRC-32C of 21..end) 53 baseSequence i32
//! 21 attributes i16          57 recordsCount i32
//! 23 lastOffsetDelta i32     61 records (one blob, compressed as a whole if at all)
//! ```

use bytes::Bytes;

use crate::compression::{Compression, CompressionError};
use crate::record::{Header, Record, StoredRecord};
use crate::varint::{self, VarintError};

/// Size of the fixed batch header that precedes the records.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before and including `batchLength`, which `batchLength` does not count.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// The only batch format this codec reads and writes.
pub const MAGIC_V2: i8 = 2;
/// Producer id of a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// Producer epoch of a non-idempotent producer.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Sequence of a non-idempotent producer.
pub const NO_SEQUENCE: i32 = -1;
/// Leader epoch before the log stamps one.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
/// Timestamp of a batch with no records.
pub const NO_TIMESTAMP: i64 = -1;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// Where the CRC-covered region starts.
const ATTRIBUTES_AT: usize = 21;

/// Why a batch could not be parsed, verified, decoded or built.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The buffer is shorter than the header or the batch it declares.
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header or batch needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// [`split_batches`] found a partial batch at the end of the buffer.
    #[error("incomplete batch at byte {position}: need {needed} bytes, {available} remain")]
    Incomplete {
        /// Where the partial batch starts in the buffer.
        position: usize,
        /// Bytes the whole batch (or its header) needs.
        needed: usize,
        /// Bytes left in the buffer from `position`.
        available: usize,
    },
    /// The magic byte is not 2.
    #[error("batch at base offset {base_offset} has magic {magic}; only magic 2 is supported")]
    BadMagic {
        /// Base offset from the header.
        base_offset: i64,
        /// The magic byte found.
        magic: i8,
    },
    /// `batchLength` is smaller than an empty batch.
    #[error(
        "batch at base offset {base_offset} declares length {batch_length}, \
         below the minimum of {MIN_BATCH_LENGTH}"
    )]
    BadBatchLength {
        /// Base offset from the header.
        base_offset: i64,
        /// The declared length.
        batch_length: i32,
    },
    /// `recordsCount` is negative.
    #[error("batch at base offset {base_offset} declares a negative record count {records_count}")]
    NegativeRecordCount {
        /// Base offset from the header.
        base_offset: i64,
        /// The declared count.
        records_count: i32,
    },
    /// The attribute bits name no codec.
    #[error("batch at base offset {base_offset}: {source}")]
    UnknownCompression {
        /// Base offset from the header.
        base_offset: i64,
        /// The codec error.
        #[source]
        source: CompressionError,
    },
    /// The stored CRC does not match the content.
    #[error(
        "CRC mismatch in batch at base offset {base_offset}: header has {expected:#010x}, \
         content computes to {computed:#010x}"
    )]
    CrcMismatch {
        /// Base offset from the header.
        base_offset: i64,
        /// CRC stored in the header.
        expected: u32,
        /// CRC of the bytes present.
        computed: u32,
    },
    /// A record field holds a malformed varint.
    #[error("record {record_index} of batch at base offset {base_offset}: {source}")]
    Varint {
        /// Base offset from the header.
        base_offset: i64,
        /// Position of the record in the batch.
        record_index: usize,
        /// The varint error (positions relative to the records section).
        #[source]
        source: VarintError,
    },
    /// A record is structurally invalid.
    #[error("record {record_index} of batch at base offset {base_offset} is malformed: {reason}")]
    MalformedRecord {
        /// Base offset from the header.
        base_offset: i64,
        /// Position of the record in the batch.
        record_index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The records section could not be decompressed.
    #[error("batch at base offset {base_offset}: {source}")]
    Decompression {
        /// Base offset from the header.
        base_offset: i64,
        /// The codec error.
        #[source]
        source: CompressionError,
    },
    /// The records section could not be compressed.
    #[error("building batch of {records} records: {source}")]
    Compression {
        /// Records in the batch.
        records: i32,
        /// The codec error.
        #[source]
        source: CompressionError,
    },
    /// The records section ran out before `recordsCount` records were read.
    #[error("batch at base offset {base_offset} declares {declared} records but holds {found}")]
    RecordCountMismatch {
        /// Base offset from the header.
        base_offset: i64,
        /// `recordsCount` from the header.
        declared: i32,
        /// Records actually present.
        found: usize,
    },
    /// Bytes remain after `recordsCount` records.
    #[error("batch at base offset {base_offset} has {extra} bytes after its {declared} records")]
    TrailingRecordBytes {
        /// Base offset from the header.
        base_offset: i64,
        /// `recordsCount` from the header.
        declared: i32,
        /// Unread bytes.
        extra: usize,
    },
    /// `build` was called with no records and no explicit last offset delta.
    #[error("cannot build an empty batch without set_last_offset_delta")]
    Empty,
    /// An offset delta did not exceed the previous one.
    #[error("offset delta {requested} must be greater than the previous delta {previous}")]
    NonIncreasingOffsetDelta {
        /// Delta of the last record pushed (-1 if none).
        previous: i32,
        /// Delta asked for.
        requested: i32,
    },
    /// The next offset delta does not fit an i32.
    #[error("offset delta overflow: the previous record already has delta {previous}")]
    OffsetDeltaOverflow {
        /// Delta of the last record pushed.
        previous: i32,
    },
    /// The explicit last offset delta is below a record's delta.
    #[error(
        "last offset delta {last_offset_delta} is below the last record's delta {last_record_delta}"
    )]
    LastOffsetDeltaTooSmall {
        /// Value given to `set_last_offset_delta`.
        last_offset_delta: i32,
        /// Delta of the last record pushed.
        last_record_delta: i32,
    },
    /// A length does not fit the format's i32.
    #[error(
        "{what} of {len} bytes exceeds the format's limit of {} bytes",
        i32::MAX
    )]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// The length.
        len: usize,
    },
    /// `decode_control` was given a data batch.
    #[error("batch at base offset {base_offset} is not a control batch")]
    NotControl {
        /// Base offset from the header.
        base_offset: i64,
    },
    /// A control batch's record is not a valid transaction marker.
    #[error("control batch at base offset {base_offset} is malformed: {reason}")]
    BadControlRecord {
        /// Base offset from the header.
        base_offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// A control record of a type other than abort or commit.
    #[error("control batch at base offset {base_offset} has unsupported control type {kind}")]
    UnknownControlType {
        /// Base offset from the header.
        base_offset: i64,
        /// The type found.
        kind: i16,
    },
}

#[inline]
fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

/// The fixed 61-byte header of a v2 batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (offset delta 0).
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch stamped by the log when the batch was appended.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 after [`BatchHeader::parse`].
    pub magic: i8,
    /// CRC-32C of bytes 21..end.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset delta of the last offset the batch covers.
    pub last_offset_delta: i32,
    /// Timestamp of the first record; record timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Largest record timestamp (or the log-append time).
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub producer_epoch: i16,
    /// Sequence of the first record, or [`NO_SEQUENCE`].
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `buf` (which may hold more than one batch).
    ///
    /// Checks the magic, the length and count sanity and the codec, but not the CRC:
    /// see [`verify_crc`].
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: buf.len(),
            });
        }
        let base_offset = be_i64(buf, BASE_OFFSET_AT);
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic { base_offset, magic });
        }
        let batch_length = be_i32(buf, BATCH_LENGTH_AT);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::BadBatchLength {
                base_offset,
                batch_length,
            });
        }
        let header = BatchHeader {
            base_offset,
            batch_length,
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH_AT),
            magic,
            crc: be_i32(buf, CRC_AT) as u32,
            attributes: be_i16(buf, ATTRIBUTES_AT),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if header.records_count < 0 {
            return Err(BatchError::NegativeRecordCount {
                base_offset,
                records_count: header.records_count,
            });
        }
        Compression::from_code(header.attributes & COMPRESSION_MASK).map_err(|source| {
            BatchError::UnknownCompression {
                base_offset,
                source,
            }
        })?;
        Ok(header)
    }

    /// Size of the whole batch in bytes, including the offset and length fields.
    pub fn total_size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last offset the batch covers (which compaction may have emptied).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset the next batch in the log starts at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// The codec of the records section.
    pub fn compression(&self) -> Compression {
        // `parse` rejected unknown codes, so the fallback is unreachable for parsed headers.
        Compression::from_code(self.attributes & COMPRESSION_MASK).unwrap_or(Compression::None)
    }

    /// Whether timestamps are broker log-append time (all records take `max_timestamp`).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch holds a control record (a transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Sequence of the last record, wrapping past `i32::MAX` to 0 as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            return NO_SEQUENCE;
        }
        let delta = self.last_offset_delta;
        if self.base_sequence > i32::MAX - delta {
            delta - (i32::MAX - self.base_sequence) - 1
        } else {
            self.base_sequence + delta
        }
    }

    /// Number of records in the batch.
    pub fn record_count(&self) -> usize {
        self.records_count.max(0) as usize
    }
}

/// Checks the CRC of the batch at the start of `batch`.
pub fn verify_crc(batch: &[u8]) -> Result<(), BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header.total_size();
    let Some(covered) = batch.get(ATTRIBUTES_AT..total) else {
        return Err(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        });
    };
    let computed = crc32c::crc32c(covered);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            base_offset: header.base_offset,
            expected: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Rewrites the base offset of the batch at the start of `batch`.
///
/// The base offset lies before the CRC-covered region, so the log can assign offsets on
/// append without recomputing the CRC; records carry only deltas.
///
/// # Panics
/// If `batch` is shorter than 8 bytes.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch at the start of `batch`.
///
/// Like the base offset, this field is outside the CRC, so stamping it is free.
///
/// # Panics
/// If `batch` is shorter than 16 bytes.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

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

/// Fills `out[..61]` from `h` (ignoring `h.crc`) and then the CRC over `out[21..]`.
fn write_header(out: &mut [u8], h: &BatchHeader) {
    out[0..8].copy_from_slice(&h.base_offset.to_be_bytes());
    out[8..12].copy_from_slice(&h.batch_length.to_be_bytes());
    out[12..16].copy_from_slice(&h.partition_leader_epoch.to_be_bytes());
    out[16] = h.magic as u8;
    out[21..23].copy_from_slice(&h.attributes.to_be_bytes());
    out[23..27].copy_from_slice(&h.last_offset_delta.to_be_bytes());
    out[27..35].copy_from_slice(&h.base_timestamp.to_be_bytes());
    out[35..43].copy_from_slice(&h.max_timestamp.to_be_bytes());
    out[43..51].copy_from_slice(&h.producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&h.producer_epoch.to_be_bytes());
    out[53..57].copy_from_slice(&h.base_sequence.to_be_bytes());
    out[57..61].copy_from_slice(&h.records_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

#[inline]
fn len_i32(what: &'static str, len: usize) -> Result<i32, BatchError> {
    i32::try_from(len).map_err(|_| BatchError::TooLarge { what, len })
}

/// Encoded size of an optional byte field: varint length (-1 for null) plus the bytes.
#[inline]
fn nullable_len(what: &'static str, field: Option<&[u8]>) -> Result<usize, BatchError> {
    Ok(match field {
        None => 1,
        Some(b) => varint::varint_len(len_i32(what, b.len())?) + b.len(),
    })
}

#[inline]
fn put_nullable(buf: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => varint::put_varint(buf, -1),
        Some(b) => {
            // Lengths were checked against i32 when sizing the record.
            varint::put_varint(buf, b.len() as i32);
            buf.extend_from_slice(b);
        }
    }
}

/// Appends one record. The body length prefix is computed up front, not patched afterwards,
/// so the body is written once with a single reservation.
fn encode_record(
    buf: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    record: &Record,
) -> Result<(), BatchError> {
    let key = record.key.as_deref();
    let value = record.value.as_deref();
    let mut body = 1 // attributes
        + varint::varlong_len(timestamp_delta)
        + varint::varint_len(offset_delta)
        + nullable_len("record key", key)?
        + nullable_len("record value", value)?
        + varint::varint_len(len_i32("header count", record.headers.len())?);
    for h in &record.headers {
        body += nullable_len("header key", Some(h.key.as_bytes()))?
            + nullable_len("header value", h.value.as_deref())?;
    }
    let body_len = len_i32("record", body)?;
    buf.reserve(varint::MAX_VARINT_LEN + body);
    varint::put_varint(buf, body_len);
    buf.push(0); // record attributes: unused by v2
    varint::put_varlong(buf, timestamp_delta);
    varint::put_varint(buf, offset_delta);
    put_nullable(buf, key);
    put_nullable(buf, value);
    varint::put_varint(buf, record.headers.len() as i32);
    for h in &record.headers {
        put_nullable(buf, Some(h.key.as_bytes()));
        put_nullable(buf, h.value.as_deref());
    }
    Ok(())
}

/// Decodes every record of the batch at the start of `batch`, copying it once into a
/// shared buffer; see [`decode_records_bytes`] for the zero-copy form.
pub fn decode_records(batch: &[u8]) -> Result<Vec<StoredRecord>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header.total_size();
    let Some(whole) = batch.get(..total) else {
        return Err(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        });
    };
    decode_records_bytes(Bytes::copy_from_slice(whole))
}

/// Decodes every record of the batch at the start of `batch` (bytes after it are ignored).
///
/// Verifies the CRC first. For uncompressed batches keys, values and header values are
/// slices of `batch`; for compressed ones, of the decompressed buffer. Offsets are
/// `base_offset + offsetDelta`; timestamps `base_timestamp + timestampDelta`, or
/// `max_timestamp` for log-append-time batches.
pub fn decode_records_bytes(batch: Bytes) -> Result<Vec<StoredRecord>, BatchError> {
    verify_crc(&batch)?;
    let header = BatchHeader::parse(&batch)?;
    let base_offset = header.base_offset;
    let payload = batch.slice(BATCH_HEADER_LEN..header.total_size());
    let records =
        match header.compression() {
            Compression::None => payload,
            codec => Bytes::from(codec.decompress(&payload).map_err(|source| {
                BatchError::Decompression {
                    base_offset,
                    source,
                }
            })?),
        };
    let declared = header.records_count;
    // A record takes at least 7 bytes; capping stops a lying count from allocating.
    let mut out = Vec::with_capacity(header.record_count().min(records.len() / 7 + 1));
    let mut reader = RecordReader {
        data: &records,
        pos: 0,
        base_offset,
        record_index: 0,
    };
    for index in 0..header.record_count() {
        if reader.pos >= records.len() {
            return Err(BatchError::RecordCountMismatch {
                base_offset,
                declared,
                found: index,
            });
        }
        reader.record_index = index;
        let (offset_delta, timestamp_delta, record) = reader.record(&records)?;
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(timestamp_delta)
        };
        out.push(StoredRecord {
            offset: base_offset + i64::from(offset_delta),
            record: Record {
                timestamp,
                ..record
            },
        });
    }
    if reader.pos != records.len() {
        return Err(BatchError::TrailingRecordBytes {
            base_offset,
            declared,
            extra: records.len() - reader.pos,
        });
    }
    Ok(out)
}

/// Cursor over a records section, carrying the context errors need.
struct RecordReader<'a> {
    data: &'a [u8],
    pos: usize,
    base_offset: i64,
    record_index: usize,
}

impl RecordReader<'_> {
    fn malformed(&self, reason: String) -> BatchError {
        BatchError::MalformedRecord {
            base_offset: self.base_offset,
            record_index: self.record_index,
            reason,
        }
    }

    fn varint(&mut self, end: usize) -> Result<i32, BatchError> {
        varint::get_varint(&self.data[..end], &mut self.pos).map_err(|source| BatchError::Varint {
            base_offset: self.base_offset,
            record_index: self.record_index,
            source,
        })
    }

    fn varlong(&mut self, end: usize) -> Result<i64, BatchError> {
        varint::get_varlong(&self.data[..end], &mut self.pos).map_err(|source| BatchError::Varint {
            base_offset: self.base_offset,
            record_index: self.record_index,
            source,
        })
    }

    /// The byte range of a length-prefixed field; `None` for a null (-1) field.
    fn field(
        &mut self,
        end: usize,
        what: &str,
    ) -> Result<Option<std::ops::Range<usize>>, BatchError> {
        let len = self.varint(end)?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(self.malformed(format!("{what} has negative length {len}")));
        }
        let start = self.pos;
        let stop = start + len as usize;
        if stop > end {
            return Err(self.malformed(format!(
                "{what} of {len} bytes overruns the record by {} bytes",
                stop - end
            )));
        }
        self.pos = stop;
        Ok(Some(start..stop))
    }

    /// Reads one record; returns its offset delta, timestamp delta and contents (timestamp 0).
    fn record(&mut self, shared: &Bytes) -> Result<(i32, i64, Record), BatchError> {
        let len = self.varint(self.data.len())?;
        let body_start = self.pos;
        if len < 0 || body_start + len as usize > self.data.len() {
            return Err(self.malformed(format!(
                "record length {len} does not fit the {} bytes remaining",
                self.data.len() - body_start
            )));
        }
        let end = body_start + len as usize;
        // Attributes byte: unused in v2.
        if self.pos >= end {
            return Err(self.malformed("record is empty".to_owned()));
        }
        self.pos += 1;
        let timestamp_delta = self.varlong(end)?;
        let offset_delta = self.varint(end)?;
        let key = self.field(end, "key")?.map(|r| shared.slice(r));
        let value = self.field(end, "value")?.map(|r| shared.slice(r));
        let header_count = self.varint(end)?;
        if header_count < 0 {
            return Err(self.malformed(format!("negative header count {header_count}")));
        }
        let mut headers = Vec::with_capacity((header_count as usize).min(end - self.pos));
        for _ in 0..header_count {
            let Some(key_range) = self.field(end, "header key")? else {
                return Err(self.malformed("header key is null".to_owned()));
            };
            let key = std::str::from_utf8(&self.data[key_range])
                .map_err(|e| self.malformed(format!("header key is not UTF-8: {e}")))?
                .to_owned();
            let value = self.field(end, "header value")?.map(|r| shared.slice(r));
            headers.push(Header { key, value });
        }
        if self.pos != end {
            return Err(self.malformed(format!(
                "record declares {len} bytes but its fields take {}",
                self.pos - body_start
            )));
        }
        Ok((
            offset_delta,
            timestamp_delta,
            Record {
                key,
                value,
                headers,
                timestamp: 0,
            },
        ))
    }
}

/// The kind of a transaction marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// The producer's transaction was aborted.
    Abort = 0,
    /// The producer's transaction was committed.
    Commit = 1,
}

/// Encodes a transaction marker: a transactional control batch with one record whose key is
/// `version 0, type` and whose value is `version 0, coordinator_epoch` (Kafka's
/// `EndTransactionMarker`). Base offset 0, no sequence, leader epoch unset.
pub fn encode_control_batch(
    kind: ControlType,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..4].copy_from_slice(&(kind as i16).to_be_bytes());
    let mut value = [0u8; 6];
    value[2..6].copy_from_slice(&coordinator_epoch.to_be_bytes());

    // Fixed-size record, written by hand so this path cannot fail.
    let mut body = Vec::with_capacity(16);
    body.push(0); // attributes
    varint::put_varlong(&mut body, 0); // timestamp delta
    varint::put_varint(&mut body, 0); // offset delta
    put_nullable(&mut body, Some(&key));
    put_nullable(&mut body, Some(&value));
    varint::put_varint(&mut body, 0); // headers

    let mut out = vec![0u8; BATCH_HEADER_LEN];
    varint::put_varint(&mut out, body.len() as i32);
    out.extend_from_slice(&body);
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    write_header(
        &mut out,
        &BatchHeader {
            base_offset: 0,
            batch_length,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            magic: MAGIC_V2,
            crc: 0,
            attributes: TRANSACTIONAL_BIT | CONTROL_BIT,
            last_offset_delta: 0,
            base_timestamp: timestamp,
            max_timestamp: timestamp,
            producer_id,
            producer_epoch,
            base_sequence: NO_SEQUENCE,
            records_count: 1,
        },
    );
    out
}

/// Decodes a transaction marker batch into its kind and coordinator epoch.
///
/// Marker versions above 0 are accepted as long as they start with the v0 fields, so newer
/// writers' markers (which only append fields) still read.
pub fn decode_control(batch: &[u8]) -> Result<(ControlType, i32), BatchError> {
    let header = BatchHeader::parse(batch)?;
    let base_offset = header.base_offset;
    if !header.is_control() {
        return Err(BatchError::NotControl { base_offset });
    }
    let bad = |reason: String| BatchError::BadControlRecord {
        base_offset,
        reason,
    };
    let records = decode_records(batch)?;
    let [stored] = records.as_slice() else {
        return Err(bad(format!(
            "expected exactly one record, found {}",
            records.len()
        )));
    };
    let key = stored.record.key.as_deref().unwrap_or_default();
    if key.len() < 4 {
        return Err(bad(format!(
            "control key is {} bytes, expected at least 4",
            key.len()
        )));
    }
    let key_version = be_i16(key, 0);
    if key_version < 0 {
        return Err(bad(format!("negative control key version {key_version}")));
    }
    let kind = match be_i16(key, 2) {
        0 => ControlType::Abort,
        1 => ControlType::Commit,
        kind => return Err(BatchError::UnknownControlType { base_offset, kind }),
    };
    let value = stored.record.value.as_deref().unwrap_or_default();
    if value.len() < 6 {
        return Err(bad(format!(
            "marker value is {} bytes, expected at least 6",
            value.len()
        )));
    }
    let value_version = be_i16(value, 0);
    if value_version < 0 {
        return Err(bad(format!(
            "negative marker value version {value_version}"
        )));
    }
    Ok((kind, be_i32(value, 2)))
}

/// Walks a buffer of concatenated batches, yielding each batch's bytes.
///
/// Only framing is checked (header sanity and length), not CRCs. After an error — including
/// [`BatchError::Incomplete`] for a partial batch at the end, which a fetch response or a
/// torn segment tail may legitimately hold — iteration stops; [`BatchIter::position`] then
/// says where the valid prefix ends.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// An iterator over the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            done: false,
        }
    }

    /// Byte position of the next batch: after iteration, the length of the well-formed prefix.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<&'a [u8], BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        // The length field alone tells us whether the batch is all there, even when the
        // buffer holds fewer than a header's worth of bytes.
        let needed = if rest.len() >= LOG_OVERHEAD {
            (be_i32(rest, BATCH_LENGTH_AT).max(MIN_BATCH_LENGTH) as usize) + LOG_OVERHEAD
        } else {
            BATCH_HEADER_LEN
        };
        if rest.len() < needed {
            self.done = true;
            return Some(Err(BatchError::Incomplete {
                position: self.pos,
                needed,
                available: rest.len(),
            }));
        }
        match BatchHeader::parse(rest) {
            Ok(header) => {
                let total = header.total_size();
                self.pos += total;
                Some(Ok(&rest[..total]))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for BatchIter<'_> {}

/// Splits a buffer of concatenated batches; see [`BatchIter`] for how a partial tail is reported.
pub fn split_batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter::new(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp: ts,
        }
    }

    fn sample_records() -> Vec<Record> {
        let mut with_headers = rec(Some("k2"), Some("v2"), 1_700_000_000_500);
        with_headers.headers = vec![
            Header {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"abc")),
            },
            Header {
                key: "nullable".into(),
                value: None,
            },
            Header {
                key: "".into(),
                value: Some(Bytes::new()),
            },
        ];
        vec![
            rec(Some("k1"), Some("v1"), 1_700_000_001_000),
            with_headers,
            rec(None, Some("no key"), 1_700_000_000_000), // negative delta
            rec(Some("tombstone"), None, 1_700_000_002_000),
            rec(None, None, 1_700_000_000_999),
            rec(Some(""), Some(""), 1_700_000_001_000),
        ]
    }

    fn build(opts: BatchOptions, records: &[Record]) -> Vec<u8> {
        let mut b = BatchBuilder::new(opts);
        for r in records {
            b.push(r).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn round_trip_every_compression() {
        let records = sample_records();
        for compression in Compression::ALL {
            let opts = BatchOptions {
                compression,
                ..Default::default()
            };
            let mut batch = build(opts, &records);
            set_base_offset(&mut batch, 1000);
            set_partition_leader_epoch(&mut batch, 7);
            verify_crc(&batch).unwrap();

            let h = BatchHeader::parse(&batch).unwrap();
            assert_eq!(h.total_size(), batch.len());
            assert_eq!(h.compression(), compression);
            assert_eq!(h.base_offset, 1000);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(h.record_count(), records.len());
            assert_eq!(h.last_offset(), 1005);
            assert_eq!(h.next_offset(), 1006);
            assert_eq!(h.base_timestamp, records[0].timestamp);
            assert_eq!(h.max_timestamp, 1_700_000_002_000);
            assert!(!h.is_transactional() && !h.is_control());
            assert_eq!(h.last_sequence(), NO_SEQUENCE);

            let decoded = decode_records(&batch).unwrap();
            let expected: Vec<_> = records
                .iter()
                .enumerate()
                .map(|(i, r)| StoredRecord {
                    offset: 1000 + i as i64,
                    record: r.clone(),
                })
                .collect();
            assert_eq!(decoded, expected, "{compression}");
            assert_eq!(decode_records_bytes(Bytes::from(batch)).unwrap(), expected);
        }
    }

    #[test]
    fn uncompressed_decode_is_zero_copy() {
        let batch = Bytes::from(build(BatchOptions::default(), &sample_records()));
        let decoded = decode_records_bytes(batch.clone()).unwrap();
        let value = decoded[0].record.value.as_ref().unwrap();
        let range = batch.as_ptr_range();
        assert!(
            range.contains(&value.as_ptr()),
            "value should point into the batch"
        );
    }

    #[test]
    fn empty_batch_rejected_unless_last_offset_delta_set() {
        assert!(matches!(
            BatchBuilder::new(BatchOptions::default()).build(),
            Err(BatchError::Empty)
        ));

        let mut b = BatchBuilder::new(BatchOptions {
            base_sequence: 10,
            ..Default::default()
        });
        b.set_last_offset_delta(4);
        let batch = b.build().unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(
            (h.records_count, h.last_offset_delta, h.last_sequence()),
            (0, 4, 14)
        );
        assert_eq!(h.base_timestamp, NO_TIMESTAMP);
        assert!(decode_records(&batch).unwrap().is_empty());
    }

    #[test]
    fn compaction_keeps_offsets_and_last_offset() {
        let opts = BatchOptions {
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 100,
            ..Default::default()
        };
        let mut b = BatchBuilder::new(opts);
        b.push_with_delta(1, &rec(Some("a"), Some("1"), 10))
            .unwrap();
        b.push_with_delta(3, &rec(Some("b"), Some("2"), 11))
            .unwrap();
        assert!(matches!(
            b.push_with_delta(3, &rec(None, None, 0)),
            Err(BatchError::NonIncreasingOffsetDelta {
                previous: 3,
                requested: 3
            })
        ));
        b.push(&rec(Some("c"), Some("3"), 12)).unwrap(); // delta 4
        b.set_last_offset_delta(9);
        let mut batch = b.build().unwrap();
        set_base_offset(&mut batch, 50);
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!((h.last_offset(), h.last_sequence()), (59, 109));
        let offsets: Vec<_> = decode_records(&batch)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, [51, 53, 54]);

        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push_with_delta(5, &rec(None, None, 0)).unwrap();
        b.set_last_offset_delta(2);
        assert!(matches!(
            b.build(),
            Err(BatchError::LastOffsetDeltaTooSmall { .. })
        ));
    }

    #[test]
    fn last_sequence_wraps_like_kafka() {
        let mut b = BatchBuilder::new(BatchOptions {
            base_sequence: i32::MAX - 1,
            ..Default::default()
        });
        for _ in 0..4 {
            b.push(&rec(None, Some("x"), 0)).unwrap();
        }
        let h = BatchHeader::parse(&b.build().unwrap()).unwrap();
        assert_eq!(h.last_sequence(), 1);
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        let records = vec![
            rec(None, Some("a"), i64::MAX),
            rec(None, Some("b"), i64::MIN),
            rec(None, None, -5),
        ];
        let decoded = decode_records(&build(BatchOptions::default(), &records)).unwrap();
        let ts: Vec<_> = decoded.iter().map(|r| r.record.timestamp).collect();
        assert_eq!(ts, [i64::MAX, i64::MIN, -5]);
    }

    #[test]
    fn log_append_time_overrides_record_timestamps() {
        let mut batch = build(BatchOptions::default(), &sample_records());
        // Setting the attribute bit changes the CRC region, so recompute it.
        batch[22] |= TIMESTAMP_TYPE_BIT as u8;
        batch[35..43].copy_from_slice(&99i64.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(
            decode_records(&batch)
                .unwrap()
                .iter()
                .all(|r| r.record.timestamp == 99)
        );
    }

    #[test]
    fn crc_corruption_detected_anywhere_after_crc() {
        for compression in [Compression::None, Compression::Zstd] {
            let batch = build(
                BatchOptions {
                    compression,
                    ..Default::default()
                },
                &sample_records(),
            );
            for i in CRC_AT..batch.len() {
                let mut bad = batch.clone();
                bad[i] ^= 0x10;
                let err = verify_crc(&bad).unwrap_err();
                assert!(
                    matches!(err, BatchError::CrcMismatch { .. }),
                    "byte {i}: {err}"
                );
                assert!(decode_records(&bad).is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn header_corruption_and_truncation_detected() {
        let batch = build(BatchOptions::default(), &sample_records());
        let mut bad = batch.clone();
        bad[MAGIC_AT] = 1;
        assert!(matches!(
            BatchHeader::parse(&bad),
            Err(BatchError::BadMagic { magic: 1, .. })
        ));
        let mut bad = batch.clone();
        bad[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            BatchHeader::parse(&bad),
            Err(BatchError::BadBatchLength { .. })
        ));
        assert!(matches!(
            BatchHeader::parse(&batch[..60]),
            Err(BatchError::Truncated { needed: 61, .. })
        ));
        assert!(matches!(
            decode_records(&batch[..batch.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        let msg = verify_crc(&{
            let mut b = batch.clone();
            b[17] ^= 1;
            b
        })
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("header has") && msg.contains("computes to"),
            "{msg}"
        );
    }

    #[test]
    fn record_count_mismatch_detected() {
        let mut batch = build(BatchOptions::default(), &sample_records());
        for (count, want_trailing) in [(7i32, false), (5, true)] {
            batch[57..61].copy_from_slice(&count.to_be_bytes());
            let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
            batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            let err = decode_records(&batch).unwrap_err();
            if want_trailing {
                assert!(
                    matches!(err, BatchError::TrailingRecordBytes { declared: 5, .. }),
                    "{err}"
                );
            } else {
                assert!(
                    matches!(
                        err,
                        BatchError::RecordCountMismatch {
                            declared: 7,
                            found: 6,
                            ..
                        }
                    ),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn split_batches_walks_and_reports_partial_tail() {
        let a = build(BatchOptions::default(), &sample_records());
        let b = build(
            BatchOptions {
                compression: Compression::Lz4,
                ..Default::default()
            },
            &sample_records(),
        );
        let mut buf = [a.clone(), b.clone()].concat();
        let whole = buf.len();
        buf.extend_from_slice(&a[..30]);

        let mut it = split_batches(&buf);
        assert_eq!(it.next().unwrap().unwrap(), &a[..]);
        assert_eq!(it.next().unwrap().unwrap(), &b[..]);
        match it.next() {
            Some(Err(BatchError::Incomplete {
                position,
                needed,
                available: 30,
            })) => {
                assert_eq!((position, needed), (whole, a.len()));
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(it.next().is_none());
        assert_eq!(it.position(), whole);

        // Fewer bytes than the length field.
        let mut it = split_batches(&a[..5]);
        assert!(matches!(
            it.next(),
            Some(Err(BatchError::Incomplete { needed: 61, .. }))
        ));
        assert_eq!(split_batches(&[]).count(), 0);
    }

    #[test]
    fn control_batch_round_trip() {
        for kind in [ControlType::Abort, ControlType::Commit] {
            let mut batch = encode_control_batch(kind, 77, 2, 13, 1_700_000_000_000);
            set_base_offset(&mut batch, 500);
            verify_crc(&batch).unwrap();
            let h = BatchHeader::parse(&batch).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (77, 2, NO_SEQUENCE)
            );
            assert_eq!(decode_control(&batch).unwrap(), (kind, 13));
        }
        let data = build(BatchOptions::default(), &sample_records());
        assert!(matches!(
            decode_control(&data),
            Err(BatchError::NotControl { .. })
        ));
    }

    #[test]
    fn estimated_size_tracks_uncompressed_bytes() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        assert!(b.is_empty());
        assert_eq!(b.estimated_size(), BATCH_HEADER_LEN);
        for r in sample_records() {
            b.push(&r).unwrap();
        }
        assert_eq!(b.record_count(), 6);
        let size = b.estimated_size();
        assert_eq!(b.build().unwrap().len(), size);
    }

    /// Rough encode throughput; run with `--release --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not correctness"]
    fn encode_throughput() {
        let record = rec(
            Some("user-000042"),
            Some(&"x".repeat(100)),
            1_700_000_000_000,
        );
        let n = 2_000_000;
        let start = std::time::Instant::now();
        let mut bytes = 0;
        for _ in 0..n / 1000 {
            let mut b = BatchBuilder::with_capacity(BatchOptions::default(), 128 * 1024);
            for _ in 0..1000 {
                b.push(&record).unwrap();
            }
            bytes += b.build().unwrap().len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:.2} M records/s, {:.0} MB/s",
            n as f64 / secs / 1e6,
            bytes as f64 / secs / 1e6
        );
    }

    fn arb_bytes() -> impl Strategy<Value = Option<Bytes>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from))
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            arb_bytes(),
            arb_bytes(),
            proptest::collection::vec(("[a-z\u{e9}]{0,8}", arb_bytes()), 0..4),
            any::<i64>(),
        )
            .prop_map(|(key, value, headers, timestamp)| Record {
                key,
                value,
                headers: headers
                    .into_iter()
                    .map(|(key, value)| Header { key, value })
                    .collect(),
                timestamp,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(
            records in proptest::collection::vec(arb_record(), 1..20),
            code in 0i16..5,
            base in any::<i32>(),
        ) {
            let compression = Compression::from_code(code).unwrap();
            let mut batch = build(BatchOptions { compression, ..Default::default() }, &records);
            set_base_offset(&mut batch, i64::from(base));
            let decoded = decode_records(&batch).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, i64::from(base) + i as i64);
                prop_assert_eq!(&d.record, r);
            }
        }
    }

    /// Interoperability with kafka-protocol's independent codec.
    mod kafka_protocol_compat {
        use super::*;
        use bytes::BytesMut;
        use kafka_protocol::protocol::StrBytes;
        use kafka_protocol::records::{
            Compression as KCompression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder,
            RecordEncodeOptions, TimestampType,
        };

        fn k_compression(c: Compression) -> KCompression {
            match c {
                Compression::None => KCompression::None,
                Compression::Gzip => KCompression::Gzip,
                Compression::Snappy => KCompression::Snappy,
                Compression::Lz4 => KCompression::Lz4,
                Compression::Zstd => KCompression::Zstd,
            }
        }

        fn assert_same_contents(ours: &Record, theirs: &KRecord) {
            assert_eq!(ours.key, theirs.key);
            assert_eq!(ours.value, theirs.value);
            assert_eq!(ours.timestamp, theirs.timestamp);
            let headers: Vec<(String, Option<Bytes>)> = theirs
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            let ours: Vec<_> = ours
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            assert_eq!(ours, headers);
        }

        #[test]
        fn ours_decoded_by_kafka_protocol() {
            let records = sample_records();
            for compression in Compression::ALL {
                let opts = BatchOptions {
                    compression,
                    producer_id: 9001,
                    producer_epoch: 4,
                    base_sequence: 17,
                    transactional: true,
                    partition_leader_epoch: 3,
                };
                let mut batch = build(opts, &records);
                set_base_offset(&mut batch, 4242);
                let mut buf = Bytes::from(batch);
                let set = RecordBatchDecoder::decode(&mut buf)
                    .unwrap_or_else(|e| panic!("{compression}: {e:#}"));
                assert_eq!(set.compression, k_compression(compression));
                assert_eq!(set.records.len(), records.len());
                for (i, (theirs, ours)) in set.records.iter().zip(&records).enumerate() {
                    assert_eq!(theirs.offset, 4242 + i as i64);
                    assert_eq!(theirs.sequence, 17 + i as i32);
                    assert_eq!((theirs.producer_id, theirs.producer_epoch), (9001, 4));
                    assert_eq!(theirs.partition_leader_epoch, 3);
                    assert!(theirs.transactional && !theirs.control);
                    assert_eq!(theirs.timestamp_type, TimestampType::Creation);
                    assert_same_contents(ours, theirs);
                }
            }
        }

        fn k_record(offset: i64, r: &Record) -> KRecord {
            KRecord {
                transactional: true,
                control: false,
                partition_leader_epoch: 5,
                producer_id: 31337,
                producer_epoch: 6,
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: 1000 + offset as i32,
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (StrBytes::from_string(h.key.clone()), h.value.clone()))
                    .collect(),
            }
        }

        #[test]
        fn kafka_protocol_decoded_by_ours() {
            let records = sample_records();
            for compression in Compression::ALL {
                let theirs: Vec<KRecord> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| k_record(i as i64, r))
                    .collect();
                let mut buf = BytesMut::new();
                RecordBatchEncoder::encode(
                    &mut buf,
                    &theirs,
                    &RecordEncodeOptions {
                        version: 2,
                        compression: k_compression(compression),
                    },
                )
                .unwrap();
                let buf = buf.freeze();
                let batches: Vec<_> = split_batches(&buf).collect::<Result<_, _>>().unwrap();
                assert_eq!(batches.len(), 1, "{compression}");
                let batch = batches[0];
                verify_crc(batch).unwrap();
                let h = BatchHeader::parse(batch).unwrap();
                assert_eq!(h.compression(), compression);
                assert_eq!(
                    (h.producer_id, h.producer_epoch, h.base_sequence),
                    (31337, 6, 1000)
                );
                assert_eq!(h.partition_leader_epoch, 5);
                assert!(h.is_transactional() && !h.is_control());
                assert_eq!(h.last_offset_delta, 5);
                assert_eq!(h.last_sequence(), 1005);
                let decoded = decode_records_bytes(buf.slice(..h.total_size())).unwrap();
                assert_eq!(decoded.len(), theirs.len());
                for (i, (d, t)) in decoded.iter().zip(&theirs).enumerate() {
                    assert_eq!(d.offset, i as i64);
                    assert_same_contents(&d.record, t);
                }
            }
        }

        #[test]
        fn control_batches_interoperate() {
            // Ours -> kafka-protocol.
            let batch = encode_control_batch(ControlType::Commit, 55, 1, 8, 123);
            let set = RecordBatchDecoder::decode(&mut Bytes::from(batch)).unwrap();
            let [marker] = set.records.as_slice() else {
                panic!("one record expected")
            };
            assert!(marker.control && marker.transactional);
            assert_eq!(
                (marker.producer_id, marker.producer_epoch, marker.timestamp),
                (55, 1, 123)
            );
            assert_eq!(marker.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
            assert_eq!(marker.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 8][..]));

            // kafka-protocol -> ours.
            let abort = KRecord {
                transactional: true,
                control: true,
                partition_leader_epoch: 0,
                producer_id: 66,
                producer_epoch: 2,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence: -1,
                timestamp: 456,
                key: Some(Bytes::from_static(&[0, 0, 0, 0])),
                value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 21])),
                headers: Default::default(),
            };
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                [&abort],
                &RecordEncodeOptions {
                    version: 2,
                    compression: KCompression::None,
                },
            )
            .unwrap();
            assert_eq!(decode_control(&buf).unwrap(), (ControlType::Abort, 21));
            let h = BatchHeader::parse(&buf).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (66, 2));
        }
    }
}
