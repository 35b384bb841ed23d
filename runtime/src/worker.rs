//! The worker: deploys pipelines (topics, SQL, sources, sinks) over one data directory and runs
//! their tasks until shutdown.
//!
//! ```text
//!  pipeline file ─► topics created ─► SQL statements (Engine: persistent queries)
//!                ├► source task: poll… ─► txn{ records, dead letters, position } ─► commit
//!                └► sink task:  poll (read_committed) ─► write… ─► flush ─► txn{ dead letters, offsets }
//! ```
//!
//! Every task commits once per the pipeline's `commit-interval` (an epoch). With
//! `guarantee = "at-least-once"` a source writes without a transaction: its records are
//! flushed, then its position is written, so a crash in between repeats them. Sinks work
//! the same under both: their writes are idempotent and their offsets commit after the
//! output is durable.
//!
//! A source's position is stored in the compacted topic `__sluice_source_positions` (key
//! `<pipeline>/<source>`, and `<pipeline>/<source>\0<entry>` for its keyed state, such as
//! HTTP ingest's idempotency keys) in the same transaction as its records, so a restart
//! resumes exactly after the last committed records. The worker reads the topic once and
//! then only what is new ([`Positions`]). A failing task restarts with exponential backoff; its
//! last error and restart count are in [`TaskStatus`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_connectors::http_ingest::IngestHandle;
use sluice_connectors::{Rejected, Sink, Source, StateEntries};
use sluice_log::{
    ConsumerConfig, Header, Isolation, Log, LogError, OffsetReset, Producer, ProducerConfig,
    Record, TopicPartition,
};
use sluice_sql::engine::Engine;
use sluice_sql::runner::{Guarantee, RunnerConfig};

use crate::pipeline::{Pipeline, PipelineError, Secrets};

/// The topic holding source positions.
pub const POSITIONS_TOPIC: &str = "__sluice_source_positions";

/// Why a task's attempt failed, and whether another attempt can help.
#[derive(Debug, thiserror::Error)]
enum TaskError {
    /// From the connector: its own `is_retryable` decides (I/O, HTTP and object-store
    /// failures are retried; a bad configuration or stored position is not).
    #[error(transparent)]
    Connector(#[from] sluice_connectors::ConnectorError),
    /// From the log: retried unless the request itself was wrong (a deleted topic, a record
    /// over `max.message.bytes`), or the log is closing.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Retrying later may help (another task's transaction holds the positions back).
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help: the task stops and says why; an operator acts.
    #[error("{0}")]
    Fatal(String),
}

impl TaskError {
    fn is_retryable(&self) -> bool {
        match self {
            TaskError::Connector(e) => e.is_retryable(),
            TaskError::Log(e) => !e.is_user_error() && !matches!(e, LogError::Closed),
            TaskError::Retryable(_) => true,
            TaskError::Fatal(_) => false,
        }
    }
}

/// Why a pipeline did not deploy, pause, resume or restart. Every text is redacted of the
/// pipeline's `${VAR}` values. [`DeployError::is_user_error`] tells what the pipeline's author
/// fixes from what an operator looks into.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeployError {
    /// The file does not check: a topic name or config, a connector that does not build.
    #[error(transparent)]
    Invalid(#[from] PipelineError),
    /// Another file deploys a pipeline of this name.
    #[error("pipeline {pipeline}: the name is taken by {}", file.display())]
    NameTaken {
        /// The pipeline.
        pipeline: String,
        /// The file of the pipeline that has the name.
        file: std::path::PathBuf,
    },
    /// Two tasks of the pipeline would share an internal name (a transactional id, a consumer
    /// group, an ingest route, an output folder).
    #[error("pipeline {pipeline}: {first} and {second} would share {name}")]
    SharedWithin {
        /// The pipeline.
        pipeline: String,
        /// The first task holding the name.
        first: String,
        /// The second.
        second: String,
        /// The internal name.
        name: String,
    },
    /// A task would share an internal name with a task of another deployed pipeline.
    #[error("pipeline {pipeline}: {task} would share {name} with {}", holder)]
    SharedWith {
        /// The pipeline.
        pipeline: String,
        /// Its task.
        task: String,
        /// The internal name.
        name: String,
        /// The other pipeline's task holding it.
        holder: Box<Holder>,
    },
    /// Another HTTP source already ingests into the topic.
    #[error(
        "pipeline {pipeline}: source {source_name}: another HTTP source already ingests into topic '{topic}'"
    )]
    IngestTaken {
        /// The pipeline.
        pipeline: String,
        /// Its source.
        source_name: String,
        /// The topic.
        topic: String,
    },
    /// A topic could not be created, or a task's topic does not exist.
    #[error("pipeline {pipeline}: {reason}")]
    Topic {
        /// The pipeline.
        pipeline: String,
        /// What failed (`source in: unknown topic 'x'`).
        reason: String,
        /// The request was wrong (a bad name or config, a missing topic), not the log.
        user_error: bool,
    },
    /// A SQL statement failed.
    #[error("pipeline {pipeline}: {reason}")]
    Sql {
        /// The pipeline.
        pipeline: String,
        /// `sql: ...` (the message is left out when the statements hold `${VAR}` values).
        reason: String,
        /// The statement was wrong (syntax, unknown names), not the log.
        user_error: bool,
    },
    /// A task's connector did not build.
    #[error("pipeline {pipeline}: {task}: {reason}")]
    Connector {
        /// The pipeline.
        pipeline: String,
        /// `source <name>` or `sink <name>`.
        task: String,
        /// Why.
        reason: String,
        /// An external system failed (I/O, HTTP): trying again later may work.
        retryable: bool,
    },
    /// No pipeline of that name is deployed.
    #[error("no pipeline named '{0}' is deployed")]
    NotFound(String),
}

