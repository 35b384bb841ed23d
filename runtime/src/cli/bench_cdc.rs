//! `sluice bench cdc`: row changes per second that the Postgres CDC source captures into
//! topics (committed, exactly once), beside `pg_recvlogical` decoding the same WAL to
//! `/dev/null` with the same `pgoutput` plugin and publication, in one run.
//!
//! ```text
//!  pgbench (tpcb-like, untimed) ─► WAL ─┬─► slot bench_recvlogical ─► pg_recvlogical ─► /dev/null
//!                                       └─► slot sluice_bench ─► worker: CDC source ─► topics
//! ```
//!
//! Both slots exist before the load, so both read exactly the same changes; each is timed
//! from its start until it has everything (`pg_recvlogical --endpos`; the worker's source
//! has committed every change into the log). A third slot is read first, untimed, so
//! neither timed reader is the one that brings the WAL into the page cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_log::{Log, LogOptions};
use sluice_sql::engine::Engine;

use super::CliError;
use crate::worker::Worker;

/// Arguments of `sluice bench cdc`.
#[derive(Debug, Args)]
pub struct CdcBenchArgs {
    /// A server to use (`postgres://user@host:port/db`; `wal_level = logical`, a superuser
    /// or a role with REPLICATION that may create a publication for all tables). Default: a
    /// private server started from the PostgreSQL binaries under /usr/lib/postgresql.
    #[arg(long)]
    pub url: Option<String>,
    /// pgbench transactions per client (each: three updates and an insert).
    #[arg(long, default_value_t = 25_000)]
    pub transactions: u64,
    /// pgbench clients.
    #[arg(long, default_value_t = 2)]
    pub clients: u64,
    /// pgbench scale factor (100,000 accounts each).
    #[arg(long, default_value_t = 1)]
    pub scale: u64,
    /// Scratch folder (removed at the end); default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The PostgreSQL binaries' folder: the newest under /usr/lib/postgresql.
fn pg_bin() -> Result<PathBuf, CliError> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
        .filter(|b| b.join("pg_recvlogical").exists())
        .ok_or_else(|| {
            CliError::Usage(
                "the PostgreSQL binaries (pgbench, pg_recvlogical) are not under /usr/lib/postgresql: install the postgresql package".into(),
            )
        })
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn run(c: &mut Command, what: &str) -> Result<String, CliError> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::io(format!("run {what}"), e))?;
    if !out.status.success() {
        return Err(CliError::Usage(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A private server in the scratch folder, stopped when dropped.
struct Server {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Server {
    fn start(bin: &Path, dir: &Path) -> Result<Server, CliError> {
        let data = dir.join("pgdata");
        std::fs::create_dir_all(dir).map_err(|e| CliError::io("create the scratch folder", e))?;
        // initdb and postgres refuse to run as root.
        let root = run(Command::new("id").arg("-u"), "id -u")? == "0";
        let as_owner = |program: PathBuf| {
            let mut c = match root {
                true => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(program);
                    c
                }
                false => Command::new(program),
            };
            c.stdout(Stdio::null());
            c
        };
        if root {
            run(
                Command::new("chown").arg("postgres:").arg(dir),
                "chown the scratch folder",
            )?;
        }
        run(
            as_owner(bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]),
            "initdb",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| CliError::io("find a free port", e))?
            .port();
        let conf = format!(
            "\nlisten_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{}'\nwal_level=logical\nmax_replication_slots=10\nmax_wal_senders=10\nfsync=off\nsynchronous_commit=off\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        append(
            &data.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        )?;
        run(
            as_owner(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("pg.log"))
                .args(["-w", "start"]),
            "pg_ctl start",
        )?;
        Ok(Server {
            bin: bin.to_path_buf(),
            data,
            port,
        })
    }
}

fn append(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| CliError::io(format!("write {}", path.display()), e))
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"));
        if run(Command::new("id").arg("-u"), "id -u").ok().as_deref() != Some("0") {
            c = Command::new(self.bin.join("pg_ctl"));
        }
        let _ = c
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

const SLOT: &str = "sluice_bench";
const RECV_SLOT: &str = "bench_recvlogical";
/// Read once, untimed, so that both timed readers find the WAL in the page cache.
const WARM_SLOT: &str = "bench_warmup";
const PUBLICATION: &str = "sluice_bench";

impl CdcBenchArgs {
    /// Runs it.
    pub fn run(self) -> Result<(), CliError> {
        let bin = pg_bin()?;
        let scratch = super::bench::Scratch::under(self.dir.as_deref(), "sluice-bench-cdc")?;
        let dir = scratch.path();
        let server = match &self.url {
            Some(_) => None,
            None => Some(Server::start(&bin, &dir.join("pg"))?),
        };
        let url = match (&self.url, &server) {
            (Some(u), _) => u.clone(),
            (None, Some(s)) => format!("postgres://postgres@127.0.0.1:{}/postgres", s.port),
            (None, None) => unreachable!("a server was started"),
        };
        let psql = |sql: &str| {
            run(
                Command::new(bin.join("psql")).arg(&url).args([
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-tAc",
                    sql,
                ]),
                "psql",
            )
        };
        eprintln!("Initializing pgbench tables (scale {})...", self.scale);
        run(
            Command::new(bin.join("pgbench"))
                .args(["-i", "-q", "-s", &self.scale.to_string()])
                .arg(&url),
            "pgbench -i",
        )?;
        psql(&format!(
            "DROP PUBLICATION IF EXISTS {PUBLICATION}; CREATE PUBLICATION {PUBLICATION} FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
        ))?;
        // pgbench_history has no primary key: its updates would carry no old row.
        psql("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")?;
        for slot in [SLOT, RECV_SLOT, WARM_SLOT] {
            psql(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))?;
            psql(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))?;
        }
        let result = self.measure(&bin, &url, dir);
        // The slots hold WAL back: they go whatever happened.
        for slot in [SLOT, RECV_SLOT, WARM_SLOT] {
            let _ = psql(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ));
        }
        let _ = psql(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"));
        drop(server);
        result
    }

    fn measure(&self, bin: &Path, url: &str, dir: &Path) -> Result<(), CliError> {
        let changes = 4 * self.transactions * self.clients;
        eprintln!(
            "Load: pgbench tpcb-like, {} clients x {} transactions ({changes} row changes)...",
            self.clients, self.transactions
        );
        let started = Instant::now();
        run(
            Command::new(bin.join("pgbench"))
                .args(["-n", "-c", &self.clients.to_string()])
                .args(["-j", &self.clients.to_string()])
                .args(["-t", &self.transactions.to_string()])
                .arg(url),
            "pgbench",
        )?;
        eprintln!("  written in {:.1} s", started.elapsed().as_secs_f64());
        let end = run(
            Command::new(bin.join("psql"))
                .arg(url)
                .args(["-tAc", "SELECT pg_current_wal_lsn()"]),
            "psql",
        )?;

        let recvlogical = |slot: &str| {
            run(
                Command::new(bin.join("pg_recvlogical"))
                    .arg("-d")
                    .arg(url)
                    .args(["-S", slot, "--start", "--no-loop", "-f", "/dev/null"])
                    .args(["-E", &end])
                    .args(["-o", "proto_version=1"])
                    .args(["-o", &format!("publication_names={PUBLICATION}")]),
                "pg_recvlogical",
            )
        };
        eprintln!("Warm-up: reading the WAL once, untimed...");
        recvlogical(WARM_SLOT)?;
        eprintln!("pg_recvlogical: decoding the changes to /dev/null...");
        let started = Instant::now();
        recvlogical(RECV_SLOT)?;
        let recv_seconds = started.elapsed().as_secs_f64();

        eprintln!("sluice: capturing the changes into topics (exactly once)...");
        let pipeline = format!(
            "[[sources]]\nname = \"pg\"\ntopic = \"pg.{{table}}\"\npostgres-cdc = {{ url = {url:?}, slot = \"{SLOT}\", publication = \"{PUBLICATION}\", snapshot = \"never\" }}\n"
        );
        let file = dir.join("cdc.toml");
        std::fs::write(&file, pipeline)
            .map_err(|e| CliError::io(format!("write {}", file.display()), e))?;
        let p = crate::pipeline::load(&file)?;
        let log = Log::open(dir.join("data"), LogOptions::default())?;
        let engine = Engine::open(&log).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut worker = Worker::new(&log, engine);
        let started = Instant::now();
        worker.deploy(&p)?;
        let mut last_report = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let status = &worker.pipelines()[0].tasks[0].status;
            let captured = status.records_out.load(Ordering::Relaxed);
            if captured >= changes {
                break;
            }
            if let Some(e) = status.error.lock().as_deref() {
                return Err(CliError::Usage(format!("the source failed: {e}")));
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "  {:.0} s: {captured} of {changes}",
                    started.elapsed().as_secs_f64()
                );
            }
            if started.elapsed() > Duration::from_secs(1800) {
                return Err(CliError::Usage(
                    "the source did not capture every change in 30 minutes".into(),
                ));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        worker.shutdown();
        drop(worker);
        // Every change is in a topic, once.
        let mut records = 0;
        for t in ["accounts", "branches", "tellers", "history"] {
            records += committed_records(&log, &format!("pg.pgbench_{t}"))?;
        }
        log.close()?;
        if records != changes {
            return Err(CliError::Usage(format!(
                "the topics hold {records} records, expected {changes}"
            )));
        }
        eprintln!("Checked: the topics hold all {records} changes.");
        let rate = changes as f64 / seconds;
        let recv_rate = changes as f64 / recv_seconds;
        println!(
            "cdc changes={changes} sluice_seconds={seconds:.2} sluice_changes/s={rate:.0} pg_recvlogical_seconds={recv_seconds:.2} pg_recvlogical_changes/s={recv_rate:.0} ratio={:.2}",
            rate / recv_rate
        );
        Ok(())
    }
}

/// The committed records of `topic` (partition 0, as the CDC source creates it).
fn committed_records(log: &Log, topic: &str) -> Result<u64, CliError> {
    let end = log
        .list_offset(
            topic,
            0,
            sluice_log::OffsetSpec::Latest,
            sluice_log::Isolation::ReadCommitted,
        )?
        .unwrap_or(0);
    let mut c = log.consumer(sluice_log::ConsumerConfig {
        auto_offset_reset: sluice_log::OffsetReset::Earliest,
        max_poll_records: 100_000,
        ..Default::default()
    });
    c.assign(&[sluice_log::TopicPartition {
        topic: topic.to_string(),
        partition: 0,
    }])?;
    let mut n = 0;
    loop {
        let rs = c.poll(Duration::from_millis(200))?;
        let Some(last) = rs.last() else { break };
        n += rs.len() as u64;
        if last.offset + 1 >= end {
            break;
        }
    }
    Ok(n)
}
