//! `sluice bench nexmark`: Nexmark events through persistent SQL queries, beside DataFusion's
//! batch evaluation of the same query over the same events.
//!
//! The generator is the `nexmark` crate with a fixed seed and the day's start as base time,
//! so every run sees the same events: its one stream of persons, auctions and bids (1 : 3 : 46), run until it has made
//! `--events` bids, split into the topics `persons`, `auctions` (keyed by id) and `bids` as
//! JSON (untimed; only the topics the chosen queries read). Then each query runs as persistent
//! queries from the start of its topics until they have committed their positions at the end.
//! Its events/s per core is the events it read (the records of its topics) ÷ CPU seconds the
//! process used meanwhile (so a query that keeps more than one core busy is not flattered).
//! The batch figure is the same work without the log: DataFusion, on one thread, decodes the
//! same JSON records into Arrow, runs the equivalent query, and encodes its result rows as
//! JSON, timed end to end; the ratio is streaming over batch. `nexmark_events/s/core` counts
//! every event of the generator's stream up to the last bid instead (Nexmark's convention, in
//! which Flink's and Feldera's published figures are given: q3 and q8 are credited with the
//! bids they never read, 92 % of the stream).
//!
//! | query | Nexmark | here |
//! |---|---|---|
//! | q0 | pass-through | `SELECT auction, bidder, price, date_time FROM bids` |
//! | q1 | currency conversion | `price * 0.908` |
//! | q2 | selection | `WHERE auction % 123 = 0` |
//! | q3 | local item suggestion | auctions joined with the `persons_t` table (stream-table) |
//! | q4 | average price per category | bids joined with auctions `WITHIN (1 SECOND, 0 SECONDS)`, max per auction, then AVG per category over that table |
//! | q5 | hot items | bids per auction per 10 s window every 2 s (hopping, EMIT FINAL) |
//! | q7 | highest bid | max price per 10 s tumbling window (EMIT FINAL) |
//! | q8 | new users | persons joined with auctions `WITHIN 10 SECONDS`, same 10 s window, grouped |
//!
//! How they differ from Nexmark's definitions:
//!
//! - q3 is an incremental join of two unbounded inputs in Nexmark; here an auction is joined
//!   with its seller's row as of the auction (ksqlDB's stream-table join), so an auction
//!   whose seller registers later (the generator lets sellers run up to 10 ids ahead) is not
//!   in the result; the batch query says the same with `p.date_time <= a.date_time`. It also
//!   selects the join key (`p.id AS seller`), which a persistent join must (as in ksqlDB).
//!   The generator writes states in lower case, so the filter is `('or', 'id', 'ca')`.
//! - q4: Nexmark's join has no time bound; here the join window covers the longest auction
//!   (the run refuses events whose auctions outlast it), so with the `BETWEEN` the result is
//!   exact. Its two levels are two persistent queries, the second an aggregate over the
//!   first's table (each auction's maximum retracted and replaced as it rises); events/s
//!   counts the first level's input, CPU both.
//! - q5 stops at the per-window counts (Nexmark's second step, the max over them, is a query
//!   on that table).
//! - q8's tumbling-window join is a `WITHIN 10 SECONDS` join (two times in one 10 s window
//!   are less than 10 s apart) with the same-window condition in `WHERE`, grouped by person
//!   and window start: one row per person and window as in Nexmark, with the number of
//!   auctions, updated as they arrive rather than once when the window closes.
//!
//! `--check` compares each streaming result with the batch one (outside the timed part): the
//! records of a stream as a multiset, the latest row per key of a table. q5 and q7 are not
//! compared: their last windows never close (no later event passes their grace period).

mod batch;
mod check;
mod events;
mod queries;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_log::{FsyncPolicy, Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};

use self::events::Kind;
use self::queries::{Check, QUERIES, Query};
use super::CliError;

/// Arguments of `sluice bench nexmark`.
#[derive(Debug, Args)]
pub struct NexmarkArgs {
    /// Number of bid events (the persons and auctions generated alongside come on top, about
    /// 2 and 6.5 per 100 bids).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Run only these queries (comma-separated: q0, q1, q2, q3, q4, q5, q7, q8); default all.
    #[arg(long)]
    pub query: Option<String>,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Commit interval of the queries, in milliseconds (1 s: longer than `sluice sql`'s 100 ms
    /// default, as a throughput run commits less often than an interactive one).
    /// The run ends at the first commit after the last event, but the per-core figures count
    /// CPU time, which waiting does not use.
    #[arg(long, default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// Bytes of a table result's updates held per commit to write each key's latest only
    /// (the default, like `sluice sql`'s and ksqlDB's); 0 writes every update.
    #[arg(long, default_value_t = sluice_sql::record_cache::DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: usize,
    /// Compare each query's result with the batch result (q5 and q7 excepted), untimed; a
    /// difference fails the run.
    #[arg(long)]
    pub check: bool,
    /// Scratch folder (removed at the end). Default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// When appends are fsynced: always (group commit), interval[:MILLIS] or never
    /// (default interval:1000).
    #[arg(
        long,
        value_parser = crate::cli::parse_fsync,
        value_name = "always|interval[:MILLIS]|never"
    )]
    pub fsync: Option<FsyncPolicy>,
}

