//! The Avro schema JSON form of a [`RecordSchema`]: how schemas are stored and served.
//!
//! | [`FieldType`] | Avro |
//! |---|---|
//! | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64`, `String`, `Bytes` | `boolean`, `int`, `long`, `float`, `double`, `string`, `bytes` |
//! | `Decimal { precision, scale }` | `{"type":"bytes","logicalType":"decimal","precision":p,"scale":s}` |
//! | `Date` | `{"type":"int","logicalType":"date"}` |
//! | `TimestampMillis` | `{"type":"long","logicalType":"timestamp-millis"}` |
//! | `Array` | `{"type":"array","items":T}` (`["null",T]` for nullable elements) |
//! | `Map` | `{"type":"map","values":T}` (`["null",T]` for nullable values) |
//! | `Struct` | a nested `{"type":"record","name":...,"fields":[...]}` |
//!
//! A nullable field is the union `["null", T]` with `"default": null`.
//!
//! **Names.** Avro names must match `[A-Za-z_][A-Za-z0-9_]*`; SQL column names need not (a
//! quoted identifier may hold spaces, dots or slashes). A field whose name is a valid Avro
//! name is written as is. Any other is written under an Avro-safe name (every other
//! character replaced by `_`, a leading `_` before a digit, a `_2`, `_3`... suffix when that
//! collides with a sibling) and keeps its real name in the extra attribute `"sluice.name"`,
//! which Avro readers ignore and [`RecordSchema::from_avro_json`] restores. Record names
//! are generated (`SluiceRecord`, `SluiceRecord_1`, ...): the neutral schema has none, and
//! the compatibility check, like Avro's for fields, matches by field name only.
//!
//! Supported on input: the above, unions `["null", T]` and `[T, "null"]`, `"default": null`
//! on nullable fields, and extra attributes (`doc`, `aliases`, ... are ignored). Refused
//! with the path and the reason: other unions, `enum`, `fixed`, references to named types,
//! other logical types, and non-null defaults.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::types::{check_depth, child_path};
use super::{FieldSchema, FieldType, MAX_DEPTH, MAX_SCHEMA_BYTES, RecordSchema, SchemaError};

/// The extra field attribute that carries a name Avro does not accept.
pub const ORIGINAL_NAME_ATTR: &str = "sluice.name";
/// Name of the top-level Avro record.
const RECORD_NAME: &str = "SluiceRecord";

impl RecordSchema {
    /// The schema as Avro schema JSON (canonical: the same schema always gives the same
    /// text). Fails when the schema does not pass [`RecordSchema::validate`].
    pub fn to_avro_json(&self) -> Result<String, SchemaError> {
        self.validate()?;
        let mut w = Writer {
            out: String::with_capacity(64 * self.fields.len()),
            records: 0,
        };
        w.record(&self.fields);
        if w.out.len() > MAX_SCHEMA_BYTES {
            return Err(too_large(w.out.len()));
        }
        Ok(w.out)
    }

    /// Parses Avro schema JSON whose top level is a `record`; see the module docs for what
    /// is supported. The result passes [`RecordSchema::validate`].
    pub fn from_avro_json(json: &str) -> Result<RecordSchema, SchemaError> {
        if json.len() > MAX_SCHEMA_BYTES {
            return Err(too_large(json.len()));
        }
        let value: Value = serde_json::from_str(json)
            .map_err(|e| SchemaError::new("", format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            SchemaError::new("", "the top level must be an Avro record (a JSON object)")
        })?;
        if obj.get("type").and_then(Value::as_str) != Some("record") {
            return Err(SchemaError::new(
                "",
                "the top level must have \"type\": \"record\"",
            ));
        }
        let schema = RecordSchema {
            fields: parse_fields(obj, "", 1)?,
        };
        schema.validate()?;
        Ok(schema)
    }
}

fn too_large(len: usize) -> SchemaError {
    SchemaError::new(
        "",
        format!("the schema is {len} bytes of JSON, more than the limit of {MAX_SCHEMA_BYTES}"),
    )
}

