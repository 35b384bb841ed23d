//! Joins: stream-table, stream-stream within a time window, table-table on primary keys and
//! on a foreign key, chained for three or more sources.
//!
//! ```text
//!  source 0 ──► join 0 ──J records──► join 1 ──J records──► ... ──► J records ──► the query's rest
//!  source 1 ──►   ┘                     ▲                          (filters, projections,
//!  source 2 ────────────────────────────┘                           aggregates over J)
//! ```
//!
//! Every join reads and writes the joined row J ([`plan`]): a left record that is a source's
//! is placed in that source's columns of J, a right record in the right source's, and the
//! result fills both. Between joins, and into the query's rest, J rows travel as records
//! (JSON values keyed by the join key) so that a table-valued result carries its updates and
//! deletions the way a table topic does, and the rest of the query runs on them as on any
//! stream or table.
//!
//! State lives in key-value stores with changelogs ([`state`]) that the query commits with
//! its epoch, so a join after a crash resumes exactly where its last committed epoch ended.
//! Keys are compared in a canonical form: the join key cast to one type and written as
//! JSON (`"a"`, `12`), which is also the result records' key.

pub mod plan;
mod state;
mod stream_stream;
mod stream_table;
mod table_table;

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_log::Log;
use sluice_state::StateEnv;

use self::plan::StepPlan;
pub use self::plan::{JoinKind, JoinPlan, ROWKEY, Shape};
use self::state::{Kv, Rec};
use crate::error::{Result, SqlError};
use crate::format::{Format, Input, KeyFormat};
use crate::operators::stateless::Stateless;
use crate::query::{Rows, SourceReader};

/// The names of the stores a join may keep (`<query>-join<N>-<part>`).
pub const STORE_PARTS: [&str; 4] = ["left", "right", "index", "buffer"];

/// A record a join emits: a joined row (a J value) or the deletion of its key.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The result key in canonical form (`None`: a NULL join key kept by an outer join).
    pub key: Option<Bytes>,
    /// The J row as JSON; `None` deletes the key.
    pub value: Option<Bytes>,
    /// Record timestamp.
    pub ts: i64,
    /// Index of the input record that caused it.
    pub origin: usize,
}

/// Joined rows handed to the rest of the query as they are (a stream's results, which are
/// never deletions): the J batch, each row's key in canonical form and its input record.
#[derive(Debug)]
pub struct JoinedRows {
    /// J rows (ROWKEY not filled: it is each row's key, below).
    pub batch: RecordBatch,
    /// Each row's key in canonical form.
    pub keys: Vec<Option<Bytes>>,
    /// Each row's input record.
    pub origins: Vec<usize>,
}

impl Joined {
    /// The record, to decode.
    pub fn input(&self) -> Input<'_> {
        Input {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            timestamp: self.ts,
        }
    }
}

/// What one batch of input records did.
#[derive(Debug, Default)]
pub struct JoinOutput {
    /// Results, in order, as records (between joins, and for table results).
    pub records: Vec<Joined>,
    /// Results as rows, instead of `records`, from the last join of a stream result.
    pub rows: Option<JoinedRows>,
    /// Input records rejected (undecodable, late, a key expression failing), with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Records of an inner join dropped because their join key was NULL.
    pub dropped: u64,
}

/// How one side of a join reads its records into J rows.
#[derive(Debug, Clone)]
struct SideReader {
    reader: SourceReader,
    /// A source's columns in J (first, count); `None`: the records are J rows already.
    block: Option<(usize, usize)>,
}

