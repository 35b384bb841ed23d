//! The Postgres change-data-capture source: logical replication with the `pgoutput` plugin,
//! each row change a Debezium-compatible JSON record on a topic per table.
//!
//! ```text
//!  PostgreSQL ── slot + publication ──► stream.rs (own tokio runtime) ──► channel ──► poll
//!      ▲                                                                                 │
//!      └──── confirmed flush LSN ◄── committed() ◄── the worker's log transaction ◄──────┘
//! ```
//!
//! # Exactly once
//!
//! The position is the commit LSN and end LSN of the last transaction whose records a poll
//! returned (and, for a transaction larger than `max-transaction-records`, how many of its
//! changes). A poll returns whole transactions, so with the worker's transactional commit
//! a Postgres transaction lands in the log whole. The slot's confirmed flush LSN is moved
//! only in [`Source::committed`], after the log holds the records: a crash before that makes
//! the server send the transactions again, and those at or below the position are skipped.
//! When nothing read is waiting for the log, the server's keepalive position is confirmed
//! too, so a slot whose tables are quiet does not hold WAL back.
//!
//! The initial snapshot (`snapshot.rs`) reads every row first, from the slot's exported
//! snapshot, in chunks whose progress is the position; a crash mid-snapshot resumes from a
//! new snapshot, and streaming then skips what that snapshot already holds.
//!
//! # TOASTed values
//!
//! An update that leaves a value stored out of line alone does not carry it. The source
//! keeps each row's large TOASTable values in its store (a RocksDB [`sluice_state::KvStore`]
//! the task gives it, changelogged in the source's epochs) and fills them in; the session
//! says with each record what to keep, fill and forget ([`envelope::Note`]), and `poll`
//! does it, on the task's thread where the store lives.
//!
//! # Layout
//!
//! - `pgoutput.rs`: decoding pgoutput v1 messages, and column text to JSON by type.
//! - `envelope.rs`: relations, the Debezium envelope of each change, its registry schema.
//! - `snapshot.rs`: the initial snapshot and the filter of a resumed one.
//! - `stream.rs`: the replication session.
//! - `tls.rs`: TLS to the server (libpq's `sslmode`, with rustls).

pub mod envelope;
pub mod pgoutput;
mod snapshot;
mod stream;
pub mod tls;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sluice_state::KvStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Interval;
use crate::{ConnectorError, Result, Source, SourceBatch, Wait};

pub use envelope::Routed;

