//! Consumer groups: the server-side-assignment group protocol (a simplified Kafka KIP-848)
//! that shares a topic's partitions among a group's members.
//!
//! The protocol is a pure state machine ([`GroupCoordinator`]): members heartbeat with what they
//! subscribe to and what they currently consume, and get back what they may consume now. A
//! partition moves between members in two steps — the old owner is told to drop it and reports
//! that it did, only then is it granted to the new owner — so no partition is ever owned by two
//! members at once, and members unaffected by a rebalance keep consuming throughout.
//! [`Assignor`] decides the target each member converges to.
//!
//! The coordinator does no IO and reads no clock: the caller passes `now_ms` into every call,
//! serialises calls (e.g. under a mutex) and persists committed offsets itself, using
//! [`GroupCoordinator::validate_commit`] to fence commits from stale members.
//!
//! Kafka clients join groups with Kafka's classic protocol instead ([`classic`]: JoinGroup,
//! SyncGroup, client-side assignors). A group id names one group either way: the coordinator
//! holds both kinds, refuses a member of one kind while the group has members of the other,
//! and the committed offsets are the same.

mod assignor;
pub mod classic;
mod coordinator;

pub use assignor::{Assignor, TopicPartition, UnknownAssignor};
pub use coordinator::{
    DEFAULT_HEARTBEAT_INTERVAL_MS, GroupCoordinator, GroupDescription, GroupError, GroupState,
    HeartbeatRequest, HeartbeatResponse, MemberDescription,
};
