//! The fixed 61-byte batch header: parsing, writing, the CRC and the fields the log stamps on append.

use super::{BATCH_HEADER_LEN, BatchError, LOG_OVERHEAD, MAGIC_V2, MIN_BATCH_LENGTH, NO_SEQUENCE};
use crate::compression::Compression;

pub(super) const COMPRESSION_MASK: i16 = 0x07;
pub(super) const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
pub(super) const TRANSACTIONAL_BIT: i16 = 1 << 4;
pub(super) const CONTROL_BIT: i16 = 1 << 5;

pub(super) const BASE_OFFSET_AT: usize = 0;
pub(super) const BATCH_LENGTH_AT: usize = 8;
pub(super) const PARTITION_LEADER_EPOCH_AT: usize = 12;
pub(super) const MAGIC_AT: usize = 16;
pub(super) const CRC_AT: usize = 17;
/// Where the CRC-covered region starts.
pub(super) const ATTRIBUTES_AT: usize = 21;

pub(super) fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
pub(super) fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
pub(super) fn be_i64(buf: &[u8], at: usize) -> i64 {
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
    /// Idempotent/transactional producer id, or [`NO_PRODUCER_ID`](super::NO_PRODUCER_ID).
    pub producer_id: i64,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`](super::NO_PRODUCER_EPOCH).
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

/// Fills `out[..61]` from `h` (ignoring `h.crc`) and then the CRC over `out[21..]`.
pub(super) fn write_header(out: &mut [u8], h: &BatchHeader) {
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
