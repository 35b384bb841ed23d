//! SHOW, DESCRIBE and EXPLAIN: what the catalog, the log and the planner say, as rows or a
//! message.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::Schema;

use super::{Engine, Output};
use crate::ast::{ShowWhat, SourceKind, Statement};
use crate::error::{Result, SqlError};
use crate::query::compile;
use crate::types::sql_name;

impl Engine {
    /// SHOW STREAMS/TABLES/TOPICS/QUERIES.
    pub(super) fn show(&self, what: ShowWhat) -> Result<Output> {
        let rows: Vec<Vec<String>> = match what {
            ShowWhat::Streams | ShowWhat::Tables => {
                let kind = if what == ShowWhat::Streams {
                    SourceKind::Stream
                } else {
                    SourceKind::Table
                };
                self.catalog
                    .sources()
                    .filter(|s| s.kind == kind)
                    .map(|s| vec![s.name.clone(), s.topic.clone(), s.format.to_string()])
                    .collect()
            }
            ShowWhat::Topics => self
                .log
                .topic_names()
                .into_iter()
                .filter(|t| !t.starts_with("__"))
                .map(|t| {
                    let n = self.log.topic(&t).map(|t| t.partition_count()).unwrap_or(0);
                    vec![t, n.to_string()]
                })
                .collect(),
            ShowWhat::Queries => self
                .catalog
                .queries()
                .map(|q| {
                    let (status, counts) = match self.queries.stats(&q.id) {
                        None => match self.queries.failure(&q.id) {
                            Some(reason) => (format!("FAILED: {reason}"), String::new()),
                            None => ("NOT RUNNING".to_string(), String::new()),
                        },
                        Some(s) => (
                            match s.error.lock().clone() {
                                Some(e) => format!("ERROR: {e}"),
                                None => "RUNNING".into(),
                            },
                            format!(
                                "in {} / out {} / rejected {}{}",
                                s.records_in.load(std::sync::atomic::Ordering::Relaxed),
                                s.records_out.load(std::sync::atomic::Ordering::Relaxed),
                                s.rejected.load(std::sync::atomic::Ordering::Relaxed),
                                match s.dropped.load(std::sync::atomic::Ordering::Relaxed) {
                                    0 => String::new(),
                                    n => format!(" / dropped {n} (NULL join keys)"),
                                }
                            ),
                        ),
                    };
                    vec![
                        q.id.clone(),
                        status,
                        q.sink.clone(),
                        counts,
                        q.statement.clone(),
                    ]
                })
                .collect(),
        };
        let header: &[&str] = match what {
            ShowWhat::Streams | ShowWhat::Tables => &["name", "topic", "format"],
            ShowWhat::Topics => &["topic", "partitions"],
            ShowWhat::Queries => &["query_id", "status", "sink", "records", "sql"],
        };
        Ok(Output::Rows(vec![string_batch(header, rows)?]))
    }

    /// DESCRIBE [EXTENDED]: a source's columns, and with EXTENDED its topic and statement.
    pub(super) fn describe(&self, name: &str, extended: bool) -> Result<Output> {
        let def = self.catalog.get(name)?;
        let mut rows: Vec<Vec<String>> = def
            .columns
            .iter()
            .map(|(n, t, key)| {
                vec![
                    n.clone(),
                    sql_name(t),
                    if *key { "KEY".into() } else { String::new() },
                ]
            })
            .collect();
        if let Some(w) = def.window {
            // A windowed source's key pseudo-columns, read from its keys.
            let window = match w.size() {
                Some(size) => format!("{}, SIZE {size} ms", w.type_name()),
                None => w.type_name().to_string(),
            };
            for (name, what) in [
                (crate::operators::window::WINDOWSTART, "start"),
                (crate::operators::window::WINDOWEND, "end"),
            ] {
                if !def.columns.iter().any(|c| c.0 == name) {
                    rows.push(vec![
                        name.into(),
                        "BIGINT".into(),
                        format!("KEY: window {what} (ms; {window})"),
                    ]);
                }
            }
        }
        rows.push(vec![
            crate::format::ROWTIME.into(),
            "BIGINT".into(),
            "record timestamp (ms)".into(),
        ]);
        let mut batches = vec![string_batch(&["column", "type", "note"], rows)?];
        if extended {
            let topic = self.log.describe_topic(&def.topic)?;
            let records: i64 = topic
                .partitions
                .iter()
                .map(|p| p.log_end_offset - p.log_start_offset)
                .sum();
            batches.push(string_batch(
                &["property", "value"],
                vec![
                    vec!["kind".into(), def.kind.to_string()],
                    vec!["topic".into(), def.topic.clone()],
                    vec!["partitions".into(), topic.partitions.len().to_string()],
                    vec!["format".into(), def.format.to_string()],
                    vec![
                        "timestamp".into(),
                        def.timestamp
                            .clone()
                            .unwrap_or_else(|| "record timestamp".into()),
                    ],
                    vec!["records".into(), records.to_string()],
                    vec!["statement".into(), def.statement.clone()],
                ],
            )?);
        }
        Ok(Output::Rows(batches))
    }

    /// EXPLAIN a query: the plan it compiles to.
    pub(super) fn explain(&self, statement: Statement) -> Result<Output> {
        match statement {
            Statement::Select(select)
            | Statement::CreateAs { select, .. }
            | Statement::InsertSelect { select, .. } => {
                Ok(Output::Message(compile(&self.catalog, &select)?.explain()))
            }
            other => Err(SqlError::Invalid(format!(
                "EXPLAIN works on queries, not {other:?}"
            ))),
        }
    }
}

/// A batch of VARCHAR columns.
fn string_batch(header: &[&str], rows: Vec<Vec<String>>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        header
            .iter()
            .map(|h| {
                datafusion::arrow::datatypes::Field::new(
                    *h,
                    datafusion::arrow::datatypes::DataType::Utf8,
                    true,
                )
            })
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = (0..header.len())
        .map(|i| {
            Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
                rows.iter().map(|r| r[i].as_str()),
            )) as ArrayRef
        })
        .collect();
    Ok(RecordBatch::try_new(schema, columns)?)
}