/// The Postgres CDC source's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PostgresCdcConfig {
    /// `postgres://user[:password]@host[:port]/database`. The role needs the `REPLICATION`
    /// attribute, and `CREATE` on the database to create the publication.
    pub url: String,
    /// The environment variable holding the password, to keep it out of the file.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS to the server, as libpq's `sslmode`: `"disable"`, `"prefer"` (the default: TLS
    /// when the server offers it, the certificate not checked), `"require"` (always, the
    /// certificate not checked), `"verify-ca"` (a certificate signed by a trusted CA),
    /// `"verify-full"` (and naming the host of `url`).
    #[serde(default)]
    pub tls: tls::TlsMode,
    /// PEM file of the CA certificates to trust with `verify-ca` and `verify-full`
    /// (default: the system's).
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The tables to capture, `schema.table` (or `table`, in `public`). Empty: every table
    /// of the publication (a publication created then is `FOR ALL TABLES`, which needs a
    /// superuser).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The publication, created when missing (default `sluice_<slot-name>`).
    #[serde(default)]
    pub publication: Option<String>,
    /// The replication slot, created when missing (default: `sluice_` and the pipeline and
    /// source names, lower case, other characters as `_`).
    #[serde(default)]
    pub slot: Option<String>,
    /// Drop the replication slot when the pipeline is deleted (its file removed, or `DELETE
    /// /pipelines/{name}`), so the server stops keeping WAL for it (default false: the slot,
    /// and the WAL it holds, stay for a pipeline deployed again later).
    #[serde(default)]
    pub slot_drop_on_delete: bool,
    /// Where capture starts (default `"initial"`): `"initial"` reads every row of the
    /// tables first (as `"r"` records) and then streams the changes from that snapshot's
    /// consistent point on; `"never"` streams the changes from the slot's creation on;
    /// `"when-needed"` is `"initial"` that also takes a new snapshot when the slot is gone
    /// or invalidated (its changes since the position were lost, so rows are read again).
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows one snapshot query reads at most (default 10240): each such chunk is one step
    /// of the snapshot's progress in the position, where a restart resumes.
    #[serde(default = "default_snapshot_fetch_size")]
    pub snapshot_fetch_size: usize,
    /// Write a tombstone (the key with no value) after each delete, so a compacted topic
    /// forgets the row (default true, as Debezium).
    #[serde(default = "default_true")]
    pub tombstones_on_delete: bool,
    /// How often the position is reported to the server when idle (default `"10s"`).
    #[serde(default = "default_status_interval")]
    pub status_interval: Interval,
    /// SQL run every `status-interval` on the source's own connection, as Debezium's
    /// `heartbeat.action.query`: a write (to a table of its own, say) that gives the slot
    /// WAL of this database to move past when the captured tables are quiet and the server
    /// (before PostgreSQL 15) would otherwise hold back WAL that other databases write. A
    /// failure is logged as a warning and retried at the next interval.
    #[serde(default)]
    pub heartbeat_query: Option<String>,
    /// Slot lag (WAL bytes the slot holds back) above which a warning is logged; the lag
    /// itself is in the pipeline's status (`lag_bytes`) and the `sluice_source_lag_bytes`
    /// metric (default 1 GiB).
    #[serde(default = "default_slot_lag_warning_bytes")]
    pub slot_lag_warning_bytes: u64,
    /// Records one poll carries at most from one transaction; a larger transaction is
    /// split (each part still exactly once, but readers may see a part before the rest).
    #[serde(default = "default_max_transaction_records")]
    pub max_transaction_records: usize,
}

fn default_snapshot_fetch_size() -> usize {
    10_240
}

fn default_true() -> bool {
    true
}

fn default_status_interval() -> Interval {
    Interval(stream::DEFAULT_STATUS_INTERVAL)
}

fn default_slot_lag_warning_bytes() -> u64 {
    1 << 30
}

fn default_max_transaction_records() -> usize {
    100_000
}

/// The URL's password is never shown.
impl fmt::Debug for PostgresCdcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCdcConfig")
            .field("url", &redact(&self.url))
            .field("password_env", &self.password_env)
            .field("tables", &self.tables)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("snapshot", &self.snapshot)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // A `key=value` connection string: shown only when it holds no password.
        return match url.to_ascii_lowercase().contains("password") {
            true => "(a connection string with a password)".into(),
            false => url.to_string(),
        };
    };
    if rest.to_ascii_lowercase().contains("password=") {
        return format!("{scheme}://(a URL with a password parameter)");
    }
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// How capture starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Every row first, then the changes after it, when the source has no position yet.
    #[default]
    Initial,
    /// No snapshot: the changes from the slot's creation on.
    Never,
    /// As `Initial`, and again when the slot is gone or invalidated.
    WhenNeeded,
}

/// How long `open` waits for the replication session to start.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings the session uses, resolved once.
#[derive(Clone)]
struct Settings {
    pg: tokio_postgres::Config,
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tables: Vec<String>,
    publication: String,
    slot: String,
    topic: String,
    tombstones: bool,
    status_interval: Duration,
    max_transaction_records: usize,
    lag_warning: u64,
    heartbeat: Option<String>,
    snapshot: SnapshotMode,
    snapshot_fetch: usize,
    tls: tls::Tls,
    /// The source has a store: TOASTed values are kept to fill in what updates leave out.
    keep_toast: bool,
    /// The slot's lag as last measured, and whether it was.
    lag: std::sync::Arc<std::sync::atomic::AtomicU64>,
    lag_known: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Where the source is: the last transaction in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Its commit LSN (0: none yet).
    commit_lsn: u64,
    /// Its end LSN, which the server is told is flushed.
    end_lsn: u64,
    /// When only part of it is in the log: how many of its changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<u64>,
    /// The initial snapshot's progress: while it runs, and after it while streamed changes
    /// may still be older than rows it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<snapshot::Progress>,
}

