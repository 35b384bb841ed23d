//! ksqlDB's scalar function library, as DataFusion scalar UDFs registered by the planner.
//!
//! DataFusion's own function is kept where its semantics are ksqlDB's (registered under
//! ksqlDB's name as an alias, e.g. `LCASE` for `lower`); where they differ (1-based and
//! negative `SUBSTRING` positions, half-up `ROUND`, Java date-time patterns, `LOG` base 10,
//! `SIGN` as an `INT`, ...) the function here replaces it under the same name.
//!
//! Most functions are written as [`RowFn`]s: a function of one row's argument values
//! ([`ScalarValue`]s). That costs a conversion per value, which these functions — string,
//! date and collection manipulation on already-decoded records — can afford, and keeps each
//! one a few lines that read like the reference's description.
//!
//! # Layout
//!
//! - [`string`]: text and bytes (`SUBSTRING`, `LPAD`, `SPLIT`, `REGEXP_*`, `MASK*`, ...).
//! - [`math`]: numbers (`ROUND`, `SIGN`, `LOG`, `GENERATE_SERIES`, ...).
//! - [`datetime`]: dates, times and timestamps (`FORMAT_TIMESTAMP`, `DATEADD`, ...), with
//!   [`java_format`] translating Java `DateTimeFormatter` patterns.
//! - [`json`]: JSON held in strings (`EXTRACTJSONFIELD`, `JSON_CONCAT`, `TO_JSON_STRING`, ...),
//!   on [`ordered_json`] values, which keep the order of object keys.
//! - [`cast`]: ksqlDB's CAST rules where arrow's differ (to BOOLEAN, STRUCT, MAP).
//! - [`collections`]: arrays, maps and structs (`ARRAY_*`, `MAP_*`, `ENTRIES`, ...); [`reduce`]:
//!   `REDUCE` over an array with a lambda.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, MapArray, StringArray, StructArray, new_empty_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub mod cast;
pub mod collections;
pub mod datetime;
pub mod java_format;
pub mod json;
pub mod math;
pub mod ordered_json;
pub mod reduce;
pub mod string;

/// Every scalar function of the library, ready to register with a `SessionContext`
/// (replacing DataFusion's function of the same name).
pub fn scalar_functions() -> Vec<ScalarUDF> {
    let mut out = Vec::new();
    out.extend(string::functions());
    out.extend(math::functions());
    out.extend(datetime::functions());
    out.extend(json::functions());
    out.extend(collections::functions());
    out.push(cast::function());
    out
}

/// ksqlDB's functions taking a lambda that DataFusion lacks (`REDUCE`); `TRANSFORM` and
/// `FILTER` are DataFusion's (see [`crate::syntax`]).
pub fn higher_order_functions() -> Vec<datafusion::logical_expr::HigherOrderUDF> {
    vec![reduce::function()]
}

/// DataFusion's own functions that have ksqlDB's semantics, under ksqlDB's names.
pub fn aliases() -> Vec<ScalarUDF> {
    use datafusion::functions::{core, math as dfmath, string as dfstring, unicode};
    let alias = |f: Arc<ScalarUDF>, names: &[&'static str]| {
        f.as_ref().clone().with_aliases(names.iter().copied())
    };
    vec![
        alias(dfstring::lower(), &["lcase"]),
        alias(dfstring::upper(), &["ucase"]),
        alias(unicode::initcap(), &[]),
        // ksqlDB's IFNULL(a, b) is COALESCE(a, b) and keeps a's type; DataFusion's `ifnull`
        // (NVL) turned an ARRAY into its text.
        alias(core::coalesce(), &["ifnull"]),
        alias(dfmath::cbrt(), &[]),
    ]
}

/// How one argument is coerced before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// VARCHAR (a NULL literal becomes a VARCHAR NULL).
    Str,
    /// BIGINT, from any integer.
    Int,
    /// DOUBLE, from any number.
    Float,
    /// BOOLEAN.
    Bool,
    /// BYTES.
    Bytes,
    /// A number, kept as it is (integers, DOUBLE, DECIMAL).
    Number,
    /// VARCHAR or BYTES, kept.
    StrOrBytes,
    /// Anything, kept.
    Any,
}

