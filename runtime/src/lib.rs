//! The Sluice runtime: the `sluice` command-line tool and, later, the worker that runs
//! pipelines (sources, SQL queries, sinks) over the embedded log.
//!
//! ```text
//!  sluice ─► cli::Cli (clap) ─► cli::{topics, produce, consume, groups, bench} ─► sluice_log::Log
//!                            └► cli::sql (shell, scripts) ─► sluice_sql::engine::Engine
//!                                                              (catalog, queries, state)
//! ```
//!
//! # Layout
//!
//! - [`cli`]: one file per command (`sql` is the SQL shell, `nexmark` the SQL benchmark);
//!   `main.rs` only parses and dispatches.
//! - [`output`]: tables and the one-line error format.

pub mod api;
pub mod cli;
pub mod deployer;
pub mod output;
pub mod pipeline;
pub mod worker;
