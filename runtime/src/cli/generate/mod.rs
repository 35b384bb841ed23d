//! `sluice gen`: seeded data generators for the case-study apps in `examples/`, each with a
//! rate option, writing to the log (or a running worker's API) or printing.
//!
//! - [`rides`]: ride requests and driver pings for `examples/surge-pricing/`.
//! - [`transactions`]: bank transactions and threshold changes in PostgreSQL for
//!   `examples/bank-alerts/`.

pub mod rides;
pub mod transactions;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use sluice_log::{Log, Producer, ProducerConfig, Record};

use super::CliError;
use super::remote::Remote;

/// The generators.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Ride requests, driver pings, zones and surge rules (examples/surge-pricing).
    Rides(rides::RidesArgs),
    /// Bank transactions and threshold changes, inserted into PostgreSQL
    /// (examples/bank-alerts).
    Transactions(transactions::TransactionsArgs),
}

impl GenCommand {
    /// Whether it writes to the log (the others print or write elsewhere).
    pub fn needs_log(&self) -> bool {
        match self {
            GenCommand::Rides(a) => !a.clock.print,
            GenCommand::Transactions(_) => false,
        }
    }

    /// Runs it against the log (`None` when it needs none).
    pub fn run(&self, log: Option<&Log>) -> Result<(), CliError> {
        match self {
            GenCommand::Rides(a) => {
                let mut out = output(a.clock.print, log, None)?;
                a.run(out.as_mut())
            }
            GenCommand::Transactions(a) => a.run(),
        }
    }

    /// Runs it through a running worker's API.
    pub fn run_remote(&self, remote: &Remote) -> Result<(), CliError> {
        match self {
            GenCommand::Rides(a) => {
                let mut out = output(a.clock.print, None, Some(remote))?;
                a.run(out.as_mut())
            }
            GenCommand::Transactions(a) => a.run(),
        }
    }
}

/// Options every generator shares: randomness, simulated time and where records go.
#[derive(Debug, Args)]
pub struct Clock {
    /// The random seed: the same seed, arguments and --start give the same records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated start time: `now` or an RFC 3339 time (2026-11-23T08:00:00Z).
    #[arg(long, default_value = "now")]
    pub start: String,
    /// How much simulated time to generate (e.g. 1h, 90s); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Simulated seconds per wall-clock second; 0 writes as fast as possible (a backfill).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Print `topic<TAB>key<TAB>value` lines to stdout instead of writing to the log.
    #[arg(long)]
    pub print: bool,
}

impl Clock {
    /// The start in ms since the epoch.
    pub fn start_ms(&self) -> Result<i64, CliError> {
        let t = if self.start == "now" {
            std::time::SystemTime::now()
        } else {
            humantime::parse_rfc3339_weak(&self.start).map_err(|e| {
                CliError::Usage(format!(
                    "--start '{}': {e} (give now or e.g. 2026-11-23T08:00:00Z)",
                    self.start
                ))
            })?
        };
        Ok(t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64))
    }

    /// What keeps the simulated clock in step with the wall clock.
    pub fn pacer(&self, start: i64) -> Pacer {
        Pacer {
            start,
            speed: self.speed.max(0.0),
            wall: Instant::now(),
            last_report: Instant::now(),
        }
    }
}

/// Holds records back until the wall clock reaches their simulated time (at `--speed`).
#[derive(Debug)]
pub struct Pacer {
    start: i64,
    speed: f64,
    wall: Instant,
    last_report: Instant,
}

impl Pacer {
    /// Waits until simulated time `t` is due, flushing what is written so far first.
    pub fn wait_until(&mut self, t: i64, out: &mut dyn Emit) -> Result<(), CliError> {
        if self.speed == 0.0 {
            return Ok(());
        }
        let due = Duration::from_secs_f64(((t - self.start).max(0) as f64 / 1000.0) / self.speed);
        let elapsed = self.wall.elapsed();
        if due > elapsed {
            out.flush()?;
            std::thread::sleep(due - elapsed);
        }
        Ok(())
    }

    /// True every 5 s of wall time (for a progress line).
    pub fn report_due(&mut self) -> bool {
        if self.last_report.elapsed() >= Duration::from_secs(5) {
            self.last_report = Instant::now();
            true
        } else {
            false
        }
    }
}

/// Where generated records go.
pub trait Emit {
    /// Writes one record (JSON value) to a topic, keyed, with its event time as its
    /// timestamp (ms).
    fn emit(&mut self, topic: &str, key: &str, value: &str, time: i64) -> Result<(), CliError>;
    /// Makes everything written so far visible.
    fn flush(&mut self) -> Result<(), CliError>;
}

fn output<'a>(
    print: bool,
    log: Option<&'a Log>,
    remote: Option<&'a Remote>,
) -> Result<Box<dyn Emit + 'a>, CliError> {
    if print {
        return Ok(Box::new(Print(std::io::stdout().lock())));
    }
    if let Some(log) = log {
        return Ok(Box::new(ToLog {
            log,
            producer: log.producer(ProducerConfig::default())?,
            pending: 0,
        }));
    }
    match remote {
        Some(remote) => Ok(Box::new(ToApi {
            remote,
            pending: Vec::new(),
        })),
        None => Err(CliError::Usage("nowhere to write".into())),
    }
}

struct Print<W: Write>(W);

impl<W: Write> Emit for Print<W> {
    fn emit(&mut self, topic: &str, key: &str, value: &str, _time: i64) -> Result<(), CliError> {
        writeln!(self.0, "{topic}\t{key}\t{value}").map_err(|e| CliError::io("write stdout", e))
    }
    fn flush(&mut self) -> Result<(), CliError> {
        self.0.flush().map_err(|e| CliError::io("write stdout", e))
    }
}

struct ToLog<'a> {
    log: &'a Log,
    producer: Producer,
    pending: usize,
}

impl Emit for ToLog<'_> {
    fn emit(&mut self, topic: &str, key: &str, value: &str, time: i64) -> Result<(), CliError> {
        self.log.topic_or_create(topic)?;
        self.producer.send(
            topic,
            Record {
                key: Some(Bytes::from(key.to_string())),
                value: Some(Bytes::from(value.to_string())),
                headers: Vec::new(),
                timestamp: time,
            },
        )?;
        self.pending += 1;
        if self.pending >= 10_000 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), CliError> {
        self.producer.flush()?;
        self.pending = 0;
        Ok(())
    }
}

/// Batches records per topic and posts them to the worker's `/topics/{t}/records`.
struct ToApi<'a> {
    remote: &'a Remote,
    pending: Vec<(String, Vec<u8>, usize)>,
}

impl Emit for ToApi<'_> {
    fn emit(&mut self, topic: &str, key: &str, value: &str, time: i64) -> Result<(), CliError> {
        let line = serde_json::json!({ "key": key, "value": value, "timestamp": time }).to_string();
        let i = match self.pending.iter().position(|(t, _, _)| t == topic) {
            Some(i) => i,
            None => {
                self.pending.push((topic.to_string(), Vec::new(), 0));
                self.pending.len() - 1
            }
        };
        let entry = &mut self.pending[i];
        entry.1.extend_from_slice(line.as_bytes());
        entry.1.push(b'\n');
        entry.2 += 1;
        if entry.2 >= 5_000 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), CliError> {
        // Topics in the order they were first written: tables seeded before streams.
        for (topic, body, count) in &mut self.pending {
            if *count > 0 {
                self.remote.post_records(topic, std::mem::take(body))?;
                *count = 0;
            }
        }
        Ok(())
    }
}

/// An RFC 3339 UTC time with milliseconds.
pub fn iso(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
