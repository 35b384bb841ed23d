//! Shared helpers: temporary logs and records, and a worker serving its API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::blocking::Client;
use serde_json::Value;
use sluice_log::{ConsumerRecord, Isolation, Log, LogOptions, OffsetSpec, Record};
use sluice_runtime::api::{ApiServer, ApiState, Limits, serve};
use sluice_runtime::deployer::Deployer;
use sluice_runtime::worker::Worker;
use sluice_sql::engine::Engine;

/// Opens a log in `dir` with default options.
pub fn open(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default()).expect("open log")
}

/// A keyed record with a fixed timestamp.
pub fn rec(key: &str, value: &str, ts: i64) -> Record {
    Record {
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        timestamp: ts,
    }
}

/// Every committed record of a topic, partition by partition, each in offset order; empty
/// when the topic does not exist.
pub fn read_committed(log: &Log, topic: &str) -> Vec<ConsumerRecord> {
    let Ok(t) = log.topic(topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in 0..t.partition_count() {
        let end = log
            .list_offset(topic, p, OffsetSpec::Latest, Isolation::ReadCommitted)
            .unwrap()
            .unwrap_or(0);
        let mut c = log.consumer(sluice_log::ConsumerConfig {
            auto_offset_reset: sluice_log::OffsetReset::Earliest,
            max_poll_records: 100_000,
            ..Default::default()
        });
        c.assign(&[sluice_log::TopicPartition {
            topic: topic.to_string(),
            partition: p,
        }])
        .unwrap();
        let mut pos = 0;
        while pos < end {
            let rs = c.poll(Duration::from_millis(100)).unwrap();
            if rs.is_empty() {
                break;
            }
            for r in rs {
                pos = r.offset + 1;
                if r.offset < end {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// Waits up to 60 s for `done`, failing the test with `what` after that.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log in `<dir>/data` and a worker on it with the pipeline file `file` deployed.
pub fn worker_with(dir: &Path, file: &Path) -> (Log, Worker) {
    let log = Log::open(dir.join("data"), LogOptions::default()).unwrap();
    let mut worker = Worker::new(&log, Engine::open(&log).unwrap());
    worker
        .deploy(&sluice_runtime::pipeline::load(file).unwrap())
        .unwrap();
    (log, worker)
}

/// A number from the environment (longer soaks set them), or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A worker over a fresh data directory with its API on a free port.
pub struct Served {
    pub log: Log,
    pub deployer: Arc<Mutex<Deployer>>,
    pub state: ApiState,
    pub server: Option<ApiServer>,
    pub base: String,
    pub http: Client,
    pub _dir: tempfile::TempDir,
    pub pipelines: PathBuf,
}

impl Served {
    /// With `token`, every request but `/health` needs it.
    pub fn start(limits: Limits, ready: bool, token: Option<&str>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        std::fs::create_dir(&pipelines).unwrap();
        let log = Log::open(dir.path().join("data"), LogOptions::default()).unwrap();
        let worker = Worker::new(&log, Engine::open(&log).unwrap());
        let ingest = worker.ingest_routes();
        let deployer = Arc::new(Mutex::new(Deployer::new(worker, &pipelines)));
        let state = ApiState::new(
            Arc::clone(&deployer),
            log.clone(),
            ingest,
            token.map(Arc::from),
            &limits,
        );
        state.ready.store(ready, Ordering::SeqCst);
        let server = serve("127.0.0.1:0".parse().unwrap(), state.clone(), limits).unwrap();
        Served {
            base: format!("http://{}", server.addr),
            log,
            deployer,
            state,
            server: Some(server),
            http: Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            _dir: dir,
            pipelines,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    /// A request with `headers`; the answer's status and JSON (or text).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.body(body.to_string()).send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.take();
        self.deployer.lock().worker.shutdown();
    }
}

/// The Python venv with the test servers (scripts/setup.sh makes it).
pub fn venv() -> PathBuf {
    std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/sluice-venv"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `sluice run` command on `work` (`data`, `pipelines`), its log in `worker-<round>.log`.
fn worker_command(work: &Path, round: usize) -> Command {
    let log = std::fs::File::create(work.join(format!("worker-{round}.log"))).unwrap();
    let mut command = Command::new(crate::cli::sluice_bin());
    command
        .arg("--data-dir")
        .arg(work.join("data"))
        .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
        .arg(work.join("pipelines"))
        .env("SLUICE_LOG", "info")
        .env_remove("SLUICE_FAULT")
        .env_remove("SLUICE_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command
}

/// A `sluice run` process on `work` (`data`, `pipelines`), its log in `worker-<round>.log`,
/// with `SLUICE_FAULT` set to `fault`.
pub fn spawn_worker(work: &Path, round: usize, fault: Option<&str>) -> Child {
    let mut command = worker_command(work, round);
    if let Some(point) = fault {
        command.env("SLUICE_FAULT", point);
    }
    command.spawn().unwrap()
}

/// The `sluice run` command [`spawn_worker`] starts, to add to before spawning.
pub fn worker_command_for_test(work: &Path) -> Command {
    worker_command(work, 0)
}

/// [`spawn_worker`] whose API needs `token` (given as `SLUICE_API_TOKEN`).
pub fn spawn_worker_with_token(work: &Path, token: &str) -> Child {
    worker_command(work, 0)
        .env("SLUICE_API_TOKEN", token)
        .spawn()
        .unwrap()
}

/// Serves `app` on a free loopback port from a runtime of its own (one worker thread):
/// the port, and the runtime, which stops the server when dropped.
pub fn serve_local(app: axum::Router) -> (u16, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, app).await });
    (port, runtime)
}

/// The API address (`http://host:port`) of the worker `spawn_worker` started on `work`,
/// once it wrote `data/worker.json` (the worker must not exit meanwhile).
pub fn worker_api(work: &Path, worker: &mut Child) -> String {
    let file = work.join("data/worker.json");
    let start = std::time::Instant::now();
    loop {
        let addr = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["api"].as_str().map(str::to_string));
        if let Some(a) = addr {
            return a;
        }
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker exited: {}",
            std::fs::read_to_string(work.join("worker-0.log")).unwrap_or_default()
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no worker.json");
        std::thread::sleep(Duration::from_millis(50));
    }
}
