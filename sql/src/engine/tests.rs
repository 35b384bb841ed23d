//! The engine's statements end to end, over a log in a temporary directory.

use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use sluice_log::Log;

use super::{Engine, Output};
use crate::catalog::Catalog;
use crate::error::SqlError;

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
    let e = Engine::open(&log).unwrap();
    (dir, e)
}

fn rows(out: Output) -> String {
    match out {
        Output::Rows(b) => b
            .iter()
            .map(|b| {
                pretty_format_batches(std::slice::from_ref(b))
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected rows, got {other:?}"),
    }
}

#[test]
fn create_insert_and_push_query_with_filter_and_limit() {
    let (_d, mut e) = engine();
    let out = e
        .execute(
            "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, fare DOUBLE) WITH (topic='rides', partitions=2);
             INSERT INTO rides (id, zone, fare) VALUES ('r1', 'airport', 30.5), ('r2', 'harbor', 8.0);
             INSERT INTO rides VALUES ('r3', 'airport', 12 + 3), ('r4', UPPER('x'), NULL);",
        )
        .unwrap();
    assert!(matches!(&out[0], Output::Message(m) if m.contains("created")));
    assert!(matches!(&out[2], Output::Message(m) if m.contains("Inserted 2")));
    let mut out = e
        .execute(
            "SELECT id, fare * 2 AS twice FROM rides WHERE zone = 'airport' EMIT CHANGES LIMIT 2",
        )
        .unwrap();
    let Some(Output::Push(mut q)) = out.pop() else {
        panic!()
    };
    let mut got = Vec::new();
    for _ in 0..20 {
        if let Some(b) = q.poll(Duration::from_millis(50)).unwrap() {
            got.push(b);
        }
        if q.done() {
            break;
        }
    }
    assert!(q.done());
    let text = pretty_format_batches(&got).unwrap().to_string();
    assert!(
        text.contains("| r1 | 61.0  |") && text.contains("| r3 | 30.0  |"),
        "{text}"
    );
}

#[test]
fn show_describe_drop_and_errors() {
    let (_d, mut e) = engine();
    e.execute(
        "CREATE STREAM s (a INT, b VARCHAR) WITH (topic='s', partitions=1, format='DELIMITED')",
    )
    .unwrap();
    let streams = rows(e.execute("SHOW STREAMS").unwrap().remove(0));
    assert!(
        streams.contains("| S    | s     | DELIMITED |"),
        "{streams}"
    );
    let d = rows(e.execute("DESCRIBE EXTENDED s").unwrap().remove(0));
    assert!(
        d.contains("| A       | INT     |") && d.contains("ROWTIME") && d.contains("DELIMITED"),
        "{d}"
    );
    let err = e
        .execute("SELECT nope FROM s EMIT CHANGES")
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOPE"), "{err}");
    let err = e
        .execute("INSERT INTO s (zzz) VALUES (1)")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ZZZ"), "{err}");
    let err = e
        .execute("INSERT INTO s (a) VALUES ('not a number')")
        .unwrap_err()
        .to_string();
    assert!(err.contains("column A"), "{err}");
    let err = e
        .execute("SELECT * FROM\n s WHERE")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
    assert!(
        matches!(&e.execute("DROP STREAM s DELETE TOPIC").unwrap()[0], Output::Message(m) if m.contains("dropped"))
    );
    assert!(e.execute("DESCRIBE s").is_err());
}

/// Statements just inside the depth limit run end to end (parse, plan, evaluate, start a
/// persistent query, drop) on a thread with a worker's 2 MiB stack; just outside, the
/// error names the limit and the engine goes on.
#[test]
fn deep_statements_run_or_are_refused_on_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let (_d, mut e) = engine();
            e.execute("CREATE STREAM s (id VARCHAR KEY, a BIGINT) WITH (topic='s', partitions=1)")
                .unwrap();
            let sum = |n: usize| vec!["1"; n].join("+");
            e.execute(&format!("INSERT INTO s (id, a) VALUES ('q', {})", sum(255)))
                .unwrap();
            let err = e
                .execute(&format!(
                    "INSERT INTO s (id, a) VALUES ('q', {})",
                    sum(2_000)
                ))
                .unwrap_err();
            assert!(matches!(err, SqlError::TooDeep { limit: 256, .. }), "{err}");
            // At the limit, evaluated per record on the query's own (2 MiB) thread.
            let ands = vec!["a > 0"; 120].join(" AND ");
            let parens = format!("{}a{}", "(".repeat(100), ")".repeat(100));
            e.execute(&format!(
                "CREATE STREAM t AS SELECT id, a{} AS a, {parens} AS b FROM s WHERE {ands}",
                "+1".repeat(255)
            ))
            .unwrap();
            assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
            let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
            assert!(
                queries.contains("RUNNING") && queries.contains("in 1 / out 1"),
                "{queries}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn insert_values_refuses_overflow_and_division_by_zero() {
    let (_d, mut e) = engine();
    e.execute("CREATE STREAM s (id VARCHAR KEY, a BIGINT, x DOUBLE, i INT) WITH (topic='s', partitions=1)")
        .unwrap();
    for (values, expected) in [
        (
            "('q', 9223372036854775807 + 1, 0, 0)",
            "Arithmetic overflow",
        ),
        ("('q', 0, 1.0 / 0, 0)", "Divide by zero"),
        ("('q', 1 / 0, 0, 0)", "Divide by zero"),
        ("('q', 0, 0, 2147483647 + 1)", "column I"),
    ] {
        let err = e
            .execute(&format!("INSERT INTO s (id, a, x, i) VALUES {values}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{values}: {err}");
    }
    let topic = e.log.describe_topic("s").unwrap();
    assert_eq!(topic.partitions[0].log_end_offset, 0, "nothing was written");
    e.execute("INSERT INTO s (id, a, x, i) VALUES ('q', 9223372036854775806 + 1, 7.0 / 2, 1)")
        .unwrap();
}

/// A persistent query stored by an older version, outside today's window bounds, is not
/// started (it would exhaust memory again at every start): SHOW QUERIES says FAILED and
/// why, and TERMINATE and DROP still work.
#[test]
fn a_stored_query_outside_the_window_bounds_fails_to_start_and_terminates() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
    {
        let mut e = Engine::open(&log).unwrap();
        e.execute(
            "CREATE STREAM s (id VARCHAR KEY, k VARCHAR) WITH (topic='s', partitions=1);
             INSERT INTO s (id, k) VALUES ('1', 'a');
             CREATE TABLE c AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 1 MINUTE) GROUP BY k;",
        )
        .unwrap();
        let err = e
            .execute("CREATE TABLE d AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 10 MINUTES, ADVANCE BY 1 MILLISECONDS) GROUP BY k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("600000 windows; the limit is 100"), "{err}");
        assert!(e.catalog().get("d").is_err(), "nothing was created");
    }
    // What an older version without the bound would have stored.
    let mut catalog = Catalog::open(&log).unwrap();
    let id = catalog.queries().next().unwrap().id.clone();
    let mut def = catalog.remove_query(&id).unwrap();
    def.statement = def
        .statement
        .replace("ADVANCE BY 1 MINUTE", "ADVANCE BY 1 MILLISECONDS");
    catalog.add_query(def).unwrap();
    drop(catalog);

    let mut e = Engine::open(&log).unwrap();
    assert!(!e.queries().is_running(&id));
    let failure = e.queries().failure(&id).unwrap().to_string();
    assert!(failure.contains("the limit is 100"), "{failure}");
    let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert!(queries.contains("FAILED: HOPPING window"), "{queries}");
    assert!(e.wait_caught_up(Duration::from_secs(5)).unwrap());
    let err = e.execute("DROP TABLE c").unwrap_err().to_string();
    assert!(
        err.contains(&id),
        "DROP is refused while the query exists: {err}"
    );
    e.execute(&format!("TERMINATE {id}")).unwrap();
    assert!(e.queries().failure(&id).is_none());
    e.execute("DROP TABLE c DELETE TOPIC").unwrap();
    let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert!(!queries.contains(&id), "{queries}");
}

#[test]
fn explain_shows_the_plan() {
    let (_d, mut e) = engine();
    e.execute("CREATE STREAM s (a INT) WITH (topic='s', partitions=1)")
        .unwrap();
    let out = e
        .execute("EXPLAIN SELECT a + 1 FROM s WHERE a > 2 EMIT CHANGES")
        .unwrap();
    assert!(
        matches!(&out[0], Output::Message(m) if m.contains("Filter") && m.contains("TableScan: S")),
        "{out:?}"
    );
    let out = e
        .execute("EXPLAIN SELECT a, COUNT(*) AS n FROM s WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 5 SECONDS) GROUP BY a EMIT FINAL")
        .unwrap();
    assert!(
        matches!(&out[0], Output::Message(m) if m.contains("TUMBLING 60000 ms, grace 5000 ms") && m.contains("EMIT FINAL") && m.contains("Aggregate")),
        "{out:?}"
    );
}

#[test]
fn explain_shows_each_join() {
    let (_d, mut e) = engine();
    e.execute(
        "CREATE TABLE c (id VARCHAR PRIMARY KEY, name VARCHAR) WITH (topic='c', partitions=1);
         CREATE STREAM o (oid VARCHAR KEY, cid VARCHAR) WITH (topic='o', partitions=1);
         CREATE STREAM p (pid VARCHAR KEY, cid VARCHAR) WITH (topic='p', partitions=1);",
    )
    .unwrap();
    let out = e
        .execute(
            "EXPLAIN SELECT o.oid, c.name, p.pid FROM o JOIN c ON o.cid = c.id \
             LEFT JOIN p WITHIN (1 SECOND, 2 SECONDS) GRACE PERIOD 3 SECONDS ON o.cid = p.cid EMIT CHANGES",
        )
        .unwrap();
    let Output::Message(m) = &out[0] else {
        panic!("{out:?}")
    };
    for want in [
        "Source 0: stream O AS O (topic o, JSON)",
        "Source 1: table C AS C (topic c, JSON)",
        "Join 0: INNER JOIN C ON O.CID = C.ID (stream-table lookup",
        "Join 1: LEFT JOIN P ON O.CID = P.CID (stream-stream within 1000 ms before and 2000 ms after, grace 3000 ms",
        "TableScan",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

#[test]
fn terminate_removes_every_store_of_a_join_query_and_only_its_own() {
    let (_d, mut e) = engine();
    e.execute(
        "CREATE TABLE a (id VARCHAR PRIMARY KEY, x INT) WITH (topic='a', partitions=1);
         CREATE TABLE b (id VARCHAR PRIMARY KEY, y INT) WITH (topic='b', partitions=1);
         CREATE TABLE ab WITH (topic='ab') AS SELECT a.id, a.x, b.y FROM a JOIN b ON a.id = b.id;
         CREATE TABLE ab2 WITH (topic='ab2') AS SELECT a.id, b.y, a.x FROM a LEFT JOIN b ON a.id = b.id;
         INSERT INTO a (id, x) VALUES ('k', 1);
         INSERT INTO b (id, y) VALUES ('k', 2);",
    )
    .unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(20)).unwrap());
    let join_topics = |e: &Engine| -> Vec<String> {
        let mut t: Vec<String> = e
            .log
            .topic_names()
            .into_iter()
            .filter(|t| t.contains("-join"))
            .collect();
        t.sort();
        t
    };
    let before = join_topics(&e);
    assert_eq!(before.len(), 4, "{before:?}");
    let ids: Vec<String> = e.catalog.queries().map(|q| q.id.clone()).collect();
    e.execute(&format!("TERMINATE {}", ids[0])).unwrap();
    let after = join_topics(&e);
    let gone = ids[0].to_lowercase();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|t| !t.starts_with(&format!("{gone}-"))),
        "{after:?}"
    );
}