/// Whether `name` is a valid Avro name.
pub fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Avro names for the fields of one record: the real name when valid, else a sanitized one
/// unique among its siblings.
fn avro_names(fields: &[FieldSchema]) -> Vec<String> {
    let mut taken: BTreeSet<String> = fields
        .iter()
        .filter(|f| is_avro_name(&f.name))
        .map(|f| f.name.clone())
        .collect();
    fields
        .iter()
        .map(|f| {
            if is_avro_name(&f.name) {
                return f.name.clone();
            }
            let mut base: String = f
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            if !base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                base.insert(0, '_');
            }
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            taken.insert(name.clone());
            name
        })
        .collect()
}

struct Writer {
    out: String,
    records: usize,
}

impl Writer {
    fn str(&mut self, s: &str) {
        // Serializing a str cannot fail.
        self.out
            .push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }

    fn record(&mut self, fields: &[FieldSchema]) {
        let name = if self.records == 0 {
            RECORD_NAME.to_string()
        } else {
            format!("{RECORD_NAME}_{}", self.records)
        };
        self.records += 1;
        self.out.push_str("{\"type\":\"record\",\"name\":");
        self.str(&name);
        self.out.push_str(",\"fields\":[");
        for (i, (f, avro_name)) in fields.iter().zip(avro_names(fields)).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str("{\"name\":");
            self.str(&avro_name);
            if avro_name != f.name {
                self.out.push(',');
                self.str(ORIGINAL_NAME_ATTR);
                self.out.push(':');
                self.str(&f.name);
            }
            self.out.push_str(",\"type\":");
            self.maybe_null(&f.ty, f.nullable);
            if f.nullable {
                self.out.push_str(",\"default\":null");
            }
            self.out.push('}');
        }
        self.out.push_str("]}");
    }

    fn maybe_null(&mut self, ty: &FieldType, nullable: bool) {
        if nullable {
            self.out.push_str("[\"null\",");
            self.ty(ty);
            self.out.push(']');
        } else {
            self.ty(ty);
        }
    }

    fn ty(&mut self, ty: &FieldType) {
        match ty {
            FieldType::Boolean => self.out.push_str("\"boolean\""),
            FieldType::Int32 => self.out.push_str("\"int\""),
            FieldType::Int64 => self.out.push_str("\"long\""),
            FieldType::Float32 => self.out.push_str("\"float\""),
            FieldType::Float64 => self.out.push_str("\"double\""),
            FieldType::String => self.out.push_str("\"string\""),
            FieldType::Bytes => self.out.push_str("\"bytes\""),
            FieldType::Decimal { precision, scale } => self.out.push_str(&format!(
                "{{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":{precision},\"scale\":{scale}}}"
            )),
            FieldType::Date => self
                .out
                .push_str("{\"type\":\"int\",\"logicalType\":\"date\"}"),
            FieldType::TimestampMillis => self
                .out
                .push_str("{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}"),
            FieldType::Array {
                items,
                items_nullable,
            } => {
                self.out.push_str("{\"type\":\"array\",\"items\":");
                self.maybe_null(items, *items_nullable);
                self.out.push('}');
            }
            FieldType::Map {
                values,
                values_nullable,
            } => {
                self.out.push_str("{\"type\":\"map\",\"values\":");
                self.maybe_null(values, *values_nullable);
                self.out.push('}');
            }
            FieldType::Struct(fields) => self.record(fields),
        }
    }
}

