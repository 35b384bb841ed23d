//! ksqlDB's CAST rules where arrow's cast has others, as the function
//! `KSQL_CAST(x, 'TYPE')` that [`crate::syntax`] writes for `CAST(x AS TYPE)` when TYPE is
//! a BOOLEAN, MAP or STRUCT (or an ARRAY of them):
//!
//! - VARCHAR to BOOLEAN: `true` in any case is true, any other text false;
//! - STRUCT to STRUCT: the fields are matched by name, a field the source lacks is NULL;
//! - MAP to MAP (which DataFusion's SQL cannot name): keys and values cast;
//! - DOUBLE to VARCHAR as Java writes a double (`7.0`, `7.0E10`, `1.0E-5`), TIMESTAMP to
//!   VARCHAR as `yyyy-MM-dd'T'HH:mm:ss.SSS`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, MapArray, StructArray, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The name [`crate::syntax`] calls.
pub const NAME: &str = "ksql_cast";

/// The Arrow type a SQL type text names.
pub fn parse_type(text: &str) -> Result<DataType> {
    let t = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_data_type())
        .map_err(|e| DataFusionError::Plan(format!("CAST to {text}: {e}")))?;
    crate::types::arrow_type(&t).map_err(|e| DataFusionError::Plan(e.to_string()))
}

const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: datafusion::arrow::util::display::FormatOptions::new(),
};

/// A double as Java's `Double.toString` writes it: plain from 10^-3 up to 10^7, else
/// `d.dddE±n`; the shortest digits that read back as the same double.
pub fn java_double(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let abs = x.abs();
    if (1e-3..1e7).contains(&abs) {
        let plain = format!("{x}");
        return if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_string()
    } else {
        format!("{mantissa}.0")
    };
    format!("{mantissa}E{exp}")
}

/// Casts `a` to `to` by ksqlDB's rules.
pub fn cast(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(Arc::clone(a));
    }
    Ok(match (a.data_type(), to) {
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Boolean) => {
            let text = cast_with_options(a, &DataType::Utf8, &STRICT)?;
            let text = text.as_string::<i32>();
            let b: BooleanArray = (0..text.len())
                .map(|i| (!text.is_null(i)).then(|| text.value(i).eq_ignore_ascii_case("true")))
                .collect();
            Arc::new(b)
        }
        (DataType::Float64 | DataType::Float32, DataType::Utf8) => {
            let f = cast_with_options(a, &DataType::Float64, &STRICT)?;
            let f = f.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            let text: datafusion::arrow::array::StringArray = (0..f.len())
                .map(|i| (!f.is_null(i)).then(|| java_double(f.value(i))))
                .collect();
            Arc::new(text)
        }
        (DataType::Timestamp(..), DataType::Utf8) => {
            let ms = cast_with_options(
                a,
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                &STRICT,
            )?;
            let ms = cast_with_options(&ms, &DataType::Int64, &STRICT)?;
            let ms = ms.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let text: datafusion::arrow::array::StringArray = (0..ms.len())
                .map(|i| {
                    (!ms.is_null(i)).then(|| {
                        chrono::DateTime::from_timestamp_millis(ms.value(i))
                            .unwrap_or_default()
                            .format("%Y-%m-%dT%H:%M:%S%.3f")
                            .to_string()
                    })
                })
                .collect();
            Arc::new(text)
        }
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = a.as_struct();
            let columns = fields
                .iter()
                .map(|f| match s.column_by_name(f.name()) {
                    Some(c) => cast(c, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), s.len())),
                })
                .collect::<Result<Vec<_>>>()?;
            let nullable: Vec<FieldRef> = fields
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
                .collect();
            Arc::new(StructArray::try_new(
                nullable.into(),
                columns,
                s.nulls().cloned(),
            )?)
        }
        (DataType::List(_), DataType::List(f)) => {
            let l = a.as_list::<i32>();
            let values = cast(l.values(), f.data_type())?;
            Arc::new(ListArray::try_new(
                Arc::clone(f),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?)
        }
        (DataType::Map(..), DataType::Map(f, sorted)) => {
            let m = a.as_map();
            let DataType::Struct(kv) = f.data_type() else {
                return Err(DataFusionError::Plan(format!("bad MAP type {to}")));
            };
            let keys = cast(m.keys(), kv[0].data_type())?;
            let values = cast(m.values(), kv[1].data_type())?;
            let entries = StructArray::try_new(kv.clone(), vec![keys, values], None)?;
            Arc::new(MapArray::try_new(
                Arc::clone(f),
                m.offsets().clone(),
                entries,
                m.nulls().cloned(),
                *sorted,
            )?)
        }
        _ => cast_with_options(a, to, &STRICT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::java_double;

    #[test]
    fn doubles_print_as_java_prints_them() {
        assert_eq!(java_double(7.0), "7.0");
        assert_eq!(java_double(2.75), "2.75");
        assert_eq!(java_double(7e10), "7.0E10");
        assert_eq!(java_double(1.5e-5), "1.5E-5");
        assert_eq!(java_double(1234567.0), "1234567.0");
        assert_eq!(java_double(12345678.9), "1.23456789E7");
        assert_eq!(java_double(0.001), "0.001");
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct KsqlCast {
    signature: Signature,
}

impl ScalarUDFImpl for KsqlCast {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Err(DataFusionError::Internal(
            "KSQL_CAST's type comes from its arguments".into(),
        ))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let target = match args.scalar_arguments.get(1) {
            Some(Some(ScalarValue::Utf8(Some(t)))) => parse_type(t)?,
            _ => {
                return Err(DataFusionError::Plan(
                    "KSQL_CAST needs a type name as its second argument".into(),
                ));
            }
        };
        Ok(Arc::new(Field::new(NAME, target, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let to = args.return_type().clone();
        match &args.args[0] {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(cast(a, &to)?)),
            ColumnarValue::Scalar(s) => {
                let out = cast(&s.to_array()?, &to)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            }
        }
    }
}

/// The function.
pub fn function() -> ScalarUDF {
    ScalarUDF::new_from_impl(KsqlCast {
        signature: Signature::any(2, Volatility::Immutable),
    })
}