impl SideReader {
    /// Decodes records (all with values) into J rows: the batch, the record of each row,
    /// and the records that did not decode.
    fn decode(&self, j: &SchemaRef, records: &[Input<'_>]) -> Result<Rows> {
        let rows = self.reader.read(records)?;
        Ok(Rows {
            batch: self.widen(j, &rows.batch)?,
            ..rows
        })
    }

    /// Decodes stored records, which decoded when they were stored.
    fn decode_recs(&self, j: &SchemaRef, recs: &[Rec]) -> Result<RecordBatch> {
        let inputs: Vec<Input<'_>> = recs.iter().map(Rec::input).collect();
        let rows = self.decode(j, &inputs)?;
        if let Some((_, why)) = rows.rejected.first() {
            return Err(SqlError::Invalid(format!(
                "join state: a stored record no longer decodes: {why}"
            )));
        }
        Ok(rows.batch)
    }

    /// A source's decoded rows placed in its columns of J, the others NULL.
    fn widen(&self, j: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let last = j.fields().len() - 1;
        let columns: Vec<ArrayRef> = match self.block {
            None => batch.columns().to_vec(),
            Some((first, count)) => j
                .fields()
                .iter()
                .enumerate()
                .map(|(c, f)| {
                    if c == last {
                        Arc::clone(batch.column(batch.num_columns() - 1))
                    } else if c >= first && c < first + count {
                        Arc::clone(batch.column(c - first))
                    } else {
                        new_null_array(f.data_type(), n)
                    }
                })
                .collect(),
        };
        Ok(RecordBatch::try_new(Arc::clone(j), columns)?)
    }

    /// The primary key of each of `records` (tombstones too) in canonical form: a source's
    /// key column cast to `key_type`, or the key J records carry already.
    fn primary_keys(&self, records: &[Input<'_>], key_type: &DataType) -> Vec<Option<Bytes>> {
        if self.block.is_none() {
            return records
                .iter()
                .map(|r| r.key.map(Bytes::copy_from_slice))
                .collect();
        }
        let rows: Vec<usize> = (0..records.len()).collect();
        // A key that does not decode is no key: the record is refused as keyless.
        let decoded = match self.reader.decode_keys(records, &rows) {
            Ok(k) => k,
            Err(_) => {
                return rows
                    .iter()
                    .map(|&i| {
                        self.reader
                            .decode_keys(records, &[i])
                            .ok()
                            .and_then(|k| k.into_iter().next())
                            .and_then(|k| canonical(&k, key_type).ok())
                            .and_then(|mut v| v.pop().flatten())
                    })
                    .collect();
            }
        };
        match decoded.first() {
            Some(k) => canonical(k, key_type).unwrap_or_else(|_| vec![None; records.len()]),
            None => vec![None; records.len()],
        }
    }
}

/// A side's records with values, decoded into J rows with their join keys.
struct Keyed<'a> {
    /// The J rows.
    batch: RecordBatch,
    /// Each row's join key in canonical form: `Some(None)` is a NULL key, `None` a key
    /// expression that failed (the record is rejected already).
    keys: Vec<Option<Option<Bytes>>>,
    /// Each row's record.
    inputs: Vec<Input<'a>>,
}

/// Each value of `keys` cast to `key_type` in canonical form, JSON (`"a"`, `12`): equal
/// keys of either side have equal bytes, and the bytes are a JSON key the result's readers
/// decode. NULL (or a value that does not cast) is `None`.
fn canonical(keys: &ArrayRef, key_type: &DataType) -> Result<Vec<Option<Bytes>>> {
    let keys = if keys.data_type() == key_type {
        Arc::clone(keys)
    } else {
        cast(keys, key_type)?
    };
    let n = keys.len();
    // Every key written into one buffer, each a slice of it: one allocation per batch,
    // not per row.
    let sliced = |write: &mut dyn FnMut(usize, &mut Vec<u8>) -> bool| {
        let mut buf = Vec::with_capacity(n * 8);
        let spans: Vec<Option<(usize, usize)>> = (0..n)
            .map(|i| {
                let start = buf.len();
                if write(i, &mut buf) {
                    Some((start, buf.len()))
                } else {
                    buf.truncate(start);
                    None
                }
            })
            .collect();
        let all = Bytes::from(buf);
        spans
            .into_iter()
            .map(|s| s.map(|(a, b)| all.slice(a..b)))
            .collect::<Vec<_>>()
    };
    match key_type {
        DataType::Utf8 => {
            let a = keys.as_string::<i32>();
            Ok(sliced(&mut |i, buf| {
                a.is_valid(i) && serde_json::to_writer(buf, a.value(i)).is_ok()
            }))
        }
        DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => {
            let a = cast(&keys, &DataType::Int64)?;
            let a = a.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            Ok(sliced(&mut |i, buf| {
                use std::io::Write;
                a.is_valid(i) && write!(buf, "{}", a.value(i)).is_ok()
            }))
        }
        _ => {
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("K", key_type.clone(), true)])),
                vec![keys],
            )?;
            crate::catalog::record_keys(&batch, KeyFormat::Json)
        }
    }
}

