//! The manifest of one partition's remote segments, `remote.json` in the partition folder:
//! the uploads that completed, in offset order. Readers and retention go by it alone; an
//! object the manifest does not list is never read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::producer_state::AbortedTxn;
use crate::segment::{file_stem, read_json, write_json};

/// The manifest's file name inside a partition folder.
pub(crate) const FILE: &str = "remote.json";

/// One segment in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteSegment {
    /// First offset.
    pub base: i64,
    /// The offset after the last batch.
    pub end: i64,
    /// Bytes of the `.log` object.
    pub size: u64,
    /// Largest record timestamp (retention by time and lookups by time).
    pub max_timestamp: i64,
    /// Aborted transactions overlapping the segment, `(producer id, first offset, marker
    /// offset)`: read_committed readers of the remote copy need them after the local
    /// segments that held the markers are gone.
    #[serde(default)]
    pub aborted: Vec<(i64, i64, i64)>,
}

impl RemoteSegment {
    /// The object path of the segment's files without extension.
    pub fn stem(&self, partition_path: &str) -> String {
        format!("{partition_path}/{}", file_stem(self.base))
    }

    /// The object paths of its three files.
    pub fn objects(&self, partition_path: &str) -> Vec<String> {
        let stem = self.stem(partition_path);
        ["log", "index", "timeindex"]
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .collect()
    }

    /// Aborted transactions overlapping `from..to`, as a fetch returns them.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.2 >= from && a.1 < to)
            .map(|&(producer_id, first_offset, last_offset)| AbortedTxn {
                producer_id,
                first_offset,
                last_offset,
            })
            .collect()
    }
}

/// The uploaded segments of a partition, ascending and contiguous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub segments: Vec<RemoteSegment>,
}

impl Manifest {
    /// Reads the manifest of the partition in `dir` (empty when there is none).
    pub fn read(dir: &Path) -> Result<Manifest> {
        Ok(read_json(&dir.join(FILE))?.unwrap_or_default())
    }

    /// Writes it through a temporary file, fsynced, and a rename.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(FILE), self)
    }

    /// The first offset held remotely.
    pub fn start(&self) -> Option<i64> {
        self.segments.first().map(|s| s.base)
    }

    /// The offset after the last one held remotely.
    pub fn end(&self) -> Option<i64> {
        self.segments.last().map(|s| s.end)
    }

    /// Whether the segment with this base offset was uploaded.
    pub fn contains(&self, base: i64) -> bool {
        self.segments
            .binary_search_by_key(&base, |s| s.base)
            .is_ok()
    }

    /// The segment holding `offset`, or the first after it (compaction is refused on tiered
    /// topics, but a reader may ask for an offset in a gap left by lost data).
    pub fn find(&self, offset: i64) -> Option<&RemoteSegment> {
        let i = self.segments.partition_point(|s| s.end <= offset);
        self.segments.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, end: i64) -> RemoteSegment {
        RemoteSegment {
            base,
            end,
            size: 10,
            max_timestamp: 0,
            aborted: vec![(7, base, end - 1)],
        }
    }

    #[test]
    fn find_and_ranges() {
        let m = Manifest {
            segments: vec![seg(0, 10), seg(10, 25), seg(30, 40)],
        };
        assert_eq!(m.find(0).unwrap().base, 0);
        assert_eq!(m.find(9).unwrap().base, 0);
        assert_eq!(m.find(10).unwrap().base, 10);
        assert_eq!(m.find(27).unwrap().base, 30);
        assert!(m.find(40).is_none());
        assert_eq!((m.start(), m.end()), (Some(0), Some(40)));
        assert!(m.contains(10) && !m.contains(11));
        assert_eq!(m.segments[1].aborted_in(0, 10).len(), 0);
        assert_eq!(m.segments[1].aborted_in(24, 30).len(), 1);
        assert_eq!(
            m.segments[2].objects("t-1/0"),
            vec![
                "t-1/0/00000000000000000030.log",
                "t-1/0/00000000000000000030.index",
                "t-1/0/00000000000000000030.timeindex"
            ]
        );
    }

    #[test]
    fn round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Manifest::default());
        let m = Manifest {
            segments: vec![seg(0, 10)],
        };
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        std::fs::write(dir.path().join(FILE), b"{torn").unwrap();
        let e = Manifest::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("remote.json"), "{e}");
    }
}
