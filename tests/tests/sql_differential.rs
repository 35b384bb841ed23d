//! Differential test: for seeded random inputs (NULLs, out-of-order times), the final result
//! of grouped and windowed streaming queries equals DataFusion's batch evaluation of the
//! equivalent query over the same rows, and so do the rows of stream-table joins (INNER and
//! LEFT) and windowed stream-stream joins (INNER, LEFT, RIGHT and FULL OUTER).
//!
//! The streaming side runs the query's dataflow (memory state) over the records in random
//! batch sizes and keeps the last result emitted per group (joins: every row emitted); the
//! batch side runs DataFusion over the decoded rows, windows expressed with arithmetic on
//! `rowtime`, a stream-table join's "as of" lookup as the table row with the greatest
//! arrival place at or before the stream record's time.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_log::{Log, LogOptions};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::format::Input;
use sluice_sql::query::{Dataflow, compile};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Records `(key, value json, timestamp)`: 10 keys (and NULL), values with NULLs, times
/// moving forward with jitter of up to 3 s backwards.
fn records(seed: u64, n: usize) -> Vec<(Bytes, Bytes, i64)> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut t = 1_000_000i64;
    (0..n)
        .map(|i| {
            t += rng.below(400) as i64;
            let ts = t - rng.below(3000) as i64;
            let k = match rng.below(12) {
                10 | 11 if rng.below(2) == 0 => "null".to_string(),
                x => format!("\"k{}\"", x % 10),
            };
            let v = if rng.below(10) == 0 {
                "null".to_string()
            } else {
                (rng.below(200) as i64 - 100).to_string()
            };
            let price = format!("{}.{}", rng.below(1000), rng.below(100));
            let value = format!(r#"{{"k": {k}, "v": {v}, "price": {price}}}"#);
            (Bytes::from(format!("r{i}")), Bytes::from(value), ts)
        })
        .collect()
}

/// (streaming query, equivalent batch query, number of group columns)
const QUERIES: &[(&str, &str, usize)] = &[
    (
        "SELECT k, COUNT(*) AS n, COUNT(v) AS nv, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, \
         AVG(price) AS mean, COUNT(DISTINCT v) AS dv FROM s GROUP BY k EMIT CHANGES",
        "SELECT k, COUNT(*) AS n, COUNT(v) AS nv, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, \
         AVG(price) AS mean, COUNT(DISTINCT v) AS dv FROM s WHERE k IS NOT NULL GROUP BY k",
        1,
    ),
    (
        "SELECT k, SUM(price) AS total FROM s WHERE v > 0 GROUP BY k HAVING COUNT(*) > 3 EMIT CHANGES",
        "SELECT k, SUM(price) AS total FROM s WHERE v > 0 AND k IS NOT NULL GROUP BY k HAVING COUNT(*) > 3",
        1,
    ),
    (
        "SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, MAX(price) AS hi FROM s \
         WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 1 HOUR) GROUP BY k EMIT CHANGES",
        "SELECT k, rowtime - rowtime % 10000 AS ws, COUNT(*) AS n, MAX(price) AS hi FROM s \
         WHERE k IS NOT NULL GROUP BY k, rowtime - rowtime % 10000",
        2,
    ),
    (
        "SELECT k, WINDOWSTART AS ws, SUM(v) AS total FROM s \
         WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 5 SECONDS, GRACE PERIOD 1 HOUR) GROUP BY k EMIT CHANGES",
        "SELECT k, ws, SUM(v) AS total FROM (SELECT k, v, unnest(make_array(rowtime - rowtime % 5000, \
         rowtime - rowtime % 5000 - 5000)) AS ws FROM s WHERE k IS NOT NULL) GROUP BY k, ws",
        2,
    ),
    (
        "SELECT k, v % 3 AS m, MIN(price) AS lo, COUNT(*) AS n FROM s GROUP BY k, v % 3 EMIT CHANGES",
        "SELECT k, v % 3 AS m, MIN(price) AS lo, COUNT(*) AS n FROM s \
         WHERE k IS NOT NULL AND v IS NOT NULL GROUP BY k, v % 3",
        2,
    ),
];

