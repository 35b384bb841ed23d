//! The catalog: declared streams and tables, kept in the compacted log topic
//! `__sluice_catalog` as the statements that created them (like ksqlDB's command topic), so
//! it survives restarts and every worker reading the log sees the same catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_log::{Log, LogError, Record};

use crate::ast::{ColumnDef, Properties, PropertyValue, SourceKind, Statement};
use crate::error::{Result, SqlError};
use crate::format::{Format, KeyFormat, RecordDecoder};
use crate::planner::SourceTable;
use crate::types::arrow_type;

/// The topic holding the catalog.
pub const CATALOG_TOPIC: &str = "__sluice_catalog";

/// A declared stream or table.
#[derive(Debug, Clone)]
pub struct SourceDef {
    /// Name (lower case unless quoted).
    pub name: String,
    /// Stream or table.
    pub kind: SourceKind,
    /// Columns: name, Arrow type, is key.
    pub columns: Vec<(String, DataType, bool)>,
    /// The topic holding its records.
    pub topic: String,
    /// Value format.
    pub format: Format,
    /// Key format (JSON whenever there are several key columns).
    pub key_format: KeyFormat,
    /// Column holding event time (else the record timestamp).
    pub timestamp: Option<String>,
    /// Format of a VARCHAR timestamp column (chrono syntax), if it is text.
    pub timestamp_format: Option<String>,
    /// A windowed source (a windowed aggregate's table, or `WITH (window_type = ...)`): its
    /// keys carry the window.
    pub window: Option<crate::format::KeyWindow>,
    /// The statement that created it, as stored in the catalog topic.
    pub statement: String,
}

impl SourceDef {
    /// The schema of its record values, as recorded for its topic in the log's schema
    /// registry (subject `<topic>-value`): the non-key columns, each nullable (a JSON value
    /// may leave a column out). `None` unless the values are JSON objects: DELIMITED and RAW
    /// values are not records a schema of fields describes to other readers.
    pub fn value_schema(&self) -> Result<Option<sluice_log::RecordSchema>> {
        if self.format != Format::Json {
            return Ok(None);
        }
        let fields: Vec<Field> = self
            .columns
            .iter()
            .filter(|(_, _, key)| !key)
            .map(|(name, t, _)| Field::new(name, crate::types::time_as_int(t), true))
            .collect();
        if fields.is_empty() {
            // Every column is in the key: the values hold nothing a schema describes.
            return Ok(None);
        }
        sluice_format::schema::from_arrow(&Schema::new(fields))
            .map(Some)
            .map_err(|e| SqlError::Invalid(format!("{}: its columns as a schema: {e}", self.name)))
    }

    /// A decoder for its records.
    pub fn decoder(&self) -> Result<RecordDecoder> {
        RecordDecoder::new(self.format, &self.columns)?
            .with_key_format(self.key_format)
            .with_window(self.window)
    }

    /// The records for the rows of `batch` (columns by name; the key columns become the
    /// record key, see [`record_keys`], `rowtime` is left out, missing columns are NULL).
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<(Option<Bytes>, Vec<u8>)>> {
        let n = batch.num_rows();
        let mut value_fields = Vec::new();
        let mut value_cols: Vec<ArrayRef> = Vec::new();
        let mut key_fields = Vec::new();
        let mut key_cols: Vec<ArrayRef> = Vec::new();
        for (name, t, is_key) in &self.columns {
            let col = match batch.schema().index_of(name) {
                Ok(i) => {
                    let c = batch.column(i);
                    if c.data_type() == t {
                        Arc::clone(c)
                    } else {
                        cast(c, t).map_err(|e| {
                            SqlError::Invalid(format!("column {name} of {}: {e}", self.name))
                        })?
                    }
                }
                Err(_) => new_null_array(t, n),
            };
            if *is_key {
                key_fields.push(Field::new(name, t.clone(), true));
                key_cols.push(col);
            } else {
                value_fields.push(Field::new(name, t.clone(), true));
                value_cols.push(col);
            }
        }
        let values = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(value_fields)),
            value_cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let encoded = crate::format::encode_values(self.format, &values)?;
        let keys = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(key_fields)),
            key_cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        Ok(record_keys(&keys, self.key_format)?
            .into_iter()
            .zip(encoded)
            .collect())
    }

    /// Its name and Arrow schema, for planning.
    pub fn table(&self) -> Result<SourceTable> {
        let schema: SchemaRef = Arc::clone(self.decoder()?.schema());
        Ok(SourceTable {
            name: self.name.clone(),
            schema,
        })
    }
}

