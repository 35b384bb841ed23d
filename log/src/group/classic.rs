//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a pure
//! state machine, for groups that Kafka clients join over the wire protocol.
//!
//! Unlike the embedded protocol ([`super::GroupCoordinator`]'s heartbeats, where the
//! coordinator assigns partitions), the members assign themselves: the coordinator gathers
//! every member into a *generation*, hands the members' metadata to one of them (the leader),
//! and passes the leader's assignment on to each member.
//!
//! ```text
//!  Empty ──join──► PreparingRebalance ──all members joined (or rebalance timeout)──►
//!  CompletingRebalance ──leader's SyncGroup──► Stable ──join / leave / expiry──► Preparing...
//! ```
//!
//! A call that must wait (a JoinGroup until the rebalance completes, a follower's SyncGroup
//! until the leader's) returns [`Reply::Pending`]; its answer arrives later as a
//! [`Deliveries`] entry produced by whichever call or [`ClassicGroups::tick`] completes it.
//! The caller keeps the waiting requests and hands each delivery to its request. Like the
//! embedded coordinator it reads no clock and does no IO; its state is not persisted (after a
//! restart members get `UnknownMemberId` and join again).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::assignor::TopicPartition;

/// Kafka's `group.min.session.timeout.ms` default.
pub const MIN_SESSION_TIMEOUT_MS: u64 = 6_000;
/// Kafka's `group.max.session.timeout.ms` default.
pub const MAX_SESSION_TIMEOUT_MS: u64 = 1_800_000;
/// Members (and ids handed out, not yet joined) of one group at most (Kafka's
/// `group.max.size`, unbounded there by default).
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Partitions read from one member's assignment blob for describe.
const MAX_DESCRIBED_PARTITIONS: usize = 100_000;

/// Where a classic group is in its rebalance cycle (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    /// No members (committed offsets may remain).
    Empty,
    /// Waiting for every member to (re)join.
    PreparingRebalance,
    /// A generation is formed; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl ClassicState {
    /// The state as Kafka's tools print it.
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// Why a classic-protocol request was refused; each is one of Kafka's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    /// The group id is empty.
    #[error("the group id is empty")]
    InvalidGroupId,
    /// The session timeout is outside what the coordinator allows.
    #[error(
        "session timeout {0} ms is outside {MIN_SESSION_TIMEOUT_MS}..={MAX_SESSION_TIMEOUT_MS} ms"
    )]
    InvalidSessionTimeout(u64),
    /// The member's protocol type or protocols match none of the group's (or the group is
    /// used by embedded consumers).
    #[error("{0}")]
    InconsistentGroupProtocol(String),
    /// The member is not (or no longer) in the group: join again without an id.
    #[error("unknown member")]
    UnknownMemberId,
    /// A new member must join again with this id (KIP-394).
    #[error("member id required")]
    MemberIdRequired(String),
    /// The generation is not the group's.
    #[error("illegal generation")]
    IllegalGeneration,
    /// A rebalance is under way: join again.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// The group has [`MAX_GROUP_MEMBERS`] members.
    #[error("the group has its maximum of {MAX_GROUP_MEMBERS} members")]
    GroupMaxSizeReached,
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group.
    pub group: String,
    /// The member's id; empty for a new member.
    pub member_id: String,
    /// JoinGroup v4+: a new member first gets an id back ([`ClassicError::MemberIdRequired`]).
    pub require_known_member_id: bool,
    /// The client's `client.id` and address, for describe.
    pub client_id: String,
    /// The client's host.
    pub client_host: String,
    /// `consumer` for consumers.
    pub protocol_type: String,
    /// The protocols (assignors) the member supports, preferred first, each with its metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// How long the member may be silent.
    pub session_timeout_ms: u64,
    /// How long a rebalance may wait for this member to join again.
    pub rebalance_timeout_ms: u64,
    /// Random bits for a new member's id, so that ids cannot be guessed (the state machine
    /// draws no randomness itself).
    pub nonce: u64,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    /// The new generation.
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The protocol (assignor) chosen for this generation.
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader only: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Bytes)>,
}