/// Rows as JSON objects keyed by their first `groups` columns.
fn by_group(batches: &[RecordBatch], groups: usize) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for b in batches {
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
            w.write(b).unwrap();
            w.finish().unwrap();
        }
        for line in String::from_utf8(buf).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .take(groups)
                .map(|f| f.name().clone())
                .collect();
            let key = names
                .iter()
                .map(|n| v[n].to_string())
                .collect::<Vec<_>>()
                .join("|");
            out.insert(key, v);
        }
    }
    out
}

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-6 * x.abs().max(1.0)
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// A log in a temporary directory and an engine over it that does not start persistent
/// queries (the tests run their dataflows themselves).
fn engine() -> (tempfile::TempDir, Log, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let engine = Engine::open_with(
        &log,
        EngineConfig {
            start_queries: false,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    (dir, log, engine)
}

#[test]
fn streaming_results_equal_datafusion_batch_results() {
    let (_dir, log, mut engine) = engine();
    engine
        .execute("CREATE STREAM s (id VARCHAR KEY, k VARCHAR, v BIGINT, price DOUBLE) WITH (topic='s', partitions=1)")
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for seed in 1..=4u64 {
        let recs = records(seed, 1500);
        let inputs: Vec<Input<'_>> = recs
            .iter()
            .map(|(k, v, ts)| Input {
                key: Some(k),
                value: Some(v),
                timestamp: *ts,
            })
            .collect();
        let decoded = engine
            .catalog()
            .get("S")
            .unwrap()
            .decoder()
            .unwrap()
            .decode(&inputs)
            .unwrap();
        assert!(decoded.rejected.is_empty());
        for (stream_sql, batch_sql, groups) in QUERIES {
            let select = match sluice_sql::parse_one(stream_sql).unwrap() {
                sluice_sql::ast::Statement::Select(s) => s,
                other => panic!("{other:?}"),
            };
            let mut flow =
                Dataflow::open(compile(engine.catalog(), &select).unwrap(), None).unwrap();
            let mut streamed = Vec::new();
            let mut rng = Rng(seed + 99);
            let mut i = 0;
            while i < inputs.len() {
                let n = 1 + rng.below(300) as usize;
                let end = (i + n).min(inputs.len());
                let step = flow.process(&inputs[i..end]).unwrap();
                // Rows with a NULL grouping key are left out (as ksqlDB does); the batch
                // queries filter them out with WHERE.
                assert!(
                    step.rejected
                        .iter()
                        .all(|(_, why)| why.contains("is NULL: the row is left out")),
                    "{stream_sql}: {:?}",
                    step.rejected
                );
                // Rows failing HAVING come as deletions of their group.
                let keep: Vec<u32> = (0..step.deleted.len() as u32)
                    .filter(|&j| !step.deleted[j as usize])
                    .collect();
                let deleted: Vec<u32> = (0..step.deleted.len() as u32)
                    .filter(|&j| step.deleted[j as usize])
                    .collect();
                let take = |idx: Vec<u32>| {
                    datafusion::arrow::compute::take_record_batch(
                        &step.batch,
                        &datafusion::arrow::array::UInt32Array::from(idx),
                    )
                    .unwrap()
                };
                streamed.push((take(keep), take(deleted)));
                i = end;
            }
            // The final result: the last row emitted per group, minus deleted groups.
            let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            for (rows, deleted) in &streamed {
                for (k, v) in by_group(std::slice::from_ref(rows), *groups) {
                    last.insert(k, v);
                }
                for (k, _) in by_group(std::slice::from_ref(deleted), *groups) {
                    last.remove(&k);
                }
            }
            // DataFusion folds unquoted names to lower case; the decoded batch's columns
            // are upper case (ksqlDB's rule), so the batch side reads the SQL in upper case
            // (its functions are found in any case).
            let ctx = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new()
                    .set_bool("datafusion.sql_parser.enable_ident_normalization", false),
            );
            let table =
                MemTable::try_new(decoded.batch.schema(), vec![vec![decoded.batch.clone()]])
                    .unwrap();
            ctx.register_table(
                datafusion::common::TableReference::bare("S"),
                Arc::new(table),
            )
            .unwrap();
            let batch_upper = batch_sql.to_uppercase();
            let expected = rt.block_on(async {
                ctx.sql(&batch_upper)
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap()
            });
            let expected = by_group(&expected, *groups);
            assert!(
                expected.len() > 5,
                "seed {seed}: {batch_sql} gave {} groups",
                expected.len()
            );
            assert_eq!(
                last.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "seed {seed}: groups of {stream_sql}"
            );
            for (k, v) in &expected {
                assert!(
                    close(v, &last[k]),
                    "seed {seed}: {stream_sql}: group {k}: batch {v}, streaming {}",
                    last[k]
                );
            }
        }
    }
    drop(engine);
    log.close().unwrap();
}

/// A record of one side of a join: its source (in FROM order), key, value (`None`: a
/// tombstone) and time.
struct Side {
    source: usize,
    key: String,
    value: Option<String>,
    ts: i64,
}

/// Stream-table inputs in arrival order: transactions (source 0, key `t{i}`, an account
/// `a0`..`a9` or NULL, an amount) and account updates and deletions (source 1, key
/// `a0`..`a7`, a limit that may be NULL and a name). Times never go back, often repeat, and
/// at equal times the table's records come first, as the query runner merges them.
fn stream_table_inputs(seed: u64, n: usize) -> Vec<Side> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut t = 1_000_000i64;
    let mut out: Vec<Side> = (0..n)
        .map(|i| {
            // One record in five shares the previous one's time.
            if rng.below(5) != 0 {
                t += rng.below(150) as i64;
            }
            if rng.below(4) == 0 {
                let value = (rng.below(8) != 0).then(|| {
                    let lim = match rng.below(10) {
                        0 => "null".to_string(),
                        x => (x * 100).to_string(),
                    };
                    format!(r#"{{"lim": {lim}, "name": "n{i}"}}"#)
                });
                Side {
                    source: 1,
                    key: format!("a{}", rng.below(8)),
                    value,
                    ts: t,
                }
            } else {
                let acct = match rng.below(11) {
                    10 => "null".to_string(),
                    x => format!("\"a{x}\""),
                };
                Side {
                    source: 0,
                    key: format!("t{i}"),
                    value: Some(format!(
                        r#"{{"acct": {acct}, "amount": {}}}"#,
                        rng.below(1000)
                    )),
                    ts: t,
                }
            }
        })
        .collect();
    out.sort_by_key(|s| (s.ts, s.source == 0));
    out
}

/// Stream-stream inputs in arrival order: views (source 0, key `v{i}`) and clicks (source 1,
/// key `c{i}`), each with a join key `k0`..`k5` or NULL and a number. Times move forward in
/// steps of 250 ms with jitter of up to 2 s backwards (within the queries' 2 s grace period, so that no record is
/// late); a last view and click far later close every window.
fn stream_stream_inputs(seed: u64, n: usize) -> Vec<Side> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut t = 1_000_000i64;
    let mut out: Vec<Side> = (0..n)
        .map(|i| {
            // Times in steps of 250 ms: many pairs lie exactly on a window's bounds.
            t += 250 * rng.below(3) as i64;
            let ts = t - 250 * rng.below(9) as i64;
            let source = rng.below(2) as usize;
            let k = match rng.below(13) {
                12 => "null".to_string(),
                x => format!("\"k{}\"", x % 6),
            };
            let (key, field) = if source == 0 {
                (format!("v{i}"), "a")
            } else {
                (format!("c{i}"), "b")
            };
            Side {
                source,
                key,
                value: Some(format!(r#"{{"k": {k}, "{field}": {}}}"#, rng.below(1000))),
                ts,
            }
        })
        .collect();
    for (source, key, field) in [(0, "vend", "a"), (1, "cend", "b")] {
        out.push(Side {
            source,
            key: key.into(),
            value: Some(format!(r#"{{"k": "end", "{field}": 0}}"#)),
            ts: t + 100_000,
        });
    }
    out
}

/// The batch tables of join inputs: per source, every record as a row of `columns` (read
/// from its JSON value, NULL when absent) with its key as `ID`, its time as `ROWTIME`, its
/// place in the arrival order as `SEQ` and whether it is a tombstone as `DEL`.
fn join_tables(inputs: &[Side], sources: &[(&str, &[(&str, bool)])]) -> Vec<(String, RecordBatch)> {
    use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    sources
        .iter()
        .enumerate()
        .map(|(source, (name, columns))| {
            let rows: Vec<(usize, &Side, serde_json::Value)> = inputs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.source == source)
                .map(|(seq, s)| {
                    let v = s.value.as_deref().map_or(serde_json::Value::Null, |v| {
                        serde_json::from_str(v).unwrap()
                    });
                    (seq, s, v)
                })
                .collect();
            let mut fields = vec![Field::new("ID", DataType::Utf8, false)];
            let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.key.as_str()),
            ))];
            for (c, is_text) in columns.iter() {
                let field = c.to_lowercase();
                if *is_text {
                    fields.push(Field::new(c.to_string(), DataType::Utf8, true));
                    arrays.push(Arc::new(StringArray::from(
                        rows.iter()
                            .map(|r| r.2[&field].as_str().map(str::to_string))
                            .collect::<Vec<_>>(),
                    )));
                } else {
                    fields.push(Field::new(c.to_string(), DataType::Int64, true));
                    arrays.push(Arc::new(Int64Array::from(
                        rows.iter()
                            .map(|r| r.2[&field].as_i64())
                            .collect::<Vec<_>>(),
                    )));
                }
            }
            fields.push(Field::new("ROWTIME", DataType::Int64, false));
            arrays.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1.ts),
            )));
            fields.push(Field::new("SEQ", DataType::Int64, false));
            arrays.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.0 as i64),
            )));
            fields.push(Field::new("DEL", DataType::Boolean, false));
            arrays.push(Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.1.value.is_none()).collect::<Vec<_>>(),
            )));
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
            (name.to_string(), batch)
        })
        .collect()
}

