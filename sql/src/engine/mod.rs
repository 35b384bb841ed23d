//! The statement engine: runs parsed statements against the catalog and the log. It is what
//! `sluice sql` and the REST API call.
//!
//! It runs the catalog statements (CREATE/DROP/SHOW/DESCRIBE), `INSERT ... VALUES`, push
//! queries (`SELECT ... EMIT CHANGES [LIMIT n]`, state in memory), pull queries (`SELECT` on
//! a table: its latest row per key, read from the log), and persistent queries (`CREATE ...
//! AS SELECT`, `INSERT INTO ... SELECT`), which [`QueryManager`] runs as tasks until
//! `TERMINATE`; they are recorded in the catalog and restart with the engine.

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
use crate::catalog::{Catalog, QueryDef, derived_statement, partitions_property, source_def};
use crate::error::{Result, SqlError};
use crate::format::Input;
use crate::planner::Planner;
use crate::query::{Dataflow, compile, output_columns};
use crate::runner::{QueryManager, RunnerConfig};
use crate::types::sql_name;
use sluice_state::{StateConfig, StateEnv};

/// Stack a statement is planned on. DataFusion's planning recurses once per expression level
/// with frames of up to ~8 KiB in debug builds (`ExprSchemable::to_field`), so an expression
/// at the depth limit ([`crate::parser::MAX_EXPR_DEPTH`]) needs about 2 MiB: more than the
/// 2 MiB a tokio blocking thread (the API) or a spawned thread has in all.
const STATEMENT_STACK: usize = 16 << 20;

/// Runs `f` on a stack with at least [`STATEMENT_STACK`] / 2 free: on the current one if it
/// has that much left, else on a fresh one of [`STATEMENT_STACK`] (mapped, not committed, so
/// cheap for a statement).
fn with_statement_stack<T>(f: impl FnOnce() -> T) -> T {
    stacker::maybe_grow(STATEMENT_STACK / 2, STATEMENT_STACK, f)
}

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

/// How an engine keeps state and runs persistent queries.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where query state lives, and its memory budget. Default: `<log dir>/state`.
    pub state: Option<StateConfig>,
    /// Commit interval and poll size of persistent queries.
    pub runner: RunnerConfig,
    /// Start the catalog's persistent queries on open (a worker does; a tool reading the
    /// catalog may not).
    pub start_queries: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            state: None,
            runner: RunnerConfig::default(),
            start_queries: true,
        }
    }
}

/// Runs statements.
#[derive(Debug)]
pub struct Engine {
    log: Log,
    catalog: Catalog,
    queries: QueryManager,
}

impl Engine {
    /// An engine over `log`, loading the catalog from it and starting its persistent
    /// queries.
    pub fn open(log: &Log) -> Result<Engine> {
        Self::open_with(log, EngineConfig::default())
    }

    /// An engine with explicit configuration.
    pub fn open_with(log: &Log, config: EngineConfig) -> Result<Engine> {
        let state = config
            .state
            .unwrap_or_else(|| StateConfig::new(log.dir().join("state")));
        let env =
            StateEnv::new(state).map_err(|e| SqlError::Invalid(format!("query state: {e}")))?;
        let mut engine = Engine {
            log: log.clone(),
            catalog: Catalog::open(log)?,
            queries: QueryManager::new(log, env, config.runner),
        };
        if config.start_queries {
            engine.start_queries();
        }
        Ok(engine)
    }

    /// Stops the persistent queries (each commits its current epoch first).
    pub fn shutdown(&mut self) {
        self.queries.stop_all();
    }

    /// Waits until every persistent query has committed positions at the end of its
    /// source (read_committed); false on timeout. For tests, benchmarks and scripts that
    /// must see a query's results.
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<bool> {
        with_statement_stack(|| self.wait_caught_up_inner(timeout))
    }

