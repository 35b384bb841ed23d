//! Topics: names, creation, partitions, config changes and deletion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::Log;
use super::data_loss::save_data_loss;
use crate::config::{FsyncPolicy, LogOptions, TopicConfig};
use crate::error::{LogError, Result};
use crate::partition::{Partition, PartitionInfo};
use crate::record::now_ms;
use crate::remote::RemoteTier;
use crate::segment::write_file;

/// Tells apart the trash folders of deletes within one millisecond.
static DELETE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether a topic is internal: bookkeeping of the log and the worker, which users may read
/// but not delete or write (the API and the CLI refuse it; the worker's own writers go
/// through the log directly).
///
/// Internal are names starting with `__` (`__consumer_offsets`, `__transaction_state`,
/// `__sluice_source_positions`, `__sluice_catalog`, `__sluice_schemas`, ...) and state-store
/// changelogs, named `<store>-changelog` as the state crate and Kafka Streams name them (a
/// SQL query's are `<query id>-changelog` and `<query id>-source-changelog`): a record
/// written into a changelog by hand would change a query's state behind its back.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name.ends_with("-changelog")
}

/// Checks a topic name: what `create_topic` accepts.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidTopicName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("it is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("use only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
    #[serde(default)]
    config: BTreeMap<String, String>,
    /// Tells this topic from an earlier one of the same name (its remote storage folder is
    /// `<name>-<id>`). Topics from before tiered storage get one when next opened.
    #[serde(default)]
    id: Option<String>,
}

/// A new topic id: the creation time in nanoseconds and a counter, in hex. Unique within a
/// data directory, which is all a remote folder name needs (a directory owns its prefix).
fn new_topic_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}{:04x}",
        DELETE_SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// A topic: its config and partitions.
#[derive(Debug)]
pub struct Topic {
    pub(super) name: Arc<str>,
    id: String,
    dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    pub(super) partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().len() as u32
    }
    /// The effective config.
    pub fn config(&self) -> Arc<TopicConfig> {
        Arc::clone(&self.config.read())
    }
    fn save_meta(&self) -> Result<()> {
        let meta = TopicMeta {
            partitions: self.partition_count(),
            config: self.config.read().overrides().clone(),
            id: Some(self.id.clone()),
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_file(&self.dir.join("topic.json"), &json)
    }
}

/// A topic as shown by list and describe.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Whether it is internal ([`is_internal_topic`]).
    pub internal: bool,
    /// Each partition's offsets and size.
    pub partitions: Vec<PartitionInfo>,
    /// Every config key: (key, effective value, set explicitly).
    pub config: Vec<(&'static str, String, bool)>,
}

