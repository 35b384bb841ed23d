//! The Postgres CDC source against a real PostgreSQL (the Debian package scripts/setup.sh
//! installs), started by the harness in a temporary folder on a free loopback port with
//! `wal_level = logical`: row changes as Debezium envelopes, exactly once across a restart
//! that the log's commit did not see, and the clear errors.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_connectors::Source;
use sluice_connectors::Wait;
use sluice_connectors::postgres_cdc::{PostgresCdcConfig, PostgresCdcSource, Routed};
use sluice_log::Record;

/// A private PostgreSQL server, stopped (immediately) when dropped.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    pub(crate) fn start(wal_level: &str) -> Postgres {
        Postgres::start_with(wal_level, false)
    }

    /// A server that takes TLS connections only, with a certificate for 127.0.0.1 signed
    /// by `ca.crt` in its folder.
    fn start_tls() -> Postgres {
        Postgres::start_with("logical", true)
    }

    fn start_with(wal_level: &str, tls: bool) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("postgres").exists())
            .expect("PostgreSQL is missing: run scripts/setup.sh, which installs the server these tests start");
        let dir = tempfile::tempdir().unwrap();
        // initdb and postgres refuse to run as root.
        let as_pg = |args: &[&str]| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        };
        run(Command::new("chown").args(["postgres:", dir.path().to_str().unwrap()]));
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        run(&mut as_pg(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "listen_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{}'\nwal_level={wal_level}\nmax_replication_slots=10\nmax_wal_senders=10\nfsync=off\n",
            dir.path().display()
        );
        let append = |file: &str, text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("data").join(file))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append("postgresql.conf", &conf);
        match tls {
            false => append("pg_hba.conf", "host replication all 127.0.0.1/32 trust\n"),
            true => {
                let d = dir.path();
                server_cert(d);
                run(Command::new("chown")
                    .args(["postgres:", d.join("server.key").to_str().unwrap()]));
                run(Command::new("chmod").args(["600", d.join("server.key").to_str().unwrap()]));
                append(
                    "postgresql.conf",
                    &format!(
                        "ssl=on\nssl_cert_file='{0}/server.crt'\nssl_key_file='{0}/server.key'\n",
                        d.display()
                    ),
                );
                // TLS connections only.
                std::fs::write(
                    d.join("data").join("pg_hba.conf"),
                    "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
                )
                .unwrap();
            }
        }
        let log = dir.path().join("pg.log");
        run(&mut as_pg(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]));
        Postgres { dir, bin, port }
    }

    pub(crate) fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server (a fast shutdown: clients are cut off), on the same port.
    fn restart(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-m", "fast", "-w", "restart"]));
    }

    /// Runs SQL with psql; its output, tuples only.
    pub(crate) fn sql(&self, sql: &str) -> String {
        psql(&self.bin, self.port, sql)
    }
}

/// Runs SQL with the psql of `bin` against the server on `port`; its output, tuples only.
fn psql(bin: &std::path::Path, port: u16, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.path().join("data").to_str().unwrap_or_default(),
            ])
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A CA certificate and key, `<name>.crt` and `<name>.key` in `dir`.
/// Makes `ca.crt`/`ca.key` and, signed by it, `server.crt`/`server.key` for 127.0.0.1 in `d`.
pub(crate) fn server_cert(d: &std::path::Path) {
    ca(d, "ca");
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(d).args(args));
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.crt",
    ]);
}

pub(crate) fn ca(dir: &std::path::Path, name: &str) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=Sluice test {name}"),
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.crt"),
    ]));
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(url: &str, tables: &[&str]) -> PostgresCdcConfig {
    serde_json::from_value(
        serde_json::json!({ "url": url, "tables": tables, "status-interval": "200ms" }),
    )
    .unwrap()
}

fn source(pg: &Postgres, position: Option<&[u8]>) -> PostgresCdcSource {
    let mut s = PostgresCdcSource::new(
        config(&pg.url("postgres"), &["accounts"]),
        "p/cdc",
        "pg.{schema}.{table}",
    )
    .unwrap();
    s.open(position).unwrap();
    s
}

fn value(r: &Record) -> Value {
    serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).unwrap()
}

/// Polls until `n` records came (reopening at `position` when the session fails, as the
/// task would), returning them and the last position.
fn poll_records(
    pg: &Postgres,
    s: &mut PostgresCdcSource,
    position: Option<Vec<u8>>,
    n: usize,
) -> (Vec<Routed>, Option<Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut at = position;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records in 60 s: {got:?}",
            got.len()
        );
        match s.poll(10_000, &Wait::timeout(Duration::from_millis(500))) {
            Ok(b) => {
                got.extend(b.routed);
                if b.position.is_some() {
                    at = b.position;
                }
            }
            Err(e) => {
                eprintln!("reopening after: {e}");
                std::thread::sleep(Duration::from_millis(200));
                *s = source(pg, at.as_deref());
            }
        }
    }
    (got, at)
}