#[test]
fn records_an_inner_join_drops_for_a_null_key_are_counted() {
    let (_d, mut e) = engine();
    e.execute(
        "CREATE TABLE c (id VARCHAR PRIMARY KEY, name VARCHAR) WITH (topic='c', partitions=1);
         CREATE STREAM o (oid VARCHAR KEY, cid VARCHAR) WITH (topic='o', partitions=1);
         CREATE STREAM j WITH (topic='j') AS SELECT o.cid, o.oid, c.name FROM o JOIN c ON o.cid = c.id;
         INSERT INTO c (id, name) VALUES ('c1', 'Ann');
         INSERT INTO o (oid, cid) VALUES ('o1', NULL), ('o2', 'c1'), ('o3', NULL);",
    )
    .unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(20)).unwrap());
    let shown = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert!(shown.contains("dropped 2 (NULL join keys)"), "{shown}");
}

fn recorded(e: &Engine, topic: &str) -> Option<(u32, Vec<(String, sluice_log::FieldType)>)> {
    let r = e.log.schemas().latest(&sluice_log::value_subject(topic))?;
    Some((
        r.version,
        r.schema
            .fields
            .into_iter()
            .map(|f| {
                assert!(
                    f.nullable,
                    "{} is nullable: a JSON value may leave it out",
                    f.name
                );
                (f.name, f.ty)
            })
            .collect(),
    ))
}

