//! Partition replication in a cluster, as Kafka's brokers do it: followers copy their
//! leader's log with Fetch requests, the leader counts what every in-sync replica has, and the
//! high watermark — what consumers may read and `acks=all` waits for — is the least of those.
//!
//! ```text
//!  cluster metadata ──► reconcile: create local partitions, become leader / follower
//!                                      │                         │
//!   leader:  Produce ─► append         │        follower: fetcher task per leader node
//!            Fetch(replica_id) ◄───────┼──────── OffsetForLeaderEpoch (truncate, KIP-101)
//!            follower's fetch offset = its log end ──► high watermark = min over the ISR
//!            lagging > replica.lag.time.max ──► AlterPartition (shrink) via the controller
//!            caught up to the high watermark ──► AlterPartition (expand)
//! ```
//!
//! The log holds the data and the epochs; this module holds who leads what and how far each
//! follower is. A leader's state starts empty at each new epoch, as Kafka's does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use sluice_cluster::Cluster;
use sluice_cluster::metadata::{Command, Metadata, NodeId};
use sluice_log::batch::{BatchBuilder, BatchOptions};
use sluice_log::{Log, LogError};
use tokio::sync::watch;

use crate::client::PeerConnection;

/// A topic partition.
pub(crate) type Tp = (String, u32);

/// Kafka's `replica.lag.time.max.ms` default is 30 s; a cluster on one machine notices a
/// stopped follower sooner.
pub const DEFAULT_REPLICA_LAG_MAX: Duration = Duration::from_secs(10);
/// How long a follower's fetch waits at the leader for new records.
const FOLLOWER_WAIT_MS: i32 = 500;
/// Record bytes per partition in one follower fetch.
const FOLLOWER_PARTITION_BYTES: i32 = 4 << 20;

/// This node's replicas: which partitions it leads or follows, and its followers' progress.
#[derive(Debug)]
pub(crate) struct Replicas {
    node: NodeId,
    log: Log,
    cluster: Cluster,
    lag_max: Duration,
    state: Mutex<State>,
    /// Bumped whenever a high watermark of a partition this node leads moves.
    hw_moved: watch::Sender<u64>,
    runtime: tokio::runtime::Handle,
    /// The transaction coordinators this node runs (the leaders of
    /// [`crate::coordinators::TRANSACTIONS_TOPIC`]): imported as soon as it leads one.
    transactions: Arc<crate::coordinators::Coordinators>,
    /// The consumer-group coordinators (the leaders of
    /// [`crate::coordinators::GROUPS_TOPIC`]): their pending offsets go with the leadership.
    groups: Arc<crate::coordinators::Coordinators>,
}

#[derive(Debug, Default)]
struct State {
    leading: HashMap<Tp, Leading>,
    following: HashMap<Tp, Following>,
    /// Leaders a fetcher task copies from.
    fetchers: HashSet<NodeId>,
}

#[derive(Debug)]
struct Leading {
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<NodeId>,
    isr: Vec<NodeId>,
    /// Since when this node leads in this epoch: followers' lag counts from here at first.
    since: Instant,
    followers: HashMap<NodeId, Progress>,
    /// An ISR change was proposed and not yet applied.
    proposing: bool,
    /// Followers proposed into the ISR, counted in the high watermark already.
    pending: Vec<NodeId>,
    /// The log end when this epoch began: a follower must reach it to join the ISR.
    epoch_start: i64,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The follower's log end: its last fetch offset.
    log_end: i64,
    /// When it last had everything the leader had (Kafka's lastCaughtUpTime).
    caught_up: Instant,
    last_fetch: Instant,
    /// The leader's log end at its last fetch.
    leader_end_at_fetch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Following {
    leader: NodeId,
    leader_epoch: i32,
    /// Truncated to the leader's log (KIP-101) in this epoch.
    truncated: bool,
}

/// Why a write or read is refused here, as a Kafka error code and a message.
pub(crate) type Refusal = (i16, String);

impl Replicas {
    pub(crate) fn new(
        log: Log,
        cluster: Cluster,
        lag_max: Duration,
        runtime: tokio::runtime::Handle,
        groups: Arc<crate::coordinators::Coordinators>,
        transactions: Arc<crate::coordinators::Coordinators>,
    ) -> Arc<Replicas> {
        Arc::new(Replicas {
            node: cluster.node_id(),
            log,
            cluster,
            lag_max,
            state: Mutex::new(State::default()),
            hw_moved: watch::channel(0).0,
            runtime,
            transactions,
            groups,
        })
    }