/// A name PostgreSQL takes for a slot: lower case letters, digits and `_`, at most 63.
fn slot_name(raw: &str) -> String {
    raw.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .take(63)
        .collect()
}

/// Captures row changes of a PostgreSQL database.
pub struct PostgresCdcSource {
    settings: Settings,
    /// The store's name, from the pipeline and source names.
    store_name: String,
    /// The TOASTed values seen, by table, key and column (given by the task).
    store: Option<KvStore>,
    /// What this session knows of the store.
    kept: Kept,
    runtime: Option<tokio::runtime::Runtime>,
    items: Option<mpsc::Receiver<stream::Item>>,
    acks: Option<watch::Sender<u64>>,
    /// The end LSN of the last complete transaction polled.
    polled_end: u64,
}

impl fmt::Debug for PostgresCdcSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCdcSource")
            .field("slot", &self.settings.slot)
            .field("publication", &self.settings.publication)
            .field("polled_end", &self.polled_end)
            .finish_non_exhaustive()
    }
}

impl PostgresCdcSource {
    /// A source from its settings. `name` (`<pipeline>/<source>`) names the default slot;
    /// `topic` is the topic name pattern (`{schema}`, `{table}`).
    pub fn new(config: PostgresCdcConfig, name: &str, topic: &str) -> Result<PostgresCdcSource> {
        let bad = |m: String| ConnectorError::Config(format!("postgres-cdc: {m}"));
        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| bad(format!("url {}: {e}", redact(&config.url))))?;
        if let Some(var) = &config.password_env {
            let pw = std::env::var(var)
                .map_err(|_| bad(format!("password-env: the variable {var} is not set")))?;
            pg.password(pw);
        }
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err(bad("url: name a TCP host (host:port)".into())),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let user = pg
            .get_user()
            .ok_or_else(|| bad("url: name the user (postgres://user@host/db)".into()))?
            .to_string();
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = pg.get_dbname().unwrap_or(&user).to_string();
        if config.snapshot_fetch_size == 0 {
            return Err(bad("snapshot-fetch-size must be at least 1".into()));
        }
        if config.max_transaction_records == 0 {
            return Err(bad("max-transaction-records must be at least 1".into()));
        }
        for t in &config.tables {
            if t.is_empty() || t.split('.').count() > 2 || t.split('.').any(str::is_empty) {
                return Err(bad(format!(
                    "tables: '{t}' is not a table name (schema.table or table)"
                )));
            }
        }
        let slot = slot_name(config.slot.as_deref().unwrap_or(&format!("sluice_{name}")));
        if config.slot.as_deref().is_some_and(|s| s != slot) {
            return Err(bad(format!(
                "slot: '{}' is not a slot name (lower case letters, digits and _, at most 63); '{slot}' is",
                config.slot.as_deref().unwrap_or_default()
            )));
        }
        let publication = config.publication.clone().unwrap_or_else(|| slot.clone());
        let tables = config
            .tables
            .iter()
            .map(|t| match t.contains('.') {
                true => t.clone(),
                false => format!("public.{t}"),
            })
            .collect();
        Ok(PostgresCdcSource {
            settings: Settings {
                pg,
                host,
                port,
                user,
                password,
                database,
                tables,
                publication,
                slot,
                topic: topic.to_string(),
                tombstones: config.tombstones_on_delete,
                status_interval: config.status_interval.0,
                max_transaction_records: config.max_transaction_records,
                lag_warning: config.slot_lag_warning_bytes,
                heartbeat: config.heartbeat_query.clone(),
                snapshot: config.snapshot,
                snapshot_fetch: config.snapshot_fetch_size,
                tls: tls::Tls::new(config.tls, config.tls_ca_file.as_deref())?,
                keep_toast: false,
                lag: Default::default(),
                lag_known: Default::default(),
            },
            store_name: store_name(name),
            store: None,
            kept: Kept::default(),
            runtime: None,
            items: None,
            acks: None,
            polled_end: 0,
        })
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        &self.settings.slot
    }

    /// The slot with its server and database: two sources must never share one (each
    /// confirms its own position, and the other's changes would be skipped).
    pub fn slot_identity(&self) -> String {
        let s = &self.settings;
        format!(
            "replication slot {} on {}:{}/{}",
            s.slot, s.host, s.port, s.database
        )
    }

    /// Polls like [`Source::poll`], with each record's topic.
    pub fn poll_routed(
        &mut self,
        max: usize,
        wait: &Wait,
    ) -> Result<(Vec<Routed>, Option<Vec<u8>>)> {
        let (records, _, position) = self.poll_with_schemas(max, wait)?;
        Ok((records, position))
    }

    /// Polls like [`Source::poll`]: the records with their topics, the table shapes to
    /// register before them, and the position after them.
    #[allow(clippy::type_complexity)]
    fn poll_with_schemas(
        &mut self,
        max: usize,
        wait: &Wait,
    ) -> Result<(
        Vec<Routed>,
        Vec<(String, sluice_log::schema::RecordSchema)>,
        Option<Vec<u8>>,
    )> {
        let (Some(rt), Some(items)) = (self.runtime.as_ref(), self.items.as_mut()) else {
            return Err(ConnectorError::Config(
                "postgres-cdc: poll before open".into(),
            ));
        };
        let mut records = Vec::new();
        let mut schemas = Vec::new();
        let mut position = None;
        loop {
            let item = match records.is_empty() {
                // Nothing yet: wait, in short steps so that a stop is seen at once.
                true => {
                    let step = wait.remaining().min(Duration::from_millis(50));
                    if step.is_zero() {
                        break;
                    }
                    match rt.block_on(async { tokio::time::timeout(step, items.recv()).await }) {
                        Ok(item) => item,
                        Err(_) => continue,
                    }
                }
                false => items.try_recv().ok(),
            };
            match item {
                None if records.is_empty() => {
                    return Err(ConnectorError::Postgres(
                        "the replication session ended".into(),
                    ));
                }
                None => break,
                Some(stream::Item::Failed(e)) => {
                    // Records already taken are not returned: the restarted source reads
                    // them again from the slot.
                    return Err(e);
                }
                Some(stream::Item::Chunk(c)) => {
                    if c.position.partial.is_none() {
                        self.polled_end = c.position.end_lsn;
                    }
                    let mut chunk = c.records;
                    if let Some(store) = self.store.as_mut() {
                        self.kept.apply(store, &mut chunk, c.notes).map_err(|e| {
                            ConnectorError::Postgres(format!("the TOAST store: {e}"))
                        })?;
                    }
                    records.extend(chunk);
                    schemas.extend(c.schemas);
                    position = Some(c.position);
                    if records.len() >= max {
                        break;
                    }
                }
            }
        }
        let position = match position {
            Some(p) => {
                Some(serde_json::to_vec(&p).map_err(|e| ConnectorError::Position(e.to_string()))?)
            }
            None => None,
        };
        Ok((records, schemas, position))
    }
}

