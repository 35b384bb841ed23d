//! Keyed state for Sluice's stateful operators.
//!
//! Each stateful operator (an aggregate, a window, a join) keeps its state in a local RocksDB
//! store per input partition. The store is only a *materialization*: every change is also
//! written to a compacted changelog topic in the embedded log, and the store records the
//! changelog offset it has applied. On restart a store reopens its local files (or a local
//! checkpoint) and replays the changelog from that offset, so the log stays the single source
//! of truth (see `DESIGN.md`, "Exactly-once").
//!
//! # Layout
//!
//! Nothing is implemented yet; the streaming-SQL work brings:
//! - key-value, window and session stores over one shared RocksDB block cache and write-buffer
//!   budget,
//! - changelog writing and replay,
//! - local snapshots through RocksDB checkpoints.