/// A key expression over J rows: one value per row; rows where it fails (a division by
/// zero, a bad cast) are NULL and listed with the reason.
fn eval_keys(expr: &Stateless, batch: &RecordBatch) -> Result<(ArrayRef, Vec<(usize, String)>)> {
    match expr.process(batch) {
        Ok(b) => Ok((Arc::clone(b.column(0)), Vec::new())),
        Err(SqlError::Plan(_)) => {
            let mut parts = Vec::with_capacity(batch.num_rows());
            let mut failed = Vec::new();
            let t = expr.schema().field(0).data_type().clone();
            for i in 0..batch.num_rows() {
                match expr.process(&batch.slice(i, 1)) {
                    Ok(b) => parts.push(Arc::clone(b.column(0))),
                    Err(SqlError::Plan(why)) => {
                        parts.push(new_null_array(&t, 1));
                        failed.push((i, format!("join key: {why}")));
                    }
                    Err(e) => return Err(e),
                }
            }
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            let keys = if refs.is_empty() {
                new_null_array(&t, 0)
            } else {
                datafusion::arrow::compute::concat(&refs)?
            };
            Ok((keys, failed))
        }
        Err(e) => Err(e),
    }
}

/// The event time of each J row (its ROWTIME column).
fn times(batch: &RecordBatch) -> &[i64] {
    batch
        .column(batch.num_columns() - 1)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .values()
}

/// One result of a join before it is assembled: a row of left and right records (indices
/// into the lists the join collected), or a deletion.
#[derive(Debug)]
struct Emit {
    key: Option<Bytes>,
    ts: i64,
    origin: usize,
    /// `None`: the key is deleted.
    row: Option<(Option<u32>, Option<u32>)>,
}

impl Emit {
    /// The joined row of the left and right rows named `(left, right)`, caused by the
    /// record `origin`, at `ts`.
    fn row(key: Option<Bytes>, ts: i64, origin: usize, row: (Option<u32>, Option<u32>)) -> Emit {
        Emit {
            key,
            ts,
            origin,
            row: Some(row),
        }
    }

    /// The deletion of `key`, caused by the record `origin` at `ts`.
    fn deletion(key: Bytes, ts: i64, origin: usize) -> Emit {
        Emit {
            key: Some(key),
            ts,
            origin,
            row: None,
        }
    }
}

/// `(mine, theirs)` as `(left, right)`, for a record of the left side (or the right).
fn sides<T>(is_left: bool, mine: T, theirs: T) -> (T, T) {
    if is_left {
        (mine, theirs)
    } else {
        (theirs, mine)
    }
}

/// What a join's operator sees of its place in the chain.
struct Cx<'a> {
    plan: &'a StepPlan,
    j: &'a SchemaRef,
    left: &'a SideReader,
    right: &'a SideReader,
    right_block: (usize, usize),
    /// Hand the results over as rows (the last join of a stream result).
    as_rows: bool,
    /// With `as_rows`, the columns read after the join (`None`: all); others stay NULL.
    read: Option<&'a [bool]>,
}

impl Cx<'_> {
    /// Assembles the emitted rows from the rows they name on each side (rows of the side's
    /// decoded batch `left_batch` / `right_batch`, or records in `lists`) into `out`: as J
    /// records, or as rows.
    fn finish(
        &self,
        left_batch: Option<&RecordBatch>,
        right_batch: Option<&RecordBatch>,
        lists: Lists,
        out: &mut JoinOutput,
    ) -> Result<()> {
        let Lists {
            lefts,
            rights,
            emits,
        } = lists;
        let rows: Vec<&(Option<u32>, Option<u32>)> =
            emits.iter().filter_map(|e| e.row.as_ref()).collect();
        let left = lefts.sources(self.left, self.j, left_batch, rows.iter().map(|r| r.0))?;
        let right = rights.sources(self.right, self.j, right_batch, rows.iter().map(|r| r.1))?;
        let ts: Vec<i64> = emits
            .iter()
            .filter(|e| e.row.is_some())
            .map(|e| e.ts)
            .collect();
        let last = self.j.fields().len() - 1;
        let (first, count) = self.right_block;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(last + 1);
        for (c, f) in self.j.fields().iter().enumerate() {
            let unread = self.read.is_some_and(|r| !r[c]);
            columns.push(if c == 0 || unread {
                new_null_array(f.data_type(), rows.len())
            } else if c == last {
                Arc::new(Int64Array::from(ts.clone()))
            } else if c >= first && c < first + count {
                right.column(c)?
            } else {
                left.column(c)?
            });
        }
        let batch = RecordBatch::try_new(Arc::clone(self.j), columns)?;
        if self.as_rows && emits.iter().all(|e| e.row.is_some()) {
            let (keys, origins) = emits.into_iter().map(|e| (e.key, e.origin)).unzip();
            out.rows = Some(JoinedRows {
                batch,
                keys,
                origins,
            });
            return Ok(());
        }
        // The value: every column but ROWKEY (the record key) and ROWTIME (its timestamp).
        let values = batch.project(&(1..last).collect::<Vec<_>>())?;
        let mut encoded = crate::format::encode_values(Format::Json, &values)?.into_iter();
        out.records = emits
            .into_iter()
            .map(|e| Joined {
                value: e.row.and_then(|_| encoded.next()).map(Bytes::from),
                key: e.key,
                ts: e.ts,
                origin: e.origin,
            })
            .collect();
        Ok(())
    }
}

