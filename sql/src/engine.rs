//! The statement engine: runs parsed statements against the catalog and the log. It is what
//! `sluice sql` and the REST API call.
//!
//! Today it runs the catalog statements (CREATE/DROP/SHOW/DESCRIBE), `INSERT ... VALUES`, and
//! push queries made of filters and projections (`SELECT ... EMIT CHANGES [LIMIT n]`), which
//! stream their results from the source topic as records arrive. Aggregates, windows, joins,
//! pull queries and persistent queries come with the stateful operators.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};
use sluice_log::{
    Consumer, ConsumerConfig, Log, OffsetReset, ProducerConfig, Record, TopicPartition,
};

use crate::ast::{ShowWhat, SourceKind, Statement};
use crate::catalog::{Catalog, partitions_property, source_def};
use crate::error::{Result, SqlError};
use crate::format::{Input, RecordDecoder, encode_values};
use crate::operators::stateless::Stateless;
use crate::planner::Planner;
use crate::types::sql_name;

/// What a statement returns.
#[derive(Debug)]
pub enum Output {
    /// A message for the user ("Stream rides created.").
    Message(String),
    /// Rows to show as a table.
    Rows(Vec<RecordBatch>),
    /// A push query: poll it for rows until it ends (LIMIT) or the user stops it.
    Push(Box<PushQuery>),
}

/// Runs statements.
#[derive(Debug)]
pub struct Engine {
    log: Log,
    catalog: Catalog,
}

