//! The replication session, on the source's own tokio runtime: checks the server, creates
//! the publication and the slot when missing, streams pgoutput, turns each transaction into
//! records and hands them to `poll` through a bounded channel; confirms to the server only
//! the LSNs that `committed` says are in the log.
//!
//! ```text
//!  server ── XLogData ─► decode ─► Tables::records ─► Chunk (≤ max records) ─► channel ─► poll
//!     ▲                                                                                    │
//!     └──────────── update_applied_lsn(end LSN) ◄── watch ◄── committed (after the log) ◄──┘
//! ```

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::{mpsc, oneshot, watch};

use sluice_log::schema::RecordSchema;

use super::envelope::{Note, Place, Routed, Tables, Toast, value_schema};
use super::pgoutput::{self, Message};
use super::snapshot;
use super::{Position, Settings, SnapshotMode};
use crate::ConnectorError;

/// Records of one transaction, or of a part of one too large for one piece.
#[derive(Debug)]
pub struct Chunk {
    /// The records, in change order.
    pub records: Vec<Routed>,
    /// The value schemas of tables first seen or changed before these records.
    pub schemas: Vec<(String, RecordSchema)>,
    /// What the source's store does for TOASTed values, by index into `records`.
    pub notes: Vec<Note>,
    /// The position after them.
    pub position: Position,
}

/// What the session sends to `poll`.
#[derive(Debug)]
pub enum Item {
    /// Records and the position after them.
    Chunk(Chunk),
    /// The session ended; the task restarts it.
    Failed(ConnectorError),
}

pub fn pg_err(what: &str, e: tokio_postgres::Error) -> ConnectorError {
    // The server's message when it sent one (it never holds the password).
    let Some(db) = e.as_db_error() else {
        // With the causes, which say what went wrong (a TLS handshake: which certificate).
        let mut text = format!("{what}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        return ConnectorError::Postgres(text);
    };
    let text = format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code());
    // Classes 28 (authorization), 42 (syntax, missing objects, privileges) and 3D (no such
    // database) need someone to act; retrying would only repeat them.
    match &db.code().code()[..2] {
        "28" | "42" | "3D" => fatal(text),
        _ => ConnectorError::Postgres(text),
    }
}

fn repl_err(what: &str, e: pgwire_replication::PgWireError) -> ConnectorError {
    ConnectorError::Postgres(format!("{what}: {e}"))
}

pub fn fatal(msg: String) -> ConnectorError {
    ConnectorError::Config(format!("postgres-cdc: {msg}"))
}

/// `name` as a quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` (or `table`, in `public`) as a quoted qualified name.
pub fn qualified(table: &str) -> String {
    match table.split_once('.') {
        Some((s, t)) => format!("{}.{}", ident(s), ident(t)),
        None => format!("{}.{}", ident("public"), ident(table)),
    }
}

/// Runs the session until it fails or `tx` closes (the source was dropped).
pub async fn run(
    settings: Settings,
    from: Position,
    tx: mpsc::Sender<Item>,
    mut acks: watch::Receiver<u64>,
    ready: oneshot::Sender<()>,
) {
    let result = session(&settings, from, &tx, &mut acks, &mut Some(ready)).await;
    if let Err(e) = result {
        let _ = tx.send(Item::Failed(e)).await;
    }
}