/// Rows as JSON text with sorted keys and explicit NULLs, one per row; `times` adds each
/// row's record timestamp as `TS`.
fn json_rows(batch: &RecordBatch, times: Option<&[i64]>) -> Vec<String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(batch).unwrap();
        w.finish().unwrap();
    }
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut v: BTreeMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();
            if let Some(times) = times {
                v.insert("TS".into(), times[i].into());
            }
            serde_json::to_string(&v).unwrap()
        })
        .collect()
}

/// (streaming query, equivalent batch query): stream-table joins over `TXNS` and `ACCOUNTS`.
/// A transaction joins the account row with the greatest arrival place among those at or
/// before its time (the runner delivers a table's records first at equal times), unless
/// that row is a tombstone.
const STREAM_TABLE_JOINS: &[(&str, &str)] = &[
    (
        "SELECT s.id AS sid, s.acct AS acct, s.amount AS amount, t.lim AS lim, t.name AS name \
         FROM txns s JOIN accounts t ON s.acct = t.id EMIT CHANGES",
        "SELECT S.ID AS SID, S.ACCT AS ACCT, S.AMOUNT AS AMOUNT, U.LIM AS LIM, U.NAME AS NAME, \
         S.ROWTIME AS TS FROM TXNS S \
         JOIN (SELECT S2.ID AS SID, MAX(A.SEQ) AS SEQ FROM TXNS S2 JOIN ACCOUNTS A \
               ON S2.ACCT = A.ID AND A.ROWTIME <= S2.ROWTIME GROUP BY S2.ID) M ON M.SID = S.ID \
         JOIN ACCOUNTS U ON U.SEQ = M.SEQ WHERE NOT U.DEL",
    ),
    (
        "SELECT s.id AS sid, s.acct AS acct, s.amount AS amount, t.lim AS lim, t.name AS name \
         FROM txns s LEFT JOIN accounts t ON s.acct = t.id EMIT CHANGES",
        // A tombstone's columns are NULL, so the latest row being one leaves NULLs.
        "SELECT S.ID AS SID, S.ACCT AS ACCT, S.AMOUNT AS AMOUNT, U.LIM AS LIM, U.NAME AS NAME, \
         S.ROWTIME AS TS FROM TXNS S \
         LEFT JOIN (SELECT S2.ID AS SID, MAX(A.SEQ) AS SEQ FROM TXNS S2 JOIN ACCOUNTS A \
               ON S2.ACCT = A.ID AND A.ROWTIME <= S2.ROWTIME GROUP BY S2.ID) M ON M.SID = S.ID \
         LEFT JOIN ACCOUNTS U ON U.SEQ = M.SEQ",
    ),
];