fn parse_fields(
    record: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<Vec<FieldSchema>, SchemaError> {
    if depth > MAX_DEPTH {
        return Err(SchemaError::new(
            path,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        ));
    }
    let fields = record
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| SchemaError::new(path, "a record needs a \"fields\" array"))?;
    let mut out = Vec::with_capacity(fields.len());
    for (i, field) in fields.iter().enumerate() {
        let obj = field
            .as_object()
            .ok_or_else(|| SchemaError::new(path, format!("field #{i} is not a JSON object")))?;
        let avro_name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SchemaError::new(path, format!("field #{i} has no string \"name\"")))?;
        if !is_avro_name(avro_name) {
            return Err(SchemaError::new(
                child_path(path, avro_name),
                "not a valid Avro name ([A-Za-z_][A-Za-z0-9_]*); put other names in \"sluice.name\"",
            ));
        }
        let name = match obj.get(ORIGINAL_NAME_ATTR) {
            None => avro_name,
            Some(v) => v.as_str().ok_or_else(|| {
                SchemaError::new(
                    child_path(path, avro_name),
                    format!("\"{ORIGINAL_NAME_ATTR}\" must be a string"),
                )
            })?,
        };
        let here = child_path(path, name);
        let ty = obj
            .get("type")
            .ok_or_else(|| SchemaError::new(&here, "the field has no \"type\""))?;
        let (ty, nullable) = parse_nullable(ty, &here, depth)?;
        match obj.get("default") {
            None => {}
            Some(Value::Null) if nullable => {}
            Some(Value::Null) => {
                return Err(SchemaError::new(
                    &here,
                    "a null default needs a nullable type ([\"null\", T])",
                ));
            }
            Some(_) => {
                return Err(SchemaError::new(
                    &here,
                    "defaults other than null are not supported",
                ));
            }
        }
        out.push(FieldSchema {
            name: name.to_string(),
            ty,
            nullable,
        });
    }
    Ok(out)
}

/// A type that may be the union `["null", T]` / `[T, "null"]`.
fn parse_nullable(
    value: &Value,
    path: &str,
    depth: usize,
) -> Result<(FieldType, bool), SchemaError> {
    if let Value::Array(branches) = value {
        let is_null = |v: &Value| v.as_str() == Some("null");
        return match branches.as_slice() {
            [a, b] if is_null(a) && !is_null(b) => Ok((parse_type(b, path, depth)?, true)),
            [a, b] if is_null(b) && !is_null(a) => Ok((parse_type(a, path, depth)?, true)),
            _ => Err(SchemaError::new(
                path,
                "unions other than [\"null\", T] are not supported",
            )),
        };
    }
    Ok((parse_type(value, path, depth)?, false))
}

fn parse_type(value: &Value, path: &str, depth: usize) -> Result<FieldType, SchemaError> {
    match value {
        Value::String(name) => primitive(name, path),
        Value::Array(_) => Err(SchemaError::new(
            path,
            "a union may only be [\"null\", T] at the top of a field, an array's items or a map's values",
        )),
        Value::Object(obj) => {
            let ty = obj
                .get("type")
                .ok_or_else(|| SchemaError::new(path, "a type object has no \"type\""))?;
            let Some(ty) = ty.as_str() else {
                // {"type": {...}} or {"type": [...]}: a wrapped type.
                return parse_type(ty, path, depth);
            };
            if let Some(logical) = obj.get("logicalType") {
                let logical = logical.as_str().unwrap_or_default();
                return match (ty, logical) {
                    ("int", "date") => Ok(FieldType::Date),
                    ("long", "timestamp-millis") => Ok(FieldType::TimestampMillis),
                    ("bytes", "decimal") => {
                        let num = |key: &str, default: Option<i64>| {
                            obj.get(key)
                                .and_then(Value::as_i64)
                                .or(default)
                                .ok_or_else(|| {
                                    SchemaError::new(
                                        path,
                                        format!("a decimal needs an integer \"{key}\""),
                                    )
                                })
                        };
                        let precision = num("precision", None)?;
                        let scale = num("scale", Some(0))?;
                        match (u8::try_from(precision), i8::try_from(scale)) {
                            (Ok(precision), Ok(scale)) => {
                                Ok(FieldType::Decimal { precision, scale })
                            }
                            _ => Err(SchemaError::new(
                                path,
                                format!(
                                    "decimal({precision},{scale}) is outside the supported range (precision up to 255, scale up to 127)"
                                ),
                            )),
                        }
                    }
                    _ => Err(SchemaError::new(
                        path,
                        format!(
                            "logical type '{logical}' on '{ty}' is not supported (supported: date on int, timestamp-millis on long, decimal on bytes)"
                        ),
                    )),
                };
            }
            match ty {
                "record" => Ok(FieldType::Struct(parse_fields(obj, path, depth + 1)?)),
                "array" => {
                    check_depth(path, depth + 1)?;
                    let items = obj
                        .get("items")
                        .ok_or_else(|| SchemaError::new(path, "an array needs \"items\""))?;
                    let (items, items_nullable) =
                        parse_nullable(items, &format!("{path}[]"), depth + 1)?;
                    Ok(FieldType::array(items, items_nullable))
                }
                "map" => {
                    check_depth(path, depth + 1)?;
                    let values = obj
                        .get("values")
                        .ok_or_else(|| SchemaError::new(path, "a map needs \"values\""))?;
                    let (values, values_nullable) =
                        parse_nullable(values, &format!("{path}{{}}"), depth + 1)?;
                    Ok(FieldType::map(values, values_nullable))
                }
                other => primitive(other, path),
            }
        }
        _ => Err(SchemaError::new(
            path,
            "a type must be a name, a union or an object",
        )),
    }
}

