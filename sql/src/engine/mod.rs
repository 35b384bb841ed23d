//! The statement engine: runs parsed statements against the catalog and the log. It is what
//! `sluice sql` and the REST API call.
//!
//! It runs the catalog statements (CREATE/DROP/SHOW/DESCRIBE), `INSERT ... VALUES`, push
//! queries (`SELECT ... EMIT CHANGES [LIMIT n]`, state in memory), pull queries (`SELECT` on
//! a table: its latest row per key, read from the log), and persistent queries (`CREATE ...
//! AS SELECT`, `INSERT INTO ... SELECT`), which [`QueryManager`] runs as tasks until
//! `TERMINATE`; they are recorded in the catalog and restart with the engine.
//!
//! # Layout
//!
//! One file per statement family; each adds its methods to [`Engine`].
//!
//! - `mod.rs`: [`Engine`], [`Output`], [`EngineConfig`], and the dispatch of parsed statements
//!   (`execute`, `execute_with`) to the files below.
//! - `create.rs`: CREATE STREAM/TABLE, declared on a topic or `AS SELECT`.
//! - `insert.rs`: INSERT INTO ... VALUES and INSERT INTO ... SELECT.
//! - `select.rs`: push queries ([`PushQuery`]) and pull queries.
//! - `show.rs`: SHOW, DESCRIBE and EXPLAIN.
//! - `drop.rs`: DROP STREAM/TABLE and TERMINATE.
//! - `persistent.rs`: starting the catalog's persistent queries and waiting for them to
//!   catch up.

mod create;
mod drop;
mod insert;
mod persistent;
mod select;
mod show;
#[cfg(test)]
mod tests;

use datafusion::arrow::array::RecordBatch;
use sluice_log::Log;
use sluice_state::{StateConfig, StateEnv};

use crate::ast::{SourceKind, Statement};
use crate::catalog::{Catalog, QueryDef};
use crate::error::{Result, SqlError};
use crate::runner::{QueryManager, RunnerConfig};

