//! The initial snapshot: every row of the captured tables as a `"r"` (read) record, read from
//! a snapshot the server exported at a replication slot's consistent point, so that
//! streaming from that point carries on with no gap and no overlap.
//!
//! ```text
//!  CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export') ─► consistent point L, snapshot name
//!  reader: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT name
//!     per table, by primary-key chunks ─► Chunk (position: how far) ─► poll ─► log
//!  then START_REPLICATION at the slot's L: changes committed at or after L
//! ```
//!
//! # A crash mid-snapshot
//!
//! The exported snapshot dies with the connection that imported it. A restarted source
//! takes a new one (from a temporary slot, at a later consistent point L₂) and reads on from
//! the last key the log holds; the rows before that key came from the first snapshot (at L₁).
//! Streaming still starts at the main slot's L₁, so each change's row is looked up in the
//! [`Part`] it was read from: a change committed before that part's consistent point is
//! already in the row read and is skipped, a later one is emitted. Each row is thus read once
//! and each change after its read emitted once, however often the snapshot is interrupted.
//! Only changes in the window between the first and the last consistent point need the
//! look-up; it compares keys on the server (`ROW(...) <= ROW(...)`), so the order is the
//! one the snapshot read in, collation included.

use bytes::Bytes;
use futures::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::envelope::{Place, Tables};
use super::pgoutput::{Column, Datum, Relation, ReplicaIdentity, Tuple};
use super::stream::{Chunk, Item, ident, send};
use super::{Position, Settings};
use crate::ConnectorError;

/// How far the snapshot got; part of the source's position until streaming has passed
/// every consistent point in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The tables read, in reading order, fixed when the snapshot began.
    pub tables: Vec<SnapTable>,
    /// The snapshots rows were read from, in order; the last is the one being read.
    pub parts: Vec<Part>,
    /// Every row is read: streaming runs.
    #[serde(default)]
    pub done: bool,
    /// Tables truncated while streamed changes were filtered, with the truncate's commit
    /// LSN: every later change to them is emitted, since a consumer applying the truncate
    /// drops the rows read after it too, and those changes rebuild them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<(u32, u64)>,
}

/// A table the snapshot reads: known by OID, so a rename between parts changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapTable {
    /// Its OID.
    pub oid: u32,
    /// `schema.table` when the snapshot began, for messages.
    pub name: String,
    /// Its key columns, in order; a part's `key` holds their values.
    pub key: Vec<String>,
}

/// Rows read from one exported snapshot: those after the previous part's end, up to this
/// part's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The snapshot's consistent point: its rows hold every transaction committed before it.
    pub lsn: u64,
    /// Where its rows end: the tables before `table` whole, and of `table` the rows up to
    /// and including `key` (the key columns' text), none of it when `key` is absent.
    pub table: usize,
    /// See `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
}

/// A key column: how a text value becomes a value of its type, in its collation.
#[derive(Debug, Clone)]
struct KeyColumn {
    name: String,
    /// The type, as `format_type` writes it.
    ty: String,
    /// The column's collation (quoted, qualified) for a collatable type.
    collation: Option<String>,
}

impl KeyColumn {
    /// `text` (an SQL expression of type text) as a value of the column.
    fn cast(&self, text: &str) -> String {
        match &self.collation {
            Some(c) => format!("({text})::text::{} COLLATE {c}", self.ty),
            None => format!("({text})::text::{}", self.ty),
        }
    }
}

/// `s` as an SQL string literal (the reader sets `standard_conforming_strings`).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What the snapshot needs to know of a table.
#[derive(Debug, Clone)]
pub struct Table {
    /// `schema.table`.
    pub name: String,
    /// `ONLY` for a table whose children (by inheritance) are tables of their own.
    only: &'static str,
    /// The relation as pgoutput would describe it (published columns, key flags).
    pub relation: Relation,
    key: Vec<KeyColumn>,
    /// The publication's row filter (PostgreSQL 15), applied to the snapshot too.
    filter: Option<String>,
}

impl Table {
    /// The key as a row value from parameters `$first`, `$first+1`, ...
    fn params(&self, first: usize) -> String {
        let casts: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| k.cast(&format!("${}", first + i)))
            .collect();
        format!("ROW({})", casts.join(", "))
    }

    /// The key as a row value from text values.
    fn literals(&self, key: &[String]) -> String {
        let casts: Vec<String> = self
            .key
            .iter()
            .zip(key)
            .map(|(k, v)| k.cast(&literal(v)))
            .collect();
        format!("ROW({})", casts.join(", "))
    }

    /// Its key columns' names.
    pub fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|k| k.name.clone()).collect()
    }

    fn key_list(&self) -> String {
        let names: Vec<String> = self.key.iter().map(|k| ident(&k.name)).collect();
        names.join(", ")
    }
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> ConnectorError {
    super::stream::pg_err(what, e)
}

