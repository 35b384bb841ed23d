//! The command line: `sluice <command>`, one submodule per command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice_log::{FsyncPolicy, Log, LogOptions};

pub mod bench;
pub mod bench_cdc;
pub mod bench_eos;
pub mod bench_ingest;
pub mod bench_pipeline;
pub mod bench_sink;
pub mod bench_tiered;
pub mod consume;
pub mod generate;
pub mod groups;
pub mod nexmark;
pub mod objects;
pub mod pipelines;
pub mod produce;
pub mod remote;
pub mod run;
pub mod sql;
pub mod topics;
pub mod views;

/// A command failed; the message is printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the log.
    #[error(transparent)]
    Log(#[from] sluice_log::LogError),
    /// Reading input or writing output.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad arguments or input.
    #[error("{0}")]
    Usage(String),
    /// A pipeline file that does not load or validate.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// A pipeline that did not deploy.
    #[error(transparent)]
    Deploy(#[from] crate::worker::DeployError),
    /// The pipelines folder and the worker could not be brought in step.
    #[error(transparent)]
    Deployer(Box<crate::deployer::DeployerError>),
    /// The API server did not start.
    #[error(transparent)]
    Serve(#[from] crate::api::ServeError),
}

impl From<crate::deployer::DeployerError> for CliError {
    fn from(e: crate::deployer::DeployerError) -> CliError {
        CliError::Deployer(Box::new(e))
    }
}

impl CliError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Sluice: stream processing and connectors on an embedded, Kafka-compatible log.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// The data directory (created if missing). Only one process may own it at a time.
    #[arg(long, global = true, default_value = "./data", env = "SLUICE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// When appends are fsynced: always (group commit), interval[:MILLIS] or never.
    #[arg(long, global = true, default_value = "interval:1000")]
    pub fsync: String,
    /// Create unknown topics on first write (with one partition) instead of failing.
    #[arg(long, global = true)]
    pub auto_create_topics: bool,
    /// Tiered storage: the object store where topics with remote.storage.enable=true keep
    /// their old segments (s3://bucket/prefix, gs://, az://, file:///path). Remembered in the
    /// data directory; give it again only to change it.
    #[arg(long, global = true, env = "SLUICE_REMOTE_STORAGE")]
    pub remote_storage: Option<String>,
    /// A setting of the remote storage, KEY=VALUE with object_store's keys (aws_endpoint,
    /// aws_region, aws_allow_http...; repeatable). Secrets are better given by environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY...): they are never saved.
    #[arg(
        long = "remote-storage-option",
        global = true,
        value_name = "KEY=VALUE"
    )]
    pub remote_storage_options: Vec<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Write lines from stdin or a file to a topic, one record per line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// List and describe consumer groups, and reset their offsets.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Run SQL: an interactive shell, or a script with `-e` / `-f`.
    Sql(sql::SqlArgs),
    /// Run the worker: deploy every pipeline file of a folder and run it until Ctrl-C.
    Run(run::RunArgs),
    /// Check pipeline files.
    #[command(subcommand)]
    Pipelines(pipelines::PipelinesCommand),
    /// Measure the log's throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// List objects in an object store, and query Parquet objects there with SQL.
    #[command(subcommand)]
    Objects(objects::ObjectsCommand),
    /// Generate data for the example apps (rides, transactions) at a given rate.
    #[command(subcommand)]
    Gen(generate::GenCommand),
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        let fsync: FsyncPolicy =
            self.fsync
                .parse()
                .map_err(|e: sluice_log::config::ConfigError| {
                    CliError::Usage(format!("--fsync: {e}"))
                })?;
        let remote_storage = match self.remote_storage {
            Some(url) => Some(sluice_log::remote::RemoteStorage::new(
                url,
                self.remote_storage_options
                    .iter()
                    .map(|p| sluice_log::config::parse_pair(p))
                    .collect::<Result<_, _>>()
                    .map_err(|e| CliError::Usage(format!("--remote-storage-option: {e}")))?,
            )),
            None if !self.remote_storage_options.is_empty() => {
                return Err(CliError::Usage(
                    "--remote-storage-option needs --remote-storage URL".into(),
                ));
            }
            None => None,
        };
        let options = LogOptions {
            fsync,
            remote_storage,
            ..LogOptions::default()
        };
        match self.command {
            Command::Bench(cmd) => cmd.run(&self.data_dir, options),
            Command::Pipelines(cmd) => cmd.run(),
            Command::Gen(g) if !g.needs_log() => g.run(None),
            Command::Objects(cmd) => cmd.run(),
            cmd => {
                let log = match Log::open(&self.data_dir, options) {
                    Ok(log) => log,
                    Err(e @ sluice_log::LogError::DataDirLocked { .. }) => {
                        // A worker owns the directory: ask its API instead.
                        return match remote::Remote::find(&self.data_dir) {
                            Some(r) => r.run(cmd),
                            None => Err(e.into()),
                        };
                    }
                    Err(e) => return Err(e.into()),
                };
                let result = match cmd {
                    Command::Topics(c) => c.run(&log),
                    Command::Produce(a) => a.run(&log),
                    Command::Consume(a) => a.run(&log),
                    Command::Groups(c) => c.run(&log),
                    Command::Sql(a) => a.run(&log),
                    Command::Run(a) => a.run(&log, &self.data_dir),
                    Command::Gen(g) => g.run(Some(&log)),
                    Command::Pipelines(_) => Ok(()),
                    Command::Bench(_) => Ok(()),
                    Command::Objects(_) => Ok(()),
                };
                let closed = log.close();
                result?;
                closed?;
                Ok(())
            }
        }
    }
}

/// Parses `KEY=VALUE` arguments.
pub fn parse_pairs(pairs: &[String]) -> Result<Vec<(String, String)>, CliError> {
    pairs
        .iter()
        .map(|p| {
            sluice_log::config::parse_pair(p).map_err(|e| CliError::Usage(format!("--config: {e}")))
        })
        .collect()
}