async fn session(
    s: &Settings,
    from: Position,
    tx: &mpsc::Sender<Item>,
    acks: &mut watch::Receiver<u64>,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), ConnectorError> {
    let admin = s
        .tls
        .connect(&s.pg)
        .await
        .map_err(|e| pg_err("connect", e))?;
    let wal_level: String = admin
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| pg_err("read wal_level", e))?
        .get(0);
    if wal_level != "logical" {
        return Err(fatal(format!(
            "the server's wal_level is '{wal_level}'; logical replication needs wal_level = logical in postgresql.conf (then restart the server)"
        )));
    }
    let can: bool = admin
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| pg_err("read the role", e))?
        .get(0);
    if !can {
        return Err(fatal(format!(
            "role '{}' lacks the REPLICATION attribute (ALTER ROLE ... WITH REPLICATION)",
            s.user
        )));
    }
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&s.publication],
        )
        .await
        .map_err(|e| pg_err("look up the publication", e))?
        .is_some();
    if !exists {
        let what = match s.tables.is_empty() {
            true => "ALL TABLES".to_string(),
            false => {
                let names: Vec<String> = s.tables.iter().map(|t| qualified(t)).collect();
                format!("TABLE {}", names.join(", "))
            }
        };
        // Changes of a partitioned table's partitions come under the table's own name.
        let sql = format!(
            "CREATE PUBLICATION {} FOR {what} WITH (publish_via_partition_root = true)",
            ident(&s.publication)
        );
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_err("create the publication", e))?;
        tracing::info!(publication = %s.publication, "Created the publication.");
    }
    // A table the publication does not send would be skipped without a word, and the slot
    // would move past its changes for good: each one must be in it, by its exact name.
    let published = admin
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&s.publication],
        )
        .await
        .map_err(|e| pg_err("read the publication's tables", e))?;
    let published: Vec<String> = published.iter().map(|r| r.get(0)).collect();
    for t in &s.tables {
        if !published.contains(t) {
            return Err(fatal(format!(
                "table {t} is not in publication '{}' (it holds {}): check the name (case and schema count) or add it with ALTER PUBLICATION {} ADD TABLE {}",
                s.publication,
                match published.is_empty() {
                    true => "no tables".to_string(),
                    false => published.join(", "),
                },
                ident(&s.publication),
                qualified(t)
            )));
        }
    }
    let slot = admin
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&s.slot],
        )
        .await
        .map_err(|e| pg_err("look up the slot", e))?
        .map(|row| row.get::<_, Option<String>>(0));
    let mut from = from;
    let fresh = from == Position::default();
    let slot_lost = slot.as_ref().is_some_and(|w| w.as_deref() == Some("lost"));
    if slot_lost {
        if s.snapshot != SnapshotMode::WhenNeeded {
            return Err(fatal(format!(
                "replication slot '{}' was invalidated (the server removed WAL it still needed, see max_slot_wal_keep_size); changes were lost: drop the slot (SELECT pg_drop_replication_slot('...')) and start the source again; it captures from then on, or set snapshot = \"when-needed\" to read every row again",
                s.slot
            )));
        }
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&s.slot])
            .await
            .map_err(|e| pg_err("drop the invalidated replication slot", e))?;
        tracing::warn!(slot = %s.slot, "The replication slot was invalidated and is dropped; a new snapshot reads every row again.");
    }
    let slot_missing = slot.is_none() || slot_lost;
    if slot_missing && !fresh {
        // Streaming on from a new slot would skip every change since the position.
        if s.snapshot != SnapshotMode::WhenNeeded {
            let read = match from.end_lsn {
                0 => "is part-way through its snapshot".to_string(),
                lsn => format!("has read up to LSN {}", pgoutput::lsn_string(lsn)),
            };
            return Err(fatal(format!(
                "replication slot '{}' is gone, but the source {read}: the changes since then went with the slot; set snapshot = \"when-needed\" to read every row again from a new slot",
                s.slot
            )));
        }
        tracing::warn!(slot = %s.slot, "The replication slot is gone; a new snapshot reads every row again.");
        from = Position::default();
    }
    // A crash after the last rows but before the position said so: nothing is left to read.
    if let Some(p) = from.snapshot.as_mut()
        && p.parts.last().is_some_and(|l| l.table >= p.tables.len())
    {
        p.done = true;
    }
    let snapshotting = from.snapshot.as_ref().is_some_and(|p| !p.done);
    let wants_snapshot =
        snapshotting || (from == Position::default() && s.snapshot != SnapshotMode::Never);
    // The tables a new snapshot reads, each checked for a key before any slot is made (a
    // slot left behind by a failed start would hold WAL back).
    let mut progress = from.snapshot.clone().unwrap_or_default();
    if wants_snapshot && progress.parts.is_empty() {
        progress.tables.clear();
        for (oid, name) in snapshot::table_oids(s, &admin).await? {
            if let Some(t) = snapshot::describe(&admin, &s.publication, oid).await? {
                progress.tables.push(snapshot::SnapTable {
                    oid,
                    name,
                    key: t.key_names(),
                });
            }
        }
    }
    // Built after any reset: a new slot's stream starts at its own consistent point.
    let cfg = replication_config(s, from.end_lsn);
    let mut client = ReplicationClient::connect_gated(cfg.clone())
        .await
        .map_err(|e| repl_err("open the replication session", e))?;
    let mut tables = Tables::new(&s.topic, &s.database, s.tables.clone(), s.tombstones);
    // The exported snapshot to read, with its consistent point, when one is wanted.
    let mut export: Option<(String, u64)> = None;
    let mut temporary: Option<ReplicationClient> = None;
    if slot_missing {
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{}')",
                ident(&s.slot),
                if wants_snapshot { "export" } else { "nothing" }
            ))
            .await
            .map_err(|e| repl_err("create the replication slot", e))?;
        tracing::info!(slot = %s.slot, "Created the replication slot.");
        if wants_snapshot {
            export = Some(exported(&rows)?);
        }
    } else if wants_snapshot {
        // The slot exists, so capture has begun: `open` need not wait for the temporary
        // slot, whose creation waits for the transactions open on the server to end.
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        // The slot was made before (by a run that did not finish its snapshot, or by
        // hand): a temporary slot exports a snapshot of its own, and the rows read from it
        // are told apart by its consistent point.
        let mut temp = ReplicationClient::connect_gated(cfg)
            .await
            .map_err(|e| repl_err("open a session for the snapshot", e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name: String = format!("{}_{nanos:x}", s.slot.chars().take(50).collect::<String>());
        let rows = temp
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')",
                ident(&name)
            ))
            .await
            .map_err(|e| repl_err("create a temporary slot for the snapshot", e))?;
        export = Some(exported(&rows)?);
        temporary = Some(temp);
    }
    let mut described = Vec::new();
    if let Some((name, lsn)) = export {
        let (table, key) = progress
            .parts
            .last()
            .map_or((0, None), |p| (p.table, p.key.clone()));
        progress.parts.push(snapshot::Part { lsn, table, key });
        let reader = s
            .tls
            .connect(&s.pg)
            .await
            .map_err(|e| pg_err("connect for the snapshot", e))?;
        // The reader waits on the log between chunks: no server timeout may end it.
        reader
            .batch_execute(&format!(
                "SET datestyle = ISO; SET timezone = UTC; SET intervalstyle = postgres; SET extra_float_digits = 3; SET standard_conforming_strings = on; \
                 SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{name}'"
            ))
            .await
            .map_err(|e| pg_err("import the slot's snapshot", e))?;
        // The reading transaction holds the snapshot now; the temporary slot may go.
        drop(temporary.take());
        for t in &progress.tables {
            described.push(snapshot::describe(&reader, &s.publication, t.oid).await?);
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        match progress.parts.len() {
            1 => {
                tracing::info!(slot = %s.slot, tables = progress.tables.len(), "The snapshot starts.")
            }
            n => {
                tracing::info!(slot = %s.slot, tables = progress.tables.len(), part = n, "The snapshot resumes where the log's position says, from a new exported snapshot.")
            }
        }
        let progress = snapshot::read(s, &reader, &mut tables, &described, progress, tx).await?;
        let _ = reader.batch_execute("COMMIT").await;
        from = Position {
            snapshot: Some(progress),
            ..Position::default()
        };
    } else if let Some(progress) = &from.snapshot {
        for t in &progress.tables {
            described.push(snapshot::describe(&admin, &s.publication, t.oid).await?);
        }
    }
    let filter = from
        .snapshot
        .as_ref()
        .and_then(|p| snapshot::Filter::new(p, described));
    client
        .start()
        .await
        .map_err(|e| repl_err("start replication", e))?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    stream(s, from, client, &admin, tables, filter, tx, acks).await
}