    /// Follows the cluster metadata until the runtime stops: reconciles on every change,
    /// and checks followers' lag and the high watermarks twice a second.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut metadata = self.cluster.metadata();
        let mut appends = self.log.watch_appends();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let current = self.cluster.is_current();
            let md = Arc::clone(&metadata.borrow_and_update());
            let me = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || me.reconcile(&md)).await;
            self.spawn_fetchers();
            loop {
                tokio::select! {
                    changed = metadata.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    changed = appends.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // A leader alone in its ISR commits at once.
                        self.update_high_watermarks();
                    }
                    _ = tick.tick() => {
                        // The node's registration may be applied here before the member
                        // loop knows it was answered: no metadata change follows then.
                        if self.cluster.is_current() != current {
                            break;
                        }
                        self.update_high_watermarks();
                        self.shrink_lagging_isrs();
                        self.load_transactions();
                    }
                }
            }
        }
    }

    /// Imports, off the async threads, the transaction coordinators' partitions this node
    /// leads and has not imported in their leader epoch.
    fn load_transactions(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let md = Arc::clone(&self.cluster.metadata().borrow());
        if !self.transactions.needs_load(&md, self.node)
            || self.transactions.loading.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            me.transactions.load_led(&me.cluster, &me.log);
            me.transactions.loading.store(false, Ordering::Release);
        });
    }

    /// Brings this node's partitions in line with the metadata.
    fn reconcile(&self, md: &Metadata) {
        // Until this run's registration is applied here, the metadata may be this node's
        // own from before it died, naming it leader of partitions led elsewhere since:
        // it leads nothing until then (following is harmless: a leader refuses a stale
        // epoch).
        let current = self.cluster.is_current();
        let coordinating = self.led(crate::coordinators::TRANSACTIONS_TOPIC);
        let grouping = self.led(crate::coordinators::GROUPS_TOPIC);
        for topic in md.topics.values() {
            if !topic
                .partitions
                .iter()
                .any(|p| p.replicas.contains(&self.node))
            {
                continue;
            }
            let count = topic.partitions.len() as u32;
            let local = match self.log.topic(&topic.name) {
                Ok(t) if t.partition_count() >= count => Ok(()),
                Ok(_) => self.log.alter_partitions(&topic.name, count),
                Err(LogError::UnknownTopic(_)) => {
                    let configs: Vec<(String, String)> = topic
                        .configs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    self.log.create_topic(&topic.name, count, &configs)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = local {
                tracing::error!(topic = %topic.name, error = %e, "Cannot create the local replica of a topic.");
                continue;
            }
            for (i, p) in topic.partitions.iter().enumerate() {
                if !p.replicas.contains(&self.node) {
                    continue;
                }
                let tp = (topic.name.clone(), i as u32);
                let Ok(partition) = self.log.partition(&topic.name, i as u32) else {
                    continue;
                };
                let mut st = self.state.lock();
                match p.leader.filter(|l| *l != self.node || current) {
                    Some(l) if l == self.node => {
                        st.following.remove(&tp);
                        let fresh = st
                            .leading
                            .get(&tp)
                            .is_none_or(|l| l.leader_epoch != p.leader_epoch);
                        if fresh {
                            if let Err(e) = partition.become_leader(p.leader_epoch) {
                                tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "Cannot take the leadership of a partition.");
                                continue;
                            }
                            tracing::info!(topic = %tp.0, partition = tp.1, epoch = p.leader_epoch, "Leading a partition.");
                            st.leading.insert(
                                tp.clone(),
                                Leading {
                                    leader_epoch: p.leader_epoch,
                                    partition_epoch: p.partition_epoch,
                                    replicas: p.replicas.clone(),
                                    isr: p.isr.clone(),
                                    since: Instant::now(),
                                    followers: HashMap::new(),
                                    proposing: false,
                                    pending: Vec::new(),
                                    epoch_start: partition.log_end_offset(),
                                },
                            );
                        } else if let Some(l) = st.leading.get_mut(&tp) {
                            if l.partition_epoch != p.partition_epoch {
                                l.proposing = false;
                                l.pending.clear();
                            }
                            l.partition_epoch = p.partition_epoch;
                            l.isr.clone_from(&p.isr);
                            l.replicas.clone_from(&p.replicas);
                        }
                    }
                    Some(leader) => {
                        st.leading.remove(&tp);
                        let next = Following {
                            leader,
                            leader_epoch: p.leader_epoch,
                            truncated: false,
                        };
                        let same = st.following.get(&tp).is_some_and(|f| {
                            f.leader == leader && f.leader_epoch == p.leader_epoch
                        });
                        if !same {
                            if let Err(e) = partition.become_follower(p.leader_epoch) {
                                tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "Cannot follow a partition.");
                                continue;
                            }
                            tracing::info!(topic = %tp.0, partition = tp.1, leader, epoch = p.leader_epoch, "Following a partition.");
                            st.following.insert(tp, next);
                        }
                    }
                    None => {
                        st.leading.remove(&tp);
                        st.following.remove(&tp);
                    }
                }
            }
        }
        // Partitions the metadata no longer gives this node.
        let mine = |tp: &Tp| {
            md.partition(&tp.0, tp.1)
                .is_some_and(|p| p.replicas.contains(&self.node))
        };
        let mut st = self.state.lock();
        st.leading.retain(|tp, _| mine(tp));
        st.following.retain(|tp, _| mine(tp));
        drop(st);
        for (before, coordinators) in [(coordinating, &self.transactions), (grouping, &self.groups)]
        {
            self.release_coordinators(md, &before, coordinators);
        }
        self.update_high_watermarks();
    }

    /// Lets go of the coordinators of `coordinators`' topic whose partitions this node led
    /// (`before`) and no longer does: their state is the next leader's now (kept, it would
    /// answer with a stale state: a transactional id's produce checks, or a group's
    /// pending offsets that a later commit of the same producer would settle here).
    fn release_coordinators(
        &self,
        md: &Metadata,
        before: &HashSet<u32>,
        coordinators: &crate::coordinators::Coordinators,
    ) {
        let topic = coordinators.topic();
        let count = md.topics.get(topic).map_or(0, |t| t.partitions.len());
        for &lost in before.difference(&self.led(topic)) {
            tracing::info!(
                partition = lost,
                "No longer coordinating a partition of {topic}."
            );
            coordinators.invalidate(lost);
            let mine = |key: &str| crate::coordinators::partition_of(key, count) == lost;
            if topic == crate::coordinators::TRANSACTIONS_TOPIC {
                self.log.forget_transactions(&mine);
            } else {
                self.log.restore_pending_offsets(&mine, Vec::new());
            }
        }
    }

    /// The partitions of `topic` this node leads.
    fn led(&self, topic: &str) -> HashSet<u32> {
        self.state
            .lock()
            .leading
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }

    /// Starts a fetcher for every leader this node follows a partition of.
    fn spawn_fetchers(self: &Arc<Self>) {
        let leaders: HashSet<NodeId> = {
            let st = self.state.lock();
            st.following.values().map(|f| f.leader).collect()
        };
        for leader in leaders {
            if self.state.lock().fetchers.insert(leader) {
                let me = Arc::clone(self);
                self.runtime.spawn(me.fetch_from(leader));
            }
        }
    }

    /// Recomputes the high watermark of every partition this node leads.
    fn update_high_watermarks(&self) {
        let mut moved = false;
        let st = self.state.lock();
        for (tp, l) in &st.leading {
            if let Ok(p) = self.log.partition(&tp.0, tp.1) {
                moved |= self.advance(&p, l);
            }
        }
        drop(st);
        if moved {
            self.hw_moved.send_modify(|n| *n += 1);
        }
    }

    /// Moves `p`'s high watermark to the least log end of its in-sync replicas; whether it
    /// moved.
    fn advance(&self, p: &sluice_log::partition::Partition, l: &Leading) -> bool {
        let mut hw = p.log_end_offset();
        for n in l.isr.iter().chain(&l.pending) {
            if *n == self.node {
                continue;
            }
            // An in-sync follower not heard from in this epoch holds the mark where it is.
            hw = hw.min(l.followers.get(n).map_or(i64::MIN, |f| f.log_end));
        }
        let before = p.info().high_watermark;
        hw > before && p.advance_high_watermark(hw) > before
    }

    /// Proposes dropping followers that have not caught up for `replica.lag.time.max.ms`.
    fn shrink_lagging_isrs(self: &Arc<Self>) {
        let now = Instant::now();
        let mut proposals = Vec::new();
        {
            let mut st = self.state.lock();
            for (tp, l) in st.leading.iter_mut() {
                if l.proposing {
                    continue;
                }
                let keep: Vec<NodeId> = l
                    .isr
                    .iter()
                    .copied()
                    .filter(|n| {
                        *n == self.node
                            || now
                                .duration_since(l.followers.get(n).map_or(l.since, |f| f.caught_up))
                                <= self.lag_max
                    })
                    .collect();
                if keep.len() < l.isr.len() {
                    l.proposing = true;
                    proposals.push((tp.clone(), l.partition_epoch, keep));
                }
            }
        }
        for (tp, partition_epoch, isr) in proposals {
            tracing::warn!(topic = %tp.0, partition = tp.1, ?isr, "Followers fell behind; shrinking the ISR.");
            self.propose_isr(tp, partition_epoch, isr);
        }
    }

    fn propose_isr(self: &Arc<Self>, tp: Tp, partition_epoch: i32, isr: Vec<NodeId>) {
        let me = Arc::clone(self);
        self.runtime.spawn(async move {
            let command = Command::AlterPartition {
                topic: tp.0.clone(),
                partition: tp.1,
                partition_epoch,
                leader: Some(me.node),
                isr,
            };
            // Taken: the change arrives with the metadata, and reconcile ends the proposal
            // (until then the pending member still counts). Refused: end it now.
            if let Err(e) = me.cluster.propose(command).await {
                tracing::debug!(topic = %tp.0, partition = tp.1, error = %e, "An ISR change was not taken.");
                if let Some(l) = me.state.lock().leading.get_mut(&tp) {
                    l.proposing = false;
                    l.pending.clear();
                }
            }
        });
    }

    /// A follower's fetch of `tp` from `offset` (its log end), in its view of `epoch`:
    /// records its progress, moves the high watermark, and proposes it back into the ISR
    /// once it caught up. The partition to read from, or why not.
    pub(crate) fn follower_fetch(
        self: &Arc<Self>,
        tp: &Tp,
        follower: NodeId,
        offset: i64,
        epoch: i32,
    ) -> Result<Arc<sluice_log::partition::Partition>, Refusal> {
        let partition = self
            .log
            .partition(&tp.0, tp.1)
            .map_err(|e| (crate::errors::code(&e), crate::errors::message(&e)))?;
        let mut st = self.state.lock();
        let Some(l) = st.leading.get_mut(tp) else {
            return Err((
                E::NotLeaderOrFollower.code(),
                format!("node {} does not lead {}-{}", self.node, tp.0, tp.1),
            ));
        };
        if epoch >= 0 && epoch < l.leader_epoch {
            return Err((
                E::FencedLeaderEpoch.code(),
                format!("epoch {epoch} is over"),
            ));
        }
        if epoch > l.leader_epoch {
            return Err((
                E::UnknownLeaderEpoch.code(),
                format!("epoch {epoch} is not known here yet"),
            ));
        }
        if !l.replicas.contains(&follower) {
            return Err((
                E::NotLeaderOrFollower.code(),
                format!("node {follower} holds no replica of {}-{}", tp.0, tp.1),
            ));
        }
        let now = Instant::now();
        let end = partition.log_end_offset();
        if offset > end {
            // A copy longer than the leader's holds a former leader's tail: it is not in
            // sync, and truncates when told the offset is out of range.
            return Err((
                E::OffsetOutOfRange.code(),
                format!("offset {offset} is past the leader's end {end}"),
            ));
        }
        let prev = l.followers.get(&follower).copied();
        let caught_up = if offset >= end {
            now
        } else if let Some(p) = prev.filter(|p| offset >= p.leader_end_at_fetch) {
            p.last_fetch
        } else {
            prev.map_or(l.since, |p| p.caught_up)
        };
        l.followers.insert(
            follower,
            Progress {
                log_end: offset,
                caught_up,
                last_fetch: now,
                leader_end_at_fetch: end,
            },
        );
        let moved = self.advance(&partition, l);
        let hw = partition.info().high_watermark;
        // A follower joins once it has everything committed, and everything this leader's
        // epoch began with (what an earlier leader committed).
        let expand =
            !l.isr.contains(&follower) && !l.proposing && offset >= hw && offset >= l.epoch_start;
        let proposal = expand.then(|| {
            l.proposing = true;
            // Counted in the high watermark from now on (Kafka's maximal ISR): writes
            // acknowledged before the change applies are on it too.
            l.pending.push(follower);
            let mut isr = l.isr.clone();
            isr.push(follower);
            (l.partition_epoch, isr)
        });
        drop(st);
        if moved {
            self.hw_moved.send_modify(|n| *n += 1);
        }
        if let Some((partition_epoch, isr)) = proposal {
            tracing::info!(topic = %tp.0, partition = tp.1, follower, "A follower caught up; adding it to the ISR.");
            self.propose_isr(tp.clone(), partition_epoch, isr);
        }
        Ok(partition)
    }

    /// Whether this node may take a write of `tp` with `acks`: it must lead the partition,
    /// and for `acks=all` the ISR must be at least `min.insync.replicas`. Topics outside the
    /// cluster metadata (this node's own) are always writable.
    pub(crate) fn check_write(
        &self,
        topic: &str,
        partition: u32,
        acks: i16,
    ) -> Result<(), Refusal> {
        let md = Arc::clone(&self.cluster.metadata().borrow());
        let Some(p) = md.partition(topic, partition) else {
            return Ok(());
        };
        if p.leader != Some(self.node) {
            return Err((
                E::NotLeaderOrFollower.code(),
                format!(
                    "node {} does not lead {topic}-{partition} (node {} does)",
                    self.node,
                    p.leader.map_or("none".to_string(), |l| l.to_string())
                ),
            ));
        }
        if acks == -1 {
            let min = self
                .log
                .topic(topic)
                .map(|t| t.config().min_insync_replicas)
                .unwrap_or(1);
            if (p.isr.len() as u32) < min {
                return Err((
                    E::NotEnoughReplicas.code(),
                    format!(
                        "{topic}-{partition} has {} in-sync replica(s), min.insync.replicas is {min}",
                        p.isr.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `topic`'s partition is in the cluster metadata (replicated), not this node's own.
    pub(crate) fn is_replicated(&self, topic: &str, partition: u32) -> bool {
        self.cluster
            .metadata()
            .borrow()
            .partition(topic, partition)
            .is_some()
    }

    /// Whether reads of `tp` must go elsewhere: the partition is replicated and this node
    /// does not lead it.
    pub(crate) fn check_read(&self, topic: &str, partition: u32) -> Result<(), Refusal> {
        let md = self.cluster.metadata();
        let md = md.borrow();
        match md.partition(topic, partition) {
            Some(p) if p.leader != Some(self.node) => Err((
                E::NotLeaderOrFollower.code(),
                format!("node {} does not lead {topic}-{partition}", self.node),
            )),
            _ => Ok(()),
        }
    }

    /// Waits until every in-sync replica has `tp` below `end` (the high watermark reached
    /// it), for an `acks=all` answer.
    pub(crate) async fn wait_replicated(
        &self,
        tp: &Tp,
        end: i64,
        epoch: Option<i32>,
        timeout: Duration,
    ) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut moved = self.hw_moved.subscribe();
        loop {
            moved.borrow_and_update();
            // Leading still, and in the epoch of the write (a copy that lost the lead and
            // got it back may hold other records at those offsets now).
            let leads = self
                .state
                .lock()
                .leading
                .get(tp)
                .is_some_and(|l| epoch.is_none_or(|e| e == l.leader_epoch));
            if !leads {
                return Err((
                    E::NotLeaderOrFollower.code(),
                    format!(
                        "node {} lost the leadership of {}-{}",
                        self.node, tp.0, tp.1
                    ),
                ));
            }
            let hw = self
                .log
                .partition(&tp.0, tp.1)
                .map(|p| p.info().high_watermark)
                .unwrap_or(-1);
            if hw >= end {
                // The ISR may have shrunk below min.insync.replicas while this waited
                // (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND): the records are there, but
                // not on as many copies as asked.
                let min = self
                    .log
                    .topic(&tp.0)
                    .map(|t| t.config().min_insync_replicas as usize)
                    .unwrap_or(1);
                let isr = self.state.lock().leading.get(tp).map_or(0, |l| l.isr.len());
                if isr < min {
                    return Err((
                        E::NotEnoughReplicasAfterAppend.code(),
                        format!(
                            "{}-{} has {isr} in-sync replica(s) after the write, min.insync.replicas is {min}",
                            tp.0, tp.1
                        ),
                    ));
                }
                return Ok(());
            }
            tokio::select! {
                changed = moved.changed() => {
                    if changed.is_err() {
                        return Err((E::RequestTimedOut.code(), "shutting down".into()));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err((
                        E::RequestTimedOut.code(),
                        format!("the in-sync replicas of {}-{} did not all get the records within {timeout:?}", tp.0, tp.1),
                    ));
                }
                // The ISR may shrink meanwhile; look again now and then.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Changes of any high watermark this node leads.
    pub(crate) fn watch_high_watermarks(&self) -> watch::Receiver<u64> {
        self.hw_moved.subscribe()
    }

    /// Copies the partitions this node follows from `leader` until it follows none there.
    async fn fetch_from(self: Arc<Self>, leader: NodeId) {
        let mut conn: Option<(String, PeerConnection)> = None;
        let client_id = format!("sluice-replica-{}", self.node);
        loop {
            let parts: Vec<(Tp, Following)> = {
                let mut st = self.state.lock();
                let parts: Vec<(Tp, Following)> = st
                    .following
                    .iter()
                    .filter(|(_, f)| f.leader == leader)
                    .map(|(tp, f)| (tp.clone(), f.clone()))
                    .collect();
                if parts.is_empty() {
                    // Under the lock: a reconcile that adds a partition for this leader
                    // after this sees no fetcher and starts one.
                    st.fetchers.remove(&leader);
                    return;
                }
                parts
            };
            // The way this node reaches the leader (its `--cluster` entry), else the address
            // the leader registered.
            let addr = self.cluster.peer_addr(leader).or_else(|| {
                let md = self.cluster.metadata();
                let md = md.borrow();
                md.nodes.get(&leader).map(|n| n.addr.clone())
            });
            let Some(addr) = addr else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if conn.as_ref().is_none_or(|(a, _)| *a != addr) {
                let c = PeerConnection::new(addr.clone(), client_id.clone())
                    .with_secret(self.cluster.secret().cloned())
                    .with_tls(self.cluster.tls().cloned());
                conn = Some((addr, c));
            }
            let (_, c) = conn.as_mut().expect("set above");
            let untruncated: Vec<(Tp, Following)> = parts
                .iter()
                .filter(|(_, f)| !f.truncated)
                .cloned()
                .collect();
            if !untruncated.is_empty() {
                if let Err(e) = self.truncate(c, &untruncated).await {
                    tracing::debug!(leader, error = %e, "Cannot ask the leader where to truncate yet.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
            if let Err(e) = self.fetch_once(c, &parts).await {
                tracing::debug!(leader, error = %e, "A follower fetch failed.");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// One request entry per followed partition (made by `entry` from the local copy),
    /// grouped by topic as Kafka's requests are.
    fn by_topic<T>(
        &self,
        parts: &[(Tp, Following)],
        entry: impl Fn(&sluice_log::partition::Partition, u32, &Following) -> T,
    ) -> Result<HashMap<String, Vec<T>>, String> {
        let mut topics: HashMap<String, Vec<T>> = HashMap::new();
        for ((topic, partition), f) in parts {
            let local = self
                .log
                .partition(topic, *partition)
                .map_err(|e| e.to_string())?;
            topics
                .entry(topic.clone())
                .or_default()
                .push(entry(&local, *partition, f));
        }
        Ok(topics)
    }

    /// Asks the leader where each partition's latest local epoch ends there, and cuts the
    /// local log at that point (KIP-101).
    async fn truncate(
        &self,
        c: &mut PeerConnection,
        parts: &[(Tp, Following)],
    ) -> Result<(), String> {
        let topics = self.by_topic(parts, |local, partition, f| {
            OffsetForLeaderPartition::default()
                .with_partition(partition as i32)
                .with_current_leader_epoch(f.leader_epoch)
                .with_leader_epoch(local.latest_epoch())
        })?;
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.node as i32))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetForLeaderTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let resp: OffsetForLeaderEpochResponse = c
            .call(
                ApiKey::OffsetForLeaderEpoch,
                4,
                &req,
                Duration::from_secs(10),
            )
            .await?;
        let asked: HashMap<Tp, Following> = parts.iter().cloned().collect();
        for t in resp.topics {
            for p in t.partitions {
                let tp = (t.topic.0.to_string(), p.partition as u32);
                if p.error_code != 0 {
                    return Err(format!("{}-{}: error {}", tp.0, tp.1, p.error_code));
                }
                let still = |st: &State| st.following.get(&tp) == asked.get(&tp);
                if !still(&self.state.lock()) {
                    // Leadership moved while asking: the next round asks the new leader.
                    continue;
                }
                let log = self.log.clone();
                let topic = tp.0.clone();
                let (epoch, end) = (p.leader_epoch, p.end_offset);
                let cut = tokio::task::spawn_blocking(move || {
                    let part = log.partition(&topic, tp.1)?;
                    // The cut is where the epoch the leader answered with ends in both logs
                    // (KIP-279: the leader may know only an earlier epoch than asked, which
                    // may end earlier here). A leader that knows no such epoch: keep what is
                    // committed (the high watermark), as Kafka does.
                    let cut = if epoch < 0 || end < 0 {
                        part.info().high_watermark
                    } else {
                        let here = part.end_offset_for_epoch(epoch).map_or(end, |(_, e)| e);
                        end.min(here)
                    };
                    if cut < part.log_end_offset() {
                        part.truncate_to(cut)?;
                    }
                    Ok::<_, LogError>(())
                })
                .await
                .map_err(|e| e.to_string())?;
                cut.map_err(|e| e.to_string())?;
                let mut st = self.state.lock();
                if still(&st)
                    && let Some(f) = st.following.get_mut(&tp)
                {
                    f.truncated = true;
                }
            }
        }
        Ok(())
    }

    /// One Fetch of every partition followed from this leader; appends what came.
    async fn fetch_once(
        &self,
        c: &mut PeerConnection,
        parts: &[(Tp, Following)],
    ) -> Result<(), String> {
        let topics = self.by_topic(parts, |local, partition, f| {
            FetchPartition::default()
                .with_partition(partition as i32)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(local.log_end_offset())
                .with_partition_max_bytes(FOLLOWER_PARTITION_BYTES)
        })?;
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(self.node as i32))
            .with_max_wait_ms(FOLLOWER_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let resp: FetchResponse = c
            .call(ApiKey::Fetch, 12, &req, Duration::from_secs(30))
            .await?;
        let log = self.log.clone();
        let epochs: HashMap<Tp, i32> = parts
            .iter()
            .map(|(tp, f)| (tp.clone(), f.leader_epoch))
            .collect();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut refused = Vec::new();
            let mut retruncate = Vec::new();
            for t in resp.responses {
                for p in t.partitions {
                    let topic = t.topic.0.to_string();
                    let tp = (topic.clone(), p.partition_index as u32);
                    if p.error_code == E::OffsetOutOfRange.code() {
                        let Ok(part) = log.partition(&topic, p.partition_index as u32) else {
                            continue;
                        };
                        let followed = epochs.get(&tp).copied();
                        if let Some(epoch) =
                            followed.filter(|_| part.log_end_offset() < p.log_start_offset)
                        {
                            // Retention on the leader deleted what this copy still lacks:
                            // it starts again at the leader's log start (refused unless it
                            // still follows in the epoch asked about).
                            if let Err(e) = part.reset_to(p.log_start_offset, epoch) {
                                refused.push(format!("{topic}-{}: {e}", p.partition_index));
                            }
                        } else {
                            // This copy is longer than the leader's: find the cut again.
                            retruncate.push(tp);
                        }
                        continue;
                    }
                    if p.error_code != 0 {
                        refused.push(format!(
                            "{topic}-{}: error {}",
                            p.partition_index, p.error_code
                        ));
                        continue;
                    }
                    let Some(&epoch) = epochs.get(&tp) else {
                        continue;
                    };
                    let Ok(part) = log.partition(&topic, p.partition_index as u32) else {
                        continue;
                    };
                    let data = p.records.unwrap_or_default();
                    let end = if data.is_empty() {
                        part.log_end_offset()
                    } else {
                        match part.append_replicated(&data, epoch) {
                            Ok(end) => end,
                            Err(e) => {
                                refused.push(format!("{topic}-{}: {e}", p.partition_index));
                                continue;
                            }
                        }
                    };
                    part.advance_high_watermark(p.high_watermark.min(end));
                }
            }
            (refused, retruncate)
        })
        .await
        .map_err(|e| e.to_string())?;
        let (outcome, retruncate) = outcome;
        if !retruncate.is_empty() {
            let mut st = self.state.lock();
            for tp in retruncate {
                if let Some(f) = st.following.get_mut(&tp) {
                    f.truncated = false;
                }
            }
        }
        if outcome.is_empty() {
            Ok(())
        } else {
            // Leadership moved or the epoch is not known there yet: the metadata catches up.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(outcome.join("; "))
        }
    }
}

/// The embedded producer's writes in a cluster: only at the partition's leader, and with
/// `acks=all` only while the ISR has at least `min.insync.replicas` members (the checks the
/// Kafka listener makes, as the log's errors). Holds the replicas weakly: they hold the log.
pub(crate) struct WriteGate(pub(crate) std::sync::Weak<Replicas>);

impl sluice_log::log::WriteGate for WriteGate {
    fn check(&self, topic: &str, partition: u32, all: bool) -> sluice_log::Result<()> {
        match self.0.upgrade() {
            Some(r) => r.gate(topic, partition, all),
            None => Ok(()),
        }
    }
}

impl Replicas {
    fn gate(&self, topic: &str, partition: u32, all: bool) -> sluice_log::Result<()> {
        let md = Arc::clone(&self.cluster.metadata().borrow());
        let Some(p) = md.partition(topic, partition) else {
            return Ok(());
        };
        if p.leader != Some(self.node) {
            let leader = match p.leader {
                Some(l) => {
                    let at = md.nodes.get(&l).map(|n| format!(" at {}", n.addr));
                    format!(" (node {l}{})", at.unwrap_or_default())
                }
                None => " (no leader now)".to_string(),
            };
            return Err(LogError::NotLeader {
                topic: topic.to_string(),
                partition,
                leader,
            });
        }
        if all {
            let min = self
                .log
                .topic(topic)
                .map(|t| t.config().min_insync_replicas)
                .unwrap_or(1);
            if (p.isr.len() as u32) < min {
                return Err(LogError::NotEnoughReplicas {
                    topic: topic.to_string(),
                    partition,
                    in_sync: p.isr.len(),
                    min,
                });
            }
        }
        Ok(())
    }
}

/// Keeps the records of Kafka clients' transactional ids in their partition of
/// [`crate::coordinators::TRANSACTIONS_TOPIC`], which this node leads while it coordinates
/// them: each is appended there and returns once every in-sync replica has it. A failure
/// makes the node read the partition again before it answers for its ids (its state may
/// be ahead of what the partition holds). Holds the replicas weakly, as [`WriteGate`].
pub(crate) struct TxnMirror(pub(crate) std::sync::Weak<Replicas>);

impl sluice_log::log::TxnReplication for TxnMirror {
    fn lock(&self, transactional_id: &str) -> Arc<Mutex<()>> {
        match self.0.upgrade() {
            Some(r) => r
                .transactions
                .partition_lock(r.transactions.partition_for(&r.cluster, transactional_id)),
            // Leaving the cluster: nothing else changes the records any more.
            None => Arc::new(Mutex::new(())),
        }
    }

    fn coordinator_epoch(&self, transactional_id: &str) -> sluice_log::Result<i32> {
        use crate::coordinators::TRANSACTIONS_TOPIC;
        let r = self.0.upgrade().ok_or_else(|| {
            LogError::ClusterUnavailable("this node is leaving its cluster".into())
        })?;
        let partition = r.transactions.partition_for(&r.cluster, transactional_id);
        let p = r.log.partition(TRANSACTIONS_TOPIC, partition)?;
        let epoch = p.leader_epoch();
        if !p.leads(epoch) {
            return Err(LogError::ClusterUnavailable(format!(
                "{TRANSACTIONS_TOPIC}-{partition} is not led here"
            )));
        }
        Ok(epoch)
    }

    fn acquire(&self, transactional_id: &str) -> sluice_log::Result<()> {
        let r = self.0.upgrade().ok_or_else(|| {
            LogError::ClusterUnavailable("this node is leaving its cluster".into())
        })?;
        r.transactions
            .check_here(&r.cluster, &r.log, transactional_id)
            .map(|_| ())
            .map_err(|(_, reason)| LogError::ClusterUnavailable(reason))
    }

    fn coordinates(&self, transactional_id: &str) -> bool {
        self.0.upgrade().is_some_and(|r| {
            let partition = r.transactions.partition_for(&r.cluster, transactional_id);
            r.cluster
                .metadata()
                .borrow()
                .partition(crate::coordinators::TRANSACTIONS_TOPIC, partition)
                .is_some_and(|p| p.leader == Some(r.node))
        })
    }

    fn replicate(&self, rec: &sluice_log::txn::TxnRecord) -> sluice_log::Result<()> {
        use crate::coordinators::{TRANSACTIONS_TOPIC, partition_of};
        let Some(r) = self.0.upgrade() else {
            return Err(LogError::ClusterUnavailable(
                "this node is leaving its cluster".into(),
            ));
        };
        let count = crate::coordinators::partition_count(&r.cluster, TRANSACTIONS_TOPIC);
        let partition = partition_of(&rec.transactional_id, count);
        let written = (|| {
            r.gate(TRANSACTIONS_TOPIC, partition, true)?;
            let p = r.log.partition(TRANSACTIONS_TOPIC, partition)?;
            // Read before the append: a leadership change in between fails the wait.
            let epoch = p.leader_epoch();
            let mut b = BatchBuilder::new(BatchOptions::default());
            let invalid = |source| LogError::Batch {
                topic: TRANSACTIONS_TOPIC.into(),
                partition,
                source,
            };
            b.push(&rec.to_record()).map_err(invalid)?;
            let appended =
                r.log
                    .append(TRANSACTIONS_TOPIC, partition, b.build().map_err(invalid)?)?;
            p.wait_high_watermark(appended.last_offset + 1, epoch, Duration::from_secs(10))
        })();
        if let Err(e) = written {
            r.transactions.invalidate(partition);
            r.log
                .forget_transactions(&|id| partition_of(id, count) == partition);
            return Err(LogError::ClusterUnavailable(format!(
                "the record of transactional id '{}' was not replicated in {TRANSACTIONS_TOPIC}-{partition}: {e}",
                rec.transactional_id
            )));
        }
        Ok(())
    }
}

/// The markers of a transaction coordinated here for partitions other nodes lead: one
/// WriteTxnMarkers per leader, answered once the leader's in-sync replicas have them.
/// Holds the replicas weakly, as [`WriteGate`].
pub(crate) struct MarkerSender(pub(crate) std::sync::Weak<Replicas>);

impl sluice_log::log::RemoteMarkers for MarkerSender {
    fn owns(&self, topic: &str) -> bool {
        topic == crate::coordinators::GROUPS_TOPIC
    }

    fn exists(&self, topic: &str, partition: u32) -> bool {
        self.0.upgrade().is_some_and(|r| {
            r.cluster
                .metadata()
                .borrow()
                .partition(topic, partition)
                .is_some()
        })
    }

    fn write(
        &self,
        partitions: &[(String, u32)],
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> sluice_log::Result<()> {
        let Some(r) = self.0.upgrade() else {
            return Err(LogError::ClusterUnavailable(
                "this node is leaving its cluster".into(),
            ));
        };
        r.send_markers(partitions, producer_id, epoch, commit, coordinator_epoch)
    }
}

impl Replicas {
    /// Sends the markers (blocking: called from the log's transaction coordinator, never on
    /// an async thread).
    fn send_markers(
        &self,
        partitions: &[(String, u32)],
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> sluice_log::Result<()> {
        use kafka_protocol::messages::write_txn_markers_request::{
            WritableTxnMarker, WritableTxnMarkerTopic,
        };
        use kafka_protocol::messages::{
            ProducerId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
        };
        let md = Arc::clone(&self.cluster.metadata().borrow());
        let mut by_leader: HashMap<NodeId, HashMap<String, Vec<i32>>> = HashMap::new();
        let mut settle_here = Vec::new();
        for (topic, partition) in partitions {
            let Some(p) = md.partition(topic, *partition) else {
                // Not the cluster's (deleted meanwhile): nothing to mark.
                continue;
            };
            let leader = p.leader.ok_or_else(|| {
                LogError::ClusterUnavailable(format!("{topic}-{partition} has no leader now"))
            })?;
            if leader == self.node && topic == crate::coordinators::GROUPS_TOPIC {
                // The groups are coordinated here: their offsets are settled here.
                settle_here.push(*partition);
                continue;
            }
            by_leader
                .entry(leader)
                .or_default()
                .entry(topic.clone())
                .or_default()
                .push(*partition as i32);
        }
        if !settle_here.is_empty() {
            crate::coordinators::settle(
                &self.log,
                &self.cluster,
                &self.groups,
                &settle_here,
                producer_id,
                epoch,
                commit,
                coordinator_epoch,
            )
            .map_err(|(_, message)| LogError::ClusterUnavailable(message))?;
        }
        for (leader, topics) in by_leader {
            let addr = self
                .cluster
                .peer_addr(leader)
                .or_else(|| md.nodes.get(&leader).map(|n| n.addr.clone()))
                .ok_or_else(|| {
                    LogError::ClusterUnavailable(format!("node {leader} has no address"))
                })?;
            let marker = WritableTxnMarker::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch)
                .with_transaction_result(commit)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partition_indexes(ps)
                        })
                        .collect(),
                );
            let req = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
            let client_id = format!("sluice-txn-{}", self.node);
            let secret = self.cluster.secret().cloned();
            let tls = self.cluster.tls().cloned();
            let resp: WriteTxnMarkersResponse = self
                .runtime
                .block_on(async move {
                    PeerConnection::new(addr, client_id)
                        .with_secret(secret)
                        .with_tls(tls)
                        .call(ApiKey::WriteTxnMarkers, 1, &req, Duration::from_secs(15))
                        .await
                })
                .map_err(|e| LogError::ClusterUnavailable(format!("node {leader}: {e}")))?;
            for m in resp.markers {
                for t in m.topics {
                    for p in t.partitions {
                        if p.error_code != 0 {
                            return Err(LogError::ClusterUnavailable(format!(
                                "node {leader} did not write the marker in {}-{}: error {}",
                                t.name.0, p.partition_index, p.error_code
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
