//! `sluice bench pipeline`: a whole pipeline end to end — file source → topic → SQL filter →
//! object-store sink writing Parquet — over 200-byte JSON records, timed from deploy until
//! every passing record is durable in the store (the sink's offsets are committed), then
//! checked by counting the rows in the Parquet objects.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_log::{Log, LogOptions};
use sluice_sql::engine::Engine;

use super::CliError;
use crate::worker::Worker;

/// Arguments of `sluice bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineBenchArgs {
    /// Input records (200-byte JSON lines).
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Where the objects go (default: a folder in the scratch directory, `file://`).
    #[arg(long)]
    pub url: Option<String>,
    /// Object-store options (`KEY=VALUE`, e.g. endpoint, allow_http, region, access keys).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One input line of exactly 200 bytes (plus the newline); `amount` is 0..=99, so the
/// filter `amount >= 10` passes 90% of them. Times start at `t0` (now: older record times
/// would fall to the topics' 7-day retention while the benchmark runs).
fn line(i: u64, t0: u64, out: &mut Vec<u8>) {
    out.clear();
    let amount = (i.wrapping_mul(2_654_435_761) >> 7) % 100;
    let _ = write!(
        out,
        r#"{{"id":{i},"user":"user-{:05}","amount":{amount},"currency":"EUR","category":"cat-{:02}","ts":{},"note":""#,
        i % 50_000,
        i % 17,
        t0 + i / 1000
    );
    let pad = 200usize.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n(b'x', pad));
    out.extend_from_slice(b"\"}");
}

fn passes(i: u64) -> bool {
    (i.wrapping_mul(2_654_435_761) >> 7) % 100 >= 10
}

/// Writes `records` input lines to `path`; returns how many pass the filter.
pub(crate) fn write_input(path: &Path, records: u64) -> Result<u64, CliError> {
    let f = std::fs::File::create(path)
        .map_err(|e| CliError::io(format!("create {}", path.display()), e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = Vec::with_capacity(256);
    let t0 = sluice_log::record::now_ms() as u64;
    for i in 0..records {
        line(i, t0, &mut buf);
        buf.push(b'\n');
        w.write_all(&buf)
            .map_err(|e| CliError::io("write input", e))?;
    }
    w.flush().map_err(|e| CliError::io("write input", e))?;
    Ok((0..records).filter(|i| passes(*i)).count() as u64)
}

/// Rows in the Parquet files under `dir`.
fn parquet_rows(dir: &Path) -> Result<i64, CliError> {
    let mut rows = 0;
    for (p, _) in super::bench::files_under(dir)? {
        if p.extension().is_some_and(|x| x == "parquet") {
            let f = std::fs::File::open(&p)
                .map_err(|e| CliError::io(format!("open {}", p.display()), e))?;
            let r = parquet::file::reader::SerializedFileReader::new(f)
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            rows += parquet::file::reader::FileReader::metadata(&r)
                .file_metadata()
                .num_rows();
        }
    }
    Ok(rows)
}

impl PipelineBenchArgs {
    /// Runs it.
    pub fn run(self) -> Result<(), CliError> {
        let scratch = super::bench::Scratch::under(self.dir.as_deref(), "sluice-bench-pipeline")?;
        let dir = scratch.path();
        let input = dir.join("events.jsonl");
        let expected = write_input(&input, self.records)?;
        let objects = dir.join("objects");
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| format!("file://{}", objects.display()));
        let options: Vec<String> = super::parse_pairs(&self.options)?
            .into_iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        let pipeline = format!(
            r#"
sql = """
CREATE STREAM IF NOT EXISTS events (id BIGINT, user VARCHAR, amount BIGINT, currency VARCHAR,
  category VARCHAR, ts BIGINT, note VARCHAR) WITH (topic = 'events', timestamp = 'ts');
CREATE STREAM IF NOT EXISTS big_events WITH (topic = 'big_events', partitions = {partitions}) AS
  SELECT * FROM events WHERE amount >= 10;
"""

[[topics]]
name = "events"
partitions = {partitions}

[[sources]]
name = "events-file"
topic = "events"
file = {{ path = "{input}", format = "json" }}

[[sinks]]
name = "events-parquet"
topic = "big_events"
object-store = {{ url = "{url}", format = "parquet", flush-records = 250000, flush-idle = "0s", options = {{ {options} }} }}
"#,
            partitions = self.partitions,
            input = input.display(),
            options = options.join(", "),
        );
        let file = dir.join("bench.toml");
        std::fs::write(&file, pipeline)
            .map_err(|e| CliError::io(format!("write {}", file.display()), e))?;
        let p = crate::pipeline::load(&file)?;
        let log = Log::open(dir.join("data"), LogOptions::default())?;
        let engine = Engine::open(&log).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut worker = Worker::new(&log, engine);
        eprintln!(
            "Pipeline: {} records of 200-byte JSON → topic events ({} partitions) → SQL filter (90% pass) → Parquet at {url}",
            self.records, self.partitions
        );
        let start = Instant::now();
        worker.deploy(&p)?;
        let group = crate::worker::sink_group(&p.name, "events-parquet");
        let mut last_report = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let sink = &worker.pipelines()[0].tasks[1].status;
            let written = sink.records_out.load(Ordering::Relaxed);
            // Done when the sink has every passing record and its committed offsets reach
            // the end of the filtered topic (everything is durable in the store).
            if written >= expected {
                let lag: i64 = log
                    .describe_group(&group)
                    .map(|g| g.partitions.iter().map(|p| p.lag).sum())
                    .unwrap_or(1);
                let committed = log
                    .describe_group(&group)
                    .is_some_and(|g| g.partitions.len() == self.partitions as usize);
                if committed && lag == 0 {
                    break;
                }
            }
            if let Some(e) = sink.error.lock().as_deref() {
                return Err(CliError::Usage(format!("the sink failed: {e}")));
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "  {:.0} s: source {} records, sink {} of {expected}",
                    start.elapsed().as_secs_f64(),
                    worker.pipelines()[0].tasks[0]
                        .status
                        .records_out
                        .load(Ordering::Relaxed),
                    written
                );
            }
            if start.elapsed() > Duration::from_secs(1800) {
                return Err(CliError::Usage(
                    "the pipeline did not finish in 30 minutes".into(),
                ));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        worker.shutdown();
        drop(worker);
        log.close()?;
        if self.url.is_none() {
            let rows = parquet_rows(&objects)?;
            if rows as u64 != expected {
                return Err(CliError::Usage(format!(
                    "the Parquet objects hold {rows} rows, expected {expected}"
                )));
            }
            eprintln!("Checked: the Parquet objects hold all {rows} passing records.");
        }
        println!(
            "pipeline records={} seconds={seconds:.2} records/s={:.0}",
            self.records,
            self.records as f64 / seconds
        );
        Ok(())
    }
}
