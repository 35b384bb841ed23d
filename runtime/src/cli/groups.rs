//! `sluice groups`: list, describe (with lag), reset offsets.

use clap::{ArgGroup, Subcommand};
use sluice_log::{Log, ResetTo};

use super::CliError;
use crate::output::table;

/// Group commands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List,
    /// Show a group's members, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets for a topic (the group must have no active members).
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset"])))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic whose partitions are reset.
        #[arg(long)]
        topic: String,
        /// To the first offset held.
        #[arg(long)]
        to_earliest: bool,
        /// To the end of the log.
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to each partition's range).
        #[arg(long)]
        to_offset: Option<i64>,
    },
}

impl GroupsCommand {
    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        match self {
            GroupsCommand::List => {
                super::views::print_groups(&crate::api::log::groups_json(log));
            }
            GroupsCommand::Describe { group } => {
                let v = crate::api::log::group_json(log, &group)
                    .ok_or_else(|| CliError::Usage(format!("unknown group '{group}'")))?;
                super::views::print_group(&v);
            }
            GroupsCommand::ResetOffsets {
                group,
                topic,
                to_earliest,
                to_latest,
                to_offset,
            } => {
                let to = if to_earliest {
                    ResetTo::Earliest
                } else if to_latest {
                    ResetTo::Latest
                } else {
                    ResetTo::Offset(to_offset.unwrap_or(0))
                };
                let changes = log.reset_offsets(&group, &topic, to)?;
                let rows: Vec<Vec<String>> = changes
                    .into_iter()
                    .map(|(p, old, new)| {
                        vec![
                            topic.clone(),
                            p.to_string(),
                            old.map_or("-".into(), |o| o.to_string()),
                            new.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET"], &rows)
                );
            }
        }
        Ok(())
    }
}
