//! Consumer-group coordinators in a cluster: a group's coordinator is the leader of its
//! partition of the replicated topic [`GROUPS_TOPIC`] (Kafka's `__consumer_offsets` rule), so
//! it moves with that partition's leadership and its committed offsets survive the node.
//!
//! The coordinator keeps using the log's own group machinery (membership, validation, the
//! node's `__consumer_offsets`); what makes it replicated is that every offset commit taken
//! through the Kafka listener is also appended to the group's partition of [`GROUPS_TOPIC`]
//! and answered only once every in-sync replica has it. A node that becomes the leader of a
//! partition imports that partition's latest offsets into its log before it answers for any
//! of its groups (once per leader epoch), so a client that moves there reads what it last
//! committed anywhere.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::ResponseError as E;
use parking_lot::Mutex;
use sluice_log::batch::{BatchBuilder, BatchOptions, decode_records};
use sluice_log::offsets::{offset_record, read_offset_record};
use sluice_log::{Log, TopicPartition};

use crate::replica::Refusal;

/// The replicated topic of committed offsets (compacted: the latest per group and partition).
pub const GROUPS_TOPIC: &str = "__cluster_offsets";

/// Its partitions when this node creates it: groups spread over this many coordinators. Its
/// records are those of `__consumer_offsets`.
pub const GROUPS_PARTITIONS: u32 = 12;

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

/// The coordinators' state on one node: which partitions' offsets the log holds.
#[derive(Debug, Default)]
pub(crate) struct Coordinators {
    /// Partition → the leader epoch whose offsets were imported into the log.
    loaded: Mutex<HashMap<u32, i32>>,
    /// Serializes the topic's creation and the imports.
    busy: Mutex<()>,
}

/// The partition of [`GROUPS_TOPIC`] (of `partitions`) holding `group`.
pub(crate) fn partition_of(group: &str, partitions: usize) -> u32 {
    sluice_log::partitioner::partition_for_key(group.as_bytes(), partitions.max(1) as u32)
}

impl Coordinators {
    /// Where `group` is coordinated, creating [`GROUPS_TOPIC`] through the controller at the
    /// first use (three copies, or one per live node). Blocking.
    pub(crate) fn locate(
        &self,
        cluster: &sluice_cluster::Cluster,
        default_partitions: u32,
        group: &str,
    ) -> Result<(Located, u32), Refusal> {
        let unavailable = |m: String| (E::CoordinatorNotAvailable.code(), m);
        if !cluster
            .metadata()
            .borrow()
            .topics
            .contains_key(GROUPS_TOPIC)
        {
            let _busy = self.busy.lock();
            if !cluster
                .metadata()
                .borrow()
                .topics
                .contains_key(GROUPS_TOPIC)
            {
                // Three copies (or one per node of a smaller cluster), never fewer because
                // some nodes are down now: until that many are alive, no coordinator.
                let factor =
                    crate::topics::DEFAULT_REPLICATION_FACTOR.min(cluster.voter_ids().len().max(1));
                let topic = crate::topics::NewTopic {
                    name: GROUPS_TOPIC.into(),
                    partitions: Some(i64::from(GROUPS_PARTITIONS)),
                    replication_factor: Some(factor as i64),
                    configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
                    internal: true,
                };
                match crate::topics::create_replicated(cluster, default_partitions, topic, false) {
                    Ok(_) => {}
                    Err(e) if e.exists() => {}
                    Err(e) => {
                        return Err(unavailable(format!(
                            "cannot create {GROUPS_TOPIC}: {}",
                            e.message
                        )));
                    }
                }
            }
        }
        let md = std::sync::Arc::clone(&cluster.metadata().borrow());
        // The topic's own count: one created by hand with fewer partitions still works.
        let count = md
            .topics
            .get(GROUPS_TOPIC)
            .map_or(0, |t| t.partitions.len());
        let partition = partition_of(group, count);
        let p = md.partition(GROUPS_TOPIC, partition).ok_or_else(|| {
            unavailable(format!(
                "{GROUPS_TOPIC}-{partition} is not in this node's metadata yet"
            ))
        })?;
        match p.leader {
            Some(l) if l == cluster.node_id() => Ok((Located::Here(p.leader_epoch), partition)),
            Some(l) => match md.nodes.get(&l).filter(|n| !n.fenced) {
                Some(n) => Ok((Located::There(l, n.addr.clone()), partition)),
                None => Err(unavailable(format!(
                    "node {l} coordinates '{group}' and is down"
                ))),
            },
            None => Err(unavailable(format!(
                "{GROUPS_TOPIC}-{partition}, which holds '{group}', has no leader"
            ))),
        }
    }

