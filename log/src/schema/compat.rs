//! Compatibility: Confluent's levels and the Avro schema-resolution check behind them.
//!
//! A *reader* schema can read data written with a *writer* schema when every reader field
//! either exists in the writer (matched by name) with a type the reader can read, or has a
//! default — here, when it is nullable (nullable fields default to null). Writer fields the
//! reader lacks are skipped. A reader type reads a writer type when they are equal, or by
//! Avro's promotions `int → long → float → double` and `string ↔ bytes`, or recursively for
//! structs, arrays and maps; a nullable reader reads a non-null writer, not the reverse.
//! Logical types read only themselves (a decimal also one of smaller precision at the same
//! scale): stricter than Avro's own checker, which compares only the underlying types, so
//! that `long` never silently becomes `timestamp-millis`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::types::child_path;
use super::{FieldSchema, FieldType, RecordSchema};

/// Which earlier versions a new schema must be compatible with, and in which direction
/// (Confluent's `compatibilityLevel`; the default is [`CompatibilityLevel::Backward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// The new schema can read data written with the latest version: consumers upgrade first.
    #[default]
    Backward,
    /// [`CompatibilityLevel::Backward`] against every live version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema: producers upgrade first.
    Forward,
    /// [`CompatibilityLevel::Forward`] against every live version.
    ForwardTransitive,
    /// Both backward and forward with the latest version.
    Full,
    /// Both backward and forward with every live version.
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityLevel {
    /// Every level.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
        CompatibilityLevel::None,
    ];

    /// The name Confluent uses (`BACKWARD`, `FULL_TRANSITIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityLevel::None => "NONE",
        }
    }

    /// Whether the new schema must read older data.
    pub fn backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether older schemas must read the new schema's data.
    pub fn forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether every live version is checked, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = String;

    /// Parses Confluent's names, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level '{s}' (expected one of {})",
                    CompatibilityLevel::ALL
                        .map(CompatibilityLevel::as_str)
                        .join(", ")
                )
            })
    }
}

/// Why a reader cannot read a writer's data: the field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Path of the field (`payload.items[].price`; `[]` is an array element, `{}` a map value).
    pub path: String,
    /// What does not match.
    pub reason: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field '{}': {}", self.path, self.reason)
    }
}

/// Checks that `reader` can read data written with `writer` (Avro schema resolution).
pub fn can_read(reader: &RecordSchema, writer: &RecordSchema) -> Result<(), Incompatibility> {
    fields_can_read(&reader.fields, &writer.fields, "")
}

