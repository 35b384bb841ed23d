//! `sluice bench sink`: how fast each external sink empties a topic of 1 KiB JSON records
//! into its target, exactly once: timed from the deploy of a pipeline with the one sink
//! until its committed offsets reach the topic's end (the sink commits only what the target
//! has taken), then checked against the target. The targets run on this machine, started by
//! the benchmark, one after another in one run:
//!
//! | `--to` | target |
//! |---|---|
//! | `elasticsearch` | `osmem-server` (OpenSearch API) from the tests' venv |
//! | `s3` | `moto_server` from the tests' venv |
//! | `webhdfs` | the WebHDFS server in [`webhdfs`] (in this process) |
//! | `http` | a receiver in this process (axum), taking NDJSON batches |
//!
//! The targets are emulators: the figures measure the sinks and the protocol round trips
//! on loopback, not a cluster's indexing or disks.

pub mod webhdfs;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use sluice_log::{Log, LogOptions, ProducerConfig, Record, TopicPartition};
use sluice_sql::engine::Engine;

use super::CliError;
use super::bench::Scratch;
use crate::worker::Worker;

/// Arguments of `sluice bench sink`.
#[derive(Debug, Args)]
pub struct SinkBenchArgs {
    /// The targets, comma-separated, measured one after another.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "elasticsearch,s3,webhdfs,http"
    )]
    pub to: Vec<Target>,
    /// Records in the topic.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Bytes of each record's JSON value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A sink's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Elasticsearch / OpenSearch (`elasticsearch` sink).
    Elasticsearch,
    /// S3 (`object-store` sink, JSON lines).
    S3,
    /// HDFS through WebHDFS (`object-store` sink, JSON lines).
    Webhdfs,
    /// An HTTP endpoint (`http` sink, NDJSON batches).
    Http,
}

/// A server process started for the benchmark, killed when dropped.
#[derive(Debug)]
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the benchmark's targets run on: the tests' Python venv (scripts/setup.sh).
pub(super) fn venv() -> PathBuf {
    std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/sluice-venv"))
}

pub(super) fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::io("find a free port".to_string(), e))
}

