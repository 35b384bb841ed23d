//! `sluice sql`: the SQL shell, or a script with `-e` / `-f`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use sluice_log::Log;
use sluice_sql::engine::{Engine, EngineConfig, Output};
use sluice_sql::runner::RunnerConfig;

use super::CliError;

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
        {
            let flag = Arc::clone(&interrupted);
            // Ctrl-C stops a running push query (and, outside one, the shell) instead of
            // killing the process, so the data directory is closed cleanly.
            let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        }
        let script = match (&self.execute, &self.file) {
            (Some(sql), _) => Some(run_script(&mut engine, sql, &interrupted)),
            (None, Some(f)) => {
                let sql = std::fs::read_to_string(f)
                    .map_err(|e| CliError::io(format!("read {}", f.display()), e))?;
                Some(
                    run_script(&mut engine, &sql, &interrupted)
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
            None => shell(&mut engine, &interrupted)?,
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

fn run_script(engine: &mut Engine, sql: &str, interrupted: &AtomicBool) -> Result<(), CliError> {
    let outputs = engine.execute(sql).map_err(sql_err)?;
    for o in outputs {
        print_output(o, interrupted)?;
    }
    Ok(())
}

fn print_output(o: Output, interrupted: &AtomicBool) -> Result<(), CliError> {
    let mut out = std::io::stdout();
    match o {
        Output::Message(m) => println!("{m}"),
        Output::Rows(batches) => {
            for b in batches {
                let t = datafusion_pretty(&[b])?;
                println!("{t}");
            }
        }
        Output::Push(mut q) => {
            interrupted.store(false, Ordering::SeqCst);
            let mut rows = 0usize;
            while !q.done() && !interrupted.load(Ordering::SeqCst) {
                if let Some(b) = q.poll(Duration::from_millis(200)).map_err(sql_err)? {
                    rows += b.num_rows();
                    let t = datafusion_pretty(&[b])?;
                    writeln!(out, "{t}").map_err(|e| CliError::io("write stdout", e))?;
                    out.flush().map_err(|e| CliError::io("write stdout", e))?;
                }
            }
            let skipped = q.rejected();
            eprintln!(
                "Query ended: {rows} row(s){}.",
                if skipped > 0 {
                    format!(", {skipped} undecodable record(s) skipped")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

fn datafusion_pretty(batches: &[sluice_sql::RecordBatch]) -> Result<String, CliError> {
    sluice_sql::pretty(batches).map_err(sql_err)
}

fn shell(engine: &mut Engine, interrupted: &AtomicBool) -> Result<(), CliError> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| CliError::Usage(format!("cannot start the shell: {e}")))?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("Sluice SQL shell. End statements with ';'. Ctrl-C stops a push query, Ctrl-D exits.");
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() {
            "sluice> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                buf.push_str(&line);
                buf.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut buf);
                let _ = editor.add_history_entry(sql.trim());
                match engine.execute(&sql) {
                    Ok(outputs) => {
                        for o in outputs {
                            if let Err(e) = print_output(o, interrupted) {
                                eprintln!("error: {e}");
                            }
                        }
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buf.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::Usage(format!("shell: {e}"))),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