/// Checks `new` against the live versions of a subject, oldest first, under `level`.
/// On failure returns the version it conflicts with and a reason that says which side
/// cannot read which.
pub fn check(
    level: CompatibilityLevel,
    new: &RecordSchema,
    existing: &[(u32, &RecordSchema)],
) -> Result<(), (u32, String)> {
    let against: &[(u32, &RecordSchema)] = if level.transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    // Newest first: the most relevant conflict is reported.
    for (version, old) in against.iter().rev() {
        if level.backward() {
            can_read(new, old).map_err(|e| {
                (
                    *version,
                    format!("the new schema cannot read data written with version {version}: {e}"),
                )
            })?;
        }
        if level.forward() {
            can_read(old, new).map_err(|e| {
                (
                    *version,
                    format!("version {version} cannot read data written with the new schema: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

fn fields_can_read(
    reader: &[FieldSchema],
    writer: &[FieldSchema],
    path: &str,
) -> Result<(), Incompatibility> {
    for r in reader {
        let here = child_path(path, &r.name);
        match writer.iter().find(|w| w.name == r.name) {
            Some(w) => value_can_read(&r.ty, r.nullable, &w.ty, w.nullable, &here)?,
            None if r.nullable => {}
            None => {
                return Err(Incompatibility {
                    path: here,
                    reason: "the reader's field is missing from the writer's schema and has no default (make it nullable to default to null)".into(),
                });
            }
        }
    }
    Ok(())
}

fn value_can_read(
    reader: &FieldType,
    reader_nullable: bool,
    writer: &FieldType,
    writer_nullable: bool,
    path: &str,
) -> Result<(), Incompatibility> {
    if writer_nullable && !reader_nullable {
        return Err(Incompatibility {
            path: path.into(),
            reason: "the writer's values may be null but the reader's may not".into(),
        });
    }
    type_can_read(reader, writer, path)
}

fn type_can_read(
    reader: &FieldType,
    writer: &FieldType,
    path: &str,
) -> Result<(), Incompatibility> {
    use FieldType as T;
    let ok = match (reader, writer) {
        (T::Struct(r), T::Struct(w)) => return fields_can_read(r, w, path),
        (
            T::Array {
                items: r,
                items_nullable: rn,
            },
            T::Array {
                items: w,
                items_nullable: wn,
            },
        ) => return value_can_read(r, *rn, w, *wn, &format!("{path}[]")),
        (
            T::Map {
                values: r,
                values_nullable: rn,
            },
            T::Map {
                values: w,
                values_nullable: wn,
            },
        ) => return value_can_read(r, *rn, w, *wn, &format!("{path}{{}}")),
        (
            T::Decimal {
                precision: rp,
                scale: rs,
            },
            T::Decimal {
                precision: wp,
                scale: ws,
            },
        ) => rs == ws && rp >= wp,
        (r, w) if r == w => true,
        // Avro's promotions.
        (T::Int64, T::Int32)
        | (T::Float32, T::Int32 | T::Int64)
        | (T::Float64, T::Int32 | T::Int64 | T::Float32)
        | (T::String, T::Bytes)
        | (T::Bytes, T::String) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Incompatibility {
            path: path.into(),
            reason: format!(
                "a reader of type {} cannot read the writer's type {}",
                reader.describe(),
                writer.describe()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: Vec<FieldSchema>) -> RecordSchema {
        RecordSchema::new(fields)
    }

    #[test]
    fn promotions_follow_avro() {
        let one = |ty| schema(vec![FieldSchema::new("x", ty)]);
        use FieldType as T;
        let allowed = [
            (T::Int64, T::Int32),
            (T::Float32, T::Int32),
            (T::Float32, T::Int64),
            (T::Float64, T::Int32),
            (T::Float64, T::Int64),
            (T::Float64, T::Float32),
            (T::String, T::Bytes),
            (T::Bytes, T::String),
            (
                T::Decimal {
                    precision: 12,
                    scale: 2,
                },
                T::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
        ];
        for (r, w) in allowed {
            can_read(&one(r.clone()), &one(w.clone())).unwrap();
        }
        let refused = [
            (T::Int32, T::Int64),
            (T::Int64, T::Float64),
            (T::Float32, T::Float64),
            (T::TimestampMillis, T::Int64),
            (T::Int64, T::TimestampMillis),
            (T::Date, T::Int32),
            (T::Boolean, T::Int32),
            (
                T::Decimal {
                    precision: 12,
                    scale: 3,
                },
                T::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            (
                T::Decimal {
                    precision: 9,
                    scale: 2,
                },
                T::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
        ];
        for (r, w) in refused {
            let e = can_read(&one(r.clone()), &one(w.clone())).unwrap_err();
            assert_eq!(e.path, "x");
        }
    }

    #[test]
    fn nested_paths_are_reported() {
        let item = |ty| FieldType::Struct(vec![FieldSchema::new("price", ty)]);
        let with = |ty| {
            schema(vec![FieldSchema::new(
                "payload",
                FieldType::Struct(vec![FieldSchema::new(
                    "items",
                    FieldType::array(item(ty), false),
                )]),
            )])
        };
        let e = can_read(&with(FieldType::Int32), &with(FieldType::String)).unwrap_err();
        assert_eq!(e.path, "payload.items[].price");
        assert!(
            e.to_string()
                .contains("int cannot read the writer's type string"),
            "{e}"
        );
        can_read(&with(FieldType::Float64), &with(FieldType::Int32)).unwrap();

        let map = |n| {
            schema(vec![FieldSchema::new(
                "m",
                FieldType::map(FieldType::Int64, n),
            )])
        };
        can_read(&map(true), &map(false)).unwrap();
        assert_eq!(can_read(&map(false), &map(true)).unwrap_err().path, "m{}");
    }

    #[test]
    fn nullability() {
        let f = |n| {
            schema(vec![FieldSchema {
                name: "a".into(),
                ty: FieldType::Int64,
                nullable: n,
            }])
        };
        can_read(&f(true), &f(false)).unwrap();
        assert!(can_read(&f(false), &f(true)).is_err());
    }

    #[test]
    fn levels_parse_and_print_as_confluent() {
        for l in CompatibilityLevel::ALL {
            assert_eq!(l.as_str().parse::<CompatibilityLevel>().unwrap(), l);
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.as_str())
            );
        }
        assert_eq!(
            "full_transitive".parse::<CompatibilityLevel>().unwrap(),
            CompatibilityLevel::FullTransitive
        );
        assert!(
            "SIDEWAYS"
                .parse::<CompatibilityLevel>()
                .unwrap_err()
                .contains("BACKWARD")
        );
        assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
    }
}