impl Log {
    /// Creates a topic with `partitions` partitions and config overrides.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: &[(String, String)],
    ) -> Result<()> {
        self.check_open()?;
        validate_topic_name(name)?;
        if partitions == 0 {
            return Err(LogError::InvalidPartitions {
                topic: name.into(),
                reason: "a topic needs at least one partition".into(),
            });
        }
        let config = Arc::new(TopicConfig::from_overrides(
            config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?);
        self.check_remote(name, &config)?;
        let mut topics = self.inner.topics.write();
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.into()));
        }
        let dir = self.inner.dir.join("topics").join(name);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let topic = open_topic(
            name,
            &new_topic_id(),
            &dir,
            partitions,
            config,
            self.inner.options.fsync,
            self.inner.remote.as_ref(),
            false,
        )?;
        topic.save_meta()?;
        for p in topic.partitions.read().iter() {
            p.checkpoint()?;
        }
        tracing::info!(topic = name, partitions, "Created a topic.");
        topics.insert(name.to_string(), Arc::new(topic));
        Ok(())
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.into()))
    }

    /// The topic, created with the default partitions if auto-create is on.
    pub fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Err(LogError::UnknownTopic(_)) if self.inner.options.auto_create_topics => {
                match self.create_topic(name, self.inner.options.default_partitions, &[]) {
                    Ok(()) | Err(LogError::TopicExists(_)) => self.topic(name),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Makes every replica of a cluster's topic this node's own (the node runs without its
    /// cluster now); how many partitions were.
    pub fn detach_replicas(&self) -> Result<usize> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        let mut n = 0;
        for t in topics {
            for p in t.partitions.read().iter() {
                if p.is_replica() {
                    p.detach()?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Names of all topics, internal ones included.
    pub fn topic_names(&self) -> Vec<String> {
        self.inner.topics.read().keys().cloned().collect()
    }

    /// Describes a topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let t = self.topic(name)?;
        let partitions = t.partitions.read().iter().map(|p| p.info()).collect();
        Ok(TopicDescription {
            name: name.into(),
            internal: is_internal_topic(name),
            partitions,
            config: t.config().entries(),
        })
    }

    /// Grows a topic to `partitions`. Existing records stay where they are, so keys written
    /// before may now hash to another partition (as in Kafka).
    pub fn alter_partitions(&self, name: &str, partitions: u32) -> Result<()> {
        self.check_open()?;
        let t = self.topic(name)?;
        let mut parts = t.partitions.write();
        let current = parts.len() as u32;
        if partitions < current {
            return Err(LogError::InvalidPartitions {
                topic: name.into(),
                reason: format!(
                    "partitions can only grow: it has {current}, asked for {partitions}; create a new topic to shrink"
                ),
            });
        }
        for id in current..partitions {
            let p = Partition::open(
                Arc::clone(&t.name),
                id,
                &t.dir.join(id.to_string()),
                t.config(),
                self.inner.options.fsync,
                false,
            )?;
            if let Some(tier) = &self.inner.remote {
                p.attach_remote(Arc::clone(tier), &t.id);
            }
            p.checkpoint()?;
            parts.push(Arc::new(p));
        }
        drop(parts);
        t.save_meta()?;
        tracing::info!(
            topic = name,
            from = current,
            to = partitions,
            "Added partitions."
        );
        Ok(())
    }

    /// Changes config keys of a topic.
    pub fn alter_config(&self, name: &str, pairs: &[(String, String)]) -> Result<()> {
        self.check_open()?;
        let t = self.topic(name)?;
        let mut cfg = (*t.config()).clone();
        for (k, v) in pairs {
            cfg.set(k, v)?;
        }
        cfg.validate()?;
        self.check_remote(name, &cfg)?;
        let cfg = Arc::new(cfg);
        *t.config.write() = Arc::clone(&cfg);
        for p in t.partitions.read().iter() {
            p.set_config(Arc::clone(&cfg));
        }
        t.save_meta()
    }

    /// Removes config overrides of a topic: those keys go back to their defaults.
    pub fn reset_config(&self, name: &str, keys: &[String]) -> Result<()> {
        self.check_open()?;
        let t = self.topic(name)?;
        let old = t.config();
        let cfg = TopicConfig::from_overrides(
            old.overrides()
                .iter()
                .filter(|(k, _)| !keys.contains(k))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        self.check_remote(name, &cfg)?;
        let cfg = Arc::new(cfg);
        *t.config.write() = Arc::clone(&cfg);
        for p in t.partitions.read().iter() {
            p.set_config(Arc::clone(&cfg));
        }
        t.save_meta()
    }

    /// Kafka's DeleteRecords: moves a partition's log start to `offset` (at most its high
    /// watermark; -1 means the high watermark) so the records before it are no longer
    /// served, durably (checkpointed); retention removes their segments. Returns the new
    /// log start.
    pub fn delete_records(&self, topic: &str, partition: u32, offset: i64) -> Result<i64> {
        self.check_open()?;
        if is_internal_topic(topic) {
            return Err(LogError::InternalTopic {
                name: topic.into(),
                action: "truncated",
            });
        }
        let p = self.partition(topic, partition)?;
        let info = p.info();
        let target = if offset == -1 {
            info.high_watermark
        } else {
            offset
        };
        if target < 0 || target > info.high_watermark {
            return Err(LogError::OffsetOutOfRange {
                topic: topic.into(),
                partition,
                offset,
                log_start: info.log_start_offset,
                log_end: info.high_watermark,
            });
        }
        p.truncate_before(target)?;
        p.checkpoint()?;
        Ok(p.log_start_offset())
    }

    /// Deletes a topic and its data, and soft-deletes its schema subjects (`<topic>-value`,
    /// `<topic>-key`). Topics starting with `__` (the log's and the worker's bookkeeping)
    /// cannot be deleted. All or nothing for the data: when the folder cannot be moved away,
    /// the topic stays as it was. Should the subjects then fail to be deleted, the error is
    /// returned with the topic already gone; `log.schemas().delete_subject(..)` finishes it.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        if name.starts_with("__") {
            return Err(LogError::InternalTopic {
                name: name.into(),
                action: "deleted",
            });
        }
        let mut topics = self.inner.topics.write();
        let t = topics
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.into()))?;
        // Renamed first so a crash mid-delete never leaves half a topic to reopen. The trash
        // name does not contain the topic's: a 249-character name plus a prefix would pass
        // the file system's 255-byte limit on a name.
        let trash = self.inner.dir.join("topics").join(format!(
            ".deleting-{}-{}",
            now_ms(),
            DELETE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&t.dir, &trash).map_err(|e| LogError::io("rename", &t.dir, e))?;
        for p in t.partitions.read().iter() {
            p.retire();
        }
        topics.remove(name);
        drop(topics);
        // Best effort, as Kafka: the remote copies go with the topic. What a failure leaves
        // is never read again (a new topic of the name has a new id, hence a new folder).
        for p in t.partitions.read().iter() {
            if let Err(e) = p.delete_remote_folder() {
                tracing::warn!(topic = name, partition = p.id(), error = %e, "Could not delete a deleted topic's remote segments; delete the folder by hand.");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            // The topic is gone already; the next open removes what is left.
            tracing::warn!(topic = name, path = %trash.display(), error = %e, "Could not remove a deleted topic's files.");
        }
        let mut losses = self.inner.losses.lock();
        if losses.iter().any(|l| l.topic == name) {
            losses.retain(|l| l.topic != name);
            if let Err(e) = save_data_loss(&self.inner.dir, &losses) {
                tracing::warn!(topic = name, error = %e, "Could not update the data-loss list.");
            }
        }
        drop(losses);
        tracing::info!(topic = name, "Deleted a topic.");
        // As ksqlDB's `DROP ... DELETE TOPIC`: a topic re-created under the name starts a
        // fresh schema history.
        self.delete_topic_subjects(name)
    }

    /// Refuses tiering where the log has no remote storage to tier to.
    fn check_remote(&self, name: &str, config: &TopicConfig) -> Result<()> {
        if config.remote_storage_enable && self.inner.remote.is_none() {
            return Err(LogError::RemoteStorage(format!(
                "topic '{name}' sets remote.storage.enable=true, but the log has no remote storage; start it with --remote-storage URL"
            )));
        }
        // Compaction would rewrite local copies of segments whose remote copies stay as
        // they were (and readers of a compacted-away range would see the remote copy).
        let tiered = self
            .topic(name)
            .is_ok_and(|t| t.partitions.read().iter().any(|p| p.has_remote_segments()));
        if config.cleanup_policy.compact && tiered {
            return Err(LogError::RemoteStorage(format!(
                "topic '{name}' has segments in remote storage; it cannot be compacted (delete and recreate it to compact)"
            )));
        }
        Ok(())
    }

    /// One partition of a topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        let parts = t.partitions.read();
        parts
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.into(),
                partition,
                partitions: parts.len() as u32,
            })
    }
}

