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
                let rows: Vec<Vec<String>> = log
                    .list_groups()
                    .into_iter()
                    .map(|(g, s, n)| vec![g, format!("{s:?}"), n.to_string()])
                    .collect();
                print!("{}", table(&["GROUP", "STATE", "MEMBERS"], &rows));
            }
            GroupsCommand::Describe { group } => {
                let info = log
                    .describe_group(&group)
                    .ok_or_else(|| CliError::Usage(format!("unknown group '{group}'")))?;
                println!(
                    "Group: {}  State: {:?}  Members: {}",
                    info.group,
                    info.state,
                    info.description.as_ref().map_or(0, |d| d.members.len())
                );
                let rows: Vec<Vec<String>> = info
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.tp.topic.clone(),
                            p.tp.partition.to_string(),
                            p.committed.map_or("-".into(), |c| c.to_string()),
                            p.log_end.to_string(),
                            p.lag.to_string(),
                            p.member.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "TOPIC",
                            "PARTITION",
                            "CURRENT-OFFSET",
                            "LOG-END-OFFSET",
                            "LAG",
                            "MEMBER"
                        ],
                        &rows
                    )
                );
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
