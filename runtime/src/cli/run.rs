//! `sluice run`: the worker. Deploys every pipeline file of a folder, follows the folder
//! (new, changed and removed files: inotify through `notify`, with polling as the fallback),
//! serves the REST API and metrics, and runs until Ctrl-C (or SIGTERM), printing progress.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use parking_lot::Mutex;
use sluice_log::Log;
use sluice_sql::engine::{Engine, EngineConfig};

use super::CliError;
use crate::api::{ApiState, Limits, serve};
use crate::deployer::Deployer;
use crate::worker::Worker;

/// How often the folder is scanned when file events are unavailable (and as a safety net).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is scanned anyway while a watcher reports events.
const WATCHED_RESCAN: Duration = Duration::from_secs(10);

/// The file in the data directory that tells CLI commands which worker owns it.
pub const WORKER_FILE: &str = "worker.json";

/// Arguments of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The folder of pipeline files (`*.toml`).
    #[arg(long, default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Where the REST API and `/metrics` listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// A bearer token every API request (except `/health`) must carry. Prefer the
    /// `SLUICE_API_TOKEN` environment variable or `--token-file`: a value on the command line
    /// is visible to every user of the machine (`ps`).
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (its first line); it wins over `--token` and
    /// `SLUICE_API_TOKEN`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The most open API connections; past it, connections that never sent a request make
    /// room, else new ones get 503.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers (also how long an idle
    /// connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Push queries (`POST /query`) streaming at once; more get 503.
    #[arg(long, default_value_t = 32)]
    pub max_push_queries: usize,
    /// Seconds a request's body may take to arrive after its headers (408 after).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Seconds a push query waits for a client that does not read its rows before it stops
    /// the query with a final `error` event.
    #[arg(long, default_value_t = 30)]
    pub slow_client_timeout_secs: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Serve the Kafka wire protocol on this address, so Kafka clients and tools (kcat,
    /// librdkafka, kafka-python, Java) produce and consume (off by default; port 0 picks a
    /// free port).
    #[arg(long, help_heading = "Kafka listener")]
    pub kafka_listen: Option<SocketAddr>,
    /// The `host:port` Kafka clients are told to connect to (default: the listening address).
    #[arg(long, requires = "kafka_listen", help_heading = "Kafka listener")]
    pub kafka_advertised: Option<String>,
    /// The most open Kafka connections; past it new ones are closed at once.
    #[arg(long, default_value_t = sluice_kafka::config::DEFAULT_MAX_CONNECTIONS, help_heading = "Kafka listener")]
    pub kafka_max_connections: usize,
    /// The largest Kafka request accepted, in bytes (Kafka's `socket.request.max.bytes`); a
    /// larger one closes its connection.
    #[arg(long, default_value_t = sluice_kafka::config::DEFAULT_MAX_REQUEST_BYTES, help_heading = "Kafka listener")]
    pub kafka_max_request_bytes: usize,
    /// Kafka users as `user:password` pairs, comma-separated: clients must authenticate with
    /// SASL PLAIN or SCRAM-SHA-256. Prefer the environment variable or --kafka-users-file (a
    /// value on the command line is visible in `ps`). With an API token (`--token`), the user
    /// `sluice` with the token as its password is added.
    #[arg(
        long,
        env = "SLUICE_KAFKA_USERS",
        hide_env_values = true,
        help_heading = "Kafka listener"
    )]
    pub kafka_users: Option<String>,
    /// A file of Kafka users, `user:password` per line (`#` comments).
    #[arg(long, help_heading = "Kafka listener")]
    pub kafka_users_file: Option<PathBuf>,
    /// Serve Kafka clients over TLS with this certificate chain (PEM); needs --kafka-tls-key.
    #[arg(long, requires = "kafka_tls_key", help_heading = "Kafka listener")]
    pub kafka_tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) of --kafka-tls-cert.
    #[arg(long, requires = "kafka_tls_cert", help_heading = "Kafka listener")]
    pub kafka_tls_key: Option<PathBuf>,
    /// This node's id in a cluster (Kafka's `node.id`); needs --cluster.
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    pub node_id: Option<u64>,
    /// The cluster's nodes as `id@host:port,...` (KRaft's `controller.quorum.voters`): the
    /// same node ids on every node, each with the address of its Kafka listener as this node
    /// reaches it; this node's own entry is where it listens and what clients are told. A
    /// majority must be up to change the cluster's metadata.
    #[arg(long, requires = "node_id", help_heading = "Cluster")]
    pub cluster: Option<String>,
    /// A file holding the cluster's secret (its first line, 16 characters or more), the same
    /// on every node: the nodes prove it to each other (SASL SCRAM-SHA-256) on every
    /// connection, and a node takes replica fetches, transaction markers and the metadata
    /// log's messages only from connections that did. Needed with an API token or Kafka
    /// users; without it the nodes do not authenticate each other (a trusted network).
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    pub cluster_secret_file: Option<PathBuf>,
    /// With --kafka-tls-cert in a cluster: the CA certificates (PEM) the nodes' certificates
    /// chain to. Each node then reaches the others over TLS and checks that a peer's
    /// certificate names its address in --cluster.
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Milliseconds without a heartbeat after which the controller fences a node and moves
    /// its leaderships and pipelines (Kafka's `broker.session.timeout.ms`).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(500..), help_heading = "Cluster")]
    pub cluster_session_timeout_ms: u64,
    /// Milliseconds a follower may fail to catch up with its leader before it leaves the
    /// partition's in-sync replicas (Kafka's `replica.lag.time.max.ms`).
    #[arg(long, default_value_t = sluice_kafka::replica::DEFAULT_REPLICA_LAG_MAX.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..), help_heading = "Cluster")]
    pub replica_lag_max_ms: u64,
    /// Where the log lives (last: its help heading applies to what follows).
    #[command(flatten)]
    pub log: super::LogArgs,
}

