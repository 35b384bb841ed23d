//! `sluice sql`: the SQL shell, or a script with `-e` / `-f`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::Value;
use sluice_log::Log;
use sluice_sql::engine::{Engine, EngineConfig, Output};
use sluice_sql::runner::RunnerConfig;

use super::CliError;
use super::remote::Remote;
use crate::output::{StreamingTable, boxed_table};

/// Arguments of `sluice sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Run these statements and exit.
    #[arg(
        short = 'e',
        long = "execute",
        value_name = "SQL",
        conflicts_with = "file"
    )]
    pub execute: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// After the statements, keep running the persistent queries until Ctrl-C. Without it
    /// a script waits (up to 30 s) until they have processed what their topics hold, and
    /// they resume on the next start.
    #[arg(long)]
    pub serve: bool,
    /// How often persistent queries commit (results become visible), in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Bytes of results a persistent query whose result is a table holds per commit to
    /// write only each key's latest update (ksqlDB's `cache.max.bytes.buffering`); 0 writes
    /// every update.
    #[arg(long, default_value_t = sluice_sql::record_cache::DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: usize,
    /// RocksDB block cache shared by all query state, in MiB.
    #[arg(long, default_value_t = (sluice_state::DEFAULT_BLOCK_CACHE_BYTES >> 20) as u64)]
    pub block_cache_mb: u64,
    /// RocksDB write-buffer budget shared by all query state, in MiB.
    #[arg(long, default_value_t = (sluice_state::DEFAULT_WRITE_BUFFER_BYTES >> 20) as u64)]
    pub write_buffer_mb: u64,
    /// Where the log lives (last: its help heading applies to what follows).
    #[command(flatten)]
    pub log: super::LogArgs,
}

/// Persistent queries' settings from the command line: commit interval (at least 1 ms) and
/// record cache size.
pub(crate) fn runner_config(commit_interval_ms: u64, cache_max_bytes: usize) -> RunnerConfig {
    RunnerConfig {
        commit_interval: Duration::from_millis(commit_interval_ms.max(1)),
        cache_max_bytes,
        ..RunnerConfig::default()
    }
}

fn sql_err(e: sluice_sql::SqlError) -> CliError {
    CliError::Usage(e.to_string())
}

impl SqlArgs {
    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        let mut state = sluice_state::StateConfig::new(log.dir().join("state"));
        state.block_cache_bytes = (self.block_cache_mb as usize) << 20;
        state.write_buffer_bytes = (self.write_buffer_mb as usize) << 20;
        let mut engine = Engine::open_with(
            log,
            EngineConfig {
                state: Some(state),
                runner: runner_config(self.commit_interval_ms, self.cache_max_bytes),
                start_queries: true,
            },
        )
        .map_err(sql_err)?;
        // A stored query that cannot start (e.g. created by an older version outside today's
        // bounds) stays stopped; say so where the user looks, with the way out.
        for q in engine.catalog().queries() {
            if let Some(reason) = engine.queries().failure(&q.id) {
                eprintln!(
                    "note: query {} could not start: {reason}; `TERMINATE {}` removes it",
                    q.id, q.id
                );
            }
        }
        let interrupted = Arc::new(AtomicBool::new(false));
        if self.execute.is_some() || self.file.is_some() {
            on_ctrl_c(&interrupted);
        }
        let script = match (&self.execute, &self.file) {
            (Some(sql), _) => Some(Backend::Local(&mut engine).run(sql, &interrupted)),
            (None, Some(f)) => {
                let sql = std::fs::read_to_string(f)
                    .map_err(|e| CliError::io(format!("read {}", f.display()), e))?;
                Some(
                    Backend::Local(&mut engine)
                        .run(&sql, &interrupted)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", f.display()))),
                )
            }
            (None, None) => None,
        };
        match script {
            Some(Err(e)) => return Err(e),
            Some(Ok(())) if !self.serve => {
                // A script's persistent queries process what is already in their topics
                // before it exits, so its results are there for the next command.
                let caught_up = engine
                    .wait_caught_up(Duration::from_secs(SCRIPT_CATCH_UP_SECS))
                    .map_err(sql_err)?;
                if !caught_up {
                    eprintln!(
                        "note: persistent queries had not caught up after {SCRIPT_CATCH_UP_SECS} s; they resume on the next start (or run `sluice sql --serve`)"
                    );
                }
            }
            Some(Ok(())) => serve(&engine, &interrupted),
            None => shell(&mut Backend::Local(&mut engine), &interrupted)?,
        }
        engine.shutdown();
        Ok(())
    }
}

/// How long a script waits for its persistent queries to process their input before exiting.
const SCRIPT_CATCH_UP_SECS: u64 = 30;

