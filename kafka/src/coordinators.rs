//! Coordinators in a cluster: a consumer group's coordinator is the leader of its partition
//! of the replicated topic [`GROUPS_TOPIC`], and a transactional id's the leader of its
//! partition of [`TRANSACTIONS_TOPIC`] (Kafka's `__consumer_offsets` and
//! `__transaction_state` rules), so they move with those partitions' leadership and their
//! state survives the node.
//!
//! The coordinators keep using the log's own machinery (membership and offsets in the node's
//! `__consumer_offsets`, the transaction coordinator's state machine); what makes them
//! replicated is that every offset commit taken through the Kafka listener is also appended
//! to the group's partition, and every record of a Kafka client's transactional id is
//! written to the id's partition instead of the node's `__transaction_state`
//! ([`crate::replica::TxnMirror`]), each answered only once every in-sync replica has it. A
//! node that becomes the leader of a partition imports its latest state into its log before
//! it answers for any of its keys (once per leader epoch; transactions at once, as their
//! decided ends must be carried out even if no client comes back), so a client that moves
//! there finds what it last did anywhere.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::ResponseError as E;
use parking_lot::Mutex;
use sluice_log::batch::{BatchBuilder, BatchOptions, decode_records};
use sluice_log::offsets::{offset_record, read_offset_record};
use sluice_log::txn::TxnRecord;
use sluice_log::{Log, TopicPartition};

use crate::replica::Refusal;

/// The replicated topic of committed offsets (compacted: the latest per group and partition).
pub const GROUPS_TOPIC: &str = "__cluster_offsets";

/// Its partitions when this node creates it: groups spread over this many coordinators. Its
/// records are those of `__consumer_offsets`.
pub const GROUPS_PARTITIONS: u32 = 12;

/// The replicated topic of the transaction coordinators' records (compacted: the latest per
/// transactional id; the records of `__transaction_state`).
pub const TRANSACTIONS_TOPIC: &str = "__cluster_transactions";

/// Its partitions when this node creates it.
pub const TRANSACTIONS_PARTITIONS: u32 = 12;

/// Whether `topic` is one of the coordinators' replicated topics (clients may not create
/// them).
pub(crate) fn is_coordinators_topic(topic: &str) -> bool {
    topic == GROUPS_TOPIC || topic == TRANSACTIONS_TOPIC
}

/// What a [`Coordinators`] coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Consumer groups: their committed offsets.
    Groups,
    /// Transactional ids: their transaction coordinator's records.
    Transactions,
}

impl Kind {
    fn topic(self) -> &'static str {
        match self {
            Kind::Groups => GROUPS_TOPIC,
            Kind::Transactions => TRANSACTIONS_TOPIC,
        }
    }

    fn partitions(self) -> u32 {
        match self {
            Kind::Groups => GROUPS_PARTITIONS,
            Kind::Transactions => TRANSACTIONS_PARTITIONS,
        }
    }
}

/// Where a group's coordinator is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Located {
    /// This node, with the leader epoch of the group's partition.
    Here(i32),
    /// Another node: its id and registered address.
    There(u64, String),
}

/// A commit copied to [`GROUPS_TOPIC`]: answered once the partition's high watermark
/// reaches `end` while this node still leads it in `epoch`.
#[derive(Debug, Clone)]
pub(crate) struct Mirrored {
    pub(crate) tp: (String, u32),
    pub(crate) end: i64,
    pub(crate) epoch: i32,
}

/// The coordinators of one [`Kind`] on one node: which partitions' state the log holds.
#[derive(Debug)]
pub(crate) struct Coordinators {
    kind: Kind,
    /// Partition → the leader epoch whose state was imported into the log.
    loaded: Mutex<HashMap<u32, i32>>,
    /// Serializes the topic's creation and the imports.
    busy: Mutex<()>,
    /// An import of the partitions led here is under way ([`Self::load_led`]).
    pub(crate) loading: std::sync::atomic::AtomicBool,
    /// One lock per partition, held across a request's change of the log's state and its
    /// replication, and across an import: a failed replication makes the node forget the
    /// partition's ids and read them again, which must not interleave with another
    /// request's change of them.
    partition_locks: Mutex<HashMap<u32, std::sync::Arc<Mutex<()>>>>,
    /// The kind's topic is being created in the background ([`Self::locate_or_start`]).
    creating: std::sync::atomic::AtomicBool,
}

