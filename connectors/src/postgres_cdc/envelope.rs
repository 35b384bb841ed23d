//! Row changes as records: the relations seen so far (from pgoutput Relation messages, so a
//! table's shape follows `ALTER TABLE` without a restart) and the Debezium-compatible JSON
//! envelope each change becomes, keyed by the table's primary key, on a topic named from
//! the table.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_log::Record;
use sluice_log::schema::{FieldSchema, FieldType, RecordSchema};

use super::pgoutput::{self, Column, Datum, Message, OldTuple, Relation, Tuple};

/// What Debezium writes for a value the server did not send: an unchanged TOASTed column of
/// an update when the table's `REPLICA IDENTITY` is not `FULL`.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Where a change sits: its transaction and its place in the WAL.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The transaction id.
    pub xid: u32,
    /// The commit time, ms since the Unix epoch.
    pub commit_ms: i64,
    /// The change's LSN.
    pub lsn: u64,
    /// `"true"` for rows read by a snapshot, `"false"` for streamed changes (Debezium also
    /// writes `"last"` for the snapshot's last row).
    pub snapshot: &'static str,
}

/// One output record and the topic it goes to.
pub type Routed = (String, Record);

/// What the source's store does for one record, for TOASTed values: an update that leaves
/// a large value alone does not carry it, so the last value seen is kept by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The record's index among the records built with it (none: the note is about the
    /// table alone).
    pub record: Option<usize>,
    /// The table (OID): the store keeps values by table, not by topic, which several
    /// tables may share.
    pub table: u32,
    /// The record's envelope, not serialized yet, when a [`ToastOp::Fill`] will change it.
    pub envelope: Option<Value>,
    /// In order.
    pub ops: Vec<ToastOp>,
}

/// One step of a [`Note`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToastOp {
    /// Sets `after.<column>` of the record to the value kept for the row keyed `from`.
    Fill {
        /// The row's key (the old key when the update changed it).
        from: Bytes,
        /// The columns the change left out.
        columns: Vec<String>,
    },
    /// Keeps these values (JSON) for the row keyed `key`.
    Remember {
        /// The row's key.
        key: Bytes,
        /// Column and JSON value.
        values: Vec<(String, Bytes)>,
    },
    /// Forgets what is kept of these columns for the row keyed `key`: they came whole
    /// and small (or NULL), so what is kept is older.
    Clear {
        /// The row's key.
        key: Bytes,
        /// The columns.
        columns: Vec<String>,
    },
    /// Forgets what is kept for the row keyed `key`.
    Forget {
        /// The row's key.
        key: Bytes,
    },
    /// Forgets what is kept for every row of the table (a truncate; a table now `REPLICA
    /// IDENTITY FULL`, whose updates carry the old row and keep nothing).
    ForgetAll,
}

/// Which columns of a table the server may store out of line, and from what size of text
/// a value may be stored so.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Toast {
    /// The TOASTable columns, by name.
    pub columns: Vec<String>,
    /// The shortest text of a value kept.
    pub min_bytes: usize,
}

impl Toast {
    /// Whether a value that came whole is long enough to be kept.
    fn large(&self, d: &Datum) -> bool {
        matches!(d, Datum::Text(b) if b.len() >= self.min_bytes)
    }

    /// The values of `t` to keep (as JSON, taken from the built `row`).
    fn kept_values(
        &self,
        rel: &Relation,
        t: &Tuple,
        row: &Map<String, Value>,
    ) -> Vec<(String, Bytes)> {
        rel.columns
            .iter()
            .zip(&t.0)
            .filter(|(c, d)| self.columns.contains(&c.name) && self.large(d))
            .filter_map(|(c, _)| Some((c.name.clone(), Bytes::from(row.get(&c.name)?.to_string()))))
            .collect()
    }
}

