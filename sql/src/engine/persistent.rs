//! Persistent queries' life in the engine: starting the catalog's queries (remembering why
//! one could not start), and waiting until the running ones have caught up with their source.

use std::collections::HashMap;
use std::time::Duration;

use sluice_log::{Log, TopicPartition};

use super::{Engine, with_statement_stack};
use crate::ast::Statement;
use crate::catalog::QueryDef;
use crate::error::{Result, SqlError};
use crate::query::compile;

impl Engine {
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
            let compiled = compile(&self.catalog, &select)?;
            for topic in compiled.input_topics() {
                watched.push((q.id.clone(), crate::runner::query_group(&q.id), topic));
            }
        }
        // The ends seen by the last pass that found every query caught up. One such pass is
        // not enough when a query reads another's output: it may have been checked just
        // before the other committed its last epoch. Two passes in a row with the same ends
        // are: nothing was written in between.
        let mut clean: Option<Vec<i64>> = None;
        // The first record found unread in each partition: until a query's position passes
        // it, it is behind without reading the log again (one pass every 10 ms would
        // otherwise fetch and decode a chunk of each input all along a long catch-up).
        let mut unread: HashMap<TopicPartition, i64> = HashMap::new();
        loop {
            let mut behind = false;
            let mut ends = Vec::new();
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
                    ends.push(end);
                    let start = offset(sluice_log::OffsetSpec::Earliest)?;
                    let tp = TopicPartition {
                        topic: topic.clone(),
                        partition: p,
                    };
                    let committed = self.log.committed(group, &tp).unwrap_or(start);
                    if committed >= end {
                        continue;
                    }
                    if unread.get(&tp).is_some_and(|&at| committed <= at) {
                        behind = true;
                        continue;
                    }
                    // The last records may be transaction markers, which are never "read".
                    if let Some(at) = first_record(&self.log, &tp, committed, end)? {
                        unread.insert(tp, at);
                        behind = true;
                    }
                }
            }
            if behind {
                clean = None;
            } else if clean.as_ref() == Some(&ends) {
                return Ok(true);
            } else {
                clean = Some(ends);
                continue;
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
    pub(super) fn start_query(&mut self, def: &QueryDef) -> Result<()> {
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
        if let Some(config) = &self.running_with {
            self.queries.configure(&def.id, config.clone());
        }
        self.queries.start(def, compiled, sink)
    }
}

/// True when `[from, to)` of a partition holds a committed data record (not only markers
/// or aborted records).
fn first_record(log: &Log, tp: &TopicPartition, from: i64, to: i64) -> Result<Option<i64>> {
    // A fetch may end early (at a segment's end, or after a lone transaction marker): step
    // over batches without records until `to`.
    let mut at = from;
    while at < to {
        let fetched = log.fetch(
            &tp.topic,
            tp.partition,
            at,
            1 << 16,
            sluice_log::Isolation::ReadCommitted,
        )?;
        let (records, next) =
            sluice_log::consumer::decode_fetch(&fetched, sluice_log::Isolation::ReadCommitted)
                .map_err(|source| sluice_log::LogError::Batch {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    source,
                })?;
        if let Some(r) = records.iter().find(|r| r.offset >= at && r.offset < to) {
            return Ok(Some(r.offset));
        }
        if next <= at {
            return Ok(None);
        }
        at = next;
    }
    Ok(None)
}
