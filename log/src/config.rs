//! Topic and log configuration: every key with its default, parsed and validated once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration key or value that was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The key is not a topic configuration key.
    #[error("unknown topic config '{key}' (known: {known})")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The keys that exist.
        known: String,
    },
    /// The value does not parse or is out of range.
    #[error("invalid value '{value}' for {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A `KEY=VALUE` pair without `=`.
    #[error("expected KEY=VALUE, got '{0}'")]
    NotAPair(String),
}

/// Which clean-up a topic gets: deletion by retention, compaction, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupPolicy {
    /// Delete closed segments past `retention.ms` / `retention.bytes`.
    pub delete: bool,
    /// Keep only the latest record per key.
    pub compact: bool,
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy {
            delete: true,
            compact: false,
        }
    }
}

impl FromStr for CleanupPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "delete" => p.delete = true,
                "compact" => p.compact = true,
                other => return Err(format!("'{other}' is not one of delete, compact")),
            }
        }
        if !p.delete && !p.compact {
            return Err("give delete, compact or delete,compact".into());
        }
        Ok(p)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.delete, self.compact) {
            (true, true) => f.write_str("delete,compact"),
            (false, true) => f.write_str("compact"),
            _ => f.write_str("delete"),
        }
    }
}

/// Per-topic configuration, Kafka's keys and meanings.
///
/// Stored as the map of overrides only (see [`TopicConfig::overrides`]), so a default changed
/// in a later version applies to topics that never set the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`: closed segments whose newest record is older are deleted; -1 keeps
    /// forever. Default 7 days.
    pub retention_ms: i64,
    /// `retention.bytes`: oldest closed segments are deleted while a partition is larger;
    /// -1 (default) means no size limit.
    pub retention_bytes: i64,
    /// `segment.bytes`: the active segment is rolled when it would grow past this. Default
    /// 1 GiB, at least 1 KiB.
    pub segment_bytes: u64,
    /// `segment.ms`: the active segment is rolled when a batch's timestamp is this far past
    /// the segment's first batch (record time, as in Kafka). Default 7 days.
    pub segment_ms: i64,
    /// `cleanup.policy`: `delete`, `compact` or `delete,compact`. Default `delete`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long tombstones are kept by compaction. Default 1 day.
    pub delete_retention_ms: i64,
    /// `max.message.bytes`: the largest record batch a producer may append. Default 1 MiB.
    pub max_message_bytes: u32,
    /// `index.interval.bytes`: bytes between two sparse index entries. Default 4096.
    pub index_interval_bytes: u32,
    /// `remote.storage.enable`: copy closed segments to the log's remote storage and read
    /// old offsets back from it (tiered storage). Default false.
    pub remote_storage_enable: bool,
    /// `local.retention.ms`: with tiered storage, uploaded segments whose newest record is
    /// older are deleted from local disk; -2 (default) means `retention.ms`.
    pub local_retention_ms: i64,
    /// `local.retention.bytes`: with tiered storage, the oldest uploaded segments are deleted
    /// from local disk while the local part is larger; -2 (default) means `retention.bytes`.
    pub local_retention_bytes: i64,
    /// `min.insync.replicas`: in a cluster, an `acks=all` write is refused while fewer
    /// replicas are in sync. Default 1.
    pub min_insync_replicas: u32,
    /// `unclean.leader.election.enable`: in a cluster, elect a leader outside the ISR when no
    /// in-sync replica is alive, losing the records it lacks. Default false.
    pub unclean_leader_election: bool,
    overrides: BTreeMap<String, String>,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Every topic config key, its default, and what it means (for `topics describe` and docs).
