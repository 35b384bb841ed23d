//! A partition's leader epochs: the first offset each leader wrote (Kafka's
//! `leader-epoch-checkpoint`, KIP-101).
//!
//! A replica that returns after a leader change asks the new leader where its own last epoch
//! ended there (`OffsetForLeaderEpoch`) and truncates what it wrote past that point: the
//! records an old leader took but never replicated. Comparing epochs rather than high
//! watermarks keeps a replica from truncating records that were committed, or keeping records
//! that were not.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// The file in a partition's folder.
pub(crate) const FILE: &str = "leader-epochs";

/// Each epoch's start offset, ascending in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaderEpochs {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochs {
    /// The epochs of the partition in `dir`; none when it never had the file.
    pub(crate) fn load(dir: &Path) -> Result<LeaderEpochs> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(LogError::io("read leader epochs", path, e)),
        };
        let mut epochs = LeaderEpochs::default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parsed = line.split_once(' ').and_then(|(e, o)| {
                Some((e.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?))
            });
            let Some((epoch, offset)) = parsed else {
                return Err(LogError::io(
                    "read leader epochs",
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line {} is not 'epoch offset': {line:?}", i + 1),
                    ),
                ));
            };
            epochs.assign(epoch, offset);
        }
        Ok(epochs)
    }

    /// Writes the file (a new file renamed over the old, so a crash leaves one of the two).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
        let mut text = String::new();
        for (e, o) in &self.entries {
            text.push_str(&format!("{e} {o}\n"));
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| LogError::io("write leader epochs", path.clone(), e))
    }

    /// Records that `epoch` starts at `offset`; returns whether that changed anything. An
    /// epoch at or below the last one is ignored (a leader's batches all carry its epoch).
    pub(crate) fn assign(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch < 0 || self.entries.last().is_some_and(|(e, _)| *e >= epoch) {
            return false;
        }
        // A later epoch cannot start before an earlier one's records.
        self.entries.retain(|(_, o)| *o < offset);
        self.entries.push((epoch, offset));
        true
    }

    /// The latest epoch, if any.
    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Where `epoch` ended in this log whose end is `log_end`: the largest epoch at or below
    /// it, and the start offset of the next epoch (or `log_end` for the latest). `None` when
    /// the log knows no epoch that old (Kafka answers `UNDEFINED_EPOCH_OFFSET`).
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.iter().rposition(|(e, _)| *e <= epoch)?;
        let end = self.entries.get(i + 1).map_or(log_end, |(_, o)| *o);
        Some((self.entries[i].0, end))
    }

    /// Forgets epochs that start at or after `offset` (the log was truncated there).
    pub(crate) fn truncate_from(&mut self, offset: i64) {
        self.entries.retain(|(_, o)| *o < offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_ends_where_the_next_begins_and_the_latest_at_the_log_end() {
        let mut e = LeaderEpochs::default();
        assert!(e.assign(0, 0));
        assert!(e.assign(2, 100));
        assert!(!e.assign(1, 150), "older than the latest");
        assert!(e.assign(5, 180));
        assert_eq!(e.end_offset_for(0, 200), Some((0, 100)));
        assert_eq!(
            e.end_offset_for(1, 200),
            Some((0, 100)),
            "1 never led: 0 did"
        );
        assert_eq!(e.end_offset_for(4, 200), Some((2, 180)));
        assert_eq!(e.end_offset_for(9, 200), Some((5, 200)));
        assert_eq!(e.end_offset_for(-1, 200), None);
        e.truncate_from(150);
        assert_eq!(e.latest(), Some(2));
        assert_eq!(e.end_offset_for(9, 150), Some((2, 150)));
    }

    #[test]
    fn the_file_round_trips_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = LeaderEpochs::default();
        e.assign(0, 0);
        e.assign(3, 42);
        e.save(dir.path()).unwrap();
        assert_eq!(LeaderEpochs::load(dir.path()).unwrap(), e);
        std::fs::write(dir.path().join(FILE), "0 0\nthree 42\n").unwrap();
        let err = LeaderEpochs::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