/// The tables the stream has described, and how their changes become records.
#[derive(Debug)]
pub struct Tables {
    relations: HashMap<u32, Relation>,
    /// The topic name pattern: `{schema}` and `{table}` are replaced.
    topic: String,
    /// The database name, for `source.db`.
    db: String,
    /// Tables to emit (`schema.table`); empty: every table the publication sends.
    only: Vec<String>,
    /// Write a tombstone (the key, no value) after each delete.
    tombstones: bool,
    /// The TOASTable columns of the relations that have any.
    toast: HashMap<u32, Toast>,
}

impl Tables {
    /// No relation known yet.
    pub fn new(topic: &str, db: &str, only: Vec<String>, tombstones: bool) -> Tables {
        Tables {
            relations: HashMap::new(),
            topic: topic.to_string(),
            db: db.to_string(),
            only,
            tombstones,
            toast: HashMap::new(),
        }
    }

    /// Records which columns of relation `id` may be TOASTed (none: forgets it).
    pub fn set_toast(&mut self, id: u32, toast: Toast) {
        match toast.columns.is_empty() {
            true => self.toast.remove(&id),
            false => self.toast.insert(id, toast),
        };
    }

    /// Records a relation's (new) description; true when its columns changed from the last
    /// one known (a schema change while streaming).
    pub fn describe(&mut self, r: Relation) -> bool {
        let changed = self
            .relations
            .get(&r.id)
            .is_some_and(|old| old.columns != r.columns);
        self.relations.insert(r.id, r);
        changed
    }

    /// The topic of a table.
    pub fn topic_of(&self, schema: &str, table: &str) -> String {
        self.topic
            .replace("{schema}", &topic_safe(schema))
            .replace("{table}", &topic_safe(table))
    }

