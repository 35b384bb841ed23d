//! The status board: which tasks and persistent queries run, published by the worker each
//! time that changes (deploy, undeploy, pause, restart, SQL statements), so `/metrics`
//! reads their live counters without the worker's lock, which a deploy holds while it joins
//! task threads.
//!
//! ```text
//!  Worker (under the deployer's lock) ──publish──► StatusBoard ◄──snapshot── GET /metrics
//!                                                   Arc<Snapshot>: tasks and queries, each
//!                                                   with its Arc'd counters (live values)
//! ```

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_sql::runner::QueryStats;

use crate::worker::{Deployed, TaskStatus};

/// A task as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    /// Its pipeline.
    pub pipeline: String,
    /// `source <name>` or `sink <name>`.
    pub task: String,
    /// Its counters (the task updates them; the snapshot reads them live).
    pub status: Arc<TaskStatus>,
}

/// What runs, as last published.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The tasks of every deployed pipeline.
    pub tasks: Vec<TaskEntry>,
    /// The running persistent queries with their counters.
    pub queries: Vec<(String, Arc<QueryStats>)>,
}

/// The last published [`Snapshot`].
#[derive(Debug, Default)]
pub struct StatusBoard {
    /// A parking_lot Mutex held only to swap or clone the `Arc`, never while anything
    /// waits: readers get the last snapshot at once whatever the worker is doing.
    current: Mutex<Arc<Snapshot>>,
}

impl StatusBoard {
    /// The last published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.lock())
    }

    /// Publishes what runs now.
    pub fn publish(&self, pipelines: &[Deployed], engine: &sluice_sql::engine::Engine) {
        let tasks = pipelines
            .iter()
            .flat_map(|p| {
                p.tasks.iter().map(|t| TaskEntry {
                    pipeline: p.name.clone(),
                    task: t.name.clone(),
                    status: Arc::clone(&t.status),
                })
            })
            .collect();
        let queries = engine
            .catalog()
            .queries()
            .filter_map(|q| Some((q.id.clone(), engine.queries().stats(&q.id)?)))
            .collect();
        *self.current.lock() = Arc::new(Snapshot { tasks, queries });
    }
}
