//! SELECT: push queries (`EMIT CHANGES`, state in memory, polled for rows) and pull queries
//! (a table's current rows, read from its topic; one per key and window for a windowed
//! table, whose WINDOWSTART and WINDOWEND come from the keys).

use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use sluice_log::{Consumer, ConsumerConfig, OffsetReset, Record};

use super::{Engine, Output};
use crate::ast::SourceKind;
use crate::error::{Result, SqlError};
use crate::format::Input;
use crate::merge::Merger;
use crate::query::{Dataflow, compile};

impl Engine {
    /// A SELECT: a push query with EMIT, else a pull query.
    pub(super) fn select(&self, select: &crate::ast::Select) -> Result<Output> {
        if select.emit.is_none() {
            return self.pull_query(select);
        }
        self.push_query(select).map(|q| Output::Push(Box::new(q)))
    }

    /// A push query: the source's topic from the start, through an in-memory dataflow.
    fn push_query(&self, select: &crate::ast::Select) -> Result<PushQuery> {
        let compiled = compile(&self.catalog, select)?;
        let mut consumer = self.log.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 4096,
            ..ConsumerConfig::default()
        });
        let (routes, parts) = crate::merge::inputs(&self.log, &compiled)?;
        consumer.assign(&parts)?;
        Ok(PushQuery {
            merger: Merger::for_query(&compiled)?,
            flow: Dataflow::open(compiled, None)?,
            consumer,
            routes,
            lanes: parts.len(),
            rejected: 0,
        })
    }

    /// A pull query: the table's current rows (latest value per key, read committed from
    /// its topic), filtered and projected.
    fn pull_query(&self, select: &crate::ast::Select) -> Result<Output> {
        if select.partition_by.is_some() {
            return Err(SqlError::Invalid(
                "Pull queries don't support PARTITION BY clauses.".into(),
            ));
        }
        let compiled = compile(&self.catalog, &window_bounds_as_millis(select)?)?;
        if compiled.join.is_some() {
            return Err(SqlError::Invalid(
                "pull queries read one table; join in a CREATE TABLE ... AS SELECT and pull from its result, or add EMIT CHANGES for a push query".into(),
            ));
        }
        if compiled.source.kind != SourceKind::Table {
            return Err(SqlError::Invalid(format!(
                "{} is a stream: a SELECT on a stream is a push query, add EMIT CHANGES",
                compiled.source.name
            )));
        }
        if compiled.is_aggregate() {
            return Err(SqlError::Invalid(
                "pull queries read a table's rows; aggregate in a CREATE TABLE ... AS SELECT and pull from it".into(),
            ));
        }
        let def = &compiled.source;
        let topic = self.log.topic(&def.topic)?;
        // Latest record per key, in log order: a compacted topic's view. A windowed table's
        // keys carry their window, so it keeps one row per key and window, and a tombstone
        // (a session merged away, a row failing HAVING) deletes only its window.
        let mut latest: std::collections::HashMap<Vec<u8>, (u64, Record)> = Default::default();
        let mut seq = 0u64;
        for p in 0..topic.partition_count() {
            let mut records = Vec::new();
            self.log.read_all(&def.topic, p, |_, r| records.push(r))?;
            for r in records {
                let Some(key) = r.key.clone() else { continue };
                if r.value.is_none() {
                    latest.remove(key.as_ref());
                } else {
                    seq += 1;
                    latest.insert(key.to_vec(), (seq, r));
                }
            }
        }
        let mut rows: Vec<(u64, Record)> = latest
            .into_values()
            .filter(|(_, r)| r.value.is_some())
            .collect();
        rows.sort_by_key(|(s, _)| *s);
        if let Some(w) = def.window {
            // A windowed table's rows by key, then window, as ksqlDB's window store reads
            // them (a key's windows in time order).
            rows.sort_by_cached_key(|(s, r)| {
                let split = r.key.as_deref().and_then(|k| w.decode(k).ok());
                split.map(|(k, start, _)| (k.to_vec(), start, *s))
            });
        }
        let inputs: Vec<Input<'_>> = rows.iter().map(|(_, r)| Input::from(r)).collect();
        let mut flow = Dataflow::open(compiled, None)?;
        let step = flow.process(&inputs)?;
        Ok(Output::Rows(vec![rows_only(step)?]))
    }
}

