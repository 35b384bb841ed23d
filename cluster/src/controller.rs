//! The controller's decisions, as pure functions of the metadata and what it heard: which
//! nodes to fence, which leaders to elect (pipelines' partitions following their anchors'),
//! where to place replicas.
//!
//! The Raft leader is the controller. Each tick it calls [`plan`] with the nodes whose
//! heartbeats are recent and proposes the commands it returns; every change is based on a
//! partition epoch, so a plan made on a stale view is refused when applied, and the next tick
//! plans again. Nothing here does IO, so the tests assert the decisions directly.

use std::collections::{BTreeMap, BTreeSet};

use crate::metadata::{Command, Metadata, NodeId, PartitionState};

/// The topic config that allows electing a leader outside the ISR (Kafka's name). It may
/// lose acknowledged records: those the new leader never got.
pub const UNCLEAN_ELECTION: &str = "unclean.leader.election.enable";

/// What the controller knows beyond the metadata.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Nodes whose heartbeat arrived within the session timeout, with the incarnation it named.
    pub heard: BTreeMap<NodeId, u64>,
    /// Nodes the controller has not yet had a session timeout's time to hear from (it just
    /// became controller): they are not fenced yet.
    pub grace: BTreeSet<NodeId>,
    /// Move leadership back to preferred replicas.
    pub rebalance_leaders: bool,
}

/// The commands that bring the metadata in line with `view`: fences first, then elections
/// and ISR shrinks (computed as if the fences had applied).
pub fn plan(metadata: &Metadata, view: &View) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut alive: BTreeSet<NodeId> = BTreeSet::new();
    for node in metadata.nodes.values() {
        if node.fenced {
            continue;
        }
        let heard = view.heard.get(&node.id) == Some(&node.incarnation);
        if heard || view.grace.contains(&node.id) {
            alive.insert(node.id);
        } else {
            commands.push(Command::FenceNode {
                id: node.id,
                incarnation: node.incarnation,
            });
        }
    }
    // Pipelines' topics last: their leaders follow leaders elected first.
    let mut leaders: BTreeMap<(&str, u32), Option<NodeId>> = BTreeMap::new();
    let (anchored, free): (Vec<_>, Vec<_>) =
        metadata.topics.values().partition(|t| t.anchor.is_some());
    // Per followed partition, the live nodes in sync in every partition following it: the
    // ones its leadership goes to when it can, so that the pipelines' topics can follow at
    // once (a pipeline whose node leads its anchor but not its topics cannot write).
    let mut ready: BTreeMap<(&str, u32), BTreeSet<NodeId>> = BTreeMap::new();
    for t in &anchored {
        let a = t.anchor.as_ref().expect("anchored");
        for p in &t.partitions {
            let in_sync: BTreeSet<NodeId> = live_isr(p, &alive).into_iter().collect();
            ready
                .entry((a.topic.as_str(), a.partition))
                .and_modify(|r| r.retain(|n| in_sync.contains(n)))
                .or_insert(in_sync);
        }
    }
    for topic in free.into_iter().chain(anchored) {
        let unclean = topic
            .configs
            .get(UNCLEAN_ELECTION)
            .is_some_and(|v| v == "true");
        let followed = topic.anchor.as_ref().map(|a| {
            leaders
                .get(&(a.topic.as_str(), a.partition))
                .copied()
                .unwrap_or_else(|| {
                    metadata
                        .partition(&a.topic, a.partition)
                        .and_then(|p| p.leader)
                })
        });
        for (i, p) in topic.partitions.iter().enumerate() {
            let decided = match followed {
                Some(target) => follow(p, target, &alive, unclean),
                None => elect(
                    p,
                    &alive,
                    unclean,
                    view.rebalance_leaders,
                    ready.get(&(topic.name.as_str(), i as u32)),
                ),
            };
            leaders.insert(
                (topic.name.as_str(), i as u32),
                decided.as_ref().map_or(p.leader, |d| d.0),
            );
            if let Some((leader, isr)) = decided
                && (leader != p.leader || isr != p.isr)
            {
                commands.push(Command::AlterPartition {
                    topic: topic.name.clone(),
                    partition: i as u32,
                    partition_epoch: p.partition_epoch,
                    leader,
                    isr,
                });
            }
        }
    }
    commands
}

