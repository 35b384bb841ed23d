//! Streaming operators, one file each (a folder for one with several concerns).
//!
//! - [`stateless`]: filters and projections, evaluated as DataFusion physical expressions.
//! - [`explode`]: table functions (`EXPLODE`), a flat map within the stateless chain.
//! - [`window`]: window assignment (tumbling, hopping, session) and late-record detection.
//! - [`aggregate`]: GROUP BY with or without windows, state in `sluice-state` (a folder: plan,
//!   cache, session windows, expiry, output).
//! - [`acc`]: the accumulators of the aggregate functions and their byte encoding.
//!
//! Joins will be operators of the same shape: a plan node compiled from DataFusion's logical
//! plan, opened with its stores, fed decoded batches, emitting rows with timestamps.

pub mod acc;
pub mod aggregate;
pub mod explode;
pub mod stateless;
pub mod window;
