//! The group coordinator: the pure state machine that admits consumer-group members, computes
//! their target assignment and hands partitions over so that no two members own one at once.
//!
//! # Protocol
//!
//! A member joins by heartbeating without an id and gets an id and a member epoch back. Each
//! heartbeat carries what the member subscribes to and what it currently consumes (`owned`);
//! the response says what it may consume now (`assignment`) and what is on its way to it
//! (`pending`).
//!
//! Any change of membership, of a member's subscription or of the partition counts bumps the
//! group epoch and recomputes the *target* assignment with the group's [`Assignor`]. Each
//! member then converges to its target on its own heartbeats:
//!
//! * partitions outside its target are revoked at once (they leave `assignment`, and the
//!   member must stop consuming them and stop reporting them in `owned`);
//! * a partition of its target is granted only when no other member still has it granted or
//!   still reports owning it. The coordinator keeps believing a member owns a revoked
//!   partition until that member heartbeats without it.
//!
//! So a partition moves in two steps, and members whose target did not change are never
//! interrupted. Whenever a member's granted assignment changes, its member epoch advances to
//! the group epoch.
//!
//! # Epochs and fencing
//!
//! A heartbeat must carry the member's current epoch, or — to survive one lost response — the
//! previous one provided everything it reports owning is still granted to it (as in KIP-848).
//! Anything else fences the member: it is removed from the group (its partitions are freed at
//! once, as on leave) and gets [`GroupError::FencedMemberEpoch`]; it must then drop all its
//! partitions and rejoin without an id. Partitions a member reports owning that were never
//! granted to it are ignored, so a misbehaving member cannot block them for others.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::assignor::{Assignor, TopicPartition};
use super::classic::{
    ClassicError, ClassicGroups, ClassicState, Deliveries, JoinRequest, JoinResult, Reply,
};

/// The heartbeat interval the coordinator asks for unless configured otherwise (Kafka's
/// `group.consumer.heartbeat.interval.ms` default).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// One member heartbeat (or join): what the member wants and what it currently consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The group id; must not be empty.
    pub group: String,
    /// The member's id as the coordinator gave it; `None` joins the group as a new member.
    pub member_id: Option<String>,
    /// The member epoch from the last response the member received (ignored on join).
    pub member_epoch: u64,
    /// The topics the member subscribes to; a change triggers a rebalance.
    pub subscription: BTreeSet<String>,
    /// The partitions the member is consuming right now. Dropping a revoked partition from
    /// here is what releases it to its next owner.
    pub owned: BTreeSet<TopicPartition>,
    /// The assignor the member wants; must match the group's unless the group is empty.
    pub assignor: Assignor,
    /// How long after this heartbeat the member may be silent before [`GroupCoordinator::expire`]
    /// removes it; must be positive.
    pub session_timeout_ms: u64,
    /// Current partition counts of (at least) the subscribed topics, supplied by the caller;
    /// a subscribed topic missing here keeps the count the group knew (none if never known).
    pub partitions: BTreeMap<String, u32>,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The member's id; a joining member must use it from now on.
    pub member_id: String,
    /// The member's epoch; send it with the next heartbeat and with offset commits.
    pub member_epoch: u64,
    /// Exactly what the member may consume now: it must stop consuming anything else.
    pub assignment: BTreeSet<TopicPartition>,
    /// Partitions of the member's target that another member is still releasing; they will
    /// appear in `assignment` on a later heartbeat.
    pub pending: BTreeSet<TopicPartition>,
    /// How long the member should wait before its next heartbeat (at most a third of its
    /// session timeout).
    pub heartbeat_interval_ms: u64,
}

/// The reconciliation state of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupState {
    /// The group has no members.
    Empty,
    /// Some member's granted assignment differs from its target, or it still reports owning a
    /// partition that was revoked from it.
    Reconciling,
    /// Every member owns exactly its target assignment.
    Stable,
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupState::Empty => "Empty",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
        })
    }
}

/// A snapshot of one member, for administration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    /// The member's id.
    pub member_id: String,
    /// The member's current epoch.
    pub member_epoch: u64,
    /// The topics it subscribes to.
    pub subscription: BTreeSet<String>,
    /// The partitions currently granted to it.
    pub assignment: BTreeSet<TopicPartition>,
    /// Partitions of its target still being released by another member.
    pub pending: BTreeSet<TopicPartition>,
}

/// A snapshot of one group, for administration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    /// The group's reconciliation state.
    pub state: GroupState,
    /// The group epoch: bumped on every membership, subscription or partition-count change.
    pub epoch: u64,
    /// The assignor the group computes targets with.
    pub assignor: Assignor,
    /// The members, sorted by id.
    pub members: Vec<MemberDescription>,
}

