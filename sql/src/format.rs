//! SQL's mapping of records to Arrow rows and back: declared columns, key columns and
//! `rowtime`, on top of the format layer (`sluice-format`), which reads and writes the values.
//!
//! A source's Arrow schema is its declared columns plus `rowtime` (the record timestamp, ms).
//! Key columns are read from the record key in the source's [`KeyFormat`]: one key column is
//! the key's text cast to the column type (`KAFKA`) or a JSON value (`JSON`); several are a
//! JSON object of them, fields matched by name. The other columns come from the value in the
//! source's format:
//!
//! - `JSON`: one object per record; fields are matched by name, unknown fields ignored,
//!   missing ones NULL.
//! - `DELIMITED`: comma-separated values in declared column order (double quotes for values
//!   with commas).
//! - `RAW`: the whole value as the only value column (VARCHAR or BYTES).
//!
//! A windowed source (a windowed aggregate's table, or one declared `WITH (window_type =
//! ...)`) has keys that also carry the window, as Kafka Streams' windowed serdes write them
//! (see [`KeyWindow`]); it has the key pseudo-columns `WINDOWSTART` and `WINDOWEND`.
//!
//! A record that does not decode is not dropped: it is returned as [`Rejected`] with the
//! reason, for the dead-letter topic, and the rest of the batch decodes normally.
//!
//! A query decodes each polled batch once: a JSON value is parsed once, straight into Arrow
//! columns. Only when a batch holds a record that does not decode are its records decoded
//! again one by one, to find it (so such a batch's values are parsed twice).

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use sluice_format::json::JsonDecoder;
use sluice_format::{FormatError, delimited, json};

use crate::error::{Result, SqlError};

/// A format error as SQL's: the reason, without Arrow's "Json error: " prefix.
fn invalid(e: FormatError) -> SqlError {
    SqlError::Invalid(json::reason(&e))
}

/// Name of the record-timestamp column every source has.
pub const ROWTIME: &str = "ROWTIME";

/// How a windowed source's record keys carry their window: the key's text, then the window
/// in big-endian milliseconds, byte for byte as Kafka Streams (and so ksqlDB) write windowed
/// keys, so a compacted topic keeps one record per key and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWindow {
    /// `TUMBLING` windows of `size` ms: key, then the window start (8 bytes), as
    /// `TimeWindowedSerializer`; the end is start + size.
    Tumbling {
        /// Window size (ms).
        size: i64,
    },
    /// `HOPPING` windows of `size` ms: laid out as tumbling ones.
    Hopping {
        /// Window size (ms).
        size: i64,
    },
    /// `SESSION` windows: key, then the session's end, then its start (8 bytes each), as
    /// `SessionKeySchema`.
    Session,
}

impl KeyWindow {
    /// From `window_type` (`TUMBLING`, `HOPPING`, `SESSION`) and `window_size` (`30 SECONDS`,
    /// required by the first two), as ksqlDB's `CREATE TABLE ... WITH (...)` declares them.
    pub fn from_properties(window_type: &str, window_size: Option<&str>) -> Result<KeyWindow> {
        let size = || -> Result<i64> {
            let text = window_size.ok_or_else(|| {
                SqlError::Invalid(format!(
                    "window_type '{window_type}' needs window_size (e.g. window_size = '1 MINUTE')"
                ))
            })?;
            parse_window_size(text)
        };
        match window_type.to_ascii_uppercase().as_str() {
            "TUMBLING" => Ok(KeyWindow::Tumbling { size: size()? }),
            "HOPPING" => Ok(KeyWindow::Hopping { size: size()? }),
            "SESSION" if window_size.is_some() => Err(SqlError::Invalid(
                "window_size is not set for SESSION windows (a session's size is its own), as in ksqlDB".into(),
            )),
            "SESSION" => Ok(KeyWindow::Session),
            other => Err(SqlError::Invalid(format!(
                "unknown window_type '{other}' (use TUMBLING, HOPPING or SESSION)"
            ))),
        }
    }

