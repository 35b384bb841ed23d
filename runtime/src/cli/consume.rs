//! `sluice consume`: print records of a topic, alone or as a group member.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sluice_log::{Isolation, Log, TopicPartition};

use super::CliError;

/// Arguments of `sluice consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the earliest offset (else only records written from now on, or the group's
    /// committed offsets).
    #[arg(long)]
    pub from_beginning: bool,
    /// Read as a member of this consumer group and commit its offsets at the end.
    #[arg(long)]
    pub group: Option<String>,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start offset with --partition: a number, earliest or latest.
    #[arg(long, requires = "partition")]
    pub offset: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Print the key before the value (tab-separated; "null" when absent).
    #[arg(long)]
    pub print_key: bool,
    /// Print "Partition:P" first.
    #[arg(long)]
    pub print_partition: bool,
    /// Print "Offset:O" first.
    #[arg(long)]
    pub print_offset: bool,
    /// Print "CreateTime:MS" first.
    #[arg(long)]
    pub print_timestamp: bool,
    /// Print the headers as `KEY:VALUE,KEY:VALUE` (`NO_HEADERS` when none) before the key,
    /// as Kafka's console consumer does with `print.headers=true`.
    #[arg(long)]
    pub print_headers: bool,
    /// Which records to read: committed ones only, or also those of open and aborted
    /// transactions.
    #[arg(long, value_enum, default_value_t = IsolationArg::ReadCommitted)]
    pub isolation: IsolationArg,
    /// Keep waiting for new records at the end of the log instead of exiting.
    #[arg(long)]
    pub follow: bool,
    /// Where the log lives (last: its help heading applies to what follows).
    #[command(flatten)]
    pub log: super::LogArgs,
}

/// `--isolation`'s values, named as Kafka's `isolation.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// Only records of committed transactions (and non-transactional ones).
    #[value(name = "read_committed")]
    ReadCommitted,
    /// Every record written, also of open and aborted transactions.
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
}

impl From<IsolationArg> for Isolation {
    fn from(i: IsolationArg) -> Isolation {
        match i {
            IsolationArg::ReadCommitted => Isolation::ReadCommitted,
            IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
        }
    }
}

/// A record's fields as the consumer prints them, read locally or through a worker's API.
#[derive(Debug, Default)]
pub struct Printed<'a> {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key as text, if any.
    pub key: Option<&'a str>,
    /// Value as text, if any.
    pub value: Option<&'a str>,
    /// Headers (a null value as `None`).
    pub headers: Vec<(&'a str, Option<&'a str>)>,
}

impl ConsumeArgs {
    /// A record as printed: the fields asked for (`CreateTime:`, `Partition:`, `Offset:`,
    /// key), tab-separated, then the value (`null` for an absent key or value). Used for
    /// records read locally and through a worker's API alike.
    pub fn format_line(&self, r: &Printed<'_>) -> String {
        let mut line = String::new();
        if self.print_timestamp {
            line.push_str(&format!("CreateTime:{}\t", r.timestamp));
        }
        if self.print_partition {
            line.push_str(&format!("Partition:{}\t", r.partition));
        }
        if self.print_offset {
            line.push_str(&format!("Offset:{}\t", r.offset));
        }
        if self.print_headers {
            if r.headers.is_empty() {
                line.push_str("NO_HEADERS");
            }
            for (i, (k, v)) in r.headers.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&format!("{k}:{}", v.unwrap_or("null")));
            }
            line.push('\t');
        }
        if self.print_key {
            line.push_str(r.key.unwrap_or("null"));
            line.push('\t');
        }
        line.push_str(r.value.unwrap_or("null"));
        line
    }

    /// What this consume asks for, as the API's consume query.
    pub fn query(&self) -> crate::api::consume::ConsumeQuery {
        crate::api::consume::ConsumeQuery {
            group: self.group.clone(),
            from_beginning: self.from_beginning,
            partition: self.partition,
            offset: self.offset.clone(),
            // The flag's value is the name the log parses (`read_committed`...).
            isolation: self
                .isolation
                .to_possible_value()
                .map(|v| v.get_name().to_string()),
            max_messages: self.max_messages,
            follow: self.follow,
            // Through a worker the command commits what it printed, itself.
            auto_commit: self.group.as_ref().map(|_| false),
        }
    }

    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        // The same consumer as the API's `GET /topics/{name}/consume` opens.
        let mut consumer = self
            .query()
            .consumer(log, &self.topic)
            .map_err(|e| CliError::Usage(e.1))?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut count = 0u64;
        let max = self.max_messages.unwrap_or(u64::MAX);
        // What was printed, per partition: the group commits exactly this, never records a
        // poll returned beyond --max-messages.
        let mut printed: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        'outer: while count < max {
            let records = consumer.poll(Duration::from_millis(200))?;
            if records.is_empty() {
                let caught_up = consumer.lag()?.iter().all(|(_, lag)| *lag == 0);
                if caught_up && !self.follow {
                    break;
                }
                continue;
            }
            for r in records {
                let text = |b: &Option<bytes::Bytes>| {
                    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let (key, value) = (text(&r.key), text(&r.value));
                let headers: Vec<(String, Option<String>)> = r
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), text(&h.value)))
                    .collect();
                let mut line = self.format_line(&Printed {
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: key.as_deref(),
                    value: value.as_deref(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_deref()))
                        .collect(),
                });
                line.push('\n');
                if let Err(e) = out.write_all(line.as_bytes()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break 'outer;
                    }
                    return Err(CliError::io("write stdout", e));
                }
                count += 1;
                let tp = TopicPartition {
                    topic: r.topic.to_string(),
                    partition: r.partition,
                };
                printed.insert(tp, r.offset + 1);
                if count >= max {
                    break 'outer;
                }
            }
        }
        let _ = out.flush();
        if self.group.is_some() {
            let offsets: Vec<(TopicPartition, i64)> = printed.into_iter().collect();
            consumer.commit_offsets(&offsets)?;
        }
        consumer.close()?;
        eprintln!("Consumed {count} record(s).");
        Ok(())
    }
}
