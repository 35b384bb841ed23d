//! `sluice run`: the worker. Deploys every pipeline file of a folder, follows the folder
//! (new, changed and removed files) and runs until Ctrl-C (or SIGTERM), printing progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use sluice_log::Log;
use sluice_sql::engine::Engine;

use super::CliError;
use crate::worker::Worker;

/// How often the pipelines folder is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

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

/// The pipeline files of a folder with their modification times.
fn scan(dir: &std::path::Path) -> Result<BTreeMap<PathBuf, Option<SystemTime>>, CliError> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| CliError::io(format!("read {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, modified)
        })
        .collect())
}

/// Deploys (or redeploys) one file; a broken file is reported and never stops the others.
fn deploy(worker: &mut Worker, f: &std::path::Path) {
    let was = worker.undeploy(f);
    match crate::pipeline::load(f).and_then(|p| worker.deploy(&p).map(|()| p)) {
        Ok(p) => eprintln!(
            "{} pipeline {} from {}.",
            if was.is_some() {
                "Redeployed"
            } else {
                "Deployed"
            },
            p.name,
            f.display()
        ),
        Err(e) => eprintln!("error: {e}"),
    }
}

impl RunArgs {
    /// Runs the worker until interrupted.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        let mut files = scan(&self.pipelines)?;
        let engine = Engine::open(log).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut worker = Worker::new(log, engine);
        for f in files.keys() {
            deploy(&mut worker, f);
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
        }
        eprintln!(
            "Running; watching {} for pipeline files; Ctrl-C stops the worker.",
            self.pipelines.display()
        );
        let mut last = Instant::now();
        let mut last_scan = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last_scan.elapsed() >= WATCH_INTERVAL {
                last_scan = Instant::now();
                // Polling the folder: new files deploy, changed ones redeploy (positions,
                // offsets and SQL objects are kept), removed ones stop (topics are kept).
                if let Ok(now) = scan(&self.pipelines) {
                    for (f, modified) in &now {
                        if files.get(f) != Some(modified) {
                            deploy(&mut worker, f);
                        }
                    }
                    for f in files.keys().filter(|f| !now.contains_key(*f)) {
                        if let Some(name) = worker.undeploy(f) {
                            eprintln!("Stopped pipeline {name}: {} was removed.", f.display());
                        }
                    }
                    files = now;
                }
            }
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
                        .map(|e| format!(
                            " ERROR (restarts {}): {e}",
                            s.restarts.load(Ordering::Relaxed)
                        ))
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