/// (streaming query, equivalent batch query): windowed stream-stream joins over `VIEWS` and
/// `CLICKS`. `WITHIN (before, after)`: a view at t joins the clicks in [t - before, t + after];
/// a joined row's time is the later record's, an unmatched record's its own; a FULL OUTER
/// join's `ROWKEY` is the join key of whichever side is there.
const STREAM_STREAM_JOINS: &[(&str, &str)] = &[
    (
        "SELECT c.k AS k, v.id AS vid, c.id AS cid, v.a AS a, c.b AS b FROM views v \
         RIGHT JOIN clicks c WITHIN 1 SECOND GRACE PERIOD 2 SECONDS ON v.k = c.k EMIT CHANGES",
        "SELECT C.K AS K, V.ID AS VID, C.ID AS CID, V.A AS A, C.B AS B, \
         CASE WHEN V.ID IS NULL THEN C.ROWTIME ELSE GREATEST(V.ROWTIME, C.ROWTIME) END AS TS \
         FROM VIEWS V RIGHT JOIN CLICKS C ON V.K = C.K AND ABS(V.ROWTIME - C.ROWTIME) <= 1000",
    ),
    (
        "SELECT ROWKEY AS rk, v.id AS vid, c.id AS cid, v.a AS a, c.b AS b FROM views v \
         FULL OUTER JOIN clicks c WITHIN (500 MILLISECONDS, 1 SECOND) GRACE PERIOD 2 SECONDS ON v.k = c.k EMIT CHANGES",
        "SELECT COALESCE(V.K, C.K) AS RK, V.ID AS VID, C.ID AS CID, V.A AS A, C.B AS B, \
         CASE WHEN V.ID IS NULL THEN C.ROWTIME WHEN C.ID IS NULL THEN V.ROWTIME ELSE GREATEST(V.ROWTIME, C.ROWTIME) END AS TS \
         FROM VIEWS V FULL JOIN CLICKS C ON V.K = C.K AND C.ROWTIME - V.ROWTIME BETWEEN -500 AND 1000",
    ),
    (
        "SELECT v.id AS vid, c.id AS cid, v.k AS k, v.a AS a, c.b AS b FROM views v \
         JOIN clicks c WITHIN 1 SECOND GRACE PERIOD 2 SECONDS ON v.k = c.k EMIT CHANGES",
        "SELECT V.ID AS VID, C.ID AS CID, V.K AS K, V.A AS A, C.B AS B, \
         GREATEST(V.ROWTIME, C.ROWTIME) AS TS FROM VIEWS V JOIN CLICKS C \
         ON V.K = C.K AND ABS(V.ROWTIME - C.ROWTIME) <= 1000",
    ),
    (
        "SELECT v.id AS vid, c.id AS cid, v.k AS k, v.a AS a, c.b AS b FROM views v \
         LEFT JOIN clicks c WITHIN 1 SECOND GRACE PERIOD 2 SECONDS ON v.k = c.k EMIT CHANGES",
        "SELECT V.ID AS VID, C.ID AS CID, V.K AS K, V.A AS A, C.B AS B, \
         CASE WHEN C.ID IS NULL THEN V.ROWTIME ELSE GREATEST(V.ROWTIME, C.ROWTIME) END AS TS \
         FROM VIEWS V LEFT JOIN CLICKS C ON V.K = C.K AND ABS(V.ROWTIME - C.ROWTIME) <= 1000",
    ),
    (
        "SELECT v.id AS vid, c.id AS cid, v.k AS k, v.a AS a, c.b AS b FROM views v \
         LEFT JOIN clicks c WITHIN (500 MILLISECONDS, 2 SECONDS) GRACE PERIOD 2 SECONDS \
         ON v.k = c.k EMIT CHANGES",
        "SELECT V.ID AS VID, C.ID AS CID, V.K AS K, V.A AS A, C.B AS B, \
         CASE WHEN C.ID IS NULL THEN V.ROWTIME ELSE GREATEST(V.ROWTIME, C.ROWTIME) END AS TS \
         FROM VIEWS V LEFT JOIN CLICKS C \
         ON V.K = C.K AND C.ROWTIME - V.ROWTIME BETWEEN -500 AND 2000",
    ),
];

