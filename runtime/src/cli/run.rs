//! `sluice run`: the worker. Deploys every pipeline file of a folder and runs it until
//! Ctrl-C (or SIGTERM), printing progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use sluice_log::Log;
use sluice_sql::engine::Engine;

use super::CliError;
use crate::worker::Worker;

/// Arguments of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The folder of pipeline files (`*.toml`).
    #[arg(long, default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
}

impl RunArgs {
    /// Runs the worker until interrupted.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.pipelines)
            .map_err(|e| CliError::io(format!("read {}", self.pipelines.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let engine = Engine::open(log).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut worker = Worker::new(log, engine);
        for f in &files {
            // A broken file never stops the others.
            match crate::pipeline::load(f).and_then(|p| worker.deploy(&p).map(|()| p)) {
                Ok(p) => eprintln!("Deployed pipeline {} from {}.", p.name, f.display()),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        if worker.pipelines().is_empty() {
            return Err(CliError::Usage(format!(
                "no pipeline deployed from {}",
                self.pipelines.display()
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
        }
        eprintln!("Running; Ctrl-C stops the worker.");
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(self.progress_secs.max(1)) {
                last = Instant::now();
                print_progress(&worker);
            }
        }
        eprintln!("Stopping: tasks commit what they have.");
        print_progress(&worker);
        worker.shutdown();
        Ok(())
    }
}

fn print_progress(worker: &Worker) {
    for p in worker.pipelines() {
        let tasks: Vec<String> = p
            .tasks
            .iter()
            .map(|t| {
                let s = &t.status;
                format!(
                    "{} in {} out {}{}{}",
                    t.name,
                    s.records_in.load(Ordering::Relaxed),
                    s.records_out.load(Ordering::Relaxed),
                    match s.rejected.load(Ordering::Relaxed) {
                        0 => String::new(),
                        n => format!(" rejected {n}"),
                    },
                    s.error
                        .lock()
                        .as_deref()
                        .map(|e| format!(" ERROR (restarts {}): {e}", s.restarts.load(Ordering::Relaxed)))
                        .unwrap_or_default()
                )
            })
            .collect();
        eprintln!("pipeline {}: {}", p.name, tasks.join("; "));
    }
    for q in worker.engine().catalog().queries() {
        if let Some(s) = worker.engine().queries().stats(&q.id) {
            eprintln!(
                "query {}: in {} out {}{}",
                q.id,
                s.records_in.load(Ordering::Relaxed),
                s.records_out.load(Ordering::Relaxed),
                match s.rejected.load(Ordering::Relaxed) {
                    0 => String::new(),
                    n => format!(" rejected {n}"),
                }
            );
        }
    }
}
