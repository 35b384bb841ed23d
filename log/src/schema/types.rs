//! The neutral record schema the log understands: fields, types and nullability, with the
//! checks every stored schema passes.

use std::collections::BTreeSet;

use super::{MAX_DEPTH, SchemaError};

/// Longest field name accepted, in bytes.
const MAX_NAME_BYTES: usize = 1024;

/// The schema of a record value (or key): a list of named fields.
///
/// It knows nothing of SQL or Arrow; the SQL layer and the sinks translate to and from it.
/// Stored and served as Avro schema JSON ([`RecordSchema::to_avro_json`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RecordSchema {
    /// The fields, in order.
    pub fields: Vec<FieldSchema>,
}

/// One field of a record (or of a nested struct).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldSchema {
    /// The name as the writer spells it. Any non-empty text without control characters: SQL
    /// quoted identifiers such as `"order id"` or `"a.b/c"` are kept as they are; the Avro
    /// form carries a name Avro accepts plus the original (see [`super::avro`]).
    pub name: String,
    /// The type.
    pub ty: FieldType,
    /// Whether the value may be null. A nullable field defaults to null, so a reader with a
    /// nullable field can read data written without it.
    pub nullable: bool,
}

/// A field's type: what SQL columns and the Avro subset the registry supports can express.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// `BOOLEAN` / Avro `boolean`.
    Boolean,
    /// `INT` / Avro `int`.
    Int32,
    /// `BIGINT` / Avro `long`.
    Int64,
    /// `REAL` / Avro `float`.
    Float32,
    /// `DOUBLE` / Avro `double`.
    Float64,
    /// `DECIMAL(p, s)` / Avro `bytes` with logical type `decimal`. Avro needs
    /// `1 <= precision` and `0 <= scale <= precision`.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// `VARCHAR` / Avro `string`.
    String,
    /// `BYTES` / Avro `bytes`.
    Bytes,
    /// `DATE` / Avro `int` with logical type `date` (days since the epoch).
    Date,
    /// `TIMESTAMP` / Avro `long` with logical type `timestamp-millis`.
    TimestampMillis,
    /// `ARRAY<T>` / Avro `array`.
    Array {
        /// The element type.
        items: Box<FieldType>,
        /// Whether elements may be null.
        items_nullable: bool,
    },
    /// `MAP<STRING, T>` / Avro `map` (keys are always strings).
    Map {
        /// The value type.
        values: Box<FieldType>,
        /// Whether values may be null.
        values_nullable: bool,
    },
    /// `STRUCT<...>` / a nested Avro `record`.
    Struct(Vec<FieldSchema>),
}

impl RecordSchema {
    /// A schema of these fields.
    pub fn new(fields: Vec<FieldSchema>) -> Self {
        RecordSchema { fields }
    }

    /// Checks what every stored schema must satisfy: at least one field, field names
    /// non-empty, unique within their record and free of control characters, nesting at most
    /// [`MAX_DEPTH`] levels, and decimal bounds Avro can express.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.fields.is_empty() {
            return Err(SchemaError::new("", "a record needs at least one field"));
        }
        validate_fields(&self.fields, "", 1)
    }
}

impl FieldSchema {
    /// A non-null field.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        FieldSchema {
            name: name.into(),
            ty,
            nullable: false,
        }
    }

    /// A nullable field (defaults to null).
    pub fn nullable(name: impl Into<String>, ty: FieldType) -> Self {
        FieldSchema {
            name: name.into(),
            ty,
            nullable: true,
        }
    }
}

impl FieldType {
    /// An array of `items`.
    pub fn array(items: FieldType, items_nullable: bool) -> Self {
        FieldType::Array {
            items: Box::new(items),
            items_nullable,
        }
    }

    /// A map from strings to `values`.
    pub fn map(values: FieldType, values_nullable: bool) -> Self {
        FieldType::Map {
            values: Box::new(values),
            values_nullable,
        }
    }

    /// A short name for messages (`long`, `decimal(10,2)`, `array`, ...).
    pub fn describe(&self) -> String {
        match self {
            FieldType::Boolean => "boolean".into(),
            FieldType::Int32 => "int".into(),
            FieldType::Int64 => "long".into(),
            FieldType::Float32 => "float".into(),
            FieldType::Float64 => "double".into(),
            FieldType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            FieldType::String => "string".into(),
            FieldType::Bytes => "bytes".into(),
            FieldType::Date => "date".into(),
            FieldType::TimestampMillis => "timestamp-millis".into(),
            FieldType::Array { .. } => "array".into(),
            FieldType::Map { .. } => "map".into(),
            FieldType::Struct(_) => "record".into(),
        }
    }
}

