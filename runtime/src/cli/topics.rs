//! `sluice topics`: create, list, describe, alter, delete.

use clap::Subcommand;
use sluice_log::Log;

use super::{CliError, parse_pairs};
use crate::output::table;

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
                let pairs = parse_pairs(&config)?;
                match log.create_topic(&name, partitions, &pairs) {
                    Err(sluice_log::LogError::TopicExists(_)) if if_not_exists => {}
                    r => r?,
                }
                println!("Created topic {name} with {partitions} partition(s).");
            }
            TopicsCommand::List { all } => {
                let rows: Vec<Vec<String>> = log
                    .topic_names()
                    .into_iter()
                    .filter(|n| all || !n.starts_with("__"))
                    .filter_map(|n| log.describe_topic(&n).ok())
                    .map(|d| {
                        let records: i64 = d
                            .partitions
                            .iter()
                            .map(|p| p.log_end_offset - p.log_start_offset)
                            .sum();
                        let bytes: u64 = d.partitions.iter().map(|p| p.size_bytes).sum();
                        vec![
                            d.name,
                            d.partitions.len().to_string(),
                            records.to_string(),
                            bytes.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["TOPIC", "PARTITIONS", "RECORDS", "BYTES"], &rows)
                );
            }
            TopicsCommand::Describe { name } => {
                let d = log.describe_topic(&name)?;
                println!(
                    "Topic: {}  Partitions: {}{}",
                    d.name,
                    d.partitions.len(),
                    if d.internal { "  (internal)" } else { "" }
                );
                let overrides: Vec<String> = d
                    .config
                    .iter()
                    .filter(|c| c.2)
                    .map(|c| format!("{}={}", c.0, c.1))
                    .collect();
                println!(
                    "Config overrides: {}",
                    if overrides.is_empty() {
                        "none".into()
                    } else {
                        overrides.join(", ")
                    }
                );
                let rows: Vec<Vec<String>> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.log_start_offset.to_string(),
                            p.log_end_offset.to_string(),
                            p.high_watermark.to_string(),
                            p.last_stable_offset.to_string(),
                            p.leader_epoch.to_string(),
                            p.segments.to_string(),
                            p.size_bytes.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "PARTITION",
                            "LOG-START",
                            "LOG-END",
                            "HIGH-WATERMARK",
                            "LAST-STABLE",
                            "LEADER-EPOCH",
                            "SEGMENTS",
                            "BYTES"
                        ],
                        &rows
                    )
                );
                let rows: Vec<Vec<String>> = d
                    .config
                    .iter()
                    .map(|(k, v, set)| {
                        vec![
                            k.to_string(),
                            v.clone(),
                            if *set {
                                "topic".into()
                            } else {
                                "default".into()
                            },
                        ]
                    })
                    .collect();
                print!("{}", table(&["CONFIG", "VALUE", "SOURCE"], &rows));
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
                log.delete_topic(&name)?;
                println!("Deleted topic {name}.");
            }
        }
        Ok(())
    }
}
