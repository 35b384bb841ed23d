//! Record schemas as Arrow schemas and back: a topic's recorded schema
//! ([`sluice_log::RecordSchema`]) is what sinks write with and what SQL declares.
//!
//! | record schema | Arrow |
//! |---|---|
//! | `Boolean` | `Boolean` |
//! | `Int32`, `Int64` | `Int32`, `Int64` |
//! | `Float32`, `Float64` | `Float32`, `Float64` |
//! | `Decimal { p, s }` | `Decimal128(p, s)` (`Decimal256` above 38 digits) |
//! | `String`, `Bytes` | `Utf8`, `Binary` |
//! | `Date` | `Date32` |
//! | `TimestampMillis` | `Timestamp(Millisecond, None)` |
//! | `Array` | `List` (element field `item`) |
//! | `Map` | `Map` (entries `key: Utf8`, `value`; unsorted) |
//! | `Struct` | `Struct` |
//!
//! These are the types SQL gives its columns, so a schema recorded from SQL comes back as the
//! columns SQL declared. From Arrow, narrower integers and floats widen (`Int8` → `Int32`,
//! `UInt32` → `Int64`, `Float16` → `Float32`), the large and view variants of strings,
//! binaries and lists map to their plain type, and a millisecond timestamp in any time zone is
//! `TimestampMillis`; other types are refused with the field and the reason.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, TimeUnit};
use sluice_log::{FieldSchema, FieldType, RecordSchema};

use crate::error::{FormatError, Result};

/// Digits a `Decimal128` holds.
const DECIMAL128_MAX: u8 = 38;
/// Digits a `Decimal256` holds.
const DECIMAL256_MAX: u8 = 76;

/// The Arrow schema of a record schema: one field per field, in order.
pub fn to_arrow(schema: &RecordSchema) -> Result<Schema> {
    Ok(Schema::new(fields_to_arrow(&schema.fields, "")?))
}

/// The Arrow field of one field.
pub fn field_to_arrow(field: &FieldSchema) -> Result<Field> {
    field_at(field, "")
}

fn fields_to_arrow(fields: &[FieldSchema], parent: &str) -> Result<Vec<Field>> {
    fields.iter().map(|f| field_at(f, parent)).collect()
}

fn field_at(f: &FieldSchema, parent: &str) -> Result<Field> {
    let path = child(parent, &f.name);
    Ok(Field::new(&f.name, type_at(&f.ty, &path)?, f.nullable))
}

/// The Arrow type of a field type.
pub fn type_to_arrow(ty: &FieldType) -> Result<DataType> {
    type_at(ty, "")
}

fn type_at(ty: &FieldType, path: &str) -> Result<DataType> {
    Ok(match ty {
        FieldType::Boolean => DataType::Boolean,
        FieldType::Int32 => DataType::Int32,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float32 => DataType::Float32,
        FieldType::Float64 => DataType::Float64,
        FieldType::Decimal { precision, scale } => {
            if *precision <= DECIMAL128_MAX {
                DataType::Decimal128(*precision, *scale)
            } else if *precision <= DECIMAL256_MAX {
                DataType::Decimal256(*precision, *scale)
            } else {
                return Err(FormatError::Unsupported {
                    field: path.into(),
                    reason: format!(
                        "decimal({precision},{scale}) has more than {DECIMAL256_MAX} digits, the most Arrow holds"
                    ),
                });
            }
        }
        FieldType::String => DataType::Utf8,
        FieldType::Bytes => DataType::Binary,
        FieldType::Date => DataType::Date32,
        FieldType::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, None),
        FieldType::Array {
            items,
            items_nullable,
        } => DataType::List(Arc::new(Field::new(
            "item",
            type_at(items, &format!("{path}[]"))?,
            *items_nullable,
        ))),
        FieldType::Map {
            values,
            values_nullable,
        } => {
            let entries = Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new(
                    "value",
                    type_at(values, &format!("{path}{{}}"))?,
                    *values_nullable,
                ),
            ]);
            DataType::Map(
                Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                false,
            )
        }
        FieldType::Struct(fields) => DataType::Struct(Fields::from(fields_to_arrow(fields, path)?)),
    })
}