    /// Checks that this node coordinates `group` (else NOT_COORDINATOR, and the client asks
    /// FindCoordinator again), importing its partition's offsets first when this node took
    /// the partition's leadership since the last import.
    pub(crate) fn check_here(
        &self,
        cluster: &sluice_cluster::Cluster,
        log: &Log,
        group: &str,
    ) -> Result<u32, Refusal> {
        let (epoch, partition) =
            match self.locate(cluster, log.options().default_partitions, group)? {
                (Located::Here(epoch), partition) => (epoch, partition),
                (Located::There(id, _), _) => {
                    return Err((
                        E::NotCoordinator.code(),
                        format!("node {id} coordinates '{group}'"),
                    ));
                }
            };
        // The metadata says so; the local copy must lead too (its fetcher may still be
        // copying the former leader's last commits), or the import would miss them.
        let leads = log
            .partition(GROUPS_TOPIC, partition)
            .is_ok_and(|p| p.leads(epoch));
        if !leads {
            return Err((
                E::CoordinatorLoadInProgress.code(),
                format!("{GROUPS_TOPIC}-{partition} is becoming this node's"),
            ));
        }
        if self.loaded.lock().get(&partition) == Some(&epoch) {
            return Ok(partition);
        }
        let _busy = self.busy.lock();
        if self.loaded.lock().get(&partition) == Some(&epoch) {
            return Ok(partition);
        }
        let imported = import(log, partition).map_err(|e| {
            (
                E::CoordinatorLoadInProgress.code(),
                format!("loading {GROUPS_TOPIC}-{partition}: {e}"),
            )
        })?;
        tracing::info!(
            partition,
            epoch,
            groups = imported,
            "Coordinating the consumer groups of a partition of {GROUPS_TOPIC}."
        );
        self.loaded.lock().insert(partition, epoch);
        Ok(partition)
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
        mirror(log, group, partition, offsets)
    }
}

/// [`Coordinators::mirror`], for callers without the coordinators at hand.
pub(crate) fn mirror(
    log: &Log,
    group: &str,
    partition: u32,
    offsets: &[(TopicPartition, Option<i64>)],
) -> Result<Mirrored, Refusal> {
    let mut b = BatchBuilder::new(BatchOptions::default());
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
/// group's `partition` of [`GROUPS_TOPIC`]): another node's transaction coordinator sent the
/// marker. The offsets pending in this node's `__consumer_offsets` are settled and, when
/// committed, copied to the group's partition and waited for (10 s), so a later coordinator
/// has them. Blocking.
pub(crate) fn settle(
    log: &Log,
    cluster: &sluice_cluster::Cluster,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<(), Refusal> {
    let failed = |e: sluice_log::LogError| (crate::errors::code(&e), crate::errors::message(&e));
    let settled = log
        .settle_offsets(producer_id, epoch, commit)
        .map_err(failed)?;
    let count = cluster
        .metadata()
        .borrow()
        .topics
        .get(GROUPS_TOPIC)
        .map_or(0, |t| t.partitions.len());
    let mut by_group: BTreeMap<String, Vec<(TopicPartition, Option<i64>)>> = BTreeMap::new();
    for (group, tp, offset) in settled {
        by_group.entry(group).or_default().push((tp, Some(offset)));
    }
    for (group, offsets) in by_group {
        let m = mirror(log, &group, partition_of(&group, count), &offsets)?;
        log.partition(&m.tp.0, m.tp.1)
            .and_then(|p| p.wait_high_watermark(m.end, m.epoch, std::time::Duration::from_secs(10)))
            .map_err(failed)?;
    }
    Ok(())
}

/// Reads this node's copy of `partition` and writes every group's latest offsets into the
/// log's groups where they differ; the number of groups.
fn import(log: &Log, partition: u32) -> Result<usize, String> {
    let p = log
        .partition(GROUPS_TOPIC, partition)
        .map_err(|e| e.to_string())?;
    let mut latest: BTreeMap<(String, TopicPartition), Option<i64>> = BTreeMap::new();
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
                continue;
            }
            for r in decode_records(batch).map_err(|e| e.to_string())? {
                let read = r
                    .record
                    .key
                    .as_deref()
                    .and_then(|k| read_offset_record(k, r.record.value.as_deref()));
                if let Some((group, tp, offset)) = read {
                    latest.insert((group, tp), offset);
                }
            }
        }
    }
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