/// The replication session's settings, starting at `start_lsn` (0: the slot's confirmed
/// position).
fn replication_config(s: &Settings, start_lsn: u64) -> ReplicationConfig {
    ReplicationConfig::new(
        s.host.clone(),
        s.user.clone(),
        s.password.clone(),
        s.database.clone(),
        s.slot.clone(),
        s.publication.clone(),
    )
    .with_port(s.port)
    .with_tls(s.tls.replication(&s.host))
    .with_start_lsn(Lsn::from(start_lsn))
    .with_status_interval(s.status_interval)
    .with_application_name("sluice-cdc")
    .with_options(
        "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3",
    )
}

/// The snapshot name and consistent point of a `CREATE_REPLICATION_SLOT ... (SNAPSHOT
/// 'export')` answer (slot_name, consistent_point, snapshot_name, output_plugin).
fn exported(rows: &[pgwire_replication::QueryRow]) -> Result<(String, u64), ConnectorError> {
    let text = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let (Some(lsn), Some(name)) = (text(1), text(2)) else {
        return Err(ConnectorError::Postgres(
            "CREATE_REPLICATION_SLOT answered without a consistent point and snapshot".into(),
        ));
    };
    let lsn = Lsn::parse(&lsn).map_err(|e| {
        ConnectorError::Postgres(format!("the slot's consistent point '{lsn}': {e}"))
    })?;
    Ok((name, u64::from(lsn)))
}

