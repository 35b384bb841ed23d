//! Numeric functions. `ROUND` rounds half up, toward positive infinity, on the decimal
//! digits a `DOUBLE` prints as (Java's `BigDecimal.valueOf`), so `ROUND(1.005, 2)` is
//! `1.01` and `ROUND(-2.5)` is `-2`; `CEIL`, `FLOOR` and `ROUND` keep integers integers.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::ScalarUDF;

use super::{Arg, RowFn, args, bad, float, int, list, returns, text};

use Arg::{Float, Int, Number, Str};

/// `ROUND(x)` of a DOUBLE is a BIGINT, of an integer the integer, of a DECIMAL(p, s) a
/// DECIMAL with no scale; `ROUND(x, scale)` keeps x's type.
fn round_type(t: &[DataType]) -> Result<DataType> {
    let x = t.first().cloned().unwrap_or(DataType::Float64);
    Ok(match (&x, t.len()) {
        (DataType::Float64 | DataType::Float32, 1) => DataType::Int64,
        (DataType::Decimal128(p, s), 1) => {
            DataType::Decimal128((*p as i16 - *s as i16 + 1).clamp(1, 38) as u8, 0)
        }
        (DataType::Float32, _) => DataType::Float64,
        _ => x,
    })
}

/// Rounds `v` (scale `s`) to `k` decimals, half toward positive infinity.
fn round_decimal(v: i128, s: i8, k: i64) -> Option<i128> {
    if k >= i64::from(s) {
        return Some(v);
    }
    // Past 10^38 every value rounds to zero (|v| < 10^38 always).
    let Some(d) = i64::from(s)
        .checked_sub(k)
        .and_then(|e| u32::try_from(e).ok())
        .and_then(|e| 10i128.checked_pow(e))
    else {
        return Some(0);
    };
    let (q, r) = (v / d, v % d);
    let q = if r >= 0 {
        if 2 * r >= d { q + 1 } else { q }
    } else if -2 * r > d {
        q - 1
    } else {
        q
    };
    q.checked_mul(d)
}

/// Rounds a DOUBLE to `k` decimals on its shortest decimal representation.
fn round_double(x: f64, k: i64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Shortest round-trip digits: "d.ddde±x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let Ok(d) = digits.parse::<i128>() else {
        return x;
    };
    // |x| = d * 10^(exp - (len - 1)); scaled by 10^k.
    let shift = (exp - (digits.len() as i64 - 1)).saturating_add(k);
    if shift >= 0 {
        return x;
    }
    let q = match u32::try_from(shift.saturating_neg())
        .ok()
        .and_then(|e| 10i128.checked_pow(e))
    {
        Some(p) => {
            let (q, r) = (d / p, d % p);
            let up = if x >= 0.0 { 2 * r >= p } else { 2 * r > p };
            q + i128::from(up)
        }
        None => 0,
    };
    if q == 0 {
        return 0.0;
    }
    let sign = if x < 0.0 { "-" } else { "" };
    format!("{sign}{q}e{}", k.saturating_neg())
        .parse()
        .unwrap_or(x)
}

fn round(a: &[ScalarValue], ret: &DataType) -> Result<ScalarValue> {
    let k = a.get(1).and_then(int).unwrap_or(0);
    Ok(match &a[0] {
        ScalarValue::Decimal128(Some(v), p, s) => {
            let r = round_decimal(*v, *s, k).ok_or_else(|| bad("decimal overflow"))?;
            match ret {
                DataType::Decimal128(rp, 0) if a.len() == 1 => {
                    let unscaled = r / 10i128.pow(u32::try_from(*s).unwrap_or(0));
                    ScalarValue::Decimal128(Some(unscaled), *rp, 0)
                }
                _ => ScalarValue::Decimal128(Some(r), *p, *s),
            }
        }
        v if int(v).is_some() => {
            let i = int(v).unwrap_or(0);
            if k >= 0 {
                v.clone()
            } else {
                let r = round_decimal(i128::from(i), 0, k).unwrap_or(0);
                ScalarValue::Int64(Some(i64::try_from(r).map_err(|_| bad("overflow"))?))
                    .cast_to(ret)?
            }
        }
        v => {
            let x = float(v).unwrap_or(0.0);
            if a.len() == 1 {
                let r = (x + 0.5).floor();
                if !(i64::MIN as f64..=i64::MAX as f64).contains(&r) {
                    return Err(bad(format!("{x} is out of BIGINT range")));
                }
                ScalarValue::Int64(Some(r as i64))
            } else {
                ScalarValue::Float64(Some(round_double(x, k)))
            }
        }
    })
}

/// CEIL or FLOOR, keeping integers and the decimal type.
fn ceil_floor(a: &[ScalarValue], ceil: bool) -> Result<ScalarValue> {
    Ok(match &a[0] {
        ScalarValue::Decimal128(Some(v), p, s) => {
            let d = 10i128.pow(u32::try_from(*s).unwrap_or(0));
            let (q, r) = (v / d, v % d);
            let q = match (ceil, r.signum()) {
                (true, 1) => q + 1,
                (false, -1) => q - 1,
                _ => q,
            };
            ScalarValue::Decimal128(Some(q * d), *p, *s)
        }
        v if int(v).is_some() => v.clone(),
        v => {
            let x = float(v).unwrap_or(0.0);
            ScalarValue::Float64(Some(if ceil { x.ceil() } else { x.floor() }))
        }
    })
}