/// An answer now, or later through [`Deliveries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    /// The answer.
    Now(Result<T, ClassicError>),
    /// The request waits; its answer will be delivered to this member id (for a new member,
    /// the id it was just given).
    Pending(String),
}

/// Answers to requests that were waiting, keyed by (group, member id).
#[derive(Debug, Default)]
pub struct Deliveries {
    /// JoinGroup answers.
    pub joins: Vec<(String, String, Result<JoinResult, ClassicError>)>,
    /// SyncGroup answers: the member's assignment.
    pub syncs: Vec<(String, String, Result<Bytes, ClassicError>)>,
}

/// A member, for describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    /// The member's id.
    pub member_id: String,
    /// Its `client.id`.
    pub client_id: String,
    /// Its address.
    pub client_host: String,
    /// Its metadata for the group's protocol.
    pub metadata: Bytes,
    /// Its assignment in the current generation.
    pub assignment: Bytes,
}

/// A group, for describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    /// The state.
    pub state: ClassicState,
    /// The generation.
    pub generation: i32,
    /// The protocol type (`consumer`).
    pub protocol_type: String,
    /// The chosen protocol (assignor), once a generation formed.
    pub protocol: String,
    /// The members.
    pub members: Vec<ClassicMember>,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    last_heartbeat_ms: u64,
    /// A JoinGroup of this member waits for the rebalance.
    awaiting_join: bool,
    /// A SyncGroup of this member waits for the leader's.
    awaiting_sync: bool,
    assignment: Bytes,
}

#[derive(Debug, Clone)]
struct Group {
    state: ClassicState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with `MemberIdRequired`, until they join (or expire).
    pending_ids: BTreeMap<String, u64>,
    /// When the current phase gives up waiting (join in PreparingRebalance, the leader's
    /// sync in CompletingRebalance).
    deadline_ms: u64,
}

impl Group {
    fn new() -> Group {
        Group {
            state: ClassicState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending_ids: BTreeMap::new(),
            deadline_ms: 0,
        }
    }

    /// The protocols every member (and `extra`, if given) supports.
    fn common_protocols(&self, extra: Option<&[(String, Bytes)]>) -> BTreeSet<String> {
        let mut lists = self
            .members
            .values()
            .map(|m| m.protocols.as_slice())
            .chain(extra);
        let Some(first) = lists.next() else {
            return BTreeSet::new();
        };
        let mut common: BTreeSet<String> = first.iter().map(|p| p.0.clone()).collect();
        for l in lists {
            let names: BTreeSet<String> = l.iter().map(|p| p.0.clone()).collect();
            common = common.intersection(&names).cloned().collect();
        }
        common
    }