/// The tables to snapshot, with their OIDs: the configured ones, else every table of the
/// publication.
pub async fn table_oids(
    s: &Settings,
    admin: &tokio_postgres::Client,
) -> Result<Vec<(u32, String)>, ConnectorError> {
    let rows = match s.tables.is_empty() {
        true => admin
            .query(
                "SELECT c.oid, pt.schemaname || '.' || pt.tablename FROM pg_publication_tables pt \
                 JOIN pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = $1 ORDER BY 2",
                &[&s.publication],
            )
            .await
            .map_err(|e| pg_err("read the publication's tables", e))?,
        false => {
            let mut rows = Vec::new();
            for t in &s.tables {
                let q = super::stream::qualified(t);
                rows.push(
                    admin
                        .query_one("SELECT to_regclass($1)::oid, $2::text", &[&q, t])
                        .await
                        .map_err(|e| pg_err(&format!("look up table {t}"), e))?,
                );
            }
            rows
        }
    };
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get::<_, Option<u32>>(0)?, r.get(1))))
        .collect())
}

/// Describes table `oid` from the catalog, as the publication sends it (none when the
/// table no longer exists). A table with neither a primary key nor a replica identity index
/// cannot be read in key order, so a snapshot of it could not resume: that is an error
/// naming the way out.
pub async fn describe(
    client: &tokio_postgres::Client,
    publication: &str,
    oid: u32,
) -> Result<Option<Table>, ConnectorError> {
    let found = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("look up a table", e))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let (schema, table): (String, String) = (found.get(0), found.get(1));
    let name = format!("{schema}.{table}");
    // A partitioned table's rows are its partitions'; an inheritance parent's are its own.
    let scope = match found.get::<_, String>(3).as_str() {
        "p" => "",
        _ => "ONLY ",
    };
    let replica_identity = match found.get::<_, String>(2).as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    // PostgreSQL 15 publications may name columns and filter rows; the snapshot sends what
    // the stream would.
    let v15 = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 150000",
            &[],
        )
        .await
        .map_err(|e| pg_err("read the server version", e))?
        .get::<_, bool>(0);
    let (only, filter): (Option<Vec<String>>, Option<String>) = match v15 {
        true => client
            .query_opt(
                "SELECT attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &schema, &table],
            )
            .await
            .map_err(|e| pg_err("read the publication's column list", e))?
            .map_or((None, None), |r| (r.get(0), r.get(1))),
        false => (None, None),
    };
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), \
             (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) \
             FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("read a table's columns", e))?;
    let key_names = key_columns(client, oid).await?;
    if key_names.is_empty() {
        return Err(super::stream::fatal(format!(
            "snapshot: table {name} has neither a primary key nor a REPLICA IDENTITY USING INDEX, so it cannot be read in key order (nor a crashed snapshot resumed without repeating rows): add a primary key, or set snapshot = \"never\""
        )));
    }
    let mut relation = Relation {
        id: oid,
        namespace: schema.clone(),
        name: table.clone(),
        replica_identity,
        columns: Vec::new(),
    };
    let mut key = Vec::new();
    for r in &columns {
        let col: String = r.get(0);
        if only.as_ref().is_some_and(|o| !o.contains(&col)) {
            continue;
        }
        let collation: Option<String> = r.get(4);
        relation.columns.push(Column {
            name: col.clone(),
            type_oid: r.get(1),
            type_modifier: r.get(2),
            key: key_names.contains(&col),
        });
        if key_names.contains(&col) {
            key.push(KeyColumn {
                name: col,
                ty: r.get(3),
                collation,
            });
        }
    }
    // The key in the index's column order.
    let key = key_names
        .iter()
        .filter_map(|n| key.iter().find(|k| k.name == *n).cloned())
        .collect();
    Ok(Some(Table {
        name,
        only: scope,
        relation,
        key,
        filter,
    }))
}

/// The primary key's columns in index order, else the replica identity index's.
pub async fn key_columns(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<String>, ConnectorError> {
    // The primary key when there is one, else the replica identity index.
    let index = client
        .query_opt(
            "SELECT indexrelid FROM pg_index WHERE indrelid = $1 AND (indisprimary OR indisreplident) ORDER BY indisprimary DESC, indexrelid LIMIT 1",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("read the primary key", e))?;
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let index: u32 = index.get(0);
    let cols = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indexrelid = $1 ORDER BY k.ord",
            &[&index],
        )
        .await
        .map_err(|e| pg_err("read the primary key", e))?;
    Ok(cols.iter().map(|r| r.get(0)).collect())
}

