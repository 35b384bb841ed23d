//! `sluice groups`: list, describe (with lag), delete, and reset offsets (a dry run unless
//! `--execute`, as Kafka's `kafka-consumer-groups.sh`).

use clap::{ArgGroup, Subcommand};
use sluice_log::{Log, PartitionReset, ResetTo};

use super::CliError;
use crate::output::table;

/// Group commands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List,
    /// Show a group's members, committed offsets and lag, for every partition of the
    /// topics it reads (a partition without a commit shows `-`).
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete a group with no active members: its committed offsets and membership.
    Delete {
        /// Group id.
        group: String,
    },
    /// Plan (and with --execute, make) a move of a group's committed offsets for a topic.
    /// The group must have no active members.
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
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
        #[arg(long, allow_negative_numbers = true)]
        to_offset: Option<i64>,
        /// To the first record at or after this time: `YYYY-MM-DDTHH:MM:SS[.sss]` (UTC unless
        /// it ends with `Z` or an offset such as `+01:00`), or milliseconds since the epoch.
        #[arg(long, value_parser = parse_datetime, value_name = "DATETIME")]
        to_datetime: Option<i64>,
        /// Move each committed offset by N (negative: back), clamped to the partition.
        #[arg(long, allow_negative_numbers = true, value_name = "N")]
        shift_by: Option<i64>,
        /// Make the change. Without it the plan is printed and nothing changes (`--dry-run`).
        #[arg(long, conflicts_with = "dry_run")]
        execute: bool,
        /// Print the plan only (the default; accepted for Kafka's tool's sake).
        #[arg(long)]
        dry_run: bool,
    },
}

/// `--to-datetime`: an ISO time (UTC unless it says otherwise) or epoch milliseconds.
fn parse_datetime(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    // With a zone (`Z`, `+01:00`), else UTC.
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("'{s}': {e} (expected YYYY-MM-DDTHH:MM:SS[.sss] or epoch ms)"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .map_err(|_| format!("'{s}' is before 1970"))
        })
}

impl GroupsCommand {
    /// Where a reset moves the group, from the flags.
    pub fn reset_to(
        to_latest: bool,
        to_offset: Option<i64>,
        to_datetime: Option<i64>,
        shift_by: Option<i64>,
    ) -> ResetTo {
        match (to_latest, to_offset, to_datetime, shift_by) {
            (true, ..) => ResetTo::Latest,
            (_, Some(o), ..) => ResetTo::Offset(o),
            (_, _, Some(t), _) => ResetTo::Datetime(t),
            (.., Some(n)) => ResetTo::ShiftBy(n),
            _ => ResetTo::Earliest,
        }
    }

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
            GroupsCommand::Delete { group } => {
                if log.describe_group(&group).is_none() {
                    return Err(CliError::Usage(format!("unknown group '{group}'")));
                }
                let n = log.delete_group(&group)?;
                println!("Deleted group {group} ({n} committed offset(s)).");
            }
            GroupsCommand::ResetOffsets {
                group,
                topic,
                to_earliest: _,
                to_latest,
                to_offset,
                to_datetime,
                shift_by,
                execute,
                dry_run: _,
            } => {
                let to = Self::reset_to(to_latest, to_offset, to_datetime, shift_by);
                let plan = log.reset_offsets(&group, &topic, to, execute)?;
                print_reset(&group, &topic, &plan, execute);
            }
        }
        Ok(())
    }
}

/// A reset's plan as Kafka's tool prints it, and whether it was made.
pub fn print_reset(group: &str, topic: &str, plan: &[PartitionReset], executed: bool) {
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|r| {
            vec![
                group.to_string(),
                topic.to_string(),
                r.partition.to_string(),
                r.old.map_or("-".into(), |o| o.to_string()),
                r.new.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["GROUP", "TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET"],
            &rows
        )
    );
    if !executed {
        println!("(dry run: nothing changed; add --execute to apply)");
    }
}
