//! `sluice bench eos`: what exactly-once costs, in one run.
//!
//! 1. **Throughput**, exactly-once against at-least-once at the same commit interval (1 s),
//!    alternating rounds on fresh data directories: file source → topic → SQL filter →
//!    Parquet object-store sink, plus a windowed aggregate over the filtered stream. The rate
//!    is the slope of a least-squares line through the records done at the end of the chain
//!    (the sink's records written and the aggregate's records read, the slower of the two)
//!    between 10% and 90% of the input: steady state, without start-up and the last commits
//!    (exactly-once adds up to one commit interval of latency per stage, which is latency,
//!    not throughput).
//! 2. **Recovery** after a kill with about 1 GB of query state: a real `sluice run` process
//!    builds a table of 1 KB values over many keys (`LATEST_BY_OFFSET`), is SIGKILLed once
//!    it has caught up, and restarts; recovery is the time from the restart until the query
//!    has reopened its state and read new input (a probe line appended while it was down,
//!    which reaches the query when the source's first epoch commits: up to one commit
//!    interval of the figure). Then once more with the state's local files
//!    deleted, so the store is rebuilt from its changelog alone.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_log::{Log, LogOptions};
use sluice_sql::engine::Engine;

use super::CliError;
use super::remote::Remote;
use crate::pipeline::Guarantee;
use crate::worker::Worker;

/// Arguments of `sluice bench eos`.
#[derive(Debug, Args)]
pub struct EosBenchArgs {
    /// Input records of each throughput round (200-byte JSON lines).
    #[arg(long, default_value_t = 3_000_000)]
    pub records: u64,
    /// Throughput rounds per guarantee (alternating; the best of each is reported).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Query state for the recovery test, in MiB (1 KiB values).
    #[arg(long, default_value_t = 1024)]
    pub state_mb: u64,
    /// Skip the recovery test.
    #[arg(long)]
    pub no_recovery: bool,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Least-squares slope of `(seconds, records)` samples.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den > 0.0 { num / den } else { 0.0 }
}

impl EosBenchArgs {
    /// Runs it.
    pub fn run(self) -> Result<(), CliError> {
        let scratch = super::bench::Scratch::under(self.dir.as_deref(), "sluice-bench-eos")?;
        let dir = scratch.path();
        let input = dir.join("events.jsonl");
        let expected = super::bench_pipeline::write_input(&input, self.records)?;
        eprintln!(
            "Throughput: {} records of 200-byte JSON → topic → SQL filter (90% pass) → Parquet files, and a 1-minute windowed aggregate per category over the filtered stream; commit-interval 1 s; {} round(s) each, alternating.",
            self.records, self.rounds
        );
        let mut best = [0.0f64; 2];
        for round in 0..self.rounds {
            for (i, g) in [Guarantee::AtLeastOnce, Guarantee::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                let rate = throughput_round(dir, &input, expected, g, round)?;
                eprintln!("  round {}: {g}: {rate:.0} records/s", round + 1);
                best[i] = best[i].max(rate);
            }
        }
        let ratio = best[1] / best[0];
        println!(
            "eos throughput exactly-once={:.0} at-least-once={:.0} records/s ratio={ratio:.3}",
            best[1], best[0]
        );
        if !self.no_recovery {
            recovery(dir, self.state_mb)?;
        }
        Ok(())
    }
}