/// `select` with the text compared with WINDOWSTART or WINDOWEND in its WHERE clause read as
/// an ISO-8601 time, in epoch milliseconds: a pull query may bound a windowed table's windows
/// as `WINDOWSTART >= '2019-10-02T21:31:16'`, as ksqlDB allows (UTC unless the text gives an
/// offset, such as `2017-11-17T04:53:45-0330`). Text that is neither a time nor a number
/// is an error naming the column.
fn window_bounds_as_millis(select: &crate::ast::Select) -> Result<crate::ast::Select> {
    use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Value};
    let mut select = select.clone();
    let SetExpr::Select(body) = select.query.body.as_mut() else {
        return Ok(select);
    };
    let Some(selection) = body.selection.as_mut() else {
        return Ok(select);
    };
    let window_name = |e: &Expr| match e {
        Expr::Identifier(i) => crate::query::ident_name(i),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(crate::query::ident_name)
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut bad: Option<(String, String)> = None;
    let is_window = |e: &Expr| {
        let name = match e {
            Expr::Identifier(i) => crate::query::ident_name(i),
            Expr::CompoundIdentifier(parts) => parts
                .last()
                .map(crate::query::ident_name)
                .unwrap_or_default(),
            _ => return false,
        };
        crate::operators::window::is_window_column(&name)
    };
    let mut as_millis = |e: &mut Expr, column: String| {
        if let Expr::Value(v) = e {
            if let Value::SingleQuotedString(text) = &v.value {
                if let Some(ms) = iso_millis(text) {
                    v.value = Value::Number(ms.to_string(), false);
                } else if text.trim().parse::<i64>().is_err() && bad.is_none() {
                    bad = Some((column, text.clone()));
                }
            }
        }
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(selection, |e| {
        if let Expr::BinaryOp { left, op, right } = e {
            let comparison = crate::query::is_comparison(op);
            if comparison && is_window(left) {
                as_millis(right, window_name(left));
            } else if comparison && is_window(right) {
                as_millis(left, window_name(right));
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    match bad {
        Some((column, text)) => Err(SqlError::Invalid(format!(
            "{column} is compared with '{text}': expected an ISO-8601 time (such as '2019-10-02T21:31:16') or epoch milliseconds"
        ))),
        None => Ok(select),
    }
}

/// An ISO-8601 time (`2019-10-02T21:31:16`, with optional fraction and offset; minutes or the
/// date alone also do) in epoch milliseconds, UTC unless it gives an offset.
fn iso_millis(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    if let Ok(t) = crate::query::parse_time(text, None) {
        return Some(t);
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"] {
        if let Ok(t) = DateTime::parse_from_str(text, f) {
            return Some(t.timestamp_millis());
        }
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        return Some(t.and_utc().timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// A running push query.
#[derive(Debug)]
pub struct PushQuery {
    flow: Dataflow,
    consumer: Consumer,
    /// Input records in timestamp order across partitions and topics.
    merger: Merger,
    /// Each input topic's sources (in FROM order).
    routes: crate::merge::Routes,
    /// Input partitions.
    lanes: usize,
    rejected: u64,
}

impl PushQuery {
    /// The schema of its rows.
    pub fn schema(&self) -> &SchemaRef {
        self.flow.schema()
    }

    /// True once LIMIT rows were returned.
    pub fn done(&self) -> bool {
        self.flow.done()
    }

    /// Records of the source that did not decode or came too late (skipped; a persistent
    /// query sends them to its dead-letter topic).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The next rows, waiting up to `timeout` for records; `None` when nothing arrived.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<RecordBatch>> {
        if self.done() {
            return Ok(None);
        }
        let polled = self.consumer.poll(timeout)?;
        let records = self
            .merger
            .next(&mut self.consumer, polled, self.lanes, 4096)?;
        if records.is_empty() {
            return Ok(None);
        }
        let (items, _) = crate::merge::items(&records, &self.routes);
        let step = self.flow.process_mixed(&items)?;
        self.rejected += step.rejected.len() as u64;
        let rows = rows_only(step)?;
        Ok((rows.num_rows() > 0).then_some(rows))
    }
}

/// The rows of a step that are not deletions.
fn rows_only(step: crate::query::Step) -> Result<RecordBatch> {
    if !step.deleted.iter().any(|d| *d) {
        return Ok(step.batch);
    }
    let keep: Vec<u32> = (0..step.deleted.len() as u32)
        .filter(|&i| !step.deleted[i as usize])
        .collect();
    Ok(datafusion::arrow::compute::take_record_batch(
        &step.batch,
        &datafusion::arrow::array::UInt32Array::from(keep),
    )?)
}
