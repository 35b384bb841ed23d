//! `sluice bench nexmark`: Nexmark bids through persistent SQL queries, beside DataFusion's
//! batch evaluation of the same query over the same events.
//!
//! The generator is the `nexmark` crate with a fixed base time, so every run sees the same
//! events. Bids are loaded (untimed) into the topic `bids` as JSON; then each query runs as
//! a persistent query from the start of the topic until it has committed its position at
//! the end. Its events/s per core is events ÷ CPU seconds the process used meanwhile (so a
//! query that keeps more than one core busy is not flattered). The batch figure is the same
//! work without the log: DataFusion, on one thread, decodes the same JSON bids into Arrow,
//! runs the equivalent query, and encodes its result rows as JSON, timed end to end; the
//! ratio is streaming over batch.
//!
//! | query | Nexmark | here |
//! |---|---|---|
//! | q0 | pass-through | `SELECT auction, bidder, price, date_time FROM bids` |
//! | q1 | currency conversion | `price * 0.908` |
//! | q2 | selection | `WHERE auction % 123 = 0` |
//! | q5 | hot items | bids per auction per 10 s window every 2 s (hopping, EMIT FINAL) |
//! | q7 | highest bid | max price per 10 s tumbling window (EMIT FINAL) |
//!
//! q5 stops at the per-window counts (Nexmark's second step, the max over them, is a query on
//! that table) because queries do not nest yet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::format::Input;
use sluice_sql::runner::RunnerConfig;

use super::CliError;

/// Arguments of `sluice bench nexmark`.
#[derive(Debug, Args)]
pub struct NexmarkArgs {
    /// Number of bid events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Run only this query (q0, q1, q2, q5, q7); default all.
    #[arg(long)]
    pub query: Option<String>,
    /// Partitions of the bids topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Commit interval of the queries, in milliseconds (the default, like `sluice sql`'s).
    /// The run ends at the first commit after the last event, but the per-core figures count
    /// CPU time, which waiting does not use.
    #[arg(long, default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// Scratch folder (removed at the end). Default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Nexmark's base time, fixed so runs are comparable: 2023-01-01T00:00:00Z.
const BASE_TIME: u64 = 1_672_531_200_000;

const QUERIES: &[(&str, &str, &str)] = &[
    (
        "q0",
        "CREATE STREAM q0 AS SELECT auction, bidder, price, date_time FROM bids",
        "SELECT auction, bidder, price, date_time FROM bids",
    ),
    (
        "q1",
        "CREATE STREAM q1 AS SELECT auction, bidder, price * 0.908 AS price, date_time FROM bids",
        "SELECT auction, bidder, price * 0.908 AS price, date_time FROM bids",
    ),
    (
        "q2",
        "CREATE STREAM q2 AS SELECT auction, price FROM bids WHERE auction % 123 = 0",
        "SELECT auction, price FROM bids WHERE auction % 123 = 0",
    ),
    (
        "q5",
        "CREATE TABLE q5 AS SELECT auction, COUNT(*) AS num FROM bids \
         WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 0 SECONDS) \
         GROUP BY auction EMIT FINAL",
        "SELECT auction, ws, COUNT(*) AS num FROM (SELECT auction, \
         unnest(make_array(date_time - date_time % 2000, date_time - date_time % 2000 - 2000, \
         date_time - date_time % 2000 - 4000, date_time - date_time % 2000 - 6000, \
         date_time - date_time % 2000 - 8000)) AS ws FROM bids) GROUP BY auction, ws",
    ),
    (
        "q7",
        "CREATE TABLE q7 AS SELECT 'all' AS bucket, MAX(price) AS maxprice FROM bids \
         WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY 'all' EMIT FINAL",
        "SELECT date_time - date_time % 10000 AS ws, MAX(price) AS maxprice FROM bids GROUP BY 1",
    ),
];

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
        let selected: Vec<&(&str, &str, &str)> = QUERIES
            .iter()
            .filter(|q| {
                self.query
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case(q.0))
            })
            .collect();
        if selected.is_empty() {
            return Err(CliError::Usage(format!(
                "--query: unknown query '{}' (q0, q1, q2, q5, q7)",
                self.query.unwrap_or_default()
            )));
        }
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

    fn run_in(
        &self,
        dir: &std::path::Path,
        options: LogOptions,
        selected: &[&(&str, &str, &str)],
    ) -> Result<(), CliError> {
        let log = Log::open(dir.join("log"), options)?;
        let mut engine = Engine::open_with(
            &log,
            EngineConfig {
                state: Some(sluice_state::StateConfig::new(dir.join("state"))),
                runner: RunnerConfig {
                    commit_interval: Duration::from_millis(self.commit_interval_ms.max(1)),
                    ..RunnerConfig::default()
                },
                start_queries: true,
            },
        )
        .map_err(sql_err)?;
        engine
            .execute(&format!(
                "CREATE STREAM bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
                 url VARCHAR, date_time BIGINT, extra VARCHAR) \
                 WITH (topic='bids', partitions={}, timestamp='date_time')",
                self.partitions
            ))
            .map_err(sql_err)?;
        eprintln!("Generating {} Nexmark bids...", self.events);
        let values = generate(self.events as usize)?;
        let mut producer = log.producer(ProducerConfig::default())?;
        for (i, v) in values.iter().enumerate() {
            producer.send(
                "bids",
                Record {
                    key: None,
                    value: Some(v.clone()),
                    headers: Vec::new(),
                    timestamp: BASE_TIME as i64 + i as i64,
                },
            )?;
        }
        producer.flush()?;
        let def = engine.catalog().get("BIDS").map_err(sql_err)?.clone();
        for (name, persistent, batch_sql) in selected {
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            engine.execute(persistent).map_err(sql_err)?;
            if !engine
                .wait_caught_up(Duration::from_secs(3600))
                .map_err(sql_err)?
            {
                return Err(CliError::Usage(format!("{name} did not finish")));
            }
            let seconds = t0.elapsed().as_secs_f64();
            let cpu = (cpu_seconds() - cpu0).max(1e-9);
            engine.execute("TERMINATE ALL").map_err(sql_err)?;
            let batch_seconds = run_batch(&def, &values, batch_sql)?;
            let events = self.events as f64;
            let per_core = events / cpu;
            let batch_per_core = events / batch_seconds.max(1e-9);
            println!(
                "{name} events={} seconds={seconds:.3} cores={:.2} events/s/core={per_core:.0} batch_events/s/core={batch_per_core:.0} ratio={:.3}",
                self.events,
                cpu / seconds,
                per_core / batch_per_core
            );
        }
        engine.shutdown();
        drop(engine);
        log.close()?;
        Ok(())
    }
}

