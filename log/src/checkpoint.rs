//! The per-partition offsets checkpoint, and what a partition lost against it when reopened.
//!
//! Offsets are never reused, so the log must remember how far each partition went even when
//! its files do not say so any more (a segment deleted by hand, a corrupt batch truncated).
//! `<partition>/offsets.checkpoint` records the log start, the log end and the segment base
//! offsets; it is rewritten on clean close, by housekeeping when it changed, and before
//! retention deletes segments. On open the files are compared with it: offsets it knew and
//! the files no longer hold are lost — reported as [`DataLoss`] — and the log end stays where
//! the checkpoint had it.
//!
//! The log end written is the in-memory one: with `log.fsync` other than `always`, a power
//! loss can take records that were acknowledged and already read; they are reported as lost
//! too, and their offsets are not handed out again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::segment::{Damage, file_stem, write_json};

/// The checkpoint file's name inside a partition folder.
pub(crate) const FILE: &str = "offsets.checkpoint";

/// What a partition held at the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Base offsets of the segments, ascending.
    pub segments: Vec<i64>,
    /// The high watermark of a replica of a replicated topic (Kafka's
    /// `replication-offset-checkpoint`); absent for a topic of this node alone. A partition
    /// reopened with one is a replica until the cluster says whether it leads, and consumers
    /// read no further than it until the replicas agree again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
}

impl Checkpoint {
    /// Reads the checkpoint of the partition in `dir`; `None` when there is none (a folder
    /// from an older version) or it is unreadable (then the files alone decide, as before).
    pub fn read(dir: &Path) -> Option<Checkpoint> {
        let path = dir.join(FILE);
        let raw = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&raw) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Ignoring an unreadable offsets checkpoint.");
                None
            }
        }
    }

    /// Writes it (through a temporary file and a rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(FILE), self)
    }
}

/// Records a partition lost: offsets `from..to` are gone and will not be reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLoss {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First lost offset.
    pub from: i64,
    /// The offset after the last lost one.
    pub to: i64,
    /// What was found (a missing segment file, a damaged batch and where).
    pub reason: String,
    /// When the loss was found (ms since the epoch).
    pub detected_at: i64,
}

/// One segment as found on disk: base offset and the offset after its last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OnDisk {
    pub base: i64,
    pub end: i64,
}

/// What reopening a partition lost against its checkpoint, and where its offsets stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Lost ranges `(from, to, reason)`, ascending.
    pub lost: Vec<(i64, i64, String)>,
    /// The log start: never before the checkpoint's.
    pub log_start_offset: i64,
    /// The log end: never before the checkpoint's or a valid batch past damage.
    pub log_end_offset: i64,
}