/// One pipeline run; returns its steady-state rate.
fn throughput_round(
    dir: &Path,
    input: &Path,
    expected: u64,
    guarantee: Guarantee,
    round: u32,
) -> Result<f64, CliError> {
    let run = dir.join(format!("run-{guarantee}-{round}"));
    std::fs::create_dir_all(&run).map_err(|e| CliError::io("create the run folder", e))?;
    let pipeline = format!(
        r#"
guarantee = "{guarantee}"
commit-interval = "1s"
sql = """
CREATE STREAM IF NOT EXISTS events (id BIGINT, user VARCHAR, amount BIGINT, currency VARCHAR,
  category VARCHAR, ts BIGINT, note VARCHAR) WITH (topic = 'events', timestamp = 'ts');
CREATE STREAM IF NOT EXISTS big_events WITH (topic = 'big_events', partitions = 2) AS
  SELECT * FROM events WHERE amount >= 10;
CREATE TABLE IF NOT EXISTS spend AS
  SELECT category, COUNT(*) AS n, SUM(amount) AS total FROM big_events
  WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY category EMIT FINAL;
"""

[[topics]]
name = "events"
partitions = 2

[[sources]]
name = "events-file"
topic = "events"
file = {{ path = "{input}", format = "json" }}

[[sinks]]
name = "events-parquet"
topic = "big_events"
object-store = {{ url = "file://{objects}", format = "parquet", flush-records = 250000, flush-idle = "0s" }}
"#,
        input = input.display(),
        objects = run.join("objects").display(),
    );
    let file = run.join("bench.toml");
    std::fs::write(&file, pipeline)
        .map_err(|e| CliError::io(format!("write {}", file.display()), e))?;
    let p = crate::pipeline::load(&file)?;
    let log = Log::open(run.join("data"), LogOptions::default())?;
    let engine = Engine::open(&log).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut worker = Worker::new(&log, engine);
    let start = Instant::now();
    worker.deploy(&p)?;
    let aggregate = worker
        .engine()
        .catalog()
        .queries()
        .find(|q| q.sink == "SPEND")
        .map(|q| q.id.clone())
        .ok_or_else(|| CliError::Usage("the aggregate query did not start".into()))?;
    let stats = worker
        .engine()
        .queries()
        .stats(&aggregate)
        .ok_or_else(|| CliError::Usage("the aggregate query is not running".into()))?;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let sink = &worker.pipelines()[0].tasks[1].status;
        if let Some(e) = sink.error.lock().as_deref() {
            return Err(CliError::Usage(format!("the sink failed: {e}")));
        }
        let done = sink
            .records_out
            .load(Ordering::Relaxed)
            .min(stats.records_in.load(Ordering::Relaxed));
        let frac = done as f64 / expected as f64;
        if (0.1..=0.9).contains(&frac) {
            samples.push((start.elapsed().as_secs_f64(), done as f64));
        }
        if frac > 0.9 {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            return Err(CliError::Usage(
                "the pipeline did not finish in 30 minutes".into(),
            ));
        }
    }
    worker.shutdown();
    drop(worker);
    log.close()?;
    let _ = std::fs::remove_dir_all(&run);
    if samples.len() < 10 {
        return Err(CliError::Usage(
            "too few samples between 10% and 90%: use more --records".into(),
        ));
    }
    Ok(slope(&samples))
}

/// A `sluice run` child process.
pub(super) struct RunProcess {
    child: Child,
    data: PathBuf,
    /// Its API, once it has written its address.
    api: Option<Remote>,
}

impl RunProcess {
    /// Starts `sluice run` over `<dir>/data` and `<dir>/pipelines`.
    pub(super) fn start(dir: &Path) -> Result<RunProcess, CliError> {
        let exe = std::env::current_exe().map_err(|e| CliError::io("find the sluice binary", e))?;
        let data = dir.join("data");
        let _ = std::fs::remove_file(data.join(super::run::WORKER_FILE));
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&data)
            .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(dir.join("pipelines"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CliError::io("start sluice run", e))?;
        Ok(RunProcess {
            child,
            data,
            api: None,
        })
    }

