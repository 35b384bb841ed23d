//! Functions over ARRAY, MAP and STRUCT values. Indexes are 1-based, as in ksqlDB; set
//! operations keep the order of first occurrence.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StructArray};
use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ScalarUDF;

use super::{
    Arg, RowFn, bad, boolean, element_type, elements, entries, int, list, map, map_type, returns,
    text, utf8,
};

use Arg::{Any, Int, Str};

type Coerce = Box<dyn Fn(&str, &[DataType]) -> Result<Vec<DataType>> + Send + Sync>;

fn not_array(name: &str, i: usize, t: &DataType) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{} argument {i} must be an ARRAY, got {}",
        name.to_uppercase(),
        crate::types::sql_name(t)
    ))
}

/// `n` arrays (the first `required` of them required), all of the first one's type; then
/// the rest (`rest` coercions).
fn arrays(n: usize, rest: &'static [Arg]) -> Coerce {
    Box::new(move |name, t| {
        if t.len() < n || t.len() > n + rest.len() {
            return Err(DataFusionError::Plan(format!(
                "{} takes {} argument(s), got {}",
                name.to_uppercase(),
                n,
                t.len()
            )));
        }
        let first = t
            .iter()
            .take(n)
            .find(|t| element_type(t).is_some())
            .cloned()
            .or_else(|| t.first().filter(|t| t == &&DataType::Null).cloned())
            .ok_or_else(|| not_array(name, 1, &t[0]))?;
        let mut out = Vec::with_capacity(t.len());
        for (i, ty) in t.iter().enumerate() {
            if i < n {
                if ty != &DataType::Null && element_type(ty).is_none() {
                    return Err(not_array(name, i + 1, ty));
                }
                out.push(first.clone());
            } else {
                let a = rest[i - n];
                out.push(match a {
                    // An element: the array's element type when it casts.
                    Any => match element_type(&first) {
                        Some(e) if can_cast_types(ty, e) => e.clone(),
                        _ => ty.clone(),
                    },
                    other => other.coerce(ty).ok_or_else(|| {
                        DataFusionError::Plan(format!(
                            "{} argument {} must be {}, got {}",
                            name.to_uppercase(),
                            i + 1,
                            other.describe(),
                            crate::types::sql_name(ty)
                        ))
                    })?,
                });
            }
        }
        Ok(out)
    })
}

fn first_type() -> super::Returns {
    Box::new(|t| Ok(t.first().cloned().unwrap_or(DataType::Null)))
}

fn elem_of_first() -> super::Returns {
    Box::new(|t| {
        Ok(t.first()
            .and_then(element_type)
            .cloned()
            .unwrap_or(DataType::Null))
    })
}