/// The record key of each row of `keys` (the key columns, in declared order): none without
/// key columns; one key column's text (`KAFKA`; no key when it is NULL) or JSON value
/// (`JSON`: `"a"`, `1`); several key columns as one JSON object of them
/// (`{"A":1,"B":"x"}`, NULLs as `null`), the form ksqlDB writes for a multi-column key
/// (its `KAFKA` key format holds one column only).
pub fn record_keys(keys: &RecordBatch, format: KeyFormat) -> Result<Vec<Option<Bytes>>> {
    let n = keys.num_rows();
    match keys.columns() {
        [] => Ok(vec![None; n]),
        [k] if format == KeyFormat::Json => {
            let objects = sluice_format::json::encode_rows(keys)
                .map_err(|e| SqlError::Plan(format!("record key: {e}")))?;
            objects
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    if !k.is_valid(i) {
                        return Ok(None);
                    }
                    let v: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(o)
                            .map_err(|e| SqlError::Plan(format!("record key: {e}")))?;
                    let value = v.into_iter().next().map(|(_, v)| v).unwrap_or_default();
                    Ok(Some(Bytes::from(value.to_string())))
                })
                .collect()
        }
        [k] => {
            let f = ArrayFormatter::try_new(k.as_ref(), &FormatOptions::default())?;
            Ok((0..n)
                .map(|i| k.is_valid(i).then(|| Bytes::from(f.value(i).to_string())))
                .collect())
        }
        _ => Ok(sluice_format::json::encode_rows(keys)
            .map_err(|e| SqlError::Plan(format!("record key: {e}")))?
            .into_iter()
            .map(|k| Some(Bytes::from(k)))
            .collect()),
    }
}

const KNOWN_PROPERTIES: &[&str] = &[
    "topic",
    "kafka_topic",
    "format",
    "value_format",
    "key_format",
    "partitions",
    "timestamp",
    "timestamp_format",
    "window_type",
    "window_size",
];

fn property<'a>(props: &'a Properties, names: &[&str]) -> Option<&'a PropertyValue> {
    names.iter().find_map(|n| props.get(*n))
}

/// The key format of a source with `keys` key columns: as given (`key_format`), else
/// `inherited`; several key columns are always a JSON object, since ksqlDB's `KAFKA` key
/// format holds one column (given explicitly, it is refused with ksqlDB's words; left
/// implicit, JSON is chosen, as newer ksqlDB releases do for internal topics).
pub fn key_format(
    properties: &Properties,
    inherited: KeyFormat,
    keys: &[&str],
) -> Result<KeyFormat> {
    let given = property(properties, &["key_format"])
        .map(|v| v.as_str().parse::<KeyFormat>())
        .transpose()?;
    match (given, keys.len()) {
        (Some(KeyFormat::Kafka), n) if n > 1 => Err(SqlError::Invalid(format!(
            "Key format does not support schema. format: KAFKA, reason: The 'KAFKA' format only supports a single field. Got: [{}] (use key_format = 'JSON')",
            keys.join(", ")
        ))),
        (_, n) if n > 1 => Ok(KeyFormat::Json),
        (Some(f), _) => Ok(f),
        (None, _) => Ok(inherited),
    }
}