#[test]
fn schemas_travel_with_topics() {
    use sluice_log::FieldType as T;
    let (_d, mut e) = engine();
    e.execute(
        "CREATE STREAM pay (id VARCHAR KEY, amount BIGINT, note VARCHAR) WITH (topic='pay', partitions=1);",
    )
    .unwrap();
    // The first declaration records the topic's value schema (the key column is the key).
    let pay = vec![
        ("AMOUNT".to_string(), T::Int64),
        ("NOTE".to_string(), T::String),
    ];
    assert_eq!(recorded(&e, "pay"), Some((1, pay.clone())));
    // A reader's narrower declaration does not narrow what the topic is said to hold.
    e.execute("CREATE STREAM pay_amounts (amount BIGINT) WITH (topic='pay');")
        .unwrap();
    assert_eq!(recorded(&e, "pay"), Some((1, pay)));
    // A query's output topic gets the query's columns.
    e.execute("CREATE STREAM big AS SELECT id, amount * 2.5 AS scaled FROM pay WHERE amount > 10;")
        .unwrap();
    assert_eq!(
        recorded(&e, "BIG"),
        Some((1, vec![("SCALED".to_string(), T::Float64)]))
    );
    // A writer whose column changes type where older readers could not follow is refused.
    e.execute("CREATE STREAM other (n VARCHAR) WITH (topic='shared', partitions=1);")
        .unwrap();
    let err = e
        .execute(
            "CREATE STREAM shared_out WITH (topic='shared') AS SELECT id, amount AS n FROM pay;",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("shared-value") && err.contains('N'), "{err}");
    assert!(e.catalog().get("SHARED_OUT").is_err(), "nothing created");
    // DELIMITED values are not described by a schema of fields.
    e.execute("CREATE STREAM csv (a INT) WITH (topic='csv', format='DELIMITED', partitions=1);")
        .unwrap();
    assert_eq!(recorded(&e, "csv"), None);
    // Dropping a stream with its topic drops the topic's schema: a new one starts fresh.
    let id = e
        .catalog()
        .queries()
        .find(|q| q.sink == "BIG")
        .unwrap()
        .id
        .clone();
    e.execute(&format!("TERMINATE {id}; DROP STREAM big DELETE TOPIC;"))
        .unwrap();
    assert_eq!(recorded(&e, "BIG"), None);
}