/// Watches `dir` for changes; `None` when the platform's notification fails (then the
/// folder is polled).
fn watch(dir: &Path, changed: Arc<AtomicBool>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if e.is_ok() {
            changed.store(true, Ordering::SeqCst);
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "File notifications unavailable; polling the pipelines folder."))
    .ok()?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "File notifications unavailable; polling the pipelines folder."))
        .ok()?;
    Some(w)
}

impl RunArgs {
    /// The API token from `--token`, `SLUICE_API_TOKEN` or `--token-file`.
    fn token(&self) -> Result<Option<String>, CliError> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::io(format!("read --token-file {}", file.display()), e))?;
        match text.lines().next().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
            _ => Err(CliError::Usage(format!(
                "--token-file {}: the file is empty",
                file.display()
            ))),
        }
    }

    /// TLS to the other nodes, from --cluster-tls-ca.
    fn peer_tls(&self) -> Result<Option<sluice_cluster::transport::PeerTls>, CliError> {
        self.cluster_tls_ca
            .as_deref()
            .map(|ca| {
                sluice_cluster::transport::PeerTls::from_ca_file(ca)
                    .map_err(|e| CliError::Usage(format!("--cluster-tls-ca {e}")))
            })
            .transpose()
    }

    /// The cluster's secret from --cluster-secret-file; errors name the file, never its
    /// content.
    fn cluster_secret(&self) -> Result<Option<sluice_cluster::auth::Secret>, CliError> {
        let Some(file) = &self.cluster_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::io(format!("read --cluster-secret-file {}", file.display()), e)
        })?;
        let first = text.lines().next().unwrap_or_default();
        sluice_cluster::auth::Secret::new(first)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("--cluster-secret-file {}: {e}", file.display())))
    }

    /// The Kafka listener's users: --kafka-users (or `SLUICE_KAFKA_USERS`), the file, and
    /// `sluice` with the API token. Errors never show a password.
    fn kafka_user_list(&self, token: Option<&str>) -> Result<Vec<(String, String)>, CliError> {
        let mut users = Vec::new();
        if let Some(list) = &self.kafka_users {
            users.extend(
                sluice_kafka::Users::parse(list, "--kafka-users (or SLUICE_KAFKA_USERS)", true)
                    .map_err(CliError::Usage)?,
            );
        }
        if let Some(file) = &self.kafka_users_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                CliError::io(format!("read --kafka-users-file {}", file.display()), e)
            })?;
            users.extend(
                sluice_kafka::Users::parse(
                    &text,
                    &format!("--kafka-users-file {}", file.display()),
                    false,
                )
                .map_err(CliError::Usage)?,
            );
        }
        if let Some(token) = token {
            users.push(("sluice".to_string(), token.to_string()));
        }
        Ok(users)
    }

    /// Checks the arguments before the data directory is opened (and created).
    pub fn check(&self) -> Result<(), CliError> {
        if !self.pipelines.is_dir() {
            return Err(CliError::Usage(format!(
                "the pipelines folder {} does not exist (run from the folder that holds it, or pass --pipelines DIR)",
                self.pipelines.display()
            )));
        }
        let token = self.token()?;
        if self.kafka_listen.is_some() {
            self.kafka_user_list(token.as_deref())?;
        }
        if self.cluster.is_some() {
            self.voters()?;
            if self.kafka_tls_cert.is_some() != self.cluster_tls_ca.is_some() {
                return Err(CliError::Usage(
                    "in a cluster, --kafka-tls-cert and --cluster-tls-ca go together: the nodes' listeners serve TLS, and each node verifies the others' certificates against the CA".into(),
                ));
            }
            self.peer_tls()?;
            let secret = self.cluster_secret()?;
            let users =
                token.is_some() || self.kafka_users.is_some() || self.kafka_users_file.is_some();
            if users && secret.is_none() {
                return Err(CliError::Usage(
                    "--cluster with an API token or Kafka users needs --cluster-secret-file: the nodes must authenticate to each other as the clients do".into(),
                ));
            }
            if self
                .kafka_user_list(token.as_deref())?
                .iter()
                .any(|(u, _)| u == sluice_cluster::auth::NODE_USER)
            {
                return Err(CliError::Usage(format!(
                    "the Kafka user name '{}' is the cluster's nodes' own; choose another",
                    sluice_cluster::auth::NODE_USER
                )));
            }
        }
        Ok(())
    }

    /// The cluster's voters from --cluster, checked against --node-id.
    fn voters(&self) -> Result<std::collections::BTreeMap<u64, String>, CliError> {
        let (Some(spec), Some(id)) = (&self.cluster, self.node_id) else {
            return Ok(Default::default());
        };
        sluice_cluster::parse_voters(spec, id).map_err(CliError::Usage)
    }

    /// Joins the cluster, when --cluster names one; the node's API is at `api`.
    fn join_cluster(
        &self,
        data_dir: &Path,
        api: &str,
    ) -> Result<Option<sluice_cluster::Cluster>, CliError> {
        let Some(node_id) = self.node_id.filter(|_| self.cluster.is_some()) else {
            return Ok(None);
        };
        let mut config =
            sluice_cluster::ClusterConfig::new(node_id, self.voters()?, data_dir.join("cluster"));
        config.api = Some(api.to_string());
        config.session_timeout = Duration::from_millis(self.cluster_session_timeout_ms);
        config.heartbeat_interval = (config.session_timeout / 6).max(Duration::from_millis(100));
        config.secret = self.cluster_secret()?;
        config.tls = self.peer_tls()?;
        if config.secret.is_none() {
            tracing::warn!(
                "The nodes of this cluster do not authenticate each other (no --cluster-secret-file): anyone who reaches a node's Kafka port can act as a node. Run it on a trusted network."
            );
        }
        sluice_cluster::Cluster::start(config)
            .map(Some)
            .map_err(|e| CliError::Usage(e.to_string()))
    }

    /// Where the Kafka listener listens and what it advertises: --kafka-listen, or in a
    /// cluster this node's address in --cluster.
    fn kafka_address(&self) -> Result<Option<(SocketAddr, Option<String>)>, CliError> {
        let own = self.node_id.and_then(|id| self.voters().ok()?.remove(&id));
        match (self.kafka_listen, own) {
            (Some(listen), own) => Ok(Some((listen, self.kafka_advertised.clone().or(own)))),
            (None, Some(own)) => {
                use std::net::ToSocketAddrs;
                let listen = own
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        CliError::Usage(format!(
                            "--cluster gives this node the address {own}, which does not resolve here (add --kafka-listen ADDR to listen elsewhere)"
                        ))
                    })?;
                Ok(Some((listen, Some(own))))
            }
            (None, None) => Ok(None),
        }
    }

    /// Runs the worker until interrupted.
    pub fn run(self, log: &Log, data_dir: &Path) -> Result<(), CliError> {
        self.check()?;
        // Queries start when their pipeline deploys (with its guarantee and commit interval);
        // the others after the first deployment.
        let engine = Engine::open_with(
            log,
            EngineConfig {
                start_queries: false,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let token = self.token()?;
        let worker = Worker::new(log, engine);
        let ingest = worker.ingest_routes();
        let deployer = Arc::new(Mutex::new(Deployer::new(worker, &self.pipelines)));
        let limits = Limits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            max_push_queries: self.max_push_queries,
            body_read_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            slow_client_timeout: Duration::from_secs(self.slow_client_timeout_secs.max(1)),
        };
        let state = ApiState::new(
            Arc::clone(&deployer),
            log.clone(),
            ingest,
            token.as_deref().map(Arc::from),
            &limits,
        );
        let ready = Arc::clone(&state.ready);
        let cluster_slot = Arc::clone(&state.cluster);
        let server = serve(self.listen, state, limits)?;
        let cluster = self.join_cluster(data_dir, &format!("http://{}", server.addr))?;
        if cluster.is_none() {
            // A former cluster node's copies are its own now, or nothing could write them.
            let n = log.detach_replicas()?;
            if n > 0 {
                tracing::warn!(
                    partitions = n,
                    "This data directory held replicas of a cluster's topics; running without --cluster, they are this worker's own now."
                );
            }
        }
        if let Some(c) = &cluster {
            let _ = cluster_slot.set(c.clone());
            // Producer ids unique across the nodes: a producer id reused on another node
            // would make that node take a new producer's records for duplicates.
            let c = c.clone();
            log.set_producer_id_source(sluice_log::log::ProducerIdSource(Arc::new(move || {
                let command = sluice_cluster::Command::AllocateProducerIds {
                    node: c.node_id(),
                    count: sluice_log::log::PRODUCER_ID_BLOCK,
                };
                c.propose_blocking(command)
                    .map_err(|e| e.to_string())?
                    .producer_ids
                    .ok_or_else(|| "the controller allocated no producer ids".to_string())
            })));
        }
        let kafka = match self.kafka_address()? {
            None => None,
            Some((addr, advertised)) => {
                let mut config = sluice_kafka::KafkaConfig::new(addr);
                config.advertised = advertised;
                config.cluster = cluster.clone();
                config.replica_lag_max = Duration::from_millis(self.replica_lag_max_ms);
                if let Some(c) = &cluster {
                    config.node_id = c.node_id() as i32;
                }
                config.max_connections = self.kafka_max_connections.max(1);
                config.max_request_bytes = self.kafka_max_request_bytes.max(1024);
                config.users = sluice_kafka::Users::new(self.kafka_user_list(token.as_deref())?);
                config.tls = self
                    .kafka_tls_cert
                    .clone()
                    .zip(self.kafka_tls_key.clone())
                    .map(|(cert, key)| sluice_kafka::TlsFiles { cert, key });
                Some(sluice_kafka::serve(log, config)?)
            }
        };
        let api = format!("http://{}", server.addr);
        let worker_file = data_dir.join(WORKER_FILE);
        std::fs::write(
            &worker_file,
            serde_json::json!({
                "api": api,
                "kafka": kafka.as_ref().map(|k| k.addr.to_string()),
                "node_id": cluster.as_ref().map(sluice_cluster::Cluster::node_id),
                "pid": std::process::id(),
            })
            .to_string(),
        )
        .map_err(|e| CliError::io(format!("write {}", worker_file.display()), e))?;
        if let Some(placement) = kafka.as_ref().and_then(|k| k.placement.clone()) {
            // Where pipelines run is known once the node has caught up with the cluster
            // (until then the deployer retries every 2 s).
            if !placement.wait_current(Duration::from_secs(15)) {
                tracing::warn!(
                    "The node has not joined the cluster within 15 s; its pipelines deploy once it has."
                );
            }
            deployer.lock().worker.set_placement(placement);
        }
        for line in deployer.lock().sync()? {
            eprintln!("{line}");
        }
        ready.store(true, Ordering::SeqCst);
        // In a cluster a query runs only with its pipeline, where the cluster places it.
        if kafka.as_ref().is_none_or(|k| k.placement.is_none()) {
            deployer.lock().worker.engine_mut().start_queries();
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
        }
        let changed = Arc::new(AtomicBool::new(false));
        let watcher = watch(&self.pipelines, Arc::clone(&changed));
        let rescan = if watcher.is_some() {
            WATCHED_RESCAN
        } else {
            POLL_INTERVAL
        };
        eprintln!(
            "Running; watching {} for pipeline files; API on {api} (GET /pipelines, /metrics){}; Ctrl-C stops the worker.",
            self.pipelines.display(),
            kafka
                .as_ref()
                .map(|k| format!("; Kafka clients on {}", k.addr))
                .unwrap_or_default()
        );
        let mut last = Instant::now();
        let mut last_scan = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            // Events come in bursts while an editor writes; the 100 ms tick debounces them.
            if changed.swap(false, Ordering::SeqCst) || last_scan.elapsed() >= rescan {
                last_scan = Instant::now();
                match deployer.lock().sync() {
                    Ok(lines) => lines.iter().for_each(|l| eprintln!("{l}")),
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            // In a cluster, pipelines follow their partitions' leadership.
            for line in deployer.lock().follow_placement() {
                eprintln!("{line}");
            }
            if last.elapsed() >= Duration::from_secs(self.progress_secs.max(1)) {
                last = Instant::now();
                print_progress(&deployer.lock().worker);
            }
        }
        eprintln!("Stopping: tasks commit what they have.");
        drop(watcher);
        drop(server);
        let _ = std::fs::remove_file(&worker_file);
        let mut d = deployer.lock();
        print_progress(&d.worker);
        // The tasks' last commits go first: in a cluster their acks=all writes need the
        // replication (the Kafka listener serves the followers' fetches) to be answered.
        d.worker.shutdown();
        drop(kafka);
        drop(cluster);
        Ok(())
    }
}

fn print_progress(worker: &Worker) {
    for p in worker.pipelines() {
        if p.paused {
            eprintln!("pipeline {}: paused", p.name);
            continue;
        }
        let tasks: Vec<String> = p
            .tasks
            .iter()
            .map(|t| {
                let s = &t.status;
                format!(
                    "{} in {} out {}{}{}",
                    t.name,
                    s.records_in.load(Ordering::Relaxed),
                    s.records_out.load(Ordering::Relaxed),
                    match s.rejected.load(Ordering::Relaxed) {
                        0 => String::new(),
                        n => format!(" rejected {n}"),
                    },
                    s.error
                        .lock()
                        .as_deref()
                        .map(|e| format!(
                            " ERROR (restarts {}): {e}",
                            s.restarts.load(Ordering::Relaxed)
                        ))
                        .unwrap_or_default()
                )
            })
            .collect();
        eprintln!("pipeline {}: {}", p.name, tasks.join("; "));
    }
    for q in worker.engine().catalog().queries() {
        if let Some(s) = worker.engine().queries().stats(&q.id) {
            eprintln!(
                "query {}: in {} out {}{}",
                q.id,
                s.records_in.load(Ordering::Relaxed),
                s.records_out.load(Ordering::Relaxed),
                match s.rejected.load(Ordering::Relaxed) {
                    0 => String::new(),
                    n => format!(" rejected {n}"),
                }
            );
        }
    }
}