    /// `window_type` as ksqlDB names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            KeyWindow::Tumbling { .. } => "TUMBLING",
            KeyWindow::Hopping { .. } => "HOPPING",
            KeyWindow::Session => "SESSION",
        }
    }

    /// The window size (ms) of time windows; `None` for sessions.
    pub fn size(&self) -> Option<i64> {
        match self {
            KeyWindow::Tumbling { size } | KeyWindow::Hopping { size } => Some(*size),
            KeyWindow::Session => None,
        }
    }

    /// The record key of `key` (its text) in the window `[start, end)`.
    pub fn encode(&self, key: &[u8], start: i64, end: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 16);
        out.extend_from_slice(key);
        if *self == KeyWindow::Session {
            out.extend_from_slice(&end.to_be_bytes());
        }
        out.extend_from_slice(&start.to_be_bytes());
        out
    }

    /// A record key split into the key's text and its window (start, end).
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<(&'a [u8], i64, i64)> {
        let suffix = if *self == KeyWindow::Session { 16 } else { 8 };
        if bytes.len() < suffix {
            return Err(SqlError::Invalid(format!(
                "a {} windowed key needs at least {suffix} bytes of window after the key, this one has {} bytes",
                self.type_name(),
                bytes.len()
            )));
        }
        let (key, window) = bytes.split_at(bytes.len() - suffix);
        let long = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            i64::from_be_bytes(a)
        };
        Ok(match self.size() {
            Some(size) => {
                let start = long(window);
                (key, start, start.saturating_add(size))
            }
            None => (key, long(&window[8..]), long(window)),
        })
    }
}

/// A windowed record key split: the key's text (`None`: no key), window start and end.
type WindowedKey<'a> = (Option<&'a [u8]>, i64, i64);

/// `N UNIT` (`30 SECONDS`, `1 MINUTE`) in milliseconds, more than zero.
fn parse_window_size(text: &str) -> Result<i64> {
    let bad = || {
        SqlError::Invalid(format!(
            "window_size '{text}' is not a duration such as '30 SECONDS' (units MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"
        ))
    };
    let mut parts = text.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let n: i64 = n.parse().map_err(|_| bad())?;
    let per = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(per) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(bad()),
    }
}

/// How a topic's record values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record.
    Json,
    /// Comma-separated values.
    Delimited,
    /// The value as is, one column.
    Raw,
    /// A Debezium change envelope (`before`, `after`, `op`, ...), as the Postgres CDC
    /// source writes: a stream or table over it sees the `after` row of creates, updates
    /// and snapshot reads, and a delete as a tombstone. Read only.
    Debezium,
}

impl FromStr for Format {
    type Err = SqlError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Format::Json),
            "DELIMITED" | "CSV" => Ok(Format::Delimited),
            "RAW" | "KAFKA" => Ok(Format::Raw),
            "DEBEZIUM" => Ok(Format::Debezium),
            other => Err(SqlError::Invalid(format!(
                "unknown format '{other}' (use JSON, DELIMITED, RAW or DEBEZIUM)"
            ))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Delimited => "DELIMITED",
            Format::Raw => "RAW",
            Format::Debezium => "DEBEZIUM",
        })
    }
}

/// How a topic's record keys are written (ksqlDB's `KEY_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// One key column as its text (ksqlDB's default, `KAFKA`; Sluice writes numbers as
    /// text too, not as Kafka's binary integers).
    #[default]
    Kafka,
    /// JSON: one key column as a JSON value (`"a"`, `1`), several as a JSON object of them.
    Json,
}

impl FromStr for KeyFormat {
    type Err = SqlError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "KAFKA" => Ok(KeyFormat::Kafka),
            "JSON" => Ok(KeyFormat::Json),
            other => Err(SqlError::Invalid(format!(
                "unknown key format '{other}' (use KAFKA or JSON)"
            ))),
        }
    }
}

impl std::fmt::Display for KeyFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyFormat::Kafka => "KAFKA",
            KeyFormat::Json => "JSON",
        })
    }
}

/// A record to decode.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value (`None` is a tombstone).
    pub value: Option<&'a [u8]>,
    /// Record timestamp (ms).
    pub timestamp: i64,
}

impl<'a> From<&'a sluice_log::Record> for Input<'a> {
    fn from(r: &'a sluice_log::Record) -> Self {
        Input {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            timestamp: r.timestamp,
        }
    }
}