pub const TOPIC_CONFIG_KEYS: &[(&str, &str, &str)] = &[
    (
        "retention.ms",
        "604800000",
        "delete closed segments whose newest record is older (-1: never)",
    ),
    (
        "retention.bytes",
        "-1",
        "delete oldest closed segments while the partition is larger (-1: no limit)",
    ),
    (
        "segment.bytes",
        "1073741824",
        "roll the active segment at this size (min 1024)",
    ),
    (
        "segment.ms",
        "604800000",
        "roll when a batch is this far (record time) past the segment's first",
    ),
    (
        "cleanup.policy",
        "delete",
        "delete | compact | delete,compact",
    ),
    (
        "delete.retention.ms",
        "86400000",
        "how long compaction keeps tombstones",
    ),
    (
        "max.message.bytes",
        "1048576",
        "largest record batch a producer may append",
    ),
    (
        "index.interval.bytes",
        "4096",
        "bytes between sparse index entries",
    ),
    (
        "remote.storage.enable",
        "false",
        "tiered storage: upload closed segments to the remote storage, read old offsets from it",
    ),
    (
        "local.retention.ms",
        "-2",
        "tiered storage: delete uploaded segments locally past this age (-2: retention.ms)",
    ),
    (
        "local.retention.bytes",
        "-2",
        "tiered storage: delete oldest uploaded segments locally above this size (-2: retention.bytes)",
    ),
    (
        "min.insync.replicas",
        "1",
        "cluster: acks=all writes are refused while fewer replicas are in sync",
    ),
    (
        "unclean.leader.election.enable",
        "false",
        "cluster: elect a replica outside the ISR when none in it is alive (may lose acknowledged records)",
    ),
];

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            cleanup_policy: CleanupPolicy::default(),
            delete_retention_ms: DAY_MS,
            max_message_bytes: 1 << 20,
            index_interval_bytes: 4096,
            remote_storage_enable: false,
            local_retention_ms: -2,
            local_retention_bytes: -2,
            min_insync_replicas: 1,
            unclean_leader_election: false,
            overrides: BTreeMap::new(),
        }
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

fn parse_int<T: FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not a whole number in range"))
}

fn at_least(key: &str, value: &str, v: i64, min: i64) -> Result<i64, ConfigError> {
    if v < min {
        Err(invalid(key, value, format!("must be at least {min}")))
    } else {
        Ok(v)
    }
}