/// A transaction being read.
struct Open {
    xid: u32,
    commit_lsn: u64,
    commit_ms: i64,
    /// Changes read so far.
    changes: u64,
    /// Changes of it the log already holds (a resumed large transaction).
    skip: u64,
    records: Vec<Routed>,
    /// What the store does for them.
    notes: Vec<Note>,
    /// Bytes of `records`.
    bytes: usize,
}

/// Bytes of records one piece of a transaction holds at most: with the channel's pieces,
/// what the session buffers stays near 1 GiB however large the rows.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

#[allow(clippy::too_many_arguments)]
async fn stream(
    s: &Settings,
    from: Position,
    mut client: ReplicationClient,
    admin: &tokio_postgres::Client,
    mut tables: Tables,
    mut filter: Option<snapshot::Filter>,
    tx: &mpsc::Sender<Item>,
    acks: &mut watch::Receiver<u64>,
) -> Result<(), ConnectorError> {
    let mut open: Option<Open> = None;
    // Table shapes to register with the next records, and notes about whole tables.
    let mut schemas = Vec::new();
    let mut table_notes: Vec<Note> = Vec::new();
    // The last transaction handed to `poll`, and the end LSN of the last the log holds.
    let mut done = from.clone();
    let mut acked = from.end_lsn;
    let mut measure = tokio::time::interval(s.status_interval);
    measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let event = tokio::select! {
            _ = measure.tick() => {
                if let Some(q) = &s.heartbeat {
                    if let Err(e) = admin.batch_execute(q).await {
                        tracing::warn!(slot = %s.slot, error = %pg_err("heartbeat-query", e), "The heartbeat query failed; it runs again at the next interval.");
                    }
                }
                // A failed measurement is not a reason to stop capturing: the next tick
                // tries again, and the stream itself reports a lost server.
                if let Ok(Some(row)) = admin
                    .query_opt(
                        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                        &[&s.slot],
                    )
                    .await
                {
                    let lag: Option<i64> = row.get(0);
                    let lag = lag.unwrap_or(0).max(0) as u64;
                    s.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
                    s.lag_known.store(true, std::sync::atomic::Ordering::Relaxed);
                    if lag > s.lag_warning && !warned {
                        tracing::warn!(slot = %s.slot, lag_bytes = lag, threshold = s.lag_warning, "The replication slot holds back more WAL than the warning threshold: the source is behind or stalled, and the server keeps the WAL until it catches up.");
                    }
                    warned = lag > s.lag_warning;
                }
                continue;
            }
            e = client.recv() => e.map_err(|e| repl_err("read the replication stream", e))?,
            changed = acks.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                acked = acked.max(*acks.borrow_and_update());
                client.update_applied_lsn(Lsn::from(acked));
                continue;
            }
        };
        let Some(event) = event else {
            return Err(ConnectorError::Postgres(
                "the server ended the replication stream".into(),
            ));
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let commit_lsn = u64::from(final_lsn);
                let skip = match (commit_lsn.cmp(&done.commit_lsn), done.partial) {
                    (std::cmp::Ordering::Less, _) => u64::MAX,
                    (std::cmp::Ordering::Equal, None) => u64::MAX,
                    (std::cmp::Ordering::Equal, Some(n)) => n,
                    (std::cmp::Ordering::Greater, _) => 0,
                };
                open = Some(Open {
                    xid,
                    commit_lsn,
                    commit_ms: pgoutput::pg_epoch_micros_to_unix_ms(commit_time_micros),
                    changes: 0,
                    skip,
                    records: Vec::new(),
                    notes: Vec::new(),
                    bytes: 0,
                });
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let message = pgoutput::decode(&data).map_err(|e| {
                    ConnectorError::Postgres(format!(
                        "a pgoutput message at LSN {}: {e}",
                        pgoutput::lsn_string(u64::from(wal_start))
                    ))
                })?;
                match message {
                    Message::Relation(mut r) => {
                        primary_key(admin, &mut r).await?;
                        // A whole old row carries what an update leaves out.
                        let toast = match s.keep_toast
                            && r.replica_identity != pgoutput::ReplicaIdentity::Full
                        {
                            true => toast(admin, r.id).await?,
                            false => Toast::default(),
                        };
                        if s.keep_toast && toast.columns.is_empty() {
                            // Nothing is kept for it from here: what was kept goes, so that
                            // it can never fill a later update (after a switch back).
                            table_notes.push(Note {
                                record: None,
                                table: r.id,
                                envelope: None,
                                ops: vec![super::envelope::ToastOp::ForgetAll],
                            });
                        }
                        tables.set_toast(r.id, toast);
                        let name = format!("{}.{}", r.namespace, r.name);
                        if tables.wanted(&r.namespace, &r.name) {
                            // Registering is idempotent: a shape seen before keeps its
                            // version.
                            schemas
                                .push((tables.topic_of(&r.namespace, &r.name), value_schema(&r)));
                        }
                        if tables.describe(r) {
                            tracing::info!(table = %name, "The table's columns changed; its records take the new shape (and a new schema version) from here.");
                        }
                    }
                    Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. } => {
                        let Some(t) = open.as_mut() else {
                            return Err(ConnectorError::Postgres(
                                "a row change outside a transaction".into(),
                            ));
                        };
                        t.changes += 1;
                        if t.changes <= t.skip {
                            continue;
                        }
                        let place = Place {
                            xid: t.xid,
                            commit_ms: t.commit_ms,
                            lsn: u64::from(wal_start),
                            snapshot: "false",
                        };
                        let now = sluice_log::record::now_ms();
                        // What a resumed snapshot does not hold already.
                        let messages = match &mut filter {
                            Some(f) if f.active(t.commit_lsn) => {
                                unread(f, admin, &tables, message, t.commit_lsn).await?
                            }
                            _ => vec![message],
                        };
                        let mut records = Vec::new();
                        for m in messages {
                            let mut notes = Vec::new();
                            let built = tables
                                .records_noted(&m, place, now, &mut notes, None)
                                .map_err(ConnectorError::Postgres)?;
                            let base = t.records.len() + records.len();
                            t.notes.extend(notes.into_iter().map(|mut n| {
                                n.record = n.record.map(|r| r + base);
                                n
                            }));
                            records.extend(built);
                        }
                        t.bytes += records
                            .iter()
                            .map(|(_, r)| {
                                r.value.as_ref().map_or(0, |v| v.len())
                                    + r.key.as_ref().map_or(0, |k| k.len())
                            })
                            .sum::<usize>();
                        t.records.extend(records);
                        if t.records.len() >= s.max_transaction_records
                            || t.bytes >= MAX_CHUNK_BYTES
                        {
                            t.bytes = 0;
                            // Too large for one piece: hand over what is read, with a
                            // position inside the transaction.
                            let position = Position {
                                partial: Some(t.changes),
                                commit_lsn: t.commit_lsn,
                                // With any truncate noted since.
                                snapshot: filter.as_ref().map(|f| f.progress().clone()),
                                ..done.clone()
                            };
                            let records = std::mem::take(&mut t.records);
                            let mut notes = std::mem::take(&mut table_notes);
                            notes.append(&mut t.notes);
                            send(
                                tx,
                                Chunk {
                                    records,
                                    schemas: std::mem::take(&mut schemas),
                                    notes,
                                    position,
                                },
                            )
                            .await?;
                        }
                    }
                    _ => {}
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let Some(t) = open.take() else {
                    continue;
                };
                if t.skip == u64::MAX {
                    continue;
                }
                done = Position {
                    commit_lsn: t.commit_lsn,
                    end_lsn: u64::from(end_lsn),
                    partial: None,
                    // Kept while later changes may still be older than rows it read.
                    snapshot: filter
                        .as_ref()
                        .filter(|f| f.active(t.commit_lsn))
                        .map(|f| f.progress().clone()),
                };
                send(
                    tx,
                    Chunk {
                        records: t.records,
                        schemas: std::mem::take(&mut schemas),
                        notes: {
                            let mut notes = std::mem::take(&mut table_notes);
                            notes.extend(t.notes);
                            notes
                        },
                        position: done.clone(),
                    },
                )
                .await?;
            }
            // Nothing read is waiting for the log: WAL up to here holds nothing for us, so
            // the slot may let it go (else quiet tables pin WAL forever).
            ReplicationEvent::KeepAlive { wal_end, .. }
                if open.is_none() && acked >= done.end_lsn =>
            {
                client.update_applied_lsn(wal_end);
            }
            _ => {}
        }
    }
}