pub use self::select::PushQuery;

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
    /// The settings of the persistent queries the statements being run create or name
    /// ([`Engine::execute_with`]), so that they start with them.
    running_with: Option<RunnerConfig>,
    /// In a cluster that places pipelines: persistent queries belong to pipelines.
    placed: bool,
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
            running_with: None,
            placed: false,
        };
        if config.start_queries {
            engine.start_queries();
        }
        Ok(engine)
    }

    /// In a cluster that places pipelines on nodes: a persistent query runs only as part of
    /// a pipeline (declared in its `sql`, [`RunnerConfig::owner`]), which the cluster
    /// places and moves; one run outside any (from the shell or the API) is refused, as it
    /// would be this node's alone and stop when the node does.
    pub fn set_placed(&mut self, placed: bool) {
        self.placed = placed;
    }

    /// Stops the persistent queries of `pipeline` in a cluster (each commits its current
    /// epoch first): it runs elsewhere now, or not at all. They stay in the catalog; the
    /// pipeline's next deploy here starts those its `sql` still declares.
    pub fn stop_queries_of(&mut self, pipeline: &str) -> Vec<String> {
        self.queries.stop_owned_by(pipeline)
    }

    /// Stops the persistent queries (each commits its current epoch first).
    pub fn shutdown(&mut self) {
        self.queries.stop_all();
    }

    /// The running queries.
    pub fn queries(&self) -> &QueryManager {
        &self.queries
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
        self.running_with = config.cloned();
        let result = with_statement_stack(|| self.execute_statements(sql));
        self.running_with = None;
        result
    }

    /// The pipeline that owns the statements being run, in a cluster.
    fn owner(&self) -> Option<&sluice_log::OwnerRef> {
        self.running_with.as_ref()?.owner.as_ref()
    }

    /// A new id for a persistent query writing `sink` (`CSAS`/`CTAS`/`INSERTQUERY` +
    /// name + number). A pipeline's query in a cluster gets the same id on every node,
    /// whatever else their catalogs hold, from a hash of its pipeline and statement: its
    /// changelogs, transactional id and kept positions are named by it.
    fn new_query_id(&self, prefix: &str, sink: &str, statement: &str) -> String {
        match self.owner() {
            Some(owner) => {
                // Words as `IF NOT EXISTS` compares statements: a reformatted statement is
                // the same query (with the same state) on every node.
                let seed = format!("{}\0{}", owner.pipeline(), words(statement));
                let n = sluice_log::partitioner::murmur2(seed.as_bytes()) as u32;
                format!("{prefix}_{}_{n}", sink.to_uppercase())
            }
            None => self.catalog.next_query_id(prefix, sink),
        }
    }

    /// Runs the statements of `sql`, with [`Self::running_with`] for the queries they
    /// create or name.
    fn execute_statements(&mut self, sql: &str) -> Result<Vec<Output>> {
        let config = self.running_with.clone();
        let config = config.as_ref();
        let statements = crate::parse(sql)?;
        let texts = split_statement_texts(sql);
        let mut out = Vec::with_capacity(statements.len());
        for (i, s) in statements.into_iter().enumerate() {
            let text = texts.get(i).map_or(sql, String::as_str);
            if self.placed && self.owner().is_none() {
                let refused = match &s {
                    Statement::CreateAs { .. } | Statement::InsertSelect { .. } => Some(
                        "in a cluster, persistent queries run as part of a pipeline (declare them in a pipeline file's `sql`), which the cluster places on a node and moves when the node dies",
                    ),
                    Statement::Terminate { .. } => Some(
                        "in a cluster, a persistent query runs as part of its pipeline, on the node the cluster places it: remove it from the pipeline file's `sql` instead",
                    ),
                    Statement::Drop {
                        delete_topic: true, ..
                    } => Some(
                        "in a cluster, DROP ... DELETE TOPIC would delete only this node's copy of a topic the cluster replicates (replicated topics cannot be deleted yet): DROP it without DELETE TOPIC",
                    ),
                    _ => None,
                };
                if let Some(reason) = refused {
                    return Err(SqlError::Invalid(reason.into()));
                }
            }
            let target = match (&s, config) {
                (Statement::CreateAs { name, .. }, Some(_)) => Some((name.clone(), None)),
                (Statement::InsertSelect { target, .. }, Some(_)) => {
                    Some((target.clone(), Some(text.trim().to_string())))
                }
                _ => None,
            };
            // A pipeline's statements run again at every deploy and start, as declarations:
            // an INSERT ... SELECT that already runs as written is that query, not another
            // one reading its input again from the start (duplicates in the target).
            let running = match &target {
                Some((sink, Some(statement))) => self
                    .catalog
                    .queries()
                    .find(|q| q.sink == *sink && q.statement == *statement)
                    .map(|q| q.id.clone()),
                _ => None,
            };
            match running {
                Some(id) => out.push(Output::Message(format!(
                    "Query {id} already runs this INSERT."
                ))),
                None => out.push(self.run(s, text)?),
            }
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
                    // Another pipeline's query writing the same result is not this one's.
                    if let (Some(owner), Some(theirs)) =
                        (&config.owner, self.queries.owner_of(&def.id))
                        && theirs != owner.pipeline()
                    {
                        return Err(SqlError::Invalid(format!(
                            "{sink} is written by query {} of pipeline {theirs}: a pipeline writes only streams and tables of its own",
                            def.id
                        )));
                    }
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
            } => self.create_source(
                kind,
                &name,
                &columns,
                &properties,
                if_not_exists,
                or_replace,
                text,
            ),
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => self.drop_source(kind, &name, if_exists, delete_topic),
            Statement::Show(what) => self.show(what),
            Statement::Describe { name, extended } => self.describe(&name, extended),
            Statement::InsertValues {
                target,
                columns,
                rows,
            } => self.insert_values(&target, &columns, &rows),
            Statement::Select(select) => self.select(&select),
            Statement::Explain(inner) => self.explain(*inner),
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
            Statement::Terminate { query_id } => self.terminate(query_id),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.queries.stop_all();
    }
}

/// A statement's words, one space apart: statements that differ only in blanks compare
/// equal.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn capitalized(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "Stream",
        SourceKind::Table => "Table",
    }
}

/// The text of each statement of a script (split at top-level semicolons), for storing
/// statements as written. Quotes and comments (`-- …` to the end of the line, `/* … */`) are
/// skipped whole: a `;` or a quote inside them neither ends nor opens anything.
pub fn split_statement_texts(sql: &str) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        Quote(char),
        LineComment,
        BlockComment,
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut state = In::Code;
    let mut depth = 0i32;
    // Whether the current piece holds more than comments and blanks.
    let mut code = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (state, c) {
            (In::Quote(q), c) if c == q => state = In::Code,
            (In::LineComment, '\n') => state = In::Code,
            (In::BlockComment, '*') if chars.peek() == Some(&'/') => {
                cur.push(c);
                cur.extend(chars.next());
                state = In::Code;
                continue;
            }
            (In::Quote(_) | In::LineComment | In::BlockComment, _) => {}
            (In::Code, '\'' | '"' | '`') => state = In::Quote(c),
            (In::Code, '-') if chars.peek() == Some(&'-') => state = In::LineComment,
            (In::Code, '/') if chars.peek() == Some(&'*') => {
                cur.push(c);
                cur.extend(chars.next());
                state = In::BlockComment;
                continue;
            }
            (In::Code, '(') => depth += 1,
            (In::Code, ')') => depth -= 1,
            (In::Code, ';') if depth <= 0 => {
                if code {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                code = false;
                continue;
            }
            _ => {}
        }
        if state == In::Code && !c.is_whitespace() || matches!(state, In::Quote(_)) {
            code = true;
        }
        cur.push(c);
    }
    if !code {
        return out;
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}
