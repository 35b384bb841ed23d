//! The registry's state machine: subjects, versions, ids and configs in memory, rebuilt from
//! the records of `__sluice_schemas` and deciding which records a change must write.
//!
//! Records follow Confluent's `_schemas` topic, keys and values as JSON:
//!
//! ```text
//! key   {"keytype":"SCHEMA","subject":"orders-value","version":2,"magic":1}
//! value {"subject":"orders-value","version":2,"id":7,"schema":"<Avro JSON>","deleted":false}
//! key   {"keytype":"CONFIG","subject":"orders-value","magic":0}   (subject null: global)
//! value {"compatibilityLevel":"FULL"}
//! ```
//!
//! One record per subject and version, so compaction keeps each version's latest state; a
//! soft delete rewrites a version's record with `"deleted":true`. A null value (tombstone)
//! removes the key's version or config.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::compat::{self, CompatibilityLevel};
use super::{RecordSchema, Registered};
use crate::error::LogError;

/// The key of a record in `__sluice_schemas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum StoredKey {
    /// One version of a subject.
    Schema {
        subject: String,
        version: u32,
        magic: u8,
    },
    /// The compatibility level of a subject, or the global one.
    Config { subject: Option<String>, magic: u8 },
}

/// The value of a [`StoredKey::Schema`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SchemaValue {
    subject: String,
    version: u32,
    id: u32,
    /// Avro schema JSON, as [`RecordSchema::to_avro_json`] writes it.
    schema: String,
    #[serde(default)]
    deleted: bool,
}

/// The value of a [`StoredKey::Config`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: CompatibilityLevel,
}

/// A record to append: key and value (None: tombstone), both JSON.
pub(crate) type StoredRecord = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Clone, Copy)]
struct Version {
    id: u32,
    deleted: bool,
}

#[derive(Debug)]
struct Schema {
    text: String,
    schema: RecordSchema,
}

/// What a registration needs from the shell.
#[derive(Debug)]
pub(crate) enum RegisterPlan {
    /// The schema is already a live version of the subject: nothing to write.
    Existing(Registered),
    /// Write this record, then apply it; the result is the new version.
    Write(StoredRecord, Registered),
}

/// Everything the registry knows. Versions of a subject are kept after a soft delete: a
/// new registration continues their numbering (as Confluent does), and an id once given to
/// a schema text keeps naming it.
#[derive(Debug, Default)]
pub(crate) struct SchemaStore {
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    schemas: BTreeMap<u32, Schema>,
    ids_by_text: HashMap<String, u32>,
    global: Option<CompatibilityLevel>,
    configs: BTreeMap<String, CompatibilityLevel>,
}

