//! The pipelines folder and the worker together: the run loop (on file changes) and the REST
//! API (deploy, delete) both change pipelines through a [`Deployer`], which keeps the folder
//! and the deployed pipelines in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::pipeline::{Pipeline, PipelineError};
use crate::worker::{DeployError, Worker};

/// Why the deployer did not do what it was asked. The API answers 400 for the request's or
/// the file's faults, 404 for an unknown pipeline, 409 for a name held by another pipeline,
/// and 500 when the folder could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DeployerError {
    /// The requested pipeline name is not a valid name.
    #[error("pipeline name '{0}' must be at most 200 letters, digits, '-' or '_'")]
    BadName(String),
    /// The text does not parse or validate.
    #[error(transparent)]
    Invalid(#[from] PipelineError),
    /// The file's `name` is not the one in the request.
    #[error("the file names the pipeline '{file}', the request '{request}'")]
    NameMismatch {
        /// The name in the file.
        file: String,
        /// The name in the request.
        request: String,
    },
    /// The worker refused or failed the deploy (or pause, resume, restart).
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The new version failed, and the previous one did not deploy again either: the
    /// pipeline is down until an operator acts.
    #[error("{error}; and the previous version did not come back: {again}")]
    NotRestored {
        /// Why the new version failed.
        error: Box<DeployError>,
        /// Why the previous one did not come back.
        again: Box<DeployError>,
    },
    /// Reading or writing the pipelines folder failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// "read", "write" or "remove".
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No pipeline of that name is deployed.
    #[error("no pipeline named '{0}' is deployed")]
    NotFound(String),
}

impl DeployerError {
    /// Whether the pipeline (or the request) is what must change; otherwise trying again
    /// later may work.
    pub fn is_user_error(&self) -> bool {
        match self {
            DeployerError::Deploy(e) => e.is_user_error(),
            DeployerError::NotRestored { error, .. } => error.is_user_error(),
            DeployerError::Io { .. } => false,
            _ => true,
        }
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DeployerError {
        let path = path.to_path_buf();
        move |source| DeployerError::Io { op, path, source }
    }
}

/// The worker and the folder it deploys from.
#[derive(Debug)]
pub struct Deployer {
    /// The worker.
    pub worker: Worker,
    dir: PathBuf,
    /// Each pipeline file seen, with the modification time last acted on.
    files: BTreeMap<PathBuf, Option<SystemTime>>,
    /// The last load or deploy error per file (shown in status until the file is fixed).
    errors: BTreeMap<PathBuf, String>,
    /// In a cluster: each file's pipeline, and the node it runs on when not this one.
    placed: BTreeMap<PathBuf, Placed>,
    /// In a cluster: when files whose deploy failed for the cluster's state (no
    /// controller, a leader moving) were last tried again.
    last_retry: Option<Instant>,
}

/// A pipeline that runs on another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// The pipeline.
    pub pipeline: String,
    /// The node running it (`None`: none can now).
    pub node: Option<u64>,
    /// That node's REST API address.
    pub api: Option<String>,
}

/// A pipeline file's pipeline in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    /// The pipeline's name.
    name: String,
    /// The node it runs on, when not this one (`Some(None)`: no node can run it now).
    away: Option<Option<u64>>,
    /// Its last deploy failed for the cluster's state: it is tried again.
    transient: bool,
    /// The topics its HTTP sources ingest into.
    ingests: Vec<String>,
}

