//! `sluice bench tiered`: tiered storage against an S3 server (moto, from the tests' venv,
//! started by the benchmark).
//!
//! moto runs at the lowest CPU priority: it stands in for a remote service.
//!
//! 1. **Produce, tiering on vs off, in one run**: two topics of the same log, one with
//!    `remote.storage.enable=true` and a small `local.retention.bytes`, written in alternating
//!    rounds (so both see the same machine) while the upload thread copies the tiered topic's
//!    closed segments to the store; the ratio tiered/plain is the figure (target ≥ 0.9).
//! 2. **Read back**: with the local copies deleted, every old segment is read from the store
//!    through the partition's fetch (as a consumer from the beginning does), in MB/s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use sluice_log::remote::RemoteStorage;
use sluice_log::{Isolation, Log, LogOptions, ProducerConfig, Record};

use super::CliError;
use super::bench::Scratch;
use super::bench_sink::{free_port, start, venv};

/// Arguments of `sluice bench tiered`.
#[derive(Debug, Args)]
pub struct TieredBenchArgs {
    /// Megabytes written to each topic (and read back from the store).
    #[arg(long, default_value_t = 1024)]
    pub mb: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// `segment.bytes` of both topics, in megabytes.
    #[arg(long, default_value_t = 64)]
    pub segment_mb: u64,
    /// Alternating produce rounds per topic.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Tier to this store instead of a moto server started by the benchmark (a real bucket,
    /// or `file:///path` for the log's own cost without a network).
    #[arg(long)]
    pub url: Option<String>,
    /// A setting of the `--url` store, KEY=VALUE with object_store's keys (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

impl TieredBenchArgs {
    /// Runs the benchmark.
    pub fn run(self) -> Result<(), CliError> {
        if self.mb == 0 || self.rounds == 0 || self.segment_mb == 0 || self.record_bytes < 16 {
            return Err(CliError::Usage(
                "--mb, --rounds and --segment-mb must be positive, --record-bytes at least 16"
                    .into(),
            ));
        }
        let scratch = Scratch::under(self.dir.as_deref(), "sluice-bench-tiered")?;
        let dir = scratch.path().to_path_buf();
        let result = self.measure(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn measure(&self, dir: &std::path::Path) -> Result<(), CliError> {
        let (_moto, storage) = match &self.url {
            Some(url) => {
                let options = self
                    .options
                    .iter()
                    .map(|p| sluice_log::config::parse_pair(p))
                    .collect::<Result<_, _>>()
                    .map_err(|e| CliError::Usage(format!("--option: {e}")))?;
                (None, RemoteStorage::new(url.clone(), options))
            }
            None => {
                let (server, storage) = moto()?;
                (Some(server), storage)
            }
        };
        let log = Log::open(
            dir.join("data"),
            LogOptions {
                remote_storage: Some(storage),
                remote_upload_interval: Duration::from_millis(100),
                ..LogOptions::default()
            },
        )?;
        let segment = (self.segment_mb << 20).to_string();
        let local = (2 * (self.segment_mb << 20)).to_string();
        let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        log.create_topic("plain", 1, &kv(&[("segment.bytes", &segment)]))?;
        log.create_topic(
            "tiered",
            1,
            &kv(&[
                ("segment.bytes", &segment),
                ("remote.storage.enable", "true"),
                ("local.retention.bytes", &local),
            ]),
        )?;

        // 1. Produce in alternating rounds.
        let per_round = (self.mb << 20) / self.record_bytes as u64 / self.rounds;
        let value = Bytes::from(vec![b'x'; self.record_bytes]);
        let mut producer = log.producer(ProducerConfig::default())?;
        let mut took = [Duration::ZERO; 2];
        let mut next = [0u64; 2];
        eprintln!(
            "Producing {} MB of {}-byte records to each topic in {} rounds...",
            self.mb, self.record_bytes, self.rounds
        );
        for _ in 0..self.rounds {
            for (i, topic) in ["plain", "tiered"].into_iter().enumerate() {
                let started = Instant::now();
                for _ in 0..per_round {
                    producer.send_to(
                        topic,
                        0,
                        Record {
                            key: Some(Bytes::from(next[i].to_string())),
                            value: Some(value.clone()),
                            headers: Vec::new(),
                            timestamp: sluice_log::record::now_ms(),
                        },
                    )?;
                    next[i] += 1;
                }
                producer.flush()?;
                took[i] += started.elapsed();
            }
        }
        drop(producer);
        let records = per_round * self.rounds;
        let mb = (records * self.record_bytes as u64) as f64 / 1e6;
        let rate = |t: Duration| mb / t.as_secs_f64();
        println!(
            "produce, tiering off: {:>9.0} records/s  {:>7.1} MB/s",
            records as f64 / took[0].as_secs_f64(),
            rate(took[0])
        );
        println!(
            "produce, tiering on:  {:>9.0} records/s  {:>7.1} MB/s  (ratio on/off {:.2})",
            records as f64 / took[1].as_secs_f64(),
            rate(took[1]),
            took[0].as_secs_f64() / took[1].as_secs_f64()
        );

        // 2. Wait for every closed segment to be uploaded and trimmed locally: the local
        // retention drops to nothing, so every read below comes from the store.
        let waited = Instant::now();
        log.alter_config("tiered", &kv(&[("local.retention.bytes", "0")]))?;
        let part = log.partition("tiered", 0)?;
        part.force_roll()?;
        loop {
            log.run_housekeeping()?;
            let info = part.info();
            if info
                .remote
                .is_some_and(|(_, end)| end == info.log_end_offset)
                && info.local_log_start_offset == info.log_end_offset
            {
                break;
            }
            if waited.elapsed() > Duration::from_secs(1800) {
                return Err(CliError::Usage(
                    "the uploads did not finish in 30 minutes".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let info = part.info();
        println!(
            "uploaded: {} segments, {:.1} MB; local copies deleted (local start {} of {})",
            info.remote_segments,
            info.remote_size_bytes as f64 / 1e6,
            info.local_log_start_offset,
            info.log_end_offset
        );

        // 3. Read everything back from the store.
        let started = Instant::now();
        let mut offset = 0;
        let mut bytes = 0u64;
        while offset < info.log_end_offset {
            let r = part.fetch(offset, 1 << 20, Isolation::ReadCommitted)?;
            if r.data.is_empty() {
                return Err(CliError::Usage(format!(
                    "the fetch at offset {offset} returned nothing"
                )));
            }
            let (_, next) = sluice_log::consumer::decode_fetch(&r, Isolation::ReadCommitted)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            bytes += r.data.len() as u64;
            offset = next;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "remote read: {:.1} MB from the store in {secs:.1} s = {:.1} MB/s ({:.0} records/s)",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            info.log_end_offset as f64 / secs
        );
        log.close()?;
        Ok(())
    }
}

/// A moto server for the benchmark, and a remote storage in a bucket of it.
fn moto() -> Result<(super::bench_sink::Server, RemoteStorage), CliError> {
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    // At the lowest priority: the emulator stands in for a remote service, whose CPU is not
    // the worker's; on these 2 cores it would otherwise take one from the producer.
    let moto = venv().join("bin/moto_server");
    if !moto.exists() {
        return Err(CliError::Usage(format!(
            "{} is missing: run scripts/setup.sh, which installs the servers the benchmark starts",
            moto.display()
        )));
    }
    let server = start(
        PathBuf::from("nice"),
        &[
            "-n".into(),
            "19".into(),
            moto.display().to_string(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        &endpoint,
    )?;
    let created = reqwest::blocking::Client::new()
        .put(format!("{endpoint}/tiered"))
        .send()
        .map_err(|e| CliError::Usage(format!("create the bucket: {e}")))?;
    if !created.status().is_success() {
        return Err(CliError::Usage(format!(
            "create the bucket: {}",
            created.status()
        )));
    }
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "bench"),
        ("aws_secret_access_key", "bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok((server, RemoteStorage::new("s3://tiered/log", options)))
}