impl Engine {
    /// An engine over `log`, loading the catalog from it.
    pub fn open(log: &Log) -> Result<Engine> {
        Ok(Engine {
            log: log.clone(),
            catalog: Catalog::open(log)?,
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Parses and runs every statement of `sql`, stopping at the first error.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<Output>> {
        let statements = crate::parse(sql)?;
        let texts = split_statement_texts(sql);
        let mut out = Vec::with_capacity(statements.len());
        for (i, s) in statements.into_iter().enumerate() {
            let text = texts.get(i).map_or(sql, String::as_str);
            out.push(self.run(s, text)?);
        }
        Ok(out)
    }

    fn run(&mut self, statement: Statement, text: &str) -> Result<Output> {
        match statement {
            Statement::CreateSource { kind, name, columns, properties, if_not_exists, or_replace } => {
                let def = source_def(kind, &name, &columns, &properties, text)?;
                let topic = def.topic.clone();
                let created = self.catalog.create(def, partitions_property(&properties)?, if_not_exists, or_replace)?;
                Ok(Output::Message(if created {
                    format!("{} {name} created on topic {topic}.", capitalized(kind))
                } else {
                    format!("{} {name} already exists.", capitalized(kind))
                }))
            }
            Statement::Drop { kind, name, if_exists, delete_topic } => {
                let dropped = self.catalog.drop_source(kind, &name, if_exists, delete_topic)?;
                Ok(Output::Message(if dropped {
                    format!("{} {name} dropped{}.", capitalized(kind), if delete_topic { " with its topic" } else { "" })
                } else {
                    format!("{} {name} does not exist.", capitalized(kind))
                }))
            }
            Statement::Show(what) => self.show(what),
            Statement::Describe { name, extended } => self.describe(&name, extended),
            Statement::InsertValues { target, columns, rows } => self.insert_values(&target, &columns, &rows),
            Statement::Select(select) => {
                if select.window.is_some() {
                    return Err(SqlError::Invalid("windowed queries need the stateful operators (not available yet)".into()));
                }
                if select.emit.is_none() {
                    return Err(SqlError::Invalid(
                        "pull queries (SELECT without EMIT CHANGES) need a materialized table (not available yet); add EMIT CHANGES for a push query".into(),
                    ));
                }
                self.push_query(&select.query).map(|q| Output::Push(Box::new(q)))
            }
            Statement::Explain(inner) => match *inner {
                Statement::Select(select) | Statement::CreateAs { select, .. } | Statement::InsertSelect { select, .. } => {
                    let planner = Planner::new(&self.catalog.tables()?)?;
                    let plan = planner.logical_plan(&select.query)?;
                    Ok(Output::Message(format!("{}", plan.display_indent())))
                }
                other => Err(SqlError::Invalid(format!("EXPLAIN works on queries, not {other:?}"))),
            },
            Statement::CreateAs { .. } | Statement::InsertSelect { .. } | Statement::Terminate { .. } => Err(SqlError::Invalid(
                "persistent queries (CREATE ... AS SELECT, INSERT INTO ... SELECT, TERMINATE) need the query runtime (not available yet)".into(),
            )),
        }
    }

    fn show(&self, what: ShowWhat) -> Result<Output> {
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
            ShowWhat::Queries => Vec::new(),
        };
        let header: &[&str] = match what {
            ShowWhat::Streams | ShowWhat::Tables => &["name", "topic", "format"],
            ShowWhat::Topics => &["topic", "partitions"],
            ShowWhat::Queries => &["query_id", "status", "sql"],
        };
        Ok(Output::Rows(vec![string_batch(header, rows)?]))
    }

    fn describe(&self, name: &str, extended: bool) -> Result<Output> {
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
        rows.push(vec![
            "rowtime".into(),
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

    fn insert_values(
        &mut self,
        target: &str,
        columns: &[String],
        rows: &[Vec<Expr>],
    ) -> Result<Output> {
        let def = self.catalog.get(target)?.clone();
        let names: Vec<String> = if columns.is_empty() {
            def.columns.iter().map(|c| c.0.clone()).collect()
        } else {
            columns.to_vec()
        };
        for n in &names {
            if !def.columns.iter().any(|c| &c.0 == n) {
                return Err(SqlError::Unknown {
                    kind: "column",
                    name: format!("{n} (of {target})"),
                });
            }
        }
        let planner = Planner::new(&[])?;
        let mut producer = self.log.producer(ProducerConfig::default())?;
        let key_col = def.columns.iter().position(|c| c.2);
        let value_cols: Vec<usize> = (0..def.columns.len())
            .filter(|i| Some(*i) != key_col)
            .collect();
        for row in rows {
            if row.len() != names.len() {
                return Err(SqlError::Invalid(format!(
                    "{} values for {} columns",
                    row.len(),
                    names.len()
                )));
            }
            let batch = evaluate_row(&planner, &def.columns, &names, row)?;
            let values = encode_values(def.format, &batch.project(&value_cols)?)?;
            let key = match key_col {
                Some(k) => {
                    let f = datafusion::arrow::util::display::ArrayFormatter::try_new(
                        batch.column(k).as_ref(),
                        &Default::default(),
                    )?;
                    batch
                        .column(k)
                        .is_valid(0)
                        .then(|| Bytes::from(f.value(0).to_string()))
                }
                None => None,
            };
            let value = values.into_iter().next().map(Bytes::from);
            producer.send(
                &def.topic,
                Record {
                    key,
                    value,
                    headers: Vec::new(),
                    timestamp: sluice_log::record::now_ms(),
                },
            )?;
        }
        producer.flush()?;
        Ok(Output::Message(format!(
            "Inserted {} row(s) into {target}.",
            rows.len()
        )))
    }

    fn push_query(&self, query: &Query) -> Result<PushQuery> {
        let planner = Planner::new(&self.catalog.tables()?)?;
        let op = planner.stateless(query)?;
        let def = self.catalog.get(op.source())?;
        let topic = self.log.topic(&def.topic)?;
        let mut consumer = self.log.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 4096,
            ..ConsumerConfig::default()
        });
        let parts: Vec<TopicPartition> = (0..topic.partition_count())
            .map(|p| TopicPartition {
                topic: def.topic.clone(),
                partition: p,
            })
            .collect();
        consumer.assign(&parts)?;
        Ok(PushQuery {
            decoder: def.decoder()?,
            remaining: op.limit(),
            op,
            consumer,
            rejected: 0,
        })
    }
}

/// A running push query over one source.
#[derive(Debug)]
pub struct PushQuery {
    op: Stateless,
    decoder: RecordDecoder,
    consumer: Consumer,
    remaining: Option<usize>,
    rejected: u64,
}

impl PushQuery {
    /// The schema of its rows.
    pub fn schema(&self) -> &SchemaRef {
        self.op.schema()
    }

    /// True once LIMIT rows were returned.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Records of the source that did not decode (skipped; a persistent query sends them to
    /// its dead-letter topic).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The next rows, waiting up to `timeout` for records; `None` when nothing arrived.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<RecordBatch>> {
        if self.done() {
            return Ok(None);
        }
        let records = self.consumer.poll(timeout)?;
        if records.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<Input<'_>> = records
            .iter()
            .map(|r| Input {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                timestamp: r.timestamp,
            })
            .collect();
        let decoded = self.decoder.decode(&inputs)?;
        self.rejected += decoded.rejected.len() as u64;
        let mut out = self.op.process(&decoded.batch)?;
        if let Some(rem) = self.remaining.as_mut() {
            let n = out.num_rows().min(*rem);
            out = out.slice(0, n);
            *rem -= n;
        }
        Ok((out.num_rows() > 0).then_some(out))
    }
}

fn capitalized(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "Stream",
        SourceKind::Table => "Table",
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

/// Evaluates one VALUES row into a one-row batch with the source's columns (those not named
/// are NULL), cast to their declared types.
fn evaluate_row(
    planner: &Planner,
    columns: &[(String, datafusion::arrow::datatypes::DataType, bool)],
    names: &[String],
    row: &[Expr],
) -> Result<RecordBatch> {
    let Statement::Select(template) = crate::parse_one("SELECT 1")? else {
        return Err(SqlError::Plan(
            "internal error: SELECT 1 did not parse as a query".into(),
        ));
    };
    let mut query: Query = *template.query;
    if let SetExpr::Select(select) = query.body.as_mut() {
        select.projection = row
            .iter()
            .map(|e| SelectItem::UnnamedExpr(e.clone()))
            .collect();
    }
    let plan = planner.logical_plan(&query)?;
    let LogicalPlan::Projection(p) = &plan else {
        return Err(SqlError::Plan(format!(
            "unexpected plan for VALUES: {}",
            plan.display()
        )));
    };
    let state = datafusion::prelude::SessionContext::new().state();
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let mut out: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, t, _)| new_null_array(t, 1))
        .collect();
    for (expr, name) in p.expr.iter().zip(names) {
        let physical = state.create_physical_expr(expr.clone(), p.input.schema())?;
        let value = physical.evaluate(&one_row)?.into_array(1)?;
        let i = columns.iter().position(|c| &c.0 == name).unwrap_or(0);
        out[i] = datafusion::arrow::compute::cast_with_options(
            &value,
            &columns[i].1,
            &datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| SqlError::Invalid(format!("column {name}: {e}")))?;
    }
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t, _)| datafusion::arrow::datatypes::Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, out)?)
}

