//! A node's membership in the cluster: the Raft group of the metadata log, registration and
//! heartbeats, the controller's loop while this node leads the group, and the answers to
//! peers' requests.
//!
//! ```text
//!  every node:  register ─► heartbeat every 500 ms ─────────────► controller (Raft leader)
//!               apply committed commands ─► watch<Metadata>          │ plan(metadata, heard)
//!                                                                     ▼
//!                                               propose FenceNode / AlterPartition / ...
//! ```
//!
//! The cluster runs on its own small tokio runtime (as the Kafka listener does), so a busy
//! worker cannot delay heartbeats and elections; [`Cluster`] is the handle the rest of the
//! node uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::controller::{self, View};
use crate::metadata::{Applied, Command, Metadata, NodeId};
use crate::raft::{Network, Peer, Raft, store};
use crate::rpc::{self, NotTaken, PeerClient, PeerRequest, PeerResponse};

/// How often a node tells the controller it is alive (Kafka's `broker.heartbeat.interval.ms`).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long the controller waits for a heartbeat before fencing a node and moving its
/// leaderships (Kafka's `broker.session.timeout.ms`).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the controller moves leadership back to preferred replicas.
const LEADER_REBALANCE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a proposal waits for a controller (an election, a majority coming back).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// How a node joins the cluster (`sluice run --node-id --cluster`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Every voter of the metadata log and its Kafka listener's `host:port` as this node
    /// reaches it, this node's own included (what it tells clients); the same ids on every
    /// node.
    pub voters: BTreeMap<NodeId, String>,
    /// Where the metadata log lives (`<data-dir>/cluster`).
    pub dir: PathBuf,
    /// This node's REST API address, shown to the others.
    pub api: Option<String>,
    /// See [`DEFAULT_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// See [`DEFAULT_SESSION_TIMEOUT`].
    pub session_timeout: Duration,
    /// The secret the nodes prove to each other on every connection
    /// ([`crate::auth`]); `None`: they do not authenticate (a trusted network).
    pub secret: Option<crate::auth::Secret>,
    /// TLS to the other nodes (their listeners serve it), verified against the cluster's
    /// CA; `None`: plain TCP.
    pub tls: Option<crate::transport::PeerTls>,
}

impl ClusterConfig {
    /// The defaults for node `node_id` of `voters`, keeping its metadata in `dir`.
    pub fn new(node_id: NodeId, voters: BTreeMap<NodeId, String>, dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            node_id,
            voters,
            dir,
            api: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            secret: None,
            tls: None,
        }
    }

    /// This node's Kafka listener address, as the voters list has it.
    pub fn addr(&self) -> &str {
        &self.voters[&self.node_id]
    }
}

/// Parses `--cluster`: `id@host:port` entries separated by commas (KRaft's
/// `controller.quorum.voters`), and checks that `node_id` is one of them.
pub fn parse_voters(spec: &str, node_id: NodeId) -> Result<BTreeMap<NodeId, String>, String> {
    let mut voters = BTreeMap::new();
    let mut addrs = BTreeSet::new();
    for (i, entry) in spec.split(',').map(str::trim).enumerate() {
        let where_ = format!("--cluster entry {} ('{entry}')", i + 1);
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| format!("{where_} is not id@host:port"))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| format!("{where_}: the node id '{id}' is not a number"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{where_}: '{addr}' is not host:port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{where_}: '{addr}' is not host:port with a port from 1 to 65535"
            ));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(format!("{where_}: node {id} is listed twice"));
        }
        if !addrs.insert(addr.to_string()) {
            return Err(format!("{where_}: {addr} is listed for two nodes"));
        }
    }
    if !voters.contains_key(&node_id) {
        return Err(format!(
            "--node-id {node_id} is not in --cluster (it lists nodes {})",
            voters
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(voters)
}

/// Why the cluster could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The metadata store could not be opened or read.
    #[error("cannot open the cluster metadata in {dir}: {reason}")]
    Store {
        /// The folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The data directory belongs to another node or cluster.
    #[error("{0}")]
    Identity(String),
    /// The Raft group or its runtime did not start.
    #[error("cannot start the cluster: {0}")]
    Start(String),
    /// No controller took the command in time.
    #[error(
        "no controller took the change within {0:?}: a majority of the cluster's nodes must be up and reachable"
    )]
    NoController(Duration),
    /// The controller refused the command.
    #[error("{0}")]
    Refused(String),
}

