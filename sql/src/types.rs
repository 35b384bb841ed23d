//! SQL column types of the dialect and their Arrow types.
//!
//! The dialect's types are ksqlDB's: BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL(p, s), VARCHAR /
//! STRING, BYTES, DATE, TIME, TIMESTAMP, ARRAY<T>, MAP<VARCHAR, T> and STRUCT<name T, ...> (nested
//! JSON objects).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, DataType as SqlType, ExactNumberInfo};

use crate::error::{Result, SqlError};

/// The Arrow type of a SQL type, or a clear error naming the type.
pub fn arrow_type(t: &SqlType) -> Result<DataType> {
    let unsupported = || {
        SqlError::Invalid(format!(
            "type {t} is not supported (use BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL(p, s), VARCHAR, BYTES, DATE, TIME, TIMESTAMP, ARRAY<T>, MAP<VARCHAR, T> or STRUCT<...>)"
        ))
    };
    Ok(match t {
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::TinyInt(_) | SqlType::SmallInt(_) | SqlType::Int(_) | SqlType::Integer(_) => {
            DataType::Int32
        }
        SqlType::BigInt(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Double(_)
        | SqlType::DoublePrecision
        | SqlType::Float64
        | SqlType::Real
        | SqlType::Float(_) => DataType::Float64,
        SqlType::Decimal(info) | SqlType::Numeric(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => (38, 10),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
            };
            if p == 0 || p > 38 || s < 0 || s as u64 > p {
                return Err(SqlError::Invalid(format!(
                    "{t}: precision must be 1..=38 and scale 0..=precision"
                )));
            }
            DataType::Decimal128(p as u8, s as i8)
        }
        SqlType::Varchar(_)
        | SqlType::String(_)
        | SqlType::Text
        | SqlType::Char(_)
        | SqlType::CharVarying(_) => DataType::Utf8,
        SqlType::Bytes(_)
        | SqlType::Bytea
        | SqlType::Binary(_)
        | SqlType::Varbinary(_)
        | SqlType::Blob(_) => DataType::Binary,
        SqlType::Date => DataType::Date32,
        // Milliseconds since midnight, as ksqlDB's TIME.
        SqlType::Time(_, _) => DataType::Time32(TimeUnit::Millisecond),
        SqlType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Millisecond, None),
        SqlType::Array(elem) => match elem {
            ArrayElemTypeDef::AngleBracket(inner)
            | ArrayElemTypeDef::SquareBracket(inner, _)
            | ArrayElemTypeDef::Parenthesis(inner) => {
                DataType::List(Arc::new(Field::new("item", arrow_type(inner)?, true)))
            }
            ArrayElemTypeDef::None => {
                return Err(SqlError::Invalid(
                    "ARRAY needs an element type: ARRAY<T>".into(),
                ));
            }
        },
        SqlType::Map(k, v) => {
            if arrow_type(k)? != DataType::Utf8 {
                return Err(SqlError::Invalid(format!("{t}: map keys must be VARCHAR")));
            }
            let entries = Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", arrow_type(v)?, true),
            ]);
            DataType::Map(
                Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                false,
            )
        }
        SqlType::Struct(fields, _) => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let name = f
                    .field_name
                    .as_ref()
                    .map(|n| {
                        if n.quote_style.is_some() {
                            n.value.clone()
                        } else {
                            n.value.to_uppercase()
                        }
                    })
                    .ok_or_else(|| {
                        SqlError::Invalid(format!("{t}: every STRUCT field needs a name"))
                    })?;
                out.push(Field::new(name, arrow_type(&f.field_type)?, true));
            }
            DataType::Struct(Fields::from(out))
        }
        SqlType::Custom(name, _) if name.to_string().eq_ignore_ascii_case("STRING") => {
            DataType::Utf8
        }
        _ => return Err(unsupported()),
    })
}

/// `t` with every TIME as the INT of milliseconds it is written as: the record schema (and
/// Avro's subset it maps to) has no TIME type, and a TIME value is that number in JSON.
pub fn time_as_int(t: &DataType) -> DataType {
    let field = |f: &Field| Arc::new(f.clone().with_data_type(time_as_int(f.data_type())));
    match t {
        DataType::Time32(_) => DataType::Int32,
        DataType::Time64(_) => DataType::Int64,
        DataType::List(f) => DataType::List(field(f)),
        DataType::Struct(fs) => {
            DataType::Struct(fs.iter().map(|f| field(f)).collect::<Vec<_>>().into())
        }
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

/// The SQL name of an Arrow type, for DESCRIBE.
pub fn sql_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "INT".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::Float32 | DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("ARRAY<{}>", sql_name(f.data_type())),
        DataType::Map(f, _) => match f.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                format!("MAP<VARCHAR, {}>", sql_name(kv[1].data_type()))
            }
            _ => "MAP".into(),
        },
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", quoted_if_needed(f.name()), sql_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// `name` as an identifier that parses back to exactly `name`: bare when folding leaves it
/// unchanged (upper case, digits, `_`), else quoted.
pub(crate) fn quoted_if_needed(name: &str) -> String {
    let simple = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if simple {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::Statement;

    fn column_types(sql: &str) -> Vec<Result<DataType>> {
        let Statement::CreateSource { columns, .. } = crate::parse_one(sql).unwrap() else {
            panic!()
        };
        columns.iter().map(|c| arrow_type(&c.data_type)).collect()
    }

    #[test]
    fn ksql_types_map_to_arrow() {
        let t = column_types(
            "CREATE STREAM s (a BOOLEAN, b INT, c BIGINT, d DOUBLE, e DECIMAL(10, 2), f VARCHAR, g STRING, \
             h BYTES, i TIMESTAMP, j ARRAY<VARCHAR>, k MAP<VARCHAR, INT>, l STRUCT<city VARCHAR, zip INT>) WITH (topic='t')",
        );
        let t: Vec<DataType> = t.into_iter().map(Result::unwrap).collect();
        assert_eq!(t[0], DataType::Boolean);
        assert_eq!(t[4], DataType::Decimal128(10, 2));
        assert_eq!(t[6], DataType::Utf8);
        assert_eq!(t[8], DataType::Timestamp(TimeUnit::Millisecond, None));
        assert_eq!(sql_name(&t[9]), "ARRAY<VARCHAR>");
        assert_eq!(sql_name(&t[10]), "MAP<VARCHAR, INT>");
        assert_eq!(sql_name(&t[11]), "STRUCT<CITY VARCHAR, ZIP INT>");
    }

    #[test]
    fn unsupported_types_are_named() {
        let t =
            column_types("CREATE STREAM s (a DECIMAL(50, 2), b MAP<INT, INT>) WITH (topic='t')");
        assert!(t[0].as_ref().unwrap_err().to_string().contains("precision"));
        assert!(t[1].as_ref().unwrap_err().to_string().contains("map keys"));
    }
}
