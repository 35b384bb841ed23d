//! ksqlDB's functions that DataFusion does not have, or has with other semantics.
//!
//! This file: the aggregate functions, registered so queries using them plan and
//! type-check: `LATEST_BY_OFFSET`, `EARLIEST_BY_OFFSET`, `COLLECT_LIST`, `COLLECT_SET`,
//! `TOPK`, `HISTOGRAM`, `COUNT_DISTINCT`. [`scalar`]: the scalar function library.
//!
//! The streaming aggregate runs them with its own accumulators
//! ([`crate::operators::acc`]); DataFusion never executes them, so their batch accumulator
//! is an error.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};

pub mod scalar;

/// The result of each function, given its argument's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Returns {
    /// Same type as the argument, or a list of them when the second argument is a count
    /// (`LATEST_BY_OFFSET(x, 3)`, `LATEST_BY_OFFSET(x, 3, false)`), not `ignoreNulls`.
    SameOrList,
    /// A list of the argument's type.
    List,
    /// BIGINT.
    Count,
    /// MAP<VARCHAR, BIGINT>.
    Histogram,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Streaming {
    name: &'static str,
    returns: Returns,
    signature: Signature,
}

/// The type HISTOGRAM returns.
pub fn histogram_type() -> DataType {
    let entries = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Int64, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

impl AggregateUDFImpl for Streaming {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let arg = arg_types.first().cloned().unwrap_or(DataType::Null);
        Ok(match self.returns {
            Returns::SameOrList => match arg_types.get(1) {
                Some(t) if t.is_integer() => DataType::new_list(arg, true),
                _ => arg,
            },
            Returns::List => DataType::new_list(arg, true),
            Returns::Count => DataType::Int64,
            Returns::Histogram => histogram_type(),
        })
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Err(DataFusionError::NotImplemented(format!(
            "{} runs only in streaming queries",
            self.name.to_uppercase()
        )))
    }
}

/// The functions, ready to register with a `SessionContext`.
pub fn streaming_aggregates() -> Vec<AggregateUDF> {
    let one = || Signature::any(1, Volatility::Immutable);
    let f = |name, returns, signature| {
        AggregateUDF::from(Streaming {
            name,
            returns,
            signature,
        })
    };
    // Any number of arguments: the streaming aggregate checks them and says which forms
    // exist (DataFusion's signature error would not).
    let by_offset = || Signature::variadic_any(Volatility::Immutable);
    vec![
        f("latest_by_offset", Returns::SameOrList, by_offset()),
        f("earliest_by_offset", Returns::SameOrList, by_offset()),
        f("collect_list", Returns::List, one()),
        f("collect_set", Returns::List, one()),
        f(
            "topk",
            Returns::List,
            Signature::one_of(vec![TypeSignature::Any(2)], Volatility::Immutable),
        ),
        f("histogram", Returns::Histogram, one()),
        f("count_distinct", Returns::Count, one()),
    ]
}