/// The path of a field below `parent`, as errors show it (`payload.items[].price`).
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn validate_fields(fields: &[FieldSchema], path: &str, depth: usize) -> Result<(), SchemaError> {
    if depth > MAX_DEPTH {
        return Err(SchemaError::new(
            path,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        ));
    }
    let mut seen = BTreeSet::new();
    for f in fields {
        let here = child_path(path, &f.name);
        validate_name(&f.name, path)?;
        if !seen.insert(f.name.as_str()) {
            return Err(SchemaError::new(here, "the field name appears twice"));
        }
        validate_type(&f.ty, &here, depth)?;
    }
    Ok(())
}

fn validate_name(name: &str, path: &str) -> Result<(), SchemaError> {
    if name.is_empty() {
        return Err(SchemaError::new(path, "a field name is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(SchemaError::new(
            path,
            format!("a field name is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(SchemaError::new(
            child_path(path, name),
            "field names may not contain control characters",
        ));
    }
    Ok(())
}

fn validate_type(ty: &FieldType, path: &str, depth: usize) -> Result<(), SchemaError> {
    match ty {
        FieldType::Decimal { precision, scale } => {
            if *precision == 0 || *scale < 0 || *scale as u8 > *precision {
                return Err(SchemaError::new(
                    path,
                    format!(
                        "decimal({precision},{scale}) is not representable in Avro: it needs precision >= 1 and 0 <= scale <= precision"
                    ),
                ));
            }
            Ok(())
        }
        FieldType::Array { items, .. } => {
            check_depth(path, depth + 1)?;
            validate_type(items, &format!("{path}[]"), depth + 1)
        }
        FieldType::Map { values, .. } => {
            check_depth(path, depth + 1)?;
            validate_type(values, &format!("{path}{{}}"), depth + 1)
        }
        FieldType::Struct(fields) => {
            if fields.is_empty() {
                return Err(SchemaError::new(path, "a struct needs at least one field"));
            }
            validate_fields(fields, path, depth + 1)
        }
        _ => Ok(()),
    }
}

/// Refuses nesting deeper than [`MAX_DEPTH`] at `path`.
pub(crate) fn check_depth(path: &str, depth: usize) -> Result<(), SchemaError> {
    if depth > MAX_DEPTH {
        return Err(SchemaError::new(
            path,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_empty_and_control_names_are_refused() {
        let dup = RecordSchema::new(vec![
            FieldSchema::new("a", FieldType::Int32),
            FieldSchema::new("a", FieldType::Int64),
        ]);
        assert!(dup.validate().unwrap_err().to_string().contains("twice"));
        let empty = RecordSchema::new(vec![FieldSchema::new("", FieldType::Int32)]);
        assert!(empty.validate().is_err());
        let ctl = RecordSchema::new(vec![FieldSchema::new("a\nb", FieldType::Int32)]);
        assert!(ctl.validate().is_err());
        assert!(RecordSchema::default().validate().is_err());
    }

    #[test]
    fn loose_names_with_separators_are_accepted() {
        let s = RecordSchema::new(vec![FieldSchema::new("a.b/c d", FieldType::String)]);
        s.validate().unwrap();
    }

    #[test]
    fn decimal_bounds_follow_avro() {
        for (p, s, ok) in [
            (10, 2, true),
            (1, 0, true),
            (0, 0, false),
            (5, -1, false),
            (3, 4, false),
        ] {
            let schema = RecordSchema::new(vec![FieldSchema::new(
                "d",
                FieldType::Decimal {
                    precision: p,
                    scale: s,
                },
            )]);
            assert_eq!(schema.validate().is_ok(), ok, "decimal({p},{s})");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut ty = FieldType::Int32;
        for _ in 0..MAX_DEPTH {
            ty = FieldType::Struct(vec![FieldSchema::new("x", ty)]);
        }
        let deep = RecordSchema::new(vec![FieldSchema::new("x", ty)]);
        let e = deep.validate().unwrap_err();
        assert!(e.to_string().contains("deeper than 64"), "{e}");
        let mut ok = FieldType::Int32;
        for _ in 0..MAX_DEPTH - 2 {
            ok = FieldType::array(ok, false);
        }
        RecordSchema::new(vec![FieldSchema::new("x", ok)])
            .validate()
            .unwrap();
    }
}