fn primitive(name: &str, path: &str) -> Result<FieldType, SchemaError> {
    Ok(match name {
        "boolean" => FieldType::Boolean,
        "int" => FieldType::Int32,
        "long" => FieldType::Int64,
        "float" => FieldType::Float32,
        "double" => FieldType::Float64,
        "string" => FieldType::String,
        "bytes" => FieldType::Bytes,
        "null" => {
            return Err(SchemaError::new(
                path,
                "a field of type null alone is not supported",
            ));
        }
        "enum" | "fixed" => {
            return Err(SchemaError::new(
                path,
                format!("Avro '{name}' types are not supported"),
            ));
        }
        other => {
            return Err(SchemaError::new(
                path,
                format!(
                    "'{other}' is not a supported type (references to named types are not supported)"
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> RecordSchema {
        let inner = vec![
            FieldSchema::new(
                "price",
                FieldType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            FieldSchema::nullable("note", FieldType::String),
        ];
        RecordSchema::new(vec![
            FieldSchema::new("b", FieldType::Boolean),
            FieldSchema::new("i", FieldType::Int32),
            FieldSchema::nullable("l", FieldType::Int64),
            FieldSchema::new("f", FieldType::Float32),
            FieldSchema::new("d", FieldType::Float64),
            FieldSchema::nullable(
                "dec",
                FieldType::Decimal {
                    precision: 38,
                    scale: 0,
                },
            ),
            FieldSchema::new("s", FieldType::String),
            FieldSchema::nullable("by", FieldType::Bytes),
            FieldSchema::new("day", FieldType::Date),
            FieldSchema::nullable("ts", FieldType::TimestampMillis),
            FieldSchema::new("tags", FieldType::array(FieldType::String, false)),
            FieldSchema::nullable("maybe_tags", FieldType::array(FieldType::Int64, true)),
            FieldSchema::new("attrs", FieldType::map(FieldType::Float64, true)),
            FieldSchema::new("counts", FieldType::map(FieldType::Int32, false)),
            FieldSchema::new(
                "payload",
                FieldType::Struct(vec![
                    FieldSchema::new("items", FieldType::array(FieldType::Struct(inner), false)),
                    FieldSchema::nullable("meta", FieldType::map(FieldType::Date, false)),
                ]),
            ),
        ])
    }

    #[test]
    fn every_type_round_trips_through_avro_json() {
        let schema = every_type();
        let json = schema.to_avro_json().unwrap();
        let back = RecordSchema::from_avro_json(&json).unwrap();
        assert_eq!(back, schema);
        assert_eq!(
            back.to_avro_json().unwrap(),
            json,
            "canonical text is stable"
        );
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "record");
        assert_eq!(v["fields"][2]["type"], serde_json::json!(["null", "long"]));
        assert_eq!(v["fields"][2]["default"], Value::Null);
        assert!(v["fields"][2].as_object().unwrap().contains_key("default"));
        assert_eq!(
            v["fields"][5]["type"][1],
            serde_json::json!({"type":"bytes","logicalType":"decimal","precision":38,"scale":0})
        );
        assert_eq!(v["fields"][8]["type"]["logicalType"], "date");
        assert_eq!(v["fields"][9]["type"][1]["logicalType"], "timestamp-millis");
        assert_eq!(
            v["fields"][11]["type"][1]["items"],
            serde_json::json!(["null", "long"])
        );
        assert_eq!(v["fields"][14]["type"]["type"], "record");
        assert_ne!(
            v["fields"][14]["type"]["name"], v["name"],
            "record names are unique"
        );
    }

    #[test]
    fn each_type_alone_round_trips() {
        for f in every_type().fields {
            for nullable in [false, true] {
                let schema = RecordSchema::new(vec![FieldSchema {
                    nullable,
                    ..f.clone()
                }]);
                let json = schema.to_avro_json().unwrap();
                assert_eq!(
                    RecordSchema::from_avro_json(&json).unwrap(),
                    schema,
                    "{json}"
                );
            }
        }
    }

    #[test]
    fn names_avro_refuses_are_carried_in_an_attribute() {
        let schema = RecordSchema::new(vec![
            FieldSchema::new("a.b/c d", FieldType::Int32),
            FieldSchema::new("a_b_c_d", FieldType::Int32),
            FieldSchema::new("1st", FieldType::String),
            FieldSchema::new("naïve", FieldType::String),
        ]);
        let json = schema.to_avro_json().unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        let names: Vec<&str> = v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a_b_c_d_2", "a_b_c_d", "_1st", "na_ve"]);
        assert!(names.iter().all(|n| is_avro_name(n)));
        assert_eq!(v["fields"][0][ORIGINAL_NAME_ATTR], "a.b/c d");
        assert!(v["fields"][1].get(ORIGINAL_NAME_ATTR).is_none());
        assert_eq!(RecordSchema::from_avro_json(&json).unwrap(), schema);
    }

    #[test]
    fn foreign_avro_is_read() {
        let json = r#"{"type":"record","name":"Order","namespace":"com.example","doc":"x",
            "fields":[
              {"name":"id","type":"long","doc":"the id"},
              {"name":"note","type":["string","null"]},
              {"name":"when","type":{"type":{"type":"long","logicalType":"timestamp-millis"}}},
              {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":9}],"default":null}
            ]}"#;
        let s = RecordSchema::from_avro_json(json).unwrap();
        assert_eq!(
            s,
            RecordSchema::new(vec![
                FieldSchema::new("id", FieldType::Int64),
                FieldSchema::nullable("note", FieldType::String),
                FieldSchema::new("when", FieldType::TimestampMillis),
                FieldSchema::nullable(
                    "amount",
                    FieldType::Decimal {
                        precision: 9,
                        scale: 0
                    }
                ),
            ])
        );
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            (
                r#"{"type":"enum","name":"E","symbols":["A"]}"#,
                "\"type\": \"record\"",
            ),
            (r#"[1,2"#, "not valid JSON"),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}}]}"#,
                "'enum'",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"u","type":["int","string"]}]}"#,
                "unions",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"u","type":["null","int","string"]}]}"#,
                "unions",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"fixed","name":"F","size":4}}]}"#,
                "'fixed'",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"r","type":"com.example.Other"}]}"#,
                "named types",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
                "timestamp-micros",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"n","type":"int","default":3}]}"#,
                "defaults other than null",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"bad name","type":"int"}]}"#,
                "valid Avro name",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"p","type":{"type":"record","name":"P","fields":[{"name":"x","type":"null"}]}}]}"#,
                "p.x",
            ),
            (
                r#"{"type":"record","name":"R","fields":[]}"#,
                "at least one field",
            ),
        ];
        for (json, expected) in cases {
            let e = RecordSchema::from_avro_json(json).unwrap_err().to_string();
            assert!(e.contains(expected), "{json}: {e}");
        }
    }

    #[test]
    fn oversized_and_deep_schemas_are_refused() {
        let big = format!(
            r#"{{"type":"record","name":"R","doc":"{}","fields":[{{"name":"a","type":"int"}}]}}"#,
            "x".repeat(2 << 20)
        );
        let e = RecordSchema::from_avro_json(&big).unwrap_err().to_string();
        assert!(e.contains("more than the limit"), "{e}");
        let mut json = String::from(r#""int""#);
        for _ in 0..100 {
            json = format!(r#"{{"type":"array","items":{json}}}"#);
        }
        let json =
            format!(r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":{json}}}]}}"#);
        let e = RecordSchema::from_avro_json(&json).unwrap_err().to_string();
        assert!(e.contains("deeper than 64"), "{e}");
    }
}