impl<'a> From<&'a sluice_log::ConsumerRecord> for Input<'a> {
    fn from(r: &'a sluice_log::ConsumerRecord) -> Self {
        Input {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            timestamp: r.timestamp,
        }
    }
}

/// A record of a [`Format::Debezium`] topic as the row it carries: the value becomes the
/// envelope's `after` (`op` `c`, `u`, `r`), or nothing for a delete (`d`) or truncate
/// (`t`): a tombstone, which deletes the key's row of a table and is dropped by a stream.
/// A key that is a JSON object of one field becomes that field's value (Debezium keys are
/// objects of the key columns; a single key column reads a bare JSON value). A value that
/// is not such an envelope becomes an empty value, which decoding rejects.
pub fn unwrap_debezium(r: Input<'_>) -> Input<'_> {
    let key = r.key.map(|k| json::only_field(k).unwrap_or(k));
    let Some(v) = r.value else {
        return Input { key, ..r };
    };
    let value = match json::top_level_fields(v, &["op", "after"]).as_deref() {
        Some([Some(op), after]) => match *op {
            b"\"d\"" | b"\"t\"" => None,
            b"\"c\"" | b"\"u\"" | b"\"r\"" => match after {
                Some(a) if *a != b"null" => Some(*a),
                _ => Some(&b""[..]),
            },
            _ => Some(&b""[..]),
        },
        _ => Some(&b""[..]),
    };
    Input { key, value, ..r }
}

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the input slice.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// The result of decoding a slice of records.
#[derive(Debug)]
pub struct Decoded {
    /// One row per accepted record, in input order.
    pub batch: RecordBatch,
    /// Input index of each row of `batch`.
    pub rows: Vec<usize>,
    /// Records that did not decode.
    pub rejected: Vec<Rejected>,
}

/// Decodes records of one source into Arrow batches.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: Format,
    /// Declared columns plus rowtime.
    schema: SchemaRef,
    /// The value columns only (what the value format holds).
    value_schema: SchemaRef,
    /// For `JSON`: the decoder into `value_schema`, with BYTES columns read as their base64
    /// text (then decoded).
    json: JsonDecoder,
    /// Index in `schema` of each key column.
    key_columns: Vec<usize>,
    /// A windowed source: how keys carry the window, and the index in `schema` of the
    /// `WINDOWSTART` and `WINDOWEND` columns taken from it (`None`: declared as values).
    window: Option<(KeyWindow, Option<usize>, Option<usize>)>,
    /// For JSON keys (always, with several key columns): the key's decoder, into a JSON
    /// object of the key columns.
    key_json: Option<JsonDecoder>,
    /// A JSON key of one column is that column's value, not an object.
    key_unwrapped: bool,
}

const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: datafusion::arrow::util::display::FormatOptions::new(),
};