/// What `sluice cluster status` and `GET /cluster` show.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node_id: NodeId,
    /// The controller (the metadata log's Raft leader), if one is elected.
    pub controller: Option<NodeId>,
    /// The Raft term.
    pub term: u64,
    /// The last metadata log index this node applied.
    pub applied_index: Option<u64>,
    /// Every node: voters and registered nodes.
    pub nodes: Vec<NodeStatus>,
    /// The metadata as this node applied it.
    #[serde(skip)]
    pub metadata: Arc<Metadata>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its Kafka listener.
    pub addr: String,
    /// Its REST API, when registered with one.
    pub api: Option<String>,
    /// "alive", "fenced" (no heartbeat within the session timeout) or "unregistered".
    pub state: &'static str,
    /// Whether it votes in the metadata log.
    pub voter: bool,
    /// Whether it is the controller.
    pub controller: bool,
}

/// This node's membership in the cluster; cheap to clone. The last clone dropped stops it.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    raft: Raft,
    metadata: watch::Receiver<Arc<Metadata>>,
    /// Heartbeats received (every node keeps them; the controller acts on them): node →
    /// (incarnation, when).
    heard: Mutex<BTreeMap<NodeId, (u64, Instant)>>,
    /// The incarnation this run of the node registered as, once it has.
    registered: Mutex<Option<u64>>,
    /// Since when this node has been the controller.
    controller_since: Mutex<Option<Instant>>,
    /// When leadership was last moved back to preferred replicas.
    last_rebalance: Mutex<Option<Instant>>,
    runtime: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .field("voters", &self.config.voters)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Cluster {
    /// Opens this node's metadata log, joins the Raft group and starts registering,
    /// heartbeating and (while elected) controlling. Returns once the group runs; the
    /// controller may not be elected yet.
    pub fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        check_identity(&config)?;
        let store_error = |reason: String| ClusterError::Store {
            dir: config.dir.clone(),
            reason,
        };
        let db = store::open(&config.dir.join("raft")).map_err(|e| store_error(e.to_string()))?;
        let (publish, metadata) = watch::channel(Arc::new(Metadata::default()));
        let state_machine = store::StateMachine::load(Arc::clone(&db), publish)
            .map_err(|e| store_error(e.to_string()))?;
        let log_store = store::LogStore::new(db);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Start(format!("runtime: {e}")))?;
        let raft_config = Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            install_snapshot_timeout: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
            max_in_snapshot_log_to_keep: 1000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        let network = Network {
            from: config.node_id,
            peers: config.voters.clone(),
            secret: config.secret.clone(),
            tls: config.tls.clone(),
        };
        let raft = runtime
            .block_on(Raft::new(
                config.node_id,
                Arc::new(raft_config),
                network,
                log_store,
                state_machine,
            ))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let members: BTreeMap<NodeId, Peer> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, Peer { addr: addr.clone() }))
            .collect();
        let initialized = runtime
            .block_on(raft.is_initialized())
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        if !initialized {
            // Every node starts the group with the same voters, so whichever starts first
            // (and is elected) writes the same membership; a later one's attempt is refused.
            match runtime.block_on(raft.initialize(members)) {
                Ok(()) | Err(RaftError::APIError(_)) => {}
                Err(e) => return Err(ClusterError::Start(e.to_string())),
            }
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let inner = Arc::new(Inner {
            config,
            raft,
            metadata,
            heard: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(None),
            controller_since: Mutex::new(None),
            last_rebalance: Mutex::new(None),
            runtime: runtime.handle().clone(),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("sluice-cluster".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = member_loop(weak.clone()) => {}
                        () = controller_loop(weak.clone()) => {}
                        _ = stopped => {}
                    }
                    if let Some(inner) = weak.upgrade() {
                        let _ = inner.raft.shutdown().await;
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| ClusterError::Start(format!("thread: {e}")))?;
        *inner.thread.lock() = Some(thread);
        tracing::info!(
            node = inner.config.node_id,
            voters = inner.config.voters.len(),
            "Joined the cluster's metadata log."
        );
        Ok(Cluster { inner })
    }

    /// The ids of every node of `--cluster`, ascending.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.inner.config.voters.keys().copied().collect()
    }

    /// How this node reaches node `id` (its `--cluster` entry), if it is a voter.
    pub fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.inner.config.voters.get(&id).cloned()
    }

    /// How this node connects to the others over TLS, if it does.
    pub fn tls(&self) -> Option<&crate::transport::PeerTls> {
        self.inner.config.tls.as_ref()
    }

    /// The secret the nodes prove to each other, if they do.
    pub fn secret(&self) -> Option<&crate::auth::Secret> {
        self.inner.config.secret.as_ref()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The metadata as applied on this node, and changes to it.
    pub fn metadata(&self) -> watch::Receiver<Arc<Metadata>> {
        self.inner.metadata.clone()
    }

    /// Whether this node's copy of the metadata is current enough to act on as a leader:
    /// it holds this run's registration (so every change the cluster made while the node
    /// was down or cut off, such as its partitions' new leaders, is applied), and the node
    /// is not fenced. A restarted node replays its own, older metadata first; until then
    /// it must not take the leadership that metadata gives it.
    pub fn is_current(&self) -> bool {
        let Some(incarnation) = *self.inner.registered.lock() else {
            return false;
        };
        self.inner
            .metadata
            .borrow()
            .nodes
            .get(&self.inner.config.node_id)
            .is_some_and(|n| n.incarnation == incarnation && !n.fenced)
    }

    /// Waits (blocking, up to `timeout`) until [`Self::is_current`]; whether it is.
    pub fn wait_current(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_current() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The controller, if one is elected.
    pub fn controller(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Commits `command` through the controller, waiting for an election if there is
    /// none; what applying it answered.
    pub async fn propose(&self, command: Command) -> Result<Applied, ClusterError> {
        let inner = Arc::clone(&self.inner);
        // On the cluster's runtime: the caller's may be any (or a blocking thread's).
        self.inner
            .runtime
            .spawn(async move { propose(&inner, command, PROPOSE_TIMEOUT).await })
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?
    }

    /// Commits `command`, blocking this (non-async) thread.
    pub fn propose_blocking(&self, command: Command) -> Result<Applied, ClusterError> {
        let inner = Arc::clone(&self.inner);
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.runtime.spawn(async move {
            let _ = tx.send(propose(&inner, command, PROPOSE_TIMEOUT).await);
        });
        rx.recv()
            .map_err(|_| ClusterError::Start("the cluster stopped".into()))?
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let metadata = Arc::clone(&self.inner.metadata.borrow());
        let mut nodes: BTreeMap<NodeId, NodeStatus> = BTreeMap::new();
        for (id, addr) in &self.inner.config.voters {
            nodes.insert(
                *id,
                NodeStatus {
                    id: *id,
                    addr: addr.clone(),
                    api: None,
                    state: "unregistered",
                    voter: true,
                    controller: metrics.current_leader == Some(*id),
                },
            );
        }
        for n in metadata.nodes.values() {
            let entry = nodes.entry(n.id).or_insert_with(|| NodeStatus {
                id: n.id,
                addr: n.addr.clone(),
                api: None,
                state: "unregistered",
                voter: false,
                controller: false,
            });
            entry.addr.clone_from(&n.addr);
            entry.api.clone_from(&n.api);
            entry.state = if n.fenced { "fenced" } else { "alive" };
        }
        ClusterStatus {
            node_id: self.inner.config.node_id,
            controller: metrics.current_leader,
            term: metrics.current_term,
            applied_index: metrics.last_applied.map(|l| l.index),
            nodes: nodes.into_values().collect(),
            metadata,
        }
    }

    /// Answers a peer's request (the body after its request header); the whole answer
    /// frame, size first.
    pub async fn serve(&self, correlation: i32, body: &[u8]) -> Vec<u8> {
        let response = match rpc::decode_request(body) {
            Err(reason) => PeerResponse::Invalid(reason),
            Ok(request) => {
                let inner = Arc::clone(&self.inner);
                match self
                    .inner
                    .runtime
                    .spawn(async move { answer(&inner, request).await })
                    .await
                {
                    Ok(r) => r,
                    Err(e) => PeerResponse::Invalid(format!("the cluster stopped: {e}")),
                }
            }
        };
        rpc::encode_response(correlation, &response)
    }
}

/// The node's identity file: a data directory serves one node id for its whole life.
fn check_identity(config: &ClusterConfig) -> Result<(), ClusterError> {
    let io = |e: std::io::Error| ClusterError::Store {
        dir: config.dir.clone(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&config.dir).map_err(io)?;
    let path = config.dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = text.trim();
            if stored != config.node_id.to_string() {
                return Err(ClusterError::Identity(format!(
                    "this data directory belongs to node {stored} ({}), not to --node-id {}",
                    path.display(),
                    config.node_id
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{}\n", config.node_id)).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

async fn answer(inner: &Arc<Inner>, request: PeerRequest) -> PeerResponse {
    match request {
        PeerRequest::AppendEntries(r) => {
            PeerResponse::AppendEntries(inner.raft.append_entries(r).await)
        }
        PeerRequest::Vote(r) => PeerResponse::Vote(inner.raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => {
            PeerResponse::InstallSnapshot(inner.raft.install_snapshot(r).await)
        }
        PeerRequest::Propose(command) => PeerResponse::Proposed(
            // The proposer waits 5 s for the answer: no point committing longer.
            tokio::time::timeout(Duration::from_secs(5), propose_here(inner, command))
                .await
                .unwrap_or_else(|_| Err(NotTaken::Failed("no majority answered".into()))),
        ),
        PeerRequest::Heartbeat { id, incarnation } => {
            // Every node keeps the record, not only the controller: a node elected
            // controller knows at once who fell silent, and fences a dead former controller
            // without first waiting a whole session.
            inner.heard.lock().insert(id, (incarnation, Instant::now()));
            PeerResponse::Heartbeat(Ok(()))
        }
    }
}

/// Commits `command` if this node is the controller.
async fn propose_here(inner: &Arc<Inner>, command: Command) -> Result<Applied, NotTaken> {
    let registering = match &command {
        Command::RegisterNode { id, .. } => Some(*id),
        _ => None,
    };
    match inner.raft.client_write(command).await {
        Ok(r) => {
            // A registration counts as the new incarnation's first heartbeat: the
            // controller must not fence it before its next one arrives.
            if let (Some(id), Some(incarnation)) = (registering, r.data.incarnation) {
                inner.heard.lock().insert(id, (incarnation, Instant::now()));
            }
            Ok(r.data)
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(NotTaken::NotController {
                leader: f.leader_id,
            })
        }
        Err(e) => Err(NotTaken::Failed(e.to_string())),
    }
}

/// Commits `command` here or at the controller, retrying through elections until `timeout`.
async fn propose(
    inner: &Arc<Inner>,
    command: Command,
    timeout: Duration,
) -> Result<Applied, ClusterError> {
    let deadline = Instant::now() + timeout;
    let mut clients: BTreeMap<NodeId, PeerClient> = BTreeMap::new();
    loop {
        let leader = inner.raft.metrics().borrow().current_leader;
        let result = match leader {
            Some(l) if l == inner.config.node_id => {
                // A leader cut off from its majority commits nothing (openraft 0.9 does
                // not step down): bounded by what is left of the caller's time.
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, propose_here(inner, command.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(NotTaken::Failed("no majority answered".into())),
                }
            }
            Some(l) if !inner.config.voters.contains_key(&l) => Err(NotTaken::Failed(format!(
                "the leader {l} is not in --cluster"
            ))),
            Some(l) => {
                let client = clients.entry(l).or_insert_with(|| {
                    PeerClient::new(
                        inner.config.voters[&l].clone(),
                        inner.config.node_id,
                        inner.config.secret.clone(),
                        inner.config.tls.clone(),
                    )
                });
                match client
                    .call(
                        &PeerRequest::Propose(command.clone()),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(PeerResponse::Proposed(r)) => r,
                    Ok(other) => Err(NotTaken::Failed(format!("answered {other:?}"))),
                    Err(e) => Err(NotTaken::Failed(e.to_string())),
                }
            }
            None => Err(NotTaken::NotController { leader: None }),
        };
        match result {
            Ok(applied) => {
                return match applied.refused {
                    Some(reason) => Err(ClusterError::Refused(reason)),
                    None => Ok(applied),
                };
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    tracing::debug!(error = %e, "A cluster proposal timed out.");
                    return Err(ClusterError::NoController(timeout));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Registers this run of the node, then heartbeats to every node; registers again if the
/// controller fenced it meanwhile (it was unreachable for a session timeout).
async fn member_loop(weak: std::sync::Weak<Inner>) {
    let mut registered: Option<u64> = None;
    let mut clients: BTreeMap<NodeId, PeerClient> = BTreeMap::new();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let id = inner.config.node_id;
        let me = inner.metadata.borrow().nodes.get(&id).cloned();
        // This node's copy of the metadata may lag behind its registration: only a fence of
        // this incarnation, or a later registration, calls for registering again.
        let superseded = |inc: u64| {
            me.as_ref()
                .is_some_and(|n| n.incarnation > inc || (n.incarnation == inc && n.fenced))
        };
        match registered {
            Some(incarnation) if !superseded(incarnation) => {
                heartbeat(&inner, &mut clients, incarnation).await;
            }
            _ => {
                let command = Command::RegisterNode {
                    id,
                    addr: inner.config.addr().to_string(),
                    api: inner.config.api.clone(),
                };
                match propose(&inner, command, inner.config.session_timeout).await {
                    Ok(applied) => {
                        let incarnation = applied.incarnation;
                        tracing::info!(node = id, incarnation, "Registered with the cluster.");
                        registered = incarnation;
                        *inner.registered.lock() = incarnation;
                        if let Some(i) = incarnation {
                            heartbeat(&inner, &mut clients, i).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Cannot register with the cluster yet."),
                }
            }
        }
        let interval = inner.config.heartbeat_interval;
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

/// One heartbeat to every other node at once (each keeps its connection); a node that does
/// not answer delays the next round by one timeout at most.
async fn heartbeat(
    inner: &Arc<Inner>,
    clients: &mut BTreeMap<NodeId, PeerClient>,
    incarnation: u64,
) {
    let id = inner.config.node_id;
    inner.heard.lock().insert(id, (incarnation, Instant::now()));
    // Half an interval: one unreachable node delays the next round by that much at most.
    let timeout = (inner.config.heartbeat_interval / 2).max(Duration::from_millis(100));
    let mut calls = tokio::task::JoinSet::new();
    for (&peer, addr) in &inner.config.voters {
        if peer == id {
            continue;
        }
        let mut c = clients.remove(&peer).unwrap_or_else(|| {
            PeerClient::new(
                addr.clone(),
                id,
                inner.config.secret.clone(),
                inner.config.tls.clone(),
            )
        });
        calls.spawn(async move {
            let r = c
                .call(&PeerRequest::Heartbeat { id, incarnation }, timeout)
                .await;
            (peer, c, r)
        });
    }
    while let Some(done) = calls.join_next().await {
        let Ok((peer, c, r)) = done else { continue };
        clients.insert(peer, c);
        match r {
            Ok(PeerResponse::Heartbeat(Ok(()))) => {}
            Ok(other) => tracing::debug!(?other, peer, "A node did not take a heartbeat."),
            Err(e) => tracing::debug!(error = %e, peer, "A heartbeat failed."),
        }
    }
}

/// While this node is the Raft leader, acts as the controller: fences silent nodes, elects
/// leaders (a pipeline's topics with its anchor).
async fn controller_loop(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.config.heartbeat_interval;
        let leading = inner.raft.metrics().borrow().state == ServerState::Leader;
        if !leading {
            *inner.controller_since.lock() = None;
        } else {
            let now = Instant::now();
            let since = *inner.controller_since.lock().get_or_insert_with(|| {
                tracing::info!(
                    node = inner.config.node_id,
                    "This node is the cluster's controller."
                );
                now
            });
            let metadata = Arc::clone(&inner.metadata.borrow());
            let session = inner.config.session_timeout;
            let heard: BTreeMap<NodeId, u64> = inner
                .heard
                .lock()
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) < session)
                .map(|(id, (inc, _))| (*id, *inc))
                .collect();
            // A node this one never heard from (it just started, or the node just came
            // back) gets one session from the election to show up; one heard from and then
            // silent is fenced once its session is over, election or not.
            let grace: BTreeSet<NodeId> = if now.duration_since(since) < session {
                let ever = inner.heard.lock();
                metadata
                    .nodes
                    .keys()
                    .filter(|id| !ever.contains_key(id))
                    .copied()
                    .collect()
            } else {
                BTreeSet::new()
            };
            // Leadership goes back to preferred replicas now and then (Kafka's
            // leader.imbalance.check.interval), not at every tick: a replica that just
            // rejoined the ISR gets a moment before it takes over.
            let rebalance = now.duration_since(since) >= LEADER_REBALANCE_INTERVAL
                && inner
                    .last_rebalance
                    .lock()
                    .is_none_or(|t| now.duration_since(t) >= LEADER_REBALANCE_INTERVAL);
            if rebalance {
                *inner.last_rebalance.lock() = Some(now);
            }
            let view = View {
                heard,
                grace,
                rebalance_leaders: rebalance,
            };
            for command in controller::plan(&metadata, &view) {
                if let Command::AlterPartition {
                    topic,
                    partition,
                    leader: Some(l),
                    ..
                } = &command
                    && metadata
                        .partition(topic, *partition)
                        .is_some_and(|p| !p.isr.contains(l))
                {
                    tracing::warn!(
                        topic,
                        partition,
                        leader = l,
                        "Unclean leader election (unclean.leader.election.enable): no in-sync replica is alive, so a replica outside the ISR leads; records acknowledged after it fell behind are lost."
                    );
                }
                tracing::info!(?command, "The controller changes the cluster metadata.");
                let proposed = tokio::time::timeout(
                    inner.config.session_timeout,
                    propose_here(&inner, command),
                )
                .await
                .unwrap_or_else(|_| Err(NotTaken::Failed("no majority answered".into())));
                if let Err(e) = proposed {
                    tracing::debug!(error = %e, "A controller change was not committed.");
                    break;
                }
            }
        }
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_bad_lists_say_which_entry() {
        let v = parse_voters("1@127.0.0.1:9092, 2@localhost:9093,3@[::1]:9094", 2).unwrap();
        assert_eq!(v[&3], "[::1]:9094");
        for (spec, needle) in [
            ("1@a:1,1@b:2", "node 1 is listed twice"),
            ("1@a:1,2@a:1", "listed for two nodes"),
            ("1@a", "entry 1"),
            ("x@a:1", "'x' is not a number"),
            ("1@a:0", "port from 1"),
            ("1:a:1", "not id@host:port"),
            ("1@a:1,3@b:2", "--node-id 2 is not in --cluster"),
        ] {
            let e = parse_voters(spec, if spec.starts_with("1@a:1,3") { 2 } else { 1 })
                .expect_err(spec);
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