/// The store of source `name` (`<pipeline>/<source>`): a folder name, distinct for
/// distinct names (a fingerprint of the whole name follows its readable part).
fn store_name(name: &str) -> String {
    let readable: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .take(100)
        .collect();
    format!("source-{readable}-{:016x}", crate::fnv1a(name.as_bytes()))
}

/// What the source's store holds, and what `poll` knows of it this session.
///
/// Keys: `g<table>` the table's generation; `v<table><generation><row key>\0<column>` a
/// kept value (JSON); `s<table><generation>` a generation forgotten whole, whose values
/// are deleted a bounded number per poll. A truncate is thus one write, however large the
/// table. Tables are their OIDs (4 bytes, big-endian), generations 4 bytes too; a row key
/// is JSON, which holds no NUL.
#[derive(Debug, Default)]
struct Kept {
    /// Generations read or written this session (the store's, after an abort: cleared).
    generations: HashMap<u32, u32>,
    /// Whether a table's current generation holds any value.
    any: HashMap<u32, bool>,
}

/// Values deleted at most per poll when cleaning forgotten generations.
const CLEAN_PER_POLL: usize = 10_000;

impl Kept {
    fn generation(&mut self, store: &KvStore, table: u32) -> sluice_state::Result<u32> {
        if let Some(g) = self.generations.get(&table) {
            return Ok(*g);
        }
        let g = store
            .get(&generation_key(table))?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(0, u32::from_be_bytes);
        self.generations.insert(table, g);
        Ok(g)
    }