/// The first `n` bids of a fixed-seed generator, as JSON values.
fn generate(n: usize) -> Result<Vec<Bytes>, CliError> {
    let config = nexmark::config::NexmarkConfig {
        base_time: BASE_TIME,
        ..Default::default()
    };
    let generator =
        nexmark::EventGenerator::new(config).with_type_filter(nexmark::event::EventType::Bid);
    let mut out = Vec::with_capacity(n);
    for event in generator.take(n) {
        let nexmark::event::Event::Bid(b) = event else {
            continue;
        };
        let v = serde_json::json!({
            "auction": b.auction,
            "bidder": b.bidder,
            "price": b.price,
            "channel": b.channel,
            "url": b.url,
            "date_time": b.date_time,
            "extra": b.extra,
        });
        out.push(Bytes::from(
            serde_json::to_vec(&v).map_err(|e| CliError::Usage(e.to_string()))?,
        ));
    }
    Ok(out)
}

/// Decodes the bids with the stream's own decoder, runs `sql` over them with DataFusion on
/// one thread and encodes the result as JSON; returns the seconds it all took.
fn run_batch(
    def: &sluice_sql::catalog::SourceDef,
    values: &[Bytes],
    sql: &str,
) -> Result<f64, CliError> {
    let df_err =
        |e: datafusion::error::DataFusionError| CliError::Usage(format!("batch query: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| CliError::io("start a runtime", e))?;
    let t0 = Instant::now();
    let decoder = def.decoder().map_err(sql_err)?;
    let mut input: Vec<RecordBatch> = Vec::new();
    for chunk in values.chunks(8192) {
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .map(|v| Input {
                key: None,
                value: Some(v),
                timestamp: 0,
            })
            .collect();
        input.push(decoder.decode(&inputs).map_err(sql_err)?.batch);
    }
    let schema = input.first().map_or_else(
        || {
            Arc::new(Schema::new(vec![Field::new(
                "auction",
                DataType::Int64,
                true,
            )]))
        },
        |b| b.schema(),
    );
    // The decoded columns are upper case (ksqlDB's rule); DataFusion's own folding (to
    // lower case) is off and the batch SQL is read in upper case, as Sluice reads it.
    let config = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(1)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = SessionContext::new_with_config(config);
    let table = MemTable::try_new(schema, vec![input]).map_err(df_err)?;
    ctx.register_table(
        datafusion::common::TableReference::bare("BIDS"),
        Arc::new(table),
    )
    .map_err(df_err)?;
    let sql = sql.to_uppercase();
    let batches = rt
        .block_on(async { ctx.sql(&sql).await?.collect().await })
        .map_err(df_err)?;
    let mut encoded = 0usize;
    for b in &batches {
        encoded += sluice_sql::format::encode_values(sluice_sql::format::Format::Json, b)
            .map_err(sql_err)?
            .len();
    }
    let seconds = t0.elapsed().as_secs_f64();
    tracing::debug!(rows = encoded, seconds, "batch run");
    Ok(seconds)
}
