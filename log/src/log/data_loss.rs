//! Data loss: the list of records lost to damage or missing files, kept in `data-loss.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Log, Topic};
use crate::checkpoint::DataLoss;
use crate::error::{LogError, Result};
use crate::segment::write_file;

/// The file listing data loss, in the data directory.
const DATA_LOSS_FILE: &str = "data-loss.json";

impl Log {
    /// Records this log lost to damage or missing files (a deleted segment, a corrupt batch
    /// cut by recovery), oldest first, kept across restarts in `<data-dir>/data-loss.json`
    /// until that file is deleted. Their offsets are never handed out again. A torn tail
    /// after a crash (a batch whose write was cut off, never acknowledged) is not a loss.
    pub fn data_loss(&self) -> Vec<DataLoss> {
        self.inner.losses.lock().clone()
    }

    /// Adds a loss found outside the log (a reader whose committed position is past the end
    /// of what the log holds) to the list [`Log::data_loss`] returns, unless it is there.
    pub fn report_data_loss(&self, loss: DataLoss) -> Result<()> {
        let mut losses = self.inner.losses.lock();
        let known = losses.iter().any(|l| {
            (
                l.topic.as_str(),
                l.partition,
                l.from,
                l.to,
                l.reason.as_str(),
            ) == (
                loss.topic.as_str(),
                loss.partition,
                loss.from,
                loss.to,
                loss.reason.as_str(),
            )
        });
        if !known {
            losses.push(loss);
            save_data_loss(&self.inner.dir, &losses)?;
        }
        Ok(())
    }
}

/// Takes the data loss the partitions found on open, logs it and adds it to the list in
/// `data-loss.json`; then checkpoints every partition, so a loss is found once and recorded
/// before the files that show it are forgotten. Returns the whole list.
pub(super) fn record_data_loss(
    dir: &Path,
    topics: &BTreeMap<String, Arc<Topic>>,
) -> Result<Vec<DataLoss>> {
    let path = dir.join(DATA_LOSS_FILE);
    let mut losses: Vec<DataLoss> = match std::fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
            path: path.clone(),
            position: 0,
            reason: format!("{e}; fix or delete the file (it only lists earlier data loss)"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(LogError::io("read", &path, e)),
    };
    let mut found = Vec::new();
    for t in topics.values() {
        for p in t.partitions.read().iter() {
            found.extend(p.take_detected_losses());
        }
    }
    if !found.is_empty() {
        losses.extend(found);
        save_data_loss(dir, &losses)?;
    }
    for t in topics.values() {
        for p in t.partitions.read().iter() {
            p.checkpoint()?;
        }
    }
    if !losses.is_empty() {
        tracing::error!(
            count = losses.len(),
            file = %path.display(),
            "This log has lost records (listed in the file and on the worker's /health); delete the file to acknowledge."
        );
    }
    Ok(losses)
}

pub(super) fn save_data_loss(dir: &Path, losses: &[DataLoss]) -> Result<()> {
    let json = serde_json::to_vec_pretty(losses).unwrap_or_default();
    write_file(&dir.join(DATA_LOSS_FILE), &json)
}