/// Comments may hold anything: a `;` or a quote inside one neither ends a statement nor
/// opens a string, so what the catalog stores of each statement is that statement, and it
/// is all there after a restart.
#[test]
fn comments_with_semicolons_and_quotes_do_not_cut_stored_statements() {
    use super::split_statement_texts;
    assert_eq!(
        split_statement_texts(
            "CREATE STREAM a (x INT); -- a comment; with a semicolon\n\
             /* and the driver's; block */ CREATE TABLE b AS SELECT ';' AS s FROM a;\n\
             -- trailing; comment"
        ),
        [
            "CREATE STREAM a (x INT)",
            "-- a comment; with a semicolon\n/* and the driver's; block */ CREATE TABLE b AS SELECT ';' AS s FROM a"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
    {
        let mut e = Engine::open(&log).unwrap();
        e.execute(
            "CREATE STREAM a (id VARCHAR KEY, x INT) WITH (topic='a', partitions=1);
             -- a comment; with a semicolon, and each driver's quote
             CREATE TABLE b (id VARCHAR PRIMARY KEY, y INT) WITH (topic='b', partitions=1);
             /* another; one */
             CREATE TABLE c AS SELECT x, COUNT(*) AS n FROM a GROUP BY x; -- done; really",
        )
        .unwrap();
    }
    let mut e = Engine::open(&log).unwrap();
    let tables = rows(e.execute("SHOW TABLES").unwrap().remove(0));
    assert!(tables.contains("B") && tables.contains("C"), "{tables}");
    let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert!(queries.contains("CTAS_C_0"), "{queries}");
    assert!(e.queries().failure("CTAS_C_0").is_none());
}

/// A pipeline's statements run again at every deploy and start: its `INSERT INTO ... SELECT`
/// is the same query each time, not one more reading its input again from the start.
#[test]
fn a_pipelines_insert_select_runs_once_across_deploys() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
    let script =
        "CREATE STREAM IF NOT EXISTS a (id VARCHAR KEY, x INT) WITH (topic='a', partitions=1);
         CREATE STREAM IF NOT EXISTS b (id VARCHAR KEY, x INT) WITH (topic='b', partitions=1);
         INSERT INTO b SELECT id, x FROM a;";
    let config = crate::runner::RunnerConfig::default();
    for _ in 0..3 {
        let mut e = Engine::open(&log).unwrap();
        e.execute_with(script, &config).unwrap();
    }
    let mut e = Engine::open(&log).unwrap();
    let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert_eq!(queries.matches("INSERTQUERY").count(), 1, "{queries}");
    // Typed by hand, a second INSERT is a second query, as in ksqlDB.
    e.execute("INSERT INTO b SELECT id, x FROM a;").unwrap();
    let queries = rows(e.execute("SHOW QUERIES").unwrap().remove(0));
    assert_eq!(queries.matches("INSERTQUERY").count(), 2, "{queries}");
}