/// The text of each statement of a script (split at top-level semicolons), for storing
/// statements as written.
fn split_statement_texts(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0i32;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ';') if depth <= 0 => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let e = Engine::open(&log).unwrap();
        (dir, e)
    }

    fn rows(out: Output) -> String {
        match out {
            Output::Rows(b) => b
                .iter()
                .map(|b| {
                    pretty_format_batches(std::slice::from_ref(b))
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n"),
            other => panic!("expected rows, got {other:?}"),
        }
    }

    #[test]
    fn create_insert_and_push_query_with_filter_and_limit() {
        let (_d, mut e) = engine();
        let out = e
            .execute(
                "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, fare DOUBLE) WITH (topic='rides', partitions=2);
                 INSERT INTO rides (id, zone, fare) VALUES ('r1', 'airport', 30.5), ('r2', 'harbor', 8.0);
                 INSERT INTO rides VALUES ('r3', 'airport', 12 + 3), ('r4', UPPER('x'), NULL);",
            )
            .unwrap();
        assert!(matches!(&out[0], Output::Message(m) if m.contains("created")));
        assert!(matches!(&out[2], Output::Message(m) if m.contains("Inserted 2")));
        let mut out = e.execute("SELECT id, fare * 2 AS twice FROM rides WHERE zone = 'airport' EMIT CHANGES LIMIT 2").unwrap();
        let Some(Output::Push(mut q)) = out.pop() else {
            panic!()
        };
        let mut got = Vec::new();
        for _ in 0..20 {
            if let Some(b) = q.poll(Duration::from_millis(50)).unwrap() {
                got.push(b);
            }
            if q.done() {
                break;
            }
        }
        assert!(q.done());
        let text = pretty_format_batches(&got).unwrap().to_string();
        assert!(
            text.contains("| r1 | 61.0  |") && text.contains("| r3 | 30.0  |"),
            "{text}"
        );
    }

    #[test]
    fn show_describe_drop_and_errors() {
        let (_d, mut e) = engine();
        e.execute(
            "CREATE STREAM s (a INT, b VARCHAR) WITH (topic='s', partitions=1, format='DELIMITED')",
        )
        .unwrap();
        let streams = rows(e.execute("SHOW STREAMS").unwrap().remove(0));
        assert!(
            streams.contains("| s    | s     | DELIMITED |"),
            "{streams}"
        );
        let d = rows(e.execute("DESCRIBE EXTENDED s").unwrap().remove(0));
        assert!(
            d.contains("| a       | INT     |") && d.contains("rowtime") && d.contains("DELIMITED"),
            "{d}"
        );
        let err = e
            .execute("SELECT nope FROM s EMIT CHANGES")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = e
            .execute("INSERT INTO s (zzz) VALUES (1)")
            .unwrap_err()
            .to_string();
        assert!(err.contains("zzz"), "{err}");
        let err = e
            .execute("INSERT INTO s (a) VALUES ('not a number')")
            .unwrap_err()
            .to_string();
        assert!(err.contains("column a"), "{err}");
        let err = e
            .execute("SELECT * FROM\n s WHERE")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            matches!(&e.execute("DROP STREAM s DELETE TOPIC").unwrap()[0], Output::Message(m) if m.contains("dropped"))
        );
        assert!(e.execute("DESCRIBE s").is_err());
    }

    #[test]
    fn explain_shows_the_plan() {
        let (_d, mut e) = engine();
        e.execute("CREATE STREAM s (a INT) WITH (topic='s', partitions=1)")
            .unwrap();
        let out = e
            .execute("EXPLAIN SELECT a + 1 FROM s WHERE a > 2 EMIT CHANGES")
            .unwrap();
        assert!(
            matches!(&out[0], Output::Message(m) if m.contains("Filter") && m.contains("TableScan: s")),
            "{out:?}"
        );
    }
}