/// The parts of a change a resumed snapshot does not hold already: the change itself, or
/// nothing, or for a key change that crosses from one snapshot part to another the delete
/// of the old key or the insert of the new one alone.
async fn unread(
    f: &mut snapshot::Filter,
    admin: &tokio_postgres::Client,
    tables: &Tables,
    message: Message,
    commit_lsn: u64,
) -> Result<Vec<Message>, ConnectorError> {
    let id = match &message {
        Message::Insert { relation, .. }
        | Message::Update { relation, .. }
        | Message::Delete { relation, .. } => *relation,
        // A truncate is newer than some rows read, at least: it is emitted, and the
        // changes after it rebuild the table whole.
        Message::Truncate { relations, .. } => {
            for id in relations {
                f.truncated(*id, commit_lsn);
            }
            return Ok(vec![message]);
        }
        _ => return Ok(vec![message]),
    };
    let Some(rel) = tables.relation(id) else {
        // `records` says why it cannot be emitted.
        return Ok(vec![message]);
    };
    let f = &*f;
    let emit = |tuple: &pgoutput::Tuple| {
        let key = f.key_text(rel, tuple);
        async move {
            match key {
                Some(k) => f.emit(admin, id, &k, commit_lsn).await,
                None => Ok(true),
            }
        }
    };
    let keep = match &message {
        Message::Insert { new, .. } => emit(new).await?,
        Message::Delete { old, .. } => emit(old.tuple()).await?,
        Message::Update { old, new, relation } => {
            let new_key = emit(new).await?;
            let Some(old) = old else {
                return Ok(if new_key { vec![message] } else { Vec::new() });
            };
            let old_key = emit(old.tuple()).await?;
            if old_key == new_key {
                old_key
            } else {
                let mut out = Vec::new();
                if old_key {
                    out.push(Message::Delete {
                        relation: *relation,
                        old: pgoutput::OldTuple::Key(old.tuple().clone()),
                    });
                }
                if new_key {
                    out.push(Message::Insert {
                        relation: *relation,
                        new: new.clone(),
                    });
                }
                return Ok(out);
            }
        }
        _ => true,
    };
    Ok(if keep { vec![message] } else { Vec::new() })
}