/// One input record of a join, in processing order: its side, the record, and the input
/// item it comes from (what results and rejections name).
#[derive(Debug, Clone, Copy)]
struct Event<'a> {
    left: bool,
    input: Input<'a>,
    origin: usize,
}

/// The events of one side: their records, and each one's origin.
struct Side<'a> {
    inputs: Vec<Input<'a>>,
    origins: Vec<usize>,
}

impl<'a> Side<'a> {
    /// The records of `events` on the left (or right) side.
    fn of(events: &[Event<'a>], left: bool) -> Side<'a> {
        let (inputs, origins) = events
            .iter()
            .filter(|e| e.left == left)
            .map(|e| (e.input, e.origin))
            .unzip();
        Side { inputs, origins }
    }

    /// Decodes the side's records (a record without a value is no row) and evaluates `key`
    /// over them: the rows, and each record's row if it has one whose key evaluated.
    /// Records that do not decode and keys that fail are rejected into `out`.
    fn keyed(
        &self,
        cx: &Cx<'_>,
        reader: &SideReader,
        key: &Stateless,
        out: &mut JoinOutput,
    ) -> Result<(Keyed<'a>, Vec<Option<usize>>)> {
        let (inputs, index) = with_values(&self.inputs);
        let rows = reader.decode(cx.j, &inputs)?;
        out.rejected.extend(
            rows.rejected
                .iter()
                .map(|(i, r)| (self.origins[index[*i]], r.clone())),
        );
        let (values, failed) = eval_keys(key, &rows.batch)?;
        let mut keys: Vec<Option<Option<Bytes>>> = canonical(&values, &cx.plan.key_type)?
            .into_iter()
            .map(Some)
            .collect();
        for (row, why) in failed {
            keys[row] = None;
            out.rejected
                .push((self.origins[index[rows.records[row]]], why));
        }
        let mut row_of = vec![None; self.inputs.len()];
        for (row, &i) in rows.records.iter().enumerate() {
            if keys[row].is_some() {
                row_of[index[i]] = Some(row);
            }
        }
        let inputs = rows.records.iter().map(|&i| inputs[i]).collect();
        Ok((
            Keyed {
                batch: rows.batch,
                keys,
                inputs,
            },
            row_of,
        ))
    }

    /// The table updates among the side's records that can apply: each record's canonical
    /// key, `None` for a record that does not decode (the table keeps its row) or has no key,
    /// which are rejected into `out`; and the decoded rows, with each record's row (a
    /// deletion has none).
    fn updates(
        &self,
        cx: &Cx<'_>,
        reader: &SideReader,
        key_type: &DataType,
        out: &mut JoinOutput,
    ) -> Result<Updates> {
        let mut keys = reader.primary_keys(&self.inputs, key_type);
        let (inputs, index) = with_values(&self.inputs);
        let rows = reader.decode(cx.j, &inputs)?;
        let mut undecodable = vec![false; keys.len()];
        for (i, why) in rows.rejected {
            undecodable[index[i]] = true;
            out.rejected.push((self.origins[index[i]], why));
        }
        for (i, key) in keys.iter_mut().enumerate() {
            if undecodable[i] {
                *key = None;
            } else if key.is_none() {
                out.rejected.push((
                    self.origins[i],
                    "a table record needs a key (its primary key)".into(),
                ));
            }
        }
        let mut row_of = vec![None; self.inputs.len()];
        for (row, &i) in rows.records.iter().enumerate() {
            row_of[index[i]] = Some(row as u32);
        }
        Ok(Updates {
            keys,
            batch: rows.batch,
            row_of,
        })
    }
}

/// A table side's updates in a batch ([`Side::updates`]).
struct Updates {
    /// Each record's canonical key, `None` for one that cannot apply.
    keys: Vec<Option<Bytes>>,
    /// The decoded rows.
    batch: RecordBatch,
    /// Each record's row in `batch` (`None`: a deletion, or not decoded).
    row_of: Vec<Option<u32>>,
}

/// The rows a batch's results name, and the results.
#[derive(Debug, Default)]
struct Lists {
    lefts: List,
    rights: List,
    emits: Vec<Emit>,
}

impl Lists {
    /// Adds a left (or right) record; its index in its list.
    fn add(&mut self, rec: Rec, left: bool) -> u32 {
        self.side(left).add(rec)
    }

    fn side(&mut self, left: bool) -> &mut List {
        if left {
            &mut self.lefts
        } else {
            &mut self.rights
        }
    }
}

/// An index in a [`List`] that names a record of the list, not a row of the side's batch.
const LISTED: u32 = 1 << 31;

/// The rows one side's results name: rows of the side's decoded batch (plain indices) and
/// records (indices with [`LISTED`] set). A stored record named by many results (an auction
/// matching each of its bids) is decoded once.
#[derive(Debug, Default)]
struct List {
    recs: Vec<Rec>,
    /// The index of each stored form (see [`Rec::encode_input`]) listed.
    seen: foldhash::HashMap<Bytes, u32>,
    /// The index of each buffered record listed, by its (time, sequence).
    buffered: foldhash::HashMap<(i64, u64), u32>,
}

impl List {
    /// Adds a record; its index.
    fn add(&mut self, rec: Rec) -> u32 {
        self.recs.push(rec);
        LISTED | (self.recs.len() as u32 - 1)
    }

    /// Adds a record in its stored form, once however often it is added; its index.
    fn stored(&mut self, form: Bytes) -> Result<u32> {
        if let Some(&i) = self.seen.get(&form) {
            return Ok(i);
        }
        let i = self.add(Rec::decode(&form, 0)?);
        self.seen.insert(form, i);
        Ok(i)
    }

    /// Adds a stream-stream join's buffered record (its time and sequence name it) in its
    /// stored form, once however often it is added; its index. Cheaper than
    /// [`List::stored`], which hashes the whole record.
    fn buffered(&mut self, id: (i64, u64), form: Bytes) -> Result<u32> {
        if let Some(&i) = self.buffered.get(&id) {
            return Ok(i);
        }
        let i = self.add(Rec::decode(&form, 0)?);
        self.buffered.insert(id, i);
        Ok(i)
    }

    /// The rows `picks` names (`None`: a NULL row), ready to take columns from.
    fn sources(
        self,
        reader: &SideReader,
        j: &SchemaRef,
        batch: Option<&RecordBatch>,
        picks: impl Iterator<Item = Option<u32>>,
    ) -> Result<Picked> {
        // Sources: the side's batch, the listed records decoded, one row of NULLs.
        let mut batches = Vec::with_capacity(3);
        let from_batch = batch.map(|b| {
            batches.push(b.clone());
            batches.len() - 1
        });
        let from_recs = if self.recs.is_empty() {
            None
        } else {
            batches.push(reader.decode_recs(j, &self.recs)?);
            Some(batches.len() - 1)
        };
        batches.push(null_row(j)?);
        let nulls = batches.len() - 1;
        let internal = || SqlError::Plan("internal error: a join result names no row".into());
        let picks = picks
            .map(|p| match p {
                None => Ok((nulls, 0)),
                Some(i) if i & LISTED != 0 => {
                    Ok((from_recs.ok_or_else(internal)?, (i & !LISTED) as usize))
                }
                Some(i) => Ok((from_batch.ok_or_else(internal)?, i as usize)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Picked { batches, picks })
    }
}

/// One side's rows for a batch of results: where each result's row is.
struct Picked {
    batches: Vec<RecordBatch>,
    /// (batch, row) of each result.
    picks: Vec<(usize, usize)>,
}

impl Picked {
    /// Column `c` of J, one value per result.
    fn column(&self, c: usize) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(c).as_ref()).collect();
        Ok(datafusion::arrow::compute::interleave(
            &arrays,
            &self.picks,
        )?)
    }
}

/// One J row of NULLs.
fn null_row(j: &SchemaRef) -> Result<RecordBatch> {
    let columns = j
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    Ok(RecordBatch::try_new(Arc::clone(j), columns)?)
}

/// The operator of one join.
trait JoinOp: std::fmt::Debug + Send {
    /// Records of both sides, in order: each side's are decoded together, then applied
    /// one by one in this order (a table update between two stream records is seen by the
    /// second only).
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput>;
    /// Its state.
    fn kvs(&mut self) -> Vec<&mut Kv>;
    /// Writes what it keeps in memory during an epoch into its stores; called before the
    /// stores' changes are taken for the epoch's commit.
    fn flush(&mut self) {}
    /// Drops the uncommitted state of an aborted epoch.
    fn abort(&mut self) {
        for k in self.kvs() {
            k.abort();
        }
    }
    /// Entries it holds in memory that its stores do not count yet.
    fn unflushed_entries(&self) -> usize {
        0
    }
}

#[derive(Debug)]
struct JoinStep {
    plan: StepPlan,
    left: SideReader,
    right: SideReader,
    right_block: (usize, usize),
    op: Box<dyn JoinOp>,
}

/// A FROM clause's joins with their state, fed the sources' records.
#[derive(Debug)]
pub struct Join {
    steps: Vec<JoinStep>,
    j: SchemaRef,
    /// Each source's value format.
    formats: Vec<Format>,
    /// The columns of J read after the last join, when its results go on as rows (`None`:
    /// every one); the others are left NULL.
    read: Option<Vec<bool>>,
}

impl Join {
    /// Opens the joins of `plan`: with `state` (env, log, store name prefix) their stores are
    /// opened and restored; without, state lives in memory.
    pub fn open(plan: &JoinPlan, state: Option<(&StateEnv, &Log, &str)>) -> Result<Join> {
        let inner = SourceReader::new(&plan.inner_def)?;
        // Every column may be NULL in J: a side without a match leaves its columns empty.
        let j: SchemaRef = Arc::new(Schema::new(
            inner
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let side = |i: usize| -> Result<SideReader> {
            let s = &plan.sources[i];
            Ok(SideReader {
                reader: SourceReader::new(&s.def)?,
                block: Some((s.first, s.columns)),
            })
        };
        let mut steps = Vec::with_capacity(plan.steps.len());
        for (k, sp) in plan.steps.iter().enumerate() {
            let left = if k == 0 {
                side(0)?
            } else {
                SideReader {
                    reader: inner.clone(),
                    block: None,
                }
            };
            let right = side(k + 1)?;
            let name = |part: &str| format!("join{k}-{part}");
            let op: Box<dyn JoinOp> = match sp.shape {
                Shape::StreamTable => Box::new(stream_table::StreamTable {
                    rows: Kv::open(state, &name("right"))?,
                }),
                Shape::StreamStream {
                    before,
                    after,
                    grace,
                } => Box::new(stream_stream::StreamStream::open(
                    state,
                    &name("buffer"),
                    before,
                    after,
                    grace,
                )?),
                Shape::TableTable => Box::new(table_table::TableTable {
                    left_rows: Kv::open(state, &name("left"))?,
                    right_rows: Kv::open(state, &name("right"))?,
                }),
                Shape::ForeignKey => Box::new(table_table::ForeignKey {
                    left_rows: Kv::open(state, &name("left"))?,
                    right_rows: Kv::open(state, &name("right"))?,
                    index: Kv::open(state, &name("index"))?,
                }),
            };
            let s = &plan.sources[k + 1];
            steps.push(JoinStep {
                plan: sp.clone(),
                left,
                right,
                right_block: (s.first, s.columns),
                op,
            });
        }
        let formats = plan.sources.iter().map(|s| s.def.format).collect();
        Ok(Join {
            steps,
            j,
            formats,
            read: None,
        })
    }

    /// Whether a source holds change envelopes ([`Format::Debezium`]).
    pub fn has_envelopes(&self) -> bool {
        self.formats.contains(&Format::Debezium)
    }

    /// The value format of source `i`.
    pub fn source_format(&self, i: usize) -> Format {
        self.formats.get(i).copied().unwrap_or(Format::Json)
    }

    /// Runs records of any of the sources (`(source, record)`, in processing order) through
    /// the joins: each join takes its sides' records in that order, the records of the join
    /// before it (caused by an item) placed where that item was. Results and rejections name
    /// items by their index in `items`.
    pub fn process_mixed(&mut self, items: &[(usize, Input<'_>)]) -> Result<JoinOutput> {
        let mut rejected = Vec::new();
        let mut dropped = 0;
        let mut prev: Option<JoinOutput> = None;
        for k in 0..self.steps.len() {
            let rights = items
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| *s == k + 1)
                .map(|(i, (_, input))| Event {
                    left: false,
                    input: *input,
                    origin: i,
                });
            let mut events: Vec<Event<'_>> = match &prev {
                None => items
                    .iter()
                    .enumerate()
                    .filter(|(_, (s, _))| *s == 0)
                    .map(|(i, (_, input))| Event {
                        left: true,
                        input: *input,
                        origin: i,
                    })
                    .chain(rights)
                    .collect(),
                Some(p) => p
                    .records
                    .iter()
                    .map(|r| Event {
                        left: true,
                        input: r.input(),
                        origin: r.origin,
                    })
                    .chain(rights)
                    .collect(),
            };
            // In item order; a join's results (left) follow the item that caused them.
            events.sort_by_key(|e| e.origin);
            let out = self.run(k, &events)?;
            if let Some(p) = prev.take() {
                rejected.extend(p.rejected);
                dropped += p.dropped;
            }
            prev = Some(out);
        }
        let mut out = prev.unwrap_or_default();
        out.rejected.extend(rejected);
        out.rejected.sort_by_key(|r| r.0);
        out.dropped += dropped;
        Ok(out)
    }

    /// Says which columns of J the operators after the joins read (`None`: any): the
    /// last join builds only those (and the key and time) of the rows it hands them.
    pub fn set_read_columns(&mut self, read: Option<&[usize]>) {
        let width = self.j.fields().len();
        self.read = read.map(|cols| {
            let mut mask = vec![false; width];
            for &c in cols.iter().filter(|&&c| c < width) {
                mask[c] = true;
            }
            mask[0] = true;
            mask[width - 1] = true;
            mask
        });
    }

    fn run(&mut self, k: usize, events: &[Event<'_>]) -> Result<JoinOutput> {
        let last = k + 1 == self.steps.len();
        let step = &mut self.steps[k];
        let as_rows = last
            && matches!(
                step.plan.shape,
                Shape::StreamTable | Shape::StreamStream { .. }
            );
        let cx = Cx {
            plan: &step.plan,
            j: &self.j,
            left: &step.left,
            right: &step.right,
            right_block: step.right_block,
            as_rows,
            read: self.read.as_deref().filter(|_| as_rows),
        };
        if events.is_empty() {
            return Ok(JoinOutput::default());
        }
        step.op.process(&cx, events)
    }

    /// The state stores (persistent queries).
    pub fn stores_mut(&mut self) -> Vec<&mut dyn sluice_state::StateStore> {
        self.steps
            .iter_mut()
            .flat_map(|s| s.op.kvs())
            .filter_map(|k| k.store_mut())
            .collect()
    }

    /// Drops the uncommitted state of an aborted epoch: each operator goes back to its
    /// stores' committed state (what it keeps in memory included).
    pub fn abort(&mut self) {
        for s in self.steps.iter_mut() {
            s.op.abort();
        }
    }

    /// Writes the epoch's state that operators keep in memory into their stores, before the
    /// stores' changes are committed.
    pub fn flush(&mut self) {
        for s in self.steps.iter_mut() {
            s.op.flush();
        }
    }

    /// Entries held in join state, for tests of its bounds.
    pub fn state_entries(&mut self) -> usize {
        self.steps
            .iter_mut()
            .map(|s| {
                let unflushed = s.op.unflushed_entries();
                unflushed
                    + s.op
                        .kvs()
                        .iter()
                        .map(|k| k.approximate_len())
                        .sum::<usize>()
            })
            .sum()
    }
}

/// The records of `records` with values, and their indices.
fn with_values<'a>(records: &[Input<'a>]) -> (Vec<Input<'a>>, Vec<usize>) {
    let mut inputs = Vec::with_capacity(records.len());
    let mut index = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if r.value.is_some() {
            inputs.push(*r);
            index.push(i);
        }
    }
    (inputs, index)
}

#[cfg(test)]
mod tests {
    use crate::engine::Engine;
    use crate::format::Input;
    use crate::query::{Dataflow, compile};

    /// A push query's dataflow over `sql` (a SELECT ... EMIT CHANGES) after `setup`.
    fn flow(setup: &str, sql: &str) -> (tempfile::TempDir, Dataflow) {
        let dir = tempfile::tempdir().unwrap();
        let log = sluice_log::Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let mut e = Engine::open(&log).unwrap();
        e.execute(setup).unwrap();
        let crate::ast::Statement::Select(select) = crate::parse_one(sql).unwrap() else {
            panic!("not a select")
        };
        let q = compile(e.catalog(), &select).unwrap();
        (dir, Dataflow::open(q, None).unwrap())
    }

    #[test]
    fn outer_rows_of_many_records_at_one_time_come_out_once_and_the_buffer_empties() {
        outer_rows_of_many_records(false);
    }

    /// The same with the buffer moved to the store after every batch, as an epoch commit
    /// does: matching and expiry then read the store (and the expiry index's prefetch).
    #[test]
    fn outer_rows_of_many_stored_records_come_out_once_and_the_buffer_empties() {
        outer_rows_of_many_records(true);
    }

    fn outer_rows_of_many_records(flush: bool) {
        let (_d, mut f) = flow(
            "CREATE STREAM a (id VARCHAR KEY, k VARCHAR) WITH (topic='a', partitions=1);
             CREATE STREAM b (id VARCHAR KEY, k VARCHAR) WITH (topic='b', partitions=1);",
            "SELECT a.id, b.id AS b_id FROM a LEFT JOIN b WITHIN 1 SECOND GRACE PERIOD 0 SECONDS ON a.k = b.k EMIT CHANGES",
        );
        // More records at one timestamp than the expiry index prefetches, in two batches,
        // some matched, then one record far later closing every window.
        let n = 3 * super::stream_stream::PREFETCH + 7;
        let values: Vec<(String, String)> = (0..n)
            .map(|i| (format!("a{i}"), format!("{{\"k\": \"k{i}\"}}")))
            .collect();
        let inputs: Vec<Input<'_>> = values
            .iter()
            .map(|(k, v)| Input {
                key: Some(k.as_bytes()),
                value: Some(v.as_bytes()),
                timestamp: 1000,
            })
            .collect();
        let (first, second) = inputs.split_at(n / 2);
        let epoch = |f: &mut Dataflow| {
            if flush {
                f.flush().unwrap();
            }
        };
        assert_eq!(f.process_from(0, first).unwrap().batch.num_rows(), 0);
        epoch(&mut f);
        assert_eq!(f.process_from(0, second).unwrap().batch.num_rows(), 0);
        epoch(&mut f);
        let b = br#"{"k": "k5"}"#;
        let matched = f
            .process_from(
                1,
                &[Input {
                    key: Some(b"b5"),
                    value: Some(b),
                    timestamp: 1500,
                }],
            )
            .unwrap();
        assert_eq!(matched.batch.num_rows(), 1);
        epoch(&mut f);
        let late = br#"{"k": "zz"}"#;
        let step = f
            .process_from(
                0,
                &[Input {
                    key: Some(b"last"),
                    value: Some(late),
                    timestamp: 100_000,
                }],
            )
            .unwrap();
        // Every record but the matched one, once; the last one waits for its window.
        assert_eq!(step.batch.num_rows(), n - 1);
        let ids = step.batch.column(0).as_any();
        let ids = ids
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        let distinct: std::collections::BTreeSet<&str> = ids.iter().flatten().collect();
        assert_eq!(distinct.len(), n - 1);
        assert!(!distinct.contains("a5"));
        // The buffer holds the last record (entry and index) and the stream time.
        assert_eq!(f.join_state_entries(), 3);
    }
}