    /// Starts a rebalance: members must join again; syncs waiting are told to rejoin.
    fn prepare_rebalance(&mut self, name: &str, now_ms: u64, out: &mut Deliveries) {
        for (id, m) in self.members.iter_mut() {
            if std::mem::take(&mut m.awaiting_sync) {
                out.syncs.push((
                    name.to_owned(),
                    id.clone(),
                    Err(ClassicError::RebalanceInProgress),
                ));
            }
            m.assignment = Bytes::new();
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.state = ClassicState::PreparingRebalance;
        self.deadline_ms = now_ms + timeout;
    }

    /// Forms the next generation if every member joined again (or `force`, at the deadline:
    /// members that did not join are dropped).
    fn maybe_complete_join(&mut self, name: &str, now_ms: u64, force: bool, out: &mut Deliveries) {
        if self.state != ClassicState::PreparingRebalance {
            return;
        }
        if !force && self.members.values().any(|m| !m.awaiting_join) {
            return;
        }
        self.members.retain(|_, m| m.awaiting_join);
        self.generation += 1;
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        // Each member votes for its first protocol that every member supports.
        let common = self.common_protocols(None);
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((p, _)) = m.protocols.iter().find(|(p, _)| common.contains(p)) {
                *votes.entry(p.as_str()).or_default() += 1;
            }
        }
        let protocol = votes
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        self.protocol = protocol;
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().cloned().unwrap_or_default(),
        };
        self.leader = Some(leader.clone());
        self.state = ClassicState::CompletingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.deadline_ms = now_ms + timeout;
        let all: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), metadata_for(m, &self.protocol)))
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.awaiting_join = false;
            m.last_heartbeat_ms = now_ms;
            out.joins.push((
                name.to_owned(),
                id.clone(),
                Ok(JoinResult {
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                }),
            ));
        }
    }

    fn become_empty(&mut self) {
        self.state = ClassicState::Empty;
        self.protocol.clear();
        self.protocol_type.clear();
        self.leader = None;
    }

    /// Removes members, telling their waiting requests; rebalances the rest.
    fn remove(&mut self, name: &str, ids: &[String], now_ms: u64, out: &mut Deliveries) {
        for id in ids {
            let Some(m) = self.members.remove(id) else {
                continue;
            };
            if m.awaiting_join {
                out.joins.push((
                    name.to_owned(),
                    id.clone(),
                    Err(ClassicError::UnknownMemberId),
                ));
            }
            if m.awaiting_sync {
                out.syncs.push((
                    name.to_owned(),
                    id.clone(),
                    Err(ClassicError::UnknownMemberId),
                ));
            }
        }
        if self.members.is_empty() {
            if self.state != ClassicState::Empty {
                self.generation += 1;
            }
            self.become_empty();
        } else if self.state != ClassicState::PreparingRebalance {
            self.prepare_rebalance(name, now_ms, out);
        } else {
            self.maybe_complete_join(name, now_ms, false, out);
        }
    }

    fn current_join(&self, id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        JoinResult {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: leader.clone(),
            member_id: id.to_owned(),
            members: if id == leader {
                self.members
                    .iter()
                    .map(|(id, m)| (id.clone(), metadata_for(m, &self.protocol)))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

fn metadata_for(m: &Member, protocol: &str) -> Bytes {
    m.protocols
        .iter()
        .find(|(p, _)| p == protocol)
        .map(|(_, md)| md.clone())
        .unwrap_or_default()
}

/// Every classic group. Callers serialise calls and pass `now_ms` (a monotonic clock).
#[derive(Debug, Clone, Default)]
pub struct ClassicGroups {
    groups: BTreeMap<String, Group>,
    /// Numbers member ids so that none is ever reused.
    next_member: u64,
}

impl ClassicGroups {
    /// Handles a JoinGroup.
    pub fn join(
        &mut self,
        now_ms: u64,
        req: JoinRequest,
        out: &mut Deliveries,
    ) -> Reply<JoinResult> {
        if req.group.is_empty() {
            return Reply::Now(Err(ClassicError::InvalidGroupId));
        }
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&req.session_timeout_ms) {
            return Reply::Now(Err(ClassicError::InvalidSessionTimeout(
                req.session_timeout_ms,
            )));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Reply::Now(Err(ClassicError::InconsistentGroupProtocol(
                "a member must name its protocol type and at least one protocol".into(),
            )));
        }
        let name = req.group.clone();
        let g = self.groups.entry(name.clone()).or_insert_with(Group::new);
        let known = g.members.contains_key(&req.member_id);
        // Checked against the others: a lone member may change protocols by rejoining.
        let others = g.members.len() - usize::from(known);
        if others > 0 {
            if g.protocol_type != req.protocol_type {
                return Reply::Now(Err(ClassicError::InconsistentGroupProtocol(format!(
                    "the group's protocol type is '{}', the member's '{}'",
                    g.protocol_type, req.protocol_type
                ))));
            }
            if g.common_protocols(Some(&req.protocols)).is_empty() {
                return Reply::Now(Err(ClassicError::InconsistentGroupProtocol(
                    "the member supports none of the group's protocols (assignors)".into(),
                )));
            }
        }
        let member_id = if req.member_id.is_empty() {
            self.next_member += 1;
            let prefix = if req.client_id.is_empty() {
                "member"
            } else {
                &req.client_id
            };
            if g.members.len() + g.pending_ids.len() >= MAX_GROUP_MEMBERS {
                return Reply::Now(Err(ClassicError::GroupMaxSizeReached));
            }
            let id = format!("{prefix}-{}-{:016x}", self.next_member, req.nonce);
            if req.require_known_member_id {
                g.pending_ids
                    .insert(id.clone(), now_ms + req.session_timeout_ms);
                return Reply::Now(Err(ClassicError::MemberIdRequired(id)));
            }
            id
        } else if known || g.pending_ids.remove(&req.member_id).is_some() {
            req.member_id.clone()
        } else {
            return Reply::Now(Err(ClassicError::UnknownMemberId));
        };
        let previous = g.members.get(&member_id);
        let unchanged = previous.is_some_and(|m| m.protocols == req.protocols);
        let member = Member {
            client_id: req.client_id,
            client_host: req.client_host,
            protocols: req.protocols,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms.max(req.session_timeout_ms),
            last_heartbeat_ms: now_ms,
            awaiting_join: true,
            awaiting_sync: previous.is_some_and(|m| m.awaiting_sync),
            // A member joining again keeps its assignment: answered the current generation
            // below, its SyncGroup returns what it has (a rebalance clears it anyway).
            assignment: previous.map(|m| m.assignment.clone()).unwrap_or_default(),
        };
        if g.members.is_empty() {
            g.protocol_type = req.protocol_type;
        }
        g.members.insert(member_id.clone(), member);
        match g.state {
            ClassicState::PreparingRebalance => {}
            // A member joining again with what it had gets the current generation back.
            ClassicState::CompletingRebalance if unchanged => {
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.awaiting_join = false;
                }
                return Reply::Now(Ok(g.current_join(&member_id)));
            }
            ClassicState::Stable if unchanged && g.leader.as_deref() != Some(&member_id) => {
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.awaiting_join = false;
                }
                return Reply::Now(Ok(g.current_join(&member_id)));
            }
            _ => g.prepare_rebalance(&name, now_ms, out),
        }
        g.maybe_complete_join(&name, now_ms, false, out);
        Reply::Pending(member_id)
    }

    /// Handles a SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        now_ms: u64,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        out: &mut Deliveries,
    ) -> Reply<Bytes> {
        let Some(g) = self.groups.get_mut(group) else {
            return Reply::Now(Err(ClassicError::UnknownMemberId));
        };
        if !g.members.contains_key(member_id) {
            return Reply::Now(Err(ClassicError::UnknownMemberId));
        }
        if generation != g.generation {
            return Reply::Now(Err(ClassicError::IllegalGeneration));
        }
        match g.state {
            ClassicState::Empty => Reply::Now(Err(ClassicError::UnknownMemberId)),
            ClassicState::PreparingRebalance => Reply::Now(Err(ClassicError::RebalanceInProgress)),
            ClassicState::Stable => Reply::Now(Ok(g.members[member_id].assignment.clone())),
            ClassicState::CompletingRebalance => {
                if let Some(m) = g.members.get_mut(member_id) {
                    m.awaiting_sync = true;
                    m.last_heartbeat_ms = now_ms;
                }
                if g.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = given.remove(id).unwrap_or_default();
                    }
                    g.state = ClassicState::Stable;
                    for (id, m) in g.members.iter_mut() {
                        if std::mem::take(&mut m.awaiting_sync) {
                            out.syncs.push((
                                group.to_owned(),
                                id.clone(),
                                Ok(m.assignment.clone()),
                            ));
                        }
                    }
                }
                Reply::Pending(member_id.to_owned())
            }
        }
    }

    /// Handles a Heartbeat: keeps the member alive, and tells it when to join again.
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), ClassicError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ClassicError::UnknownMemberId)?;
        let state = g.state;
        let current = g.generation;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        m.last_heartbeat_ms = now_ms;
        match state {
            ClassicState::Empty => Err(ClassicError::UnknownMemberId),
            ClassicState::PreparingRebalance => Err(ClassicError::RebalanceInProgress),
            _ if generation != current => Err(ClassicError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// Handles a LeaveGroup of one or more members; answers per member.
    pub fn leave(
        &mut self,
        now_ms: u64,
        group: &str,
        members: &[String],
        out: &mut Deliveries,
    ) -> Vec<Result<(), ClassicError>> {
        let Some(g) = self.groups.get_mut(group) else {
            return members
                .iter()
                .map(|_| Err(ClassicError::UnknownMemberId))
                .collect();
        };
        let answers = members
            .iter()
            .map(|id| {
                if g.members.contains_key(id) {
                    Ok(())
                } else {
                    Err(ClassicError::UnknownMemberId)
                }
            })
            .collect();
        let present: Vec<String> = members
            .iter()
            .filter(|id| g.members.contains_key(*id))
            .cloned()
            .collect();
        if !present.is_empty() {
            g.remove(group, &present, now_ms, out);
        }
        answers
    }

    /// Expires silent members and ids never used, and ends rebalances past their deadline.
    pub fn tick(&mut self, now_ms: u64, out: &mut Deliveries) {
        for (name, g) in self.groups.iter_mut() {
            g.pending_ids.retain(|_, deadline| *deadline > now_ms);
            match g.state {
                ClassicState::PreparingRebalance if now_ms >= g.deadline_ms => {
                    g.maybe_complete_join(name, now_ms, true, out);
                }
                ClassicState::CompletingRebalance if now_ms >= g.deadline_ms => {
                    // The leader never sent its assignment: start over.
                    g.prepare_rebalance(name, now_ms, out);
                }
                ClassicState::Empty => {}
                ClassicState::PreparingRebalance
                | ClassicState::CompletingRebalance
                | ClassicState::Stable => {
                    // A member whose JoinGroup is waiting is alive (Kafka keeps it so); one
                    // that stopped heartbeating (killed) goes after its session, so that a
                    // rebalance need not wait out the whole rebalance timeout for it.
                    let expired: Vec<String> = g
                        .members
                        .iter()
                        .filter(|(_, m)| {
                            !m.awaiting_join && now_ms > m.last_heartbeat_ms + m.session_timeout_ms
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    if !expired.is_empty() {
                        tracing::info!(group = %name, members = ?expired, "Kafka group members timed out.");
                        g.remove(name, &expired, now_ms, out);
                    }
                }
            }
        }
        // Empty groups go (their committed offsets live in the offset store, not here).
        self.groups.retain(|_, g| {
            g.state != ClassicState::Empty || !g.members.is_empty() || !g.pending_ids.is_empty()
        });
    }

    /// Checks an offset commit from a member: it must be in the group at its generation, and
    /// the group not rebalancing.
    pub fn validate_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), ClassicError> {
        let g = self
            .groups
            .get(group)
            .ok_or(ClassicError::UnknownMemberId)?;
        if !g.members.contains_key(member_id) {
            return Err(ClassicError::UnknownMemberId);
        }
        if generation != g.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        // As Kafka: a member may still commit what it consumed while the group prepares a
        // rebalance (on revocation); only between the new generation and its assignment not.
        match g.state {
            ClassicState::Stable | ClassicState::PreparingRebalance => Ok(()),
            ClassicState::Empty => Err(ClassicError::UnknownMemberId),
            ClassicState::CompletingRebalance => Err(ClassicError::RebalanceInProgress),
        }
    }

    /// How many members the group has (0 if unknown).
    pub fn members(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.members.len())
    }

    /// The group, if known.
    pub fn describe(&self, group: &str) -> Option<ClassicDescription> {
        let g = self.groups.get(group)?;
        Some(ClassicDescription {
            state: g.state,
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| ClassicMember {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: metadata_for(m, &g.protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group: (name, state, members).
    pub fn list(&self) -> Vec<(String, ClassicState, usize)> {
        self.groups
            .iter()
            .map(|(n, g)| (n.clone(), g.state, g.members.len()))
            .collect()
    }

    /// Forgets an empty group (false if it has members).
    pub fn remove_if_empty(&mut self, group: &str) -> bool {
        match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => false,
            _ => {
                self.groups.remove(group);
                true
            }
        }
    }
}

/// The topics of a `consumer` protocol subscription (Kafka's ConsumerProtocolSubscription:
/// version, topics, user data, ...); empty if it does not parse.
pub fn consumer_subscription_topics(metadata: &[u8]) -> BTreeSet<String> {
    let mut r = Reader(metadata);
    let parse = |r: &mut Reader| -> Option<BTreeSet<String>> {
        r.i16()?;
        let n = r.i32()?;
        (0..n.max(0)).map(|_| r.string()).collect()
    };
    parse(&mut r).unwrap_or_default()
}

/// The partitions of a `consumer` protocol assignment (ConsumerProtocolAssignment: version,
/// then topics with partitions); empty if it does not parse.
pub fn consumer_assignment(assignment: &[u8]) -> BTreeSet<TopicPartition> {
    let mut r = Reader(assignment);
    let parse = |r: &mut Reader| -> Option<BTreeSet<TopicPartition>> {
        r.i16()?;
        let mut out = BTreeSet::new();
        for _ in 0..r.i32()?.max(0) {
            let topic = r.string()?;
            for _ in 0..r.i32()?.max(0) {
                let p = u32::try_from(r.i32()?).ok()?;
                // Bounded: the blob is the client's, describe runs under the group lock.
                if out.len() >= MAX_DESCRIBED_PARTITIONS {
                    return Some(out);
                }
                out.insert(TopicPartition::new(topic.clone(), p));
            }
        }
        Some(out)
    };
    parse(&mut r).unwrap_or_default()
}

/// Big-endian reads that stop at the end of the input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.i16()?).ok()?;
        self.take(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 10_000;

    fn join(c: &mut ClassicGroups, now: u64, id: &str, out: &mut Deliveries) -> Reply<JoinResult> {
        c.join(
            now,
            JoinRequest {
                group: "g".into(),
                member_id: id.into(),
                require_known_member_id: false,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"md"))],
                session_timeout_ms: SESSION,
                rebalance_timeout_ms: SESSION,
                nonce: 0,
            },
            out,
        )
    }

    fn joined(out: &Deliveries, member: &str) -> JoinResult {
        out.joins
            .iter()
            .find(|(_, m, _)| m == member)
            .and_then(|(_, _, r)| r.clone().ok())
            .unwrap_or_else(|| panic!("no join answer for {member}: {out:?}"))
    }

    #[test]
    fn one_member_forms_a_generation_and_syncs() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        assert!(matches!(join(&mut c, 0, "", &mut out), Reply::Pending(_)));
        let r = out.joins[0].2.clone().unwrap();
        assert_eq!((r.generation, r.leader.as_str()), (1, r.member_id.as_str()));
        assert_eq!(r.members.len(), 1);
        let mut out = Deliveries::default();
        let a = Bytes::from_static(b"assignment");
        assert_eq!(
            c.sync(
                1,
                "g",
                1,
                &r.member_id,
                vec![(r.member_id.clone(), a.clone())],
                &mut out
            ),
            Reply::Pending(r.member_id.clone())
        );
        assert_eq!(out.syncs, vec![("g".into(), r.member_id.clone(), Ok(a))]);
        assert_eq!(c.heartbeat(2, "g", 1, &r.member_id), Ok(()));
        assert_eq!(c.validate_commit("g", 1, &r.member_id), Ok(()));
        assert_eq!(
            c.validate_commit("g", 0, &r.member_id),
            Err(ClassicError::IllegalGeneration)
        );
    }

    #[test]
    fn a_second_member_rebalances_and_the_follower_waits_for_the_leader() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        join(&mut c, 0, "", &mut out);
        let a = joined(&out, "c-1-0000000000000000");
        let mut out = Deliveries::default();
        c.sync(0, "g", 1, &a.member_id, vec![], &mut out);
        // The newcomer starts a rebalance; the first member learns it from its heartbeat.
        let mut out = Deliveries::default();
        assert_eq!(
            join(&mut c, 10, "", &mut out),
            Reply::Pending("c-2-0000000000000000".into())
        );
        assert!(out.joins.is_empty());
        assert_eq!(
            c.heartbeat(20, "g", 1, &a.member_id),
            Err(ClassicError::RebalanceInProgress)
        );
        // Committing what it consumed is still allowed while the group prepares.
        assert_eq!(c.validate_commit("g", 1, &a.member_id), Ok(()));
        join(&mut c, 30, &a.member_id, &mut out);
        let leader = joined(&out, "c-1-0000000000000000");
        let follower = joined(&out, "c-2-0000000000000000");
        assert_eq!((leader.generation, leader.members.len()), (2, 2));
        assert!(follower.members.is_empty());
        let mut out = Deliveries::default();
        assert_eq!(
            c.sync(40, "g", 2, "c-2-0000000000000000", vec![], &mut out),
            Reply::Pending("c-2-0000000000000000".into())
        );
        assert!(out.syncs.is_empty(), "the follower waits for the leader");
        let assignments = vec![
            (
                "c-1-0000000000000000".to_string(),
                Bytes::from_static(b"one"),
            ),
            (
                "c-2-0000000000000000".to_string(),
                Bytes::from_static(b"two"),
            ),
        ];
        c.sync(50, "g", 2, "c-1-0000000000000000", assignments, &mut out);
        let mut syncs = out.syncs.clone();
        syncs.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            syncs,
            vec![
                (
                    "g".into(),
                    "c-1-0000000000000000".into(),
                    Ok(Bytes::from_static(b"one"))
                ),
                (
                    "g".into(),
                    "c-2-0000000000000000".into(),
                    Ok(Bytes::from_static(b"two"))
                ),
            ]
        );
    }

    #[test]
    fn a_follower_joining_again_unchanged_keeps_its_generation_and_assignment() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "c-1-0000000000000000", &mut out);
        let assignments = vec![
            (
                "c-1-0000000000000000".to_string(),
                Bytes::from_static(b"one"),
            ),
            (
                "c-2-0000000000000000".to_string(),
                Bytes::from_static(b"two"),
            ),
        ];
        c.sync(1, "g", 2, "c-1-0000000000000000", assignments, &mut out);
        // kafka-python does this when its metadata refreshes: the follower joins again with
        // the same protocols, gets generation 2 back at once and syncs for its assignment.
        let again = join(&mut c, 2, "c-2-0000000000000000", &mut out);
        assert!(
            matches!(again, Reply::Now(Ok(ref j)) if j.generation == 2),
            "{again:?}"
        );
        assert_eq!(
            c.sync(3, "g", 2, "c-2-0000000000000000", vec![], &mut out),
            Reply::Now(Ok(Bytes::from_static(b"two")))
        );
    }

    #[test]
    fn a_leaving_member_hands_its_partitions_to_the_rest() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "c-1-0000000000000000", &mut out);
        assert_eq!(c.describe("g").map(|d| d.generation), Some(2));
        let mut out = Deliveries::default();
        assert_eq!(
            c.leave(10, "g", &["c-2-0000000000000000".into()], &mut out),
            vec![Ok(())]
        );
        assert_eq!(
            c.describe("g").map(|d| d.state),
            Some(ClassicState::PreparingRebalance)
        );
        join(&mut c, 20, "c-1-0000000000000000", &mut out);
        let r = joined(&out, "c-1-0000000000000000");
        assert_eq!((r.generation, r.members.len()), (3, 1));
        let mut out = Deliveries::default();
        c.leave(30, "g", &["c-1-0000000000000000".into()], &mut out);
        let d = c.describe("g").unwrap();
        assert_eq!((d.state, d.members.len()), (ClassicState::Empty, 0));
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_deadline_and_silent_ones_expire() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "", &mut out);
        join(&mut c, 0, "c-1-0000000000000000", &mut out);
        c.sync(0, "g", 2, "c-1-0000000000000000", vec![], &mut out);
        // c-2 goes silent: after its session it is removed and c-1 must rejoin alone.
        c.heartbeat(SESSION, "g", 2, "c-1-0000000000000000")
            .unwrap();
        let mut out = Deliveries::default();
        c.tick(SESSION + 1, &mut out);
        assert_eq!(c.members("g"), 1);
        assert_eq!(
            c.heartbeat(SESSION + 2, "g", 2, "c-1-0000000000000000"),
            Err(ClassicError::RebalanceInProgress)
        );
        // c-1 never rejoins: at the rebalance deadline the group is empty, and forgotten.
        c.tick(3 * SESSION, &mut out);
        assert_eq!(c.describe("g"), None);
        assert_eq!(
            c.heartbeat(3 * SESSION, "g", 3, "c-1-0000000000000000"),
            Err(ClassicError::UnknownMemberId)
        );
    }

    #[test]
    fn new_members_get_an_id_first_when_asked_and_unknown_ids_are_refused() {
        let mut c = ClassicGroups::default();
        let mut out = Deliveries::default();
        let mut req = JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            require_known_member_id: true,
            client_id: "app".into(),
            client_host: String::new(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            session_timeout_ms: SESSION,
            rebalance_timeout_ms: SESSION,
            nonce: 7,
        };
        let Reply::Now(Err(ClassicError::MemberIdRequired(id))) = c.join(0, req.clone(), &mut out)
        else {
            panic!("expected MemberIdRequired")
        };
        req.member_id = id.clone();
        assert_eq!(c.join(1, req.clone(), &mut out), Reply::Pending(id.clone()));
        assert_eq!(joined(&out, &id).generation, 1);
        req.member_id = "forged".into();
        assert_eq!(
            c.join(2, req.clone(), &mut out),
            Reply::Now(Err(ClassicError::UnknownMemberId))
        );
        req.member_id = String::new();
        req.session_timeout_ms = 10;
        assert!(matches!(
            c.join(3, req, &mut out),
            Reply::Now(Err(ClassicError::InvalidSessionTimeout(10)))
        ));
    }

    #[test]
    fn consumer_protocol_blobs_parse_and_garbage_gives_nothing() {
        // version 0, topics ["a", "bc"], user data null
        let sub = [
            0, 0, 0, 0, 0, 2, 0, 1, b'a', 0, 2, b'b', b'c', 255, 255, 255, 255,
        ];
        assert_eq!(
            consumer_subscription_topics(&sub),
            ["a".to_string(), "bc".to_string()].into()
        );
        // version 0, [("a", [0, 2])], user data null
        let asg = [
            0, 0, 0, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 255, 255, 255, 255,
        ];
        assert_eq!(
            consumer_assignment(&asg),
            [TopicPartition::new("a", 0), TopicPartition::new("a", 2)].into()
        );
        assert!(consumer_assignment(&[0, 0, 0, 0, 0, 9, 0]).is_empty());
        assert!(consumer_subscription_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_empty());
    }
}