/// Why the coordinator refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group does not exist.
    #[error("group `{group}` does not exist")]
    UnknownGroup {
        /// The group asked for.
        group: String,
    },
    /// The member id is not (or no longer) part of the group; the member must rejoin.
    #[error("member `{member}` is not part of group `{group}`")]
    UnknownMember {
        /// The group asked for.
        group: String,
        /// The member id given.
        member: String,
    },
    /// The member sent an epoch it cannot legitimately have. On a heartbeat the member has
    /// been removed from the group and must drop its partitions and rejoin.
    #[error(
        "member `{member}` of group `{group}` is fenced: it sent epoch {epoch}, its epoch is {current}"
    )]
    FencedMemberEpoch {
        /// The group.
        group: String,
        /// The fenced member.
        member: String,
        /// The epoch the member sent.
        epoch: u64,
        /// The member's epoch at the coordinator.
        current: u64,
    },
    /// An offset commit carried an older member epoch: the member must heartbeat first.
    #[error(
        "member `{member}` of group `{group}` committed with stale epoch {epoch}, its epoch is {current}"
    )]
    StaleMemberEpoch {
        /// The group.
        group: String,
        /// The committing member.
        member: String,
        /// The epoch the member sent.
        epoch: u64,
        /// The member's epoch at the coordinator.
        current: u64,
    },
    /// The member asked for a different assignor than the one the group uses.
    #[error(
        "{} asked group `{group}` for assignor `{requested}`, but the group uses `{current}`",
        .member.as_deref().map_or_else(|| "a joining member".to_owned(), |m| format!("member `{m}`"))
    )]
    InconsistentAssignor {
        /// The group.
        group: String,
        /// The member, or `None` for a joining member.
        member: Option<String>,
        /// The assignor the member asked for.
        requested: Assignor,
        /// The group's assignor.
        current: Assignor,
    },
    /// An offset commit covered a partition not granted to (nor being released by) the member.
    #[error(
        "member `{member}` of group `{group}` at epoch {epoch} committed `{partition}`, which is not assigned to it"
    )]
    NotAssigned {
        /// The group.
        group: String,
        /// The committing member.
        member: String,
        /// The member's epoch.
        epoch: u64,
        /// The first offending partition.
        partition: TopicPartition,
    },
    /// A Kafka client's classic-protocol request was refused.
    #[error(transparent)]
    Classic(#[from] ClassicError),
    /// The operation needs a group without members.
    #[error("group `{group}` still has {members} member(s)")]
    GroupNotEmpty {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
    },
    /// The request is malformed.
    #[error("invalid request for group `{group}`: {reason}")]
    InvalidRequest {
        /// The group named in the request.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl GroupError {
    /// True when the member is no longer part of its group and must drop its partitions and
    /// join again as a new member.
    pub fn requires_rejoin(&self) -> bool {
        matches!(
            self,
            GroupError::UnknownMember { .. } | GroupError::FencedMemberEpoch { .. }
        )
    }
}

/// The coordinator's view of one member.
#[derive(Debug, Clone)]
struct Member {
    epoch: u64,
    /// The epoch before the last advance: accepted once more in case the response that
    /// advanced it was lost.
    previous_epoch: u64,
    subscription: BTreeSet<String>,
    /// What the member may consume (the last `assignment` sent, or about to be sent).
    assigned: BTreeSet<TopicPartition>,
    /// What the member last reported consuming, restricted to what it was ever granted; blocks
    /// those partitions for everybody else until the member reports dropping them.
    owned: BTreeSet<TopicPartition>,
    session_timeout_ms: u64,
    last_heartbeat_ms: u64,
}

#[derive(Debug, Clone)]
struct Group {
    epoch: u64,
    assignor: Assignor,
    /// Partition counts of the subscribed topics.
    partitions: BTreeMap<String, u32>,
    members: BTreeMap<String, Member>,
    /// The target assignment for `epoch`; every member has an entry.
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
}

impl Group {
    fn new(assignor: Assignor) -> Self {
        Group {
            epoch: 0,
            assignor,
            partitions: BTreeMap::new(),
            members: BTreeMap::new(),
            target: BTreeMap::new(),
        }
    }

    /// Starts a new group epoch and recomputes the target for it.
    fn bump(&mut self) {
        self.epoch += 1;
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscription.clone()))
            .collect();
        let subscribed: BTreeSet<&String> = subscriptions.values().flatten().collect();
        // Forget counts nobody needs, so a later resubscription takes the caller's fresh count.
        self.partitions
            .retain(|topic, _| subscribed.contains(topic));
        self.target = self.assignor.assign(&subscriptions, &self.partitions);
    }

    /// Removes members (freeing their partitions at once); bumps the epoch if any was removed.
    fn remove_members(&mut self, ids: &[String]) {
        let before = self.members.len();
        for id in ids {
            self.members.remove(id);
        }
        if self.members.len() != before {
            self.bump();
        }
    }

    fn target_of(&self, id: &str) -> BTreeSet<TopicPartition> {
        self.target.get(id).cloned().unwrap_or_default()
    }

    /// Whether a member other than `id` has `tp` granted or still reports owning it.
    fn held_by_other(&self, id: &str, tp: &TopicPartition) -> bool {
        self.members
            .iter()
            .any(|(other, m)| other != id && (m.assigned.contains(tp) || m.owned.contains(tp)))
    }

    /// Moves member `id` towards its target: revokes what left the target, grants what is
    /// free. Returns the pending part of the target.
    fn reconcile(&mut self, id: &str) -> BTreeSet<TopicPartition> {
        let target = self.target_of(id);
        let Some(member) = self.members.get(id) else {
            return BTreeSet::new();
        };
        let mut granted: BTreeSet<TopicPartition> =
            member.assigned.intersection(&target).cloned().collect();
        let candidates: Vec<TopicPartition> =
            target.difference(&member.assigned).cloned().collect();
        for tp in candidates {
            if !self.held_by_other(id, &tp) {
                granted.insert(tp);
            }
        }
        let pending = target.difference(&granted).cloned().collect();
        let epoch = self.epoch;
        if let Some(member) = self.members.get_mut(id)
            && member.assigned != granted
        {
            if member.epoch != epoch {
                member.previous_epoch = member.epoch;
                member.epoch = epoch;
            }
            member.assigned = granted;
        }
        pending
    }

    fn state(&self) -> GroupState {
        if self.members.is_empty() {
            return GroupState::Empty;
        }
        let reconciling = self.members.iter().any(|(id, m)| {
            self.target.get(id).is_none_or(|t| *t != m.assigned) || !m.owned.is_subset(&m.assigned)
        });
        if reconciling {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    fn describe(&self) -> GroupDescription {
        GroupDescription {
            state: self.state(),
            epoch: self.epoch,
            assignor: self.assignor,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    member_epoch: m.epoch,
                    subscription: m.subscription.clone(),
                    assignment: m.assigned.clone(),
                    pending: self
                        .target_of(id)
                        .difference(&m.assigned)
                        .cloned()
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The state machine of every consumer group: membership, target assignments and hand-overs.
///
/// It performs no IO and reads no clock; callers pass `now_ms` (any monotonic millisecond
/// clock) and serialise calls. Its state is not persisted: after a restart members get
/// [`GroupError::UnknownMember`] and rejoin, which is safe because commits are validated
/// against the live membership.
#[derive(Debug, Clone)]
pub struct GroupCoordinator {
    groups: BTreeMap<String, Group>,
    /// Groups that Kafka clients joined with the classic protocol; a group id has members of
    /// one kind at a time.
    pub classic: ClassicGroups,
    /// Member ids are numbered coordinator-wide so an id is never reused, even when a group
    /// is deleted and recreated: a stale client can never pass for a newer member.
    next_member: u64,
    heartbeat_interval_ms: u64,
}

impl Default for GroupCoordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupCoordinator {
    /// A coordinator with no groups, asking for [`DEFAULT_HEARTBEAT_INTERVAL_MS`].
    pub fn new() -> Self {
        Self::with_heartbeat_interval(DEFAULT_HEARTBEAT_INTERVAL_MS)
    }

    /// A coordinator with no groups asking members to heartbeat every `heartbeat_interval_ms`
    /// (still capped per member at a third of its session timeout).
    pub fn with_heartbeat_interval(heartbeat_interval_ms: u64) -> Self {
        GroupCoordinator {
            groups: BTreeMap::new(),
            classic: ClassicGroups::default(),
            next_member: 0,
            heartbeat_interval_ms,
        }
    }

    /// Handles a heartbeat or, with `member_id: None`, a join (which creates the group if
    /// needed, with the joining member's assignor).
    ///
    /// On success the member's liveness is refreshed, its subscription and the topic partition
    /// counts are taken in (bumping the group epoch if anything changed) and it is moved towards
    /// its target as described in the module documentation. Errors:
    /// [`GroupError::InvalidRequest`] (empty group id, zero session timeout),
    /// [`GroupError::UnknownMember`], [`GroupError::InconsistentAssignor`] — all without any
    /// change — and [`GroupError::FencedMemberEpoch`], after which the member is no longer in
    /// the group.
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, GroupError> {
        let HeartbeatRequest {
            group: group_id,
            member_id,
            member_epoch,
            subscription,
            owned,
            assignor,
            session_timeout_ms,
            partitions,
        } = req;
        if group_id.is_empty() {
            return Err(GroupError::InvalidRequest {
                group: group_id,
                reason: "the group id is empty".to_owned(),
            });
        }
        if session_timeout_ms == 0 {
            return Err(GroupError::InvalidRequest {
                group: group_id,
                reason: "the session timeout is zero".to_owned(),
            });
        }

        let (member_id, joined) = match member_id {
            None => (self.join(now_ms, &group_id, assignor)?, true),
            Some(id) => {
                self.check_member(&group_id, &id, member_epoch, &owned, assignor)?;
                (id, false)
            }
        };
        let Some(group) = self.groups.get_mut(&group_id) else {
            // join created the group and check_member found it.
            return Err(GroupError::UnknownMember {
                group: group_id,
                member: member_id,
            });
        };
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(GroupError::UnknownMember {
                group: group_id,
                member: member_id,
            });
        };

        member.last_heartbeat_ms = now_ms;
        member.session_timeout_ms = session_timeout_ms;
        // Only what was granted (or is still being released) can be owned; anything else the
        // member claims is ignored rather than allowed to block other members.
        let reported: BTreeSet<TopicPartition> = owned
            .into_iter()
            .filter(|tp| member.assigned.contains(tp) || member.owned.contains(tp))
            .collect();
        member.owned = reported;
        let mut changed = joined;
        if member.subscription != subscription {
            member.subscription = subscription;
            changed = true;
        }
        for (topic, count) in partitions {
            if member.subscription.contains(&topic) && group.partitions.get(&topic) != Some(&count)
            {
                group.partitions.insert(topic, count);
                changed = true;
            }
        }
        if changed {
            group.bump();
            debug!(group = %group_id, member = %member_id, epoch = group.epoch, "group epoch bumped");
        }
        if joined && let Some(member) = group.members.get_mut(&member_id) {
            member.epoch = group.epoch;
            member.previous_epoch = group.epoch;
        }

        let pending = group.reconcile(&member_id);
        let Some(member) = group.members.get(&member_id) else {
            return Err(GroupError::UnknownMember {
                group: group_id,
                member: member_id,
            });
        };
        Ok(HeartbeatResponse {
            member_epoch: member.epoch,
            assignment: member.assigned.clone(),
            pending,
            heartbeat_interval_ms: self
                .heartbeat_interval_ms
                .min(session_timeout_ms / 3)
                .max(1),
            member_id,
        })
    }

    /// Admits a new member (state is filled in by the caller) and returns its id.
    fn join(
        &mut self,
        now_ms: u64,
        group_id: &str,
        assignor: Assignor,
    ) -> Result<String, GroupError> {
        let classic = self.classic.members(group_id);
        if classic > 0 {
            return Err(GroupError::InvalidRequest {
                group: group_id.to_owned(),
                reason: format!(
                    "{classic} Kafka client(s) are members of this group (classic protocol); use another group id"
                ),
            });
        }
        if let Some(group) = self.groups.get(group_id)
            && !group.members.is_empty()
            && group.assignor != assignor
        {
            return Err(GroupError::InconsistentAssignor {
                group: group_id.to_owned(),
                member: None,
                requested: assignor,
                current: group.assignor,
            });
        }
        self.next_member += 1;
        let id = format!("{group_id}-member-{}", self.next_member);
        let group = self
            .groups
            .entry(group_id.to_owned())
            .or_insert_with(|| Group::new(assignor));
        // An empty group adopts the assignor of whoever joins first.
        if group.members.is_empty() {
            group.assignor = assignor;
        }
        group.members.insert(
            id.clone(),
            Member {
                epoch: 0,
                previous_epoch: 0,
                subscription: BTreeSet::new(),
                assigned: BTreeSet::new(),
                owned: BTreeSet::new(),
                session_timeout_ms: 0,
                last_heartbeat_ms: now_ms,
            },
        );
        debug!(group = %group_id, member = %id, "member joined");
        Ok(id)
    }

    /// Checks an existing member's heartbeat credentials; fences (removes) it on a bad epoch.
    fn check_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        member_epoch: u64,
        owned: &BTreeSet<TopicPartition>,
        assignor: Assignor,
    ) -> Result<(), GroupError> {
        let unknown = || GroupError::UnknownMember {
            group: group_id.to_owned(),
            member: member_id.to_owned(),
        };
        let group = self.groups.get_mut(group_id).ok_or_else(unknown)?;
        let member = group.members.get(member_id).ok_or_else(unknown)?;
        if group.assignor != assignor {
            return Err(GroupError::InconsistentAssignor {
                group: group_id.to_owned(),
                member: Some(member_id.to_owned()),
                requested: assignor,
                current: group.assignor,
            });
        }
        let current = member.epoch;
        // The previous epoch means the last response was lost; it is safe only if the member
        // does not still consume something that response revoked.
        let acceptable = member_epoch == current
            || (member_epoch == member.previous_epoch
                && member_epoch < current
                && owned.is_subset(&member.assigned));
        if acceptable {
            return Ok(());
        }
        group.remove_members(&[member_id.to_owned()]);
        debug!(group = %group_id, member = %member_id, epoch = member_epoch, current, "member fenced");
        Err(GroupError::FencedMemberEpoch {
            group: group_id.to_owned(),
            member: member_id.to_owned(),
            epoch: member_epoch,
            current,
        })
    }

    /// Removes a member that leaves voluntarily: its partitions are free for the others at
    /// once and the group epoch is bumped. [`GroupError::UnknownMember`] if it is not there.
    pub fn leave(&mut self, now_ms: u64, group: &str, member_id: &str) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(group)
            .filter(|g| g.members.contains_key(member_id))
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.to_owned(),
                member: member_id.to_owned(),
            })?;
        g.remove_members(&[member_id.to_owned()]);
        debug!(
            group,
            member = member_id,
            now_ms,
            epoch = g.epoch,
            "member left"
        );
        Ok(())
    }

    /// Removes, as [`leave`](Self::leave) would, every member whose last successful heartbeat
    /// is more than its session timeout before `now_ms`; returns them as `(group, member)`
    /// pairs, sorted.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        for (name, group) in &mut self.groups {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| now_ms.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms)
                .map(|(id, _)| id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            group.remove_members(&expired);
            for member in expired {
                debug!(group = %name, member = %member, now_ms, "member session expired");
                removed.push((name.clone(), member));
            }
        }
        removed
    }

    /// Decides whether an offset commit for `partitions` may be stored.
    ///
    /// With `member_id: None` it is a standalone ("simple") commit, as used with manual
    /// partition assignment: allowed only while the group has no members (or does not exist),
    /// otherwise [`GroupError::GroupNotEmpty`] — it could overwrite a live member's progress.
    /// `member_epoch` is then ignored.
    ///
    /// A member commit needs a current member ([`GroupError::UnknownMember`]) at exactly its
    /// current epoch ([`GroupError::StaleMemberEpoch`] if older, [`GroupError::FencedMemberEpoch`]
    /// if newer), and may cover only partitions granted to it or that it is still releasing —
    /// the latter so a member can commit its final offsets before letting a partition go
    /// ([`GroupError::NotAssigned`] otherwise). Nothing changes either way.
    pub fn validate_commit(
        &self,
        group: &str,
        member_id: Option<&str>,
        member_epoch: u64,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        let g = self.groups.get(group);
        let Some(member_id) = member_id else {
            let members = g.map_or(0, |g| g.members.len()) + self.classic.members(group);
            return match members {
                0 => Ok(()),
                members => Err(GroupError::GroupNotEmpty {
                    group: group.to_owned(),
                    members,
                }),
            };
        };
        let member =
            g.and_then(|g| g.members.get(member_id))
                .ok_or_else(|| GroupError::UnknownMember {
                    group: group.to_owned(),
                    member: member_id.to_owned(),
                })?;
        if member_epoch != member.epoch {
            let (group, member, epoch, current) = (
                group.to_owned(),
                member_id.to_owned(),
                member_epoch,
                member.epoch,
            );
            return Err(if member_epoch < current {
                GroupError::StaleMemberEpoch {
                    group,
                    member,
                    epoch,
                    current,
                }
            } else {
                GroupError::FencedMemberEpoch {
                    group,
                    member,
                    epoch,
                    current,
                }
            });
        }
        if let Some(tp) = partitions
            .iter()
            .find(|tp| !member.assigned.contains(tp) && !member.owned.contains(tp))
        {
            return Err(GroupError::NotAssigned {
                group: group.to_owned(),
                member: member_id.to_owned(),
                epoch: member_epoch,
                partition: tp.clone(),
            });
        }
        Ok(())
    }

    /// A snapshot of `group`, or `None` if it does not exist.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        match (self.groups.get(group), self.classic.describe(group)) {
            (Some(g), Some(c)) if g.members.is_empty() && !c.members.is_empty() => {
                Some(describe_classic(&c))
            }
            (Some(g), _) => Some(g.describe()),
            (None, Some(c)) => Some(describe_classic(&c)),
            (None, None) => None,
        }
    }

    /// Every group as `(group, state, member count)`, sorted by group id.
    pub fn list(&self) -> Vec<(String, GroupState, usize)> {
        let mut all: BTreeMap<String, (GroupState, usize)> = self
            .classic
            .list()
            .into_iter()
            .map(|(name, state, n)| (name, (classic_state(state), n)))
            .collect();
        for (name, g) in &self.groups {
            // Classic groups left empty yield to an embedded group of the same id.
            if !g.members.is_empty() || !all.contains_key(name) {
                all.insert(name.clone(), (g.state(), g.members.len()));
            }
        }
        all.into_iter().map(|(g, (s, n))| (g, s, n)).collect()
    }

    /// Handles a classic-protocol JoinGroup (see [`ClassicGroups::join`]); refused while
    /// embedded consumers are members of the group.
    pub fn classic_join(
        &mut self,
        now_ms: u64,
        req: JoinRequest,
        out: &mut Deliveries,
    ) -> Reply<JoinResult> {
        let embedded = self.groups.get(&req.group).map_or(0, |g| g.members.len());
        if embedded > 0 {
            return Reply::Now(Err(ClassicError::InconsistentGroupProtocol(format!(
                "group '{}' has {embedded} member(s) from Sluice's own consumers (a pipeline or query); use another group id",
                req.group
            ))));
        }
        self.classic.join(now_ms, req, out)
    }

    /// Forgets a group that has no members ([`GroupError::GroupNotEmpty`] otherwise,
    /// [`GroupError::UnknownGroup`] if it does not exist). Committed offsets are the caller's
    /// to delete.
    pub fn delete_group(&mut self, group: &str) -> Result<(), GroupError> {
        let embedded = self.groups.get(group);
        let classic = self.classic.describe(group);
        if embedded.is_none() && classic.is_none() {
            return Err(GroupError::UnknownGroup {
                group: group.to_owned(),
            });
        }
        let members = embedded.map_or(0, |g| g.members.len()) + self.classic.members(group);
        if members > 0 {
            return Err(GroupError::GroupNotEmpty {
                group: group.to_owned(),
                members,
            });
        }
        self.groups.remove(group);
        self.classic.remove_if_empty(group);
        Ok(())
    }
}

