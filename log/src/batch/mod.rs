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
//!
//! - `error`: [`BatchError`], why a batch could not be parsed or built.
//! - `header`: the fixed header ([`BatchHeader`]), its CRC and the fields the log stamps.
//! - `builder`: [`BatchBuilder`], which encodes records into one batch.
//! - `records`: the varint record codec inside a batch ([`decode_records`]).
//! - `control`: transaction marker batches ([`ControlType`]).
//! - `framing`: walking a buffer of concatenated batches ([`BatchIter`]).

mod builder;
mod control;
mod error;
mod framing;
mod header;
mod records;
#[cfg(test)]
mod tests;

pub use self::builder::{BatchBuilder, BatchOptions};
pub use self::control::{ControlType, decode_control, encode_control_batch};
pub use self::error::BatchError;
pub use self::framing::{BatchIter, split_batches};
pub use self::header::{BatchHeader, set_base_offset, set_partition_leader_epoch, verify_crc};
pub use self::records::{decode_records, decode_records_bytes};

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