/// The leader and ISR a pipeline's partition `p` should have: led by `target`, the
/// followed partition's leader, when that node is alive and in sync; else as [`elect`]
/// decides (until it is: a follower that caught up rejoins the ISR, and the next plan moves
/// the leadership to it).
fn follow(
    p: &PartitionState,
    target: Option<NodeId>,
    alive: &BTreeSet<NodeId>,
    unclean: bool,
) -> Option<(Option<NodeId>, Vec<NodeId>)> {
    let live_isr = live_isr(p, alive);
    match target {
        Some(t) if live_isr.contains(&t) => Some((Some(t), live_isr)),
        _ => elect(p, alive, unclean, false, None),
    }
}

/// The members of `p`'s ISR that are `alive`.
fn live_isr(p: &PartitionState, alive: &BTreeSet<NodeId>) -> Vec<NodeId> {
    p.isr
        .iter()
        .copied()
        .filter(|n| alive.contains(n))
        .collect()
}

/// The leader and ISR `p` should have with `alive` nodes, or `None` to leave it as is.
/// `ready`, for a partition pipelines' topics follow: the nodes in sync in all of them,
/// preferred in an election, and the only ones it moves to when rebalanced.
fn elect(
    p: &PartitionState,
    alive: &BTreeSet<NodeId>,
    unclean: bool,
    rebalance: bool,
    ready: Option<&BTreeSet<NodeId>>,
) -> Option<(Option<NodeId>, Vec<NodeId>)> {
    let is_ready = |n: &NodeId| ready.is_none_or(|r| r.contains(n));
    let live_isr = live_isr(p, alive);
    let leader_alive = p.leader.is_some_and(|l| alive.contains(&l));
    if leader_alive {
        let leader = p.leader.expect("alive");
        let preferred = p.replicas[0];
        if rebalance && leader != preferred && live_isr.contains(&preferred) && is_ready(&preferred)
        {
            return Some((Some(preferred), live_isr));
        }
        // Dead followers leave the ISR, so the high watermark does not wait for them.
        return Some((Some(leader), live_isr));
    }
    // The leader is gone: the first live ISR member in preference order takes over (one
    // that its followers can follow at once, if any).
    let next = p
        .replicas
        .iter()
        .copied()
        .filter(|r| live_isr.contains(r))
        .min_by_key(|r| !is_ready(r));
    if let Some(next) = next {
        return Some((Some(next), live_isr));
    }
    if unclean && let Some(any) = p.replicas.iter().copied().find(|r| alive.contains(r)) {
        return Some((Some(any), vec![any]));
    }
    // Offline: no leader, and the last ISR kept, so that one of them leads when it returns
    // rather than a replica that may lack acknowledged records.
    if p.leader.is_some() {
        return Some((None, p.isr.clone()));
    }
    None
}

/// Why replicas cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Fewer live nodes than copies asked for.
    #[error("replication factor {factor} is larger than the {alive} live node(s) of the cluster")]
    ReplicationFactor {
        /// Copies asked for.
        factor: usize,
        /// Live nodes.
        alive: usize,
    },
    /// No partitions or no copies asked for.
    #[error("a topic needs at least one partition and one replica")]
    Empty,
}