/// Reads the rows `progress` has not read yet, from the snapshot the reader's transaction
/// imported, and hands them to `poll` in chunks of at most `fetch` rows, each with the
/// position after it. Ends with a chunk whose position says the snapshot is done.
pub async fn read(
    s: &Settings,
    reader: &tokio_postgres::Client,
    tables: &mut Tables,
    described: &[Option<Table>],
    mut progress: Progress,
    tx: &mpsc::Sender<Item>,
) -> Result<Progress, ConnectorError> {
    let Some(part) = progress.parts.last() else {
        return Err(ConnectorError::Postgres("a snapshot without a part".into()));
    };
    let lsn = part.lsn;
    let xid: i64 = reader
        .query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .map_err(|e| pg_err("read the snapshot's transaction", e))?
        .get(0);
    let place = Place {
        xid: xid as u32,
        commit_ms: sluice_log::record::now_ms(),
        lsn,
        snapshot: "true",
    };
    let mut schemas = Vec::new();
    for t in described.iter().flatten() {
        tables.describe(t.relation.clone());
        if s.keep_toast && t.relation.replica_identity != ReplicaIdentity::Full {
            tables.set_toast(
                t.relation.id,
                super::stream::toast(reader, t.relation.id).await?,
            );
        }
        let r = &t.relation;
        schemas.push((
            tables.topic_of(&r.namespace, &r.name),
            super::envelope::value_schema(r),
        ));
    }
    let started = std::time::Instant::now();
    let mut rows_read = 0u64;
    while let Some(part) = progress.parts.last().cloned()
        && part.table < described.len()
    {
        let Some(t) = described.get(part.table).and_then(Option::as_ref) else {
            // Dropped since the snapshot began: nothing to read.
            let part = progress.parts.last_mut().expect("a part");
            part.table += 1;
            part.key = None;
            continue;
        };
        // Text results (the simple query protocol) are the types' output functions, as
        // pgoutput sends them: a `::text` cast would differ for a few (bool, inet).
        let cols: Vec<String> = t.relation.columns.iter().map(|c| ident(&c.name)).collect();
        let keys: Vec<String> = t.key.iter().map(|k| ident(&k.name)).collect();
        let mut conds: Vec<String> = t.filter.iter().map(|f| format!("({f})")).collect();
        if let Some(after) = &part.key {
            conds.push(format!("ROW({}) > {}", t.key_list(), t.literals(after)));
        }
        let sql = format!(
            "SELECT {}, {} FROM {}{}.{} {} ORDER BY {} LIMIT {}",
            cols.join(", "),
            keys.join(", "),
            t.only,
            ident(&t.relation.namespace),
            ident(&t.relation.name),
            match conds.is_empty() {
                true => String::new(),
                false => format!("WHERE {}", conds.join(" AND ")),
            },
            t.key_list(),
            s.snapshot_fetch
        );
        let failed = |e| pg_err(&format!("snapshot: read table {}", t.name), e);
        let stream = reader.simple_query_raw(&sql).await.map_err(failed)?;
        pin_mut!(stream);
        let now = sluice_log::record::now_ms();
        let mut records = Vec::new();
        let mut notes = Vec::new();
        let mut last_key = None;
        let mut bytes = 0usize;
        let mut full = false;
        while let Some(message) = stream.next().await {
            let tokio_postgres::SimpleQueryMessage::Row(row) = message.map_err(failed)? else {
                continue;
            };
            let n = t.relation.columns.len();
            let mut datums = Vec::with_capacity(n);
            for i in 0..n {
                datums.push(match row.get(i) {
                    Some(v) => {
                        bytes += v.len();
                        Datum::Text(Bytes::copy_from_slice(v.as_bytes()))
                    }
                    None => Datum::Null,
                });
            }
            let key: Vec<String> = (n..n + t.key.len())
                .map(|i| row.get(i).unwrap_or_default().to_string())
                .collect();
            let (record, note) = tables
                .read(t.relation.id, &Tuple(datums), place, now)
                .map_err(ConnectorError::Postgres)?;
            notes.extend(note.map(|mut n| {
                n.record = Some(records.len());
                n
            }));
            records.push(record);
            last_key = Some(key);
            // Rows of many megabytes: the chunk ends early (the rest of the query's rows
            // are discarded by the connection; the next query starts after this key).
            if bytes >= super::stream::MAX_CHUNK_BYTES {
                full = true;
                break;
            }
        }
        rows_read += records.len() as u64;
        let more = full || records.len() >= s.snapshot_fetch;
        let part = progress.parts.last_mut().expect("a part");
        match (more, last_key) {
            (true, Some(key)) => part.key = Some(key),
            _ => {
                tracing::info!(table = %t.name, "The snapshot read the table.");
                part.table += 1;
                part.key = None;
            }
        }
        if !records.is_empty() {
            let position = Position {
                snapshot: Some(progress.clone()),
                ..Position::default()
            };
            let schemas = std::mem::take(&mut schemas);
            send(
                tx,
                Chunk {
                    records,
                    schemas,
                    notes,
                    position,
                },
            )
            .await?;
        }
    }
    progress.done = true;
    let position = Position {
        snapshot: Some(progress.clone()),
        ..Position::default()
    };
    send(
        tx,
        Chunk {
            records: Vec::new(),
            schemas,
            notes: Vec::new(),
            position,
        },
    )
    .await?;
    tracing::info!(
        rows = rows_read,
        seconds = started.elapsed().as_secs_f64(),
        "The snapshot is done; streaming starts at its consistent point."
    );
    Ok(progress)
}