impl Arg {
    fn coerce(self, t: &DataType) -> Option<DataType> {
        use DataType as T;
        let string = matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
        let bytes = matches!(t, T::Binary | T::LargeBinary | T::BinaryView);
        Some(match self {
            Arg::Str if string || t == &T::Null => T::Utf8,
            Arg::Int if t.is_integer() || t == &T::Null => T::Int64,
            Arg::Float if t.is_numeric() || t == &T::Null => T::Float64,
            Arg::Bool if t == &T::Boolean || t == &T::Null => T::Boolean,
            Arg::Bytes if bytes || t == &T::Null => T::Binary,
            Arg::Number if t.is_numeric() => t.clone(),
            Arg::Number if t == &T::Null => T::Float64,
            Arg::StrOrBytes if string || t == &T::Null => T::Utf8,
            Arg::StrOrBytes if bytes => T::Binary,
            Arg::Any => t.clone(),
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Arg::Str => "a VARCHAR",
            Arg::Int => "an INT or BIGINT",
            Arg::Float | Arg::Number => "a number",
            Arg::Bool => "a BOOLEAN",
            Arg::Bytes => "BYTES",
            Arg::StrOrBytes => "a VARCHAR or BYTES",
            Arg::Any => "a value",
        }
    }
}

type Coerce = Box<dyn Fn(&str, &[DataType]) -> Result<Vec<DataType>> + Send + Sync>;
type Returns = Box<dyn Fn(&[DataType]) -> Result<DataType> + Send + Sync>;
type Eval = Box<dyn Fn(&[ScalarValue], &DataType) -> Result<ScalarValue> + Send + Sync>;

/// A scalar function evaluated row by row on [`ScalarValue`]s.
pub struct RowFn {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
    coerce: Coerce,
    returns: Returns,
    eval: Eval,
    /// A NULL argument makes the result NULL without calling `eval`.
    strict: bool,
}

impl fmt::Debug for RowFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowFn").field("name", &self.name).finish()
    }
}

// A function is its name: two with one name are one function to the registry.
impl PartialEq for RowFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for RowFn {}
impl Hash for RowFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

/// Arguments `args`, the last `args.len() - required` optional; with `variadic`, the last
/// one repeats.
pub fn args(required: usize, args: &'static [Arg], variadic: bool) -> Coerce {
    Box::new(move |name, types| {
        let max_ok = variadic || types.len() <= args.len();
        if types.len() < required || !max_ok {
            let n = if variadic {
                format!("at least {required}")
            } else if required == args.len() {
                format!("{required}")
            } else {
                format!("{required} to {}", args.len())
            };
            return Err(DataFusionError::Plan(format!(
                "{} takes {n} argument(s), got {}",
                name.to_uppercase(),
                types.len()
            )));
        }
        types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let a = args.get(i).or(args.last()).copied().unwrap_or(Arg::Any);
                a.coerce(t).ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "{} argument {} must be {}, got {}",
                        name.to_uppercase(),
                        i + 1,
                        a.describe(),
                        crate::types::sql_name(t)
                    ))
                })
            })
            .collect()
    })
}

/// A constant result type.
pub fn returns(t: DataType) -> Returns {
    Box::new(move |_| Ok(t.clone()))
}

impl RowFn {
    /// A strict (NULL in, NULL out) immutable function.
    pub fn new(
        name: &'static str,
        coerce: Coerce,
        returns: Returns,
        eval: impl Fn(&[ScalarValue], &DataType) -> Result<ScalarValue> + Send + Sync + 'static,
    ) -> RowFn {
        RowFn {
            name,
            aliases: Vec::new(),
            signature: Signature::user_defined(Volatility::Immutable),
            coerce,
            returns,
            eval: Box::new(eval),
            strict: true,
        }
    }

    /// `eval` sees NULL arguments (and decides what they give).
    pub fn lenient(mut self) -> RowFn {
        self.strict = false;
        self
    }

