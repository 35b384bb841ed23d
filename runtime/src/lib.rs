//! The Sluice runtime (work in progress).