/// Decides which streamed changes a resumed snapshot already holds.
pub struct Filter {
    progress: Progress,
    /// The latest consistent point: changes committed at or after it are all emitted.
    until: u64,
    /// The tables as they are now, by OID (absent: dropped).
    described: Vec<Table>,
}

impl Filter {
    /// A filter for the rows the snapshot `progress` read. Streaming starts at the main
    /// slot's confirmed position, which is before any part's consistent point but the
    /// main slot's own export: changes before the latest one are looked at.
    pub fn new(progress: &Progress, described: Vec<Option<Table>>) -> Option<Filter> {
        let until = progress.parts.iter().map(|p| p.lsn).max()?;
        Some(Filter {
            progress: progress.clone(),
            until,
            described: described.into_iter().flatten().collect(),
        })
    }

    /// Whether any change committed at `commit_lsn` may need to be skipped.
    pub fn active(&self, commit_lsn: u64) -> bool {
        commit_lsn < self.until
    }

    /// The progress to keep in the position while it is active.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Notes a truncate of table `oid` committed at `commit_lsn` (see
    /// [`Progress::truncated`]).
    pub fn truncated(&mut self, oid: u32, commit_lsn: u64) {
        if !self.progress.truncated.iter().any(|(t, _)| *t == oid) {
            self.progress.truncated.push((oid, commit_lsn));
        }
    }

    /// Whether a change to table `oid`'s row with key `key` (the key columns' text),
    /// committed at `commit_lsn`, is newer than the row the snapshot read.
    pub async fn emit(
        &self,
        admin: &tokio_postgres::Client,
        oid: u32,
        key: &[Option<String>],
        commit_lsn: u64,
    ) -> Result<bool, ConnectorError> {
        if !self.active(commit_lsn) {
            return Ok(true);
        }
        if self
            .progress
            .truncated
            .iter()
            .any(|(t, at)| *t == oid && commit_lsn >= *at)
        {
            return Ok(true);
        }
        let Some(ti) = self.progress.tables.iter().position(|t| t.oid == oid) else {
            return Ok(true);
        };
        let Some(key) = key.iter().cloned().collect::<Option<Vec<String>>>() else {
            return Ok(true);
        };
        for part in &self.progress.parts {
            let covers = match (part.table.cmp(&ti), &part.key) {
                (std::cmp::Ordering::Greater, _) => true,
                (std::cmp::Ordering::Less, _) | (std::cmp::Ordering::Equal, None) => false,
                (std::cmp::Ordering::Equal, Some(end)) => {
                    let t = self.described.iter().find(|d| d.relation.id == oid);
                    // The key the part's end was read by must still be the table's.
                    let Some(t) = t.filter(|t| {
                        t.key_names() == self.progress.tables[ti].key && end.len() == key.len()
                    }) else {
                        tracing::warn!(table = %self.progress.tables[ti].name, "The table's key changed since the snapshot read it; a change near where a snapshot part ended is emitted, and may repeat what the snapshot read.");
                        return Ok(true);
                    };
                    let sql = format!("SELECT {} <= {}", t.params(1), t.params(key.len() + 1));
                    let params: Vec<&String> = key.iter().chain(end).collect();
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| *p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let row = admin
                        .query_one(&sql, &params)
                        .await
                        .map_err(|e| pg_err("compare a key with where a snapshot part ended", e))?;
                    row.get::<_, Option<bool>>(0).unwrap_or(false)
                }
            };
            if covers {
                return Ok(commit_lsn >= part.lsn);
            }
        }
        Ok(true)
    }

    /// The key columns' text of `relation`'s row in `tuple` (None when the table is not one
    /// the snapshot read).
    pub fn key_text(&self, relation: &Relation, tuple: &Tuple) -> Option<Vec<Option<String>>> {
        let t = self.progress.tables.iter().find(|t| t.oid == relation.id)?;
        Some(
            t.key
                .iter()
                .map(|k| {
                    let i = relation.columns.iter().position(|c| c.name == *k)?;
                    match tuple.0.get(i)? {
                        Datum::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                        _ => None,
                    }
                })
                .collect(),
        )
    }
}