    /// Whether changes of `schema.table` are emitted.
    pub fn wanted(&self, schema: &str, table: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|t| *t == format!("{schema}.{table}"))
    }

    /// The records of one change message (none for messages that are not row changes, or
    /// for tables not wanted). `Err` says why the change cannot be emitted (a relation the
    /// stream never described): the caller fails rather than lose it.
    pub fn records(
        &self,
        message: &Message,
        at: Place,
        now_ms: i64,
    ) -> Result<Vec<Routed>, String> {
        self.records_noted(message, at, now_ms, &mut Vec::new(), None)
    }

    /// [`Tables::records`], with what the store does for each record in `notes` (indices
    /// into the result). `fill_from`: the old key of a key-changing update whose create
    /// half this is.
    pub fn records_noted(
        &self,
        message: &Message,
        at: Place,
        now_ms: i64,
        notes: &mut Vec<Note>,
        fill_from: Option<Bytes>,
    ) -> Result<Vec<Routed>, String> {
        let relation = |id: u32| {
            self.relations.get(&id).ok_or_else(|| {
                format!("a change of relation {id}, which the stream never described")
            })
        };
        let (rel, op, before, after) = match message {
            Message::Insert { relation: id, new } => (relation(*id)?, "c", None, Some(new)),
            Message::Update {
                relation: id,
                old,
                new,
            } => (
                relation(*id)?,
                "u",
                old.as_ref().map(OldTuple::tuple),
                Some(new),
            ),
            Message::Delete { relation: id, old } => (relation(*id)?, "d", Some(old.tuple()), None),
            Message::Truncate { relations, .. } => {
                let mut out = Vec::new();
                for id in relations {
                    let rel = relation(*id)?;
                    if !self.wanted(&rel.namespace, &rel.name) {
                        continue;
                    }
                    let value = self.envelope(rel, "t", Value::Null, Value::Null, at, now_ms);
                    notes.push(Note {
                        record: Some(out.len()),
                        table: rel.id,
                        envelope: None,
                        ops: vec![ToastOp::ForgetAll],
                    });
                    out.push(self.record(rel, None, Some(value), at));
                }
                return Ok(out);
            }
            _ => return Ok(Vec::new()),
        };
        if !self.wanted(&rel.namespace, &rel.name) {
            return Ok(Vec::new());
        }
        let old_row = before.map(|t| row(rel, t, None));
        // An unchanged TOASTed value of the new row is the old row's when the old row came
        // whole (REPLICA IDENTITY FULL).
        let full_old = match message {
            Message::Update {
                old: Some(OldTuple::Full(t)),
                ..
            } => Some(t),
            _ => None,
        };
        let new_row = after.map(|t| row(rel, t, full_old));
        let key = key_of(rel, new_row.as_ref().or(old_row.as_ref()));
        let old_key = key_of(rel, old_row.as_ref());
        if op == "u" && old_key.is_some() && old_key != key {
            // The key changed: as Debezium, a delete (and tombstone) of the old key, then a
            // create under the new one, so a compacted topic keeps one row.
            let delete = Message::Delete {
                relation: rel.id,
                old: OldTuple::Key(before.cloned().unwrap_or(Tuple(Vec::new()))),
            };
            let insert = Message::Insert {
                relation: rel.id,
                new: after.cloned().unwrap_or(Tuple(Vec::new())),
            };
            // The kept values move with the row: the create half takes them from the old
            // key, which then forgets them.
            let mut out = self.records_noted(&delete, at, now_ms, &mut Vec::new(), None)?;
            let mut inserted = Vec::new();
            let created = self.records_noted(&insert, at, now_ms, &mut inserted, old_key)?;
            notes.extend(inserted.into_iter().map(|mut n| {
                n.record = n.record.map(|r| r + out.len());
                n
            }));
            out.extend(created);
            return Ok(out);
        }
        let mut ops = Vec::new();
        if let (Some(toast), Some(key)) = (self.toast.get(&rel.id), &key) {
            match (after, &new_row) {
                (Some(t), Some(new_row)) => {
                    let toastable = |c: &Column| toast.columns.contains(&c.name);
                    // Left out by the change and not in a whole old row.
                    let missing: Vec<String> = rel
                        .columns
                        .iter()
                        .zip(&t.0)
                        .enumerate()
                        .filter(|(i, (_, d))| {
                            **d == Datum::Unchanged
                                && !matches!(
                                    full_old.and_then(|o| o.0.get(*i)),
                                    Some(Datum::Text(_))
                                )
                        })
                        .map(|(_, (c, _))| c.name.clone())
                        .collect();
                    if !missing.is_empty() {
                        ops.push(ToastOp::Fill {
                            from: fill_from.clone().unwrap_or_else(|| key.clone()),
                            columns: missing,
                        });
                    }
                    let values = toast.kept_values(rel, t, new_row);
                    let small: Vec<String> = rel
                        .columns
                        .iter()
                        .zip(&t.0)
                        .filter(|(c, d)| toastable(c) && **d != Datum::Unchanged && !toast.large(d))
                        .map(|(c, _)| c.name.clone())
                        .collect();
                    if !small.is_empty() {
                        ops.push(ToastOp::Clear {
                            key: key.clone(),
                            columns: small,
                        });
                    }
                    if !values.is_empty() {
                        ops.push(ToastOp::Remember {
                            key: key.clone(),
                            values,
                        });
                    }
                    if let Some(old) = fill_from {
                        ops.push(ToastOp::Forget { key: old });
                    }
                }
                _ => ops.push(ToastOp::Forget { key: key.clone() }),
            }
        }
        let value = self.envelope(
            rel,
            op,
            old_row.map_or(Value::Null, Value::Object),
            new_row.map_or(Value::Null, Value::Object),
            at,
            now_ms,
        );
        if !ops.is_empty() {
            let fills = ops.iter().any(|o| matches!(o, ToastOp::Fill { .. }));
            notes.push(Note {
                record: Some(0),
                table: rel.id,
                envelope: fills.then(|| value.clone()),
                ops,
            });
        }
        let mut out = vec![self.record(rel, key.clone(), Some(value), at)];
        if op == "d" && self.tombstones && key.is_some() {
            out.push(self.record(rel, key, None, at));
        }
        Ok(out)
    }

    /// The relation described under `id`.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// The record of a row a snapshot read (`op` `"r"`, no `before`), and what the store
    /// keeps of it.
    pub fn read(
        &self,
        relation: u32,
        t: &Tuple,
        at: Place,
        now_ms: i64,
    ) -> Result<(Routed, Option<Note>), String> {
        let rel = self
            .relations
            .get(&relation)
            .ok_or_else(|| format!("a row of relation {relation}, which was never described"))?;
        let after = row(rel, t, None);
        let key = key_of(rel, Some(&after));
        let note = match (self.toast.get(&rel.id), &key) {
            (Some(toast), Some(key)) => {
                let values = toast.kept_values(rel, t, &after);
                (!values.is_empty()).then(|| Note {
                    record: Some(0),
                    table: rel.id,
                    envelope: None,
                    ops: vec![ToastOp::Remember {
                        key: key.clone(),
                        values,
                    }],
                })
            }
            _ => None,
        };
        let value = self.envelope(rel, "r", Value::Null, Value::Object(after), at, now_ms);
        Ok((self.record(rel, key, Some(value), at), note))
    }

    /// Debezium's envelope (as its JSON converter writes it without schemas).
    fn envelope(
        &self,
        rel: &Relation,
        op: &str,
        before: Value,
        after: Value,
        at: Place,
        now_ms: i64,
    ) -> Value {
        json!({
            "before": before,
            "after": after,
            "source": {
                "version": env!("CARGO_PKG_VERSION"),
                "connector": "postgresql",
                "name": "sluice",
                "ts_ms": at.commit_ms,
                "snapshot": at.snapshot,
                "db": self.db,
                "schema": rel.namespace,
                "table": rel.name,
                "txId": at.xid,
                "lsn": at.lsn,
            },
            "op": op,
            "ts_ms": now_ms,
        })
    }

    fn record(
        &self,
        rel: &Relation,
        key: Option<Bytes>,
        value: Option<Value>,
        at: Place,
    ) -> Routed {
        let record = Record {
            key,
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
            timestamp: at.commit_ms,
        };
        (self.topic_of(&rel.namespace, &rel.name), record)
    }
}