/// Refuses two spellings of one property given together (`topic` and `kafka_topic`,
/// `format` and `value_format`), as ksqlDB does: which would win is not obvious.
pub fn refuse_synonyms(what: &str, props: &Properties) -> Result<()> {
    for [a, b] in [["topic", "kafka_topic"], ["format", "value_format"]] {
        if props.contains_key(a) && props.contains_key(b) {
            return Err(SqlError::Invalid(format!(
                "{what}: give {} or {}, not both",
                a.to_uppercase(),
                b.to_uppercase()
            )));
        }
    }
    Ok(())
}

/// Builds a definition from `CREATE STREAM|TABLE name (cols) WITH (...)`.
pub fn source_def(
    kind: SourceKind,
    name: &str,
    columns: &[ColumnDef],
    properties: &Properties,
    statement: &str,
) -> Result<SourceDef> {
    if let Some(unknown) = properties
        .keys()
        .find(|k| !KNOWN_PROPERTIES.contains(&k.as_str()))
    {
        return Err(SqlError::Invalid(format!(
            "{kind} {name}: unknown property '{unknown}' (known: {})",
            KNOWN_PROPERTIES.join(", ")
        )));
    }
    refuse_synonyms(&format!("{kind} {name}"), properties)?;
    if properties.contains_key("window_size") && !properties.contains_key("window_type") {
        return Err(SqlError::Invalid(format!(
            "{kind} {name}: window_size needs window_type (TUMBLING or HOPPING)"
        )));
    }
    let topic = property(properties, &["topic", "kafka_topic"])
        .map(|v| v.as_str().to_string())
        .ok_or_else(|| {
            SqlError::Invalid(format!("{kind} {name}: WITH (topic = '...') is required"))
        })?;
    let format = match property(properties, &["format", "value_format"]) {
        Some(v) => v.as_str().parse()?,
        None => Format::Json,
    };
    let mut cols = Vec::with_capacity(columns.len());
    for c in columns {
        if cols
            .iter()
            .any(|(n, _, _): &(String, DataType, bool)| *n == c.name)
        {
            return Err(SqlError::Invalid(format!(
                "{kind} {name}: column {} is declared twice",
                c.name
            )));
        }
        cols.push((c.name.clone(), arrow_type(&c.data_type)?, c.key));
    }
    if kind == SourceKind::Table && !cols.iter().any(|c| c.2) {
        return Err(SqlError::Invalid(format!(
            "table {name} needs a PRIMARY KEY column"
        )));
    }
    // The value names a column: case-insensitive, as an unquoted identifier is.
    let timestamp = property(properties, &["timestamp"]).map(|v| v.as_str().to_uppercase());
    if let Some(ts) = &timestamp {
        match cols.iter().find(|c| &c.0 == ts) {
            None => {
                return Err(SqlError::Unknown {
                    kind: "column",
                    name: format!("{ts} (the timestamp of {name})"),
                });
            }
            Some((_, t, _))
                if !matches!(
                    t,
                    DataType::Int64 | DataType::Timestamp(..) | DataType::Utf8
                ) =>
            {
                return Err(SqlError::Invalid(format!(
                    "{kind} {name}: timestamp column {ts} must be BIGINT (ms), TIMESTAMP or VARCHAR with timestamp_format"
                )));
            }
            _ => {}
        }
    }
    let keys: Vec<&str> = cols.iter().filter(|c| c.2).map(|c| c.0.as_str()).collect();
    // Debezium keys are JSON objects of the key columns.
    let implied = match format {
        Format::Debezium => KeyFormat::Json,
        _ => KeyFormat::Kafka,
    };
    let key_format = key_format(properties, implied, &keys)?;
    let def = SourceDef {
        name: name.to_string(),
        kind,
        key_format,
        columns: cols,
        topic,
        format,
        timestamp,
        timestamp_format: property(properties, &["timestamp_format"])
            .map(|v| v.as_str().to_string()),
        window: match property(properties, &["window_type"]) {
            Some(t) => Some(crate::format::KeyWindow::from_properties(
                t.as_str(),
                property(properties, &["window_size"]).map(|v| v.as_str()),
            )?),
            None => None,
        },
        statement: statement.trim().to_string(),
    };
    def.decoder()?;
    Ok(def)
}