/// `GENERATE_SERIES(start, end [, step])`, both ends included.
fn series(a: &[ScalarValue], ret: &DataType) -> Result<ScalarValue> {
    let (start, end) = (int(&a[0]).unwrap_or(0), int(&a[1]).unwrap_or(0));
    let step = a.get(2).and_then(int).unwrap_or(1);
    if step == 0 {
        return Err(bad("GENERATE_SERIES step cannot be zero"));
    }
    let span = i128::from(end) - i128::from(start);
    if span.signum() * i128::from(step.signum()) < 0 {
        return Err(bad(format!(
            "GENERATE_SERIES step {step} never goes from {start} to {end}"
        )));
    }
    let count = span / i128::from(step) + 1;
    if count > 1_000_000 {
        return Err(bad(format!(
            "GENERATE_SERIES of {count} values is refused (at most 1,000,000)"
        )));
    }
    let elem = super::element_type(ret).cloned().unwrap_or(DataType::Int64);
    // Within start..=end, so each value fits in a BIGINT.
    let values: Vec<ScalarValue> = (0..count as i64)
        .map(|i| ScalarValue::Int64(Some(start + i * step)))
        .collect();
    list(&values, &elem)
}

/// Great-circle distance (haversine) in kilometres or miles.
fn geo_distance(a: &[ScalarValue]) -> Result<ScalarValue> {
    let v: Vec<f64> = a[..4].iter().map(|x| float(x).unwrap_or(0.0)).collect();
    let radius = match a
        .get(4)
        .and_then(text)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("KM" | "KILOMETER" | "KILOMETERS" | "KILOMETRE" | "KILOMETRES") => 6371.0,
        Some("MI" | "MILE" | "MILES") => 3959.0,
        Some(other) => {
            return Err(bad(format!("unknown unit '{other}' (use KM or MILES)")));
        }
    };
    for (lat, lon) in [(v[0], v[1]), (v[2], v[3])] {
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(bad(format!(
                "({lat}, {lon}) is not a valid latitude and longitude"
            )));
        }
    }
    let (lat1, lat2) = (v[0].to_radians(), v[2].to_radians());
    let dlat = (v[2] - v[0]).to_radians();
    let dlon = (v[3] - v[1]).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    Ok(ScalarValue::Float64(Some(2.0 * radius * h.sqrt().asin())))
}

/// The functions of this family.
pub fn functions() -> Vec<ScalarUDF> {
    let same =
        || -> super::Returns { Box::new(|t| Ok(t.first().cloned().unwrap_or(DataType::Float64))) };
    vec![
        RowFn::new(
            "round",
            args(1, &[Number, Int], false),
            Box::new(round_type),
            round,
        ),
        RowFn::new("ceil", args(1, &[Number], false), same(), |a, _| {
            ceil_floor(a, true)
        })
        .alias(&["ceiling"]),
        RowFn::new("floor", args(1, &[Number], false), same(), |a, _| {
            ceil_floor(a, false)
        }),
        RowFn::new(
            "sign",
            args(1, &[Number], false),
            returns(DataType::Int32),
            |a, _| {
                let s = match &a[0] {
                    ScalarValue::Decimal128(Some(v), ..) => v.signum() as i32,
                    v => match int(v) {
                        Some(i) => i.signum() as i32,
                        None => {
                            let x = float(v).unwrap_or(0.0);
                            if x > 0.0 {
                                1
                            } else if x < 0.0 {
                                -1
                            } else {
                                0
                            }
                        }
                    },
                };
                Ok(ScalarValue::Int32(Some(s)))
            },
        )
        .alias(&["signum"]),
        RowFn::new(
            "power",
            args(2, &[Float, Float], false),
            returns(DataType::Float64),
            |a, _| {
                Ok(ScalarValue::Float64(Some(
                    float(&a[0])
                        .unwrap_or(0.0)
                        .powf(float(&a[1]).unwrap_or(0.0)),
                )))
            },
        )
        .alias(&["pow"]),
        RowFn::new(
            "generate_series",
            args(2, &[Int, Int, Int], false),
            Box::new(|t| {
                let int32 = t
                    .iter()
                    .take(2)
                    .all(|t| matches!(t, DataType::Int8 | DataType::Int16 | DataType::Int32));
                Ok(DataType::new_list(
                    if int32 {
                        DataType::Int32
                    } else {
                        DataType::Int64
                    },
                    true,
                ))
            }),
            series,
        ),
        RowFn::new(
            "geo_distance",
            args(4, &[Float, Float, Float, Float, Str], false),
            returns(DataType::Float64),
            |a, _| geo_distance(a),
        ),
    ]
    .into_iter()
    .map(RowFn::udf)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_is_half_up_on_printed_digits() {
        assert_eq!(round_double(1.005, 2), 1.01);
        assert_eq!(round_double(-1.005, 2), -1.0);
        assert_eq!(round_double(-1.006, 2), -1.01);
        assert_eq!(round_double(1234.5678, -2), 1200.0);
        assert_eq!(round_double(0.000001, 2), 0.0);
        assert_eq!(round_decimal(12345, 3, 2), Some(12350));
        assert_eq!(round_decimal(-12345, 3, 2), Some(-12340));
        assert_eq!(round_decimal(-12346, 3, 2), Some(-12350));
        assert_eq!(round_decimal(12346, 3, i64::MIN), Some(0));
        assert_eq!(round_double(12.5, i64::MIN), 0.0);
        assert_eq!(round_double(12.5, i64::MAX), 12.5);
    }
}