/// The schema of a table's records (the envelope around its rows) for the registry: each
/// column nullable (a later `ALTER TABLE` may drop a NOT NULL, and deletes carry only the
/// key), typed as [`pgoutput::datum_to_json`] writes it; a type without a JSON rule of its
/// own is a string.
pub fn value_schema(rel: &Relation) -> RecordSchema {
    let row: Vec<FieldSchema> = rel
        .columns
        .iter()
        .map(|c| FieldSchema::nullable(c.name.clone(), field_type(c.type_oid)))
        .collect();
    let text = |n: &str| FieldSchema::new(n, FieldType::String);
    let long = |n: &str| FieldSchema::new(n, FieldType::Int64);
    let source = vec![
        text("version"),
        text("connector"),
        text("name"),
        long("ts_ms"),
        text("snapshot"),
        text("db"),
        text("schema"),
        text("table"),
        long("txId"),
        long("lsn"),
    ];
    RecordSchema::new(vec![
        FieldSchema::nullable("before", FieldType::Struct(row.clone())),
        FieldSchema::nullable("after", FieldType::Struct(row)),
        FieldSchema::new("source", FieldType::Struct(source)),
        text("op"),
        long("ts_ms"),
    ])
}

fn field_type(oid: u32) -> FieldType {
    match oid {
        16 => FieldType::Boolean,
        21 | 23 => FieldType::Int32,
        // timestamp and time: microseconds.
        20 | 26 | 1114 | 1083 => FieldType::Int64,
        700 => FieldType::Float32,
        701 => FieldType::Float64,
        17 => FieldType::Bytes,
        1082 => FieldType::Date,
        oid => match pgoutput::element_type(oid) {
            Some(e) => FieldType::array(field_type(e), true),
            None => FieldType::String,
        },
    }
}