/// The partition of a coordinators' topic (of `partitions`) holding `key` (a group or a
/// transactional id).
pub(crate) fn partition_of(key: &str, partitions: usize) -> u32 {
    sluice_log::partitioner::partition_for_key(key.as_bytes(), partitions.max(1) as u32)
}

/// The number of partitions of `topic` in the cluster's metadata (0: not created yet).
pub(crate) fn partition_count(cluster: &sluice_cluster::Cluster, topic: &str) -> usize {
    cluster
        .metadata()
        .borrow()
        .topics
        .get(topic)
        .map_or(0, |t| t.partitions.len())
}

impl Coordinators {
    pub(crate) fn new(kind: Kind) -> Coordinators {
        Coordinators {
            kind,
            loaded: Mutex::new(HashMap::new()),
            busy: Mutex::new(()),
            loading: std::sync::atomic::AtomicBool::new(false),
            partition_locks: Mutex::new(HashMap::new()),
            creating: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// [`Self::locate`] for a client's FindCoordinator, which does not wait for the kind's
    /// topic to be created: as Kafka answers while it creates `__consumer_offsets`, the
    /// first request starts the creation in the background and is answered
    /// COORDINATOR_NOT_AVAILABLE, which clients retry. (Held open for the creation, 1–2 s
    /// while an election settles, the request kept librdkafka's bootstrap connection
    /// busy while it replaced that connection, and a consumer's metadata request in flight
    /// there was lost.)
    pub(crate) fn locate_or_start(
        self: &std::sync::Arc<Self>,
        cluster: &sluice_cluster::Cluster,
        default_partitions: u32,
        key: &str,
    ) -> Result<(Located, u32), Refusal> {
        use std::sync::atomic::Ordering;
        let topic = self.kind.topic();
        if partition_count(cluster, topic) > 0 {
            return self.locate(cluster, default_partitions, key);
        }
        if !self.creating.swap(true, Ordering::SeqCst) {
            let (me, cluster) = (std::sync::Arc::clone(self), cluster.clone());
            let started = std::thread::Builder::new()
                .name("sluice-coordinators".into())
                .spawn(move || {
                    // The key does not matter: locating creates the topic first.
                    if let Err((_, why)) = me.locate(&cluster, default_partitions, "") {
                        tracing::warn!(topic, reason = %why, "The coordinators' topic could not be created yet; the next FindCoordinator tries again.");
                    }
                    me.creating.store(false, Ordering::SeqCst);
                });
            if started.is_err() {
                self.creating.store(false, Ordering::SeqCst);
            }
        }
        Err((
            E::CoordinatorNotAvailable.code(),
            format!("{topic} is being created; ask again"),
        ))
    }

    /// The topic whose partitions' leaders these coordinators are.
    pub(crate) fn topic(&self) -> &'static str {
        self.kind.topic()
    }

    /// The partition of the kind's topic holding `key`, as the cluster's metadata counts
    /// them now.
    pub(crate) fn partition_for(&self, cluster: &sluice_cluster::Cluster, key: &str) -> u32 {
        partition_of(key, partition_count(cluster, self.kind.topic()))
    }

    /// In a cluster (`cluster`), whether this node coordinates `key` ([`Self::check_here`]):
    /// its partition and leader epoch; alone, `None` (this node coordinates everything).
    pub(crate) fn here(
        &self,
        cluster: Option<&sluice_cluster::Cluster>,
        log: &Log,
        key: &str,
    ) -> Result<Option<(u32, i32)>, Refusal> {
        cluster.map(|c| self.check_here(c, log, key)).transpose()
    }

    /// The lock of `partition` (see the field).
    pub(crate) fn partition_lock(&self, partition: u32) -> std::sync::Arc<Mutex<()>> {
        std::sync::Arc::clone(self.partition_locks.lock().entry(partition).or_default())
    }

    /// Where `key` is coordinated, creating the kind's topic through the controller at the
    /// first use (three copies, or one per node of a smaller cluster). Blocking.
    pub(crate) fn locate(
        &self,
        cluster: &sluice_cluster::Cluster,
        default_partitions: u32,
        key: &str,
    ) -> Result<(Located, u32), Refusal> {
        let topic = self.kind.topic();
        let unavailable = |m: String| (E::CoordinatorNotAvailable.code(), m);
        if !cluster.metadata().borrow().topics.contains_key(topic) {
            let _busy = self.busy.lock();
            if !cluster.metadata().borrow().topics.contains_key(topic) {
                // Three copies (or one per node of a smaller cluster), never fewer because
                // some nodes are down now: until that many are alive, no coordinator.
                let factor =
                    crate::topics::DEFAULT_REPLICATION_FACTOR.min(cluster.voter_ids().len().max(1));
                let mut configs: BTreeMap<String, String> =
                    [("cleanup.policy".to_string(), "compact".to_string())].into();
                if self.kind == Kind::Transactions && factor >= 3 {
                    // Kafka's transaction.state.log.min.isr: a coordinator's record is on
                    // two nodes before anything acts on it.
                    configs.insert("min.insync.replicas".into(), "2".into());
                }
                let new = crate::topics::NewTopic {
                    name: topic.into(),
                    partitions: Some(i64::from(self.kind.partitions())),
                    replication_factor: Some(factor as i64),
                    configs,
                    internal: true,
                    anchor: None,
                };
                match crate::topics::create_replicated(cluster, default_partitions, new, false) {
                    Ok(_) => {}
                    Err(e) if e.exists() => {}
                    Err(e) => {
                        return Err(unavailable(format!("cannot create {topic}: {}", e.message)));
                    }
                }
            }
        }
        let md = std::sync::Arc::clone(&cluster.metadata().borrow());
        // The topic's own count: one created by hand with fewer partitions still works.
        let count = md.topics.get(topic).map_or(0, |t| t.partitions.len());
        let partition = partition_of(key, count);
        let p = md.partition(topic, partition).ok_or_else(|| {
            unavailable(format!(
                "{topic}-{partition} is not in this node's metadata yet"
            ))
        })?;
        match p.leader {
            Some(l) if l == cluster.node_id() => Ok((Located::Here(p.leader_epoch), partition)),
            Some(l) => match md.nodes.get(&l).filter(|n| !n.fenced) {
                Some(n) => Ok((Located::There(l, n.addr.clone()), partition)),
                None => Err(unavailable(format!(
                    "node {l} coordinates '{key}' and is down"
                ))),
            },
            None => Err(unavailable(format!(
                "{topic}-{partition}, which holds '{key}', has no leader"
            ))),
        }
    }

    /// Checks that this node coordinates `key` (else NOT_COORDINATOR, and the client asks
    /// FindCoordinator again), importing its partition's state first when this node took
    /// the partition's leadership since the last import: the partition and its leader
    /// epoch.
    pub(crate) fn check_here(
        &self,
        cluster: &sluice_cluster::Cluster,
        log: &Log,
        key: &str,
    ) -> Result<(u32, i32), Refusal> {
        let (epoch, partition) =
            match self.locate(cluster, log.options().default_partitions, key)? {
                (Located::Here(epoch), partition) => (epoch, partition),
                (Located::There(id, _), _) => {
                    return Err((
                        E::NotCoordinator.code(),
                        format!("node {id} coordinates '{key}'"),
                    ));
                }
            };
        let count = partition_count(cluster, self.kind.topic());
        // A group's partition is imported under its lock, which a transaction's marker
        // (`settle`) and TxnOffsetCommit hold too; a transactional id's caller holds it.
        let lock = (self.kind == Kind::Groups).then(|| self.partition_lock(partition));
        let _held = lock.as_ref().map(|l| l.lock());
        self.load(log, partition, epoch, count)
            .map_err(|m| (E::CoordinatorLoadInProgress.code(), m))?;
        Ok((partition, epoch))
    }

    /// Imports `partition`'s state (led here in `epoch`) unless done in this epoch; an error
    /// when the local copy does not lead in `epoch`.
    pub(crate) fn load(
        &self,
        log: &Log,
        partition: u32,
        epoch: i32,
        count: usize,
    ) -> Result<(), String> {
        let topic = self.kind.topic();
        // The metadata says so; the local copy must lead too (its fetcher may still be
        // copying the former leader's last records), or the import would miss them.
        let leads = log
            .partition(topic, partition)
            .is_ok_and(|p| p.leads(epoch));
        if !leads {
            return Err(format!("{topic}-{partition} is becoming this node's"));
        }
        if self.loaded.lock().get(&partition) == Some(&epoch) {
            return Ok(());
        }
        let _busy = self.busy.lock();
        if self.loaded.lock().get(&partition) == Some(&epoch) {
            return Ok(());
        }
        let imported = match self.kind {
            Kind::Groups => import_groups(log, partition, count),
            Kind::Transactions => import_transactions(log, partition, count),
        }
        .map_err(|e| format!("loading {topic}-{partition}: {e}"))?;
        if self.kind == Kind::Transactions
            && !log
                .partition(topic, partition)
                .is_ok_and(|p| p.leads(epoch))
        {
            // Lost meanwhile: what was read is another node's now.
            log.forget_transactions(&|id| partition_of(id, count) == partition);
            return Err(format!("{topic}-{partition} is no longer this node's"));
        }
        tracing::info!(
            partition,
            epoch,
            imported,
            "Coordinating the {} of a partition of {topic}.",
            match self.kind {
                Kind::Groups => "consumer groups",
                Kind::Transactions => "transactional ids",
            }
        );
        self.loaded.lock().insert(partition, epoch);
        Ok(())
    }

    /// Whether a partition of the kind's topic led here (as `md` says) is not imported in
    /// its leader epoch yet: [`Self::load_led`] has work.
    pub(crate) fn needs_load(&self, md: &sluice_cluster::Metadata, node: u64) -> bool {
        let Some(t) = md.topics.get(self.kind.topic()) else {
            return false;
        };
        let loaded = self.loaded.lock();
        t.partitions.iter().enumerate().any(|(i, p)| {
            p.leader == Some(node) && loaded.get(&(i as u32)) != Some(&p.leader_epoch)
        })
    }

    /// Imports every partition of the kind's topic this node leads and has not imported in
    /// its epoch (a new leader takes its transactions at once: those decided must end even
    /// if their producers never come back). Blocking.
    pub(crate) fn load_led(&self, cluster: &sluice_cluster::Cluster, log: &Log) {
        let md = std::sync::Arc::clone(&cluster.metadata().borrow());
        let Some(t) = md.topics.get(self.kind.topic()) else {
            return;
        };
        let count = t.partitions.len();
        for (i, p) in t.partitions.iter().enumerate() {
            if p.leader == Some(cluster.node_id()) {
                let lock = self.partition_lock(i as u32);
                let _held = lock.lock();
                // Not yet: the local copy still catches up (retried at the next tick).
                if let Err(e) = self.load(log, i as u32, p.leader_epoch, count) {
                    tracing::debug!(partition = i, error = %e, "A coordinators' partition is not imported yet.");
                }
            }
        }
    }

    /// Forgets that `partition` was imported: the next request (or tick) imports it again.
    pub(crate) fn invalidate(&self, partition: u32) {
        self.loaded.lock().remove(&partition);
    }

    /// Appends `group`'s committed offsets (`None`: deleted) to its `partition` of
    /// [`GROUPS_TOPIC`] (this node leads it: [`Self::check_here`] said so); what to wait
    /// for before answering.
    pub(crate) fn mirror(
        &self,
        log: &Log,
        group: &str,
        partition: u32,
        offsets: &[(TopicPartition, Option<i64>)],
    ) -> Result<Mirrored, Refusal> {
        mirror(log, group, partition, offsets, None)
    }
}

/// [`Coordinators::mirror`], for callers without the coordinators at hand; with `producer`
/// (producer id and epoch) the offsets are a transaction's (TxnOffsetCommit), in a
/// transactional batch its marker commits or aborts there too.
pub(crate) fn mirror(
    log: &Log,
    group: &str,
    partition: u32,
    offsets: &[(TopicPartition, Option<i64>)],
    producer: Option<(i64, i16)>,
) -> Result<Mirrored, Refusal> {
    let mut b = BatchBuilder::new(match producer {
        Some((producer_id, producer_epoch)) => BatchOptions {
            producer_id,
            producer_epoch,
            transactional: true,
            ..BatchOptions::default()
        },
        None => BatchOptions::default(),
    });
    for (tp, offset) in offsets {
        b.push(&offset_record(group, tp, *offset))
            .map_err(|e| (E::InvalidCommitOffsetSize.code(), e.to_string()))?;
    }
    let batch = b
        .build()
        .map_err(|e| (E::InvalidCommitOffsetSize.code(), e.to_string()))?;
    let failed = |e: sluice_log::LogError| {
        (
            E::CoordinatorNotAvailable.code(),
            format!("{GROUPS_TOPIC}-{partition}: {e}"),
        )
    };
    // Read before the append: a leadership change in between fails the wait.
    let epoch = log
        .partition(GROUPS_TOPIC, partition)
        .map_err(failed)?
        .leader_epoch();
    // Through the log, which wakes the followers' long polls.
    let appended = log.append(GROUPS_TOPIC, partition, batch).map_err(failed)?;
    Ok(Mirrored {
        tp: (GROUPS_TOPIC.to_string(), partition),
        end: appended.last_offset + 1,
        epoch,
    })
}

/// Ends a transaction's offset commits at their groups' coordinator (this node leads the
/// `partitions` of [`GROUPS_TOPIC`] the transaction holds): its transaction coordinator
/// sent the marker. Under each partition's lock, with the partition's state imported in
/// this leader epoch (an import after the marker would take the transaction as still
/// open), the marker goes into the replicated partition first (their replicated truth,
/// waited for; written even where the producer has nothing open, so that a late
/// TxnOffsetCommit of its older epoch is refused instead of opening a transaction no marker
/// ends); then the offsets pending in this node's `__consumer_offsets` are settled and,
/// when committed, copied to the group's partition and waited for (10 s).
/// `coordinator_epoch` is the transaction coordinator's (an older one's marker is refused).
/// Blocking.
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle(
    log: &Log,
    cluster: &sluice_cluster::Cluster,
    groups: &Coordinators,
    partitions: &[u32],
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> Result<(), Refusal> {
    let failed = |e: sluice_log::LogError| (crate::errors::code(&e), crate::errors::message(&e));
    let wait = std::time::Duration::from_secs(10);
    let count = partition_count(cluster, GROUPS_TOPIC);
    for &partition in partitions {
        let lock = groups.partition_lock(partition);
        let _held = lock.lock();
        let p = log.partition(GROUPS_TOPIC, partition).map_err(failed)?;
        let leader_epoch = p.leader_epoch();
        groups
            .load(log, partition, leader_epoch, count)
            .map_err(|m| (E::CoordinatorLoadInProgress.code(), m))?;
        let written = log
            .write_marker(
                GROUPS_TOPIC,
                partition,
                producer_id,
                epoch,
                commit,
                coordinator_epoch,
            )
            .map_err(failed)?;
        if let Some((offset, leader_epoch)) = written {
            p.wait_high_watermark(offset + 1, leader_epoch, wait)
                .map_err(failed)?;
        }
    }
    let settled = log
        .settle_offsets(producer_id, epoch, commit, coordinator_epoch)
        .map_err(failed)?;
    let mut by_group: BTreeMap<String, Vec<(TopicPartition, Option<i64>)>> = BTreeMap::new();
    for (group, tp, offset) in settled {
        by_group.entry(group).or_default().push((tp, Some(offset)));
    }
    for (group, offsets) in by_group {
        let m = mirror(log, &group, partition_of(&group, count), &offsets, None)?;
        log.partition(&m.tp.0, m.tp.1)
            .and_then(|p| p.wait_high_watermark(m.end, m.epoch, wait))
            .map_err(failed)?;
    }
    Ok(())
}

/// What [`read_partition`] hands over, in the partition's order.
enum Entry<'a> {
    /// A record: its key and value, and the producer id of a transactional one.
    Record(&'a [u8], Option<&'a [u8]>, Option<i64>),
    /// A transaction's marker: its producer id and whether it commits.
    Marker(i64, bool),
}

/// Calls `each` with every record and transaction marker of this node's copy of
/// `topic`-`partition`, in order.
fn read_partition(
    log: &Log,
    topic: &str,
    partition: u32,
    mut each: impl FnMut(Entry<'_>),
) -> Result<(), String> {
    let p = log.partition(topic, partition).map_err(|e| e.to_string())?;
    let mut at = p.log_start_offset();
    let end = p.log_end_offset();
    while at < end {
        let data = p
            .fetch_replica(at, 1 << 20)
            .map_err(|e| e.to_string())?
            .data;
        if data.is_empty() {
            break;
        }
        for batch in sluice_log::batch::split_batches(&data) {
            let batch = batch.map_err(|e| e.to_string())?;
            let h = sluice_log::batch::BatchHeader::parse(batch).map_err(|e| e.to_string())?;
            at = h.next_offset();
            if h.is_control() {
                let (kind, _) =
                    sluice_log::batch::decode_control(batch).map_err(|e| e.to_string())?;
                each(Entry::Marker(
                    h.producer_id,
                    kind == sluice_log::batch::ControlType::Commit,
                ));
                continue;
            }
            let producer = h.is_transactional().then_some(h.producer_id);
            for r in decode_records(batch).map_err(|e| e.to_string())? {
                if let Some(key) = r.record.key.as_deref() {
                    each(Entry::Record(key, r.record.value.as_deref(), producer));
                }
            }
        }
    }
    Ok(())
}

/// Takes the latest record of every transactional id in this node's copy of `partition` (of
/// `count`) of [`TRANSACTIONS_TOPIC`] as the log's; the number of ids.
fn import_transactions(log: &Log, partition: u32, count: usize) -> Result<usize, String> {
    let mut latest: BTreeMap<String, Option<TxnRecord>> = BTreeMap::new();
    read_partition(log, TRANSACTIONS_TOPIC, partition, |entry| {
        if let Entry::Record(key, value, _) = entry {
            let id = String::from_utf8_lossy(key).into_owned();
            latest.insert(id, value.and_then(TxnRecord::from_value));
        }
    })?;
    let mine = |id: &str| partition_of(id, count) == partition;
    let records: Vec<TxnRecord> = latest
        .into_values()
        .flatten()
        .filter(|r| mine(&r.transactional_id))
        .collect();
    Ok(log.import_transactions(&mine, records))
}

/// Reads this node's copy of `partition` and writes every group's latest committed
/// offsets into the log's groups where they differ, and the offsets of transactions still
/// open there as pending (their markers settle them here); the number of groups.
fn import_groups(log: &Log, partition: u32, count: usize) -> Result<usize, String> {
    let mut latest: BTreeMap<(String, TopicPartition), Option<i64>> = BTreeMap::new();
    // A transaction's offsets count once its commit marker follows (an abort drops them).
    let mut open: HashMap<i64, Vec<(String, TopicPartition, Option<i64>)>> = HashMap::new();
    read_partition(log, GROUPS_TOPIC, partition, |entry| match entry {
        Entry::Record(key, value, producer) => {
            if let Some((group, tp, offset)) = read_offset_record(key, value) {
                match producer {
                    Some(pid) => open.entry(pid).or_default().push((group, tp, offset)),
                    None => {
                        latest.insert((group, tp), offset);
                    }
                }
            }
        }
        Entry::Marker(pid, commit) => {
            let ended = open.remove(&pid).unwrap_or_default();
            if commit {
                for (group, tp, offset) in ended {
                    latest.insert((group, tp), offset);
                }
            }
        }
    })?;
    let pending: Vec<(i64, String, TopicPartition, i64)> = open
        .into_iter()
        .flat_map(|(pid, list)| {
            list.into_iter()
                .filter_map(move |(g, tp, o)| Some((pid, g, tp, o?)))
        })
        .collect();
    log.restore_pending_offsets(&|group| partition_of(group, count) == partition, pending);
    type Changes = (Vec<(TopicPartition, i64)>, Vec<TopicPartition>);
    let mut groups: BTreeMap<String, Changes> = BTreeMap::new();
    for ((group, tp), offset) in latest {
        let here = log.committed(&group, &tp);
        match offset {
            Some(offset) if here != Some(offset) => {
                groups.entry(group).or_default().0.push((tp, offset));
            }
            // Deleted at another coordinator.
            None if here.is_some() => groups.entry(group).or_default().1.push(tp),
            _ => {}
        }
    }
    let n = groups.len();
    for (group, (offsets, deleted)) in groups {
        log.restore_offsets(&group, &offsets)
            .and_then(|()| log.forget_offsets(&group, &deleted))
            .map_err(|e| format!("group '{group}': {e}"))?;
    }
    Ok(n)
}
