//! Fault injection for crash tests: `SLUICE_FAULT=<point>` makes the process abort (no
//! cleanup, like a crash) when it reaches that point of a commit path.
//!
//! Points: `txn-after-prepare` (a transaction's decision is durable, no marker written yet),
//! `txn-after-markers` (markers written, completion not yet recorded). Reading the variable
//! once keeps the check off the hot path.

use std::sync::OnceLock;

static FAULT: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process if `SLUICE_FAULT` names this point.
pub fn point(name: &str) {
    let armed = FAULT.get_or_init(|| std::env::var("SLUICE_FAULT").ok());
    if armed.as_deref() == Some(name) {
        tracing::error!(point = name, "Injected fault: aborting the process.");
        std::process::abort();
    }
}