/// Runs `stream_sql` over `inputs` (in arrival order, runs of one source in random batch
/// sizes) and returns every row it emitted, with its timestamp.
fn stream_join(engine: &Engine, stream_sql: &str, inputs: &[Side], seed: u64) -> Vec<String> {
    let select = match sluice_sql::parse_one(stream_sql).unwrap() {
        sluice_sql::ast::Statement::Select(s) => s,
        other => panic!("{other:?}"),
    };
    let mut flow = Dataflow::open(compile(engine.catalog(), &select).unwrap(), None).unwrap();
    let mut rng = Rng(seed + 7);
    let mut rows = Vec::new();
    let mut i = 0;
    while i < inputs.len() {
        let source = inputs[i].source;
        let n = 1 + rng.below(40) as usize;
        let end = i + inputs[i..]
            .iter()
            .take(n)
            .take_while(|s| s.source == source)
            .count();
        let batch: Vec<Input<'_>> = inputs[i..end]
            .iter()
            .map(|s| Input {
                key: Some(s.key.as_bytes()),
                value: s.value.as_deref().map(str::as_bytes),
                timestamp: s.ts,
            })
            .collect();
        let step = flow.process_from(source, &batch).unwrap();
        assert!(
            step.rejected.is_empty(),
            "{stream_sql}: {:?}",
            step.rejected
        );
        assert!(step.deleted.iter().all(|d| !d), "{stream_sql}: a deletion");
        rows.extend(json_rows(&step.batch, Some(&step.timestamps)));
        i = end;
    }
    rows.sort();
    rows
}