/// Starts `bin args` and waits until `url` answers.
pub(super) fn start(bin: PathBuf, args: &[String], url: &str) -> Result<Server, CliError> {
    // A bare name (`nice`) is looked up in PATH by the spawn.
    if bin.components().count() > 1 && !bin.exists() {
        return Err(CliError::Usage(format!(
            "{} is missing: run scripts/setup.sh, which installs the servers the benchmark starts",
            bin.display()
        )));
    }
    let child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| CliError::io(format!("start {}", bin.display()), e))?;
    let mut server = Server(child);
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(url).send().is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(CliError::Usage(format!(
                "{} exited before answering: {status}",
                bin.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::Usage(format!(
                "{} did not answer in 60 s",
                bin.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// A running target: the sink's TOML table, what keeps the target alive, and how to count
/// the records it holds.
struct Running {
    table: String,
    _keep: Box<dyn std::any::Any>,
    count: Box<dyn Fn() -> Result<u64, String>>,
    name: &'static str,
}

impl SinkBenchArgs {
    /// Runs the benchmark.
    pub fn run(self) -> Result<(), CliError> {
        let scratch = Scratch::under(self.dir.as_deref(), "sluice-bench-sink")?;
        let dir = scratch.path().to_path_buf();
        let result = self.measure(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn measure(&self, dir: &std::path::Path) -> Result<(), CliError> {
        if self.record_bytes < 32 || self.partitions == 0 || self.records == 0 {
            return Err(CliError::Usage(
                "--record-bytes must be at least 32, --partitions and --records positive".into(),
            ));
        }
        let log = Log::open(dir.join("data"), LogOptions::default())?;
        log.create_topic("bench", self.partitions, &[])?;
        let mut producer = log.producer(ProducerConfig::default())?;
        for i in 0..self.records {
            let head = format!("{{\"id\":{i},\"pad\":\"");
            let pad = self.record_bytes.saturating_sub(head.len() + 2);
            let value = format!("{head}{}\"}}", "x".repeat(pad));
            producer.send_to(
                "bench",
                (i % u64::from(self.partitions)) as u32,
                Record {
                    key: Some(Bytes::from(format!("k{i}"))),
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    timestamp: 1_700_000_000_000 + i as i64,
                },
            )?;
        }
        producer.flush()?;
        drop(producer);
        let bytes = self.records * self.record_bytes as u64;
        eprintln!(
            "Topic bench: {} records of {} bytes in {} partitions.",
            self.records, self.record_bytes, self.partitions
        );
        let engine = Engine::open(&log).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut worker = Worker::new(&log, engine);
        for target in &self.to {
            let running = self.target(*target, dir)?;
            let name = format!("to-{}", running.name);
            let file = dir.join(format!("{name}.toml"));
            let text = format!(
                "[[sinks]]\nname = \"out\"\ntopic = \"bench\"\n{}\n",
                running.table
            );
            std::fs::write(&file, text)
                .map_err(|e| CliError::io(format!("write {}", file.display()), e))?;
            let p = crate::pipeline::load(&file)?;
            let group = crate::worker::sink_group(&p.name, "out");
            eprintln!("{}: writing...", running.name);
            let started = Instant::now();
            worker.deploy(&p)?;
            let index = worker.pipelines().len().saturating_sub(1);
            loop {
                std::thread::sleep(Duration::from_millis(10));
                let done = (0..self.partitions).all(|partition| {
                    let tp = TopicPartition {
                        topic: "bench".into(),
                        partition,
                    };
                    let end = log
                        .partition("bench", partition)
                        .map(|p| p.info().high_watermark)
                        .unwrap_or(i64::MAX);
                    log.committed(&group, &tp).is_some_and(|c| c >= end)
                });
                if done {
                    break;
                }
                let status = &worker.pipelines()[index].tasks[0].status;
                if let Some(e) = status.error.lock().as_deref() {
                    return Err(CliError::Usage(format!(
                        "the {} sink failed: {e}",
                        running.name
                    )));
                }
                if started.elapsed() > Duration::from_secs(1800) {
                    return Err(CliError::Usage(format!(
                        "the {} sink did not finish in 30 minutes",
                        running.name
                    )));
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            worker.undeploy(&file);
            let held = (running.count)().map_err(CliError::Usage)?;
            if held != self.records {
                return Err(CliError::Usage(format!(
                    "the {} target holds {held} records, expected {}",
                    running.name, self.records
                )));
            }
            println!(
                "sink to={} records={} record_bytes={} seconds={seconds:.2} records/s={:.0} MB/s={:.1}",
                running.name,
                self.records,
                self.record_bytes,
                self.records as f64 / seconds,
                bytes as f64 / seconds / 1e6
            );
        }
        worker.shutdown();
        drop(worker);
        log.close()?;
        Ok(())
    }

    /// Starts `target` and says how the sink reaches it.
    fn target(&self, target: Target, dir: &std::path::Path) -> Result<Running, CliError> {
        match target {
            Target::Elasticsearch => {
                let site = std::fs::read_dir(venv().join("lib"))
                    .ok()
                    .and_then(|mut d| d.next())
                    .and_then(Result::ok)
                    .map(|e| e.path().join("site-packages"))
                    .unwrap_or_default();
                let port = free_port()?;
                let url = format!("http://127.0.0.1:{port}");
                let server = start(
                    site.join("osmem_server/bin/osmem-server"),
                    &[
                        "-addr".into(),
                        format!("127.0.0.1:{port}"),
                        "-no-stdin-watch".into(),
                        "-no-ja".into(),
                    ],
                    &url,
                )?;
                let count_url = format!("{url}/bench/_count");
                let refresh = format!("{url}/bench/_refresh");
                Ok(Running {
                    table: format!(
                        "elasticsearch = {{ url = \"{url}\", index = \"bench\", batch-records = 1000, max-in-flight = 4 }}"
                    ),
                    _keep: Box::new(server),
                    count: Box::new(move || {
                        let client = reqwest::blocking::Client::new();
                        let _ = client.post(&refresh).send();
                        let text = client
                            .get(&count_url)
                            .send()
                            .and_then(|r| r.text())
                            .map_err(|e| e.to_string())?;
                        let v: serde_json::Value =
                            serde_json::from_str(&text).map_err(|e| e.to_string())?;
                        v["count"].as_u64().ok_or(text)
                    }),
                    name: "elasticsearch",
                })
            }
            Target::S3 => {
                let port = free_port()?;
                let url = format!("http://127.0.0.1:{port}");
                let server = start(
                    venv().join("bin/moto_server"),
                    &[
                        "-H".into(),
                        "127.0.0.1".into(),
                        "-p".into(),
                        port.to_string(),
                    ],
                    &url,
                )?;
                reqwest::blocking::Client::new()
                    .put(format!("{url}/bench"))
                    .send()
                    .map_err(|e| CliError::Usage(format!("create the bucket: {e}")))?;
                let store = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name("bench")
                    .with_endpoint(&url)
                    .with_allow_http(true)
                    .with_region("us-east-1")
                    .with_access_key_id("bench")
                    .with_secret_access_key("bench")
                    .build()
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                Ok(Running {
                    table: format!(
                        "object-store = {{ url = \"s3://bench/out\", flush-records = 20000, flush-idle = \"0s\", options = {{ endpoint = \"{url}\", region = \"us-east-1\", access-key-id = \"bench\", secret-access-key = \"bench\", allow-http = \"true\" }} }}"
                    ),
                    _keep: Box::new(server),
                    count: Box::new(move || count_lines(&store)),
                    name: "s3",
                })
            }
            Target::Webhdfs => {
                let server = webhdfs::WebHdfs::start()
                    .map_err(|e| CliError::io("start the WebHDFS server".to_string(), e))?;
                let http = server.http();
                Ok(Running {
                    table: format!(
                        "object-store = {{ url = \"{}\", flush-records = 20000, flush-idle = \"0s\" }}",
                        server.url("/bench")
                    ),
                    _keep: Box::new(server),
                    count: Box::new(move || {
                        let files = webhdfs::tree(&http, "/bench", "sluice")?;
                        Ok(files
                            .iter()
                            .filter(|(name, _)| !name.starts_with(".sluice-tmp/"))
                            .map(|(_, data)| data.iter().filter(|b| **b == b'\n').count() as u64)
                            .sum())
                    }),
                    name: "webhdfs",
                })
            }
            Target::Http => {
                let _ = dir;
                let receiver = Receiver::start()?;
                let lines = receiver.lines.clone();
                Ok(Running {
                    table: format!(
                        "http = {{ url = \"{}\", format = \"ndjson\", batch-records = 500, max-in-flight = 4 }}",
                        receiver.url
                    ),
                    _keep: Box::new(receiver),
                    count: Box::new(move || Ok(lines.load(Ordering::SeqCst))),
                    name: "http",
                })
            }
        }
    }
}

/// Lines in every object of `store`.
fn count_lines(store: &object_store::aws::AmazonS3) -> Result<u64, String> {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let metas: Vec<_> = store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = 0;
        for m in metas {
            let bytes = store
                .get(&m.location)
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok(lines)
    })
}

/// An HTTP receiver in this process: counts the NDJSON lines it takes.
struct Receiver {
    url: String,
    lines: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Result<Receiver, CliError> {
        let io = |e| CliError::io("start the HTTP receiver".to_string(), e);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(io)?;
        let url = format!("http://{}/hook", listener.local_addr().map_err(io)?);
        let lines = Arc::new(AtomicU64::new(0));
        let counted = lines.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let counted = counted.clone();
            async move {
                let n = body.iter().filter(|b| **b == b'\n').count() as u64;
                counted.fetch_add(n, Ordering::SeqCst);
                "ok"
            }
        });
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver {
            url,
            lines,
            _runtime: runtime,
        })
    }
}