impl TopicConfig {
    /// A config with the given `KEY=VALUE` overrides applied on top of the defaults.
    pub fn from_overrides<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut c = TopicConfig::default();
        for (k, v) in pairs {
            c.set(k, v)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the keys that depend on each other (after every `set` of a change).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.remote_storage_enable && self.cleanup_policy.compact {
            return Err(invalid(
                "remote.storage.enable",
                "true",
                "tiered storage is for cleanup.policy=delete topics; a compacted topic keeps its data local",
            ));
        }
        for (key, local, total) in [
            (
                "local.retention.ms",
                self.local_retention_ms,
                self.retention_ms,
            ),
            (
                "local.retention.bytes",
                self.local_retention_bytes,
                self.retention_bytes,
            ),
        ] {
            if local >= 0 && total >= 0 && local > total {
                return Err(invalid(
                    key,
                    &local.to_string(),
                    format!(
                        "must not be more than {} ({total})",
                        key.trim_start_matches("local.")
                    ),
                ));
            }
            if local == -1 && total >= 0 {
                return Err(invalid(
                    key,
                    "-1",
                    format!(
                        "cannot keep forever locally what {} deletes; use -2 to follow it",
                        key.trim_start_matches("local.")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `local.retention.ms` as it applies (-2 follows `retention.ms`).
    pub fn effective_local_retention_ms(&self) -> i64 {
        if self.local_retention_ms == -2 {
            self.retention_ms
        } else {
            self.local_retention_ms
        }
    }

    /// `local.retention.bytes` as it applies (-2 follows `retention.bytes`).
    pub fn effective_local_retention_bytes(&self) -> i64 {
        if self.local_retention_bytes == -2 {
            self.retention_bytes
        } else {
            self.local_retention_bytes
        }
    }

    /// Sets one key, validating its value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "retention.ms" => self.retention_ms = at_least(key, value, parse_int(key, value)?, -1)?,
            "retention.bytes" => {
                self.retention_bytes = at_least(key, value, parse_int(key, value)?, -1)?
            }
            "segment.bytes" => {
                self.segment_bytes = at_least(key, value, parse_int(key, value)?, 1024)? as u64
            }
            "segment.ms" => self.segment_ms = at_least(key, value, parse_int(key, value)?, 1)?,
            "cleanup.policy" => {
                self.cleanup_policy = value.parse().map_err(|e| invalid(key, value, e))?
            }
            "delete.retention.ms" => {
                self.delete_retention_ms = at_least(key, value, parse_int(key, value)?, 0)?
            }
            "max.message.bytes" => {
                let v = at_least(key, value, parse_int(key, value)?, 64)?;
                self.max_message_bytes =
                    u32::try_from(v).map_err(|_| invalid(key, value, "too large"))?;
            }
            "index.interval.bytes" => {
                let v = at_least(key, value, parse_int(key, value)?, 0)?;
                self.index_interval_bytes =
                    u32::try_from(v).map_err(|_| invalid(key, value, "too large"))?;
            }
            "remote.storage.enable" => self.remote_storage_enable = parse_bool(key, value)?,
            "unclean.leader.election.enable" => {
                self.unclean_leader_election = parse_bool(key, value)?
            }
            "min.insync.replicas" => {
                let v = at_least(key, value, parse_int(key, value)?, 1)?;
                self.min_insync_replicas =
                    u32::try_from(v).map_err(|_| invalid(key, value, "too large"))?;
            }
            "local.retention.ms" => {
                self.local_retention_ms = at_least(key, value, parse_int(key, value)?, -2)?
            }
            "local.retention.bytes" => {
                self.local_retention_bytes = at_least(key, value, parse_int(key, value)?, -2)?
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.into(),
                    known: TOPIC_CONFIG_KEYS
                        .iter()
                        .map(|k| k.0)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        self.overrides
            .insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// The keys set explicitly, as given.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    /// Every key with its effective value and whether it was set explicitly.
    pub fn entries(&self) -> Vec<(&'static str, String, bool)> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|(k, default, _)| match self.overrides.get(*k) {
                Some(v) => (*k, v.clone(), true),
                None => (*k, (*default).to_string(), false),
            })
            .collect()
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::NotAPair(s.into()))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// When appended data is forced to disk with fsync.
///
/// Data written is in the OS page cache at once, so a crash of the process never loses an
/// acknowledged record under any policy; the policy decides what survives a crash of the
/// machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append waits for an fsync; concurrent appends share one (group commit).
    Always,
    /// A background thread fsyncs dirty partitions at this interval.
    Interval(Duration),
    /// Leave flushing to the OS.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::Interval(Duration::from_secs(1))),
            other => match other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
            {
                Some(ms) => Ok(FsyncPolicy::Interval(Duration::from_millis(ms))),
                None => Err(invalid(
                    "fsync",
                    other,
                    "expected always, never, interval or interval:MILLIS",
                )),
            },
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Options of the whole log (one data directory).
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// When data is fsynced. Default `interval:1000`.
    pub fsync: FsyncPolicy,
    /// Create unknown topics on first write (with `default_partitions`). Default off.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics. Default 1.
    pub default_partitions: u32,
    /// Partitions of `__consumer_offsets`. Default 8.
    pub offsets_topic_partitions: u32,
    /// How often retention, compaction, transaction timeouts and group session timeouts are
    /// checked. Default 1 s.
    pub housekeeping_interval: Duration,
    /// The longest transaction timeout a producer may ask for. Default 15 min.
    pub max_transaction_timeout: Duration,
    /// Where topics with `remote.storage.enable=true` keep their old segments. `None`: the
    /// storage the data directory was last opened with (`remote-storage.json`), if any.
    pub remote_storage: Option<crate::remote::RemoteStorage>,
    /// How often closed segments of tiered topics are looked for and uploaded. Default 1 s.
    pub remote_upload_interval: Duration,
    /// How long one request to the remote storage is retried before it fails (a reader then
    /// gets an error; an upload is tried again next round). Default 30 s.
    pub remote_retry_timeout: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            auto_create_topics: false,
            default_partitions: 1,
            offsets_topic_partitions: 8,
            housekeeping_interval: Duration::from_secs(1),
            max_transaction_timeout: Duration::from_secs(15 * 60),
            remote_storage: None,
            remote_upload_interval: Duration::from_secs(1),
            remote_retry_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c =
            TopicConfig::from_overrides([("retention.ms", "1000"), ("cleanup.policy", "compact")])
                .unwrap();
        assert_eq!(c.retention_ms, 1000);
        assert!(c.cleanup_policy.compact && !c.cleanup_policy.delete);
        assert_eq!(c.max_message_bytes, 1 << 20);
        let e = c.entries();
        assert!(e.contains(&("retention.ms", "1000".into(), true)));
        assert!(e.contains(&("segment.bytes", "1073741824".into(), false)));
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = TopicConfig::from_overrides([("segment.bytes", "12")]).unwrap_err();
        assert!(err.to_string().contains("segment.bytes"), "{err}");
        let err = TopicConfig::from_overrides([("retention.ms", "soon")]).unwrap_err();
        assert!(err.to_string().contains("retention.ms"), "{err}");
        let err = TopicConfig::from_overrides([("retention.minutes", "1")]).unwrap_err();
        assert!(err.to_string().contains("unknown topic config"), "{err}");
        let err = TopicConfig::from_overrides([("cleanup.policy", "forever")]).unwrap_err();
        assert!(err.to_string().contains("forever"), "{err}");
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Always
        );
        assert_eq!(
            "interval:250".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