/// The record schema of an Arrow schema (see the module docs for the types it widens or
/// refuses).
pub fn from_arrow(schema: &Schema) -> Result<RecordSchema> {
    Ok(RecordSchema::new(fields_from_arrow(schema.fields(), "")?))
}

/// The field of one Arrow field.
pub fn field_from_arrow(field: &Field) -> Result<FieldSchema> {
    field_from(field, "")
}

fn fields_from_arrow(fields: &Fields, parent: &str) -> Result<Vec<FieldSchema>> {
    fields.iter().map(|f| field_from(f, parent)).collect()
}

fn field_from(f: &Field, parent: &str) -> Result<FieldSchema> {
    let path = child(parent, f.name());
    Ok(FieldSchema {
        name: f.name().clone(),
        ty: type_from(f.data_type(), &path)?,
        nullable: f.is_nullable(),
    })
}

/// The field type of an Arrow type.
pub fn type_from_arrow(ty: &DataType) -> Result<FieldType> {
    type_from(ty, "")
}

fn type_from(ty: &DataType, path: &str) -> Result<FieldType> {
    let unsupported = |reason: String| FormatError::Unsupported {
        field: path.into(),
        reason,
    };
    let list = |item: &FieldRef| -> Result<FieldType> {
        Ok(FieldType::array(
            type_from(item.data_type(), &format!("{path}[]"))?,
            item.is_nullable(),
        ))
    };
    Ok(match ty {
        DataType::Boolean => FieldType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            FieldType::Int32
        }
        DataType::Int64 | DataType::UInt32 => FieldType::Int64,
        DataType::Float16 | DataType::Float32 => FieldType::Float32,
        DataType::Float64 => FieldType::Float64,
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => FieldType::Decimal {
            precision: *p,
            scale: *s,
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::String,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => FieldType::Bytes,
        DataType::Date32 => FieldType::Date,
        DataType::Timestamp(TimeUnit::Millisecond, _) => FieldType::TimestampMillis,
        DataType::List(item)
        | DataType::LargeList(item)
        | DataType::ListView(item)
        | DataType::LargeListView(item)
        | DataType::FixedSizeList(item, _) => list(item)?,
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(unsupported("a map's entries are not a struct".into()));
            };
            let (Some(k), Some(v)) = (kv.first(), kv.get(1)) else {
                return Err(unsupported("a map's entries need a key and a value".into()));
            };
            if !matches!(
                k.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(unsupported(format!(
                    "map keys are {}; a record schema's map keys are strings",
                    k.data_type()
                )));
            }
            FieldType::map(
                type_from(v.data_type(), &format!("{path}{{}}"))?,
                v.is_nullable(),
            )
        }
        DataType::Struct(fields) => FieldType::Struct(fields_from_arrow(fields, path)?),
        other => {
            return Err(unsupported(format!(
                "Arrow type {other} has no record-schema type (use BOOLEAN, INT, BIGINT, REAL, DOUBLE, DECIMAL, VARCHAR, BYTES, DATE, TIMESTAMP, ARRAY, MAP or STRUCT)"
            )));
        }
    })
}

fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A schema with every field type, nullable and not, nested too.
    fn every_type() -> RecordSchema {
        let scalars = [
            FieldType::Boolean,
            FieldType::Int32,
            FieldType::Int64,
            FieldType::Float32,
            FieldType::Float64,
            FieldType::Decimal {
                precision: 10,
                scale: 2,
            },
            FieldType::Decimal {
                precision: 60,
                scale: 5,
            },
            FieldType::String,
            FieldType::Bytes,
            FieldType::Date,
            FieldType::TimestampMillis,
        ];
        let mut fields: Vec<FieldSchema> = scalars
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i % 2 == 0 {
                    FieldSchema::new(format!("f{i}"), t.clone())
                } else {
                    FieldSchema::nullable(format!("f{i}"), t.clone())
                }
            })
            .collect();
        fields.push(FieldSchema::nullable(
            "tags",
            FieldType::array(FieldType::String, true),
        ));
        fields.push(FieldSchema::new(
            "matrix",
            FieldType::array(FieldType::array(FieldType::Int64, false), false),
        ));
        fields.push(FieldSchema::nullable(
            "prices",
            FieldType::map(
                FieldType::Decimal {
                    precision: 9,
                    scale: 3,
                },
                false,
            ),
        ));
        fields.push(FieldSchema::new(
            "order id.geo/zone",
            FieldType::Struct(vec![
                FieldSchema::new("lat", FieldType::Float64),
                FieldSchema::nullable(
                    "labels",
                    FieldType::map(FieldType::array(FieldType::Date, true), true),
                ),
                FieldSchema::nullable(
                    "inner",
                    FieldType::Struct(vec![FieldSchema::new("x", FieldType::Int32)]),
                ),
            ]),
        ));
        RecordSchema::new(fields)
    }

    #[test]
    fn every_field_type_round_trips_through_arrow() {
        let schema = every_type();
        schema.validate().unwrap();
        let arrow = to_arrow(&schema).unwrap();
        assert_eq!(from_arrow(&arrow).unwrap(), schema);
        // And Arrow → record → Arrow is the identity on the types SQL uses.
        assert_eq!(to_arrow(&from_arrow(&arrow).unwrap()).unwrap(), arrow);
        let f = |name: &str| arrow.field_with_name(name).unwrap().clone();
        assert_eq!(f("f2").data_type(), &DataType::Int64);
        assert!(!f("f2").is_nullable() && f("f1").is_nullable());
        assert_eq!(f("f5").data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(f("f6").data_type(), &DataType::Decimal256(60, 5));
        assert_eq!(
            f("f10").data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
    }

    #[test]
    fn the_types_sql_declares_are_the_ones_produced() {
        // sql/src/types.rs: ARRAY<T> is List("item", nullable), MAP<VARCHAR, T> is
        // Map(entries { key not null, value nullable }, unsorted).
        let ty = type_to_arrow(&FieldType::map(FieldType::Int32, true)).unwrap();
        let DataType::Map(entries, false) = &ty else {
            panic!("{ty}")
        };
        assert_eq!(entries.name(), "entries");
        let list = type_to_arrow(&FieldType::array(FieldType::String, true)).unwrap();
        assert_eq!(
            list,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        );
    }

    #[test]
    fn arrow_types_widen_or_are_refused_with_the_field() {
        assert_eq!(type_from_arrow(&DataType::Int8).unwrap(), FieldType::Int32);
        assert_eq!(
            type_from_arrow(&DataType::UInt32).unwrap(),
            FieldType::Int64
        );
        assert_eq!(
            type_from_arrow(&DataType::LargeUtf8).unwrap(),
            FieldType::String
        );
        assert_eq!(
            type_from_arrow(&DataType::Timestamp(
                TimeUnit::Millisecond,
                Some("UTC".into())
            ))
            .unwrap(),
            FieldType::TimestampMillis
        );
        let nested = Schema::new(vec![Field::new(
            "s",
            DataType::Struct(Fields::from(vec![Field::new("u", DataType::UInt64, true)])),
            true,
        )]);
        let e = from_arrow(&nested).unwrap_err().to_string();
        assert!(e.starts_with("field s.u: Arrow type UInt64"), "{e}");
        let e = type_from_arrow(&DataType::Timestamp(TimeUnit::Nanosecond, None)).unwrap_err();
        assert!(e.to_string().contains("Timestamp"), "{e}");
        let wide = RecordSchema::new(vec![FieldSchema::new(
            "d",
            FieldType::Decimal {
                precision: 80,
                scale: 0,
            },
        )]);
        assert!(
            to_arrow(&wide)
                .unwrap_err()
                .to_string()
                .starts_with("field d:")
        );
    }
}