/// A task of another deployed pipeline, which holds a name.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The task (`source <name>`, `sink <name>`).
    pub task: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The pipeline's file.
    pub file: std::path::PathBuf,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of pipeline {} ({})",
            self.task,
            self.pipeline,
            self.file.display()
        )
    }
}

impl DeployError {
    /// True when the pipeline (or the request) is wrong and trying again cannot help: a bad
    /// file, statement or name, a name another pipeline holds.
    pub fn is_user_error(&self) -> bool {
        match self {
            DeployError::Topic { user_error, .. } | DeployError::Sql { user_error, .. } => {
                *user_error
            }
            DeployError::Connector { retryable, .. } => !retryable,
            _ => true,
        }
    }

    /// The same error without `secrets`' values (names and reasons may hold them).
    fn redact(self, secrets: &Secrets) -> DeployError {
        let r = |s: String| secrets.redact(&s);
        match self {
            DeployError::Invalid(e) => DeployError::Invalid(e.redact(secrets)),
            DeployError::NameTaken { pipeline, file } => DeployError::NameTaken {
                pipeline: r(pipeline),
                file,
            },
            DeployError::SharedWithin {
                pipeline,
                first,
                second,
                name,
            } => DeployError::SharedWithin {
                pipeline: r(pipeline),
                first: r(first),
                second: r(second),
                name: r(name),
            },
            DeployError::SharedWith {
                pipeline,
                task,
                name,
                holder,
            } => DeployError::SharedWith {
                pipeline: r(pipeline),
                task: r(task),
                name: r(name),
                holder: Box::new(Holder {
                    task: r(holder.task),
                    pipeline: r(holder.pipeline),
                    file: holder.file,
                }),
            },
            DeployError::IngestTaken {
                pipeline,
                source_name,
                topic,
            } => DeployError::IngestTaken {
                pipeline: r(pipeline),
                source_name: r(source_name),
                topic: r(topic),
            },
            DeployError::Topic {
                pipeline,
                reason,
                user_error,
            } => DeployError::Topic {
                pipeline: r(pipeline),
                reason: r(reason),
                user_error,
            },
            DeployError::Sql {
                pipeline,
                reason,
                user_error,
            } => DeployError::Sql {
                pipeline: r(pipeline),
                reason: r(reason),
                user_error,
            },
            DeployError::Connector {
                pipeline,
                task,
                reason,
                retryable,
            } => DeployError::Connector {
                pipeline: r(pipeline),
                task: r(task),
                reason: r(reason),
                retryable,
            },
            DeployError::NotFound(n) => DeployError::NotFound(n),
        }
    }
}

/// The committed source positions and keyed source state, as in `__sluice_source_positions`
/// (key `<pipeline>/<source>` for a position, `<pipeline>/<source>\0<entry>` for a state
/// entry). The topic is read once, then only what was appended since, so a source's start
/// does not read the whole topic again.
#[derive(Debug, Default)]
pub struct Positions {
    /// The offset after the last record applied.
    next: i64,
    entries: BTreeMap<Bytes, Bytes>,
}

/// The positions shared by a worker's source tasks.
pub type SharedPositions = Arc<Mutex<Positions>>;

impl Positions {
    /// Applies the committed records appended since the last call.
    ///
    /// Call [`wait_stable`] first: other sources' transactions may hold the topic's last
    /// stable offset back for a moment (a position is written just before its transaction
    /// commits), and a later position of a source behind one must not be missed.
    fn catch_up(&mut self, log: &Log) -> Result<(), TaskError> {
        let partition = log.partition(POSITIONS_TOPIC, 0)?;
        let mut offset = self.next.max(partition.info().log_start_offset);
        loop {
            let fetched = partition.fetch(offset, 4 << 20, Isolation::ReadCommitted)?;
            if fetched.data.is_empty() {
                break;
            }
            let (records, next) =
                sluice_log::consumer::decode_fetch(&fetched, Isolation::ReadCommitted)
                    .map_err(|e| TaskError::Retryable(format!("{POSITIONS_TOPIC}: {e}")))?;
            for r in records {
                let Some(key) = r.record.key else { continue };
                match r.record.value {
                    Some(v) => self.entries.insert(key, v),
                    None => self.entries.remove(&key),
                };
            }
            offset = next;
        }
        self.next = offset;
        Ok(())
    }

    /// The committed position of source `key` and its state entries.
    fn get(&self, key: &str) -> (Option<Bytes>, StateEntries) {
        let prefix = state_key(key, b"");
        let state = self
            .entries
            .range(Bytes::from(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v.to_vec()))
            .collect();
        (self.entries.get(key.as_bytes()).cloned(), state)
    }
}