/// Compares the segments on disk (ascending) with the checkpoint. `damage` is the repaired
/// damage of the last segment, if any. A pure function, so every case is a unit test.
///
/// - a segment the checkpoint lists and the disk lacks lost the offsets up to the next
///   segment known to either (or the checkpoint's end);
/// - the last segment lost its tail when it ends before the checkpoint's end (or before a
///   valid batch found past damage) and no missing segment follows it;
/// - a torn tail past the checkpoint's end loses nothing: those records were never counted.
pub(crate) fn reconcile(
    checkpoint: Option<&Checkpoint>,
    disk: &[OnDisk],
    damage: Option<&Damage>,
) -> Reconciled {
    let disk_start = disk.first().map(|s| s.base);
    let disk_end = disk.last().map(|s| s.end);
    let mut lost = Vec::new();
    let (cp_start, cp_end) = checkpoint.map_or((0, 0), |c| (c.log_start_offset, c.log_end_offset));
    let mut missing_after_last = false;
    if let Some(cp) = checkpoint {
        for (i, &base) in cp.segments.iter().enumerate() {
            if disk.iter().any(|s| s.base == base) {
                continue;
            }
            let next = cp.segments[i + 1..]
                .iter()
                .copied()
                .chain(disk.iter().map(|s| s.base))
                .filter(|b| *b > base)
                .min()
                .unwrap_or(cp_end);
            let (from, to) = (base.max(cp_start), next);
            if from < to {
                lost.push((
                    from,
                    to,
                    format!("segment file {}.log is missing", file_stem(base)),
                ));
            }
            if disk.last().is_some_and(|l| base > l.base) {
                missing_after_last = true;
            }
        }
    }
    if let Some(last) = disk.last() {
        let former_end = damage
            .and_then(|d| d.former_end)
            .unwrap_or(i64::MIN)
            .max(cp_end);
        if !missing_after_last && last.end < former_end {
            let from = last.end.max(cp_start);
            let reason = match damage {
                Some(d) => format!(
                    "segment file {} is damaged at byte {} (offset {}): {}; {} bytes from there were cut",
                    d.path.display(),
                    d.position,
                    d.offset,
                    d.reason,
                    d.dropped_bytes
                ),
                None => format!(
                    "segment file {}.log ends at offset {} but the log ended at {}",
                    file_stem(last.base),
                    last.end,
                    former_end
                ),
            };
            lost.push((from, former_end, reason));
        }
    }
    lost.sort();
    // The checkpoint's start stands even when the first segments are gone (emptied by
    // compaction, or lost): a fetch there goes on to the next offset that exists.
    let log_start_offset = match (checkpoint, disk_start) {
        (Some(_), _) => cp_start,
        (None, Some(s)) => s,
        (None, None) => 0,
    };
    let log_end_offset = disk_end
        .unwrap_or(0)
        .max(cp_end)
        .max(damage.and_then(|d| d.former_end).unwrap_or(0));
    Reconciled {
        lost,
        log_start_offset: log_start_offset.min(log_end_offset),
        log_end_offset,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn cp(start: i64, end: i64, segments: &[i64]) -> Checkpoint {
        Checkpoint {
            high_watermark: None,
            log_start_offset: start,
            log_end_offset: end,
            segments: segments.to_vec(),
        }
    }

    fn disk(segs: &[(i64, i64)]) -> Vec<OnDisk> {
        segs.iter()
            .map(|&(base, end)| OnDisk { base, end })
            .collect()
    }

    fn ranges(r: &Reconciled) -> Vec<(i64, i64)> {
        r.lost.iter().map(|l| (l.0, l.1)).collect()
    }

    #[test]
    fn nothing_lost_when_the_files_match() {
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10, 20])),
            &disk(&[(0, 10), (10, 20), (20, 30)]),
            None,
        );
        assert_eq!(ranges(&r), []);
        assert_eq!((r.log_start_offset, r.log_end_offset), (0, 30));
        // Records appended after the checkpoint are simply there.
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10, 20])),
            &disk(&[(0, 10), (10, 20), (20, 35), (35, 40)]),
            None,
        );
        assert_eq!(ranges(&r), []);
        assert_eq!(r.log_end_offset, 40);
    }

    #[test]
    fn compaction_gaps_are_not_losses() {
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10, 20])),
            &disk(&[(0, 7), (10, 12), (20, 30)]),
            None,
        );
        assert_eq!(ranges(&r), []);
    }

    #[test]
    fn missing_segments_lose_their_range() {
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10, 20])),
            &disk(&[(0, 10), (20, 30)]),
            None,
        );
        assert_eq!(ranges(&r), [(10, 20)]);
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10, 20])),
            &disk(&[(0, 10), (10, 20)]),
            None,
        );
        assert_eq!(ranges(&r), [(20, 30)]);
        assert_eq!(r.log_end_offset, 30);
        let r = reconcile(
            Some(&cp(5, 30, &[0, 10, 20])),
            &disk(&[(10, 20), (20, 30)]),
            None,
        );
        assert_eq!(ranges(&r), [(5, 10)]);
        assert_eq!(r.log_start_offset, 5);
        let r = reconcile(Some(&cp(0, 30, &[0, 10, 20])), &disk(&[]), None);
        assert_eq!(ranges(&r), [(0, 10), (10, 20), (20, 30)]);
        assert_eq!((r.log_start_offset, r.log_end_offset), (0, 30));
    }

    #[test]
    fn a_short_last_segment_loses_its_tail() {
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10])),
            &disk(&[(0, 10), (10, 25)]),
            None,
        );
        assert_eq!(ranges(&r), [(25, 30)]);
        assert_eq!(r.log_end_offset, 30);
    }

    fn damage(offset: i64, former_end: Option<i64>) -> Damage {
        Damage {
            path: PathBuf::from("00000000000000000010.log"),
            position: 100,
            offset,
            dropped_bytes: 50,
            reason: "crc mismatch".into(),
            former_end,
        }
    }

    #[test]
    fn damage_loses_up_to_the_last_valid_batch_or_the_checkpoint() {
        // A torn tail past the checkpoint: silent.
        let d = damage(30, None);
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10])),
            &disk(&[(0, 10), (10, 30)]),
            Some(&d),
        );
        assert_eq!(ranges(&r), []);
        // Corruption in the middle, valid batches after it.
        let d = damage(15, Some(40));
        let r = reconcile(
            Some(&cp(0, 30, &[0, 10])),
            &disk(&[(0, 10), (10, 15)]),
            Some(&d),
        );
        assert_eq!(ranges(&r), [(15, 40)]);
        assert!(r.lost[0].2.contains("byte 100"), "{}", r.lost[0].2);
        assert_eq!(r.log_end_offset, 40);
        // Without a checkpoint the valid batches alone tell the former end.
        let r = reconcile(None, &disk(&[(0, 10), (10, 15)]), Some(&d));
        assert_eq!(ranges(&r), [(15, 40)]);
    }

    #[test]
    fn no_checkpoint_trusts_the_files() {
        let r = reconcile(None, &disk(&[(3, 10), (10, 20)]), None);
        assert_eq!(ranges(&r), []);
        assert_eq!((r.log_start_offset, r.log_end_offset), (3, 20));
    }
}