#[test]
fn row_changes_arrive_as_debezium_records_once_across_an_uncommitted_restart() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE accounts (id int PRIMARY KEY, note text, amount numeric(12,2), tags text[], seen timestamptz)");
    let mut s = source(&pg, None);
    // The slot exists once the session has started: changes from then on are captured.
    let deadline = Instant::now() + Duration::from_secs(30);
    let slot = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
        s.slot()
    );
    while pg.sql(&slot) != "1" {
        assert!(Instant::now() < deadline, "no slot after 30 s");
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert!(b.routed.is_empty());
    }
    pg.sql(
        "BEGIN; INSERT INTO accounts VALUES (1, 'a', 10.50, '{x,\"y z\"}', '2024-03-01 12:00:00+05:30'), (2, 'b', 20, NULL, NULL); COMMIT",
    );
    pg.sql("UPDATE accounts SET amount = 11 WHERE id = 1");
    pg.sql("DELETE FROM accounts WHERE id = 2");
    let (got, p1) = poll_records(&pg, &mut s, None, 5);
    let ops: Vec<(String, String)> = got
        .iter()
        .map(|(t, r)| {
            let op = match r.value {
                Some(_) => value(r)["op"].as_str().unwrap_or_default().to_string(),
                None => "tombstone".into(),
            };
            (
                t.clone(),
                format!(
                    "{op} {}",
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default())
                ),
            )
        })
        .collect();
    let want = |op: &str, id: u32| {
        (
            "pg.public.accounts".to_string(),
            format!("{op} {{\"id\":{id}}}"),
        )
    };
    assert_eq!(
        ops,
        vec![
            want("c", 1),
            want("c", 2),
            want("u", 1),
            want("d", 2),
            want("tombstone", 2)
        ]
    );
    let first = value(&got[0].1);
    assert_eq!(first["after"]["note"], "a");
    assert_eq!(first["after"]["amount"], "10.50");
    assert_eq!(first["after"]["tags"], serde_json::json!(["x", "y z"]));
    assert_eq!(first["after"]["seen"], "2024-03-01T06:30:00Z");
    assert_eq!(first["source"]["table"], "accounts");
    assert_eq!(first["source"]["txId"], value(&got[1].1)["source"]["txId"]);
    assert_eq!(value(&got[2].1)["after"]["amount"], "11.00");
    assert_eq!(value(&got[3].1)["before"]["id"], 2);
    // The log commits everything so far.
    s.committed();

    // A transaction polled but never committed to the log, then a restart at the committed
    // position: it comes again, and nothing before it does.
    pg.sql("INSERT INTO accounts VALUES (3, 'c', 30, NULL, NULL)");
    let (lost, _) = poll_records(&pg, &mut s, p1.clone(), 1);
    assert_eq!(lost.len(), 1);
    pg.sql("INSERT INTO accounts VALUES (4, 'd', 40, NULL, NULL)");
    // The task's next attempt opens the same source again at its committed position.
    s.open(p1.as_deref()).unwrap();
    let (again, _) = poll_records(&pg, &mut s, p1, 2);
    let keys: Vec<String> = again
        .iter()
        .map(|(_, r)| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(keys, vec!["{\"id\":3}", "{\"id\":4}"]);
    let more = s
        .poll(100, &Wait::timeout(Duration::from_millis(1500)))
        .unwrap();
    assert!(more.routed.is_empty(), "repeated: {:?}", more.routed);
    s.committed();

    // Columns added and dropped while streaming: the next records have the new shape.
    pg.sql("ALTER TABLE accounts ADD COLUMN extra int DEFAULT 5, DROP COLUMN note");
    pg.sql("INSERT INTO accounts (id, amount) VALUES (5, 50)");
    let (shaped, _) = poll_records(&pg, &mut s, None, 1);
    let after = &value(&shaped[0].1)["after"];
    assert_eq!(after["extra"], 5);
    assert!(after.get("note").is_none(), "{after}");
    s.committed();

    // WAL written only by tables the source does not capture: with nothing waiting for
    // the log, the slot still moves past it.
    pg.sql("CREATE TABLE other (x int)");
    pg.sql("INSERT INTO other SELECT generate_series(1, 10000)");
    let target = pg.sql("SELECT pg_current_wal_lsn()");
    let passed = format!(
        "SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        s.slot()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // The slot's lag is measured every status interval.
    assert!(s.lag_bytes().is_some(), "no slot lag measured");
    while pg.sql(&passed) != "t" {
        assert!(
            Instant::now() < deadline,
            "the idle slot stayed behind {target}"
        );
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(200)))
            .unwrap();
        assert!(b.routed.is_empty(), "{:?}", b.routed);
    }
}