/// The catalog of one log.
#[derive(Debug)]
pub struct Catalog {
    log: Log,
    sources: BTreeMap<String, SourceDef>,
    queries: BTreeMap<String, QueryDef>,
}

/// A persistent query as recorded in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryDef {
    /// Its id (`CSAS_RIDES_BY_ZONE_1`), what TERMINATE takes.
    pub id: String,
    /// The stream or table it writes.
    pub sink: String,
    /// The statement as written (`CREATE ... AS SELECT` or `INSERT INTO ... SELECT`).
    pub statement: String,
}

/// Catalog-topic keys of queries start with this (source names cannot contain ':').
const QUERY_KEY_PREFIX: &str = "query:";

impl Catalog {
    /// Loads the catalog from the log (creating its topic on first use).
    pub fn open(log: &Log) -> Result<Catalog> {
        match log.create_topic(
            CATALOG_TOPIC,
            1,
            &[("cleanup.policy".into(), "compact".into())],
        ) {
            Ok(()) | Err(LogError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut catalog = Catalog {
            log: log.clone(),
            sources: BTreeMap::new(),
            queries: BTreeMap::new(),
        };
        let mut records = Vec::new();
        log.read_all(CATALOG_TOPIC, 0, |_, r| records.push(r))?;
        // The record key each source was last stored under.
        let mut stored_as: BTreeMap<String, String> = BTreeMap::new();
        for r in records {
            let Some(key) = r.key else { continue };
            let name = String::from_utf8_lossy(&key).into_owned();
            if let Some(id) = name.strip_prefix(QUERY_KEY_PREFIX) {
                match r.value {
                    None => {
                        catalog.queries.remove(id);
                    }
                    Some(v) => match catalog.replay_query(id, &String::from_utf8_lossy(&v)) {
                        Ok(q) => {
                            catalog.queries.insert(q.id.clone(), q);
                        }
                        Err(e) => {
                            tracing::error!(query = %id, error = %e, "A catalog query no longer parses; it is skipped.")
                        }
                    },
                }
                continue;
            }
            match r.value {
                None => {
                    // The tombstone's key is the key the source was stored under (its name
                    // as an older version spelled it, maybe).
                    let dropped = stored_as
                        .iter()
                        .find(|(_, key)| **key == name)
                        .map(|(source, _)| source.clone())
                        .unwrap_or(name);
                    catalog.sources.remove(&dropped);
                    stored_as.remove(&dropped);
                }
                Some(v) => match catalog.replay(&String::from_utf8_lossy(&v)) {
                    Ok(mut def) => {
                        // Two entries of an older version (`rides` and `"RIDES"`) fold to one
                        // name: the one stored under another spelling keeps that spelling
                        // (reachable quoted), so neither is lost.
                        match stored_as.get(&def.name) {
                            Some(other) if *other != name && name != def.name => {
                                tracing::warn!(source = %name, clashes_with = %def.name, "Two catalog entries fold to one name; this one keeps its old spelling (quote it to use it).");
                                def.name = name.clone();
                            }
                            Some(other) if *other != name => {
                                let other = other.clone();
                                tracing::warn!(source = %other, clashes_with = %def.name, "Two catalog entries fold to one name; the older spelling keeps its name (quote it to use it).");
                                if let Some(mut moved) = catalog.sources.remove(&def.name) {
                                    moved.name = other.clone();
                                    stored_as.insert(other.clone(), other.clone());
                                    catalog.sources.insert(other, moved);
                                }
                            }
                            _ => {}
                        }
                        stored_as.insert(def.name.clone(), name);
                        catalog.sources.insert(def.name.clone(), def);
                    }
                    Err(e) => {
                        tracing::error!(source = %name, error = %e, "A catalog entry no longer parses; it is skipped.")
                    }
                },
            }
        }
        // Entries stored by versions that folded names to lower case replay under their
        // upper-case name; they move to that key, so a later DROP's tombstone (keyed by the
        // name) removes them for good, even after compaction.
        for (name, key) in stored_as {
            if name != key {
                if let Some(def) = catalog.sources.get(&name) {
                    catalog.put(&name, Some(&def.statement))?;
                    catalog.put(&key, None)?;
                }
            }
        }
        Ok(catalog)
    }

    fn replay(&self, statement: &str) -> Result<SourceDef> {
        match crate::parse_one(statement)? {
            Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
                ..
            } => source_def(kind, &name, &columns, &properties, statement),
            other => Err(SqlError::Invalid(format!(
                "not a CREATE statement: {other:?}"
            ))),
        }
    }

    fn replay_query(&self, id: &str, statement: &str) -> Result<QueryDef> {
        match crate::parse_one(statement)? {
            Statement::CreateAs { name, .. } => Ok(QueryDef {
                id: id.to_string(),
                sink: name,
                statement: statement.to_string(),
            }),
            Statement::InsertSelect { target, .. } => Ok(QueryDef {
                id: id.to_string(),
                sink: target,
                statement: statement.to_string(),
            }),
            other => Err(SqlError::Invalid(format!(
                "not a persistent query: {other:?}"
            ))),
        }
    }

    /// Persistent queries, by id.
    pub fn queries(&self) -> impl Iterator<Item = &QueryDef> {
        self.queries.values()
    }

    /// A new query id for a query writing `sink`: `CSAS_`/`CTAS_`/`INSERTQUERY_` + name +
    /// a number never used before in this catalog.
    pub fn next_query_id(&self, prefix: &str, sink: &str) -> String {
        let n = self
            .queries
            .keys()
            .filter_map(|k| k.rsplit('_').next()?.parse::<u64>().ok())
            .max()
            .map_or(0, |m| m + 1);
        format!("{prefix}_{}_{n}", sink.to_uppercase())
    }

    /// Records a persistent query.
    pub fn add_query(&mut self, q: QueryDef) -> Result<()> {
        self.put(&format!("{QUERY_KEY_PREFIX}{}", q.id), Some(&q.statement))?;
        self.queries.insert(q.id.clone(), q);
        Ok(())
    }

    /// Forgets a persistent query (TERMINATE).
    pub fn remove_query(&mut self, id: &str) -> Result<QueryDef> {
        let q = self
            .queries
            .get(id)
            .cloned()
            .ok_or_else(|| SqlError::Unknown {
                kind: "query",
                name: id.into(),
            })?;
        self.put(&format!("{QUERY_KEY_PREFIX}{id}"), None)?;
        self.queries.remove(id);
        Ok(q)
    }

    fn put(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.log.append_records(
            CATALOG_TOPIC,
            0,
            &[Record {
                key: Some(Bytes::from(key.to_string())),
                value: value.map(|v| Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp: sluice_log::record::now_ms(),
            }],
        )?;
        Ok(())
    }

    /// A stream or table by name.
    pub fn get(&self, name: &str) -> Result<&SourceDef> {
        self.sources.get(name).ok_or_else(|| SqlError::Unknown {
            kind: "stream or table",
            name: name.into(),
        })
    }

    /// All definitions, by name.
    pub fn sources(&self) -> impl Iterator<Item = &SourceDef> {
        self.sources.values()
    }

    /// Sources as planning tables.
    pub fn tables(&self) -> Result<Vec<SourceTable>> {
        self.sources.values().map(SourceDef::table).collect()
    }

    /// Adds a definition (creating its topic with `partitions` if it does not exist) and
    /// records it in the catalog topic. Returns false when it existed and `if_not_exists`.
    ///
    /// In a cluster, `owner` (the pipeline running the statement) makes a missing topic.
    pub fn create(
        &mut self,
        def: SourceDef,
        partitions: Option<u32>,
        if_not_exists: bool,
        or_replace: bool,
        owner: Option<&sluice_log::OwnerRef>,
    ) -> Result<bool> {
        if let Some(existing) = self.sources.get(&def.name) {
            if if_not_exists {
                return Ok(false);
            }
            if !or_replace {
                return Err(SqlError::Exists {
                    kind: if existing.kind == SourceKind::Stream {
                        "stream"
                    } else {
                        "table"
                    },
                    name: def.name,
                });
            }
        }
        if sluice_log::is_internal_topic(&def.topic) {
            // Writing a forged source position or changelog record would corrupt a task's
            // state; reading them is what the log's own commands are for.
            return Err(SqlError::Invalid(format!(
                "{}: topic {} is internal (names starting with `__` or ending in `-changelog` belong to Sluice); use another topic",
                def.name, def.topic
            )));
        }
        match self.log.topic(&def.topic) {
            Ok(t) => {
                if let Some(p) = partitions {
                    if p != t.partition_count() {
                        return Err(SqlError::Invalid(format!(
                            "topic {} exists with {} partitions, the statement asks for {p}",
                            def.topic,
                            t.partition_count()
                        )));
                    }
                }
            }
            Err(LogError::UnknownTopic(_)) => {
                let p = partitions.ok_or_else(|| {
                    SqlError::Invalid(format!(
                        "topic {} does not exist: create it, or give WITH (partitions = N) to have it created",
                        def.topic
                    ))
                })?;
                match owner {
                    Some(owner) => owner.create_topic(&def.topic, p, &[])?,
                    None => self.log.create_topic(&def.topic, p, &[])?,
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.put(&def.name, Some(&def.statement))?;
        self.sources.insert(def.name.clone(), def);
        Ok(true)
    }

    /// Removes a definition (and its topic with `delete_topic`).
    pub fn drop_source(
        &mut self,
        kind: SourceKind,
        name: &str,
        if_exists: bool,
        delete_topic: bool,
    ) -> Result<bool> {
        let Some(def) = self.sources.get(name) else {
            return if if_exists {
                Ok(false)
            } else {
                Err(SqlError::Unknown {
                    kind: if kind == SourceKind::Stream {
                        "stream"
                    } else {
                        "table"
                    },
                    name: name.into(),
                })
            };
        };
        if def.kind != kind {
            return Err(SqlError::Invalid(format!(
                "{name} is a {}, not a {kind}",
                def.kind
            )));
        }
        if let Some(q) = self.queries.values().find(|q| q.sink == name) {
            return Err(SqlError::Invalid(format!(
                "cannot drop {name}: query {} writes into it; TERMINATE {} first",
                q.id, q.id
            )));
        }
        // As in ksqlDB: a query reading a dropped source could not restart, nor be compiled
        // again (the worker's catch-up checks do) once the source is gone.
        if let Some(q) = self
            .queries
            .values()
            .find(|q| query_reads(&q.statement).iter().any(|r| r == name))
        {
            return Err(SqlError::Invalid(format!(
                "cannot drop {name}: query {} reads it; TERMINATE {} first",
                q.id, q.id
            )));
        }
        let topic = def.topic.clone();
        self.put(name, None)?;
        self.sources.remove(name);
        if delete_topic {
            self.log.delete_topic(&topic)?;
        }
        Ok(true)
    }
}

/// The streams and tables a persistent query's statement reads (its FROM and JOIN names).
fn query_reads(statement: &str) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::{SetExpr, TableFactor};
    let select = match crate::parse_one(statement) {
        Ok(Statement::CreateAs { select, .. }) | Ok(Statement::InsertSelect { select, .. }) => {
            select
        }
        _ => return Vec::new(),
    };
    let SetExpr::Select(body) = select.query.body.as_ref() else {
        return Vec::new();
    };
    body.from
        .iter()
        .flat_map(|f| std::iter::once(&f.relation).chain(f.joins.iter().map(|j| &j.relation)))
        .filter_map(|r| match r {
            TableFactor::Table { name, .. } => {
                Some(crate::query::object_name(name)).filter(|n| !n.is_empty())
            }
            _ => None,
        })
        .collect()
}

/// The `CREATE STREAM|TABLE` statement declaring a query's output, stored in the catalog
/// for the derived source so it replays like a declared one.
pub fn derived_statement(
    kind: SourceKind,
    name: &str,
    columns: &[(String, DataType, bool)],
    topic: &str,
    format: Format,
    window: Option<crate::format::KeyWindow>,
    key_format: KeyFormat,
) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|(n, t, key)| {
            let ident = crate::types::quoted_if_needed(n);
            let key = match (key, kind) {
                (false, _) => "",
                (true, SourceKind::Stream) => " KEY",
                (true, SourceKind::Table) => " PRIMARY KEY",
            };
            format!("{ident} {}{key}", crate::types::sql_name(t))
        })
        .collect();
    let window = match window {
        None => String::new(),
        Some(w) => match w.size() {
            Some(size) => format!(
                ", window_type = '{}', window_size = '{size} MILLISECONDS'",
                w.type_name()
            ),
            None => format!(", window_type = '{}'", w.type_name()),
        },
    };
    let key_format = match key_format {
        KeyFormat::Kafka => String::new(),
        KeyFormat::Json => ", key_format = 'JSON'".into(),
    };
    format!(
        "CREATE {} {} ({}) WITH (topic = '{}', format = '{format}'{key_format}{window})",
        match kind {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        },
        crate::types::quoted_if_needed(name),
        cols.join(", "),
        topic.replace('\'', "''")
    )
}

/// Reads `partitions` from properties, if given.
pub fn partitions_property(properties: &Properties) -> Result<Option<u32>> {
    match properties.get("partitions") {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(|| {
                SqlError::Invalid(format!(
                    "partitions must be a positive whole number, got '{}'",
                    v.as_str()
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(catalog: &mut Catalog, sql: &str) -> Result<bool> {
        let Statement::CreateSource {
            kind,
            name,
            columns,
            properties,
            if_not_exists,
            or_replace,
        } = crate::parse_one(sql)?
        else {
            panic!()
        };
        let def = source_def(kind, &name, &columns, &properties, sql)?;
        catalog.create(
            def,
            partitions_property(&properties)?,
            if_not_exists,
            or_replace,
            None,
        )
    }

    /// Entries an older version stored under lower-case names (its folding) come back under
    /// their upper-case names, move to that key, and an old tombstone still drops its entry.
    #[test]
    fn entries_stored_under_lower_case_names_move_to_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let c = Catalog::open(&log).unwrap();
        c.put(
            "rides",
            Some("CREATE STREAM rides (id VARCHAR KEY) WITH (topic='rides', partitions=1)"),
        )
        .unwrap();
        c.put(
            "gone",
            Some("CREATE STREAM gone (id VARCHAR KEY) WITH (topic='gone', partitions=1)"),
        )
        .unwrap();
        c.put("gone", None).unwrap();
        drop(c);
        let mut c = Catalog::open(&log).unwrap();
        assert!(c.get("RIDES").is_ok() && c.get("GONE").is_err());
        c.drop_source(SourceKind::Stream, "RIDES", false, false)
            .unwrap();
        drop(c);
        let c = Catalog::open(&log).unwrap();
        assert!(c.get("RIDES").is_err(), "the drop holds after a reopen");
    }

    /// An older catalog may hold `rides` (folded to lower case) and `"RIDES"` (quoted): both
    /// fold to `RIDES` now; neither is lost, in either order, across reopens.
    #[test]
    fn entries_that_fold_to_one_name_both_stay() {
        for lower_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
            let c = Catalog::open(&log).unwrap();
            let lower = (
                "rides",
                "CREATE STREAM rides (id VARCHAR KEY) WITH (topic='lower', partitions=1)",
            );
            let upper = (
                "RIDES",
                "CREATE STREAM \"RIDES\" (id VARCHAR KEY) WITH (topic='upper', partitions=1)",
            );
            let order = if lower_first {
                [lower, upper]
            } else {
                [upper, lower]
            };
            for (key, stmt) in order {
                c.put(key, Some(stmt)).unwrap();
            }
            drop(c);
            for _ in 0..2 {
                let c = Catalog::open(&log).unwrap();
                assert_eq!(
                    c.get("RIDES").unwrap().topic,
                    "upper",
                    "lower first: {lower_first}"
                );
                assert_eq!(
                    c.get("rides").unwrap().topic,
                    "lower",
                    "lower first: {lower_first}"
                );
            }
        }
    }

    #[test]
    fn create_persists_across_reopen_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let mut c = Catalog::open(&log).unwrap();
        create(&mut c, "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, fare DOUBLE) WITH (topic='rides', partitions=3)").unwrap();
        create(&mut c, "CREATE TABLE zones (zone VARCHAR PRIMARY KEY, name VARCHAR) WITH (topic='zones', partitions=1, format='DELIMITED')").unwrap();
        assert_eq!(log.topic("rides").unwrap().partition_count(), 3);
        let e = create(
            &mut c,
            "CREATE STREAM rides (id VARCHAR) WITH (topic='x', partitions=1)",
        )
        .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(
            !create(
                &mut c,
                "CREATE STREAM IF NOT EXISTS rides (id VARCHAR) WITH (topic='x', partitions=1)"
            )
            .unwrap()
        );
        drop(c);
        let mut c = Catalog::open(&log).unwrap();
        assert_eq!(c.get("ZONES").unwrap().format, Format::Delimited);
        assert_eq!(c.get("RIDES").unwrap().columns.len(), 3);
        assert!(
            c.drop_source(SourceKind::Stream, "ZONES", false, false)
                .unwrap_err()
                .to_string()
                .contains("is a table")
        );
        c.drop_source(SourceKind::Table, "ZONES", false, true)
            .unwrap();
        assert!(log.topic("zones").is_err());
        let c = Catalog::open(&log).unwrap();
        assert!(c.get("ZONES").is_err());
        assert_eq!(c.tables().unwrap().len(), 1);
    }

    #[test]
    fn bad_definitions_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let mut c = Catalog::open(&log).unwrap();
        let cases = [
            (
                "CREATE STREAM s (a INT) WITH (partitions=1)",
                "topic = '...') is required",
            ),
            ("CREATE STREAM s (a INT) WITH (topic='s')", "does not exist"),
            (
                "CREATE STREAM s (a INT) WITH (topic='s', partitions=1, colour='red')",
                "unknown property 'colour'",
            ),
            (
                "CREATE STREAM s (a INT) WITH (topic='s', partitions=1, format='XML')",
                "unknown format",
            ),
            (
                "CREATE TABLE s (a INT) WITH (topic='s', partitions=1)",
                "PRIMARY KEY",
            ),
            (
                "CREATE STREAM s (a INT, a INT) WITH (topic='s', partitions=1)",
                "declared twice",
            ),
            (
                "CREATE STREAM s (a INT) WITH (topic='s', partitions=1, timestamp='b')",
                "unknown column 'B",
            ),
            (
                "CREATE STREAM s (a INT) WITH (topic='s', partitions=0)",
                "positive whole number",
            ),
        ];
        for (sql, want) in cases {
            let e = create(&mut c, sql).unwrap_err().to_string();
            assert!(e.contains(want), "{sql}: {e}");
        }
    }
}
