//! The command line: `sluice <command>`, one submodule per command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice_log::{FsyncPolicy, Log, LogOptions};

pub mod bench;
pub mod bench_cdc;
pub mod bench_cluster;
pub mod bench_eos;
pub mod bench_ingest;
pub mod bench_kafka;
pub mod bench_pipeline;
pub mod bench_sink;
pub mod bench_tiered;
pub mod cluster;
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
    /// The Kafka listener did not start.
    #[error(transparent)]
    Kafka(#[from] sluice_kafka::ServeError),
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
    /// Log format on stderr: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The log flags given before the command (`sluice --data-dir d topics list`), as
    /// scripts have long written them; hidden, since they belong to the commands.
    #[command(flatten)]
    pub before: LogArgsBefore,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, with colour only when stderr is a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

/// The log flags placed before the command name: accepted, not shown.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgsBefore {
    #[arg(long = "data-dir", hide = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long = "fsync", hide = true, value_parser = parse_fsync)]
    fsync: Option<FsyncPolicy>,
    #[arg(long = "auto-create-topics", hide = true)]
    auto_create_topics: bool,
    #[arg(long = "remote-storage", hide = true)]
    remote_storage: Option<String>,
    #[arg(long = "remote-storage-option", hide = true)]
    remote_storage_options: Vec<String>,
}

/// Where the log lives and how it writes: the options of every command that opens a data
/// directory (and of no other, so `--help` shows only what applies).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Data directory")]
pub struct LogArgs {
    /// The data directory (created if missing; default ./data). Only one process may own it
    /// at a time.
    #[arg(long, global = true, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When appends are fsynced: always (group commit), interval[:MILLIS] or never (default
    /// interval:1000).
    #[arg(
        long,
        global = true,
        value_parser = parse_fsync,
        value_name = "always|interval[:MILLIS]|never"
    )]
    pub fsync: Option<FsyncPolicy>,
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
}

/// `--fsync`'s values, checked by clap (a bad one is a usage error, exit code 2).
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
        .map_err(|e: sluice_log::config::ConfigError| e.to_string())
}

impl LogArgs {
    /// These flags, with those given before the command where these are not set.
    pub fn with(mut self, before: LogArgsBefore) -> LogArgs {
        self.data_dir = self.data_dir.or(before.data_dir);
        self.fsync = self.fsync.or(before.fsync);
        self.auto_create_topics |= before.auto_create_topics;
        self.remote_storage = self.remote_storage.or(before.remote_storage);
        if self.remote_storage_options.is_empty() {
            self.remote_storage_options = before.remote_storage_options;
        }
        self
    }

    /// The data directory (default `./data`).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"))
    }

    /// The log's options from these flags.
    pub fn options(&self) -> Result<LogOptions, CliError> {
        let remote_storage = match &self.remote_storage {
            Some(url) => Some(sluice_log::remote::RemoteStorage::new(
                url.clone(),
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
        Ok(LogOptions {
            fsync: self
                .fsync
                .unwrap_or(FsyncPolicy::Interval(std::time::Duration::from_secs(1))),
            auto_create_topics: self.auto_create_topics,
            remote_storage,
            ..LogOptions::default()
        })
    }
}

/// A command with subcommands that opens the log: the log flags apply to every subcommand.
#[derive(Debug, Args)]
pub struct WithLog<C: Subcommand> {
    /// Where the log lives.
    #[command(flatten)]
    pub log: LogArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: C,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    Topics(WithLog<topics::TopicsCommand>),
    /// Write lines from stdin or a file to a topic, one record per line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups, and reset their offsets.
    Groups(WithLog<groups::GroupsCommand>),
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
    /// The cluster a running node belongs to: nodes, controller, partition leaders and ISR.
    Cluster(WithLog<cluster::ClusterCommand>),
    /// List objects in an object store, and query Parquet objects there with SQL.
    #[command(subcommand)]
    Objects(objects::ObjectsCommand),
    /// Generate data for the example apps (rides, transactions) at a given rate.
    Gen(WithLog<generate::GenCommand>),
}

impl Command {
    /// The log flags of a command that opens the log.
    fn log_args(&self) -> Option<&LogArgs> {
        match self {
            Command::Topics(a) => Some(&a.log),
            Command::Groups(a) => Some(&a.log),
            Command::Gen(a) => Some(&a.log),
            Command::Produce(a) => Some(&a.log),
            Command::Consume(a) => Some(&a.log),
            Command::Sql(a) => Some(&a.log),
            Command::Run(a) => Some(&a.log),
            Command::Pipelines(_)
            | Command::Bench(_)
            | Command::Objects(_)
            | Command::Cluster(_) => None,
        }
    }

    /// Checks what can be checked before the data directory is opened (and created), so a
    /// mistyped file or a run from the wrong folder leaves no `./data` behind.
    fn check(&self) -> Result<(), CliError> {
        let readable = |flag: &str, f: &std::path::Path| {
            std::fs::File::open(f)
                .map(drop)
                .map_err(|e| CliError::io(format!("{flag} {}", f.display()), e))
        };
        match self {
            Command::Sql(a) => a.file.as_deref().map_or(Ok(()), |f| readable("--file", f)),
            Command::Produce(a) => a.file.as_deref().map_or(Ok(()), |f| readable("--file", f)),
            Command::Run(a) => a.check(),
            _ => Ok(()),
        }
    }
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        let (log_args, cmd) = match self.command {
            Command::Bench(cmd) => return cmd.run(self.before.fsync),
            Command::Pipelines(cmd) => return cmd.run(),
            Command::Cluster(c) => return c.command.run(&c.log.with(self.before).data_dir()),
            Command::Objects(cmd) => return cmd.run(),
            Command::Gen(g) if !g.command.needs_log() => return g.command.run(None),
            cmd => match cmd.log_args() {
                Some(a) => (a.clone().with(self.before), cmd),
                None => return Ok(()),
            },
        };
        cmd.check()?;
        let options = log_args.options()?;
        let data_dir = log_args.data_dir();
        let log = match Log::open(&data_dir, options) {
            Ok(log) => log,
            Err(e @ sluice_log::LogError::DataDirLocked { .. }) => {
                // A worker owns the directory: ask its API instead.
                return match remote::Remote::find(&data_dir) {
                    Some(r) => r.run(cmd, &log_args),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let result = match cmd {
            Command::Topics(c) => c.command.run(&log),
            Command::Produce(a) => a.run(&log),
            Command::Consume(a) => a.run(&log),
            Command::Groups(c) => c.command.run(&log),
            Command::Sql(a) => a.run(&log),
            Command::Run(a) => a.run(&log, &data_dir),
            Command::Gen(g) => g.command.run(Some(&log)),
            Command::Pipelines(_)
            | Command::Bench(_)
            | Command::Objects(_)
            | Command::Cluster(_) => Ok(()),
        };
        let closed = log.close();
        result?;
        closed?;
        Ok(())
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
