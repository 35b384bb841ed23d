//! A cluster of Sluice nodes: the metadata they share (nodes, topics, each partition's
//! replicas, leader, leader epoch and in-sync replicas, the pipeline owning a topic), kept in a
//! Raft-replicated log as Kafka's KRaft does, and the controller that acts on node failures.
//!
//! # Layout
//!
//! - [`auth`]: the cluster's shared secret and the SCRAM exchange nodes prove it with.
//! - [`metadata`]: the state machine: the metadata and the commands that change it.
//! - [`controller`]: the controller's decisions (fencing, leader election, placement), pure.
//! - [`node`]: this node's part: the Raft group, registration and heartbeats, the
//!   controller's loop, answers to peers; [`Cluster`] is its handle.
//! - [`raft`]: openraft's types, the network between nodes and the storage on disk.
//! - [`rpc`]: the messages between nodes and their framing on the Kafka listener.
//! - [`transport`]: a node's connections to the others, plain or TLS.

pub mod auth;
pub mod controller;
pub mod metadata;
pub mod node;
pub mod raft;
pub mod rpc;
pub mod transport;

pub use metadata::{Command, Metadata, NodeId};
pub use node::{Cluster, ClusterConfig, ClusterError, ClusterStatus, NodeStatus, parse_voters};
