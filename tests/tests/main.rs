//! End-to-end tests across the Sluice crates: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod api_seam;
mod cli;
mod common;
mod crash;
mod elasticsearch;
mod hardening;
mod hardening_log;
mod hardening_sql;
mod http_sink;
mod log_crash;
mod log_groups;
mod log_topics;
mod log_txn;
mod objstore;
mod pipeline_reference;
mod postgres_cdc;
mod sql_cases;
mod sql_differential;
mod sql_join_crash;
mod sql_join_state;
mod sql_partition_by;
mod sql_queries;
mod task_runtime;
mod worker;