/// Nexmark's base time: the start of the current UTC day. Runs see the same events at the
/// same times of day (so windows fall alike); only the day changes. Not a fixed past date:
/// the log deletes closed segments whose records are older than `retention.ms` (7 days, by
/// record time, as Kafka does), and a query's output, stamped with event time, rolls a
/// segment at its first transaction marker (stamped now), so a check would find it gone.
fn base_time() -> u64 {
    const DAY_MS: u64 = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now - now % DAY_MS
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn sql_err(e: sluice_sql::SqlError) -> CliError {
    CliError::Usage(e.to_string())
}

impl NexmarkArgs {
    /// Runs the benchmark.
    pub fn run(self, options: LogOptions) -> Result<(), CliError> {
        let selected = self.selected()?;
        let base = self.dir.clone().unwrap_or_else(|| {
            std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        });
        let dir = base.join(format!("sluice-nexmark-{}", std::process::id()));
        let result = self.run_in(&dir, options, &selected);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// The queries `--query` names, in the table's order.
    fn selected(&self) -> Result<Vec<&'static Query>, CliError> {
        let Some(list) = self.query.as_deref() else {
            return Ok(QUERIES.iter().collect());
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        if let Some(unknown) = names
            .iter()
            .find(|n| !QUERIES.iter().any(|q| q.name.eq_ignore_ascii_case(n)))
        {
            let known: Vec<&str> = QUERIES.iter().map(|q| q.name).collect();
            return Err(CliError::Usage(format!(
                "--query: unknown query '{unknown}' ({})",
                known.join(", ")
            )));
        }
        Ok(QUERIES
            .iter()
            .filter(|q| names.iter().any(|n| q.name.eq_ignore_ascii_case(n)))
            .collect())
    }

    fn run_in(
        &self,
        dir: &std::path::Path,
        options: LogOptions,
        selected: &[&Query],
    ) -> Result<(), CliError> {
        let mut kinds: Vec<Kind> = selected.iter().flat_map(|q| q.reads.to_vec()).collect();
        kinds.sort();
        kinds.dedup();
        eprintln!(
            "Generating Nexmark events up to {} bids ({})...",
            self.events,
            kinds
                .iter()
                .map(|k| k.topic())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let events = events::generate(self.events as usize, &kinds, base_time())?;
        if kinds.contains(&Kind::Bid)
            && kinds.contains(&Kind::Auction)
            && events.max_auction_ms > queries::Q4_WINDOW_MS
        {
            return Err(CliError::Usage(format!(
                "an auction lasts {} ms, longer than q4's join window ({} ms)",
                events.max_auction_ms,
                queries::Q4_WINDOW_MS
            )));
        }

        let log = Log::open(dir.join("log"), options)?;
        let mut engine = Engine::open_with(
            &log,
            EngineConfig {
                state: Some(sluice_state::StateConfig::new(dir.join("state"))),
                runner: super::sql::runner_config(self.commit_interval_ms, self.cache_max_bytes),
                start_queries: true,
            },
        )
        .map_err(sql_err)?;
        for source in queries::SOURCES {
            engine
                .execute(&source.replace("{p}", &self.partitions.to_string()))
                .map_err(sql_err)?;
        }
        let mut producer = log.producer(ProducerConfig::default())?;
        for kind in &kinds {
            for e in events.of(*kind) {
                producer.send(
                    kind.topic(),
                    Record {
                        key: e.key.clone(),
                        value: Some(e.value.clone()),
                        headers: Vec::new(),
                        timestamp: e.timestamp,
                    },
                )?;
            }
        }
        producer.flush()?;
        drop(producer);

        for q in selected {
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            for statement in q.streaming {
                engine.execute(statement).map_err(sql_err)?;
            }
            if !engine
                .wait_caught_up(Duration::from_secs(3600))
                .map_err(sql_err)?
            {
                return Err(CliError::Usage(format!("{} did not finish", q.name)));
            }
            let seconds = t0.elapsed().as_secs_f64();
            let cpu = (cpu_seconds() - cpu0).max(1e-9);
            // Stopped before the batch run, which would otherwise share the cores with their
            // idle polling; their output topics stay for the check.
            engine.execute("TERMINATE ALL").map_err(sql_err)?;
            let result = batch::run(engine.catalog(), &events, q)?;
            let read: usize = q.reads.iter().map(|k| events.of(*k).len()).sum();
            let per_core = read as f64 / cpu;
            let batch_per_core = read as f64 / result.seconds.max(1e-9);
            println!(
                "{} events={read} seconds={seconds:.3} cores={:.2} events/s/core={per_core:.0} batch_events/s/core={batch_per_core:.0} ratio={:.3} nexmark_events/s/core={:.0}",
                q.name,
                cpu / seconds,
                per_core / batch_per_core,
                events.total as f64 / cpu
            );
            if self.check && q.check != Check::No {
                let rows = check::compare(&log, engine.catalog(), q, &result.batches)?;
                println!("{} check=ok rows={rows}", q.name);
            }
        }
        engine.shutdown();
        drop(engine);
        log.close()?;
        Ok(())
    }
}
