//! Streaming operators, one file each (a folder for one with several concerns).
//!
//! - [`stateless`]: filters and projections, evaluated as DataFusion physical expressions.
//! - [`explode`]: table functions (`EXPLODE`), a flat map within the stateless chain.
//! - [`window`]: window assignment (tumbling, hopping, session) and late-record detection.
//! - [`aggregate`]: GROUP BY with or without windows, state in `sluice-state` (a folder: plan,
//!   cache, session windows, expiry, output).
//! - [`acc`]: the accumulators of the aggregate functions and their byte encoding.
//! - [`join`]: stream-table, stream-stream, table-table and foreign-key joins, chained for
//!   N-way joins (a folder: plan, state, one file per kind).

pub mod acc;
pub mod aggregate;
pub mod explode;
pub mod join;
pub mod stateless;
pub mod window;