    /// The prefix of the values of `table`'s current generation.
    fn prefix(&mut self, store: &KvStore, table: u32) -> sluice_state::Result<Vec<u8>> {
        let g = self.generation(store, table)?;
        Ok(values_prefix(table, g))
    }

    fn any(&mut self, store: &KvStore, table: u32) -> sluice_state::Result<bool> {
        if let Some(a) = self.any.get(&table) {
            return Ok(*a);
        }
        let prefix = self.prefix(store, table)?;
        let a = store.prefix(&prefix)?.next().transpose()?.is_some();
        self.any.insert(table, a);
        Ok(a)
    }

    /// Does what the notes say, filling the records' left-out TOASTed values.
    fn apply(
        &mut self,
        store: &mut KvStore,
        records: &mut [Routed],
        notes: Vec<envelope::Note>,
    ) -> sluice_state::Result<()> {
        use envelope::ToastOp;
        for note in notes {
            let table = note.table;
            let mut envelope = note.envelope;
            for op in note.ops {
                match op {
                    ToastOp::Fill { from, columns } => {
                        let prefix = self.prefix(store, table)?;
                        let key = note
                            .record
                            .and_then(|i| records.get(i))
                            .and_then(|(_, r)| r.key.clone());
                        for c in columns {
                            let Some(kept) = store.get(&value_key(&prefix, &from, &c))? else {
                                continue;
                            };
                            // A row whose key changed keeps its values under the new key.
                            if let Some(key) = key.as_ref().filter(|k| **k != from) {
                                store.put(&value_key(&prefix, key, &c), &kept);
                            }
                            if let (Some(v), Ok(kept)) =
                                (envelope.as_mut(), serde_json::from_slice(&kept))
                            {
                                v["after"][c] = kept;
                            }
                        }
                    }
                    ToastOp::Remember { key, values } => {
                        let prefix = self.prefix(store, table)?;
                        for (c, v) in values {
                            store.put(&value_key(&prefix, &key, &c), &v);
                        }
                        self.any.insert(table, true);
                    }
                    ToastOp::Clear { key, columns } => {
                        if self.any(store, table)? {
                            let prefix = self.prefix(store, table)?;
                            for c in columns {
                                let k = value_key(&prefix, &key, &c);
                                if store.get(&k)?.is_some() {
                                    store.delete(&k);
                                }
                            }
                        }
                    }
                    ToastOp::Forget { key } => {
                        if self.any(store, table)? {
                            let mut prefix = self.prefix(store, table)?;
                            prefix.extend_from_slice(&key);
                            prefix.push(0);
                            let keys = store
                                .prefix(&prefix)?
                                .map(|e| e.map(|(k, _)| k))
                                .collect::<sluice_state::Result<Vec<_>>>()?;
                            for k in keys {
                                store.delete(&k);
                            }
                        }
                    }
                    ToastOp::ForgetAll => {
                        if self.any(store, table)? {
                            let g = self.generation(store, table)?;
                            store.put(&stale_key(table, g), b"");
                            store.put(&generation_key(table), &(g + 1).to_be_bytes());
                            self.generations.insert(table, g + 1);
                            self.any.insert(table, false);
                        }
                    }
                }
            }
            // The record's value is written once, filled.
            if let (Some(v), Some((_, record))) =
                (envelope, note.record.and_then(|i| records.get_mut(i)))
            {
                record.value = Some(bytes::Bytes::from(v.to_string()));
            }
        }
        self.clean(store)
    }

