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
//! The tasks themselves are in [`crate::tasks`], on the task runtime of `sluice-task`: a
//! stop token per pipeline (with a child per task) that wakes every wait at once, retries
//! with backoff for retryable errors and a `failed` state for the others, and the
//! [`TaskStatus`] the API and metrics read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_connectors::http_ingest::IngestHandle;
use sluice_log::{Log, LogError};
use sluice_sql::engine::Engine;
use sluice_sql::runner::RunnerConfig;
pub use sluice_task::TaskStatus;
use sluice_task::{StopToken, TaskHandle, TaskSpec};

use crate::pipeline::{Pipeline, PipelineError, Secrets};
pub use crate::tasks::positions::{POSITIONS_TOPIC, Positions, SharedPositions};
use crate::tasks::sink::SinkTask;
use crate::tasks::source::{SourceCluster, SourceTask};

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
    /// In a cluster: the pipeline cannot run as written, or the cluster cannot place it now.
    #[error("pipeline {pipeline}: in a cluster, {reason}")]
    Cluster {
        /// The pipeline.
        pipeline: String,
        /// Why.
        reason: String,
        /// The pipeline is what must change, not the cluster's state.
        user_error: bool,
    },
    /// No pipeline of that name is deployed.
    #[error("no pipeline named '{0}' is deployed")]
    NotFound(String),
    /// The pipeline has no task of that name.
    #[error(
        "pipeline {pipeline} has no task '{task}' (tasks are named `source <name>` and `sink <name>`)"
    )]
    NoSuchTask {
        /// The pipeline.
        pipeline: String,
        /// The task asked for.
        task: String,
    },
    /// The operation needs the pipeline paused (or running) and it is not.
    #[error("pipeline {pipeline}: {reason}")]
    WrongState {
        /// The pipeline.
        pipeline: String,
        /// What state it must be in.
        reason: String,
    },
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
            DeployError::Topic { user_error, .. }
            | DeployError::Sql { user_error, .. }
            | DeployError::Cluster { user_error, .. } => *user_error,
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
            DeployError::Cluster {
                pipeline,
                reason,
                user_error,
            } => DeployError::Cluster {
                pipeline: r(pipeline),
                reason: r(reason),
                user_error,
            },
            DeployError::NotFound(n) => DeployError::NotFound(n),
            e @ (DeployError::NoSuchTask { .. } | DeployError::WrongState { .. }) => e,
        }
    }
}

/// One running task.
#[derive(Debug)]
pub struct Task {
    /// `source <name>` or `sink <name>`.
    pub name: String,
    /// Its counters.
    pub status: Arc<TaskStatus>,
    handle: TaskHandle,
}

/// A committed position of a source or a sink (see [`Worker::offsets`]).
#[derive(Debug, Clone)]
pub struct TaskOffset {
    /// `source <name>` or `sink <name>`.
    pub task: String,
    /// A sink's partition.
    pub partition: Option<u32>,
    /// A source's position as it stores it, or a sink's next offset (as text).
    pub offset: Bytes,
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
    stop: StopToken,
}

impl Deployed {
    /// Stops its tasks (each commits what it has) and waits for them.
    fn stop(&mut self, ingest: &IngestRoutes) {
        ingest.lock().retain(|_, (p, _)| *p != self.name);
        self.stop.stop();
        for t in &mut self.tasks {
            t.handle.stop();
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
    /// The committed positions by topic: the worker's one, or in a cluster each
    /// pipeline's own.
    positions: Mutex<BTreeMap<String, SharedPositions>>,
    /// In a cluster, where pipelines run: a pipeline is deployed only on its node.
    placement: Option<sluice_kafka::pipelines::Placement>,
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
            positions: Mutex::default(),
            placement: None,
            board: Arc::default(),
        }
    }

    /// Runs this worker's pipelines as a cluster node: each only where `placement` says
    /// (see [`sluice_kafka::pipelines`]), with its topics, transactions, positions and
    /// sinks' offsets replicated so that it moves to another node with them.
    pub fn set_placement(&mut self, placement: sluice_kafka::pipelines::Placement) {
        self.placement = Some(placement);
        self.engine.set_placed(true);
    }