impl SchemaStore {
    /// Applies one record read back from the topic or just appended. Returns why a record
    /// was skipped; the caller warns with its offset. Never panics on bad input.
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key: StoredKey =
            serde_json::from_slice(key).map_err(|e| format!("unreadable key: {e}"))?;
        match key {
            StoredKey::Schema {
                subject, version, ..
            } => {
                let Some(value) = value else {
                    if let Some(versions) = self.subjects.get_mut(&subject) {
                        versions.remove(&version);
                    }
                    return Ok(());
                };
                let v: SchemaValue = serde_json::from_slice(value)
                    .map_err(|e| format!("unreadable schema value: {e}"))?;
                if v.subject != subject || v.version != version {
                    return Err(format!(
                        "the value names subject '{}' version {}, the key '{subject}' version {version}",
                        v.subject, v.version
                    ));
                }
                match self.schemas.get(&v.id) {
                    Some(known) if known.text != v.schema => {
                        return Err(format!("schema id {} already names another schema", v.id));
                    }
                    Some(_) => {}
                    None => {
                        let schema = RecordSchema::from_avro_json(&v.schema)
                            .map_err(|e| format!("unreadable schema: {e}"))?;
                        self.ids_by_text.insert(v.schema.clone(), v.id);
                        self.schemas.insert(
                            v.id,
                            Schema {
                                text: v.schema,
                                schema,
                            },
                        );
                    }
                }
                self.subjects.entry(subject).or_default().insert(
                    version,
                    Version {
                        id: v.id,
                        deleted: v.deleted,
                    },
                );
            }
            StoredKey::Config { subject, .. } => {
                let level = match value {
                    None => None,
                    Some(value) => Some(
                        serde_json::from_slice::<ConfigValue>(value)
                            .map_err(|e| format!("unreadable config value: {e}"))?
                            .compatibility_level,
                    ),
                };
                match (subject, level) {
                    (None, level) => self.global = level,
                    (Some(s), Some(level)) => {
                        self.configs.insert(s, level);
                    }
                    (Some(s), None) => {
                        self.configs.remove(&s);
                    }
                }
            }
        }
        Ok(())
    }

    /// The level in force for a subject (its own, else the global one, else BACKWARD); the
    /// global one for `None`.
    pub(crate) fn compatibility(&self, subject: Option<&str>) -> CompatibilityLevel {
        subject
            .and_then(|s| self.configs.get(s).copied())
            .or(self.global)
            .unwrap_or_default()
    }

    /// Live versions of a subject, oldest first.
    fn live(&self, subject: &str) -> impl Iterator<Item = (u32, Version)> + '_ {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|v| v.iter())
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, *v))
    }

    fn registered(&self, subject: &str, version: u32, id: u32) -> Option<Registered> {
        Some(Registered {
            subject: subject.to_string(),
            version,
            id,
            schema: self.schemas.get(&id)?.schema.clone(),
        })
    }

    /// Decides a registration of `schema` (whose canonical text is `text`) under `subject`:
    /// the live version holding the same text, or a compatibility check against the latest
    /// live version (every live version for the `*_TRANSITIVE` levels) and a new version.
    pub(crate) fn plan_register(
        &self,
        subject: &str,
        schema: &RecordSchema,
        text: String,
    ) -> Result<RegisterPlan, LogError> {
        let known_id = self.ids_by_text.get(&text).copied();
        if let Some(id) = known_id {
            if let Some((version, _)) = self.live(subject).find(|(_, v)| v.id == id) {
                if let Some(r) = self.registered(subject, version, id) {
                    return Ok(RegisterPlan::Existing(r));
                }
            }
        }
        self.check(subject, schema)?;
        let version = self
            .subjects
            .get(subject)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1);
        let id = known_id.unwrap_or_else(|| self.schemas.keys().next_back().map_or(1, |id| id + 1));
        let record = schema_record(subject, version, id, text, false);
        let registered = Registered {
            subject: subject.to_string(),
            version,
            id,
            schema: schema.clone(),
        };
        Ok(RegisterPlan::Write(record, registered))
    }

    /// Checks `schema` against the subject's live versions under its level.
    pub(crate) fn check(&self, subject: &str, schema: &RecordSchema) -> Result<(), LogError> {
        let level = self.compatibility(Some(subject));
        if level == CompatibilityLevel::None {
            return Ok(());
        }
        let existing: Vec<(u32, &RecordSchema)> = self
            .live(subject)
            .filter_map(|(n, v)| Some((n, &self.schemas.get(&v.id)?.schema)))
            .collect();
        compat::check(level, schema, &existing).map_err(|(version, reason)| {
            LogError::IncompatibleSchema {
                subject: subject.to_string(),
                version,
                level,
                reason,
            }
        })
    }

    /// The records that soft-delete every live version of a subject, and those versions.
    pub(crate) fn plan_delete_subject(&self, subject: &str) -> (Vec<StoredRecord>, Vec<u32>) {
        let mut records = Vec::new();
        let mut versions = Vec::new();
        for (version, v) in self.live(subject) {
            if let Some(s) = self.schemas.get(&v.id) {
                records.push(schema_record(subject, version, v.id, s.text.clone(), true));
                versions.push(version);
            }
        }
        (records, versions)
    }

    /// The record that sets a level.
    pub(crate) fn config_record(subject: Option<&str>, level: CompatibilityLevel) -> StoredRecord {
        let key = StoredKey::Config {
            subject: subject.map(str::to_string),
            magic: 0,
        };
        let value = ConfigValue {
            compatibility_level: level,
        };
        (to_json(&key), Some(to_json(&value)))
    }

    /// The latest live version of a subject.
    pub(crate) fn latest(&self, subject: &str) -> Option<Registered> {
        let (version, v) = self.live(subject).last()?;
        self.registered(subject, version, v.id)
    }

    /// A live version of a subject.
    pub(crate) fn version(&self, subject: &str, version: u32) -> Option<Registered> {
        let v = self.subjects.get(subject)?.get(&version)?;
        if v.deleted {
            return None;
        }
        self.registered(subject, version, v.id)
    }

    /// The schema of an id (also when every version using it was deleted, as Confluent).
    pub(crate) fn by_id(&self, id: u32) -> Option<RecordSchema> {
        self.schemas.get(&id).map(|s| s.schema.clone())
    }

    /// Subjects with at least one live version.
    pub(crate) fn subjects(&self) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, v)| v.values().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Live version numbers of a subject, ascending.
    pub(crate) fn versions(&self, subject: &str) -> Vec<u32> {
        self.live(subject).map(|(n, _)| n).collect()
    }
}