    /// Deletes up to [`CLEAN_PER_POLL`] values of forgotten generations.
    fn clean(&mut self, store: &mut KvStore) -> sluice_state::Result<()> {
        let stale = store
            .prefix(b"s")?
            .take(16)
            .map(|e| e.map(|(k, _)| k))
            .collect::<sluice_state::Result<Vec<_>>>()?;
        let mut budget = CLEAN_PER_POLL;
        for marker in stale {
            let mut prefix = marker.to_vec();
            prefix[0] = b'v';
            let keys = store
                .prefix(&prefix)?
                .take(budget)
                .map(|e| e.map(|(k, _)| k))
                .collect::<sluice_state::Result<Vec<_>>>()?;
            budget -= keys.len();
            for k in keys {
                store.delete(&k);
            }
            if budget == 0 {
                return Ok(());
            }
            store.delete(&marker);
        }
        Ok(())
    }
}

fn generation_key(table: u32) -> Vec<u8> {
    let mut k = vec![b'g'];
    k.extend_from_slice(&table.to_be_bytes());
    k
}

fn stale_key(table: u32, generation: u32) -> Vec<u8> {
    let mut k = values_prefix(table, generation);
    k[0] = b's';
    k
}

fn values_prefix(table: u32, generation: u32) -> Vec<u8> {
    let mut k = vec![b'v'];
    k.extend_from_slice(&table.to_be_bytes());
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

fn value_key(prefix: &[u8], key: &[u8], column: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len() + column.len() + 1);
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k.push(0);
    k.extend_from_slice(column.as_bytes());
    k
}

/// Drops the slot of the CDC source `name` (`<pipeline>/<source>`) when its config asks for
/// it (`slot-drop-on-delete`), after its task stopped; `Ok(None)` when it does not ask.
/// A slot still held by the stopping session is retried for a few seconds.
pub fn drop_slot_on_delete(config: &PostgresCdcConfig, name: &str) -> Result<Option<String>> {
    if !config.slot_drop_on_delete {
        return Ok(None);
    }
    let source = PostgresCdcSource::new(config.clone(), name, "-")?;
    let s = source.settings.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectorError::io("start a runtime for", "postgres-cdc", e))?;
    rt.block_on(async {
        let client = s
            .tls
            .connect(&s.pg)
            .await
            .map_err(|e| ConnectorError::Postgres(format!("connect to drop slot {}: {e}", s.slot)))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let dropped = client
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&s.slot],
                )
                .await;
            match dropped {
                Ok(rows) if rows.is_empty() => {
                    return Ok(Some(format!("Replication slot {} was already gone.", s.slot)));
                }
                Ok(_) => return Ok(Some(format!("Dropped replication slot {}.", s.slot))),
                // 55006: the stopping session still holds it.
                Err(e)
                    if e.code().is_some_and(|c| c.code() == "55006")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(ConnectorError::Postgres(format!(
                        "drop replication slot {}: {}",
                        s.slot,
                        e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
                    )));
                }
            }
        }
    })
}

