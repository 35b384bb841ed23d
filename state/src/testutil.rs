//! Test support: a state environment and a real log in a temp folder, and an epoch commit
//! that does what a task does (changes to the changelog in a log transaction, then commit).

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_log::{Log, LogOptions, Producer, ProducerConfig, Record};
use tempfile::TempDir;

use crate::{
    ChangelogTopic, KvStore, SessionOptions, SessionStore, StateConfig, StateEnv, StateStore,
    StoreId, WindowOptions, WindowStore,
};

pub(crate) struct Harness {
    pub dir: TempDir,
    pub env: StateEnv,
    pub log: Log,
    producer: Mutex<Option<Producer>>,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(StateConfig {
            dir: dir.path().join("state"),
            block_cache_bytes: 4 << 20,
            write_buffer_bytes: 4 << 20,
        })
        .unwrap();
        let log = Log::open(dir.path().join("log"), LogOptions::default()).unwrap();
        Harness {
            dir,
            env,
            log,
            producer: Mutex::new(None),
        }
    }

    pub fn changelog(name: &str, partition: u32) -> ChangelogTopic {
        ChangelogTopic::new(format!("{name}-changelog"), partition, 2)
    }

    pub fn id(name: &str, partition: u32) -> StoreId {
        StoreId::new(name, partition)
    }

    /// Opens and restores a key-value store.
    pub fn kv(&self, name: &str, partition: u32) -> KvStore {
        let mut s = self
            .env
            .open_kv(Self::id(name, partition), Self::changelog(name, partition))
            .unwrap();
        s.restore(&self.log).unwrap();
        s
    }

    pub fn window(&self, name: &str, partition: u32, retention_ms: i64) -> WindowStore {
        let mut s = self
            .env
            .open_window(
                Self::id(name, partition),
                Self::changelog(name, partition),
                WindowOptions { retention_ms },
            )
            .unwrap();
        s.restore(&self.log).unwrap();
        s
    }

    pub fn session(&self, name: &str, partition: u32, retention_ms: i64) -> SessionStore {
        let mut s = self
            .env
            .open_session(
                Self::id(name, partition),
                Self::changelog(name, partition),
                SessionOptions { retention_ms },
            )
            .unwrap();
        s.restore(&self.log).unwrap();
        s
    }

    /// Writes the store's changes to its changelog in one committed log transaction, then
    /// commits the store at the offset after the last record; returns that offset.
    pub fn commit_epoch(&self, store: &mut impl StateStore) -> i64 {
        let changelog = store.changelog().clone();
        let mut guard = self.producer.lock();
        let producer = guard.get_or_insert_with(|| {
            self.log
                .transactional_producer("state-tests", ProducerConfig::default())
                .unwrap()
        });
        producer.begin_transaction().unwrap();
        let mut last = None;
        for change in store.changes() {
            let r = change.into_record(sluice_log::record::now_ms());
            if let Some(info) = producer
                .send_to(&changelog.topic, changelog.partition, r)
                .unwrap()
            {
                last = last.max(Some(info.last_offset));
            }
        }
        for (_, _, info) in producer.flush().unwrap() {
            last = last.max(Some(info.last_offset));
        }
        producer.commit_transaction().unwrap();
        let next = last.map_or(store.applied_offset(), |l| l + 1);
        store.commit(next).unwrap();
        next
    }

    /// Appends plain records to a changelog, as another (committed) epoch would have.
    pub fn append(&self, changelog: &ChangelogTopic, records: &[(&str, Option<&str>)]) {
        let records: Vec<Record> = records
            .iter()
            .map(|(k, v)| Record {
                key: Some(Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Vec::new(),
                timestamp: sluice_log::record::now_ms(),
            })
            .collect();
        self.log
            .append_records(&changelog.topic, changelog.partition, &records)
            .unwrap();
    }

    /// The committed end of a changelog partition.
    pub fn changelog_end(&self, changelog: &ChangelogTopic) -> i64 {
        self.log
            .list_offset(
                &changelog.topic,
                changelog.partition,
                sluice_log::OffsetSpec::Latest,
                sluice_log::Isolation::ReadCommitted,
            )
            .unwrap()
            .unwrap()
    }
}

/// Collects a scan into owned pairs, failing the test on a scan error.
pub(crate) fn collect(
    iter: impl Iterator<Item = crate::Result<(Bytes, Bytes)>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.map(|r| {
        let (k, v) = r.unwrap();
        (k.to_vec(), v.to_vec())
    })
    .collect()
}