    /// In a cluster, where pipelines run.
    pub fn placement(&self) -> Option<&sluice_kafka::pipelines::Placement> {
        self.placement.as_ref()
    }

    /// The topic of `pipeline`'s committed positions.
    fn positions_topic(&self, pipeline: &str) -> String {
        match self.placement {
            Some(_) => crate::tasks::positions::pipeline_positions_topic(pipeline),
            None => POSITIONS_TOPIC.to_string(),
        }
    }

    /// `pipeline`'s committed positions (shared with the other pipelines alone).
    fn positions_of(&self, pipeline: &str) -> SharedPositions {
        let topic = self.positions_topic(pipeline);
        Arc::clone(
            self.positions
                .lock()
                .entry(topic.clone())
                .or_insert_with(|| Arc::new(Mutex::new(Positions::new(&topic)))),
        )
    }

    /// The transactional id of `pipeline`'s task that alone would have `base`: in a
    /// cluster, one the pipeline's node coordinates.
    fn transactional_id(&self, pipeline: &str, base: String) -> Result<String, DeployError> {
        match &self.placement {
            None => Ok(base),
            Some(p) => p
                .transactional_id(pipeline, &base)
                .ok_or_else(|| DeployError::Cluster {
                    pipeline: pipeline.to_string(),
                    reason: "the cluster's transactions topic is not created yet".into(),
                    user_error: false,
                }),
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
        if self.placement.is_some() {
            // Its queries run where it does (a redeploy here starts them again).
            let stopped = self.engine.stop_queries_of(&d.name);
            if !stopped.is_empty() {
                tracing::info!(pipeline = %d.name, queries = ?stopped, "Stopped the pipeline's queries.");
            }
            // Its positions are read afresh where it runs next: another node may have moved
            // them meanwhile (and their tombstones may be compacted away by then).
            self.positions.lock().remove(&self.positions_topic(&d.name));
        }
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
        if self.placement.is_some() {
            cluster_check(p).map_err(|e| e.redact(&p.secrets))?;
        }
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
        if self.placement.is_some() {
            // The queries' state and topics are the cluster's (another node may have run
            // them before): they stop, and the next deploy starts them again.
            self.engine.stop_queries_of(&p.name);
            self.ingest.lock().retain(|_, (owner, _)| *owner != p.name);
            return;
        }
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
        // In a cluster the topics are the cluster's (made through the controller, copied on
        // other nodes): deleting this node's copy would leave the metadata naming a copy
        // that is gone. They stay, for the next deploy.
        let own = if self.placement.is_some() {
            BTreeSet::new()
        } else {
            own
        };
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
        match &self.placement {
            Some(placement) => self.create_in_cluster(p, placement)?,
            None => self.create_topics(p)?,
        }
        self.create_queries_and_tasks(p)
    }

    /// The topics `p` writes, to make before it runs: name, partitions, config. Those it
    /// declares, its dead letters', and its positions' (alone, the worker's one for all).
    fn pipeline_topics(&self, p: &Pipeline) -> Vec<(String, u32, Overrides)> {
        let declared = p.config.topics.iter().map(|t| {
            let config = t
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (t.name.get_ref().clone(), t.partitions, config)
        });
        declared
            .chain([
                (dlq_topic(&p.name), 1, Vec::new()),
                (self.positions_topic(&p.name), 1, positions_config()),
            ])
            .collect()
    }

    /// The pipeline's topics, its dead letters' and (once for all) the positions topic.
    fn create_topics(&self, p: &Pipeline) -> Result<(), DeployError> {
        let err = |e: &LogError| DeployError::Topic {
            pipeline: p.name.clone(),
            reason: e.to_string(),
            user_error: e.is_user_error(),
        };
        for (name, partitions, config) in self.pipeline_topics(p) {
            match self.log.create_topic(&name, partitions, &config) {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        Ok(())
    }

    /// In a cluster: the pipeline's topics, dead letters' and positions' made through the
    /// controller, led where the pipeline runs (here); what cannot move yet is refused.
    fn create_in_cluster(
        &self,
        p: &Pipeline,
        placement: &sluice_kafka::pipelines::Placement,
    ) -> Result<(), DeployError> {
        // (`check` ran `cluster_check` before the deploy.)
        if p.config.sources.iter().any(|s| s.file.is_some())
            || p.config.sinks.iter().any(|s| s.file.is_some())
        {
            tracing::warn!(pipeline = %p.name, "In a cluster, a pipeline's file sources and sinks must use paths on a filesystem every node mounts at the same place: a file's position names it by inode and head, and another node must find the files written before.");
        }
        // Every topic the pipeline writes is its own, checked before anything is made.
        let topics = self.pipeline_topics(p);
        for (topic, _, _) in &topics {
            placement
                .check_owner(&p.name, topic)
                .map_err(|reason| DeployError::Cluster {
                    pipeline: p.name.clone(),
                    reason,
                    user_error: true,
                })?;
        }
        let make = |topic: &str, partitions: u32, config: &[(String, String)]| {
            placement
                .create_topic(&p.name, topic, partitions, config)
                .map_err(|e| DeployError::Topic {
                    pipeline: p.name.clone(),
                    reason: format!("topic '{topic}': {e}"),
                    user_error: !e.is_transient(),
                })
        };
        for (name, partitions, config) in &topics {
            make(name, *partitions, config)?;
        }
        Ok(())
    }

    fn create_queries_and_tasks(&mut self, p: &Pipeline) -> Result<(), DeployError> {
        if let Some(sql) = &p.config.sql {
            let config = RunnerConfig {
                commit_interval: p.config.commit_interval.0,
                guarantee: p.config.guarantee,
                cache_max_bytes: p.config.cache_max_bytes,
                owner: self
                    .placement
                    .as_ref()
                    .map(|pl| pl.owner(&p.name, &self.positions_topic(&p.name))),
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
        let stop = StopToken::new();
        // In a cluster a pipeline paused on another node stays paused where it moves.
        let paused = self.kept_paused(&p.name)?;
        let tasks = match paused {
            true => Vec::new(),
            false => self.start_tasks(p, &stop)?,
        };
        self.pipelines.push(Deployed {
            name: p.name.clone(),
            path: p.path.clone(),
            tasks,
            paused,
            pipeline: p.clone(),
            stop,
        });
        Ok(())
    }

    /// In a cluster, whether pipeline `name` was paused (on any node): the flag kept in its
    /// positions topic, which moves with it. Alone, false (a redeploy starts it).
    fn kept_paused(&self, name: &str) -> Result<bool, DeployError> {
        if self.placement.is_none() {
            return Ok(false);
        }
        let topic = self.positions_topic(name);
        let kept = sluice_task::kept::latest_written(&self.log, &topic, PAUSED_KEY.as_bytes())
            .map_err(|e| DeployError::Topic {
                pipeline: name.to_string(),
                reason: format!("{topic}: reading whether it is paused: {e}"),
                user_error: false,
            })?;
        Ok(kept.is_some_and(|v| v.as_ref() == b"true"))
    }

    /// In a cluster, keeps whether pipeline `name` is paused in its positions topic
    /// (acks=all), so that the node it moves to pauses it too.
    fn keep_paused(&self, name: &str, paused: bool) -> Result<(), DeployError> {
        if self.placement.is_none() {
            return Ok(());
        }
        let topic = self.positions_topic(name);
        let err = |e: LogError| DeployError::Topic {
            pipeline: name.to_string(),
            reason: format!("{topic}: keeping whether it is paused: {e}"),
            user_error: false,
        };
        let mut producer = self
            .log
            .producer(sluice_log::ProducerConfig {
                acks: sluice_log::Acks::All,
                ..sluice_log::ProducerConfig::default()
            })
            .map_err(err)?;
        let record = sluice_log::Record {
            key: Some(Bytes::from_static(PAUSED_KEY.as_bytes())),
            value: Some(Bytes::from(paused.to_string())),
            headers: Vec::new(),
            timestamp: sluice_log::record::now_ms(),
        };
        producer.send_to(&topic, 0, record).map_err(err)?;
        producer.flush().map_err(err)?;
        Ok(())
    }

    /// Builds every task of `p`, then starts them all: a failure (a missing topic, a
    /// connector that does not build, a taken ingest route) starts none, so nothing is left
    /// running that no one stops.
    fn start_tasks(&self, p: &Pipeline, stop: &StopToken) -> Result<Vec<Task>, DeployError> {
        self.start_tasks_named(p, stop, None)
    }

    /// Starts the pipeline's tasks, or only the one named `only`.
    fn start_tasks_named(
        &self,
        p: &Pipeline,
        stop: &StopToken,
        only: Option<&str>,
    ) -> Result<Vec<Task>, DeployError> {
        let wanted = |task: &str| only.is_none_or(|o| o == task);
        let topic_err = |task: &str, e: LogError| {
            // A sink named the topic of a query's output as the stream was written
            // (`spend`), but unquoted names are upper case: the topic is `SPEND`.
            let hint = match &e {
                LogError::UnknownTopic(t)
                    if *t != t.to_uppercase() && self.log.topic(&t.to_uppercase()).is_ok() =>
                {
                    format!(
                        "; a query's output topic is its stream or table name, upper case unless quoted: '{}' (or give the query WITH (topic = '{t}'))",
                        t.to_uppercase()
                    )
                }
                _ => String::new(),
            };
            DeployError::Topic {
                pipeline: p.name.clone(),
                reason: format!("{task}: {e}{hint}"),
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
        let mut starts: Vec<(String, Starter)> = Vec::new();
        let mut routes = Vec::new();
        let spec = |kind: &'static str, name: &str| {
            let mut spec = TaskSpec::new(kind, format!("{}/{name}", p.name), stop.child());
            spec.pipeline = Some(p.name.clone());
            let secrets = p.secrets.clone();
            spec.redact = Some(Arc::new(move |e: &str| secrets.redact(e)));
            // A consumer's poll waits on the log: wake it when the task stops.
            let log = self.log.clone();
            spec.stop.on_stop(move || log.wake_waiters());
            spec
        };
        for s in &p.config.sources {
            let name = s.name.get_ref().clone();
            let what = format!("source {name}");
            if !wanted(&what) {
                continue;
            }
            if s.postgres_cdc.is_none() {
                // A CDC source's topics (one per table) are made as its tables appear.
                self.log.topic(&s.topic).map_err(|e| topic_err(&what, e))?;
            }
            let (mut source, ingest) = crate::pipeline::build_source(s, p.base(), &p.name)
                .map_err(|e| connector_err(&what, e))?;
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
            let key = source_key(&p.name, &name);
            let cluster = self.placement.clone().map(|placement| SourceCluster {
                placement,
                pipeline: p.name.clone(),
            });
            let task = SourceTask {
                cluster,
                log: self.log.clone(),
                transactional_id: self.transactional_id(&p.name, format!("sluice-source-{key}"))?,
                replicated: self.placement.is_some(),
                key,
                topic: s.topic.clone(),
                dlq: dlq.clone(),
                positions: self.positions_of(&p.name),
                positions_topic: self.positions_topic(&p.name),
                guarantee: p.config.guarantee,
                commit_interval: p.config.commit_interval.0,
                state: Some(self.engine.queries().env().clone()),
            };
            let spec = spec("source", &name);
            starts.push((
                format!("source {name}"),
                Box::new(move || {
                    sluice_task::spawn(spec, move |ctx| task.attempt(ctx, source.as_mut()))
                }),
            ));
        }
        for s in &p.config.sinks {
            let name = s.name.get_ref().clone();
            let what = format!("sink {name}");
            if !wanted(&what) {
                continue;
            }
            self.log.topic(&s.topic).map_err(|e| topic_err(&what, e))?;
            let mut sink =
                crate::pipeline::build_sink(s, p.base()).map_err(|e| connector_err(&what, e))?;
            let group = sink_group(&p.name, &name);
            let task = SinkTask {
                log: self.log.clone(),
                transactional_id: self.transactional_id(&p.name, format!("sluice-sink-{group}"))?,
                cluster: self.placement.is_some().then(|| self.positions_of(&p.name)),
                group,
                legacy_group: legacy_group(&p.name, &name),
                topic: s.topic.clone(),
                dlq: dlq.clone(),
                commit_interval: p.config.commit_interval.0,
            };
            let spec = spec("sink", &name);
            starts.push((
                format!("sink {name}"),
                Box::new(move || {
                    sluice_task::spawn(spec, move |ctx| task.attempt(ctx, sink.as_mut()))
                }),
            ));
        }
        let mut tasks = Vec::new();
        for (name, start) in starts {
            match start() {
                Ok(handle) => tasks.push(Task {
                    name,
                    status: Arc::clone(&handle.status),
                    handle,
                }),
                // Dropping the handles started so far stops them.
                Err(e) => {
                    return Err(DeployError::Connector {
                        pipeline: p.name.clone(),
                        task: name,
                        reason: format!("cannot start its thread: {e}"),
                        retryable: true,
                    });
                }
            }
        }
        let mut table = self.ingest.lock();
        for (topic, handle) in routes {
            table.insert(topic, (p.name.clone(), handle));
        }
        Ok(tasks)
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
    /// [`Worker::resume`]; its SQL queries keep running. In a cluster the pause is kept in
    /// the pipeline's positions topic, so it stays paused on the node it moves to.
    pub fn pause(&mut self, name: &str) -> Result<(), DeployError> {
        let ingest = Arc::clone(&self.ingest);
        self.find(name)?;
        self.keep_paused(name, true)?;
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
        let was_paused = d.paused;
        d.stop(&ingest);
        d.tasks.clear();
        let pipeline = d.pipeline.clone();
        let stop = StopToken::new();
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
        if was_paused {
            self.forget_pause(name);
        }
        Ok(())
    }

    /// In a cluster, clears the pause kept for pipeline `name` (resumed, or removed: a new
    /// pipeline of that name starts running). A failure is logged: the pipeline runs here,
    /// and would only start paused where it moves next.
    pub fn forget_pause(&self, name: &str) {
        if let Err(e) = self.keep_paused(name, false) {
            tracing::warn!(pipeline = %name, error = %e, "Could not clear the pipeline's kept pause; where it moves next it starts paused (resume it there).");
        }
    }

    /// Stops and starts one task of a running pipeline (it resumes from its committed
    /// position; its counters start afresh), as Kafka Connect's task restart.
    pub fn restart_task(&mut self, name: &str, task: &str) -> Result<(), DeployError> {
        let ingest = Arc::clone(&self.ingest);
        let d = self.find(name)?;
        if d.paused {
            return Err(DeployError::WrongState {
                pipeline: name.to_string(),
                reason: "it is paused: resume it to start its tasks".into(),
            });
        }
        let Some(at) = d.tasks.iter().position(|t| t.name == task) else {
            return Err(DeployError::NoSuchTask {
                pipeline: name.to_string(),
                task: task.to_string(),
            });
        };
        let mut old = d.tasks.remove(at);
        old.handle.stop();
        // An HTTP ingest source's route goes with it (and comes back when it starts).
        if let Some(topic) = task.strip_prefix("source ").and_then(|s| {
            d.pipeline
                .config
                .sources
                .iter()
                .find(|x| x.name.get_ref() == s)
                .map(|x| x.topic.clone())
        }) {
            ingest
                .lock()
                .retain(|t, (p, _)| !(p.as_str() == name && *t == topic));
        }
        let (pipeline, stop) = (d.pipeline.clone(), d.stop.clone());
        let started = self.start_tasks_named(&pipeline, &stop, Some(task));
        let d = self.find(name)?;
        match started {
            Ok(new) => {
                for (i, t) in new.into_iter().enumerate() {
                    d.tasks.insert((at + i).min(d.tasks.len()), t);
                }
                self.publish_status();
                Ok(())
            }
            Err(e) => {
                self.publish_status();
                Err(e)
            }
        }
    }

    /// Takes the secret values of every deployed pipeline out of a text (a `${VAR}`
    /// substituted into a pipeline's SQL is stored in the catalog as its value, and `SHOW
    /// QUERIES` or a catalog record would show it). Made once per answer, and usable after
    /// the worker's lock is released.
    pub fn redactor(&self) -> impl Fn(&str) -> String + Send + Sync + 'static {
        let secrets: Vec<Secrets> = self
            .pipelines
            .iter()
            .map(|d| d.pipeline.secrets.clone())
            .collect();
        move |text: &str| secrets.iter().fold(text.to_string(), |t, s| s.redact(&t))
    }

    /// The running task or persistent query whose consumer group `group` is, if any: such
    /// a group shows no members (the task commits without joining), but moving or deleting
    /// its offsets under it would be undone by its next commit.
    pub fn group_owner(&self, group: &str) -> Option<String> {
        for d in self.pipelines.iter().filter(|d| !d.paused) {
            for s in &d.pipeline.config.sinks {
                if sink_group(&d.name, s.name.get_ref()) == group {
                    return Some(format!(
                        "sink {} of pipeline {} (pause the pipeline first)",
                        s.name.get_ref(),
                        d.name
                    ));
                }
            }
        }
        self.engine
            .catalog()
            .queries()
            .find(|q| {
                sluice_sql::runner::query_group(&q.id) == group
                    && self.engine.queries().is_running(&q.id)
            })
            .map(|q| format!("persistent query {} (TERMINATE it first)", q.id))
    }

    /// The source positions as committed now (what was appended since is read first).
    fn positions_now(&self, pipeline: &str) -> Result<SharedPositions, DeployError> {
        let positions = self.positions_of(pipeline);
        positions
            .lock()
            .catch_up(&self.log)
            .map_err(|e| DeployError::Topic {
                pipeline: pipeline.to_string(),
                reason: e.to_string(),
                user_error: false,
            })?;
        Ok(positions)
    }

    /// The committed positions of a pipeline's sources (as each stores it) and the
    /// committed offsets of its sinks (per partition of their topic).
    pub fn offsets(&self, name: &str) -> Result<Vec<TaskOffset>, DeployError> {
        let d = self
            .pipeline(name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        let mut out = Vec::new();
        {
            let positions = self.positions_now(name)?;
            let positions = positions.lock();
            for s in &d.pipeline.config.sources {
                let source = s.name.get_ref();
                if let (Some(position), _) = positions.get(&source_key(name, source)) {
                    out.push(TaskOffset {
                        task: format!("source {source}"),
                        partition: None,
                        offset: position,
                    });
                }
            }
        }
        for s in &d.pipeline.config.sinks {
            let sink = s.name.get_ref();
            if let Some(info) = self.log.describe_group(&sink_group(name, sink)) {
                for p in info.partitions.iter().filter(|p| p.tp.topic == s.topic) {
                    if let Some(c) = p.committed {
                        out.push(TaskOffset {
                            task: format!("sink {sink}"),
                            partition: Some(p.tp.partition),
                            offset: Bytes::from(c.to_string()),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Forgets the committed positions of a paused pipeline's sources (and their keyed
    /// state) and its sinks' offsets, as Kafka Connect's offset reset: when resumed, its
    /// sources start from the beginning of their input and its sinks from the start of
    /// their topics. Returns how many positions were forgotten.
    pub fn reset_offsets(&mut self, name: &str) -> Result<usize, DeployError> {
        let d = self
            .pipeline(name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        if !d.paused {
            return Err(DeployError::WrongState {
                pipeline: name.to_string(),
                reason: "offsets can be reset only while it is paused (POST /pipelines/{name}/pause first)".into(),
            });
        }
        let log_error = |e: LogError| DeployError::Topic {
            pipeline: name.to_string(),
            reason: e.to_string(),
            user_error: e.is_user_error(),
        };
        let mut tombstones = Vec::new();
        {
            let positions = self.positions_now(name)?;
            let positions = positions.lock();
            for s in &d.pipeline.config.sources {
                let key = source_key(name, s.name.get_ref());
                let (position, state) = positions.get(&key);
                if position.is_some() {
                    tombstones.push(Bytes::from(key.clone()));
                }
                for (entry, _) in state {
                    tombstones.push(Bytes::from(crate::tasks::positions::state_key(
                        &key, &entry,
                    )));
                }
            }
            // In a cluster the sinks' offsets are kept there too.
            for s in &d.pipeline.config.sinks {
                let group = sink_group(name, s.name.get_ref());
                if self.placement.is_some() && positions.get(&group).0.is_some() {
                    tombstones.push(Bytes::from(group));
                }
            }
        }
        let mut forgotten = tombstones.len();
        if !tombstones.is_empty() {
            let records: Vec<sluice_log::Record> = tombstones
                .into_iter()
                .map(|key| sluice_log::Record {
                    key: Some(key),
                    value: None,
                    headers: Vec::new(),
                    timestamp: sluice_log::record::now_ms(),
                })
                .collect();
            let topic = self.positions_topic(name);
            let partition = self.log.partition(&topic, 0).map_err(log_error)?;
            let epoch = partition.leader_epoch();
            self.log
                .append_records(&topic, 0, &records)
                .map_err(log_error)?;
            // In a cluster, on every in-sync copy before the reset is said done: the node
            // that runs the pipeline next reads them there.
            partition
                .wait_high_watermark(
                    partition.log_end_offset(),
                    epoch,
                    std::time::Duration::from_secs(30),
                )
                .map_err(log_error)?;
        }
        for s in &d.pipeline.config.sinks {
            let group = sink_group(name, s.name.get_ref());
            if self.log.describe_group(&group).is_some() {
                forgotten += self.log.delete_group(&group).map_err(log_error)?;
            }
        }
        Ok(forgotten)
    }

    /// Stops every task (each commits what it has) and the persistent queries.
    pub fn shutdown(&mut self) {
        for p in &self.pipelines {
            p.stop.stop();
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

/// Starts a built task.
type Starter = Box<dyn FnOnce() -> std::io::Result<TaskHandle>>;

/// The dead-letter topic of pipeline `pipeline` (the one rule: `sluice_task::dlq_topic`).
pub fn dlq_topic(pipeline: &str) -> String {
    sluice_task::dlq_topic(pipeline)
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
            names.push((format!("POST /ingest/{}", s.topic), what.clone()));
        }
        if let Some(c) = &s.postgres_cdc {
            let name = format!("{}/{}", p.name, s.name.get_ref());
            // A source that does not build is reported by the build check.
            if let Ok(source) =
                sluice_connectors::postgres_cdc::PostgresCdcSource::new(c.clone(), &name, &s.topic)
            {
                names.push((source.slot_identity(), what));
            }
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

/// A topic's config overrides.
type Overrides = Vec<(String, String)>;

/// The key of a pipeline's paused flag in its positions topic, in a cluster (a source's key
/// has a `/`, a sink's is its group, a query's starts `query:`).
const PAUSED_KEY: &str = "pipeline:paused";

/// What a pipeline in a cluster cannot do yet, whatever the cluster's state.
fn cluster_check(p: &Pipeline) -> Result<(), DeployError> {
    let refuse = |reason: String| DeployError::Cluster {
        pipeline: p.name.clone(),
        reason,
        user_error: true,
    };
    for s in &p.config.sources {
        // A CDC source makes its tables' topics as they appear, as the pipeline's.
        if s.postgres_cdc.is_none() && !p.config.topics.iter().any(|t| *t.name.get_ref() == s.topic)
        {
            return Err(refuse(format!(
                "source {} writes topic '{}', which the pipeline does not declare: declare it in [[topics]], so that it is made where the pipeline runs and moves with it",
                s.name.get_ref(),
                s.topic
            )));
        }
    }
    Ok(())
}

/// The positions topic's config.
fn positions_config() -> Vec<(String, String)> {
    [
        ("cleanup.policy", "compact"),
        // Small segments that roll at least hourly, so the cleaner gets to work on a topic
        // that is written every epoch but stays small.
        ("segment.bytes", "1048576"),
        ("segment.ms", "3600000"),
        // Markers of committed transactions and the few tombstones go a minute after their
        // data: only the worker reads this topic, from where it was.
        ("delete.retention.ms", "60000"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
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