    fn wait_caught_up_inner(&self, timeout: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        // (query id, its group, its source topic), planned once.
        let mut watched = Vec::new();
        for q in self.catalog.queries() {
            // A query that is not running (it could not start, or was not started) has
            // nothing to catch up on, and may no longer compile.
            if !self.queries.is_running(&q.id) {
                continue;
            }
            let select = match crate::parse_one(&q.statement)? {
                Statement::CreateAs { select, .. } | Statement::InsertSelect { select, .. } => {
                    select
                }
                _ => continue,
            };
            let source = compile(&self.catalog, &select)?.source;
            watched.push((
                q.id.clone(),
                crate::runner::query_group(&q.id),
                source.topic,
            ));
        }
        loop {
            let mut behind = false;
            for (id, group, topic) in &watched {
                let Some(stats) = self.queries.stats(id) else {
                    continue;
                };
                if stats.error.lock().is_some() {
                    behind = true;
                    continue;
                }
                for p in 0..self.log.topic(topic)?.partition_count() {
                    let offset = |spec| {
                        self.log
                            .list_offset(topic, p, spec, sluice_log::Isolation::ReadCommitted)
                            .map(|o| o.unwrap_or(0))
                    };
                    let end = offset(sluice_log::OffsetSpec::Latest)?;
                    let start = offset(sluice_log::OffsetSpec::Earliest)?;
                    let tp = TopicPartition {
                        topic: topic.clone(),
                        partition: p,
                    };
                    let committed = self.log.committed(group, &tp).unwrap_or(start);
                    // The last records may be transaction markers, which are never "read".
                    if committed < end && has_data(&self.log, &tp, committed, end)? {
                        behind = true;
                    }
                }
            }
            if !behind {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The running queries.
    pub fn queries(&self) -> &QueryManager {
        &self.queries
    }

    /// Starts the catalog's persistent queries that are not running. One that fails to
    /// start (its statement no longer compiles, e.g. a window outside today's bounds created
    /// by an older version) is logged and shown as FAILED with the reason in `SHOW QUERIES`;
    /// it stays in the catalog, not running, so that `TERMINATE` (then `DROP`) works on it.
    /// A worker opens the engine without starting them, deploys its pipelines (which start
    /// their queries with their settings), then calls this for the rest.
    pub fn start_queries(&mut self) {
        with_statement_stack(|| self.start_stopped_queries());
    }

    fn start_stopped_queries(&mut self) {
        let defs: Vec<QueryDef> = self
            .catalog
            .queries()
            .filter(|q| !self.queries.is_running(&q.id))
            .cloned()
            .collect();
        for def in defs {
            if let Err(e) = self.start_query(&def) {
                tracing::error!(query = %def.id, error = %e, "A persistent query could not start; it stays stopped (FAILED in SHOW QUERIES) until TERMINATE removes it.");
            }
        }
    }

    /// Starts a stored query; a failure is remembered (with the reason) for SHOW QUERIES.
    fn start_query(&mut self, def: &QueryDef) -> Result<()> {
        match self.try_start_query(def) {
            Ok(()) => {
                self.queries.clear_failed(&def.id);
                Ok(())
            }
            Err(e) => {
                self.queries.set_failed(&def.id, e.to_string());
                Err(e)
            }
        }
    }

    fn try_start_query(&mut self, def: &QueryDef) -> Result<()> {
        let select = match crate::parse_one(&def.statement)? {
            Statement::CreateAs { select, .. } | Statement::InsertSelect { select, .. } => select,
            other => {
                return Err(SqlError::Invalid(format!(
                    "not a persistent query: {other:?}"
                )));
            }
        };
        let compiled = compile(&self.catalog, &select)?;
        let sink = self.catalog.get(&def.sink)?.clone();
        self.queries.start(def, compiled, sink)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Parses and runs every statement of `sql`, stopping at the first error.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<Output>> {
        self.execute_inner(sql, None)
    }

    /// As [`Engine::execute`], and the persistent queries its statements create or name
    /// (`CREATE ... AS SELECT`, also when it already exists, and `INSERT INTO ... SELECT`)
    /// run with `config`, restarting from their last commit where they ran otherwise. A
    /// pipeline passes its `guarantee` and `commit-interval` this way.
    pub fn execute_with(&mut self, sql: &str, config: &RunnerConfig) -> Result<Vec<Output>> {
        self.execute_inner(sql, Some(config))
    }

    fn execute_inner(&mut self, sql: &str, config: Option<&RunnerConfig>) -> Result<Vec<Output>> {
        with_statement_stack(|| self.execute_statements(sql, config))
    }

    fn execute_statements(
        &mut self,
        sql: &str,
        config: Option<&RunnerConfig>,
    ) -> Result<Vec<Output>> {
        let statements = crate::parse(sql)?;
        let texts = split_statement_texts(sql);
        let mut out = Vec::with_capacity(statements.len());
        for (i, s) in statements.into_iter().enumerate() {
            let text = texts.get(i).map_or(sql, String::as_str);
            let target = match (&s, config) {
                (Statement::CreateAs { name, .. }, Some(_)) => Some((name.clone(), None)),
                (Statement::InsertSelect { target, .. }, Some(_)) => {
                    Some((target.clone(), Some(text.trim().to_string())))
                }
                _ => None,
            };
            out.push(self.run(s, text)?);
            if let (Some((sink, statement)), Some(config)) = (target, config) {
                let defs: Vec<QueryDef> = self
                    .catalog
                    .queries()
                    .filter(|q| {
                        q.sink == sink && statement.as_ref().is_none_or(|t| *t == q.statement)
                    })
                    .cloned()
                    .collect();
                for def in defs {
                    if self.queries.configure(&def.id, config.clone()) {
                        tracing::info!(query = %def.id, guarantee = %config.guarantee, commit_interval = ?config.commit_interval, "Restarting the query with its pipeline's settings.");
                        self.queries.stop(&def.id);
                    }
                    if !self.queries.is_running(&def.id) {
                        self.start_query(&def)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn run(&mut self, statement: Statement, text: &str) -> Result<Output> {
        match statement {
            Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
                if_not_exists,
                or_replace,
            } => {
                let def = source_def(kind, &name, &columns, &properties, text)?;
                let topic = def.topic.clone();
                let created = self.catalog.create(
                    def,
                    partitions_property(&properties)?,
                    if_not_exists,
                    or_replace,
                )?;
                Ok(Output::Message(if created {
                    format!("{} {name} created on topic {topic}.", capitalized(kind))
                } else {
                    format!("{} {name} already exists.", capitalized(kind))
                }))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => {
                let dropped = self
                    .catalog
                    .drop_source(kind, &name, if_exists, delete_topic)?;
                Ok(Output::Message(if dropped {
                    format!(
                        "{} {name} dropped{}.",
                        capitalized(kind),
                        if delete_topic { " with its topic" } else { "" }
                    )
                } else {
                    format!("{} {name} does not exist.", capitalized(kind))
                }))
            }
            Statement::Show(what) => self.show(what),
            Statement::Describe { name, extended } => self.describe(&name, extended),
            Statement::InsertValues {
                target,
                columns,
                rows,
            } => self.insert_values(&target, &columns, &rows),
            Statement::Select(select) => {
                if select.emit.is_none() {
                    return self.pull_query(&select);
                }
                self.push_query(&select).map(|q| Output::Push(Box::new(q)))
            }
            Statement::Explain(inner) => match *inner {
                Statement::Select(select)
                | Statement::CreateAs { select, .. }
                | Statement::InsertSelect { select, .. } => {
                    Ok(Output::Message(compile(&self.catalog, &select)?.explain()))
                }
                other => Err(SqlError::Invalid(format!(
                    "EXPLAIN works on queries, not {other:?}"
                ))),
            },
            Statement::CreateAs {
                kind,
                name,
                properties,
                select,
                if_not_exists,
                or_replace,
            } => self.create_as(
                kind,
                &name,
                &properties,
                &select,
                if_not_exists,
                or_replace,
                text,
            ),
            Statement::InsertSelect { target, select } => {
                self.insert_select(&target, &select, text)
            }
            Statement::Terminate { query_id } => {
                let ids: Vec<String> = match query_id {
                    None => self.catalog.queries().map(|q| q.id.clone()).collect(),
                    Some(id) => vec![
                        self.catalog
                            .queries()
                            .find(|q| q.id.eq_ignore_ascii_case(&id))
                            .map(|q| q.id.clone())
                            .ok_or(SqlError::Unknown {
                                kind: "query",
                                name: id,
                            })?,
                    ],
                };
                for id in &ids {
                    self.queries.stop(id);
                    self.queries.clear_failed(id);
                    self.catalog.remove_query(id)?;
                    self.drop_query_state(id)?;
                }
                Ok(Output::Message(match ids.len() {
                    0 => "No queries to terminate.".to_string(),
                    _ => format!("Terminated {}.", ids.join(", ")),
                }))
            }
        }
    }

    /// Removes a terminated query's stores and changelog topic.
    fn drop_query_state(&mut self, id: &str) -> Result<()> {
        let name = id.to_lowercase();
        let changelog = format!("{name}-changelog");
        if let Ok(t) = self.log.topic(&changelog) {
            for p in 0..t.partition_count() {
                let _ = self
                    .queries
                    .env()
                    .destroy(&sluice_state::StoreId::new(&name, p));
            }
            self.log.delete_topic(&changelog)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create_as(
        &mut self,
        kind: SourceKind,
        name: &str,
        properties: &crate::ast::Properties,
        select: &crate::ast::Select,
        if_not_exists: bool,
        or_replace: bool,
        text: &str,
    ) -> Result<Output> {
        if self.catalog.get(name).is_ok() && if_not_exists {
            // Re-running the same statement (a redeployed pipeline) keeps the query; a
            // different query under the same name is not silently ignored.
            let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some(q) = self.catalog.queries().find(|q| q.sink == name) {
                if squash(&q.statement) != squash(text) {
                    return Err(SqlError::Invalid(format!(
                        "{name} exists and query {} writes it with a different statement; to change it, TERMINATE {} and DROP {} {name} first",
                        q.id,
                        q.id,
                        if kind == SourceKind::Stream {
                            "STREAM"
                        } else {
                            "TABLE"
                        }
                    )));
                }
            }
            return Ok(Output::Message(format!(
                "{} {name} already exists.",
                capitalized(kind)
            )));
        }
        if or_replace {
            return Err(SqlError::Invalid(
                "CREATE OR REPLACE ... AS SELECT is not supported; TERMINATE the query and DROP the result first".into(),
            ));
        }
        let compiled = compile(&self.catalog, select)?;
        if compiled.limit().is_some() {
            return Err(SqlError::Invalid(
                "LIMIT is for push queries, not persistent ones".into(),
            ));
        }
        match (kind, compiled.is_aggregate()) {
            (SourceKind::Stream, true) => {
                return Err(SqlError::Invalid(format!(
                    "an aggregate's result is a table: CREATE TABLE {name} AS SELECT ..."
                )));
            }
            (SourceKind::Table, false) if compiled.source.kind == SourceKind::Stream => {
                return Err(SqlError::Invalid(format!(
                    "a table needs GROUP BY over a stream (or CREATE STREAM {name} AS SELECT ...)"
                )));
            }
            _ => {}
        }
        let key = output_key(&compiled, select);
        if kind == SourceKind::Table && key.is_none() {
            return Err(SqlError::Invalid(format!(
                "table {name} needs its key in the SELECT list: select the (single) GROUP BY column by its name"
            )));
        }
        let columns = output_columns(compiled.schema(), key.as_deref())?;
        for k in properties.keys() {
            if ![
                "topic",
                "kafka_topic",
                "format",
                "value_format",
                "partitions",
            ]
            .contains(&k.as_str())
            {
                return Err(SqlError::Invalid(format!(
                    "{name}: unknown property '{k}' (known: topic, format, partitions)"
                )));
            }
        }
        let prop = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| properties.get(*n))
                .map(|v| v.as_str().to_string())
        };
        let topic = prop(&["topic", "kafka_topic"]).unwrap_or_else(|| name.to_string());
        let format = match prop(&["format", "value_format"]) {
            Some(f) => f.parse()?,
            None => compiled.source.format,
        };
        let statement = derived_statement(kind, name, &columns, &topic, format);
        let def = match crate::parse_one(&statement)? {
            Statement::CreateSource {
                columns,
                properties,
                ..
            } => source_def(kind, name, &columns, &properties, &statement)?,
            other => {
                return Err(SqlError::Plan(format!(
                    "internal error: derived statement parsed as {other:?}"
                )));
            }
        };
        let partitions = match partitions_property(properties)? {
            Some(p) => Some(p),
            None if self.log.topic(&topic).is_ok() => None,
            None => Some(self.log.topic(&compiled.source.topic)?.partition_count()),
        };
        self.catalog.create(def, partitions, false, false)?;
        let id = self.catalog.next_query_id(
            if kind == SourceKind::Stream {
                "CSAS"
            } else {
                "CTAS"
            },
            name,
        );
        let q = QueryDef {
            id: id.clone(),
            sink: name.to_string(),
            statement: text.trim().to_string(),
        };
        self.catalog.add_query(q.clone())?;
        self.start_query(&q)?;
        Ok(Output::Message(format!(
            "{} {name} created on topic {topic}; query {id} is running.",
            capitalized(kind)
        )))
    }

    fn insert_select(
        &mut self,
        target: &str,
        select: &crate::ast::Select,
        text: &str,
    ) -> Result<Output> {
        let def = self.catalog.get(target)?.clone();
        refuse_internal(&def)?;
        if def.kind != SourceKind::Stream {
            return Err(SqlError::Invalid(format!(
                "INSERT INTO ... SELECT writes streams; {target} is a table"
            )));
        }
        let compiled = compile(&self.catalog, select)?;
        if compiled.is_aggregate() {
            return Err(SqlError::Invalid(
                "INSERT INTO ... SELECT cannot aggregate; use CREATE TABLE ... AS SELECT".into(),
            ));
        }
        if compiled.source.name == def.name {
            return Err(SqlError::Invalid(format!(
                "a query cannot read and write {target}"
            )));
        }
        for f in compiled.schema().fields() {
            if f.name() == crate::format::ROWTIME {
                continue;
            }
            match def.columns.iter().find(|c| &c.0 == f.name()) {
                None => {
                    return Err(SqlError::Invalid(format!(
                        "column {} of the query is not a column of {target} (columns: {})",
                        f.name(),
                        def.columns
                            .iter()
                            .map(|c| c.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                Some((_, t, _))
                    if !datafusion::arrow::compute::can_cast_types(f.data_type(), t) =>
                {
                    return Err(SqlError::Invalid(format!(
                        "column {}: the query gives {}, {target} declares {}",
                        f.name(),
                        sql_name(f.data_type()),
                        sql_name(t)
                    )));
                }
                _ => {}
            }
        }
        let id = self.catalog.next_query_id("INSERTQUERY", target);
        let q = QueryDef {
            id: id.clone(),
            sink: target.to_string(),
            statement: text.trim().to_string(),
        };
        self.catalog.add_query(q.clone())?;
        self.start_query(&q)?;
        Ok(Output::Message(format!(
            "Query {id} is running, inserting into {target}."
        )))
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
                                "in {} / out {} / rejected {}",
                                s.records_in.load(std::sync::atomic::Ordering::Relaxed),
                                s.records_out.load(std::sync::atomic::Ordering::Relaxed),
                                s.rejected.load(std::sync::atomic::Ordering::Relaxed)
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
        refuse_internal(&def)?;
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
        for row in rows {
            if row.len() != names.len() {
                return Err(SqlError::Invalid(format!(
                    "{} values for {} columns",
                    row.len(),
                    names.len()
                )));
            }
            let batch = evaluate_row(&planner, &def.columns, &names, row)?;
            for (key, value) in def.encode(&batch)? {
                producer.send(
                    &def.topic,
                    Record {
                        key,
                        value: Some(Bytes::from(value)),
                        headers: Vec::new(),
                        timestamp: sluice_log::record::now_ms(),
                    },
                )?;
            }
        }
        producer.flush()?;
        Ok(Output::Message(format!(
            "Inserted {} row(s) into {target}.",
            rows.len()
        )))
    }

    fn push_query(&self, select: &crate::ast::Select) -> Result<PushQuery> {
        let compiled = compile(&self.catalog, select)?;
        let topic = self.log.topic(&compiled.source.topic)?;
        let mut consumer = self.log.consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 4096,
            ..ConsumerConfig::default()
        });
        let parts: Vec<TopicPartition> = (0..topic.partition_count())
            .map(|p| TopicPartition {
                topic: compiled.source.topic.clone(),
                partition: p,
            })
            .collect();
        consumer.assign(&parts)?;
        Ok(PushQuery {
            flow: Dataflow::open(compiled, None)?,
            consumer,
            rejected: 0,
        })
    }

    /// A pull query: the table's current rows (latest value per key, read committed from
    /// its topic), filtered and projected.
    fn pull_query(&self, select: &crate::ast::Select) -> Result<Output> {
        let compiled = compile(&self.catalog, select)?;
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
        let windowed = def
            .columns
            .iter()
            .any(|c| c.0 == crate::operators::window::WINDOWSTART);
        let topic = self.log.topic(&def.topic)?;
        // Latest record per key (per key and window for windowed tables), in log order.
        let mut latest: std::collections::HashMap<Vec<u8>, (u64, Record)> = Default::default();
        let mut seq = 0u64;
        let reader = crate::query::SourceReader::new(def)?;
        for p in 0..topic.partition_count() {
            let mut records = Vec::new();
            self.log.read_all(&def.topic, p, |_, r| records.push(r))?;
            for r in records {
                let Some(key) = r.key.clone() else { continue };
                let mut k = key.to_vec();
                if windowed {
                    if r.value.is_some() {
                        let rows = reader.read(&[Input::from(&r)])?;
                        if let Ok(i) = rows
                            .batch
                            .schema()
                            .index_of(crate::operators::window::WINDOWSTART)
                        {
                            if let Some(a) = rows
                                .batch
                                .column(i)
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                            {
                                if !a.is_empty() {
                                    k.extend_from_slice(&a.value(0).to_be_bytes());
                                }
                            }
                        }
                    }
                }
                if r.value.is_none() && !windowed {
                    latest.remove(&k);
                } else {
                    seq += 1;
                    latest.insert(k, (seq, r));
                }
            }
        }
        let mut rows: Vec<(u64, Record)> = latest
            .into_values()
            .filter(|(_, r)| r.value.is_some())
            .collect();
        rows.sort_by_key(|(s, _)| *s);
        let inputs: Vec<Input<'_>> = rows.iter().map(|(_, r)| Input::from(r)).collect();
        let mut flow = Dataflow::open(compiled, None)?;
        let step = flow.process(&inputs)?;
        Ok(Output::Rows(vec![rows_only(step)?]))
    }
}

/// The column of a query's output that becomes the record key: the source's key column
/// passed through under its name (stateless), or the single GROUP BY column (aggregates).
fn output_key(q: &crate::query::CompiledQuery, select: &crate::ast::Select) -> Option<String> {
    let schema = q.schema();
    if q.is_aggregate() {
        let SetExpr::Select(body) = select.query.body.as_ref() else {
            return None;
        };
        let datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(exprs, _) = &body.group_by
        else {
            return None;
        };
        let [group] = exprs.as_slice() else {
            return None;
        };
        // The key is the selected column that is the grouping expression: the column itself,
        // or an expression selected under an alias (`UPPER(zone) AS z ... GROUP BY UPPER(zone)`).
        let name = body.projection.iter().find_map(|item| match item {
            SelectItem::UnnamedExpr(e @ Expr::Identifier(i)) if e == group => Some(i.value.clone()),
            SelectItem::ExprWithAlias { expr, alias } if expr == group => Some(alias.value.clone()),
            _ => None,
        })?;
        return schema.index_of(&name).ok().map(|_| name);
    }
    let key = q.source.columns.iter().find(|c| c.2)?.0.clone();
    schema.index_of(&key).ok().map(|_| key)
}

/// True when `[from, to)` of a partition holds a committed data record (not only markers
/// or aborted records).
fn has_data(log: &Log, tp: &TopicPartition, from: i64, to: i64) -> Result<bool> {
    let fetched = log.fetch(
        &tp.topic,
        tp.partition,
        from,
        1 << 16,
        sluice_log::Isolation::ReadCommitted,
    )?;
    let (records, _) =
        sluice_log::consumer::decode_fetch(&fetched, sluice_log::Isolation::ReadCommitted)
            .map_err(|source| sluice_log::LogError::Batch {
                topic: tp.topic.clone(),
                partition: tp.partition,
                source,
            })?;
    Ok(records.iter().any(|r| r.offset >= from && r.offset < to))
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

/// A running push query over one source.
#[derive(Debug)]
pub struct PushQuery {
    flow: Dataflow,
    consumer: Consumer,
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
        let records = self.consumer.poll(timeout)?;
        if records.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
        let step = self.flow.process(&inputs)?;
        self.rejected += step.rejected.len() as u64;
        let rows = rows_only(step)?;
        Ok((rows.num_rows() > 0).then_some(rows))
    }
}

/// Statements never write internal topics (a catalog made by an older version may still
/// name one).
fn refuse_internal(def: &crate::catalog::SourceDef) -> Result<()> {
    if sluice_log::is_internal_topic(&def.topic) {
        return Err(SqlError::Invalid(format!(
            "{} reads the internal topic {}, which statements do not write",
            def.name, def.topic
        )));
    }
    Ok(())
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.queries.stop_all();
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
        // Aliased: DataFusion refuses two unnamed items with the same text (`VALUES (0, 0)`).
        select.projection = row
            .iter()
            .enumerate()
            .map(|(i, e)| SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: datafusion::sql::sqlparser::ast::Ident::new(format!("value_{i}")),
            })
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
        let physical = crate::checked::physical_expr(&state, expr, p.input.schema())?;
        let value = physical
            .evaluate(&one_row)
            .and_then(|v| v.into_array(1))
            .map_err(|e| SqlError::Invalid(format!("column {name}: {}", SqlError::from(e))))?;
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

    /// Statements just inside the depth limit run end to end (parse, plan, evaluate, start a
    /// persistent query, drop) on a thread with a worker's 2 MiB stack; just outside, the
    /// error names the limit and the engine goes on.
    #[test]
    fn deep_statements_run_or_are_refused_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let (_d, mut e) = engine();
                e.execute(
                    "CREATE STREAM s (id VARCHAR KEY, a BIGINT) WITH (topic='s', partitions=1)",
                )
                .unwrap();
                let sum = |n: usize| vec!["1"; n].join("+");
                e.execute(&format!("INSERT INTO s (id, a) VALUES ('q', {})", sum(255)))
                    .unwrap();
                let err = e
                    .execute(&format!(
                        "INSERT INTO s (id, a) VALUES ('q', {})",
                        sum(2_000)
                    ))
                    .unwrap_err();
                assert!(matches!(err, SqlError::TooDeep { limit: 256, .. }), "{err}");
                // At the limit, evaluated per record on the query's own (2 MiB) thread.
                let ands = vec!["a > 0"; 120].join(" AND ");
                let parens = format!("{}a{}", "(".repeat(100), ")".repeat(100));
                e.execute(&format!(
                    "CREATE STREAM t AS SELECT id, a{} AS a, {parens} AS b FROM s WHERE {ands}",
                    "+1".repeat(255)
                ))
                .unwrap();
                assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
                let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
                assert!(
                    queries.contains("RUNNING") && queries.contains("in 1 / out 1"),
                    "{queries}"
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn insert_values_refuses_overflow_and_division_by_zero() {
        let (_d, mut e) = engine();
        e.execute("CREATE STREAM s (id VARCHAR KEY, a BIGINT, x DOUBLE, i INT) WITH (topic='s', partitions=1)")
            .unwrap();
        for (values, expected) in [
            (
                "('q', 9223372036854775807 + 1, 0, 0)",
                "Arithmetic overflow",
            ),
            ("('q', 0, 1.0 / 0, 0)", "Divide by zero"),
            ("('q', 1 / 0, 0, 0)", "Divide by zero"),
            ("('q', 0, 0, 2147483647 + 1)", "column i"),
        ] {
            let err = e
                .execute(&format!("INSERT INTO s (id, a, x, i) VALUES {values}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{values}: {err}");
        }
        let topic = e.log.describe_topic("s").unwrap();
        assert_eq!(topic.partitions[0].log_end_offset, 0, "nothing was written");
        e.execute("INSERT INTO s (id, a, x, i) VALUES ('q', 9223372036854775806 + 1, 7.0 / 2, 1)")
            .unwrap();
    }

    /// A persistent query stored by an older version, outside today's window bounds, is not
    /// started (it would exhaust memory again at every start): SHOW QUERIES says FAILED and
    /// why, and TERMINATE and DROP still work.
    #[test]
    fn a_stored_query_outside_the_window_bounds_fails_to_start_and_terminates() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        {
            let mut e = Engine::open(&log).unwrap();
            e.execute(
                "CREATE STREAM s (id VARCHAR KEY, k VARCHAR) WITH (topic='s', partitions=1);
                 INSERT INTO s (id, k) VALUES ('1', 'a');
                 CREATE TABLE c AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 1 MINUTE) GROUP BY k;",
            )
            .unwrap();
            let err = e
                .execute("CREATE TABLE d AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 10 MINUTES, ADVANCE BY 1 MILLISECONDS) GROUP BY k")
                .unwrap_err()
                .to_string();
            assert!(err.contains("600000 windows; the limit is 100"), "{err}");
            assert!(e.catalog().get("d").is_err(), "nothing was created");
        }
        // What an older version without the bound would have stored.
        let mut catalog = Catalog::open(&log).unwrap();
        let id = catalog.queries().next().unwrap().id.clone();
        let mut def = catalog.remove_query(&id).unwrap();
        def.statement = def
            .statement
            .replace("ADVANCE BY 1 MINUTE", "ADVANCE BY 1 MILLISECONDS");
        catalog.add_query(def).unwrap();
        drop(catalog);

        let mut e = Engine::open(&log).unwrap();
        assert!(!e.queries().is_running(&id));
        let failure = e.queries().failure(&id).unwrap().to_string();
        assert!(failure.contains("the limit is 100"), "{failure}");
        let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
        assert!(queries.contains("FAILED: HOPPING window"), "{queries}");
        assert!(e.wait_caught_up(Duration::from_secs(5)).unwrap());
        let err = e.execute("DROP TABLE c").unwrap_err().to_string();
        assert!(
            err.contains(&id),
            "DROP is refused while the query exists: {err}"
        );
        e.execute(&format!("TERMINATE {id}")).unwrap();
        assert!(e.queries().failure(&id).is_none());
        e.execute("DROP TABLE c DELETE TOPIC").unwrap();
        let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
        assert!(!queries.contains(&id), "{queries}");
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
        let out = e
            .execute("EXPLAIN SELECT a, COUNT(*) AS n FROM s WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 5 SECONDS) GROUP BY a EMIT FINAL")
            .unwrap();
        assert!(
            matches!(&out[0], Output::Message(m) if m.contains("TUMBLING 60000 ms, grace 5000 ms") && m.contains("EMIT FINAL") && m.contains("Aggregate")),
            "{out:?}"
        );
    }
}