/// Places `partitions` partitions of `factor` copies each on the live nodes, as Kafka
/// does: partition `p`'s preferred leader is node `(start + p) mod n`, its followers the
/// next ones, so leaders spread evenly; `start` comes from the topic's name, so topics do
/// not all start on the same node.
pub fn place(
    metadata: &Metadata,
    topic: &str,
    partitions: usize,
    factor: usize,
) -> Result<Vec<Vec<NodeId>>, PlaceError> {
    if partitions == 0 || factor == 0 {
        return Err(PlaceError::Empty);
    }
    let nodes: Vec<NodeId> = metadata.alive().collect();
    if factor > nodes.len() {
        return Err(PlaceError::ReplicationFactor {
            factor,
            alive: nodes.len(),
        });
    }
    let start = topic.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    Ok((0..partitions)
        .map(|p| {
            (0..factor)
                .map(|i| nodes[(start + p + i) % nodes.len()])
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u64) -> Metadata {
        let mut m = Metadata::default();
        for id in 1..=nodes {
            m.apply(&Command::RegisterNode {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
                api: None,
            });
        }
        m
    }

    fn heard(ids: &[NodeId]) -> View {
        View {
            heard: ids.iter().map(|i| (*i, 1)).collect(),
            ..View::default()
        }
    }

    fn apply_all(m: &mut Metadata, commands: &[Command]) {
        for c in commands {
            assert_eq!(m.apply(c).refused, None, "{c:?}");
        }
    }

    #[test]
    fn a_dead_leader_is_fenced_and_replaced_by_the_next_in_sync_replica() {
        let mut m = cluster(3);
        let replicas = place(&m, "orders", 3, 3).unwrap();
        apply_all(
            &mut m,
            &[Command::CreateTopic {
                name: "orders".into(),
                replicas,
                configs: BTreeMap::new(),
                anchor: None,
            }],
        );
        assert!(plan(&m, &heard(&[1, 2, 3])).is_empty(), "all well");
        let commands = plan(&m, &heard(&[1, 3]));
        assert!(matches!(commands[0], Command::FenceNode { id: 2, .. }));
        apply_all(&mut m, &commands);
        for p in &m.topics["orders"].partitions {
            assert_ne!(p.leader, Some(2));
            assert!(!p.isr.contains(&2));
            assert_eq!(p.isr.len(), 2);
        }
        assert!(plan(&m, &heard(&[1, 3])).is_empty(), "settled");
    }

    #[test]
    fn without_a_live_in_sync_replica_the_partition_waits_offline_unless_unclean() {
        let mut m = cluster(2);
        for (name, unclean) in [("clean", "false"), ("unclean", "true")] {
            apply_all(
                &mut m,
                &[Command::CreateTopic {
                    name: name.into(),
                    replicas: vec![vec![1, 2]],
                    configs: [(UNCLEAN_ELECTION.to_string(), unclean.to_string())].into(),
                    anchor: None,
                }],
            );
        }
        // Node 2 falls out of the ISR, then node 1 (the leader) dies.
        for name in ["clean", "unclean"] {
            apply_all(
                &mut m,
                &[Command::AlterPartition {
                    topic: name.into(),
                    partition: 0,
                    partition_epoch: 0,
                    leader: Some(1),
                    isr: vec![1],
                }],
            );
        }
        let commands = plan(&m, &heard(&[2]));
        apply_all(&mut m, &commands);
        let clean = m.partition("clean", 0).unwrap();
        assert_eq!((clean.leader, clean.isr.clone()), (None, vec![1]));
        let unclean = m.partition("unclean", 0).unwrap();
        assert_eq!((unclean.leader, unclean.isr.clone()), (Some(2), vec![2]));
        // Node 1 returns: it leads the clean partition again.
        apply_all(
            &mut m,
            &[Command::RegisterNode {
                id: 1,
                addr: "127.0.0.1:9001".into(),
                api: None,
            }],
        );
        let view = View {
            heard: [(1, 2), (2, 1)].into(),
            ..View::default()
        };
        let commands = plan(&m, &view);
        apply_all(&mut m, &commands);
        assert_eq!(m.partition("clean", 0).unwrap().leader, Some(1));
    }

    /// Sets a partition's leader and ISR (as its leader's ISR changes and elections do).
    fn set(
        m: &mut Metadata,
        topic: &str,
        partition: u32,
        leader: Option<NodeId>,
        isr: Vec<NodeId>,
    ) {
        let p = m.partition(topic, partition).unwrap().clone();
        apply_all(
            m,
            &[Command::AlterPartition {
                topic: topic.into(),
                partition,
                partition_epoch: p.partition_epoch,
                leader,
                isr,
            }],
        );
    }

    #[test]
    fn a_pipelines_topics_follow_the_leader_of_their_anchor() {
        let mut m = cluster(3);
        let anchor = crate::metadata::Anchor {
            pipeline: "p".into(),
            topic: "__cluster_transactions".into(),
            partition: 0,
        };
        apply_all(
            &mut m,
            &[
                Command::CreateTopic {
                    name: "__cluster_transactions".into(),
                    replicas: vec![vec![2, 3, 1]],
                    configs: BTreeMap::new(),
                    anchor: None,
                },
                // Placed with node 1 first, but led where the anchor is.
                Command::CreateTopic {
                    name: "out".into(),
                    replicas: vec![vec![1, 2, 3], vec![1, 2, 3]],
                    configs: BTreeMap::new(),
                    anchor: Some(anchor),
                },
            ],
        );
        let leaders = |m: &Metadata| -> Vec<Option<NodeId>> {
            m.topics["out"]
                .partitions
                .iter()
                .map(|p| p.leader)
                .collect()
        };
        assert_eq!(leaders(&m), [Some(2), Some(2)]);
        assert!(plan(&m, &heard(&[1, 2, 3])).is_empty(), "settled");
        // The anchor's leader dies: the pipeline's partitions move with the anchor, in the
        // same plan.
        let commands = plan(&m, &heard(&[1, 3]));
        apply_all(&mut m, &commands);
        let now = m.partition("__cluster_transactions", 0).unwrap().leader;
        assert_eq!(now, Some(3));
        assert_eq!(leaders(&m), [now, now]);
        // A partition whose copy on the anchor's new leader is not in sync is led as usual
        // meanwhile, and follows once that copy is back in the ISR.
        set(&mut m, "out", 1, Some(1), vec![1]);
        assert!(
            plan(&m, &heard(&[1, 3])).is_empty(),
            "node 3 is not in sync"
        );
        set(&mut m, "out", 1, Some(1), vec![1, 3]);
        let commands = plan(&m, &heard(&[1, 3]));
        apply_all(&mut m, &commands);
        assert_eq!(leaders(&m), [Some(3), Some(3)]);
        // The preferred replica's return moves the anchor, and its topics with it.
        apply_all(
            &mut m,
            &[Command::RegisterNode {
                id: 2,
                addr: "127.0.0.1:9002".into(),
                api: None,
            }],
        );
        let view = View {
            heard: [(1, 1), (2, 2), (3, 1)].into(),
            rebalance_leaders: true,
            ..View::default()
        };
        for t in ["__cluster_transactions", "out"] {
            if t == "out" {
                // Node 2 is in sync in the anchor only: leadership stays, or the pipeline
                // would lead its anchor without its topics.
                let commands = plan(&m, &view);
                assert!(commands.is_empty(), "{commands:?}");
            }
            for i in 0..m.topics[t].partitions.len() {
                let p = m.partition(t, i as u32).unwrap().clone();
                let mut isr = p.isr.clone();
                isr.push(2);
                set(&mut m, t, i as u32, p.leader, isr);
            }
        }
        let commands = plan(&m, &view);
        apply_all(&mut m, &commands);
        assert_eq!(leaders(&m), [Some(2), Some(2)]);
    }

    #[test]
    fn a_new_controller_gives_unheard_nodes_a_grace_period() {
        let m = cluster(3);
        let view = View {
            heard: [(1, 1)].into(),
            grace: [2, 3].into(),
            ..View::default()
        };
        assert!(plan(&m, &view).is_empty());
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica_when_asked() {
        let mut m = cluster(2);
        apply_all(
            &mut m,
            &[
                Command::CreateTopic {
                    name: "t".into(),
                    replicas: vec![vec![1, 2]],
                    configs: BTreeMap::new(),
                    anchor: None,
                },
                Command::AlterPartition {
                    topic: "t".into(),
                    partition: 0,
                    partition_epoch: 0,
                    leader: Some(2),
                    isr: vec![1, 2],
                },
            ],
        );
        assert!(plan(&m, &heard(&[1, 2])).is_empty());
        let mut view = heard(&[1, 2]);
        view.rebalance_leaders = true;
        let commands = plan(&m, &view);
        apply_all(&mut m, &commands);
        assert_eq!(m.partition("t", 0).unwrap().leader, Some(1));
    }

    #[test]
    fn placement_spreads_leaders_and_refuses_more_copies_than_nodes() {
        let m = cluster(3);
        let replicas = place(&m, "t", 6, 2).unwrap();
        let mut leaders = BTreeMap::new();
        for r in &replicas {
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(
            place(&m, "t", 1, 4),
            Err(PlaceError::ReplicationFactor {
                factor: 4,
                alive: 3
            })
        );
    }
}
