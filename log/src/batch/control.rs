//! Transaction marker (control) batches: Kafka's `EndTransactionMarker`.

use super::header::{CONTROL_BIT, TRANSACTIONAL_BIT, be_i16, be_i32, write_header};
use super::records::put_nullable;
use super::{
    BATCH_HEADER_LEN, BatchError, BatchHeader, LOG_OVERHEAD, MAGIC_V2, NO_PARTITION_LEADER_EPOCH,
    NO_SEQUENCE, decode_records,
};
use crate::varint;

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