/// Opens every topic folder under `topics_dir`, finishing deletes and creates a crash cut short.
pub(super) fn load_topics(
    topics_dir: &Path,
    options: &LogOptions,
    remote: Option<&Arc<RemoteTier>>,
    recover: bool,
) -> Result<BTreeMap<String, Arc<Topic>>> {
    let mut topics = BTreeMap::new();
    for entry in std::fs::read_dir(topics_dir).map_err(|e| LogError::io("list", topics_dir, e))? {
        let entry = entry.map_err(|e| LogError::io("list", topics_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".deleting-") {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        let meta_path = path.join("topic.json");
        let raw = match std::fs::read(&meta_path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A create that crashed before writing its metadata.
                tracing::warn!(path = %path.display(), "Removing a topic folder without topic.json.");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            Err(e) => return Err(LogError::io("read", &meta_path, e)),
        };
        let meta: TopicMeta = serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
            path: meta_path.clone(),
            position: 0,
            reason: e.to_string(),
        })?;
        let config = Arc::new(TopicConfig::from_overrides(
            meta.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?);
        let topic = open_topic(
            &name,
            meta.id.as_deref().unwrap_or(&new_topic_id()),
            &path,
            meta.partitions,
            config,
            options.fsync,
            remote,
            recover,
        )?;
        if meta.id.is_none() {
            topic.save_meta()?;
        }
        topics.insert(name, Arc::new(topic));
    }
    Ok(topics)
}

#[allow(clippy::too_many_arguments)]
fn open_topic(
    name: &str,
    id: &str,
    dir: &Path,
    partitions: u32,
    config: Arc<TopicConfig>,
    fsync: FsyncPolicy,
    remote: Option<&Arc<RemoteTier>>,
    recover: bool,
) -> Result<Topic> {
    std::fs::create_dir_all(dir).map_err(|e| LogError::io("create topic dir", dir, e))?;
    let name: Arc<str> = Arc::from(name);
    let mut parts = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let partition = Partition::open(
            Arc::clone(&name),
            p,
            &dir.join(p.to_string()),
            Arc::clone(&config),
            fsync,
            recover,
        )?;
        if let Some(tier) = remote {
            partition.attach_remote(Arc::clone(tier), id);
        }
        parts.push(Arc::new(partition));
    }
    Ok(Topic {
        name,
        id: id.to_string(),
        dir: dir.to_path_buf(),
        config: RwLock::new(config),
        partitions: RwLock::new(parts),
    })
}