/// Which columns of table `oid` the server may store out of line (TOAST), and the shortest
/// text of a value it may: a value moves out of line only while the row is over about
/// 2 kB with every larger TOASTable value moved already, so one of `n` such columns is at
/// least (2032 - fixed-size columns - pointers) / n bytes stored; a quarter of that allows
/// for text shorter than the stored form.
pub async fn toast(admin: &tokio_postgres::Client, oid: u32) -> Result<Toast, ConnectorError> {
    let rows = admin
        .query(
            "SELECT attname::text, attlen::int, attstorage::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("read the table's columns", e))?;
    // The table's own target (`ALTER TABLE ... SET (toast_tuple_target = n)`), else 2032.
    let target: Option<i64> = admin
        .query_opt(
            "SELECT substring(o FROM 'toast_tuple_target=([0-9]+)')::bigint FROM pg_class, unnest(reloptions) o WHERE oid = $1 AND o LIKE 'toast_tuple_target=%'",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("read the table's options", e))?
        .and_then(|r| r.get(0));
    let mut fixed = 0i64;
    let mut columns = Vec::new();
    let mut unknown = false;
    for r in &rows {
        let len: i32 = r.get(1);
        let storage: String = r.get(2);
        match len {
            -1 if storage != "p" => columns.push(r.get(0)),
            // A variable-length value kept inline: its size is not known here.
            -1 | -2 => unknown = true,
            len => fixed += i64::from(len),
        }
    }
    let n = columns.len().max(1) as i64;
    let room = match unknown {
        true => 0,
        false => (target.unwrap_or(2032) - 24 - fixed - 18 * n).max(0),
    };
    Ok(Toast {
        columns,
        min_bytes: usize::try_from(room / n / 4).unwrap_or(0),
    })
}

/// Marks the relation's primary-key columns as its key: pgoutput marks the replica
/// identity's columns, which under `REPLICA IDENTITY FULL` are all of them. A table without
/// a primary key keeps the replica identity index's columns (none under FULL).
async fn primary_key(
    admin: &tokio_postgres::Client,
    r: &mut pgoutput::Relation,
) -> Result<(), ConnectorError> {
    let rows = admin
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1 AND i.indisprimary",
            &[&r.id],
        )
        .await
        .map_err(|e| pg_err("read the primary key", e))?;
    let pk: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let full = r.replica_identity == pgoutput::ReplicaIdentity::Full;
    for c in &mut r.columns {
        c.key = match pk.is_empty() {
            false => pk.contains(&c.name),
            true => c.key && !full,
        };
    }
    Ok(())
}

pub async fn send(tx: &mpsc::Sender<Item>, chunk: Chunk) -> Result<(), ConnectorError> {
    tx.send(Item::Chunk(chunk))
        .await
        .map_err(|_| ConnectorError::Postgres("the source stopped".into()))
}

/// How often the session reports its position to the server when nothing else happens.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
