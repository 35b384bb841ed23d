//! Why a batch could not be parsed, verified, decoded or built.

use crate::compression::CompressionError;
use crate::varint::VarintError;

use super::MIN_BATCH_LENGTH;

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
    /// [`split_batches`](super::split_batches) found a partial batch at the end of the buffer.
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
