//! The record codec inside a batch: varint-framed records, encoded and decoded.

use bytes::Bytes;

use super::{BATCH_HEADER_LEN, BatchError, BatchHeader, verify_crc};
use crate::compression::Compression;
use crate::record::{Header, Record, StoredRecord};
use crate::varint;

#[inline]
pub(super) fn len_i32(what: &'static str, len: usize) -> Result<i32, BatchError> {
    i32::try_from(len).map_err(|_| BatchError::TooLarge { what, len })
}

/// Encoded size of an optional byte field: varint length (-1 for null) plus the bytes.
#[inline]
pub(super) fn nullable_len(what: &'static str, field: Option<&[u8]>) -> Result<usize, BatchError> {
    Ok(match field {
        None => 1,
        Some(b) => varint::varint_len(len_i32(what, b.len())?) + b.len(),
    })
}

#[inline]
pub(super) fn put_nullable(buf: &mut Vec<u8>, field: Option<&[u8]>) {
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
pub(super) fn encode_record(
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