impl RecordDecoder {
    /// A decoder for `columns` (name, type, is key) in `format`.
    pub fn new(format: Format, columns: &[(String, DataType, bool)]) -> Result<Self> {
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|(n, t, _)| Field::new(n, t.clone(), true))
            .collect();
        if columns.iter().any(|c| c.0 == ROWTIME) {
            return Err(SqlError::Invalid(format!(
                "'{ROWTIME}' is the record timestamp; choose another column name"
            )));
        }
        fields.push(Field::new(ROWTIME, DataType::Int64, false));
        let value_fields: Vec<Field> = columns
            .iter()
            .filter(|c| !c.2)
            .map(|(n, t, _)| Field::new(n, t.clone(), true))
            .collect();
        if format == Format::Raw
            && !(value_fields.len() == 1
                && matches!(
                    value_fields[0].data_type(),
                    DataType::Utf8 | DataType::Binary
                ))
        {
            return Err(SqlError::Invalid(
                "format RAW needs exactly one value column, of type VARCHAR or BYTES".into(),
            ));
        }
        let value_schema = Arc::new(Schema::new(value_fields));
        let key_fields: Vec<Field> = columns
            .iter()
            .filter(|c| c.2)
            .map(|(n, t, _)| Field::new(n, t.clone(), true))
            .collect();
        let key_json = (key_fields.len() > 1)
            .then(|| JsonDecoder::new(Arc::new(Schema::new(key_fields))).case_insensitive());
        Ok(RecordDecoder {
            key_json,
            key_unwrapped: false,
            format,
            schema: Arc::new(Schema::new(fields)),
            json: JsonDecoder::new(Arc::new(Schema::new(
                value_schema
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        DataType::Binary => f.as_ref().clone().with_data_type(DataType::Utf8),
                        _ => f.as_ref().clone(),
                    })
                    .collect::<Vec<_>>(),
            )))
            .case_insensitive(),
            value_schema,
            key_columns: columns
                .iter()
                .enumerate()
                .filter(|c| c.1.2)
                .map(|c| c.0)
                .collect(),
            window: None,
        })
    }

    /// The decoder of a windowed source: its keys carry the window, read into the
    /// `WINDOWSTART` and `WINDOWEND` columns (placed before `ROWTIME`; a value column of
    /// that name declared by the source is read from the value instead).
    pub fn with_window(mut self, window: Option<KeyWindow>) -> Result<Self> {
        let Some(window) = window else {
            self.window = None;
            return Ok(self);
        };
        if self.key_columns.is_empty() {
            return Err(SqlError::Invalid(
                "a windowed source needs a key column (the key its windows are of)".into(),
            ));
        }
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let rowtime = fields.pop();
        let mut add = |name: &str| {
            if fields.iter().any(|f| f.name() == name) {
                return None;
            }
            fields.push(Field::new(name, DataType::Int64, true));
            Some(fields.len() - 1)
        };
        let start = add(crate::operators::window::WINDOWSTART);
        let end = add(crate::operators::window::WINDOWEND);
        fields.extend(rowtime);
        self.schema = Arc::new(Schema::new(fields));
        self.window = Some((window, start, end));
        Ok(self)
    }

    /// How the keys carry their window, for a windowed source.
    pub fn key_window(&self) -> Option<KeyWindow> {
        self.window.map(|w| w.0)
    }

    /// The decoder for keys written in `key_format` (several key columns are always a JSON
    /// object).
    pub fn with_key_format(mut self, key_format: KeyFormat) -> Self {
        if key_format == KeyFormat::Json && self.key_columns.len() == 1 {
            let f = self.schema.field(self.key_columns[0]).clone();
            self.key_json =
                Some(JsonDecoder::new(Arc::new(Schema::new(vec![f]))).case_insensitive());
            self.key_unwrapped = true;
        }
        self
    }

    /// The Arrow schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The name of column `i` when it is a BIGINT in JSON values, which
    /// [`sluice_format::json::top_level_i64`] reads without decoding the rest.
    pub fn json_i64_value_column(&self, i: usize) -> Option<&str> {
        let f = self.schema.field(i);
        (self.format == Format::Json
            && !self.key_columns.contains(&i)
            && i + 1 < self.schema.fields().len()
            && f.data_type() == &DataType::Int64)
            .then(|| f.name().as_str())
    }

    /// The names of the key columns, in declared order.
    pub fn key_columns(&self) -> Vec<&str> {
        self.key_columns
            .iter()
            .map(|&i| self.schema.field(i).name().as_str())
            .collect()
    }

    /// Decodes `records`; tombstones (records without a value) are rejected with that reason,
    /// the caller decides what a tombstone means for its source.
    pub fn decode(&self, records: &[Input<'_>]) -> Result<Decoded> {
        let indices: Vec<usize> = (0..records.len()).collect();
        match self.decode_rows(records, &indices) {
            Ok(batch) => Ok(Decoded {
                batch,
                rows: indices,
                rejected: Vec::new(),
            }),
            Err(_) => {
                // Find the bad records one by one; the good ones still make one batch.
                let mut good = Vec::new();
                let mut rows = Vec::new();
                let mut rejected = Vec::new();
                for i in 0..records.len() {
                    match self.decode_rows(records, &[i]) {
                        Ok(b) => {
                            good.push(b);
                            rows.push(i);
                        }
                        Err(e) => rejected.push(Rejected {
                            index: i,
                            reason: e.to_string(),
                        }),
                    }
                }
                let batch = concat_batches(&self.schema, &good)?;
                Ok(Decoded {
                    batch,
                    rows,
                    rejected,
                })
            }
        }
    }

    fn decode_rows(&self, records: &[Input<'_>], rows: &[usize]) -> Result<RecordBatch> {
        let values = self.decode_values(records, rows)?;
        // A windowed key: the key's text and the window, split once per row.
        let split: Option<Vec<WindowedKey<'_>>> = match self.window {
            None => None,
            Some((w, _, _)) => Some(
                rows.iter()
                    .map(|&r| match records[r].key {
                        Some(k) => w.decode(k).map(|(k, s, e)| (Some(k), s, e)),
                        None => Err(SqlError::Invalid(
                            "a record of a windowed source needs a key (the key and its window)"
                                .into(),
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        let (start_col, end_col) = match self.window {
            Some((_, s, e)) => (s, e),
            None => (None, None),
        };
        let mut keys = self.decode_keys(records, rows)?.into_iter();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut next_value = 0;
        for (i, field) in self.schema.fields().iter().enumerate() {
            if field.name() == ROWTIME && i == self.schema.fields().len() - 1 {
                columns.push(Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|&r| records[r].timestamp),
                )));
            } else if let (Some(split), true) = (&split, Some(i) == start_col || Some(i) == end_col)
            {
                let start = Some(i) == start_col;
                columns.push(Arc::new(Int64Array::from_iter_values(
                    split.iter().map(|w| if start { w.1 } else { w.2 }),
                )));
            } else if self.key_columns.contains(&i) {
                columns.push(
                    keys.next()
                        .ok_or_else(|| SqlError::Plan("internal error: key columns".into()))?,
                );
            } else {
                columns.push(Arc::clone(values.column(next_value)));
                next_value += 1;
            }
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// The key columns of `rows` of `records` (whose values may be tombstones), in declared
    /// order. One key column is the key's text, cast to its type. Several are a JSON object
    /// of them (the form ksqlDB writes with `KEY_FORMAT = 'JSON'`), fields matched by name;
    /// a record without a key has them all NULL.
    pub fn decode_keys(&self, records: &[Input<'_>], rows: &[usize]) -> Result<Vec<ArrayRef>> {
        // A windowed source's keys without their window.
        let keys: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|&r| match (self.window, records[r].key) {
                (Some((w, _, _)), Some(k)) => w.decode(k).map(|(k, _, _)| Some(k)),
                (_, k) => Ok(k),
            })
            .collect::<Result<_>>()?;
        if let Some(decoder) = &self.key_json {
            // A one-column JSON key is the bare value: wrapped in an object to decode it.
            let wrapped: Vec<Vec<u8>> = if self.key_unwrapped {
                let name = serde_json::to_string(decoder.schema().field(0).name())
                    .map_err(|e| SqlError::Plan(e.to_string()))?;
                keys.iter()
                    .map(|k| match k {
                        Some(k) => [b"{", name.as_bytes(), b":", *k, b"}"].concat(),
                        None => b"{}".to_vec(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let keys: Vec<&[u8]> = if self.key_unwrapped {
                wrapped.iter().map(Vec::as_slice).collect()
            } else {
                keys.iter().map(|k| k.unwrap_or(b"{}")).collect()
            };
            return decoder
                .decode(keys.into_iter())
                .map(|b| b.columns().to_vec())
                .map_err(|e| SqlError::Invalid(format!("record key: {}", json::reason(&e))));
        }
        self.key_columns
            .iter()
            .map(|&i| {
                let field = self.schema.field(i);
                let keys: StringArray = keys
                    .iter()
                    .map(|k| k.map(String::from_utf8_lossy))
                    .collect();
                cast_with_options(&keys, field.data_type(), &STRICT)
                    .map_err(|e| SqlError::Invalid(format!("key column {}: {e}", field.name())))
            })
            .collect()
    }

    fn decode_values(&self, records: &[Input<'_>], rows: &[usize]) -> Result<RecordBatch> {
        for &r in rows {
            if records[r].value.is_none() {
                return Err(SqlError::Invalid(
                    "the record has no value (a tombstone)".into(),
                ));
            }
        }
        let value = |r: usize| records[r].value.unwrap_or_default();
        match self.format {
            Format::Json | Format::Debezium => {
                let batch = self
                    .json
                    .decode(rows.iter().map(|&r| value(r)))
                    .map_err(invalid)?;
                from_base64(batch, &self.value_schema)
            }
            Format::Delimited => {
                let n = self.value_schema.fields().len();
                let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); n];
                for &r in rows {
                    let v = value(r);
                    let v = v.strip_suffix(b"\n").unwrap_or(v);
                    let v = v.strip_suffix(b"\r").unwrap_or(v);
                    let fields = delimited::split(v).map_err(invalid)?;
                    if fields.len() != n {
                        return Err(SqlError::Invalid(format!(
                            "expected {n} values, found {}",
                            fields.len()
                        )));
                    }
                    for (c, f) in cols.iter_mut().zip(fields) {
                        c.push(if f.is_empty() { None } else { Some(f) });
                    }
                }
                let arrays = cols
                    .into_iter()
                    .zip(self.value_schema.fields())
                    .map(|(c, f)| {
                        let s = StringArray::from(c);
                        cast_with_options(&s, f.data_type(), &STRICT)
                            .map_err(|e| SqlError::Invalid(format!("column {}: {e}", f.name())))
                    })
                    .collect::<Result<Vec<ArrayRef>>>()?;
                Ok(RecordBatch::try_new(
                    Arc::clone(&self.value_schema),
                    arrays,
                )?)
            }
            Format::Raw => {
                let array: ArrayRef = match self.value_schema.field(0).data_type() {
                    DataType::Utf8 => Arc::new(
                        rows.iter()
                            .map(|&r| std::str::from_utf8(value(r)).map(Some))
                            .collect::<Result<StringArray, _>>()
                            .map_err(|e| SqlError::Invalid(format!("not UTF-8: {e}")))?,
                    ),
                    _ => Arc::new(BinaryArray::from_iter(rows.iter().map(|&r| Some(value(r))))),
                };
                Ok(RecordBatch::try_new(
                    Arc::clone(&self.value_schema),
                    vec![array],
                )?)
            }
        }
    }
}

/// `batch` (BYTES columns as base64 text, as ksqlDB writes them in JSON) under `schema`.
fn from_base64(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    use base64::Engine as _;
    use datafusion::arrow::array::{Array, AsArray};
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.data_type() == &DataType::Binary && c.data_type() == &DataType::Utf8 {
            let text = c.as_string::<i32>();
            let mut bytes = Vec::with_capacity(text.len());
            for i in 0..text.len() {
                bytes.push(if text.is_null(i) {
                    None
                } else {
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(text.value(i))
                            .map_err(|e| {
                                SqlError::Invalid(format!(
                                    "column {}: '{}' is not base64 ({e})",
                                    f.name(),
                                    text.value(i)
                                ))
                            })?,
                    )
                });
            }
            columns.push(Arc::new(BinaryArray::from_iter(bytes)) as ArrayRef);
        } else {
            columns.push(Arc::clone(c));
        }
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// The JSON form of a type as ksqlDB writes it: a TIMESTAMP as milliseconds since the
/// epoch, a DATE as days since the epoch, a TIME as milliseconds since midnight (numbers,
/// where arrow's JSON writer writes ISO text), inside arrays, maps and structs too.
fn ksql_json_type(t: &DataType) -> DataType {
    use datafusion::arrow::datatypes::Fields;
    let field = |f: &Field| Arc::new(f.clone().with_data_type(ksql_json_type(f.data_type())));
    match t {
        DataType::Timestamp(..) | DataType::Date64 | DataType::Time64(_) => DataType::Int64,
        DataType::Date32 | DataType::Time32(_) => DataType::Int32,
        DataType::List(f) => DataType::List(field(f)),
        DataType::Struct(fs) => DataType::Struct(Fields::from(
            fs.iter().map(|f| field(f)).collect::<Vec<_>>(),
        )),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

/// `batch` with its columns in their [`ksql_json_type`]s, and BYTES as base64 text (as
/// ksqlDB writes them).
fn as_ksql_json(batch: &RecordBatch) -> Result<RecordBatch> {
    use base64::Engine as _;
    use datafusion::arrow::array::{Array, AsArray};
    let mut changed = false;
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let (t, col): (DataType, ArrayRef) = match f.data_type() {
            DataType::Binary => {
                let b = c.as_binary::<i32>();
                let text: StringArray = (0..b.len())
                    .map(|i| {
                        (!b.is_null(i))
                            .then(|| base64::engine::general_purpose::STANDARD.encode(b.value(i)))
                    })
                    .collect();
                (DataType::Utf8, Arc::new(text))
            }
            t => {
                let want = ksql_json_type(t);
                if &want == t || !datafusion::arrow::compute::can_cast_types(t, &want) {
                    (t.clone(), Arc::clone(c))
                } else {
                    (want.clone(), datafusion::arrow::compute::cast(c, &want)?)
                }
            }
        };
        changed |= &t != f.data_type();
        fields.push(f.as_ref().clone().with_data_type(t));
        columns.push(col);
    }
    if !changed {
        return Ok(batch.clone());
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Encodes each row of `batch` as a record value in `format`; key columns are left to the
/// caller (they become the record key).
pub fn encode_values(format: Format, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    match format {
        Format::Json => {
            json::encode_rows(&as_ksql_json(batch)?).map_err(|e| SqlError::Plan(e.to_string()))
        }
        Format::Delimited => delimited::encode_batch(batch).map_err(invalid),
        Format::Debezium => Err(SqlError::Invalid(
            "format DEBEZIUM is read only (change envelopes come from a CDC source); write JSON"
                .into(),
        )),
        Format::Raw => {
            if batch.num_columns() != 1 {
                return Err(SqlError::Invalid(format!(
                    "format RAW writes one column, the query produces {}",
                    batch.num_columns()
                )));
            }
            let f = datafusion::arrow::util::display::ArrayFormatter::try_new(
                batch.column(0).as_ref(),
                &Default::default(),
            )?;
            Ok((0..batch.num_rows())
                .map(|r| f.value(r).to_string().into_bytes())
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray, Float64Array};
    use datafusion::arrow::datatypes::Int32Type;

    use super::*;

    fn cols() -> Vec<(String, DataType, bool)> {
        vec![
            ("id".into(), DataType::Utf8, true),
            ("zone".into(), DataType::Utf8, false),
            ("fare".into(), DataType::Float64, false),
            ("seats".into(), DataType::Int32, false),
        ]
    }

    fn input<'a>(key: &'a str, value: &'a str, ts: i64) -> Input<'a> {
        Input {
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            timestamp: ts,
        }
    }

    #[test]
    fn json_decodes_with_key_and_rowtime_and_rejects_bad_records() {
        let d = RecordDecoder::new(Format::Json, &cols()).unwrap();
        let recs = [
            input(
                "r1",
                r#"{"zone":"a","fare":12.5,"seats":2,"extra":true}"#,
                10,
            ),
            input("r2", r#"{"zone":"b","fare":"oops","seats":1}"#, 11),
            input("r3", r#"not json"#, 12),
            input("r4", r#"{"zone":"c"}"#, 13),
            Input {
                key: Some(b"r5"),
                value: None,
                timestamp: 14,
            },
        ];
        let out = d.decode(&recs).unwrap();
        assert_eq!(out.rows, vec![0, 3]);
        assert_eq!(
            out.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert!(out.rejected[2].reason.contains("tombstone"));
        let b = &out.batch;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "r4");
        let fare = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(fare.value(0), 12.5);
        assert!(fare.is_null(1));
        assert_eq!(
            b.column(4)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(1),
            13
        );
    }

    #[test]
    fn delimited_and_raw() {
        let d = RecordDecoder::new(Format::Delimited, &cols()).unwrap();
        let out = d
            .decode(&[
                input("k", "\"a, b\",3.5,4", 1),
                input("k", "x,notanumber,1", 2),
                input("k", "x,1", 3),
            ])
            .unwrap();
        assert_eq!(out.rows, vec![0]);
        assert_eq!(out.batch.column(1).as_string::<i32>().value(0), "a, b");
        assert_eq!(out.batch.column(3).as_primitive::<Int32Type>().value(0), 4);
        assert!(
            out.rejected[1].reason.contains("expected 3 values"),
            "{:?}",
            out.rejected
        );

        let raw =
            RecordDecoder::new(Format::Raw, &[("line".into(), DataType::Utf8, false)]).unwrap();
        let out = raw.decode(&[input("k", "hello, world", 5)]).unwrap();
        assert_eq!(
            out.batch.column(0).as_string::<i32>().value(0),
            "hello, world"
        );
        assert!(RecordDecoder::new(Format::Raw, &cols()).is_err());
    }

    #[test]
    fn windowed_keys_are_laid_out_as_kafka_streams_writes_them() {
        // TimeWindowedSerializer: key bytes, then the start as a big-endian long.
        let t = KeyWindow::Tumbling { size: 60_000 };
        let k = t.encode(b"a", 60_000, 120_000);
        assert_eq!(k, [b"a".as_slice(), &60_000i64.to_be_bytes()].concat());
        assert_eq!(t.decode(&k).unwrap(), (b"a".as_slice(), 60_000, 120_000));
        // SessionKeySchema: key bytes, then the end, then the start.
        let s = KeyWindow::Session;
        let k = s.encode(b"u", 1_000, 3_000);
        assert_eq!(
            k,
            [
                b"u".as_slice(),
                &3_000i64.to_be_bytes(),
                &1_000i64.to_be_bytes()
            ]
            .concat()
        );
        assert_eq!(s.decode(&k).unwrap(), (b"u".as_slice(), 1_000, 3_000));
        assert!(s.decode(b"short").is_err());
        assert_eq!(
            KeyWindow::from_properties("hopping", Some("30 SECONDS")).unwrap(),
            KeyWindow::Hopping { size: 30_000 }
        );
        assert!(KeyWindow::from_properties("TUMBLING", None).is_err());
        assert!(KeyWindow::from_properties("TUMBLING", Some("0 SECONDS")).is_err());
    }

    #[test]
    fn a_windowed_decoder_reads_the_window_from_the_key() {
        let d = RecordDecoder::new(Format::Json, &cols())
            .unwrap()
            .with_window(Some(KeyWindow::Session))
            .unwrap();
        let names: Vec<&str> = d
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "zone",
                "fare",
                "seats",
                "WINDOWSTART",
                "WINDOWEND",
                "ROWTIME"
            ]
        );
        let key = KeyWindow::Session.encode(b"r1", 5, 9);
        let out = d
            .decode(&[
                Input {
                    key: Some(&key),
                    value: Some(br#"{"zone":"a"}"#),
                    timestamp: 9,
                },
                input("x", r#"{"zone":"b"}"#, 10),
            ])
            .unwrap();
        assert_eq!(out.rows, vec![0]);
        assert!(out.rejected[0].reason.contains("16 bytes of window"));
        let b = &out.batch;
        assert_eq!(b.column(0).as_string::<i32>().value(0), "r1");
        let i64s = |c: usize| {
            b.column(c)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0)
        };
        assert_eq!((i64s(4), i64s(5), i64s(6)), (5, 9, 9));
    }

    #[test]
    fn encode_round_trips() {
        let d = RecordDecoder::new(Format::Json, &cols()).unwrap();
        let out = d
            .decode(&[input("r1", r#"{"zone":"a,\"q\"","fare":1.5,"seats":2}"#, 1)])
            .unwrap();
        let values = out.batch.project(&[1, 2, 3]).unwrap();
        let json = encode_values(Format::Json, &values).unwrap();
        assert_eq!(
            String::from_utf8(json[0].clone()).unwrap(),
            r#"{"zone":"a,\"q\"","fare":1.5,"seats":2}"#
        );
        let csv = encode_values(Format::Delimited, &values).unwrap();
        assert_eq!(
            String::from_utf8(csv[0].clone()).unwrap(),
            "\"a,\"\"q\"\"\",1.5,2"
        );
        let d2 = RecordDecoder::new(Format::Delimited, &cols()).unwrap();
        let back = d2
            .decode(&[Input {
                key: Some(b"r1"),
                value: Some(&csv[0]),
                timestamp: 1,
            }])
            .unwrap();
        assert_eq!(back.batch.column(1).as_string::<i32>().value(0), "a,\"q\"");
    }
}