/// A classic group's state in the embedded protocol's terms.
fn classic_state(state: ClassicState) -> GroupState {
    match state {
        ClassicState::Empty => GroupState::Empty,
        ClassicState::Stable => GroupState::Stable,
        ClassicState::PreparingRebalance | ClassicState::CompletingRebalance => {
            GroupState::Reconciling
        }
    }
}

/// A classic group described like an embedded one: generation as epoch, subscriptions and
/// assignments read from the consumer protocol's blobs.
fn describe_classic(c: &super::classic::ClassicDescription) -> GroupDescription {
    GroupDescription {
        state: classic_state(c.state),
        epoch: c.generation.max(0) as u64,
        assignor: c.protocol.parse().unwrap_or_default(),
        members: c
            .members
            .iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                member_epoch: c.generation.max(0) as u64,
                subscription: super::classic::consumer_subscription_topics(&m.metadata),
                assignment: super::classic::consumer_assignment(&m.assignment),
                pending: BTreeSet::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_MS: u64 = 6_000;

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    fn tps(list: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        list.iter().map(|(t, p)| tp(t, *p)).collect()
    }

    fn all_partitions(
        topics: &BTreeMap<String, u32>,
        subscribed: &BTreeSet<String>,
    ) -> BTreeSet<TopicPartition> {
        subscribed
            .iter()
            .flat_map(|t| (0..topics.get(t).copied().unwrap_or(0)).map(move |p| tp(t, p)))
            .collect()
    }

    /// A well-behaved consumer as the tests drive it: it consumes what it was last granted and
    /// reports that as `owned`.
    #[derive(Debug, Clone)]
    struct Client {
        group: String,
        id: Option<String>,
        epoch: u64,
        subscription: BTreeSet<String>,
        assignor: Assignor,
        /// What this consumer is actually consuming right now.
        consuming: BTreeSet<TopicPartition>,
        pending: BTreeSet<TopicPartition>,
    }

    impl Client {
        fn new(group: &str, topics: &[&str]) -> Self {
            Client {
                group: group.to_owned(),
                id: None,
                epoch: 0,
                subscription: topics.iter().map(|t| t.to_string()).collect(),
                assignor: Assignor::Range,
                consuming: BTreeSet::new(),
                pending: BTreeSet::new(),
            }
        }

        fn id(&self) -> &str {
            self.id.as_deref().expect("client has joined")
        }

        fn request(&self, topics: &BTreeMap<String, u32>) -> HeartbeatRequest {
            HeartbeatRequest {
                group: self.group.clone(),
                member_id: self.id.clone(),
                member_epoch: self.epoch,
                subscription: self.subscription.clone(),
                owned: self.consuming.clone(),
                assignor: self.assignor,
                session_timeout_ms: SESSION_MS,
                partitions: topics
                    .iter()
                    .filter(|(t, _)| self.subscription.contains(*t))
                    .map(|(t, n)| (t.clone(), *n))
                    .collect(),
            }
        }

        /// Heartbeats and applies the answer. With `release: false` the consumer is slow and
        /// keeps consuming revoked partitions until a later heartbeat; on being fenced or
        /// forgotten it drops everything and will rejoin.
        fn heartbeat_with(
            &mut self,
            c: &mut GroupCoordinator,
            now: u64,
            topics: &BTreeMap<String, u32>,
            release: bool,
        ) -> Result<HeartbeatResponse, GroupError> {
            let res = c.heartbeat(now, self.request(topics));
            match &res {
                Ok(r) => {
                    self.id = Some(r.member_id.clone());
                    self.epoch = r.member_epoch;
                    if release {
                        self.consuming = r.assignment.clone();
                    } else {
                        self.consuming.extend(r.assignment.iter().cloned());
                    }
                    self.pending = r.pending.clone();
                }
                Err(GroupError::FencedMemberEpoch { .. } | GroupError::UnknownMember { .. }) => {
                    self.id = None;
                    self.epoch = 0;
                    self.consuming.clear();
                    self.pending.clear();
                }
                Err(_) => {}
            }
            res
        }

        fn heartbeat(
            &mut self,
            c: &mut GroupCoordinator,
            now: u64,
            topics: &BTreeMap<String, u32>,
        ) -> HeartbeatResponse {
            self.heartbeat_with(c, now, topics, true)
                .expect("heartbeat")
        }
    }

    /// The safety invariant: within a group no partition is granted to or owned by two
    /// members, targets are disjoint, and no live consumer consumes anything the coordinator
    /// does not attribute to it (hence no two consumers ever consume the same partition).
    fn check_invariant(c: &GroupCoordinator, clients: &[&Client]) {
        for (name, g) in &c.groups {
            let mut holders: BTreeMap<&TopicPartition, &str> = BTreeMap::new();
            for (id, m) in &g.members {
                for p in m.assigned.union(&m.owned) {
                    if let Some(other) = holders.insert(p, id) {
                        panic!("{name}: {p} held by both {other} and {id}");
                    }
                }
            }
            let mut targeted = BTreeSet::new();
            for set in g.target.values() {
                for p in set {
                    assert!(targeted.insert(p), "{name}: {p} targeted twice");
                }
            }
            let mut consumed: BTreeMap<&TopicPartition, &str> = BTreeMap::new();
            for client in clients.iter().filter(|cl| cl.group == *name) {
                let Some(id) = client.id.as_deref() else {
                    assert!(client.consuming.is_empty());
                    continue;
                };
                let m = g.members.get(id).expect("live client is a member");
                for p in &client.consuming {
                    assert!(
                        m.assigned.contains(p) || m.owned.contains(p),
                        "{name}: {id} consumes {p} unknown to the coordinator"
                    );
                    if let Some(other) = consumed.insert(p, id) {
                        panic!("{name}: {p} consumed by both {other} and {id}");
                    }
                }
            }
        }
    }

    fn state(c: &GroupCoordinator, group: &str) -> GroupState {
        c.describe(group).expect("group exists").state
    }

    #[test]
    fn single_member_gets_all_partitions() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 3), ("t1", 2)]);
        let mut a = Client::new("g", &["t0", "t1"]);
        let r = a.heartbeat(&mut c, 100, &topics);
        assert_eq!(r.member_id, "g-member-1");
        assert_eq!(r.member_epoch, 1);
        assert_eq!(r.assignment, all_partitions(&topics, &a.subscription));
        assert!(r.pending.is_empty());
        check_invariant(&c, &[&a]);
        assert_eq!(state(&c, "g"), GroupState::Stable);
        // A steady heartbeat changes nothing.
        let again = a.heartbeat(&mut c, 200, &topics);
        assert_eq!(again, r);
        assert_eq!(c.describe("g").expect("group").epoch, 1);
    }

    #[test]
    fn second_member_waits_until_the_first_releases() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 4)]);
        let mut a = Client::new("g", &["t0"]);
        let mut b = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        assert_eq!(a.consuming.len(), 4);

        let rb = b.heartbeat(&mut c, 200, &topics);
        check_invariant(&c, &[&a, &b]);
        assert!(rb.assignment.is_empty(), "nothing is free yet");
        assert_eq!(rb.pending, tps(&[("t0", 2), ("t0", 3)]));
        assert_eq!(rb.member_epoch, 2);
        assert_eq!(state(&c, "g"), GroupState::Reconciling);

        // A learns it must give up half, but is slow and keeps consuming it for a while.
        let ra = a
            .heartbeat_with(&mut c, 300, &topics, false)
            .expect("heartbeat");
        assert_eq!(ra.assignment, tps(&[("t0", 0), ("t0", 1)]));
        assert_eq!(
            ra.member_epoch, 2,
            "A's assignment changed: it moves to the group epoch"
        );
        assert_eq!(a.consuming.len(), 4);
        check_invariant(&c, &[&a, &b]);
        a.heartbeat_with(&mut c, 400, &topics, false)
            .expect("heartbeat");
        let rb = b.heartbeat(&mut c, 500, &topics);
        assert!(rb.assignment.is_empty(), "A still reports owning them");
        check_invariant(&c, &[&a, &b]);

        // A finally drops them; B gets them on its next heartbeat.
        a.heartbeat(&mut c, 600, &topics);
        a.heartbeat(&mut c, 700, &topics);
        check_invariant(&c, &[&a, &b]);
        assert_eq!(state(&c, "g"), GroupState::Reconciling);
        let rb = b.heartbeat(&mut c, 800, &topics);
        assert_eq!(rb.assignment, tps(&[("t0", 2), ("t0", 3)]));
        assert!(rb.pending.is_empty());
        assert_eq!(rb.member_epoch, 2);
        check_invariant(&c, &[&a, &b]);
        assert_eq!(state(&c, "g"), GroupState::Stable);
    }

    #[test]
    fn unaffected_members_keep_their_partitions_and_epoch() {
        let mut c = GroupCoordinator::new();
        // Round robin over one topic per member: a third member on another topic moves nothing.
        let topics = counts(&[("t0", 2), ("t1", 2)]);
        let mut a = Client::new("g", &["t0"]);
        let mut b = Client::new("g", &["t1"]);
        a.assignor = Assignor::RoundRobin;
        b.assignor = Assignor::RoundRobin;
        a.heartbeat(&mut c, 100, &topics);
        b.heartbeat(&mut c, 100, &topics);
        a.heartbeat(&mut c, 100, &topics);
        let before = a.heartbeat(&mut c, 150, &topics);
        assert_eq!(before.assignment, tps(&[("t0", 0), ("t0", 1)]));
        let mut d = Client::new("g", &["t1"]);
        d.assignor = Assignor::RoundRobin;
        d.heartbeat(&mut c, 200, &topics);
        let after = a.heartbeat(&mut c, 300, &topics);
        assert_eq!(
            after, before,
            "A's target did not change: same partitions, same epoch"
        );
        check_invariant(&c, &[&a, &b, &d]);
    }

    #[test]
    fn expired_member_frees_its_partitions() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 4)]);
        let mut a = Client::new("g", &["t0"]);
        let mut b = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 1_000, &topics);
        b.heartbeat(&mut c, 1_000, &topics);
        a.heartbeat(&mut c, 1_100, &topics);
        a.heartbeat(&mut c, 1_200, &topics);
        b.heartbeat(&mut c, 1_300, &topics);
        assert_eq!(state(&c, "g"), GroupState::Stable);
        let a_id = a.id().to_owned();

        // Only B keeps heartbeating.
        b.heartbeat(&mut c, 5_000, &topics);
        assert!(
            c.expire(1_200 + SESSION_MS).is_empty(),
            "the deadline itself is still alive"
        );
        b.heartbeat(&mut c, 7_000, &topics);
        assert_eq!(
            c.expire(1_201 + SESSION_MS),
            vec![("g".to_owned(), a_id.clone())]
        );
        a.consuming.clear(); // the dead process consumes nothing
        let r = b.heartbeat(&mut c, 7_300, &topics);
        assert_eq!(r.assignment, all_partitions(&topics, &b.subscription));
        assert_eq!(state(&c, "g"), GroupState::Stable);

        // The expired member is forgotten and must rejoin.
        let err = a
            .heartbeat_with(&mut c, 7_400, &topics, true)
            .expect_err("expired");
        assert_eq!(
            err,
            GroupError::UnknownMember {
                group: "g".into(),
                member: a_id
            }
        );
    }

    #[test]
    fn leave_frees_partitions_immediately() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 3)]);
        let mut a = Client::new("g", &["t0"]);
        let mut b = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        b.heartbeat(&mut c, 100, &topics);
        a.heartbeat(&mut c, 200, &topics);
        a.heartbeat(&mut c, 300, &topics);
        b.heartbeat(&mut c, 300, &topics);
        assert!(!b.consuming.is_empty());
        let epoch = c.describe("g").expect("group").epoch;

        b.consuming.clear();
        c.leave(400, "g", b.id()).expect("leave");
        assert_eq!(c.describe("g").expect("group").epoch, epoch + 1);
        let r = a.heartbeat(&mut c, 500, &topics);
        assert_eq!(r.assignment, all_partitions(&topics, &a.subscription));
        assert_eq!(r.member_epoch, epoch + 1);
        assert_eq!(
            c.leave(600, "g", b.id()),
            Err(GroupError::UnknownMember {
                group: "g".into(),
                member: b.id().into()
            })
        );
        assert!(matches!(
            c.leave(600, "nope", "x"),
            Err(GroupError::UnknownMember { .. })
        ));

        a.consuming.clear();
        c.leave(700, "g", a.id()).expect("leave");
        assert_eq!(c.list(), vec![("g".to_owned(), GroupState::Empty, 0)]);
    }

    #[test]
    fn partition_growth_triggers_reassignment() {
        let mut c = GroupCoordinator::new();
        let mut topics = counts(&[("t0", 2)]);
        let mut a = Client::new("g", &["t0"]);
        let mut b = Client::new("g", &["t0"]);
        for now in [100, 200, 300] {
            a.heartbeat(&mut c, now, &topics);
            b.heartbeat(&mut c, now, &topics);
        }
        assert_eq!(a.consuming, tps(&[("t0", 0)]));
        assert_eq!(b.consuming, tps(&[("t0", 1)]));
        let epoch = c.describe("g").expect("group").epoch;

        topics.insert("t0".into(), 4);
        for now in [400, 500, 600] {
            a.heartbeat(&mut c, now, &topics);
            check_invariant(&c, &[&a, &b]);
            b.heartbeat(&mut c, now, &topics);
            check_invariant(&c, &[&a, &b]);
        }
        assert_eq!(c.describe("g").expect("group").epoch, epoch + 1);
        assert_eq!(a.consuming, tps(&[("t0", 0), ("t0", 1)]));
        assert_eq!(b.consuming, tps(&[("t0", 2), ("t0", 3)]));
        assert_eq!(state(&c, "g"), GroupState::Stable);
    }

    #[test]
    fn subscription_change_triggers_reassignment() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 2), ("t1", 2)]);
        let mut a = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        assert_eq!(a.consuming, tps(&[("t0", 0), ("t0", 1)]));
        a.subscription = ["t1".to_owned()].into();
        let r = a.heartbeat(&mut c, 200, &topics);
        assert_eq!(r.assignment, tps(&[("t1", 0), ("t1", 1)]));
        assert_eq!(r.member_epoch, 2);
        assert_eq!(
            state(&c, "g"),
            GroupState::Reconciling,
            "still reports owning t0"
        );
        a.heartbeat(&mut c, 300, &topics);
        assert_eq!(state(&c, "g"), GroupState::Stable);
    }

    #[test]
    fn two_groups_on_the_same_topic_are_independent() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 3)]);
        let mut a = Client::new("g1", &["t0"]);
        let mut b = Client::new("g2", &["t0"]);
        let mut b2 = Client::new("g2", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        b.heartbeat(&mut c, 100, &topics);
        assert_eq!(a.consuming, all_partitions(&topics, &a.subscription));
        assert_eq!(b.consuming, a.consuming, "the other group does not compete");
        b2.heartbeat(&mut c, 200, &topics);
        let before = c.describe("g1").expect("g1");
        for now in [300, 400, 500] {
            b.heartbeat(&mut c, now, &topics);
            b2.heartbeat(&mut c, now, &topics);
            check_invariant(&c, &[&a, &b, &b2]);
        }
        assert_eq!(c.describe("g1").expect("g1"), before);
        assert_eq!(b.consuming.len() + b2.consuming.len(), 3);
        assert_eq!(
            c.list(),
            vec![
                ("g1".to_owned(), GroupState::Stable, 1),
                ("g2".to_owned(), GroupState::Stable, 2)
            ]
        );
    }

    #[test]
    fn validate_commit_rules() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 2)]);
        let p0 = [tp("t0", 0)];
        let p1 = [tp("t0", 1)];
        // Standalone commits are fine while nobody is a member, even for unknown groups.
        assert_eq!(c.validate_commit("g", None, 0, &p0), Ok(()));

        let mut a = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        let id = a.id().to_owned();
        assert!(matches!(
            c.validate_commit("g", None, 0, &p0),
            Err(GroupError::GroupNotEmpty { members: 1, .. })
        ));
        assert_eq!(
            c.validate_commit("g", Some(&id), a.epoch, &[tp("t0", 0), tp("t0", 1)]),
            Ok(())
        );
        assert!(matches!(
            c.validate_commit("g", Some("g-member-99"), a.epoch, &p0),
            Err(GroupError::UnknownMember { .. })
        ));
        assert!(matches!(
            c.validate_commit("other", Some(&id), a.epoch, &p0),
            Err(GroupError::UnknownMember { .. })
        ));
        assert!(matches!(
            c.validate_commit("g", Some(&id), a.epoch + 1, &p0),
            Err(GroupError::FencedMemberEpoch { .. })
        ));
        assert!(matches!(
            c.validate_commit("g", Some(&id), a.epoch, &[tp("t9", 0)]),
            Err(GroupError::NotAssigned { .. })
        ));

        // B joins: A's old epoch becomes stale once A's assignment shrinks.
        let mut b = Client::new("g", &["t0"]);
        b.heartbeat(&mut c, 200, &topics);
        let old = a.epoch;
        a.heartbeat_with(&mut c, 300, &topics, false)
            .expect("heartbeat");
        assert!(a.epoch > old);
        assert_eq!(
            c.validate_commit("g", Some(&id), old, &p0),
            Err(GroupError::StaleMemberEpoch {
                group: "g".into(),
                member: id.clone(),
                epoch: old,
                current: a.epoch
            })
        );
        // A may still commit the partition it is releasing, but B may not commit it yet.
        assert_eq!(c.validate_commit("g", Some(&id), a.epoch, &p1), Ok(()));
        assert!(matches!(
            c.validate_commit("g", Some(b.id()), b.epoch, &p1),
            Err(GroupError::NotAssigned { .. })
        ));
        a.heartbeat(&mut c, 400, &topics);
        a.heartbeat(&mut c, 500, &topics);
        b.heartbeat(&mut c, 500, &topics);
        assert!(matches!(
            c.validate_commit("g", Some(&id), a.epoch, &p1),
            Err(GroupError::NotAssigned { .. })
        ));
        assert_eq!(c.validate_commit("g", Some(b.id()), b.epoch, &p1), Ok(()));

        c.leave(600, "g", &id).expect("leave");
        c.leave(600, "g", b.id()).expect("leave");
        assert_eq!(c.validate_commit("g", None, 0, &p0), Ok(()));
    }

    #[test]
    fn epoch_fencing() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 2)]);
        let mut a = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);

        // Unknown ids are refused without touching the group.
        let mut ghost = a.clone();
        ghost.id = Some("g-member-42".into());
        assert!(matches!(
            ghost.heartbeat_with(&mut c, 150, &topics, true),
            Err(GroupError::UnknownMember { .. })
        ));

        // The previous epoch is accepted if the member owns nothing revoked since.
        let mut b = Client::new("g", &["t0"]);
        b.heartbeat(&mut c, 200, &topics);
        b.heartbeat(&mut c, 210, &topics);
        let stale_a = a.clone();
        a.heartbeat(&mut c, 300, &topics); // A's t0-1 is revoked, epoch advances
        a.heartbeat(&mut c, 310, &topics); // ...and released
        let rb = b.heartbeat(&mut c, 320, &topics);
        assert_eq!(rb.assignment, tps(&[("t0", 1)]));
        let mut lost = a.clone();
        lost.epoch = stale_a.epoch; // as if the revoking response had been lost, but released
        let r = lost
            .heartbeat_with(&mut c, 330, &topics, true)
            .expect("previous epoch ok");
        assert_eq!(r.member_epoch, a.epoch);

        // The previous epoch while still consuming a revoked partition fences the member.
        let mut zombie = stale_a.clone();
        let err = zombie
            .heartbeat_with(&mut c, 340, &topics, true)
            .expect_err("fenced");
        assert!(matches!(err, GroupError::FencedMemberEpoch { .. }), "{err}");
        assert_eq!(
            c.describe("g").expect("group").members.len(),
            1,
            "fenced member removed"
        );
        a.consuming.clear();
        a.id = None;
        check_invariant(&c, &[&b]);

        // A future epoch fences too.
        let mut liar = b.clone();
        liar.epoch += 5;
        let err = liar
            .heartbeat_with(&mut c, 350, &topics, true)
            .expect_err("fenced");
        assert!(matches!(err, GroupError::FencedMemberEpoch { .. }));
        assert_eq!(state(&c, "g"), GroupState::Empty);
    }

    #[test]
    fn assignor_is_fixed_while_the_group_has_members() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 2)]);
        let mut a = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        let mut b = Client::new("g", &["t0"]);
        b.assignor = Assignor::RoundRobin;
        let err = b
            .heartbeat_with(&mut c, 200, &topics, true)
            .expect_err("inconsistent");
        assert_eq!(
            err,
            GroupError::InconsistentAssignor {
                group: "g".into(),
                member: None,
                requested: Assignor::RoundRobin,
                current: Assignor::Range
            }
        );
        assert!(err.to_string().contains("a joining member"));
        assert_eq!(c.describe("g").expect("group").members.len(), 1);
        a.assignor = Assignor::RoundRobin;
        let err = a
            .heartbeat_with(&mut c, 300, &topics, true)
            .expect_err("inconsistent");
        assert!(matches!(
            err,
            GroupError::InconsistentAssignor {
                member: Some(_),
                ..
            }
        ));

        // Once empty, the next first member picks the assignor.
        c.leave(400, "g", a.id()).expect("leave");
        b.heartbeat(&mut c, 500, &topics);
        assert_eq!(
            c.describe("g").expect("group").assignor,
            Assignor::RoundRobin
        );
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 1)]);
        let mut req = Client::new("", &["t0"]).request(&topics);
        assert!(matches!(
            c.heartbeat(0, req.clone()),
            Err(GroupError::InvalidRequest { .. })
        ));
        req.group = "g".into();
        req.session_timeout_ms = 0;
        assert!(matches!(
            c.heartbeat(0, req),
            Err(GroupError::InvalidRequest { .. })
        ));
        assert!(c.list().is_empty());
    }

    #[test]
    fn heartbeat_interval_is_capped_by_the_session_timeout() {
        let mut c = GroupCoordinator::with_heartbeat_interval(5_000);
        let r = Client::new("g", &["t0"]).heartbeat(&mut c, 0, &counts(&[]));
        assert_eq!(r.heartbeat_interval_ms, SESSION_MS / 3);
        let mut c = GroupCoordinator::with_heartbeat_interval(500);
        let r = Client::new("g", &["t0"]).heartbeat(&mut c, 0, &counts(&[]));
        assert_eq!(r.heartbeat_interval_ms, 500);
    }

    #[test]
    fn unknown_topics_and_claimed_partitions_are_handled() {
        let mut c = GroupCoordinator::new();
        let mut topics = counts(&[]);
        let mut a = Client::new("g", &["t0"]);
        // Claiming partitions never granted neither blocks nor grants them.
        a.consuming = tps(&[("t0", 0)]);
        let r = a.heartbeat(&mut c, 100, &topics);
        assert!(r.assignment.is_empty(), "the topic does not exist yet");
        assert_eq!(state(&c, "g"), GroupState::Stable);
        topics.insert("t0".into(), 1);
        let r = a.heartbeat(&mut c, 200, &topics);
        assert_eq!(r.assignment, tps(&[("t0", 0)]));
    }

    #[test]
    fn describe_and_delete() {
        let mut c = GroupCoordinator::new();
        let topics = counts(&[("t0", 2)]);
        assert_eq!(c.describe("g"), None);
        assert_eq!(
            c.delete_group("g"),
            Err(GroupError::UnknownGroup { group: "g".into() })
        );
        let mut a = Client::new("g", &["t0"]);
        a.heartbeat(&mut c, 100, &topics);
        let d = c.describe("g").expect("group");
        assert_eq!(d.state, GroupState::Stable);
        assert_eq!(d.epoch, 1);
        assert_eq!(d.assignor, Assignor::Range);
        assert_eq!(
            d.members,
            vec![MemberDescription {
                member_id: a.id().to_owned(),
                member_epoch: 1,
                subscription: a.subscription.clone(),
                assignment: tps(&[("t0", 0), ("t0", 1)]),
                pending: BTreeSet::new(),
            }]
        );
        assert_eq!(
            c.delete_group("g"),
            Err(GroupError::GroupNotEmpty {
                group: "g".into(),
                members: 1
            })
        );
        c.leave(200, "g", a.id()).expect("leave");
        assert_eq!(c.delete_group("g"), Ok(()));
        assert_eq!(c.describe("g"), None);
        // Ids are never reused, even for a recreated group.
        let r = Client::new("g", &["t0"]).heartbeat(&mut c, 300, &topics);
        assert_eq!(r.member_id, "g-member-2");
    }

    /// A tiny deterministic PRNG (Knuth's MMIX LCG) so the randomised test needs no crates.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Interleaves joins, leaves, crashes (then expiry), subscription changes, partition
    /// growth, slow releases and lost responses; checks the invariant after every step, then
    /// lets every member heartbeat and checks the group converges.
    fn run_random(seed: u64, steps: usize, stats: &mut Stats) {
        let mut rng = Lcg(seed);
        let mut c = GroupCoordinator::new();
        let assignor = if rng.below(2) == 0 {
            Assignor::Range
        } else {
            Assignor::RoundRobin
        };
        let mut topics = counts(&[("t0", 6), ("t1", 3)]);
        let subscriptions: [&[&str]; 3] = [&["t0"], &["t1"], &["t0", "t1"]];
        let slots = 3 + rng.below(3) as usize;
        let mut clients: Vec<Option<Client>> = vec![None; slots];
        let mut last_hb: Vec<u64> = vec![0; slots];
        let mut crashed: BTreeSet<String> = BTreeSet::new();
        let mut now = 1_000u64;
        let new_client = |rng: &mut Lcg| {
            let mut cl = Client::new("g", subscriptions[rng.below(3) as usize]);
            cl.assignor = assignor;
            cl
        };

        for _ in 0..steps {
            now += 50 + rng.below(100);
            let slot = rng.below(slots as u64) as usize;
            let roll = rng.below(100);
            let had_id = clients[slot].as_ref().is_some_and(|cl| cl.id.is_some());
            match clients[slot].as_mut() {
                None => {
                    if roll < 50 {
                        let mut cl = new_client(&mut rng);
                        cl.heartbeat(&mut c, now, &topics);
                        last_hb[slot] = now;
                        clients[slot] = Some(cl);
                    }
                }
                Some(cl) if roll < 3 => {
                    // A fenced client (no id) is no member: it just goes away.
                    cl.consuming.clear();
                    if let Some(id) = &cl.id {
                        c.leave(now, "g", id).expect("leave");
                    }
                    clients[slot] = None;
                }
                Some(cl) if roll < 6 => {
                    // The process dies: it consumes nothing more, the session will expire.
                    crashed.extend(cl.id.clone());
                    clients[slot] = None;
                }
                Some(cl) if roll < 10 => {
                    cl.subscription = subscriptions[rng.below(3) as usize]
                        .iter()
                        .map(|t| t.to_string())
                        .collect();
                    cl.heartbeat_with(&mut c, now, &topics, true).ok();
                    last_hb[slot] = now;
                }
                Some(cl) if roll < 16 => {
                    // The response is lost in transit. Errors and joins are always delivered: a
                    // member that never learns it was fenced is a zombie no protocol can stop,
                    // and a lost join just leaves a member that expires.
                    let mut copy = cl.clone();
                    if copy.heartbeat_with(&mut c, now, &topics, true).is_err() || cl.id.is_none() {
                        *cl = copy;
                    }
                    last_hb[slot] = now;
                }
                Some(cl) => {
                    let release = roll >= 40;
                    if cl.id.is_none() {
                        cl.heartbeat_with(&mut c, now, &topics, true)
                            .expect("rejoin");
                    } else {
                        cl.heartbeat_with(&mut c, now, &topics, release).ok();
                    }
                    last_hb[slot] = now;
                }
            }
            if rng.below(100) == 0 && topics["t1"] < 8 {
                *topics.entry("t1".into()).or_insert(0) += 1;
            }
            // Live consumers heartbeat well within their session timeout.
            for (slot, cl) in clients.iter_mut().enumerate() {
                if let Some(cl) = cl
                    && now - last_hb[slot] > SESSION_MS / 2
                {
                    cl.heartbeat_with(&mut c, now, &topics, true).ok();
                    last_hb[slot] = now;
                }
            }
            if had_id && clients[slot].as_ref().is_some_and(|cl| cl.id.is_none()) {
                stats.fenced += 1;
            }
            for (group, member) in c.expire(now) {
                assert_eq!(group, "g");
                assert!(crashed.remove(&member), "live member {member} expired");
                stats.expired += 1;
            }
            let live: Vec<&Client> = clients.iter().flatten().collect();
            check_invariant(&c, &live);
            stats.waiting += live.iter().filter(|cl| !cl.pending.is_empty()).count();
            stats.releasing += live
                .iter()
                .filter(|cl| {
                    cl.id.as_ref().is_some_and(|id| {
                        !cl.consuming.is_subset(&c.groups["g"].members[id].assigned)
                    })
                })
                .count();
        }

        // Fill every slot, then let everybody heartbeat regularly until the dead expire.
        for cl in &mut clients {
            if cl.is_none() {
                let mut fresh = new_client(&mut rng);
                fresh.heartbeat(&mut c, now, &topics);
                *cl = Some(fresh);
            }
        }
        let mut clients: Vec<Client> = clients.into_iter().flatten().collect();
        for _ in 0..(2 * SESSION_MS / 1_000 + 5) {
            now += 1_000;
            for i in 0..clients.len() {
                let cl = &mut clients[i];
                if cl.id.is_none() {
                    cl.heartbeat(&mut c, now, &topics);
                } else {
                    cl.heartbeat_with(&mut c, now, &topics, true).ok();
                }
                check_invariant(&c, &clients.iter().collect::<Vec<_>>());
            }
            for (_, member) in c.expire(now) {
                assert!(crashed.remove(&member), "live member {member} expired");
            }
        }
        assert!(crashed.is_empty(), "crashed members expired");
        let d = c.describe("g").expect("group");
        assert_eq!(d.state, GroupState::Stable, "seed {seed}: {d:#?}");
        assert_eq!(d.members.len(), clients.len());
        let subscribed: BTreeSet<String> = clients
            .iter()
            .flat_map(|cl| cl.subscription.iter().cloned())
            .collect();
        let mut seen = BTreeSet::new();
        for m in &d.members {
            assert!(m.pending.is_empty());
            for p in &m.assignment {
                assert!(seen.insert(p.clone()), "seed {seed}: {p} assigned twice");
            }
            let cl = clients
                .iter()
                .find(|cl| cl.id() == m.member_id)
                .expect("client");
            assert_eq!(cl.consuming, m.assignment);
            assert_eq!(cl.epoch, m.member_epoch);
        }
        assert_eq!(seen, all_partitions(&topics, &subscribed), "seed {seed}");
    }

    /// What the randomised runs went through, to make sure they are not vacuous.
    #[derive(Debug, Default)]
    struct Stats {
        fenced: usize,
        expired: usize,
        /// Steps × members waiting for a partition another member still held.
        waiting: usize,
        /// Steps × members still consuming a partition already revoked from them.
        releasing: usize,
    }

    #[test]
    fn randomized_interleavings_keep_ownership_exclusive_and_converge() {
        let mut stats = Stats::default();
        for seed in 1..=40 {
            run_random(seed, 400, &mut stats);
        }
        assert!(stats.fenced > 0 && stats.expired > 0, "{stats:?}");
        assert!(stats.waiting > 0 && stats.releasing > 0, "{stats:?}");
    }
}
