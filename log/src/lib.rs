//! The embedded log (work in progress).

pub mod record;
