//! Streaming operators, one file each.
//!
//! - [`stateless`]: filters and projections, evaluated as DataFusion physical expressions.

pub mod stateless;
