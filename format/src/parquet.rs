//! Parquet: Arrow batches as Parquet bytes, and JSON lines as Parquet with a given schema or
//! one inferred from the lines.
//!
//! Output is deterministic: the same rows give the same bytes (zstd, no clock and no host in
//! the metadata; `created_by` names the library version only), so a sink that rewrites an
//! object after a crash writes it identically.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::error::{FormatError, Result};
use crate::json::{self, JsonDecoder};

/// Rows per Arrow batch while decoding JSON lines; row groups are sized by the writer, so
/// this does not change the output.
const BATCH_ROWS: usize = 8192;

/// Records whose shapes a sampled schema is inferred from.
const SCHEMA_SAMPLE_ROWS: usize = 1000;

/// Writes `batches` (all of `schema`) as one Parquet file.
///
/// The bytes depend only on the rows, not on how they are split into batches: the writer
/// checks page sizes between the batches it is given, so the rows are handed to it in slices
/// of a fixed size. A sink that decoded an object's records over several writes (of any
/// sizes) therefore writes the same object as a replay that decoded them in one.
pub fn write(schema: SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(props))?;
    let all = concat_batches(&schema, batches)?;
    let mut offset = 0;
    while offset < all.num_rows() {
        let len = BATCH_ROWS.min(all.num_rows() - offset);
        writer.write(&all.slice(offset, len))?;
        offset += len;
    }
    finish(writer, all.num_rows())
}

/// Closes the file; refuses to lose rows (a row without columns is no row in Parquet).
fn finish(mut writer: ArrowWriter<Vec<u8>>, expected: usize) -> Result<Vec<u8>> {
    writer.flush()?;
    let rows: i64 = writer
        .flushed_row_groups()
        .iter()
        .map(|g| g.num_rows())
        .sum();
    if usize::try_from(rows).ok() != Some(expected) {
        return Err(FormatError::Invalid(format!(
            "{expected} records became {rows} rows"
        )));
    }
    Ok(writer.into_inner()?)
}

/// JSON lines (each a JSON object) as a Parquet file.
///
/// With `schema`, the lines are decoded into it (one parse per line; a line that does not
/// fit is an error). Without, the schema is inferred: most objects have one shape, so a
/// schema inferred from a sample and decoded strictly (a field or type the sample did not
/// show is an error, never dropped) saves parsing every record twice; any surprise falls
/// back to inferring from all lines, and fields whose values cannot share a column (an object
/// here, a number there) are written as JSON text. The choice depends only on the lines, so
/// the same lines always give the same bytes.
pub fn from_json_lines(lines: &[u8], schema: Option<SchemaRef>) -> Result<Vec<u8>> {
    if let Some(schema) = schema {
        let values: Vec<&[u8]> = split_lines(lines).collect();
        let decoder = JsonDecoder::new(Arc::clone(&schema));
        let batches = values
            .chunks(BATCH_ROWS)
            .map(|c| decoder.decode(c.iter().copied()))
            .collect::<Result<Vec<_>>>()?;
        return write(schema, &batches);
    }
    if let Ok(bytes) = inferred(lines, Some(SCHEMA_SAMPLE_ROWS)) {
        return Ok(bytes);
    }
    let first_try = match inferred(lines, None) {
        Ok(bytes) => return Ok(bytes),
        Err(e) => e,
    };
    let rows: Vec<Value> = split_lines(lines)
        .map(serde_json::from_slice)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| FormatError::Invalid(format!("a buffered line is not JSON: {e}")))?;
    let keys: BTreeSet<&str> = rows
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let conflicting: BTreeSet<&str> = keys
        .into_iter()
        .filter(|k| {
            let column = rows
                .iter()
                .filter_map(|r| r.get(*k))
                .map(|v| Ok(serde_json::json!({ *k: v })));
            arrow_json::reader::infer_json_schema_from_iterator(column).is_err()
        })
        .collect();
    let stringified = |all: bool| -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(lines.len());
        for row in &rows {
            let mut row = row.clone();
            if let Some(m) = row.as_object_mut() {
                for (k, v) in m.iter_mut() {
                    if (all || conflicting.contains(k.as_str())) && !v.is_string() && !v.is_null() {
                        *v = Value::String(v.to_string());
                    }
                }
            }
            serde_json::to_writer(&mut out, &row)
                .map_err(|e| FormatError::Invalid(e.to_string()))?;
            out.push(b'\n');
        }
        Ok(out)
    };
    match inferred(&stringified(false)?, None) {
        Ok(bytes) => Ok(bytes),
        Err(_) => inferred(&stringified(true)?, None)
            .map_err(|e| FormatError::Invalid(format!("{first_try}; then {e}"))),
    }
}

