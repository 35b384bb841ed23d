//! `sluice bench ingest`: what HTTP ingest with idempotency keys leaves behind, and how fast
//! a worker answers again after a kill.
//!
//! A real `sluice run` process takes `POST /ingest/events` requests from a few concurrent
//! clients for `--seconds`, each request with its own `Idempotency-Key` and a batch of
//! 200-byte JSON records. Then it prints the bytes of `__sluice_source_positions` (what every
//! source start reads) per MB of ingested data, SIGKILLs the worker, restarts it, and prints
//! the time from the restart to the first `200` answer of a new request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::CliError;
use super::bench::Scratch;
use super::bench_eos::RunProcess;

/// Arguments of `sluice bench ingest`.
#[derive(Debug, Args)]
pub struct IngestBenchArgs {
    /// How long to ingest before the kill.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Records per request.
    #[arg(long, default_value_t = 10)]
    pub records_per_request: usize,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const PIPELINE: &str = r#"
[[topics]]
name = "events"

[[sources]]
name = "in"
topic = "events"
http = { key-field = "id" }
"#;

/// The sum of every `size_bytes` in a topic description.
fn topic_bytes(api: &super::remote::Remote, topic: &str) -> Result<u64, CliError> {
    let text = api.get_text(&format!("/topics/{topic}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("GET /topics/{topic}: {e}")))?;
    Ok(v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["size_bytes"].as_u64())
        .sum())
}

impl IngestBenchArgs {
    /// Runs it.
    pub fn run(self) -> Result<(), CliError> {
        let scratch = Scratch::under(self.dir.as_deref(), "sluice-bench-ingest")?;
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("pipelines"))
            .map_err(|e| CliError::io("create the pipelines folder", e))?;
        std::fs::write(dir.join("pipelines/ingest.toml"), PIPELINE)
            .map_err(|e| CliError::io("write the pipeline", e))?;
        let mut worker = RunProcess::start(dir)?;
        let base = wait_for_api(&mut worker)?;
        eprintln!(
            "Ingesting for {} s: {} clients, {} records of 200 bytes per request, a new Idempotency-Key each.",
            self.seconds, self.clients, self.records_per_request
        );
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..self.clients)
            .map(|c| {
                let (stop, requests, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&requests),
                    Arc::clone(&failures),
                );
                let url = format!("{base}/ingest/events");
                let per = self.records_per_request;
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let body: String = (0..per)
                            .map(|i| {
                                format!(
                                    "{{\"id\": \"c{c}-{n}-{i}\", \"payload\": \"{:0>160}\"}}\n",
                                    n
                                )
                            })
                            .collect();
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/x-ndjson")
                            .header("idempotency-key", format!("client-{c}-request-{n:012}"))
                            .body(body)
                            .send();
                        match sent {
                            Ok(r) if r.status().is_success() => {
                                requests.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let mut last = Instant::now();
        while start.elapsed() < Duration::from_secs(self.seconds) {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() >= Duration::from_secs(30) {
                last = Instant::now();
                eprintln!(
                    "  {:>4} s: {} requests answered",
                    start.elapsed().as_secs(),
                    requests.load(Ordering::Relaxed)
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        let api = worker
            .api()
            .ok_or_else(|| CliError::Usage("the worker's API went away".into()))?;
        let data = topic_bytes(api, "events")?;
        let positions = topic_bytes(api, crate::worker::POSITIONS_TOPIC)?;
        let n = requests.load(Ordering::Relaxed);
        worker.kill();
        let restarted = Instant::now();
        let mut worker = RunProcess::start(dir)?;
        let base = wait_for_api(&mut worker)?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let first_answer = loop {
            let r = http
                .post(format!("{base}/ingest/events"))
                .header("idempotency-key", "after-the-restart")
                .body("{\"id\": \"probe\"}")
                .send();
            if r.is_ok_and(|r| r.status().is_success()) {
                break restarted.elapsed();
            }
            if restarted.elapsed() > Duration::from_secs(300) {
                worker.kill();
                return Err(CliError::Usage(
                    "no answer within 300 s of the restart".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        worker.kill();
        let mb = data as f64 / 1e6;
        println!(
            "ingest seconds={} requests={n} failed={} data_mb={mb:.1} positions_mb={:.2} positions_bytes_per_data_mb={:.0} restart_to_first_answer_s={:.2}",
            self.seconds,
            failures.load(Ordering::Relaxed),
            positions as f64 / 1e6,
            positions as f64 / mb.max(1e-9),
            first_answer.as_secs_f64()
        );
        Ok(())
    }
}

/// Waits for a starting worker's API address.
fn wait_for_api(worker: &mut RunProcess) -> Result<String, CliError> {
    let start = Instant::now();
    loop {
        if let Some(api) = worker.api() {
            return Ok(api.base().to_string());
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(CliError::Usage(
                "the worker did not start within 300 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