impl Source for PostgresCdcSource {
    fn open(&mut self, position: Option<&[u8]>) -> Result<()> {
        let from: Position = match position {
            Some(p) => serde_json::from_slice(p)
                .map_err(|e| ConnectorError::Position(format!("postgres-cdc: {e}")))?,
            None => Position::default(),
        };
        // The task restored the store to what the log holds: what this session knew goes.
        self.kept = Kept::default();
        // A restarted attempt: the last session must let go of the slot first (the server
        // refuses a second session on an active slot). Waiting for its tasks to drop closes
        // its socket.
        self.items = None;
        self.acks = None;
        if let Some(old) = self.runtime.take() {
            old.shutdown_timeout(Duration::from_secs(5));
        }
        // One worker thread: the session's socket, its keepalive answers and the feedback
        // must go on while the task waits on its log commit.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres-cdc")
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("start a runtime for", "postgres-cdc", e))?;
        let (tx, mut rx) = mpsc::channel(16);
        let (ack_tx, ack_rx) = watch::channel(from.end_lsn);
        let (ready_tx, ready_rx) = oneshot::channel();
        rt.spawn(stream::run(
            self.settings.clone(),
            from.clone(),
            tx,
            ack_rx,
            ready_tx,
        ));
        // Capture has begun (the slot exists) once this returns, so a change committed after
        // the task started is not missed; a session that fails first says why here.
        let started = rt.block_on(async { tokio::time::timeout(OPEN_TIMEOUT, ready_rx).await });
        let failed = match started {
            Ok(Ok(())) => None,
            Err(_) => Some(ConnectorError::Postgres(format!(
                "the replication session did not start within {OPEN_TIMEOUT:?}"
            ))),
            // The session ended before starting: its error follows on the channel.
            Ok(Err(_)) => Some(match rt.block_on(rx.recv()) {
                Some(stream::Item::Failed(e)) => e,
                _ => ConnectorError::Postgres(
                    "the replication session ended before it started".into(),
                ),
            }),
        };
        if let Some(e) = failed {
            rt.shutdown_background();
            return Err(e);
        }
        self.polled_end = from.end_lsn;
        self.runtime = Some(rt);
        self.items = Some(rx);
        self.acks = Some(ack_tx);
        Ok(())
    }

    fn poll(&mut self, max: usize, wait: &Wait) -> Result<SourceBatch> {
        let (routed, schemas, position) = self.poll_with_schemas(max, wait)?;
        Ok(SourceBatch {
            records: Vec::new(),
            routed,
            schemas,
            position,
            ..SourceBatch::default()
        })
    }

    fn store_name(&self) -> Option<String> {
        Some(self.store_name.clone())
    }

    fn attach_store(&mut self, store: KvStore) {
        self.settings.keep_toast = true;
        self.store = Some(store);
    }

    fn store(&mut self) -> Option<&mut KvStore> {
        self.store.as_mut()
    }

    fn lag_bytes(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.settings
            .lag_known
            .load(Relaxed)
            .then(|| self.settings.lag.load(Relaxed))
    }

    fn committed(&mut self) {
        if let Some(acks) = &self.acks {
            let _ = acks.send(self.polled_end);
        }
    }
}

impl Drop for PostgresCdcSource {
    fn drop(&mut self) {
        // Closing the channels ends the session; the runtime is dropped off any async
        // context (dropping it inside one would panic).
        self.items = None;
        self.acks = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PostgresCdcConfig {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_default_from_the_pipeline_and_source() {
        let s = PostgresCdcSource::new(
            config("postgres://u:secret@127.0.0.1:5433/shop"),
            "Orders-Pipe/pg src",
            "t",
        )
        .unwrap();
        assert_eq!(s.slot(), "sluice_orders_pipe_pg_src");
        assert_eq!(s.settings.publication, "sluice_orders_pipe_pg_src");
        assert_eq!(s.settings.port, 5433);
        assert_eq!(s.settings.database, "shop");
        assert!(!format!("{:?}", config("postgres://u:secret@h/db")).contains("secret"));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = |c: PostgresCdcConfig| {
            PostgresCdcSource::new(c, "p/s", "t")
                .unwrap_err()
                .to_string()
        };
        let mut c = config("postgres://u:secret@h/db");
        c.slot = Some("Bad-Slot".into());
        assert!(e(c).contains("slot: 'Bad-Slot'"));
        let mut c = config("postgres://u:secret@h/db");
        c.tables = vec!["a.b.c".into()];
        assert!(e(c).contains("tables: 'a.b.c'"));
        let msg = e(config("postgres://u:secret@h:notaport/db"));
        assert!(msg.contains("url") && !msg.contains("secret"), "{msg}");
    }
}