/// Waits until no transaction holds the positions topic's last stable offset below the end
/// it has now (outside the [`Positions`] lock, so one slow transaction holds up only this
/// source's start).
fn wait_stable(log: &Log) -> Result<(), TaskError> {
    let partition = log.partition(POSITIONS_TOPIC, 0)?;
    let end = partition.info().high_watermark;
    let deadline = Instant::now() + Duration::from_secs(60);
    while partition.info().last_stable_offset < end {
        if Instant::now() > deadline {
            return Err(TaskError::Retryable(format!(
                "{POSITIONS_TOPIC}: a transaction stayed open for 60 s; cannot read source positions"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The positions-topic key of state entry `entry` of source `source`.
fn state_key(source: &str, entry: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 1 + entry.len());
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(entry);
    k
}

/// What a task has done and how it is.
#[derive(Debug, Default)]
pub struct TaskStatus {
    /// Records read (sources: from outside; sinks: from the topic).
    pub records_in: AtomicU64,
    /// Records written (sources: to the topic; sinks: outside).
    pub records_out: AtomicU64,
    /// Bytes read (record values and keys).
    pub bytes_in: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub rejected: AtomicU64,
    /// Commits (source transactions; sink flush + offset commits).
    pub commits: AtomicU64,
    /// Time spent committing, in microseconds.
    pub commit_micros: AtomicU64,
    /// Restarts after failures.
    pub restarts: AtomicU64,
    /// The last error, while it is being retried, or the one it stopped with.
    pub error: Mutex<Option<String>>,
    /// Stopped by an error retrying cannot fix (a bad configuration, lost records).
    pub failed: AtomicBool,
    /// Set once the task's loop has ended (stopped or paused).
    pub stopped: AtomicBool,
}

impl TaskStatus {
    /// `running`, `retrying` (failed; restarting with backoff), `failed` (stopped by an
    /// error retrying cannot fix; its `error` says why) or `stopped`.
    pub fn state(&self) -> &'static str {
        if self.failed.load(Ordering::Relaxed) {
            "failed"
        } else if self.stopped.load(Ordering::Relaxed) {
            "stopped"
        } else if self.error.lock().is_some() {
            "retrying"
        } else {
            "running"
        }
    }

    fn committed(&self, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

fn record_bytes(key: Option<&Bytes>, value: Option<&Bytes>) -> u64 {
    (key.map_or(0, |k| k.len()) + value.map_or(0, |v| v.len())) as u64
}

/// One running task.
#[derive(Debug)]
pub struct Task {
    /// `source <name>` or `sink <name>`.
    pub name: String,
    /// Its counters.
    pub status: Arc<TaskStatus>,
    thread: Option<JoinHandle<()>>,
}

/// A deployed pipeline.
#[derive(Debug)]
pub struct Deployed {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub path: std::path::PathBuf,
    /// Its tasks (none while paused).
    pub tasks: Vec<Task>,
    /// Paused by the API: its tasks are stopped until resumed.
    pub paused: bool,
    pipeline: Pipeline,
    stop: Arc<AtomicBool>,
}

impl Deployed {
    /// Stops its tasks (each commits what it has) and waits for them.
    fn stop(&mut self, ingest: &IngestRoutes) {
        ingest.lock().retain(|_, (p, _)| *p != self.name);
        self.stop.store(true, Ordering::SeqCst);
        for t in &mut self.tasks {
            if let Some(h) = t.thread.take() {
                let _ = h.join();
            }
        }
    }

    /// The pipeline it runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
}

/// The worker.
#[derive(Debug)]
pub struct Worker {
    log: Log,
    engine: Engine,
    pipelines: Vec<Deployed>,
    ingest: IngestRoutes,
    positions: SharedPositions,
    board: Arc<crate::status::StatusBoard>,
}

/// The HTTP ingest sources by topic: the pipeline and the handle requests go to.
pub type IngestRoutes = Arc<Mutex<BTreeMap<String, (String, IngestHandle)>>>;

impl Worker {
    /// A worker over `log`, with `engine` running the SQL.
    pub fn new(log: &Log, engine: Engine) -> Worker {
        Worker {
            log: log.clone(),
            engine,
            pipelines: Vec::new(),
            ingest: IngestRoutes::default(),
            positions: SharedPositions::default(),
            board: Arc::default(),
        }
    }

    /// The board of running tasks and queries, read by `/metrics` without this worker.
    pub fn status_board(&self) -> Arc<crate::status::StatusBoard> {
        Arc::clone(&self.board)
    }

    /// Publishes the running tasks and queries to the [status board](Self::status_board);
    /// called after every change, and by whoever runs SQL statements on the engine.
    pub fn publish_status(&self) {
        self.board.publish(&self.pipelines, &self.engine);
    }

    /// The deployed pipelines.
    pub fn pipelines(&self) -> &[Deployed] {
        &self.pipelines
    }

    /// The SQL engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The deployed pipeline named `name`.
    pub fn pipeline(&self, name: &str) -> Option<&Deployed> {
        self.pipelines.iter().find(|d| d.name == name)
    }

    /// The SQL engine, to run statements.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Stops the pipeline deployed from `path`, if any, and returns it and whether it was
    /// paused (its topics, SQL objects, positions and offsets stay, so deploying it again
    /// resumes).
    pub fn undeploy(&mut self, path: &std::path::Path) -> Option<(Pipeline, bool)> {
        let i = self.pipelines.iter().position(|d| d.path == path)?;
        let mut d = self.pipelines.remove(i);
        d.stop(&self.ingest);
        self.publish_status();
        Some((d.pipeline, d.paused))
    }

    /// Checks that `p` can deploy, changing nothing: its name is free (or held by the file it
    /// comes from, which it replaces), its topics and connectors build, and none of its
    /// internal names (transactional ids, consumer groups, ingest routes, output folders) is
    /// another pipeline's.
    pub fn check(&self, p: &Pipeline) -> Result<(), DeployError> {
        let pipeline = || p.name.clone();
        let others: Vec<&Deployed> = self.pipelines.iter().filter(|d| d.path != p.path).collect();
        if let Some(d) = others.iter().find(|d| d.name == p.name) {
            return Err(DeployError::NameTaken {
                pipeline: pipeline(),
                file: d.path.clone(),
            }
            .redact(&p.secrets));
        }
        crate::pipeline::build_check(p).map_err(|e| e.redact(&p.secrets))?;
        let mine = internal_names(p);
        let mut seen = BTreeMap::new();
        for (name, what) in &mine {
            if let Some(first) = seen.insert(name, what) {
                return Err(DeployError::SharedWithin {
                    pipeline: pipeline(),
                    first: first.clone(),
                    second: what.clone(),
                    name: name.clone(),
                }
                .redact(&p.secrets));
            }
        }
        for d in others {
            for (name, theirs) in internal_names(&d.pipeline) {
                if let Some(what) = seen.get(&name) {
                    return Err(DeployError::SharedWith {
                        pipeline: pipeline(),
                        task: (*what).clone(),
                        name,
                        holder: Box::new(Holder {
                            task: theirs,
                            pipeline: d.name.clone(),
                            file: d.path.clone(),
                        }),
                    }
                    .redact(&p.secrets));
                }
            }
        }
        Ok(())
    }

    /// Creates a pipeline's topics, runs its SQL and starts its sources and sinks, after
    /// [`Worker::check`]. When a step fails, what the earlier steps created (topics,
    /// dead-letter topic, SQL streams, tables and queries) is removed again.
    pub fn deploy(&mut self, p: &Pipeline) -> Result<(), DeployError> {
        self.check(p)?;
        let topics_before: BTreeSet<String> = self.log.topic_names().into_iter().collect();
        let catalog = self.engine.catalog();
        let sources_before: BTreeSet<String> = catalog.sources().map(|s| s.name.clone()).collect();
        let queries_before: BTreeSet<String> = catalog.queries().map(|q| q.id.clone()).collect();
        let result = self.create(p).map_err(|e| e.redact(&p.secrets));
        if let Err(e) = &result {
            tracing::warn!(pipeline = %p.name, error = %e, "The pipeline did not deploy; removing what it created.");
            self.roll_back(p, &topics_before, &sources_before, &queries_before);
        }
        self.publish_status();
        result
    }

    /// Removes what a failed deploy of `p` created: its new queries, streams and tables, and
    /// the new topics that are its own (declared, its dead-letter topic, those of its new
    /// SQL objects). Topics someone else created meanwhile stay.
    fn roll_back(
        &mut self,
        p: &Pipeline,
        topics_before: &BTreeSet<String>,
        sources_before: &BTreeSet<String>,
        queries_before: &BTreeSet<String>,
    ) {
        let catalog = self.engine.catalog();
        let queries: Vec<String> = catalog
            .queries()
            .map(|q| q.id.clone())
            .filter(|id| !queries_before.contains(id))
            .collect();
        let sources: Vec<(String, String, String)> = catalog
            .sources()
            .filter(|s| !sources_before.contains(&s.name))
            .map(|s| (s.kind.to_string(), s.name.clone(), s.topic.clone()))
            .collect();
        let mut own: BTreeSet<String> = p
            .config
            .topics
            .iter()
            .map(|t| t.name.get_ref().clone())
            .collect();
        own.insert(dlq_topic(&p.name));
        for id in queries {
            if let Err(e) = self.engine.execute(&format!("TERMINATE {id};")) {
                tracing::warn!(query = %id, error = %e, "Could not remove a query of a failed deploy.");
            }
        }
        for (kind, name, topic) in sources {
            // A query writing `topic` dead-letters into `<topic>.dlq`.
            own.insert(format!("{topic}.dlq"));
            own.insert(topic);
            if let Err(e) = self.engine.execute(&format!("DROP {kind} {name};")) {
                tracing::warn!(source = %name, error = %e, "Could not remove a stream or table of a failed deploy.");
            }
        }
        for topic in own.difference(topics_before) {
            if self.log.topic(topic).is_ok() {
                if let Err(e) = self.log.delete_topic(topic) {
                    tracing::warn!(topic = %topic, error = %e, "Could not remove a topic of a failed deploy.");
                }
            }
        }
        self.ingest.lock().retain(|_, (owner, _)| *owner != p.name);
    }

    fn create(&mut self, p: &Pipeline) -> Result<(), DeployError> {
        let err = |e: &LogError| DeployError::Topic {
            pipeline: p.name.clone(),
            reason: e.to_string(),
            user_error: e.is_user_error(),
        };
        for t in &p.config.topics {
            let config: Vec<(String, String)> = t
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match self
                .log
                .create_topic(t.name.get_ref(), t.partitions, &config)
            {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        let dlq = dlq_topic(&p.name);
        for topic in [dlq.as_str(), POSITIONS_TOPIC] {
            let config: &[(String, String)] = if topic == POSITIONS_TOPIC {
                &[
                    ("cleanup.policy", "compact"),
                    // Small segments that roll at least hourly, so the cleaner gets to work on
                    // a topic that is written every epoch but stays small.
                    ("segment.bytes", "1048576"),
                    ("segment.ms", "3600000"),
                    // Markers of committed transactions and the few tombstones go a minute
                    // after their data: only the worker reads this topic, from where it was.
                    ("delete.retention.ms", "60000"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
            } else {
                &[]
            };
            match self.log.create_topic(topic, 1, config) {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        if let Some(sql) = &p.config.sql {
            let config = RunnerConfig {
                commit_interval: p.config.commit_interval.0,
                guarantee: p.config.guarantee,
                ..self.engine.queries().config().clone()
            };
            self.engine.execute_with(sql, &config).map_err(|e| {
                let user_error = match &e {
                    sluice_sql::SqlError::Log(e) => e.is_user_error(),
                    _ => true,
                };
                let reason = if p.secrets.in_sql() {
                    // The message may quote a fragment of a substituted value.
                    "sql: a statement failed (the statements hold ${VAR} values, so the message is not shown)".to_string()
                } else {
                    e.to_string()
                };
                DeployError::Sql {
                    pipeline: p.name.clone(),
                    reason,
                    user_error,
                }
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = self.start_tasks(p, &stop)?;
        self.pipelines.push(Deployed {
            name: p.name.clone(),
            path: p.path.clone(),
            tasks,
            paused: false,
            pipeline: p.clone(),
            stop,
        });
        Ok(())
    }

    /// Builds every task of `p`, then starts them all: a failure (a missing topic, a
    /// connector that does not build, a taken ingest route) starts none, so nothing is left
    /// running that no one stops.
    fn start_tasks(&self, p: &Pipeline, stop: &Arc<AtomicBool>) -> Result<Vec<Task>, DeployError> {
        let topic_err = |task: &str, e: LogError| {
            DeployError::Topic {
                pipeline: p.name.clone(),
                reason: format!("{task}: {e}"),
                user_error: e.is_user_error(),
            }
            .redact(&p.secrets)
        };
        let connector_err = |task: &str, e: sluice_connectors::ConnectorError| {
            DeployError::Connector {
                pipeline: p.name.clone(),
                task: task.to_string(),
                reason: e.to_string(),
                retryable: e.is_retryable(),
            }
            .redact(&p.secrets)
        };
        let dlq = dlq_topic(&p.name);
        let mut starts: Vec<(String, TaskBody, Arc<TaskStatus>)> = Vec::new();
        let mut routes = Vec::new();
        for s in &p.config.sources {
            let name = s.name.get_ref().clone();
            let task = format!("source {name}");
            self.log.topic(&s.topic).map_err(|e| topic_err(&task, e))?;
            let (source, ingest) =
                crate::pipeline::build_source(s, p.base()).map_err(|e| connector_err(&task, e))?;
            if let Some(handle) = ingest {
                if self.ingest.lock().contains_key(&s.topic) {
                    return Err(DeployError::IngestTaken {
                        pipeline: p.name.clone(),
                        source_name: name,
                        topic: s.topic.clone(),
                    }
                    .redact(&p.secrets));
                }
                routes.push((s.topic.clone(), handle));
            }
            let ctx = SourceTask {
                log: self.log.clone(),
                key: source_key(&p.name, &name),
                topic: s.topic.clone(),
                dlq: dlq.clone(),
                positions: Arc::clone(&self.positions),
                secrets: p.secrets.clone(),
                guarantee: p.config.guarantee,
                commit_interval: p.config.commit_interval.0,
                stop: Arc::clone(stop),
                status: Arc::new(TaskStatus::default()),
            };
            let status = Arc::clone(&ctx.status);
            starts.push((
                format!("source {name}"),
                Box::new(move || ctx.run_with_retries(source)),
                status,
            ));
        }
        for s in &p.config.sinks {
            let name = s.name.get_ref().clone();
            let task = format!("sink {name}");
            self.log.topic(&s.topic).map_err(|e| topic_err(&task, e))?;
            let sink =
                crate::pipeline::build_sink(s, p.base()).map_err(|e| connector_err(&task, e))?;
            let ctx = SinkTask {
                log: self.log.clone(),
                group: sink_group(&p.name, &name),
                legacy_group: legacy_group(&p.name, &name),
                secrets: p.secrets.clone(),
                topic: s.topic.clone(),
                dlq: dlq.clone(),
                commit_interval: p.config.commit_interval.0,
                stop: Arc::clone(stop),
                status: Arc::new(TaskStatus::default()),
            };
            let status = Arc::clone(&ctx.status);
            starts.push((
                format!("sink {name}"),
                Box::new(move || ctx.run_with_retries(sink)),
                status,
            ));
        }
        {
            let mut table = self.ingest.lock();
            for (topic, handle) in routes {
                table.insert(topic, (p.name.clone(), handle));
            }
        }
        Ok(starts
            .into_iter()
            .map(|(name, body, status)| spawn(name, status, body))
            .collect())
    }

    /// The HTTP ingest routes (for the API).
    pub fn ingest_routes(&self) -> IngestRoutes {
        Arc::clone(&self.ingest)
    }

    fn find(&mut self, name: &str) -> Result<&mut Deployed, DeployError> {
        self.pipelines
            .iter_mut()
            .find(|d| d.name == name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))
    }

    /// Stops a pipeline's sources and sinks (they commit what they have) until
    /// [`Worker::resume`]; its SQL queries keep running.
    pub fn pause(&mut self, name: &str) -> Result<(), DeployError> {
        let ingest = Arc::clone(&self.ingest);
        let d = self.find(name)?;
        d.stop(&ingest);
        d.tasks.clear();
        d.paused = true;
        self.publish_status();
        Ok(())
    }

    /// Starts a paused pipeline's tasks again, from their committed positions.
    pub fn resume(&mut self, name: &str) -> Result<(), DeployError> {
        self.restart(name)
    }

    /// Stops and starts a pipeline's tasks (they resume from their committed positions;
    /// restart counts and errors start afresh).
    pub fn restart(&mut self, name: &str) -> Result<(), DeployError> {
        let ingest = Arc::clone(&self.ingest);
        let d = self.find(name)?;
        d.stop(&ingest);
        d.tasks.clear();
        let pipeline = d.pipeline.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let started = self.start_tasks(&pipeline, &stop);
        // Published either way: the old tasks are gone.
        let tasks = match started {
            Ok(tasks) => tasks,
            Err(e) => {
                self.publish_status();
                return Err(e);
            }
        };
        let d = self.find(name)?;
        d.tasks = tasks;
        d.stop = stop;
        d.paused = false;
        self.publish_status();
        Ok(())
    }

    /// Stops every task (each commits what it has) and the persistent queries.
    pub fn shutdown(&mut self) {
        for p in &self.pipelines {
            p.stop.store(true, Ordering::SeqCst);
        }
        for p in &mut self.pipelines {
            p.stop(&self.ingest);
        }
        self.engine.shutdown();
        self.publish_status();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a task's thread runs.
type TaskBody = Box<dyn FnOnce() + Send>;

fn spawn(name: String, status: Arc<TaskStatus>, body: TaskBody) -> Task {
    let done = Arc::clone(&status);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            body();
            done.stopped.store(true, Ordering::SeqCst);
        })
        .ok();
    Task {
        name,
        status,
        thread,
    }
}

/// The dead-letter topic of pipeline `pipeline`.
pub fn dlq_topic(pipeline: &str) -> String {
    format!("{pipeline}.dlq")
}

/// The names a pipeline's tasks hold in the log and outside, each with what holds it: no
/// two tasks may share one (they would fence each other or overwrite each other's output).
fn internal_names(p: &Pipeline) -> Vec<(String, String)> {
    let mut names = Vec::new();
    for s in &p.config.sources {
        let what = format!("source {}", s.name.get_ref());
        names.push((
            format!("transactional id {}", source_key(&p.name, s.name.get_ref())),
            what.clone(),
        ));
        if s.http.is_some() {
            names.push((format!("POST /ingest/{}", s.topic), what));
        }
    }
    for s in &p.config.sinks {
        let what = format!("sink {}", s.name.get_ref());
        names.push((
            format!("consumer group {}", sink_group(&p.name, s.name.get_ref())),
            what.clone(),
        ));
        if let Some(f) = &s.file {
            let dir = normalized(&p.base().join(&f.path));
            names.push((
                format!("the files of topic {} in {}", s.topic, dir.display()),
                what,
            ));
        }
    }
    names
}

/// `path` absolute, with `.` and `..` resolved and links resolved in its longest existing
/// part, so two spellings of one folder (`out`, `./out/`, `sub/../out`, an absolute path, a
/// link to it) compare equal whether or not the folder exists yet.
fn normalized(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::{Component, PathBuf};
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut lexical = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other.as_os_str()),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match existing.file_name() {
            Some(n) => rest.push(n.to_owned()),
            None => break,
        }
        existing.pop();
    }
    let mut resolved = std::fs::canonicalize(&existing).unwrap_or(existing);
    for n in rest.iter().rev() {
        resolved.push(n);
    }
    resolved
}

/// The position key and transactional-id suffix of source `source` of pipeline `pipeline`.
fn source_key(pipeline: &str, source: &str) -> String {
    format!("{pipeline}/{source}")
}

/// The consumer group of sink `sink` of pipeline `pipeline`. `.` is in no pipeline or sink
/// name, so no two sinks share a group (and with it a transactional id).
pub fn sink_group(pipeline: &str, sink: &str) -> String {
    format!("sluice-sink-{pipeline}.{sink}")
}

/// The group name older versions gave sink `sink` of pipeline `pipeline`
/// (`sluice-sink-<pipeline>-<sink>`), when that name could belong to no other sink: with
/// exactly one `-` between `sluice-sink-` and the end, it splits into a pipeline and a sink
/// name one way only. Otherwise another sink may have shared its offsets, so they are not
/// taken over and the sink starts from the beginning, rewriting the same output.
fn legacy_group(pipeline: &str, sink: &str) -> Option<String> {
    let rest = format!("{pipeline}-{sink}");
    (rest.matches('-').count() == 1).then(|| format!("sluice-sink-{rest}"))
}

/// Runs `attempt` until it returns Ok or `stop` is set, backing off after failures.
/// Errors pass through `secrets` before they are logged or shown in status.
fn with_retries(
    stop: &AtomicBool,
    status: &TaskStatus,
    what: &str,
    secrets: &Secrets,
    mut attempt: impl FnMut() -> Result<(), TaskError>,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.load(Ordering::SeqCst) {
        match attempt() {
            Ok(()) => return,
            Err(e) if !e.is_retryable() => {
                let e = secrets.redact(&e.to_string());
                tracing::error!(task = what, error = %e, "Task failed and stops: retrying cannot help. Fix the cause, then restart the pipeline.");
                *status.error.lock() = Some(e);
                status.failed.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                let e = secrets.redact(&e.to_string());
                tracing::error!(task = what, error = %e, "Task failed; it restarts from its last commit.");
                *status.error.lock() = Some(e);
                status.restarts.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The dead-letter record for rejected input: the raw bytes, with why and where in headers.
fn dead_letter(r: Rejected) -> Record {
    Record {
        key: None,
        value: Some(Bytes::from(r.raw)),
        headers: vec![
            Header {
                key: "sluice.error".into(),
                value: Some(Bytes::from(r.reason)),
            },
            Header {
                key: "sluice.source".into(),
                value: Some(Bytes::from(r.origin)),
            },
        ],
        timestamp: sluice_log::record::now_ms(),
    }
}

struct SourceTask {
    log: Log,
    /// `<pipeline>/<source>`: the position key and the transactional id.
    key: String,
    topic: String,
    dlq: String,
    positions: SharedPositions,
    secrets: Secrets,
    guarantee: Guarantee,
    commit_interval: Duration,
    stop: Arc<AtomicBool>,
    status: Arc<TaskStatus>,
}

/// The records, dead letters and position of a source's open epoch.
struct SourceEpoch {
    started: Instant,
    position: Vec<u8>,
    /// Keyed state changes, in order.
    state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    records: u64,
    bytes: u64,
    rejected: u64,
}

impl SourceTask {
    fn run_with_retries(self, mut source: Box<dyn Source>) {
        let status = Arc::clone(&self.status);
        with_retries(
            &self.stop,
            &status,
            &self.key.clone(),
            &self.secrets.clone(),
            || self.run(source.as_mut()),
        );
    }

    fn run(&self, source: &mut dyn Source) -> Result<(), TaskError> {
        let exactly_once = self.guarantee == Guarantee::ExactlyOnce;
        // The producer first: a transactional one aborts what an earlier instance of this
        // task left open, before the position is read.
        let mut producer = self
            .guarantee
            .producer(&self.log, &format!("sluice-source-{}", self.key))?;
        wait_stable(&self.log)?;
        let (position, state) = {
            let mut positions = self.positions.lock();
            positions.catch_up(&self.log)?;
            positions.get(&self.key)
        };
        source.restore(state)?;
        source.open(position.as_deref())?;
        *self.status.error.lock() = None;
        let mut epoch: Option<SourceEpoch> = None;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping {
                let wait = epoch.as_ref().map_or(Duration::from_millis(200), |e| {
                    self.commit_interval
                        .saturating_sub(e.started.elapsed())
                        .clamp(Duration::from_millis(1), Duration::from_millis(200))
                });
                let batch = source.poll(10_000, wait)?;
                if let Some(position) = batch.position {
                    if epoch.is_none() && exactly_once {
                        producer.begin_transaction()?;
                    }
                    let e = epoch.get_or_insert_with(|| SourceEpoch {
                        started: Instant::now(),
                        position: Vec::new(),
                        state: Vec::new(),
                        records: 0,
                        bytes: 0,
                        rejected: 0,
                    });
                    e.position = position;
                    e.state.extend(batch.state);
                    e.records += batch.records.len() as u64;
                    e.rejected += batch.rejected.len() as u64;
                    for r in batch.records {
                        e.bytes += record_bytes(r.key.as_ref(), r.value.as_ref());
                        producer.send(&self.topic, r)?;
                    }
                    for r in batch.rejected {
                        producer.send(&self.dlq, dead_letter(r))?;
                    }
                }
            }
            if let Some(e) = epoch.take_if(|e| {
                stopping || source.waiting() || e.started.elapsed() >= self.commit_interval
            }) {
                self.commit(&mut producer, source, e)?;
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Ends an epoch: the position joins the records in one transaction; at least once,
    /// the records are flushed first and the position written after them.
    fn commit(
        &self,
        producer: &mut Producer,
        source: &mut dyn Source,
        e: SourceEpoch,
    ) -> Result<(), TaskError> {
        let started = Instant::now();
        let now = sluice_log::record::now_ms();
        let mut records: Vec<Record> = e
            .state
            .into_iter()
            .map(|(k, v)| Record {
                key: Some(Bytes::from(state_key(&self.key, &k))),
                value: v.map(Bytes::from),
                headers: Vec::new(),
                timestamp: now,
            })
            .collect();
        records.push(Record {
            key: Some(Bytes::from(self.key.clone())),
            value: Some(Bytes::from(e.position)),
            headers: Vec::new(),
            timestamp: now,
        });
        if self.guarantee == Guarantee::ExactlyOnce {
            for r in records {
                producer.send(POSITIONS_TOPIC, r)?;
            }
            sluice_log::fault::point("source-before-commit");
            producer.commit_transaction()?;
        } else {
            producer.flush()?;
            sluice_log::fault::point("source-before-commit");
            for r in records {
                producer.send(POSITIONS_TOPIC, r)?;
            }
            producer.flush()?;
        }
        source.committed();
        self.status.committed(started);
        self.status.bytes_in.fetch_add(e.bytes, Ordering::Relaxed);
        self.status.bytes_out.fetch_add(e.bytes, Ordering::Relaxed);
        self.status
            .records_in
            .fetch_add(e.records + e.rejected, Ordering::Relaxed);
        self.status
            .records_out
            .fetch_add(e.records, Ordering::Relaxed);
        self.status
            .rejected
            .fetch_add(e.rejected, Ordering::Relaxed);
        if e.rejected > 0 {
            tracing::warn!(source = %self.key, records = e.rejected, topic = %self.dlq, "Input rejected to the dead-letter topic; its sluice.error headers say why.");
        }
        Ok(())
    }
}

struct SinkTask {
    log: Log,
    group: String,
    /// The group name older versions used, when it belongs to this sink alone: its
    /// offsets are taken over once.
    legacy_group: Option<String>,
    secrets: Secrets,
    topic: String,
    dlq: String,
    commit_interval: Duration,
    stop: Arc<AtomicBool>,
    status: Arc<TaskStatus>,
}

impl SinkTask {
    fn run_with_retries(self, mut sink: Box<dyn Sink>) {
        let status = Arc::clone(&self.status);
        with_retries(
            &self.stop,
            &status,
            &self.group.clone(),
            &self.secrets.clone(),
            || self.run(sink.as_mut()),
        );
    }

    /// A sink first started by an older version committed under its old group name: the
    /// new group starts where the old one was, once.
    fn take_over_legacy_offsets(&self, tps: &[TopicPartition]) -> Result<(), TaskError> {
        let Some(legacy) = &self.legacy_group else {
            return Ok(());
        };
        if tps
            .iter()
            .any(|tp| self.log.committed(&self.group, tp).is_some())
        {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, i64)> = tps
            .iter()
            .filter_map(|tp| Some((tp.clone(), self.log.committed(legacy, tp)?)))
            .collect();
        if !offsets.is_empty() {
            tracing::info!(group = %self.group, legacy = %legacy, "The sink's consumer group was renamed; it continues from the old group's offsets.");
            self.log.commit_offsets(&self.group, None, &offsets)?;
        }
        Ok(())
    }

    /// Refuses to start when the group's committed offset is past the log's end: the log
    /// lost records it had acknowledged. Starting over would make the sink replace output it
    /// exported with what is left, so it stops and says so; an operator decides (restore the
    /// data directory, or move the group with `sluice groups reset-offsets`). The finding is
    /// recorded in the log's data-loss list, so it stands after the log grows past that
    /// offset again and across restarts, until the group's offset is moved.
    fn check_offsets(&self, tps: &[TopicPartition]) -> Result<(), TaskError> {
        let reason = |committed: i64| {
            format!(
                "sink group {} had committed offset {committed}, past the log's end",
                self.group
            )
        };
        let losses = self.log.data_loss();
        for tp in tps {
            let Some(committed) = self.log.committed(&self.group, tp) else {
                continue;
            };
            let end = self
                .log
                .partition(&tp.topic, tp.partition)?
                .info()
                .high_watermark;
            let found_before = losses.iter().find(|l| {
                l.topic == tp.topic && l.partition == tp.partition && l.reason == reason(committed)
            });
            let lost = match found_before {
                Some(l) => (l.from, l.to),
                None if committed > end => {
                    tracing::error!(group = %self.group, topic = %tp.topic, partition = tp.partition, committed, end, "The log lost records this sink had read; the sink stops.");
                    self.log.report_data_loss(sluice_log::DataLoss {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        from: end,
                        to: committed,
                        reason: reason(committed),
                        detected_at: sluice_log::record::now_ms(),
                    })?;
                    (end, committed)
                }
                None => continue,
            };
            return Err(TaskError::Fatal(format!(
                "topic {} partition {}: this sink's committed offset {committed} was past the log's end {}: the log lost records {}..{}. The sink stops rather than overwrite what it exported; restore the data directory, or move the group on with `sluice groups reset-offsets {} --topic {} --to-offset N`",
                tp.topic, tp.partition, lost.0, lost.0, lost.1, self.group, tp.topic
            )));
        }
        Ok(())
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<(), TaskError> {
        let partitions = self.log.topic(&self.topic)?.partition_count();
        let mut consumer = self.log.consumer(ConsumerConfig {
            group: Some(self.group.clone()),
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            max_poll_records: 10_000,
            ..ConsumerConfig::default()
        });
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition {
                topic: self.topic.clone(),
                partition: p,
            })
            .collect();
        self.take_over_legacy_offsets(&tps)?;
        self.check_offsets(&tps)?;
        consumer.assign(&tps)?;
        // Offsets and the dead letters of the records they pass commit together.
        let mut producer = self.log.transactional_producer(
            &format!("sluice-sink-{}", self.group),
            ProducerConfig::default(),
        )?;
        *self.status.error.lock() = None;
        // Records the sink rejected, until the offsets past them commit.
        let mut dead: Vec<(u32, i64, Rejected)> = Vec::new();
        let mut committed = sluice_connectors::Durable::new();
        let mut last_commit = Instant::now();
        let mut written = sluice_connectors::Durable::new();
        let mut flushed = sluice_connectors::Durable::new();
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping {
                let records = consumer.poll(Duration::from_millis(100))?;
                if !records.is_empty() {
                    let rejected = sink.write(&records)?;
                    let n = records.len() as u64;
                    let bytes: u64 = records
                        .iter()
                        .map(|r| record_bytes(r.key.as_ref(), r.value.as_ref()))
                        .sum();
                    self.status.records_in.fetch_add(n, Ordering::Relaxed);
                    self.status.bytes_in.fetch_add(bytes, Ordering::Relaxed);
                    self.status.bytes_out.fetch_add(bytes, Ordering::Relaxed);
                    self.status
                        .records_out
                        .fetch_add(n - rejected.len() as u64, Ordering::Relaxed);
                    // A sink that does not say which record it rejected: the batch's last.
                    let last = records.last().map_or((0, 0), |r| (r.partition, r.offset));
                    dead.extend(rejected.into_iter().map(|r| {
                        let (p, o) = r.at.unwrap_or(last);
                        (p, o, r)
                    }));
                    for r in &records {
                        written.insert(r.partition, r.offset + 1);
                    }
                }
            }
            // Flushed until the sink's output is durable up to what it was given (a sink
            // holding whole objects back reports less, and is asked again).
            if !written.is_empty() && (stopping || last_commit.elapsed() >= self.commit_interval) {
                // Durable first, then the offsets: a crash in between replays, and the sink
                // rewrites the same output. The sink says how far its output is durable.
                let started = Instant::now();
                if written != flushed {
                    flushed = sink.flush()?;
                    sluice_log::fault::point("sink-after-flush");
                }
                // Where everything given is durable, commit the consumer's position rather
                // than the last record + 1: it is past transaction markers, so the group's
                // lag reads 0 when the sink has caught up.
                let mut offsets: Vec<(TopicPartition, i64)> = Vec::new();
                for (&p, &durable) in &flushed {
                    let tp = TopicPartition {
                        topic: self.topic.clone(),
                        partition: p,
                    };
                    let target = match consumer.position(&tp) {
                        Some(pos) if written.get(&p) == Some(&durable) => pos.max(durable),
                        _ => durable,
                    };
                    if committed.get(&p) != Some(&target) {
                        offsets.push((tp, target));
                    }
                }
                if !offsets.is_empty() {
                    let mut next = committed.clone();
                    next.extend(offsets.iter().map(|(tp, o)| (tp.partition, *o)));
                    let (passed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut dead)
                        .into_iter()
                        .partition(|(p, o, _)| next.get(p).is_some_and(|c| o < c));
                    dead = kept;
                    let rejected = passed.len();
                    producer.begin_transaction()?;
                    for (_, _, r) in passed {
                        producer.send(&self.dlq, dead_letter(r))?;
                    }
                    producer.send_offsets_to_transaction(&self.group, &offsets)?;
                    producer.commit_transaction()?;
                    committed = next;
                    self.status.committed(started);
                    if rejected > 0 {
                        self.status
                            .rejected
                            .fetch_add(rejected as u64, Ordering::Relaxed);
                        tracing::warn!(sink = %self.group, records = rejected, topic = %self.dlq, "Records the sink cannot write went to the dead-letter topic; their sluice.error headers say why.");
                    }
                }
                last_commit = Instant::now();
            }
            if stopping {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_groups_are_taken_over_only_when_their_name_splits_one_way() {
        assert_eq!(
            legacy_group("orders", "out").as_deref(),
            Some("sluice-sink-orders-out")
        );
        assert_eq!(legacy_group("a-b", "c"), None);
        assert_eq!(legacy_group("a", "b-c"), None);
        assert_ne!(sink_group("a-b", "c"), sink_group("a", "b-c"));
    }

    #[test]
    fn spellings_of_one_folder_are_one_folder_whether_or_not_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        let want = base.join("out");
        for spelling in ["out", "./out", "out/", "sub/../out", "./sub/./../out"] {
            assert_eq!(normalized(&base.join(spelling)), want, "{spelling}");
        }
        std::fs::create_dir(&want).unwrap();
        std::os::unix::fs::symlink(&want, base.join("link")).unwrap();
        assert_eq!(normalized(&base.join("link")), want);
        assert_eq!(normalized(&base.join("out/")), want);
    }
}
