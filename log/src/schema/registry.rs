//! The registry's API on a log ([`SchemaRegistry`], from [`Log::schemas`]).

use super::store::{RegisterPlan, SchemaStore};
use super::{CompatibilityLevel, RecordSchema, SchemaError};
use crate::error::{LogError, Result};
use crate::log::Log;

/// Longest subject name accepted, in bytes.
const MAX_SUBJECT_BYTES: usize = 1024;

/// A schema registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject (`<topic>-value`, `<topic>-key`).
    pub subject: String,
    /// The version within the subject, from 1; never reused, also after a delete.
    pub version: u32,
    /// The global id of the schema text: stable, shared by every subject holding the same
    /// schema (what Confluent's wire format puts before each record).
    pub id: u32,
    /// The schema.
    pub schema: RecordSchema,
}

/// The schema registry of a log: subjects, versions, ids and compatibility levels, as
/// Confluent's Schema Registry keeps them, persisted in `__sluice_schemas`.
///
/// Cheap to clone. Reads are served from memory; every change is appended to the topic
/// (durable as any acknowledged write) before it becomes visible. Changes are serialized,
/// so registrations from many threads never share a version or an id.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    log: Log,
}

impl SchemaRegistry {
    pub(crate) fn new(log: Log) -> Self {
        SchemaRegistry { log }
    }

    /// Registers `schema` under `subject` and returns its version and id.
    ///
    /// Idempotent: a schema equal to a live version returns that version. Otherwise it is
    /// checked against the latest live version (every live version for the `*_TRANSITIVE`
    /// levels) under the subject's level and becomes the next version; its id is the one
    /// its text already has under any subject, or a new one.
    ///
    /// Fails with [`LogError::InvalidSchema`] for a schema that does not validate or is over
    /// 1 MiB as Avro JSON, and [`LogError::IncompatibleSchema`] naming the conflicting
    /// version, the field path and the reason.
    pub fn register(&self, subject: &str, schema: &RecordSchema) -> Result<Registered> {
        validate_subject(subject)?;
        let text = schema
            .to_avro_json()
            .map_err(|source| LogError::InvalidSchema {
                subject: subject.into(),
                source,
            })?;
        self.log.with_schema_store(|store, log| {
            match store.plan_register(subject, schema, text)? {
                RegisterPlan::Existing(r) => Ok(r),
                RegisterPlan::Write(record, registered) => {
                    log.append_schema_records(store, vec![record])?;
                    tracing::info!(
                        subject,
                        version = registered.version,
                        id = registered.id,
                        "Registered a schema."
                    );
                    Ok(registered)
                }
            }
        })
    }

    /// Checks `schema` against `subject` as [`SchemaRegistry::register`] would, without
    /// registering it (Confluent's `POST /compatibility/subjects/{subject}/versions`).
    pub fn check_compatibility(&self, subject: &str, schema: &RecordSchema) -> Result<()> {
        validate_subject(subject)?;
        schema
            .validate()
            .map_err(|source| LogError::InvalidSchema {
                subject: subject.into(),
                source,
            })?;
        self.log
            .with_schema_store(|store, _| store.check(subject, schema))
    }

    /// The latest live version of a subject.
    pub fn latest(&self, subject: &str) -> Option<Registered> {
        self.log.read_schema_store(|s| s.latest(subject))
    }

    /// A live version of a subject.
    pub fn version(&self, subject: &str, version: u32) -> Option<Registered> {
        self.log.read_schema_store(|s| s.version(subject, version))
    }

    /// The schema with a global id, also when every version using it was deleted (as
    /// Confluent keeps serving ids whose data may still be in topics).
    pub fn by_id(&self, id: u32) -> Option<RecordSchema> {
        self.log.read_schema_store(|s| s.by_id(id))
    }

    /// Subjects with at least one live version, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.log.read_schema_store(SchemaStore::subjects)
    }

    /// Live versions of a subject, ascending (empty for an unknown subject).
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.log.read_schema_store(|s| s.versions(subject))
    }

    /// Soft-deletes every version of a subject and returns their numbers. Ids stay
    /// resolvable; the next registration starts a fresh history (no compatibility check
    /// against the deleted versions) whose version numbers continue after them.
    /// [`LogError::UnknownSubject`] when it has no live version.
    pub fn delete_subject(&self, subject: &str) -> Result<Vec<u32>> {
        self.log.with_schema_store(|store, log| {
            let (records, versions) = store.plan_delete_subject(subject);
            if versions.is_empty() {
                return Err(LogError::UnknownSubject(subject.into()));
            }
            log.append_schema_records(store, records)?;
            tracing::info!(subject, ?versions, "Deleted a schema subject.");
            Ok(versions)
        })
    }

    /// Sets the compatibility level of a subject (it need not exist yet), or the global one
    /// for `None`.
    pub fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<()> {
        if let Some(subject) = subject {
            validate_subject(subject)?;
        }
        self.log.with_schema_store(|store, log| {
            log.append_schema_records(store, vec![SchemaStore::config_record(subject, level)])
        })
    }

    /// The level in force for a subject: its own, else the global one, else `BACKWARD`.
    /// `None` asks for the global level.
    pub fn compatibility(&self, subject: Option<&str>) -> CompatibilityLevel {
        self.log.read_schema_store(|s| s.compatibility(subject))
    }
}

fn validate_subject(subject: &str) -> Result<()> {
    let reason = if subject.is_empty() {
        "a subject name is empty"
    } else if subject.len() > MAX_SUBJECT_BYTES {
        "a subject name is longer than 1024 bytes"
    } else if subject.chars().any(char::is_control) {
        "a subject name may not contain control characters"
    } else {
        return Ok(());
    };
    Err(LogError::InvalidSchema {
        subject: subject.into(),
        source: SchemaError::new("", reason),
    })
}
