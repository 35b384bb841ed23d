//! `sluice topics`: create, list, describe, alter, delete.

use clap::Subcommand;
use sluice_log::Log;

use super::{CliError, parse_pairs};

/// Refuses a user's change to an internal topic (the worker and the log manage those).
pub(crate) fn refuse_internal(name: &str, action: &'static str) -> Result<(), CliError> {
    if sluice_log::is_internal_topic(name) {
        return Err(sluice_log::LogError::InternalTopic {
            name: name.into(),
            action,
        }
        .into());
    }
    Ok(())
}

/// Topic commands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name: ASCII letters, digits, '.', '_' and '-'.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic config override, KEY=VALUE (repeatable), e.g. retention.ms=60000.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Succeed without change when the topic exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics with their partition counts.
    List {
        /// Include internal topics (__consumer_offsets, __transaction_state).
        #[arg(long)]
        all: bool,
    },
    /// Show a topic's partitions, offsets and config.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Add partitions or change config.
    Alter {
        /// Topic name.
        name: String,
        /// New partition count (can only grow).
        #[arg(long)]
        partitions: Option<u32>,
        /// A config change, KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

impl TopicsCommand {
    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        match self {
            TopicsCommand::Create {
                name,
                partitions,
                config,
                if_not_exists,
            } => {
                refuse_internal(&name, "created")?;
                let pairs = parse_pairs(&config)?;
                match log.create_topic(&name, partitions, &pairs) {
                    Err(sluice_log::LogError::TopicExists(_)) if if_not_exists => {}
                    r => r?,
                }
                println!("Created topic {name} with {partitions} partition(s).");
            }
            TopicsCommand::List { all } => {
                super::views::print_topics(&crate::api::log::topics_json(log, all));
            }
            TopicsCommand::Describe { name } => {
                super::views::print_topic(&crate::api::log::topic_json(log, &name)?);
            }
            TopicsCommand::Alter {
                name,
                partitions,
                config,
            } => {
                if partitions.is_none() && config.is_empty() {
                    return Err(CliError::Usage(
                        "nothing to alter: give --partitions N and/or --config KEY=VALUE".into(),
                    ));
                }
                if let Some(n) = partitions {
                    log.alter_partitions(&name, n)?;
                    println!("Topic {name} now has {n} partition(s).");
                }
                if !config.is_empty() {
                    log.alter_config(&name, &parse_pairs(&config)?)?;
                    println!("Updated config of topic {name}.");
                }
            }
            TopicsCommand::Delete { name } => {
                refuse_internal(&name, "deleted")?;
                log.delete_topic(&name)?;
                println!("Deleted topic {name}.");
            }
        }
        Ok(())
    }
}