    /// A different value for each call (`RANDOM`, `UUID`, `UNIX_TIMESTAMP()`).
    pub fn volatile(mut self) -> RowFn {
        self.signature = Signature::user_defined(Volatility::Volatile);
        self
    }

    /// Other names.
    pub fn alias(mut self, names: &[&str]) -> RowFn {
        self.aliases.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// As a DataFusion UDF.
    pub fn udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    fn call(&self, args: &[ScalarValue], ret: &DataType) -> Result<ScalarValue> {
        let v = if self.strict && args.iter().any(ScalarValue::is_null) {
            ScalarValue::Null
        } else {
            (self.eval)(args, ret).map_err(|e| match e {
                DataFusionError::Execution(m) => {
                    DataFusionError::Execution(format!("{}: {m}", self.name.to_uppercase()))
                }
                other => other,
            })?
        };
        if v.is_null() {
            return ScalarValue::try_from(ret);
        }
        if &v.data_type() == ret {
            Ok(v)
        } else {
            v.cast_to(ret)
        }
    }
}

impl ScalarUDFImpl for RowFn {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        (self.coerce)(self.name, arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        (self.returns)(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ret = args.return_type().clone();
        let volatile = self.signature.volatility == Volatility::Volatile;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if all_scalar && !(volatile && args.number_rows > 1) {
            let values: Vec<ScalarValue> = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => s.clone(),
                    ColumnarValue::Array(_) => ScalarValue::Null,
                })
                .collect();
            return Ok(ColumnarValue::Scalar(self.call(&values, &ret)?));
        }
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let mut out = Vec::with_capacity(n);
        let mut row = Vec::with_capacity(arrays.len());
        for i in 0..n {
            row.clear();
            for a in &arrays {
                row.push(ScalarValue::try_from_array(a, i)?);
            }
            out.push(self.call(&row, &ret)?);
        }
        if out.is_empty() {
            return Ok(ColumnarValue::Array(new_empty_array(&ret)));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
    }
}

// ---- Value helpers shared by the families. ----

/// Compiles a pattern (regular expression, date-time pattern, JSONPath) at most once per
/// thread while it is among the last [`CACHE_SIZE`] distinct ones: patterns are usually
/// literals, the same for every row, and compiling one per row would dominate the cost.
pub fn cached<T: Clone + 'static>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<Vec<(String, T)>>>,
    key: &str,
    compile: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    if let Some(hit) = cache.with(|c| {
        c.borrow()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }) {
        return Ok(hit);
    }
    let v = compile(key)?;
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_SIZE {
            c.remove(0);
        }
        c.push((key.to_string(), v.clone()));
    });
    Ok(v)
}

/// Distinct patterns kept per thread and kind.
pub const CACHE_SIZE: usize = 32;

/// An execution error (a bad argument value in one row).
pub fn bad(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Execution(msg.into())
}

/// The text of a VARCHAR value.
pub fn text(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        _ => None,
    }
}

/// The bytes of a BYTES value.
pub fn bytes(v: &ScalarValue) -> Option<&[u8]> {
    match v {
        ScalarValue::Binary(b) | ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b) => {
            b.as_deref()
        }
        _ => None,
    }
}

/// An integer value.
pub fn int(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(i) => i.map(i64::from),
        ScalarValue::Int16(i) => i.map(i64::from),
        ScalarValue::Int32(i) => i.map(i64::from),
        ScalarValue::Int64(i) => *i,
        ScalarValue::UInt8(i) => i.map(i64::from),
        ScalarValue::UInt16(i) => i.map(i64::from),
        ScalarValue::UInt32(i) => i.map(i64::from),
        ScalarValue::UInt64(i) => i.and_then(|i| i64::try_from(i).ok()),
        _ => None,
    }
}

/// A floating-point value.
pub fn float(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::Float64(f) => *f,
        ScalarValue::Float32(f) => f.map(f64::from),
        other => int(other).map(|i| i as f64),
    }
}

/// A BOOLEAN value.
pub fn boolean(v: &ScalarValue) -> Option<bool> {
    match v {
        ScalarValue::Boolean(b) => *b,
        _ => None,
    }
}

