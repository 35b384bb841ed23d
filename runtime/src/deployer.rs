//! The pipelines folder and the worker together: the run loop (on file changes) and the REST
//! API (deploy, delete) both change pipelines through a [`Deployer`], which keeps the folder
//! and the deployed pipelines in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::worker::Worker;

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
}

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
        }
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
    pub fn sync(&mut self) -> Result<Vec<String>, String> {
        let now: BTreeMap<PathBuf, Option<SystemTime>> = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("read {}: {e}", self.dir.display()))?
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
            if let Some((p, _)) = self.worker.undeploy(&f) {
                said.push(format!(
                    "Stopped pipeline {}: {} was removed.",
                    p.name,
                    f.display()
                ));
            }
        }
        self.files = now;
        Ok(said)
    }

    /// Deploys (or redeploys) one file.
    fn deploy_file(&mut self, f: &Path) -> String {
        let loaded = crate::pipeline::load(f);
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
        loaded: Result<crate::pipeline::Pipeline, String>,
    ) -> Result<String, String> {
        self.files.insert(f.to_path_buf(), modified(f));
        let result = loaded.and_then(|p| {
            self.worker.check(&p)?;
            let was = self.worker.undeploy(f);
            match self.worker.deploy(&p) {
                Ok(()) => Ok((p, was.is_some())),
                Err(e) => match was.map(|(old, paused)| self.restore(old, paused)) {
                    Some(Err(again)) => Err(format!(
                        "{e}; and the previous version did not come back: {again}"
                    )),
                    _ => Err(e),
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
                self.errors.insert(f.to_path_buf(), e.clone());
                Err(e)
            }
        }
    }

    /// Deploys `old` again after its replacement failed, paused if it was.
    fn restore(&mut self, old: crate::pipeline::Pipeline, paused: bool) -> Result<(), String> {
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
    pub fn put(&mut self, name: &str, text: &str) -> Result<String, String> {
        if !crate::pipeline::valid_name(name) {
            return Err(format!(
                "pipeline name '{name}' must be letters, digits, '-' or '_'"
            ));
        }
        let path = self.dir.join(format!("{name}.toml"));
        let p = crate::pipeline::parse(text, &path)?;
        if p.name != name {
            return Err(format!(
                "the file names the pipeline '{}', the request '{name}'",
                p.name
            ));
        }
        self.worker.check(&p)?;
        let previous = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        write_atomically(&path, text.as_bytes())?;
        match self.deploy(&path, Ok(p)) {
            Ok(m) => Ok(m),
            Err(e) => {
                // The file goes back to what it was, so a restart does not meet it either.
                let restored = match &previous {
                    Some(old) => write_atomically(&path, old),
                    None => std::fs::remove_file(&path)
                        .map_err(|e| format!("remove {}: {e}", path.display())),
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
    pub fn delete(&mut self, name: &str) -> Result<String, String> {
        let path = self
            .worker
            .pipeline(name)
            .map(|d| d.path.clone())
            .ok_or_else(|| format!("no pipeline named '{name}' is deployed"))?;
        self.worker.undeploy(&path);
        self.files.remove(&path);
        std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        Ok(format!(
            "Stopped pipeline {name} and removed {}.",
            path.display()
        ))
    }
}

/// Writes `text` to `path` through a temporary file, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &[u8]) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("write {}: {e}", path.display()))
}
