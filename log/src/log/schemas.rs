//! The schema registry's store: the subjects in `__sluice_schemas`, replayed on open and
//! appended to on each change.

use bytes::Bytes;

use super::Log;
use crate::error::{LogError, Result};
use crate::record::{Record, now_ms};
use crate::schema::store::{SchemaStore, StoredRecord};
use crate::schema::{SCHEMAS_TOPIC, SchemaRegistry, key_subject, value_subject};

impl Log {
    /// The schema registry of this log.
    pub fn schemas(&self) -> SchemaRegistry {
        SchemaRegistry::new(self.clone())
    }

    /// Replays `__sluice_schemas` (if it exists) into memory. A record that cannot be read
    /// is skipped with a warning: one bad record must not keep the log from opening.
    pub(super) fn load_schemas(&self) -> Result<()> {
        if self.topic(SCHEMAS_TOPIC).is_err() {
            return Ok(());
        }
        let mut store = SchemaStore::default();
        self.read_all(SCHEMAS_TOPIC, 0, |offset, r| {
            let Some(key) = r.key else {
                tracing::warn!(topic = SCHEMAS_TOPIC, offset, "Skipping a schema record without a key.");
                return;
            };
            if let Err(reason) = store.apply(&key, r.value.as_deref()) {
                tracing::warn!(topic = SCHEMAS_TOPIC, offset, %reason, "Skipping an unreadable schema record.");
            }
        })?;
        *self.inner.schemas.lock() = store;
        Ok(())
    }

    /// Runs a change with the store locked.
    ///
    /// The lock is held across the append on purpose: a version and an id are decided and
    /// written under it, so concurrent registrations cannot take the same ones, and the
    /// topic's order is the order in which changes were applied. Changes are rare.
    pub(crate) fn with_schema_store<T>(
        &self,
        f: impl FnOnce(&mut SchemaStore, &Log) -> Result<T>,
    ) -> Result<T> {
        let mut store = self.inner.schemas.lock();
        f(&mut store, self)
    }

    /// Runs a lookup on the store.
    pub(crate) fn read_schema_store<T>(&self, f: impl FnOnce(&SchemaStore) -> T) -> T {
        f(&self.inner.schemas.lock())
    }

    /// Appends records to `__sluice_schemas` (creating it on first use) in one batch, then
    /// applies them to `store`: nothing becomes visible before it is written.
    pub(crate) fn append_schema_records(
        &self,
        store: &mut SchemaStore,
        records: Vec<StoredRecord>,
    ) -> Result<()> {
        self.check_open()?;
        if records.is_empty() {
            return Ok(());
        }
        if self.topic(SCHEMAS_TOPIC).is_err() {
            match self.create_topic(SCHEMAS_TOPIC, 1, &super::internal_topic_config()) {
                Ok(()) | Err(LogError::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let timestamp = now_ms();
        let batch: Vec<Record> = records
            .iter()
            .map(|(k, v)| Record {
                key: Some(Bytes::from(k.clone())),
                value: v.clone().map(Bytes::from),
                headers: Vec::new(),
                timestamp,
            })
            .collect();
        self.append_records(SCHEMAS_TOPIC, 0, &batch)?;
        for (k, v) in &records {
            if let Err(reason) = store.apply(k, v.as_deref()) {
                // Records built by the store itself always apply.
                tracing::error!(%reason, "A schema record just written does not apply; this is a bug.");
            }
        }
        Ok(())
    }

    /// Soft-deletes the value and key subjects of a deleted topic.
    pub(super) fn delete_topic_subjects(&self, topic: &str) -> Result<()> {
        let registry = self.schemas();
        for subject in [value_subject(topic), key_subject(topic)] {
            match registry.delete_subject(&subject) {
                Ok(_) | Err(LogError::UnknownSubject(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