    /// The records the persistent queries have read since the process started.
    fn query_records_in(&mut self) -> Option<u64> {
        if self.api.is_none() {
            self.api = Remote::find(&self.data);
        }
        let text = self.api.as_ref()?.get_text("/metrics").ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("sluice_query_records_in_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// Waits until the queries have read `n` records.
    fn wait_for(&mut self, n: u64, limit: Duration, what: &str) -> Result<Duration, CliError> {
        let start = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let got = self.query_records_in().unwrap_or(0);
            if got >= n {
                return Ok(start.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CliError::Usage(format!("the worker exited: {status}")));
            }
            if start.elapsed() > limit {
                return Err(CliError::Usage(format!("{what}: not done in {limit:?}")));
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!("  {what}: {got} of {n} records");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its API, once it has written its address.
    pub(super) fn api(&mut self) -> Option<&Remote> {
        if self.api.is_none() {
            self.api = Remote::find(&self.data);
        }
        self.api.as_ref()
    }

    /// SIGKILL, and wait for it.
    pub(super) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends one small record (a key of its own) to the recovery input.
fn probe(input: &Path, n: u64) -> Result<(), CliError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(input)
        .map_err(|e| CliError::io(format!("open {}", input.display()), e))?;
    writeln!(f, "{{\"k\": \"probe-{n}\", \"payload\": \"x\"}}")
        .map_err(|e| CliError::io("append the probe", e))
}

fn recovery(dir: &Path, state_mb: u64) -> Result<(), CliError> {
    let dir = dir.join("recovery");
    std::fs::create_dir_all(dir.join("pipelines"))
        .map_err(|e| CliError::io("create the recovery folder", e))?;
    let input = dir.join("blobs.jsonl");
    let keys = state_mb * 1024;
    {
        let f = std::fs::File::create(&input)
            .map_err(|e| CliError::io(format!("create {}", input.display()), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut payload = vec![0u8; 1000];
        for i in 0..keys {
            for b in payload.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = b'a' + (x % 26) as u8;
            }
            w.write_all(format!("{{\"k\": \"key-{i:08}\", \"payload\": \"").as_bytes())
                .and_then(|()| w.write_all(&payload))
                .and_then(|()| w.write_all(b"\"}\n"))
                .map_err(|e| CliError::io("write the recovery input", e))?;
        }
        w.flush()
            .map_err(|e| CliError::io("write the recovery input", e))?;
    }
    let pipeline = format!(
        r#"
sql = """
CREATE STREAM IF NOT EXISTS blobs (k VARCHAR KEY, payload VARCHAR) WITH (topic = 'blobs');
CREATE TABLE IF NOT EXISTS latest AS
  SELECT k, LATEST_BY_OFFSET(payload) AS payload FROM blobs GROUP BY k;
"""

[[topics]]
name = "blobs"
partitions = 2

[[sources]]
name = "blobs-file"
topic = "blobs"
file = {{ path = "{input}", format = "json", key-field = "k" }}
"#,
        input = input.display()
    );
    std::fs::write(dir.join("pipelines/recovery.toml"), pipeline)
        .map_err(|e| CliError::io("write the recovery pipeline", e))?;
    eprintln!(
        "Recovery: building {keys} keys × 1 KiB values of query state (LATEST_BY_OFFSET per key) in a `sluice run` process..."
    );
    let mut w = RunProcess::start(&dir)?;
    let built = w.wait_for(keys, Duration::from_secs(3600), "building")?;
    // One more commit interval, so the last epoch is committed and in RocksDB.
    std::thread::sleep(Duration::from_secs(2));
    let state: u64 = super::bench::files_under(&dir.join("data/state"))?
        .iter()
        .map(|(_, m)| m.len())
        .sum();
    eprintln!(
        "  built in {:.1} s; state on disk {:.2} GiB; SIGKILL",
        built.as_secs_f64(),
        state as f64 / (1u64 << 30) as f64
    );
    w.kill();
    let mut figures = Vec::new();
    for (round, wipe) in [(1, false), (2, true)] {
        if wipe {
            std::fs::remove_dir_all(dir.join("data/state"))
                .map_err(|e| CliError::io("delete the local state", e))?;
        }
        probe(&input, round)?;
        let mut w = RunProcess::start(&dir)?;
        let took = w.wait_for(1, Duration::from_secs(1800), "recovering")?;
        eprintln!(
            "  restart {}: the query read new input {:.2} s after the process started",
            if wipe {
                "with the local state deleted (rebuilt from the changelog)"
            } else {
                "after SIGKILL (local RocksDB + changelog tail)"
            },
            took.as_secs_f64()
        );
        figures.push(took.as_secs_f64());
        // Let the probe's epoch commit, so the next round does not replay it (which would be
        // read at once and skip the wait for a source commit the other rounds include).
        std::thread::sleep(Duration::from_secs(2));
        w.kill();
    }
    println!(
        "eos recovery state={:.2}GiB keys={keys} after-kill={:.2}s rebuild-from-changelog={:.2}s",
        state as f64 / (1u64 << 30) as f64,
        figures[0],
        figures[1]
    );
    Ok(())
}