/// A VARCHAR value.
pub fn utf8(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}

/// The elements of an ARRAY value (`None` for NULL).
pub fn elements(v: &ScalarValue) -> Result<Option<Vec<ScalarValue>>> {
    let arr: &dyn Array = match v {
        ScalarValue::List(a) => a.as_ref(),
        ScalarValue::LargeList(a) => a.as_ref(),
        ScalarValue::FixedSizeList(a) => a.as_ref(),
        ScalarValue::Null => return Ok(None),
        other => return Err(bad(format!("expected an ARRAY, got {}", other.data_type()))),
    };
    if arr.is_null(0) {
        return Ok(None);
    }
    let mut lists = ScalarValue::convert_array_to_scalar_vec(arr)?;
    Ok(lists.pop().flatten())
}

/// An ARRAY value of `elem`-typed elements.
pub fn list(values: &[ScalarValue], elem: &DataType) -> Result<ScalarValue> {
    let values: Vec<ScalarValue> = values
        .iter()
        .map(|v| {
            if v.is_null() {
                ScalarValue::try_from(elem)
            } else if &v.data_type() == elem {
                Ok(v.clone())
            } else {
                v.cast_to(elem)
            }
        })
        .collect::<Result<_>>()?;
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, elem,
    )))
}

/// The element type of an ARRAY type.
pub fn element_type(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

/// `MAP<VARCHAR, value>` as the dialect's types have it.
pub fn map_type(value: DataType) -> DataType {
    let entries = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", value, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

/// The entries of a MAP value, in order (`None` for NULL).
pub fn entries(v: &ScalarValue) -> Result<Option<Vec<(ScalarValue, ScalarValue)>>> {
    let ScalarValue::Map(m) = v else {
        if v.is_null() {
            return Ok(None);
        }
        return Err(bad(format!("expected a MAP, got {}", v.data_type())));
    };
    if m.is_null(0) {
        return Ok(None);
    }
    let e = m.value(0);
    let mut out = Vec::with_capacity(e.len());
    for i in 0..e.len() {
        out.push((
            ScalarValue::try_from_array(e.column(0), i)?,
            ScalarValue::try_from_array(e.column(1), i)?,
        ));
    }
    Ok(Some(out))
}

/// A MAP value of type `t` (a `map_type`) from entries; a later key replaces an earlier one
/// in the earlier one's place.
pub fn map(entries: Vec<(String, ScalarValue)>, t: &DataType) -> Result<ScalarValue> {
    let DataType::Map(field, sorted) = t else {
        return Err(bad(format!("internal error: {t} is not a MAP type")));
    };
    let DataType::Struct(kv) = field.data_type() else {
        return Err(bad(format!("internal error: {t} is not a MAP type")));
    };
    let mut keys: Vec<String> = Vec::with_capacity(entries.len());
    let mut values: Vec<ScalarValue> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        match keys.iter().position(|x| *x == k) {
            Some(i) => values[i] = v,
            None => {
                keys.push(k);
                values.push(v);
            }
        }
    }
    let vt = kv[1].data_type();
    let values: Vec<ScalarValue> = values
        .into_iter()
        .map(|v| {
            if v.is_null() {
                ScalarValue::try_from(vt)
            } else if &v.data_type() == vt {
                Ok(v)
            } else {
                v.cast_to(vt)
            }
        })
        .collect::<Result<_>>()?;
    let n = keys.len();
    let value_array = if values.is_empty() {
        new_empty_array(vt)
    } else {
        ScalarValue::iter_to_array(values)?
    };
    let key_array: ArrayRef = Arc::new(StringArray::from(keys));
    let key_array = datafusion::arrow::compute::cast(&key_array, kv[0].data_type())?;
    let entries = StructArray::try_new(kv.clone(), vec![key_array, value_array], None)?;
    let offsets = OffsetBuffer::new(vec![0i32, n as i32].into());
    let m = MapArray::try_new(Arc::clone(field), offsets, entries, None, *sorted)?;
    Ok(ScalarValue::Map(Arc::new(m)))
}