#[test]
fn a_server_without_logical_wal_or_a_role_without_replication_is_a_clear_error() {
    let pg = Postgres::start("replica");
    let mut s = PostgresCdcSource::new(config(&pg.url("postgres"), &[]), "p/s", "t").unwrap();
    let e = s.open(None).unwrap_err().to_string();
    assert!(
        e.contains("wal_level is 'replica'") && e.contains("wal_level = logical"),
        "{e}"
    );

    let pg = Postgres::start("logical");
    pg.sql("CREATE ROLE plain LOGIN PASSWORD 'hunter2'");
    let url = format!("postgres://plain:hunter2@127.0.0.1:{}/postgres", pg.port);
    let mut s = PostgresCdcSource::new(config(&url, &[]), "p/s", "t").unwrap();
    let e = s.open(None).unwrap_err().to_string();
    assert!(
        e.contains("role 'plain' lacks the REPLICATION attribute"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_pipeline_source_writes_each_table_to_its_topic() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE thresholds (customer text PRIMARY KEY, amount bigint)");
    pg.sql("CREATE TABLE \"Odd Name\" (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdc.toml");
    std::fs::write(
        &file,
        format!(
            "sql = \"CREATE TABLE thresholds (customer VARCHAR PRIMARY KEY, amount BIGINT) WITH (topic = 'pg.public.thresholds', format = 'DEBEZIUM', partitions = 1);\"\n[[sources]]\nname = \"pg\"\ntopic = \"pg.{{schema}}.{{table}}\"\npostgres-cdc = {{ url = \"{}\", tables = [\"thresholds\", \"public.Odd Name\"] }}\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let (log, mut worker) = crate::common::worker_with(dir.path(), &file);
    crate::common::wait_for("the slot", || {
        pg.sql("SELECT count(*) FROM pg_replication_slots WHERE active") == "1"
    });
    pg.sql("BEGIN; INSERT INTO thresholds VALUES ('ann', 100), ('bob', 250); INSERT INTO \"Odd Name\" VALUES (7); COMMIT");
    pg.sql("UPDATE thresholds SET amount = 120 WHERE customer = 'ann'");
    let read = |topic: &str| crate::common::read_committed(&log, topic);
    crate::common::wait_for("the changes", || {
        read("pg.public.thresholds").len() == 3 && read("pg.public.Odd_Name").len() == 1
    });
    let rows: Vec<Value> = read("pg.public.thresholds")
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).unwrap())
        .collect();
    assert_eq!(
        rows[0]["after"],
        serde_json::json!({"customer": "ann", "amount": 100})
    );
    assert_eq!(rows[2]["op"], "u");
    assert_eq!(rows[2]["after"]["amount"], 120);
    // The slot's lag is in the pipeline's status.
    crate::common::wait_for("the slot lag in the status", || {
        let d = worker.pipeline("cdc").expect("deployed");
        let status = sluice_runtime::api::pipelines::pipeline_doc(d);
        status.tasks.iter().any(|t| t.lag_bytes.is_some())
    });
    // The table the pipeline's SQL declares over the topic is live: a pull query sees the
    // latest row of each customer.
    let pulled = worker
        .engine_mut()
        .execute("SELECT customer, amount FROM thresholds WHERE customer = 'ann';")
        .unwrap();
    let rows = match &pulled[..] {
        [sluice_sql::engine::Output::Rows(b)] => {
            let b: Vec<&_> = b.iter().collect();
            String::from_utf8(sluice_format::json::encode_rows(b[0]).unwrap().concat()).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(rows, r#"{"CUSTOMER":"ann","AMOUNT":120}"#);
    assert_eq!(
        read("pg.public.Odd_Name")[0].key.as_deref(),
        Some(&br#"{"id":7}"#[..])
    );
    // The topic's value schema is in the registry, and a column added while streaming is a
    // new version of it.
    let subject = "pg.public.thresholds-value";
    let registry = log.schemas();
    assert_eq!(
        registry.versions(subject),
        vec![1],
        "{:?}",
        registry.subjects()
    );
    pg.sql("ALTER TABLE thresholds ADD COLUMN note text");
    pg.sql("INSERT INTO thresholds VALUES ('cy', 1, 'new')");
    crate::common::wait_for("the row of the new shape", || {
        read("pg.public.thresholds").len() == 4
    });
    assert_eq!(registry.versions(subject), vec![1, 2]);
    let latest = registry.latest(subject).unwrap();
    let after = latest
        .schema
        .fields
        .iter()
        .find(|f| f.name == "after")
        .unwrap();
    match &after.ty {
        sluice_log::schema::FieldType::Struct(cols) => {
            let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["customer", "amount", "note"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_are_the_primary_key_under_replica_identity_full_and_key_changes_move_the_row() {
    let pg = Postgres::start("logical");
    pg.sql(
        "CREATE TABLE wide (id int PRIMARY KEY, v text); ALTER TABLE wide REPLICA IDENTITY FULL",
    );
    let new = |tables: &[&str], publication: Option<&str>| {
        let mut c = config(&pg.url("postgres"), tables);
        c.publication = publication.map(str::to_string);
        PostgresCdcSource::new(c, "p/wide", "pg.{table}").unwrap()
    };
    let mut s = new(&["wide"], Some("wide_pub"));
    s.open(None).unwrap();
    pg.sql("INSERT INTO wide VALUES (1, 'a')");
    pg.sql("UPDATE wide SET v = 'b' WHERE id = 1");
    pg.sql("UPDATE wide SET id = 2 WHERE id = 1");
    let (got, _) = poll_records(&pg, &mut s, None, 5);
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|(_, r)| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let op = match r.value {
                Some(_) => value(r)["op"].as_str().unwrap_or_default().to_string(),
                None => "tombstone".into(),
            };
            (op, key)
        })
        .collect();
    let k = |op: &str, id: u32| (op.to_string(), format!("{{\"id\":{id}}}"));
    assert_eq!(
        seen,
        vec![
            k("c", 1),
            k("u", 1),
            k("d", 1),
            k("tombstone", 1),
            k("c", 2)
        ]
    );
    // Under FULL the update's before is the whole old row.
    assert_eq!(value(&got[1].1)["before"]["v"], "a");
    drop(s);

    // A table the (existing) publication does not send is an error, not silence.
    let mut other = new(&["public.Wide"], Some("wide_pub"));
    let e = other.open(None).unwrap_err().to_string();
    assert!(
        e.contains("table public.Wide is not in publication 'wide_pub' (it holds public.wide)"),
        "{e}"
    );
}

#[test]
fn removing_the_pipeline_drops_its_slot_when_asked() {
    use sluice_runtime::deployer::Deployer;
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let file = pipelines.join("cdc.toml");
    std::fs::write(
        &file,
        format!(
            "[[sources]]\nname = \"pg\"\ntopic = \"pg.{{table}}\"\npostgres-cdc = {{ url = \"{}\", tables = [\"t\"], slot = \"doomed\", slot-drop-on-delete = true }}\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let log =
        sluice_log::Log::open(dir.path().join("data"), sluice_log::LogOptions::default()).unwrap();
    let worker =
        sluice_runtime::worker::Worker::new(&log, sluice_sql::engine::Engine::open(&log).unwrap());
    let mut deployer = Deployer::new(worker, &pipelines);
    let said = deployer.sync().unwrap();
    assert!(said.iter().any(|l| l.contains("Deployed")), "{said:?}");
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'";
    crate::common::wait_for("the slot", || pg.sql(slots) == "1");
    std::fs::remove_file(&file).unwrap();
    let said = deployer.sync().unwrap();
    assert!(
        said.iter().any(|l| l == "Dropped replication slot doomed."),
        "{said:?}"
    );
    assert_eq!(pg.sql(slots), "0");
}

/// A work folder whose `pipelines/cdc.toml` runs one CDC source on `pg` writing `topic`,
/// with `settings` (TOML pairs) in its `postgres-cdc` table, committing every 50 ms.
fn cdc_work(topic: &str, pg: &Postgres, settings: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let pipelines = work.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::write(
        pipelines.join("cdc.toml"),
        format!(
            "commit-interval = \"50ms\"\n[[sources]]\nname = \"pg\"\ntopic = \"{topic}\"\npostgres-cdc = {{ url = \"{}\", status-interval = \"200ms\", {settings} }}\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    work
}

#[test]
fn a_worker_killed_while_transactions_stream_loses_and_repeats_no_change() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE pay (id int PRIMARY KEY, amount int)");
    // Rows there before the source: its snapshot reads them, and the first kills come
    // while it does.
    const OLD: i64 = 50_000;
    pg.sql(&format!(
        "INSERT INTO pay SELECT -i, i FROM generate_series(1, {OLD}) i"
    ));
    // One transaction per iteration, two rows each, committed as the loop goes.
    pg.sql(
        "CREATE PROCEDURE gen(n int) LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..n LOOP \
         INSERT INTO pay VALUES (2 * i, i), (2 * i + 1, i); COMMIT; PERFORM pg_sleep(0.002); \
         END LOOP; END $$",
    );
    let work = cdc_work(
        "pg.{table}",
        &pg,
        "tables = [\"pay\"], slot = \"crash\", snapshot-fetch-size = 1000",
    );
    // The first worker creates the slot and reads the snapshot; changes are captured from
    // the snapshot's consistent point on.
    let mut child = crate::common::spawn_worker(work.path(), 0, None);
    let slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'crash'";
    crate::common::wait_for("the slot", || pg.sql(slot) == "1");
    const N: u32 = 3000;
    let url_port = pg.port;
    let bin = pg.bin.clone();
    let writer = std::thread::spawn(move || psql(&bin, url_port, &format!("CALL gen({N})")));
    // SIGKILL it at moments spread over the load, restarting each time.
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let confirmed = "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'crash'";
    let mut last = pg.sql(confirmed).parse::<f64>().unwrap_or(0.0);
    const ROUNDS: usize = 6;
    for round in 1..=ROUNDS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if round == 1 {
            // The first kill comes once the snapshot has committed some chunks and not all
            // (the slot does not move while it reads): a sleep after it started was too
            // early under load (nothing committed: the next worker starts it again) and too
            // late on an idle machine.
            let api = crate::common::worker_api(work.path(), &mut child);
            let http = reqwest::blocking::Client::new();
            let committed = || -> i64 {
                http.get(format!("{api}/topics/pg.pay"))
                    .send()
                    .ok()
                    .and_then(|r| r.text().ok())
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|t| {
                        t["partitions"].as_array().map(|ps| {
                            ps.iter()
                                .filter_map(|p| p["last_stable_offset"].as_i64())
                                .sum()
                        })
                    })
                    .unwrap_or(0)
            };
            crate::common::wait_for("a part of the snapshot committed", || committed() > 0);
        } else {
            // The others once they have committed changes (the slot moved), at a random
            // moment after.
            crate::common::wait_for("the worker to commit changes", || {
                pg.sql(confirmed).parse::<f64>().unwrap_or(0.0) > last
            });
            std::thread::sleep(Duration::from_millis(rng % 500));
        }
        last = pg.sql(confirmed).parse::<f64>().unwrap_or(0.0);
        child.kill().unwrap();
        child.wait().unwrap();
        child = crate::common::spawn_worker(work.path(), round, None);
    }
    writer.join().unwrap();
    // Done when the slot confirms the end of the WAL: it is confirmed only after the log
    // holds what came before.
    let lsn = pg.sql("SELECT pg_current_wal_lsn()");
    let caught_up = format!(
        "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'crash'"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while pg.sql(&caught_up) != "t" {
        assert!(
            Instant::now() < deadline,
            "the worker did not catch up in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log =
        sluice_log::Log::open(work.path().join("data"), sluice_log::LogOptions::default()).unwrap();
    // A worker was killed mid-snapshot, and the next one resumed it.
    let logs: Vec<String> = (0..=ROUNDS)
        .map(|r| std::fs::read_to_string(work.path().join(format!("worker-{r}.log"))).unwrap())
        .collect();
    let cut = logs
        .iter()
        .position(|l| l.contains("The snapshot starts") && !l.contains("The snapshot is done"));
    assert!(
        cut.is_some_and(|r| logs[r + 1].contains("The snapshot resumes")),
        "no worker was killed mid-snapshot and resumed it"
    );
    let mut ids = after_ids(&log, "pg.pay");
    // Streamed changes follow each other in commit order.
    let streamed: Vec<i64> = ids.iter().copied().filter(|i| *i > 0).collect();
    assert!(streamed.is_sorted(), "changes out of commit order");
    // Rows a resumed snapshot read come as snapshot rows, in among the streamed ones, so
    // the whole is compared as a set: every row once.
    ids.sort_unstable();
    let want: Vec<i64> = (-OLD..=-1).chain(2..=2 * i64::from(N) + 1).collect();
    assert_eq!(
        ids.len(),
        want.len(),
        "rows in the topic: {}, in Postgres: {}",
        ids.len(),
        want.len()
    );
    assert_eq!(ids, want, "every row once");
}

/// The `after.id` of each committed record of `topic` (-1 where there is none).
fn after_ids(log: &sluice_log::Log, topic: &str) -> Vec<i64> {
    crate::common::read_committed(log, topic)
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.value.as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            v["after"]["id"].as_i64().unwrap_or(-1)
        })
        .collect()
}

#[test]
fn a_server_restart_mid_stream_is_retried_and_loses_and_repeats_nothing() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE ev (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdc.toml");
    std::fs::write(
        &file,
        format!(
            "[[sources]]\nname = \"pg\"\ntopic = \"pg.{{table}}\"\npostgres-cdc = {{ url = \"{}\", tables = [\"ev\"] }}\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let (log, _worker) = crate::common::worker_with(dir.path(), &file);
    crate::common::wait_for("the slot", || {
        pg.sql("SELECT count(*) FROM pg_replication_slots WHERE active") == "1"
    });
    pg.sql("INSERT INTO ev SELECT generate_series(1, 50)");
    let ids = || after_ids(&log, "pg.ev");
    crate::common::wait_for("the first changes", || ids().len() == 50);
    // The server goes away under the running source and comes back: the task fails,
    // retries with backoff, and resumes at its committed position.
    pg.restart();
    pg.sql("INSERT INTO ev SELECT generate_series(51, 100)");
    crate::common::wait_for("the changes after the restart", || ids().len() >= 100);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(), (1..=100).collect::<Vec<i64>>());
}

#[test]
fn the_heartbeat_query_runs_every_status_interval() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE beats (at timestamptz)");
    let mut c = config(&pg.url("postgres"), &["quiet"]);
    c.heartbeat_query = Some("INSERT INTO beats VALUES (now())".into());
    let mut s = PostgresCdcSource::new(c, "p/hb", "t").unwrap();
    s.open(None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql("SELECT count(*) >= 3 FROM beats") != "t" {
        assert!(Instant::now() < deadline, "fewer than 3 heartbeats in 30 s");
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(200)))
            .unwrap();
        assert!(
            b.routed.is_empty(),
            "a heartbeat is not a captured change: {:?}",
            b.routed
        );
    }
}

/// Applies change records to a table's rows by key (`id`), as a consumer of the topic
/// would; panics on a row read twice by snapshots.
fn apply(rows: &mut std::collections::BTreeMap<i64, i64>, read: &mut Vec<i64>, got: &[Routed]) {
    for (_, r) in got {
        let Some(_) = r.value else { continue };
        let v = value(r);
        match v["op"].as_str() {
            Some("r" | "c" | "u") => {
                let id = v["after"]["id"].as_i64().unwrap();
                if v["op"] == "r" {
                    assert!(!read.contains(&id), "row {id} read twice");
                    read.push(id);
                }
                rows.insert(id, v["after"]["v"].as_i64().unwrap());
            }
            Some("d") => {
                rows.remove(&v["before"]["id"].as_i64().unwrap());
            }
            other => panic!("op {other:?}"),
        }
    }
}

#[test]
fn a_snapshot_under_writes_interrupted_twice_reads_every_row_once_and_misses_no_change() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, v int)");
    pg.sql("INSERT INTO items SELECT i, 0 FROM generate_series(1, 3000) i");
    // Writes while the snapshot is read and between its interruptions: updates, inserts,
    // deletes and key changes, one transaction each, all over the key range.
    pg.sql(
        "CREATE PROCEDURE churn(n int) LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..n LOOP \
         UPDATE items SET v = v + 1 WHERE id = 11 + (i * 7919) % 2979; \
         INSERT INTO items VALUES (10000 + i, i); \
         DELETE FROM items WHERE id = 10000 + i - 3; \
         UPDATE items SET id = id + 100000 WHERE id = 11 + (i * 104729) % 2979; \
         COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$",
    );
    let open = |position: Option<&[u8]>| {
        let mut c = config(&pg.url("postgres"), &["items"]);
        c.snapshot_fetch_size = 100;
        let mut s = PostgresCdcSource::new(c, "p/items", "pg.{table}").unwrap();
        s.open(position).unwrap();
        s
    };
    let (bin, port) = (pg.bin.clone(), pg.port);
    let writer = std::thread::spawn(move || psql(&bin, port, "CALL churn(1500)"));
    let mut rows = std::collections::BTreeMap::new();
    let mut read = Vec::new();
    // Twice: a few chunks reach the log, the next ones are polled but never committed, the
    // worker dies, and rows move across the point where the snapshot stopped.
    let mut position: Option<Vec<u8>> = None;
    for (round, (low, high)) in [(1, 2990), (3, 2992)].into_iter().enumerate() {
        let mut s = open(position.as_deref());
        for _ in 0..4 {
            let b = s.poll(1, &Wait::timeout(Duration::from_secs(10))).unwrap();
            apply(&mut rows, &mut read, &b.routed);
            position = b.position.or(position);
        }
        let lost = s.poll(1, &Wait::timeout(Duration::from_secs(10))).unwrap();
        assert!(!lost.routed.is_empty(), "round {round}: no chunk to lose");
        drop(s);
        let p: Value = serde_json::from_slice(position.as_deref().unwrap()).unwrap();
        assert_eq!(
            p["snapshot"]["parts"].as_array().unwrap().len(),
            round + 1,
            "{p}"
        );
        pg.sql(&format!("UPDATE items SET id = -id WHERE id = {low}"));
        pg.sql(&format!(
            "UPDATE items SET id = 5000 + {round} WHERE id = {high}"
        ));
        pg.sql("UPDATE items SET v = v + 100 WHERE id IN (5, 2995, 12, 2980)");
    }
    let mut s = open(position.as_deref());
    writer.join().unwrap();
    pg.sql("INSERT INTO items VALUES (-99999, -1)");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rows.contains_key(&-99999) {
        assert!(
            Instant::now() < deadline,
            "the end marker did not come in 120 s"
        );
        let b = s
            .poll(10_000, &Wait::timeout(Duration::from_millis(500)))
            .unwrap();
        apply(&mut rows, &mut read, &b.routed);
        if b.position.is_some() {
            s.committed();
        }
    }
    let table: std::collections::BTreeMap<i64, i64> = pg
        .sql("SELECT id, v FROM items ORDER BY id")
        .lines()
        .map(|l| {
            let (id, v) = l.split_once('|').unwrap();
            (id.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), table.len());
    assert_eq!(rows, table, "the topic's rows differ from the table's");
    assert!(
        read.len() >= 3000,
        "only {} rows read by snapshots",
        read.len()
    );
}

#[test]
fn a_gone_slot_is_an_error_unless_when_needed_takes_a_new_snapshot() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE acc (id int PRIMARY KEY, v int)");
    pg.sql("INSERT INTO acc VALUES (1, 1), (2, 2)");
    let new = |mode: &str| {
        let mut c = config(&pg.url("postgres"), &["acc"]);
        c.snapshot = serde_json::from_value(Value::String(mode.into())).unwrap();
        PostgresCdcSource::new(c, "p/acc", "pg.{table}").unwrap()
    };
    let ops = |got: &[Routed]| -> Vec<String> {
        got.iter()
            .map(|(_, r)| {
                let v = value(r);
                format!("{} {}", v["op"].as_str().unwrap_or("-"), v["after"]["id"])
            })
            .collect()
    };
    let mut s = new("initial");
    s.open(None).unwrap();
    let mut got = Vec::new();
    let mut position = None;
    pg.sql("INSERT INTO acc VALUES (3, 3)");
    while got.len() < 3 {
        let b = s
            .poll(100, &Wait::timeout(Duration::from_secs(10)))
            .unwrap();
        got.extend(b.routed);
        position = b.position.or(position);
    }
    assert_eq!(ops(&got), ["r 1", "r 2", "c 3"]);
    s.committed();
    drop(s);
    // The slot goes (dropped by hand, or invalidated): the changes since the position
    // went with it.
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE active";
    crate::common::wait_for("the session to end", || pg.sql(slots) == "0");
    pg.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots");
    pg.sql("INSERT INTO acc VALUES (4, 4)");
    let mut s = new("initial");
    let e = s.open(position.as_deref()).unwrap_err().to_string();
    assert!(
        e.contains("replication slot 'sluice_p_acc' is gone") && e.contains("when-needed"),
        "{e}"
    );
    // when-needed reads every row again from a new slot, then streams.
    let mut s = new("when-needed");
    s.open(position.as_deref()).unwrap();
    pg.sql("UPDATE acc SET v = 5 WHERE id = 4");
    let mut got = Vec::new();
    while got.len() < 5 {
        let b = s
            .poll(100, &Wait::timeout(Duration::from_secs(10)))
            .unwrap();
        got.extend(b.routed);
    }
    assert_eq!(ops(&got), ["r 1", "r 2", "r 3", "r 4", "u 4"]);
}

#[test]
fn a_snapshot_resumed_after_a_truncate_and_a_rename_loses_no_row() {
    let pg = Postgres::start("logical");
    pg.sql(
        "CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id text PRIMARY KEY, v int)",
    );
    pg.sql("INSERT INTO a SELECT i, 0 FROM generate_series(1, 500) i");
    pg.sql("INSERT INTO b SELECT 'k' || lpad(i::text, 4, '0'), 0 FROM generate_series(1, 500) i");
    pg.sql("CREATE PUBLICATION ab FOR TABLE a, b");
    let open = |position: Option<&[u8]>| {
        let mut c = config(&pg.url("postgres"), &[]);
        c.publication = Some("ab".into());
        c.snapshot_fetch_size = 100;
        let mut s = PostgresCdcSource::new(c, "p/ab", "pg.{table}").unwrap();
        s.open(position).unwrap();
        s
    };
    let mut s = open(None);
    let mut got = Vec::new();
    let mut position = None;
    for _ in 0..2 {
        let b = s.poll(1, &Wait::timeout(Duration::from_secs(10))).unwrap();
        got.extend(b.routed);
        position = b.position.or(position);
    }
    drop(s);
    // While the worker is down: table a is emptied and written again (rows on both sides
    // of where the snapshot stopped), and table b is renamed.
    pg.sql("BEGIN; TRUNCATE a; INSERT INTO a VALUES (50, 2), (600, 1); COMMIT");
    pg.sql("ALTER TABLE b RENAME TO b2");
    let mut s = open(position.as_deref());
    pg.sql("INSERT INTO a VALUES (700, 3)");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The marker as streamed: the resumed snapshot may read row 700 too (its temporary
    // slot can export after the insert), before the stream has sent the truncate.
    let done = |got: &[Routed]| {
        got.iter().any(|(_, r)| {
            let v = value(r);
            v["after"]["id"] == 700 && v["op"] == "c"
        })
    };
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "no insert after the snapshot in 60 s"
        );
        let b = s
            .poll(10_000, &Wait::timeout(Duration::from_millis(500)))
            .unwrap();
        got.extend(b.routed);
    }
    // Table a as a consumer applying the topic sees it: the truncate clears it.
    let mut a = std::collections::BTreeMap::new();
    let mut b_rows = Vec::new();
    for (topic, r) in &got {
        let v = value(r);
        match (topic.as_str(), v["op"].as_str()) {
            ("pg.a", Some("t")) => a.clear(),
            ("pg.a", Some("r" | "c" | "u")) => {
                a.insert(
                    v["after"]["id"].as_i64().unwrap(),
                    v["after"]["v"].as_i64().unwrap(),
                );
            }
            ("pg.b" | "pg.b2", Some("r")) => {
                b_rows.push(v["after"]["id"].as_str().unwrap().to_string())
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(a, [(50, 2), (600, 1), (700, 3)].into_iter().collect());
    b_rows.sort();
    b_rows.dedup();
    assert_eq!(
        b_rows.len(),
        500,
        "rows of the renamed table read once each"
    );
    assert_eq!(
        got.iter().filter(|(t, _)| t.starts_with("pg.b")).count(),
        500
    );
}

#[test]
fn an_update_that_leaves_a_toasted_value_alone_carries_it_from_the_store_across_a_kill() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)");
    // About 96 kB that does not compress: stored out of line.
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i)";
    pg.sql(&format!("INSERT INTO docs VALUES (1, {big}, 0)"));
    let body = pg.sql("SELECT body FROM docs WHERE id = 1");
    assert_eq!(body.len(), 96_000);
    // A second table in the same topic, with the same key, whose small values go out of
    // line (its own toast_tuple_target): what is kept is told apart by table.
    pg.sql("CREATE TABLE docs2 (id int PRIMARY KEY, body text, n int) WITH (toast_tuple_target = 128); ALTER TABLE docs2 ALTER COLUMN body SET STORAGE EXTERNAL");
    pg.sql("INSERT INTO docs2 VALUES (1, repeat('y', 300) || 'two', 0)");
    let body2 = format!("{}two", "y".repeat(300));
    let work = cdc_work(
        "pg.all",
        &pg,
        "tables = [\"docs\", \"docs2\"], slot = \"toast\"",
    );
    let caught_up = |pg: &Postgres| {
        let lsn = pg.sql("SELECT pg_current_wal_lsn()");
        let q = format!(
            "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'toast'"
        );
        crate::common::wait_for("the slot to confirm everything", || pg.sql(&q) == "t");
    };
    // The snapshot reads the row (the store keeps its body), then an update leaves it alone.
    let mut child = crate::common::spawn_worker(work.path(), 0, None);
    crate::common::wait_for("the slot", || {
        pg.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'toast'") == "1"
    });
    pg.sql("UPDATE docs SET n = 1 WHERE id = 1");
    caught_up(&pg);
    // Killed; the next worker's store is what the log committed.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = crate::common::spawn_worker(work.path(), 1, None);
    pg.sql("UPDATE docs SET n = 2 WHERE id = 1");
    pg.sql("UPDATE docs2 SET n = 1 WHERE id = 1");
    // A key change: the create under the new key carries the body too.
    pg.sql("UPDATE docs SET id = 7, n = 3 WHERE id = 1");
    pg.sql("UPDATE docs SET n = 4 WHERE id = 7");
    caught_up(&pg);
    child.kill().unwrap();
    child.wait().unwrap();
    let log =
        sluice_log::Log::open(work.path().join("data"), sluice_log::LogOptions::default()).unwrap();
    let all: Vec<Value> = crate::common::read_committed(&log, "pg.all")
        .iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect();
    let of = |table: &str| -> Vec<(String, i64, Value)> {
        all.iter()
            .filter(|v| v["source"]["table"] == table)
            .map(|v| {
                let after = v["after"].clone();
                (
                    v["op"].as_str().unwrap_or_default().to_string(),
                    after["n"].as_i64().unwrap_or(-1),
                    after["body"].clone(),
                )
            })
            .collect()
    };
    let two = of("docs2");
    assert_eq!(two.len(), 2, "{two:?}");
    for (_, _, b) in &two {
        assert_eq!(b.as_str(), Some(body2.as_str()));
    }
    let got = of("docs");
    let ops: Vec<(String, i64)> = got.iter().map(|(o, n, _)| (o.clone(), *n)).collect();
    let want: Vec<(String, i64)> = [("r", 0), ("u", 1), ("u", 2), ("d", -1), ("c", 3), ("u", 4)]
        .iter()
        .map(|(o, n)| (o.to_string(), *n))
        .collect();
    assert_eq!(ops, want);
    for (op, n, b) in &got {
        if op != "d" {
            assert_eq!(
                b.as_str().map(str::len),
                Some(96_000),
                "{op} n={n}: {b:.80}"
            );
            assert_eq!(b.as_str(), Some(body.as_str()));
        }
    }
}

#[test]
fn tls_to_the_server_checks_its_certificate_and_a_plain_connection_is_refused() {
    let pg = Postgres::start_tls();
    pg.sql("CREATE TABLE sec (id int PRIMARY KEY)");
    let dir = pg.dir.path();
    ca(dir, "other");
    let new = |mode: &str, ca: Option<&str>| {
        let mut c = config(&pg.url("postgres"), &["sec"]);
        c.tls = serde_json::from_value(Value::String(mode.into())).unwrap();
        c.tls_ca_file = ca.map(|f| dir.join(f));
        PostgresCdcSource::new(c, "p/sec", "pg.{table}").unwrap()
    };
    // The server takes no plain connection: the server's reason.
    let e = new("disable", None).open(None).unwrap_err().to_string();
    assert!(e.contains("no encryption"), "{e}");
    // A certificate from another CA is refused.
    let e = new("verify-full", Some("other.crt"))
        .open(None)
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // The right CA: captured, the replication session on TLS too.
    let mut s = new("verify-full", Some("ca.crt"));
    s.open(None).unwrap();
    pg.sql("INSERT INTO sec VALUES (1)");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.is_empty() {
        assert!(Instant::now() < deadline, "no change in 30 s");
        got.extend(
            s.poll(10, &Wait::timeout(Duration::from_millis(500)))
                .unwrap()
                .routed,
        );
    }
    assert_eq!(value(&got[0].1)["after"]["id"], 1);
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE backend_type = 'walsender' AND ssl"),
        "1"
    );
    // A missing CA file is a configuration error naming it.
    let mut c = config(&pg.url("postgres"), &["sec"]);
    c.tls = serde_json::from_value(Value::String("verify-ca".into())).unwrap();
    c.tls_ca_file = Some(dir.join("missing.crt"));
    let e = PostgresCdcSource::new(c, "p/sec", "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls-ca-file") && e.contains("missing.crt"),
        "{e}"
    );
}

#[test]
fn snapshot_chunks_page_over_keys_with_quotes_backslashes_and_composite_parts() {
    let pg = Postgres::start("logical");
    pg.sql("CREATE TABLE odd (a text, b int, v int, PRIMARY KEY (a, b))");
    pg.sql(
        "INSERT INTO odd SELECT k, i, i FROM unnest(ARRAY['it''s', 'back\\slash', '\"q\"', 'ünï', '', 'a b', 'x;DROP TABLE odd;--']) k, generate_series(1, 3) i",
    );
    let mut c = config(&pg.url("postgres"), &["odd"]);
    c.snapshot_fetch_size = 2;
    let mut s = PostgresCdcSource::new(c, "p/odd", "pg.{table}").unwrap();
    s.open(None).unwrap();
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while keys.len() < 21 {
        assert!(
            Instant::now() < deadline,
            "only {} rows in 30 s",
            keys.len()
        );
        for (_, r) in s
            .poll(100, &Wait::timeout(Duration::from_millis(500)))
            .unwrap()
            .routed
        {
            let v = value(&r);
            assert_eq!(v["op"], "r");
            keys.push((
                v["after"]["a"].as_str().unwrap().to_string(),
                v["after"]["b"].as_i64().unwrap(),
            ));
        }
    }
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 21, "rows read twice or missed: {keys:?}");
    assert_eq!(pg.sql("SELECT count(*) FROM odd"), "21");
}
