//! `--check`: a query's streaming result, read back from its topic, against the batch rows.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use sluice_log::{ConsumerConfig, Log, OffsetReset, TopicPartition};
use sluice_sql::catalog::Catalog;
use sluice_sql::format::{Format, Input, encode_values};

use super::queries::{Check, Query};
use super::sql_err;
use crate::cli::CliError;

/// Compares `query`'s output topic with `batch` on the batch's columns; returns the number
/// of rows, or an error showing the first rows that differ.
pub fn compare(
    log: &Log,
    catalog: &Catalog,
    query: &Query,
    batch: &[RecordBatch],
) -> Result<usize, CliError> {
    let Some(first) = batch.first() else {
        return Err(CliError::Usage(format!(
            "{}: the batch query returned no batches",
            query.name
        )));
    };
    let columns: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut expected = Vec::new();
    for b in batch {
        expected.extend(rows(b, &columns)?);
    }
    let mut actual = Vec::new();
    let def = catalog.get(query.output).map_err(sql_err)?;
    let decoder = def.decoder().map_err(sql_err)?;
    let records = read_topic(log, &def.topic, query.check)?;
    for chunk in records.chunks(8192) {
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .map(|(k, v, t)| Input {
                key: k.as_deref(),
                value: Some(v),
                timestamp: *t,
            })
            .collect();
        let decoded = decoder.decode(&inputs).map_err(sql_err)?;
        if let Some(r) = decoded.rejected.first() {
            return Err(CliError::Usage(format!(
                "{}: an output record of {} does not decode: {}",
                query.name, def.topic, r.reason
            )));
        }
        actual.extend(rows(&decoded.batch, &columns)?);
    }
    expected.sort();
    actual.sort();
    if expected == actual {
        return Ok(actual.len());
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|r| actual.binary_search(r).is_err())
        .take(3)
        .collect();
    let extra: Vec<&String> = actual
        .iter()
        .filter(|r| expected.binary_search(r).is_err())
        .take(3)
        .collect();
    Err(CliError::Usage(format!(
        "{}: the streaming result ({} rows) differs from the batch result ({} rows); \
         batch rows not streamed (first 3): {missing:?}; streamed rows not in the batch: {extra:?}",
        query.name,
        actual.len(),
        expected.len()
    )))
}

/// An output record read back: key, value, timestamp.
type Read = (Option<Bytes>, Bytes, i64);

/// The committed records of `topic` (key, value, timestamp): every one for a stream, the
/// latest per key for a table (a tombstone removes its key).
fn read_topic(log: &Log, topic: &str, check: Check) -> Result<Vec<Read>, CliError> {
    let description = log.describe_topic(topic)?;
    let mut consumer = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        max_poll_records: 1 << 16,
        ..ConsumerConfig::default()
    });
    let mut ends = Vec::new();
    for p in &description.partitions {
        let tp = TopicPartition {
            topic: topic.to_string(),
            partition: p.partition,
        };
        ends.push((tp.clone(), p.last_stable_offset));
    }
    let assigned: Vec<TopicPartition> = ends.iter().map(|(tp, _)| tp.clone()).collect();
    consumer.assign(&assigned)?;
    let mut stream = Vec::new();
    // The latest value of each key, with its position in the topic.
    let mut table: HashMap<Option<Bytes>, (usize, Bytes, i64)> = HashMap::new();
    let mut order = 0usize;
    while ends
        .iter()
        .any(|(tp, end)| consumer.position(tp).unwrap_or(0) < *end)
    {
        let before: Vec<Option<i64>> = ends.iter().map(|(tp, _)| consumer.position(tp)).collect();
        let polled = consumer.poll(Duration::from_secs(5))?;
        // An empty poll that moved a position has stepped over transaction markers.
        if polled.is_empty()
            && ends
                .iter()
                .zip(&before)
                .all(|((tp, _), b)| consumer.position(tp) == *b)
        {
            return Err(CliError::Usage(format!(
                "reading {topic} back stalled before its end"
            )));
        }
        for r in polled {
            order += 1;
            match (check, r.value) {
                (Check::Table, None) => {
                    table.remove(&r.key);
                }
                (Check::Table, Some(v)) => {
                    table.insert(r.key.clone(), (order, v, r.timestamp));
                }
                (_, Some(v)) => stream.push((r.key, v, r.timestamp)),
                (_, None) => {}
            }
        }
    }
    if check == Check::Table {
        let mut latest: Vec<(usize, Read)> = table
            .into_iter()
            .map(|(k, (order, v, t))| (order, (k, v, t)))
            .collect();
        latest.sort_by_key(|(order, _)| *order);
        stream = latest.into_iter().map(|(_, read)| read).collect();
    }
    Ok(stream)
}

/// Each row of `batch` as text: the values of `columns` (by name) as JSON, numbers with a
/// fraction rounded to 10 significant digits (AVG sums in another order than DataFusion).
fn rows(batch: &RecordBatch, columns: &[String]) -> Result<Vec<String>, CliError> {
    let values = encode_values(Format::Json, batch).map_err(sql_err)?;
    values
        .iter()
        .map(|v| {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(v)
                .map_err(|e| CliError::Usage(format!("a result row is not a JSON object: {e}")))?;
            let fields: Vec<String> = columns
                .iter()
                .map(|c| match object.get(c) {
                    Some(serde_json::Value::Number(n)) if !n.is_i64() && !n.is_u64() => {
                        format!("{c}={:.9e}", n.as_f64().unwrap_or(f64::NAN))
                    }
                    Some(v) => format!("{c}={v}"),
                    None => format!("{c}=null"),
                })
                .collect();
            Ok(format!("{{{}}}", fields.join(", ")))
        })
        .collect()
}
