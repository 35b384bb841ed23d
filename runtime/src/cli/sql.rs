//! `sluice sql`: the SQL shell, or a script with `-e` / `-f`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use sluice_log::Log;
use sluice_sql::engine::{Engine, Output};

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
}

fn sql_err(e: sluice_sql::SqlError) -> CliError {
    CliError::Usage(e.to_string())
}

impl SqlArgs {
    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        let mut engine = Engine::open(log).map_err(sql_err)?;
        let interrupted = Arc::new(AtomicBool::new(false));
        {
            let flag = Arc::clone(&interrupted);
            // Ctrl-C stops a running push query (and, outside one, the shell) instead of
            // killing the process, so the data directory is closed cleanly.
            let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        }
        if let Some(sql) = self.execute {
            return run_script(&mut engine, &sql, &interrupted);
        }
        if let Some(f) = self.file {
            let sql = std::fs::read_to_string(&f)
                .map_err(|e| CliError::io(format!("read {}", f.display()), e))?;
            return run_script(&mut engine, &sql, &interrupted)
                .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())));
        }
        shell(&mut engine, &interrupted)
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
