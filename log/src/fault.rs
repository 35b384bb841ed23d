//! Fault injection for crash tests: `SLUICE_FAULT=<point>` makes the process abort (no
//! cleanup, like a crash) when it reaches that point of a commit path.
//!
//! Points, in the order an epoch reaches them:
//!
//! | point | where the process stops |
//! |---|---|
//! | `source-before-commit` | a source task's records are written, its transaction (or, at least once, its position) not committed |
//! | `query-before-commit` | a query's outputs, dead letters and changelog records are written, its transaction (or positions) not committed |
//! | `txn-after-prepare` | a transaction's decision is durable, no marker written yet |
//! | `txn-after-markers` | markers written, the completion not yet recorded |
//! | `query-after-commit` | a query's transaction committed, its state stores not yet updated |
//! | `state-snapshot` | during the epoch's state snapshot: the first of a query's stores holds the epoch locally, the others not yet (the only store, for a query with one) |
//! | `sink-after-flush` | a sink's output is durable outside (object written, file synced), its offsets not committed |
//!
//! Reading the variable once keeps the check off the hot path.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();

/// Times the armed point was reached.
static REACHED: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if `SLUICE_FAULT` names this point: the first time it is reached, or
/// with `<point>:<n>` the `n`th time (so that a crash test can let some epochs commit).
pub fn point(name: &str) {
    let armed = FAULT.get_or_init(|| {
        let v = std::env::var("SLUICE_FAULT").ok()?;
        Some(match v.split_once(':') {
            Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1).max(1)),
            None => (v, 1),
        })
    });
    if let Some((point, n)) = armed
        && point == name
        && REACHED.fetch_add(1, Ordering::Relaxed) + 1 >= *n
    {
        tracing::error!(point = name, "Injected fault: aborting the process.");
        std::process::abort();
    }
}