/// Join queries, their inputs' generator, and each source's batch table (name, columns and
/// whether each is text).
type JoinCase = (
    &'static [(&'static str, &'static str)],
    fn(u64, usize) -> Vec<Side>,
    [(&'static str, &'static [(&'static str, bool)]); 2],
);

#[test]
fn streaming_joins_equal_datafusion_batch_joins() {
    let (_dir, log, mut engine) = engine();
    engine
        .execute(
            "CREATE STREAM txns (id VARCHAR KEY, acct VARCHAR, amount BIGINT) WITH (topic='txns', partitions=1);
             CREATE TABLE accounts (id VARCHAR PRIMARY KEY, lim BIGINT, name VARCHAR) WITH (topic='accounts', partitions=1);
             CREATE STREAM views (id VARCHAR KEY, k VARCHAR, a BIGINT) WITH (topic='views', partitions=1);
             CREATE STREAM clicks (id VARCHAR KEY, k VARCHAR, b BIGINT) WITH (topic='clicks', partitions=1);",
        )
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cases: [JoinCase; 2] = [
        (
            STREAM_TABLE_JOINS,
            stream_table_inputs,
            [
                ("TXNS", &[("ACCT", true), ("AMOUNT", false)][..]),
                ("ACCOUNTS", &[("LIM", false), ("NAME", true)][..]),
            ],
        ),
        (
            STREAM_STREAM_JOINS,
            stream_stream_inputs,
            [
                ("VIEWS", &[("K", true), ("A", false)][..]),
                ("CLICKS", &[("K", true), ("B", false)][..]),
            ],
        ),
    ];
    // More seeds: SLUICE_DIFF_SEEDS=100.
    for seed in 1..=crate::common::env_or("SLUICE_DIFF_SEEDS", 4) {
        for (queries, generate, sources) in &cases {
            let inputs = generate(seed, 1500);
            let ctx = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new()
                    .set_bool("datafusion.sql_parser.enable_ident_normalization", false),
            );
            for (name, batch) in join_tables(&inputs, sources) {
                let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
                ctx.register_table(
                    datafusion::common::TableReference::bare(name),
                    Arc::new(table),
                )
                .unwrap();
            }
            for (stream_sql, batch_sql) in queries.iter() {
                let streamed = stream_join(&engine, stream_sql, &inputs, seed);
                let expected = rt
                    .block_on(async { ctx.sql(batch_sql).await.unwrap().collect().await.unwrap() });
                let mut expected: Vec<String> =
                    expected.iter().flat_map(|b| json_rows(b, None)).collect();
                expected.sort();
                // Not vacuous: rows with and without a match (for outer joins).
                let unmatched = expected.iter().filter(|r| r.contains(":null")).count();
                assert!(
                    expected.len() > 300 && unmatched < expected.len(),
                    "seed {seed}: {batch_sql} gave {} rows, {unmatched} with NULLs",
                    expected.len()
                );
                if stream_sql.contains("LEFT")
                    || stream_sql.contains("RIGHT")
                    || stream_sql.contains("FULL")
                {
                    assert!(
                        unmatched > 20,
                        "seed {seed}: {stream_sql}: {unmatched} with NULLs"
                    );
                }
                if streamed != expected {
                    let extra: Vec<&String> = streamed
                        .iter()
                        .filter(|r| !expected.contains(r))
                        .take(5)
                        .collect();
                    let missing: Vec<&String> = expected
                        .iter()
                        .filter(|r| !streamed.contains(r))
                        .take(5)
                        .collect();
                    panic!(
                        "seed {seed}: {stream_sql}: {} streamed rows, {} batch rows; \
                         streamed only: {extra:#?}; batch only: {missing:#?}",
                        streamed.len(),
                        expected.len()
                    );
                }
            }
        }
    }
    drop(engine);
    log.close().unwrap();
}