/// The non-empty lines.
fn split_lines(lines: &[u8]) -> impl Iterator<Item = &[u8]> {
    lines.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// JSON lines as Parquet, with the schema inferred from all of them, or from the first
/// `sample` and then decoded strictly (unknown fields and types are errors).
fn inferred(lines: &[u8], sample: Option<usize>) -> Result<Vec<u8>> {
    let schema: SchemaRef = Arc::new(json::infer_schema(
        split_lines(lines).take(sample.unwrap_or(usize::MAX)),
    )?);
    let reader = arrow_json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(BATCH_ROWS)
        .with_coerce_primitive(true)
        .with_strict_mode(sample.is_some())
        .build(lines)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    for batch in reader {
        writer.write(&batch?)?;
    }
    finish(writer, split_lines(lines).count())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// The rows of a Parquet file as JSON lines, and its Arrow schema.
    fn read(bytes: &[u8]) -> (Vec<String>, SchemaRef) {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(bytes)).unwrap();
        let schema = Arc::clone(builder.schema());
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        for batch in builder.build().unwrap() {
            w.write_batches(&[&batch.unwrap()]).unwrap();
        }
        w.finish().unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        (text.lines().map(str::to_string).collect(), schema)
    }

    #[test]
    fn the_same_rows_give_the_same_bytes() {
        let lines = b"{\"a\": 1, \"b\": \"x\", \"c\": [1, 2], \"d\": null}\n{\"a\": 2.5, \"c\": [], \"e\": {\"f\": true}}\n";
        let one = from_json_lines(lines, None).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            one,
            from_json_lines(lines, None).unwrap(),
            "no clock in the file"
        );
        assert_eq!(
            read(&one).0,
            [
                r#"{"a":1.0,"b":"x","c":[1,2]}"#,
                r#"{"a":2.5,"c":[],"e":{"f":true}}"#
            ]
        );
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Float64, true)]));
        let with = from_json_lines(lines, Some(Arc::clone(&schema))).unwrap();
        assert_eq!(
            with,
            from_json_lines(lines, Some(Arc::clone(&schema))).unwrap()
        );
        let decoder = JsonDecoder::new(Arc::clone(&schema));
        let batch = decoder
            .decode(split_lines(lines).collect::<Vec<_>>().into_iter())
            .unwrap();
        assert_eq!(
            write(Arc::clone(&schema), &[batch]).unwrap(),
            with,
            "one encoder"
        );
    }

    #[test]
    fn batch_boundaries_do_not_change_the_bytes() {
        // Enough rows and bytes for several pages per column: the writer checks page sizes
        // between batches, so unequal splits would cut pages elsewhere without the slicing.
        let lines: Vec<u8> = (0..30_000)
            .flat_map(|i| {
                format!(
                    "{{\"n\": {i}, \"s\": \"row {i} {}\"}}\n",
                    "x".repeat(i % 97)
                )
                .into_bytes()
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let values: Vec<&[u8]> = split_lines(&lines).collect();
        let decoder = JsonDecoder::new(Arc::clone(&schema));
        let whole = decoder.decode(values.iter().copied()).unwrap();
        let mut pieces = Vec::new();
        let mut at = 0;
        for size in [1, 7, 5000, 3, 10_000, 123].iter().cycle() {
            if at >= values.len() {
                break;
            }
            let end = (at + size).min(values.len());
            pieces.push(decoder.decode(values[at..end].iter().copied()).unwrap());
            at = end;
        }
        assert_eq!(
            write(Arc::clone(&schema), &pieces).unwrap(),
            write(schema, &[whole]).unwrap()
        );
    }

    #[test]
    fn a_given_schema_is_the_file_schema() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let bytes = from_json_lines(
            b"{\"n\": 1, \"x\": 2}\n{\"n\": 2}\n",
            Some(Arc::clone(&schema)),
        )
        .unwrap();
        let (rows, got) = read(&bytes);
        assert_eq!(got, schema);
        assert_eq!(rows, [r#"{"n":1,"x":2.0}"#, r#"{"n":2}"#]);
        let err = from_json_lines(b"{\"n\": \"one\"}\n", Some(schema)).unwrap_err();
        assert!(err.to_string().contains("field 'n'"), "{err}");
    }

    #[test]
    fn fields_that_disagree_become_json_text_and_no_row_is_lost() {
        let lines =
            b"{\"a\": 1, \"n\": 1}\n{\"a\": {\"b\": 2}, \"n\": 2}\n{\"a\": \"s\", \"n\": 3}\n";
        assert_eq!(
            read(&from_json_lines(lines, None).unwrap()).0,
            [
                r#"{"a":"1","n":1}"#,
                r#"{"a":"{\"b\":2}","n":2}"#,
                r#"{"a":"s","n":3}"#
            ]
        );
        assert!(from_json_lines(b"{}\n{}\n", None).is_err());
    }

    #[test]
    fn a_shape_the_schema_sample_did_not_show_is_kept_whole() {
        let mut lines = Vec::new();
        for i in 0..1500 {
            let line = if i < 1200 {
                format!("{{\"id\": {i}}}")
            } else {
                format!("{{\"id\": {i}, \"late\": \"x{i}\"}}")
            };
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
        }
        let got = read(&from_json_lines(&lines, None).unwrap()).0;
        assert_eq!(got.len(), 1500);
        assert!(got[1499].contains("x1499"), "{}", got[1499]);
        // One shape throughout takes the sampled path and gives the same rows.
        let uniform: Vec<u8> = lines
            .split(|b| *b == b'\n')
            .take(1200)
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(
            from_json_lines(&uniform, None).unwrap(),
            inferred(&uniform, None).unwrap()
        );
    }
}