/// Runs the persistent queries until Ctrl-C, printing their counters now and then.
fn serve(engine: &Engine, interrupted: &AtomicBool) {
    interrupted.store(false, Ordering::SeqCst);
    eprintln!("Running the persistent queries; Ctrl-C stops them.");
    let mut last = std::time::Instant::now();
    while !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(10) {
            last = std::time::Instant::now();
            for q in engine.catalog().queries() {
                if let Some(s) = engine.queries().stats(&q.id) {
                    eprintln!(
                        "{}: in {} / out {} / rejected {}{}",
                        q.id,
                        s.records_in.load(Ordering::Relaxed),
                        s.records_out.load(Ordering::Relaxed),
                        s.rejected.load(Ordering::Relaxed),
                        s.error
                            .lock()
                            .as_deref()
                            .map(|e| format!(" / ERROR: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
}

/// Where statements run: the data directory's own engine, or a running worker's API.
/// Both print the same: messages as lines, rows as boxed tables, push queries as a table
/// that grows a line per row.
pub enum Backend<'a> {
    /// This process owns the data directory.
    Local(&'a mut Engine),
    /// A worker owns it: statements go to `POST /sql`, push queries to `POST /query`.
    Remote(&'a Remote),
}

impl std::fmt::Debug for Backend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(_) => f.write_str("Backend::Local"),
            Backend::Remote(r) => write!(f, "Backend::Remote({})", r.base()),
        }
    }
}

impl Backend<'_> {
    /// Runs the statements of `sql` and prints what each gives; a push query streams until
    /// it ends (LIMIT) or Ctrl-C sets `interrupted`.
    fn run(&mut self, sql: &str, interrupted: &Arc<AtomicBool>) -> Result<(), CliError> {
        match self {
            Backend::Local(engine) => {
                for o in engine.execute(sql).map_err(sql_err)? {
                    print_output(o, interrupted)?;
                }
                Ok(())
            }
            Backend::Remote(remote) => {
                for statement in sluice_sql::engine::split_statement_texts(sql) {
                    let push = matches!(
                        sluice_sql::parse(&statement).as_deref(),
                        Ok([sluice_sql::ast::Statement::Select(s)]) if s.emit.is_some()
                    );
                    if push {
                        remote_push(remote, &statement, interrupted)?;
                    } else {
                        remote_statements(remote, &statement)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// `sluice sql` through a running worker's API: the same scripts and shell.
pub fn run_remote(args: SqlArgs, remote: &Remote) -> Result<(), CliError> {
    if args.serve {
        return Err(CliError::Usage(
            "--serve needs the data directory; the running worker already runs the persistent queries".into(),
        ));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    if args.execute.is_some() || args.file.is_some() {
        on_ctrl_c(&interrupted);
    }
    let mut backend = Backend::Remote(remote);
    match (&args.execute, &args.file) {
        (Some(sql), _) => backend.run(sql, &interrupted),
        (None, Some(f)) => {
            let sql = std::fs::read_to_string(f)
                .map_err(|e| CliError::io(format!("read {}", f.display()), e))?;
            backend
                .run(&sql, &interrupted)
                .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())))
        }
        (None, None) => shell(&mut backend, &interrupted),
    }
}

/// Statements through `POST /sql`, printed as the local engine's are.
fn remote_statements(remote: &Remote, sql: &str) -> Result<(), CliError> {
    let v = remote.post_sql(sql)?;
    for r in v["results"].as_array().into_iter().flatten() {
        match (&r["message"], &r["rows"]) {
            (Value::String(m), _) => println!("{m}"),
            (_, Value::Array(rows)) => {
                let columns: Vec<String> = r["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect();
                print!("{}", boxed_table(&columns, rows));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A push query through `POST /query`, its rows printed as they come until it ends or
/// Ctrl-C (which closes the stream, and so stops the query on the worker).
fn remote_push(remote: &Remote, sql: &str, interrupted: &Arc<AtomicBool>) -> Result<(), CliError> {
    interrupted.store(false, Ordering::SeqCst);
    let mut table: Option<StreamingTable> = None;
    let mut rows = 0u64;
    let mut skipped = 0u64;
    let mut out = std::io::stdout();
    let body = serde_json::json!({ "sql": sql }).to_string();
    let result = remote.stream(
        reqwest::Method::POST,
        "/query",
        Some(body),
        interrupted,
        |event, data| {
            match event {
                "columns" => {
                    let columns: Vec<String> = serde_json::from_str(data).unwrap_or_default();
                    let t = StreamingTable::new(&columns);
                    write!(out, "{}", t.header()).map_err(|e| CliError::io("write stdout", e))?;
                    table = Some(t);
                }
                "row" => {
                    let row: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if let Some(t) = &table {
                        write!(out, "{}", t.row(&row))
                            .map_err(|e| CliError::io("write stdout", e))?;
                        out.flush().map_err(|e| CliError::io("write stdout", e))?;
                    }
                    rows += 1;
                }
                "end" => {
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    skipped = v["undecodable_records_skipped"].as_u64().unwrap_or(0);
                    return Ok(false);
                }
                "error" => return Err(CliError::Usage(data.to_string())),
                _ => {}
            }
            Ok(true)
        },
    );
    if let Some(t) = &table {
        print!("{}", t.footer());
    }
    query_ended(rows, skipped);
    result
}

/// The line after a push query.
fn query_ended(rows: u64, skipped: u64) {
    eprintln!(
        "Query ended: {rows} row(s){}.",
        if skipped > 0 {
            format!(", {skipped} undecodable record(s) skipped")
        } else {
            String::new()
        }
    );
}

fn print_output(o: Output, interrupted: &AtomicBool) -> Result<(), CliError> {
    let mut out = std::io::stdout();
    let write_error = |e| CliError::io("write stdout", e);
    match o {
        Output::Message(m) => println!("{m}"),
        Output::Rows(batches) => {
            let columns = batches.first().map(column_names).unwrap_or_default();
            let rows = crate::output::json_rows(&batches).map_err(CliError::Usage)?;
            print!("{}", boxed_table(&columns, &rows));
        }
        Output::Push(mut q) => {
            interrupted.store(false, Ordering::SeqCst);
            let columns: Vec<String> = q
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let table = StreamingTable::new(&columns);
            write!(out, "{}", table.header()).map_err(write_error)?;
            let mut rows = 0u64;
            while !q.done() && !interrupted.load(Ordering::SeqCst) {
                if let Some(b) = q.poll(Duration::from_millis(200)).map_err(sql_err)? {
                    for row in crate::output::json_rows(&[b]).map_err(CliError::Usage)? {
                        write!(out, "{}", table.row(&row)).map_err(write_error)?;
                        rows += 1;
                    }
                    out.flush().map_err(write_error)?;
                }
            }
            write!(out, "{}", table.footer()).map_err(write_error)?;
            query_ended(rows, q.rejected());
        }
    }
    Ok(())
}

fn column_names(b: &sluice_sql::RecordBatch) -> Vec<String> {
    b.schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Ctrl-C sets `flag` (stopping a push query, or `--serve`) instead of killing the process,
/// so the data directory is closed cleanly.
fn on_ctrl_c(flag: &Arc<AtomicBool>) {
    let flag = Arc::clone(flag);
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
}

/// What `help` prints in the shell.
const HELP: &str = "\
Statements end with ';' and may span lines. Some to start with:
  SHOW STREAMS; SHOW TABLES; SHOW QUERIES; SHOW TOPICS;
  DESCRIBE name;
  CREATE STREAM s (k VARCHAR KEY, v BIGINT) WITH (topic = 't', format = 'JSON');
  CREATE TABLE t AS SELECT k, COUNT(*) AS n FROM s GROUP BY k;
  SELECT * FROM s EMIT CHANGES;      -- a push query: Ctrl-C stops it
  SELECT * FROM t WHERE k = 'a';     -- a pull query
  TERMINATE query_id; DROP STREAM s;
Ctrl-C clears the line or stops a push query; `exit`, `quit` or Ctrl-D leaves.
The README's \"Streaming SQL\" section has the whole dialect.";

fn shell(backend: &mut Backend<'_>, interrupted: &Arc<AtomicBool>) -> Result<(), CliError> {
    // The editor first: rustyline installs its terminal handlers when it is created, and
    // Ctrl-C must reach ours (which stops a push query) outside of line editing.
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| CliError::Usage(format!("cannot start the shell: {e}")))?;
    on_ctrl_c(interrupted);
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let via = match backend {
        Backend::Local(_) => String::new(),
        Backend::Remote(r) => format!(" (through the worker at {})", r.base()),
    };
    println!(
        "Sluice SQL shell{via}. End statements with ';'. `help` shows more; Ctrl-C stops a push query; `exit` or Ctrl-D leaves."
    );
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() {
            "sluice> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buf.is_empty() {
                    match line
                        .trim()
                        .trim_end_matches(';')
                        .trim()
                        .to_ascii_lowercase()
                        .as_str()
                    {
                        "exit" | "quit" => break,
                        "help" => {
                            println!("{HELP}");
                            continue;
                        }
                        "" => continue,
                        _ => {}
                    }
                }
                buf.push_str(&line);
                buf.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut buf);
                // Saved at once, so a killed shell keeps what was typed.
                let _ = editor.add_history_entry(sql.trim());
                if let Some(h) = &history {
                    let _ = editor.append_history(h);
                }
                if let Err(e) = backend.run(&sql, interrupted) {
                    eprintln!("error: {e}");
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buf.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::Usage(format!("shell: {e}"))),
        }
    }
    Ok(())
}