fn schema_record(
    subject: &str,
    version: u32,
    id: u32,
    text: String,
    deleted: bool,
) -> StoredRecord {
    let key = StoredKey::Schema {
        subject: subject.to_string(),
        version,
        magic: 1,
    };
    let value = SchemaValue {
        subject: subject.to_string(),
        version,
        id,
        schema: text,
        deleted,
    };
    (to_json(&key), Some(to_json(&value)))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldSchema, FieldType};

    fn s(fields: &[(&str, FieldType, bool)]) -> RecordSchema {
        RecordSchema::new(
            fields
                .iter()
                .map(|(n, t, null)| FieldSchema {
                    name: n.to_string(),
                    ty: t.clone(),
                    nullable: *null,
                })
                .collect(),
        )
    }

    fn register(
        store: &mut SchemaStore,
        subject: &str,
        schema: &RecordSchema,
    ) -> Result<Registered, LogError> {
        let text = schema.to_avro_json().unwrap();
        match store.plan_register(subject, schema, text)? {
            RegisterPlan::Existing(r) => Ok(r),
            RegisterPlan::Write((k, v), r) => {
                store.apply(&k, v.as_deref()).unwrap();
                Ok(r)
            }
        }
    }

    fn set(store: &mut SchemaStore, subject: Option<&str>, level: CompatibilityLevel) {
        let (k, v) = SchemaStore::config_record(subject, level);
        store.apply(&k, v.as_deref()).unwrap();
    }

    #[test]
    fn keys_look_like_confluents() {
        let (k, v) = schema_record("t-value", 3, 9, "{}".into(), false);
        assert_eq!(
            String::from_utf8(k).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"t-value","version":3,"magic":1}"#
        );
        assert_eq!(
            String::from_utf8(v.unwrap()).unwrap(),
            r#"{"subject":"t-value","version":3,"id":9,"schema":"{}","deleted":false}"#
        );
        let (k, v) = SchemaStore::config_record(None, CompatibilityLevel::Full);
        assert_eq!(
            String::from_utf8(k).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            String::from_utf8(v.unwrap()).unwrap(),
            r#"{"compatibilityLevel":"FULL"}"#
        );
    }

    /// Every level against the four basic changes: add/remove a nullable/required field.
    #[test]
    fn every_level_judges_added_and_removed_fields() {
        use CompatibilityLevel as L;
        let base = s(&[("id", FieldType::Int64, false)]);
        let add_nullable = s(&[
            ("id", FieldType::Int64, false),
            ("x", FieldType::String, true),
        ]);
        let add_required = s(&[
            ("id", FieldType::Int64, false),
            ("x", FieldType::String, false),
        ]);
        let base_with_opt = s(&[
            ("id", FieldType::Int64, false),
            ("o", FieldType::String, true),
        ]);
        let remove_nullable = s(&[("id", FieldType::Int64, false)]);
        let base_with_req = s(&[
            ("id", FieldType::Int64, false),
            ("r", FieldType::String, false),
        ]);
        let remove_required = s(&[("id", FieldType::Int64, false)]);
        // (level, [add nullable, add required, remove nullable, remove required])
        let expect = [
            (L::Backward, [true, false, true, true]),
            (L::BackwardTransitive, [true, false, true, true]),
            (L::Forward, [true, true, true, false]),
            (L::ForwardTransitive, [true, true, true, false]),
            (L::Full, [true, false, true, false]),
            (L::FullTransitive, [true, false, true, false]),
            (L::None, [true, true, true, true]),
        ];
        for (level, [an, ar, rn, rr]) in expect {
            for (old, new, ok, what) in [
                (&base, &add_nullable, an, "add nullable"),
                (&base, &add_required, ar, "add required"),
                (&base_with_opt, &remove_nullable, rn, "remove nullable"),
                (&base_with_req, &remove_required, rr, "remove required"),
            ] {
                let mut store = SchemaStore::default();
                set(&mut store, Some("t"), level);
                register(&mut store, "t", old).unwrap();
                let got = register(&mut store, "t", new);
                assert_eq!(got.is_ok(), ok, "{level} {what}: {got:?}");
                if let Err(e) = got {
                    assert!(e.is_user_error());
                    let msg = e.to_string();
                    assert!(msg.contains("'t'") && msg.contains(level.as_str()), "{msg}");
                }
            }
        }
    }

    #[test]
    fn type_promotions_by_level() {
        use CompatibilityLevel as L;
        let int = s(&[("n", FieldType::Int32, false)]);
        let long = s(&[("n", FieldType::Int64, false)]);
        for (level, widen_ok, narrow_ok) in [
            (L::Backward, true, false),
            (L::Forward, false, true),
            (L::Full, false, false),
            (L::None, true, true),
        ] {
            let mut store = SchemaStore::default();
            set(&mut store, None, level);
            register(&mut store, "a", &int).unwrap();
            assert_eq!(
                register(&mut store, "a", &long).is_ok(),
                widen_ok,
                "{level} widen"
            );
            let mut store = SchemaStore::default();
            set(&mut store, None, level);
            register(&mut store, "b", &long).unwrap();
            assert_eq!(
                register(&mut store, "b", &int).is_ok(),
                narrow_ok,
                "{level} narrow"
            );
        }
    }

    #[test]
    fn transitive_levels_check_every_live_version() {
        // v4 reads v3 (b missing there, nullable here) but not v2 (b was a long).
        use CompatibilityLevel as L;
        let v1 = s(&[("a", FieldType::Int64, false)]);
        let v2 = s(&[
            ("a", FieldType::Int64, false),
            ("b", FieldType::Int64, true),
        ]);
        let v3 = s(&[
            ("a", FieldType::Int64, false),
            ("c", FieldType::String, true),
        ]);
        let v4 = s(&[
            ("a", FieldType::Int64, false),
            ("b", FieldType::Boolean, true),
        ]);
        for (level, ok) in [(L::Backward, true), (L::BackwardTransitive, false)] {
            let mut store = SchemaStore::default();
            set(&mut store, Some("t"), level);
            for v in [&v1, &v2, &v3] {
                register(&mut store, "t", v).unwrap();
            }
            let got = register(&mut store, "t", &v4);
            assert_eq!(got.is_ok(), ok, "{level}: {got:?}");
            if let Err(LogError::IncompatibleSchema {
                version, reason, ..
            }) = got
            {
                assert_eq!(version, 2);
                assert!(reason.contains("field 'b'"), "{reason}");
            }
        }
    }

    #[test]
    fn ids_are_shared_by_equal_text_and_versions_continue_after_delete() {
        let mut store = SchemaStore::default();
        let a = s(&[("a", FieldType::Int64, false)]);
        let b = s(&[("b", FieldType::String, false)]);
        let r1 = register(&mut store, "x", &a).unwrap();
        let r2 = register(&mut store, "y", &a).unwrap();
        assert_eq!((r1.version, r2.version, r1.id, r2.id), (1, 1, 1, 1));
        assert_eq!(register(&mut store, "x", &a).unwrap(), r1, "idempotent");
        let (records, versions) = store.plan_delete_subject("x");
        assert_eq!(versions, [1]);
        for (k, v) in records {
            store.apply(&k, v.as_deref()).unwrap();
        }
        assert_eq!(store.subjects(), ["y"]);
        assert!(store.latest("x").is_none());
        let r3 = register(&mut store, "x", &b).unwrap();
        assert_eq!((r3.version, r3.id), (2, 2));
        let r4 = register(&mut store, "x", &a);
        assert!(r4.is_err(), "b then a is not backward compatible");
    }

    #[test]
    fn malformed_records_are_refused_not_panicked_on() {
        let mut store = SchemaStore::default();
        for (k, v) in [
            (&b"not json"[..], Some(&b"{}"[..])),
            (
                br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#,
                Some(b"["),
            ),
            (
                br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#,
                Some(br#"{"subject":"s","version":1,"id":1,"schema":"nope"}"#),
            ),
            (
                br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#,
                Some(br#"{"subject":"other","version":1,"id":1,"schema":"{}"}"#),
            ),
            (
                br#"{"keytype":"CONFIG","subject":null,"magic":0}"#,
                Some(br#"{"compatibilityLevel":"SIDEWAYS"}"#),
            ),
            (br#"{"keytype":"NOPE"}"#, None),
        ] {
            assert!(store.apply(k, v).is_err());
        }
        assert!(store.subjects().is_empty());
    }
}
