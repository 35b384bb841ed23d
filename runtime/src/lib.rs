//! The Sluice runtime: the `sluice` command-line tool and the worker that runs pipelines
//! (sources, SQL queries, sinks) over the embedded log, with its REST API and metrics.
//!
//! ```text
//!  sluice ─► cli::Cli (clap) ─► cli::{topics, produce, consume, groups, bench} ─► sluice_log::Log
//!                            │    (cli::remote: the same commands through a running worker's API)
//!                            ├► cli::sql (shell, scripts) ─► sluice_sql::engine::Engine
//!                            └► cli::run ─► Deployer (folder ⇄ pipelines) ─► Worker ─► tasks
//!                                        └► api (axum: REST, SSE, /metrics, /ingest) ─┘
//! ```
//!
//! # Layout
//!
//! - [`cli`]: one file per command (`sql` is the SQL shell, `nexmark` and `bench_pipeline`
//!   benchmarks, `nexmark` a folder: generator, queries, batch side, result check; `remote`
//!   the API client, `views` the tables shared by local and remote); `main.rs` only parses
//!   and dispatches.
//! - [`pipeline`]: pipeline files (parse, validate, build connectors).
//! - [`worker`]: deployed pipelines: topics, SQL, and their tasks' lifecycle.
//! - [`tasks`]: the source and sink tasks (their step and commit on `sluice-task`).
//! - [`deployer`]: keeps the pipelines folder and the worker in step (file changes, API).
//! - [`status`]: the board of running tasks and queries `/metrics` reads without the worker.
//! - [`api`]: the REST API, server-sent events, HTTP ingest and Prometheus metrics.
//! - [`output`]: tables and the one-line error format.

pub mod api;
pub mod cli;
pub mod deployer;
pub mod output;
pub mod pipeline;
pub mod status;
pub mod tasks;
pub mod worker;