/// How often a deploy that failed for the cluster's state is tried again.
const CLUSTER_RETRY: Duration = Duration::from_secs(2);

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Deployer {
    /// A deployer of the `*.toml` files in `dir` (nothing is deployed before [`Self::sync`]).
    pub fn new(worker: Worker, dir: &Path) -> Deployer {
        Deployer {
            worker,
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
            placed: BTreeMap::new(),
            last_retry: None,
        }
    }

    /// `p`, when it runs on another node.
    fn elsewhere_of(&self, p: &Placed) -> Option<Elsewhere> {
        let node = p.away?;
        Some(Elsewhere {
            pipeline: p.name.clone(),
            node,
            api: node.and_then(|n| self.worker.placement()?.api_of(n)),
        })
    }

    /// In a cluster, the pipelines of this folder that run on other nodes.
    pub fn elsewhere(&self) -> Vec<Elsewhere> {
        self.placed
            .values()
            .filter_map(|p| self.elsewhere_of(p))
            .collect()
    }

    /// In a cluster, the pipeline of this folder whose HTTP source ingests into `topic`
    /// and runs on another node.
    pub fn ingest_elsewhere(&self, topic: &str) -> Option<Elsewhere> {
        self.placed
            .values()
            .filter(|p| p.ingests.iter().any(|t| t == topic))
            .find_map(|p| self.elsewhere_of(p))
    }

    /// In a cluster, brings the worker in line with where pipelines run now: a pipeline
    /// whose node became this one deploys (its former instance is fenced by its
    /// transactions' first request here), one that moved away stops. Cheap when nothing
    /// moved (a look at the metadata per pipeline): the run loop calls it every tick.
    /// Returns what happened, a line each.
    pub fn follow_placement(&mut self) -> Vec<String> {
        let Some(placement) = self.worker.placement().cloned() else {
            return Vec::new();
        };
        let retry = self.last_retry.is_none_or(|t| t.elapsed() >= CLUSTER_RETRY);
        let mut said = Vec::new();
        let files: Vec<(PathBuf, Placed)> = self
            .placed
            .iter()
            .map(|(f, p)| (f.clone(), p.clone()))
            .collect();
        for (f, placed) in files {
            let deployed = self.worker.pipelines().iter().any(|d| d.path == f);
            let home = placement.home(&placed.name);
            let here = home == Some(placement.node());
            if deployed && !here {
                // Moved away: it stops at once, whatever its file says now.
                self.worker.undeploy(&f);
                if let Some(p) = self.placed.get_mut(&f) {
                    p.away = Some(home);
                }
                said.push(format!(
                    "Stopped pipeline {}: it runs on {} now.",
                    placed.name,
                    home.map_or("no node".to_string(), |n| format!("node {n}"))
                ));
            } else if !deployed && here && placed.away.is_some() {
                // Moved here: it starts (or its error is kept until its file changes).
                said.push(self.deploy_file(&f));
            } else if !deployed && !here && placed.away != Some(home) {
                if let Some(p) = self.placed.get_mut(&f) {
                    p.away = Some(home);
                }
            } else if !deployed && placed.transient && retry {
                self.last_retry = Some(Instant::now());
                said.push(self.deploy_file(&f));
            }
        }
        said.retain(|l| !l.is_empty());
        said
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files that failed to load or deploy, with the error.
    pub fn errors(&self) -> &BTreeMap<PathBuf, String> {
        &self.errors
    }

    /// Brings the worker in line with the folder: new files deploy, changed ones redeploy
    /// (positions, offsets and SQL objects are kept), removed ones stop (topics are kept). A
    /// broken file is reported and never stops the others. Returns what happened, a line
    /// each.
    pub fn sync(&mut self) -> Result<Vec<String>, DeployerError> {
        let now: BTreeMap<PathBuf, Option<SystemTime>> = std::fs::read_dir(&self.dir)
            .map_err(DeployerError::io("read", &self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| {
                let m = modified(&p);
                (p, m)
            })
            .collect();
        let mut said = Vec::new();
        for (f, m) in &now {
            if self.files.get(f) != Some(m) {
                said.push(self.deploy_file(f));
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !now.contains_key(*f))
            .cloned()
            .collect();
        for f in gone {
            self.errors.remove(&f);
            self.placed.remove(&f);
            if let Some((p, paused)) = self.worker.undeploy(&f) {
                if paused {
                    self.worker.forget_pause(&p.name);
                }
                said.push(format!(
                    "Stopped pipeline {}: {} was removed.",
                    p.name,
                    f.display()
                ));
                said.extend(drop_slots(&p));
            }
        }
        self.files = now;
        said.retain(|l| !l.is_empty());
        Ok(said)
    }

    /// Deploys (or redeploys) one file.
    fn deploy_file(&mut self, f: &Path) -> String {
        let loaded = crate::pipeline::load(f).map_err(DeployerError::from);
        self.deploy(f, loaded)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    /// Deploys the pipeline `loaded` from file `f`, replacing what that file deployed. The
    /// running pipeline is touched only after the new one checked and built: a file that does
    /// not load, check or build leaves it running, and a deploy that fails later (its SQL, say)
    /// brings it back. A failure is kept for status until the file changes.
    fn deploy(
        &mut self,
        f: &Path,
        loaded: Result<Pipeline, DeployerError>,
    ) -> Result<String, DeployerError> {
        self.files.insert(f.to_path_buf(), modified(f));
        let checked = loaded.and_then(|p| {
            self.worker.check(&p)?;
            Ok(p)
        });
        if let Ok(p) = &checked
            && let Some(line) = self.run_elsewhere(f, p)?
        {
            return Ok(line);
        }
        let result = checked.and_then(|p| {
            let was = self.worker.undeploy(f);
            match self.worker.deploy(&p) {
                Ok(()) => Ok((p, was.is_some())),
                Err(error) => match was.map(|(old, paused)| self.restore(old, paused)) {
                    Some(Err(again)) => Err(DeployerError::NotRestored {
                        error: Box::new(error),
                        again: Box::new(again),
                    }),
                    _ => Err(error.into()),
                },
            }
        });
        match result {
            Ok((p, replaced)) => {
                self.errors.remove(f);
                Ok(format!(
                    "{} pipeline {} from {}.",
                    if replaced { "Redeployed" } else { "Deployed" },
                    p.name,
                    f.display()
                ))
            }
            Err(e) => {
                if let Some(p) = self.placed.get_mut(f) {
                    p.transient = !e.is_user_error();
                    p.away = None;
                }
                self.errors.insert(f.to_path_buf(), e.to_string());
                Err(e)
            }
        }
    }

    /// In a cluster, for a pipeline that runs on another node: stops it here if it ran
    /// here, and says where it runs. `None`: it runs here (or there is no cluster).
    fn run_elsewhere(&mut self, f: &Path, p: &Pipeline) -> Result<Option<String>, DeployerError> {
        let Some(placement) = self.worker.placement().cloned() else {
            return Ok(None);
        };
        let mut placed = Placed {
            name: p.name.clone(),
            away: None,
            transient: false,
            ingests: p
                .config
                .sources
                .iter()
                .filter(|s| s.http.is_some())
                .map(|s| s.topic.clone())
                .collect(),
        };
        let here = placement.runs_here(&p.name).map_err(|reason| {
            placed.transient = true;
            DeployerError::Deploy(DeployError::Cluster {
                pipeline: p.name.clone(),
                reason: format!("cannot tell where it runs: {reason}"),
                user_error: false,
            })
        });
        let here = match here {
            Ok(h) => h,
            Err(e) => {
                self.placed.insert(f.to_path_buf(), placed);
                self.errors.insert(f.to_path_buf(), e.to_string());
                return Err(e);
            }
        };
        if here {
            self.placed.insert(f.to_path_buf(), placed);
            return Ok(None);
        }
        let home = placement.home(&p.name);
        placed.away = Some(home);
        self.placed.insert(f.to_path_buf(), placed);
        self.errors.remove(f);
        let stopped = self.worker.undeploy(f).is_some();
        Ok(Some(format!(
            "{} pipeline {}: it runs on {}.",
            if stopped { "Stopped" } else { "Not running" },
            p.name,
            match home {
                Some(n) => format!("node {n}"),
                None =>
                    "no node now (its partition of the cluster's transactions has no leader)".into(),
            }
        )))
    }

    /// Deploys `old` again after its replacement failed, paused if it was.
    fn restore(&mut self, old: Pipeline, paused: bool) -> Result<(), DeployError> {
        let name = old.name.clone();
        let restored = self.worker.deploy(&old).and_then(|()| {
            if paused {
                self.worker.pause(&name)?;
            }
            Ok(())
        });
        if let Err(e) = &restored {
            tracing::error!(pipeline = %name, error = %e, "The previous version of the pipeline did not come back after a failed redeploy.");
        }
        restored
    }

    /// Validates `text` as pipeline `name`, writes it to `<dir>/<name>.toml` and deploys it
    /// (replacing a pipeline of that file). When it does not check or deploy, the folder and
    /// the running pipelines stay as they were.
    pub fn put(&mut self, name: &str, text: &str) -> Result<String, DeployerError> {
        if !crate::pipeline::valid_name(name) {
            return Err(DeployerError::BadName(name.to_string()));
        }
        let path = self.dir.join(format!("{name}.toml"));
        let p = crate::pipeline::parse(text, &path)?;
        if p.name != name {
            return Err(DeployerError::NameMismatch {
                file: p.name,
                request: name.to_string(),
            });
        }
        self.worker.check(&p)?;
        let previous = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(DeployerError::io("read", &path)(e)),
        };
        write_atomically(&path, text.as_bytes())?;
        match self.deploy(&path, Ok(p)) {
            Ok(m) => Ok(m),
            Err(e) => {
                // The file goes back to what it was, so a restart does not meet it either.
                let restored = match &previous {
                    Some(old) => write_atomically(&path, old),
                    None => std::fs::remove_file(&path).map_err(DeployerError::io("remove", &path)),
                };
                if let Err(r) = restored {
                    tracing::error!(file = %path.display(), error = %r, "Could not restore the pipeline file after a failed deploy.");
                }
                // Status keeps an error only when the previous version did not come back.
                let running = self.worker.pipelines().iter().any(|d| d.path == path);
                if previous.is_none() || running {
                    self.errors.remove(&path);
                }
                match previous {
                    Some(_) => self.files.insert(path.clone(), modified(&path)),
                    None => self.files.remove(&path),
                };
                Err(e)
            }
        }
    }

    /// Stops pipeline `name` and removes its file (topics, SQL objects and committed
    /// positions stay).
    pub fn delete(&mut self, name: &str) -> Result<String, DeployerError> {
        let path = self
            .worker
            .pipeline(name)
            .map(|d| d.path.clone())
            .ok_or_else(|| DeployerError::NotFound(name.to_string()))?;
        let removed = self.worker.undeploy(&path);
        if let Some((p, true)) = &removed {
            self.worker.forget_pause(&p.name);
        }
        self.files.remove(&path);
        for line in removed.iter().flat_map(|(p, _)| drop_slots(p)) {
            tracing::info!("{line}");
        }
        std::fs::remove_file(&path).map_err(DeployerError::io("remove", &path))?;
        Ok(format!(
            "Stopped pipeline {name} and removed {}.",
            path.display()
        ))
    }
}

/// Writes `text` to `path` through a temporary file, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &[u8]) -> Result<(), DeployerError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(DeployerError::io("write", path))
}

/// Drops the replication slots of a deleted pipeline's CDC sources that ask for it
/// (`slot-drop-on-delete`); what happened, as sentences (a failure is said, not fatal: the
/// pipeline is gone either way, and the slot can be dropped by hand).
fn drop_slots(p: &Pipeline) -> Vec<String> {
    let mut said = Vec::new();
    for s in &p.config.sources {
        let Some(c) = &s.postgres_cdc else {
            continue;
        };
        let name = format!("{}/{}", p.name, s.name.get_ref());
        match sluice_connectors::postgres_cdc::drop_slot_on_delete(c, &name) {
            Ok(Some(line)) => said.push(line),
            Ok(None) => {}
            Err(e) => said.push(p.redact(&format!(
                "warning: source {}: the replication slot was not dropped: {e}",
                s.name.get_ref()
            ))),
        }
    }
    said
}
