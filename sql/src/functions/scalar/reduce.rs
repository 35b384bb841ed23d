//! `REDUCE(array, state, (s, x) => ...)`: folds an array from an initial state, as a
//! DataFusion higher-order function (DataFusion has none that folds). The state keeps the
//! initial state's type (each step's result is cast to it). A NULL array or NULL initial
//! state gives NULL, as ksqlDB's does.
//!
//! Rows are folded side by side: step `j` evaluates the lambda once, over the rows whose
//! array has an element `j`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array, new_null_array};
use datafusion::arrow::compute::{cast, interleave, take, take_arrays};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, HigherOrderFunctionArgs, HigherOrderReturnFieldArgs, HigherOrderSignature,
    HigherOrderUDF, HigherOrderUDFImpl, LambdaParametersProgress, ValueOrLambda, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct Reduce {
    signature: HigherOrderSignature,
}

fn plan_err(msg: &str) -> DataFusionError {
    DataFusionError::Plan(format!("REDUCE {msg}"))
}

impl HigherOrderUDFImpl for Reduce {
    fn name(&self) -> &str {
        "reduce"
    }

    fn signature(&self) -> &HigherOrderSignature {
        &self.signature
    }

    fn coerce_value_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(arg_types.to_vec())
    }

    fn lambda_parameters(
        &self,
        _step: usize,
        fields: &[ValueOrLambda<FieldRef, Option<FieldRef>>],
    ) -> Result<LambdaParametersProgress> {
        let [
            ValueOrLambda::Value(list),
            ValueOrLambda::Value(state),
            ValueOrLambda::Lambda(_),
        ] = fields
        else {
            return Err(plan_err(
                "takes an ARRAY, an initial state and a lambda (s, x) => ...",
            ));
        };
        let elem = match list.data_type() {
            DataType::List(f) => Arc::clone(f),
            DataType::Null => Arc::new(Field::new("x", DataType::Null, true)),
            other => {
                return Err(plan_err(&format!(
                    "of a {} (an ARRAY is needed; a MAP is not supported)",
                    crate::types::sql_name(other)
                )));
            }
        };
        let state = Arc::new(Field::new("s", state.data_type().clone(), true));
        Ok(LambdaParametersProgress::Complete(vec![vec![state, elem]]))
    }

    fn return_field_from_args(&self, args: HigherOrderReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields.get(1) {
            Some(ValueOrLambda::Value(state)) => {
                Ok(Arc::new(Field::new("", state.data_type().clone(), true)))
            }
            _ => Err(plan_err("needs an initial state")),
        }
    }

    fn invoke_with_args(&self, args: HigherOrderFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let (
            Some(ValueOrLambda::Value(list)),
            Some(ValueOrLambda::Value(state)),
            Some(ValueOrLambda::Lambda(lambda)),
        ) = (args.args.first(), args.args.get(1), args.args.get(2))
        else {
            return Err(plan_err("takes an ARRAY, an initial state and a lambda"));
        };
        let state_type = args.return_type().clone();
        let list = list.to_array(n)?;
        let mut acc = cast(&state.to_array(n)?, &state_type)?;
        if list.data_type() == &DataType::Null {
            return Ok(ColumnarValue::Array(new_null_array(&state_type, n)));
        }
        let l = list.as_list::<i32>();
        let len = |r: usize| {
            if l.is_null(r) {
                0
            } else {
                l.value_length(r) as usize
            }
        };
        let longest = (0..n).map(len).max().unwrap_or(0);
        for j in 0..longest {
            let rows: Vec<u32> = (0..n)
                .filter(|&r| len(r) > j && !acc.is_null(r))
                .map(|r| r as u32)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let rows_index = UInt32Array::from(rows.clone());
            let element_index = UInt32Array::from_iter_values(
                rows.iter()
                    .map(|&r| l.value_offsets()[r as usize] as u32 + j as u32),
            );
            let s = take(acc.as_ref(), &rows_index, None)?;
            let x = take(l.values().as_ref(), &element_index, None)?;
            let s_param = || Ok(Arc::clone(&s));
            let x_param = || Ok(Arc::clone(&x));
            let stepped = lambda
                .evaluate(&[&s_param, &x_param], |captured| {
                    Ok(take_arrays(captured, &rows_index, None)?)
                })?
                .into_array(rows.len())?;
            let stepped = cast(&stepped, &state_type)?;
            // Stepped rows take the new state, the others keep theirs.
            let mut next = 0;
            let picks: Vec<(usize, usize)> = (0..n)
                .map(|r| {
                    if rows.get(next) == Some(&(r as u32)) {
                        next += 1;
                        (1, next - 1)
                    } else {
                        (0, r)
                    }
                })
                .collect();
            acc = interleave(&[acc.as_ref(), stepped.as_ref()], &picks)?;
        }
        // A NULL array gives NULL.
        let keep: Vec<(usize, usize)> = (0..n)
            .map(|r| if l.is_null(r) { (1, 0) } else { (0, r) })
            .collect();
        let null: ArrayRef = new_null_array(&state_type, 1);
        Ok(ColumnarValue::Array(interleave(
            &[acc.as_ref(), null.as_ref()],
            &keep,
        )?))
    }
}

/// The function.
pub fn function() -> HigherOrderUDF {
    HigherOrderUDF::new_from_impl(Reduce {
        signature: HigherOrderSignature::exact(
            vec![
                ValueOrLambda::Value(()),
                ValueOrLambda::Value(()),
                ValueOrLambda::Lambda(()),
            ],
            Volatility::Immutable,
        ),
    })
}