fn distinct(values: impl IntoIterator<Item = ScalarValue>) -> Vec<ScalarValue> {
    let mut out: Vec<ScalarValue> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Natural order, NULLs last.
fn natural(a: &ScalarValue, b: &ScalarValue) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

fn elem_type(ret: &DataType) -> DataType {
    element_type(ret).cloned().unwrap_or(DataType::Null)
}

/// Text of a primitive value for `ARRAY_JOIN` (`null` for NULL, as Java prints it).
fn join_text(v: &ScalarValue) -> String {
    if v.is_null() {
        return "null".into();
    }
    match text(v) {
        Some(s) => s.to_string(),
        None => v.to_string(),
    }
}

/// The type `ENTRIES` returns: ARRAY<STRUCT<K VARCHAR, V value>>.
fn entries_type(map: &DataType) -> Result<DataType> {
    let DataType::Map(f, _) = map else {
        return Ok(DataType::Null);
    };
    let DataType::Struct(kv) = f.data_type() else {
        return Err(bad("internal error: a MAP without entries"));
    };
    let fields = Fields::from(vec![
        Field::new("K", kv[0].data_type().clone(), true),
        Field::new("V", kv[1].data_type().clone(), true),
    ]);
    Ok(DataType::new_list(DataType::Struct(fields), true))
}

fn map_value_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Map(f, _) => match f.data_type() {
            DataType::Struct(kv) => Some(kv[1].data_type().clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The functions of this family.
pub fn functions() -> Vec<ScalarUDF> {
    let maps = |n: usize| -> Coerce {
        Box::new(move |name, t| {
            if t.len() < n.min(1) || t.len() > n {
                return Err(DataFusionError::Plan(format!(
                    "{} takes {n} argument(s), got {}",
                    name.to_uppercase(),
                    t.len()
                )));
            }
            let first = t.iter().find(|t| matches!(t, DataType::Map(..))).cloned();
            t.iter()
                .enumerate()
                .map(|(i, ty)| match (ty, &first) {
                    (DataType::Null, Some(f)) => Ok(f.clone()),
                    (DataType::Map(..), Some(f)) => Ok(f.clone()),
                    _ => Err(DataFusionError::Plan(format!(
                        "{} argument {} must be a MAP, got {}",
                        name.to_uppercase(),
                        i + 1,
                        crate::types::sql_name(ty)
                    ))),
                })
                .collect()
        })
    };
    vec![
        RowFn::new(
            "array_contains",
            arrays(1, &[Any]),
            returns(DataType::Boolean),
            |a, _| {
                let found = match elements(&a[0])? {
                    Some(v) => v.iter().any(|x| !x.is_null() && x == &a[1]),
                    None => false,
                };
                Ok(ScalarValue::Boolean(Some(found)))
            },
        )
        .lenient(),
        RowFn::new(
            "array_length",
            arrays(1, &[]),
            returns(DataType::Int32),
            |a, _| Ok(ScalarValue::Int32(elements(&a[0])?.map(|v| v.len() as i32))),
        ),
        RowFn::new("array_distinct", arrays(1, &[]), first_type(), |a, ret| {
            let v = elements(&a[0])?.unwrap_or_default();
            list(&distinct(v), &elem_type(ret))
        }),
        RowFn::new("array_except", arrays(2, &[]), first_type(), |a, ret| {
            let (x, y) = (elements(&a[0])?, elements(&a[1])?);
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(ScalarValue::Null);
            };
            list(
                &distinct(x.into_iter().filter(|v| !y.contains(v))),
                &elem_type(ret),
            )
        }),
        RowFn::new("array_intersect", arrays(2, &[]), first_type(), |a, ret| {
            let (x, y) = (elements(&a[0])?, elements(&a[1])?);
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(ScalarValue::Null);
            };
            list(
                &distinct(x.into_iter().filter(|v| y.contains(v))),
                &elem_type(ret),
            )
        }),
        RowFn::new("array_union", arrays(2, &[]), first_type(), |a, ret| {
            let (x, y) = (elements(&a[0])?, elements(&a[1])?);
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(ScalarValue::Null);
            };
            list(&distinct(x.into_iter().chain(y)), &elem_type(ret))
        }),
        RowFn::new("array_concat", arrays(2, &[]), first_type(), |a, ret| {
            let (x, y) = (elements(&a[0])?, elements(&a[1])?);
            if x.is_none() && y.is_none() {
                return Ok(ScalarValue::Null);
            }
            let all: Vec<ScalarValue> = x
                .unwrap_or_default()
                .into_iter()
                .chain(y.unwrap_or_default())
                .collect();
            list(&all, &elem_type(ret))
        })
        .lenient()
        .alias(&["array_cat"]),
        RowFn::new(
            "array_join",
            arrays(1, &[Str]),
            returns(DataType::Utf8),
            |a, _| {
                let Some(v) = elements(&a[0])? else {
                    return Ok(ScalarValue::Null);
                };
                let sep = match a.get(1) {
                    Some(s) => text(s).unwrap_or_default(),
                    None => ",",
                };
                let parts: Vec<String> = v.iter().map(join_text).collect();
                Ok(utf8(parts.join(sep)))
            },
        )
        .lenient(),
        RowFn::new("array_max", arrays(1, &[]), elem_of_first(), |a, _| {
            let v = elements(&a[0])?.unwrap_or_default();
            Ok(v.into_iter()
                .filter(|x| !x.is_null())
                .max_by(natural)
                .unwrap_or(ScalarValue::Null))
        }),
        RowFn::new("array_min", arrays(1, &[]), elem_of_first(), |a, _| {
            let v = elements(&a[0])?.unwrap_or_default();
            Ok(v.into_iter()
                .filter(|x| !x.is_null())
                .min_by(natural)
                .unwrap_or(ScalarValue::Null))
        }),
        RowFn::new("array_remove", arrays(1, &[Any]), first_type(), |a, ret| {
            let Some(v) = elements(&a[0])? else {
                return Ok(ScalarValue::Null);
            };
            let kept: Vec<ScalarValue> = v
                .into_iter()
                .filter(|x| {
                    if a[1].is_null() {
                        !x.is_null()
                    } else {
                        x != &a[1]
                    }
                })
                .collect();
            list(&kept, &elem_type(ret))
        })
        .lenient(),
        RowFn::new("array_sort", arrays(1, &[Str]), first_type(), |a, ret| {
            let Some(mut v) = elements(&a[0])? else {
                return Ok(ScalarValue::Null);
            };
            let desc = match a.get(1).map(text) {
                None => false,
                Some(Some(d)) if d.eq_ignore_ascii_case("DESC") => true,
                Some(Some(d)) if d.eq_ignore_ascii_case("ASC") => false,
                Some(_) => return Ok(ScalarValue::Null),
            };
            v.sort_by(|x, y| {
                if desc && !x.is_null() && !y.is_null() {
                    natural(y, x)
                } else {
                    natural(x, y)
                }
            });
            list(&v, &elem_type(ret))
        })
        .lenient(),
        RowFn::new("slice", arrays(1, &[Int, Int]), first_type(), |a, ret| {
            let Some(v) = elements(&a[0])? else {
                return Ok(ScalarValue::Null);
            };
            let n = v.len() as i64;
            let from = a.get(1).and_then(int).unwrap_or(1).max(1);
            let to = a.get(2).and_then(int).unwrap_or(n).min(n);
            if from > to {
                return list(&[], &elem_type(ret));
            }
            list(&v[(from - 1) as usize..to as usize], &elem_type(ret))
        })
        .lenient(),
        RowFn::new(
            "as_map",
            Box::new(|name, t| {
                if t.len() != 2 {
                    return Err(DataFusionError::Plan(format!(
                        "{} takes 2 arguments, got {}",
                        name.to_uppercase(),
                        t.len()
                    )));
                }
                let keys = DataType::new_list(DataType::Utf8, true);
                if element_type(&t[1]).is_none() && t[1] != DataType::Null {
                    return Err(not_array(name, 2, &t[1]));
                }
                Ok(vec![keys, t[1].clone()])
            }),
            Box::new(|t| {
                Ok(map_type(
                    t.get(1)
                        .and_then(element_type)
                        .cloned()
                        .unwrap_or(DataType::Null),
                ))
            }),
            |a, ret| {
                let (Some(k), Some(v)) = (elements(&a[0])?, elements(&a[1])?) else {
                    return Ok(ScalarValue::Null);
                };
                let pairs = k
                    .iter()
                    .zip(v)
                    .filter_map(|(k, v)| text(k).map(|k| (k.to_string(), v)))
                    .collect();
                map(pairs, ret)
            },
        ),
        RowFn::new(
            "map_keys",
            maps(1),
            returns(DataType::new_list(DataType::Utf8, true)),
            |a, _| {
                let Some(e) = entries(&a[0])? else {
                    return Ok(ScalarValue::Null);
                };
                let keys: Vec<ScalarValue> = e.into_iter().map(|(k, _)| k).collect();
                list(&keys, &DataType::Utf8)
            },
        ),
        RowFn::new(
            "map_values",
            maps(1),
            Box::new(|t| {
                Ok(DataType::new_list(
                    t.first().and_then(map_value_type).unwrap_or(DataType::Null),
                    true,
                ))
            }),
            |a, ret| {
                let Some(e) = entries(&a[0])? else {
                    return Ok(ScalarValue::Null);
                };
                let values: Vec<ScalarValue> = e.into_iter().map(|(_, v)| v).collect();
                list(&values, &elem_type(ret))
            },
        ),
        RowFn::new("map_union", maps(2), first_type(), |a, ret| {
            let (x, y) = (entries(&a[0])?, entries(&a[1])?);
            if x.is_none() && y.is_none() {
                return Ok(ScalarValue::Null);
            }
            let all = x
                .unwrap_or_default()
                .into_iter()
                .chain(y.unwrap_or_default())
                .filter_map(|(k, v)| text(&k).map(|k| (k.to_string(), v)))
                .collect();
            map(all, ret)
        })
        .lenient(),
        RowFn::new(
            "entries",
            Box::new(|name, t| {
                if t.len() != 2 || !matches!(t[0], DataType::Map(..) | DataType::Null) {
                    return Err(DataFusionError::Plan(format!(
                        "{} takes a MAP and a BOOLEAN",
                        name.to_uppercase()
                    )));
                }
                Ok(vec![t[0].clone(), DataType::Boolean])
            }),
            Box::new(|t| entries_type(t.first().unwrap_or(&DataType::Null))),
            |a, ret| {
                let Some(mut e) = entries(&a[0])? else {
                    return Ok(ScalarValue::Null);
                };
                if boolean(&a[1]).unwrap_or(false) {
                    e.sort_by(|x, y| natural(&x.0, &y.0));
                }
                let DataType::Struct(fields) = elem_type(ret) else {
                    return Err(bad("internal error: ENTRIES type"));
                };
                let structs = e
                    .into_iter()
                    .map(|(k, v)| {
                        let cols: Vec<ArrayRef> = vec![k.to_array()?, v.to_array()?];
                        let s = StructArray::try_new(fields.clone(), cols, None)?;
                        Ok(ScalarValue::Struct(Arc::new(s)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                list(&structs, &DataType::Struct(fields))
            },
        ),
        // CUBE_EXPLODE(a) is EXPLODE(KSQL_CUBE(a)) (see `crate::syntax`): every combination of
        // the elements with NULL in their place, a NULL element giving only NULL.
        RowFn::new(
            "ksql_cube",
            arrays(1, &[]),
            Box::new(|t| {
                Ok(DataType::new_list(
                    t.first().cloned().unwrap_or(DataType::Null),
                    true,
                ))
            }),
            |a, ret| {
                let Some(v) = elements(&a[0])? else {
                    return Ok(ScalarValue::Null);
                };
                if v.len() > 16 {
                    return Err(bad(format!(
                        "CUBE_EXPLODE of {} values (at most 16: 2^n rows)",
                        v.len()
                    )));
                }
                let inner = elem_type(ret);
                let elem = elem_type(&inner);
                let mut combos: Vec<Vec<ScalarValue>> = vec![Vec::new()];
                for x in &v {
                    let mut next = Vec::with_capacity(combos.len() * 2);
                    for c in &combos {
                        let mut without = c.clone();
                        without.push(ScalarValue::Null);
                        next.push(without);
                        if !x.is_null() {
                            let mut with = c.clone();
                            with.push(x.clone());
                            next.push(with);
                        }
                    }
                    combos = next;
                }
                let lists = combos
                    .iter()
                    .map(|c| list(c, &elem))
                    .collect::<Result<Vec<_>>>()?;
                list(&lists, &inner)
            },
        ),
        RowFn::new(
            "elt",
            super::args(1, &[Int, Str], true),
            returns(DataType::Utf8),
            |a, _| {
                let n = int(&a[0]).unwrap_or(0);
                Ok(if n >= 1 && (n as usize) < a.len() {
                    a[n as usize].clone()
                } else {
                    ScalarValue::Null
                })
            },
        )
        .lenient(),
        RowFn::new(
            "field",
            super::args(1, &[Str, Str], true),
            returns(DataType::Int32),
            |a, _| {
                let pos = if a[0].is_null() {
                    0
                } else {
                    a[1..].iter().position(|x| x == &a[0]).map_or(0, |i| i + 1)
                };
                Ok(ScalarValue::Int32(Some(pos as i32)))
            },
        )
        .lenient(),
    ]
    .into_iter()
    .map(RowFn::udf)
    .collect()
}