/// A tuple as a JSON object of its columns; an unchanged TOASTed value is taken from `old`
/// when it has one, else it is [`UNAVAILABLE`].
fn row(rel: &Relation, t: &Tuple, old: Option<&Tuple>) -> Map<String, Value> {
    let mut m = Map::new();
    for (i, (col, d)) in rel.columns.iter().zip(&t.0).enumerate() {
        let v = match d {
            Datum::Unchanged => match old.and_then(|o| o.0.get(i)) {
                Some(Datum::Text(b)) => text_value(col.type_oid, col.type_modifier, b),
                _ => Value::String(UNAVAILABLE.into()),
            },
            d => datum(col.type_oid, col.type_modifier, d),
        };
        m.insert(col.name.clone(), v);
    }
    m
}

fn datum(oid: u32, typmod: i32, d: &Datum) -> Value {
    match d {
        Datum::Null => Value::Null,
        Datum::Unchanged => Value::String(UNAVAILABLE.into()),
        Datum::Text(b) => text_value(oid, typmod, b),
        Datum::Binary(b) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

fn text_value(oid: u32, typmod: i32, b: &[u8]) -> Value {
    // The server encodes text as the database's encoding, which the connection asks to be
    // UTF-8; anything else is kept readable rather than dropped.
    pgoutput::datum_to_json(oid, typmod, &String::from_utf8_lossy(b))
}

/// The record key: the key columns' values as a JSON object (Debezium's key), or none for
/// a table without a primary key or replica identity index.
fn key_of(rel: &Relation, row: Option<&Map<String, Value>>) -> Option<Bytes> {
    let row = row?;
    let mut key = Map::new();
    for c in rel.columns.iter().filter(|c| c.key) {
        key.insert(
            c.name.clone(),
            row.get(&c.name).cloned().unwrap_or(Value::Null),
        );
    }
    if key.is_empty() {
        return None;
    }
    Some(Bytes::from(Value::Object(key).to_string()))
}

/// A schema or table name in a topic name: characters a topic name cannot hold become `_`
/// (as Debezium does).
fn topic_safe(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_cdc::pgoutput::{Column, ReplicaIdentity};

    fn rel() -> Relation {
        let col = |name: &str, type_oid, key| Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            key,
        };
        Relation {
            id: 7,
            namespace: "public".into(),
            name: "accounts".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", 23, true),
                col("note", 25, false),
                col("limit", 1700, false),
            ],
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn at() -> Place {
        Place {
            xid: 42,
            commit_ms: 1_700_000_000_000,
            lsn: 0x16_B374_D848,
            snapshot: "false",
        }
    }

    fn value(r: &Routed) -> Value {
        serde_json::from_slice(r.1.value.as_deref().unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn an_insert_is_a_create_keyed_by_the_primary_key() {
        let mut t = Tables::new("pg.{schema}.{table}", "shop", Vec::new(), true);
        t.describe(rel());
        let m = Message::Insert {
            relation: 7,
            new: Tuple(vec![text("1"), text("hi"), text("12.50")]),
        };
        let out = t.records(&m, at(), 5).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "pg.public.accounts");
        assert_eq!(out[0].1.key.as_deref(), Some(&br#"{"id":1}"#[..]));
        assert_eq!(out[0].1.timestamp, 1_700_000_000_000);
        let v = value(&out[0]);
        assert_eq!(v["op"], "c");
        assert_eq!(v["before"], Value::Null);
        assert_eq!(v["after"], json!({"id": 1, "note": "hi", "limit": "12.50"}));
        assert_eq!(v["source"]["lsn"], 0x16_B374_D848u64);
        assert_eq!(v["source"]["txId"], 42);
        assert_eq!(v["source"]["table"], "accounts");
        assert_eq!(v["ts_ms"], 5);
    }

    #[test]
    fn an_unchanged_toasted_value_comes_from_the_full_old_row_or_is_marked_unavailable() {
        let mut t = Tables::new("t", "db", Vec::new(), true);
        t.describe(rel());
        let new = Tuple(vec![text("1"), Datum::Unchanged, text("3")]);
        let full = Message::Update {
            relation: 7,
            old: Some(OldTuple::Full(Tuple(vec![
                text("1"),
                text("long"),
                text("2"),
            ]))),
            new: new.clone(),
        };
        let v = value(&t.records(&full, at(), 0).unwrap()[0]);
        assert_eq!(v["after"]["note"], "long");
        assert_eq!(v["before"]["limit"], "2");
        let bare = Message::Update {
            relation: 7,
            old: None,
            new,
        };
        let v = value(&t.records(&bare, at(), 0).unwrap()[0]);
        assert_eq!(v["after"]["note"], UNAVAILABLE);
        assert_eq!(v["before"], Value::Null);
    }

    #[test]
    fn a_key_change_is_a_delete_of_the_old_key_then_a_create() {
        let mut t = Tables::new("t", "db", Vec::new(), true);
        t.describe(rel());
        let m = Message::Update {
            relation: 7,
            old: Some(OldTuple::Key(Tuple(vec![
                text("1"),
                Datum::Null,
                Datum::Null,
            ]))),
            new: Tuple(vec![text("2"), text("n"), text("3")]),
        };
        let out = t.records(&m, at(), 0).unwrap();
        let ops: Vec<(Option<&[u8]>, Value)> = out
            .iter()
            .map(|r| {
                (
                    r.1.key.as_deref(),
                    r.1.value
                        .as_ref()
                        .map_or(Value::Null, |_| value(r)["op"].clone()),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                (Some(&br#"{"id":1}"#[..]), json!("d")),
                (Some(&br#"{"id":1}"#[..]), Value::Null),
                (Some(&br#"{"id":2}"#[..]), json!("c")),
            ]
        );
    }

    #[test]
    fn a_delete_is_followed_by_a_tombstone_unless_turned_off() {
        let old = OldTuple::Key(Tuple(vec![text("9"), Datum::Null, Datum::Null]));
        let m = Message::Delete { relation: 7, old };
        let mut t = Tables::new("t", "db", Vec::new(), true);
        t.describe(rel());
        let out = t.records(&m, at(), 0).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(value(&out[0])["op"], "d");
        assert_eq!(value(&out[0])["before"]["id"], 9);
        assert_eq!(out[1].1.key.as_deref(), Some(&br#"{"id":9}"#[..]));
        assert!(out[1].1.value.is_none());
        let mut t = Tables::new("t", "db", Vec::new(), false);
        t.describe(rel());
        assert_eq!(t.records(&m, at(), 0).unwrap().len(), 1);
    }

    #[test]
    fn tables_not_wanted_and_unknown_relations() {
        let mut t = Tables::new("t", "db", vec!["public.other".into()], true);
        t.describe(rel());
        let m = Message::Insert {
            relation: 7,
            new: Tuple(vec![text("1"), Datum::Null, Datum::Null]),
        };
        assert!(t.records(&m, at(), 0).unwrap().is_empty());
        let unknown = Message::Insert {
            relation: 8,
            new: Tuple(Vec::new()),
        };
        let e = t.records(&unknown, at(), 0).unwrap_err();
        assert!(e.contains("relation 8"), "{e}");
    }

    #[test]
    fn a_truncate_names_each_table_and_a_schema_change_is_noticed() {
        let mut t = Tables::new("cdc.{table}", "db", Vec::new(), true);
        assert!(!t.describe(rel()));
        let m = Message::Truncate {
            cascade: false,
            restart_identity: false,
            relations: vec![7],
        };
        let out = t.records(&m, at(), 0).unwrap();
        assert_eq!(out[0].0, "cdc.accounts");
        assert_eq!(value(&out[0])["op"], "t");
        let mut wider = rel();
        wider.columns.pop();
        assert!(t.describe(wider));
    }

    #[test]
    fn names_that_a_topic_cannot_hold_are_replaced() {
        let t = Tables::new("pg.{schema}.{table}", "db", Vec::new(), true);
        assert_eq!(t.topic_of("my schema", "Ünits/x"), "pg.my_schema._nits_x");
    }
}
