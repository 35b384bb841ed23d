//! Differential test: for seeded random inputs (NULLs, out-of-order times), the final result
//! of grouped and windowed streaming queries equals DataFusion's batch evaluation of the
//! equivalent query over the same rows.
//!
//! The streaming side runs the query's dataflow (memory state) over the records in random
//! batch sizes and keeps the last result emitted per group; the batch side runs DataFusion
//! over the decoded rows, windows expressed with arithmetic on `rowtime`.

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

#[test]
fn streaming_results_equal_datafusion_batch_results() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut engine = Engine::open_with(
        &log,
        EngineConfig {
            start_queries: false,
            ..EngineConfig::default()
        },
    )
    .unwrap();
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
