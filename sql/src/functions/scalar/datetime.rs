//! Date and time functions. Patterns are Java `DateTimeFormatter` patterns
//! ([`super::java_format`]); a time zone argument is a `java.util.TimeZone` id. Without
//! one, times are UTC (ksqlDB's deprecated `TIMESTAMPTOSTRING` / `STRINGTOTIMESTAMP` use
//! the server's zone instead, which Sluice takes to be UTC).
//!
//! Types: `TIMESTAMP` is milliseconds since the epoch, `DATE` days since the epoch, `TIME`
//! milliseconds since midnight, as ksqlDB holds them.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::ScalarUDF;

use super::java_format::{JavaFormat, Zone};
use super::{Arg, RowFn, args, bad, int, returns, text, utf8};

use Arg::{Any, Int, Str};

const DAY_MS: i64 = 86_400_000;

/// The TIMESTAMP type.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// The TIME type.
pub fn time_type() -> DataType {
    DataType::Time32(TimeUnit::Millisecond)
}

fn timestamp(ms: i64) -> ScalarValue {
    ScalarValue::TimestampMillisecond(Some(ms), None)
}

/// Milliseconds since the epoch of a TIMESTAMP (or a BIGINT of milliseconds).
pub fn millis(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMillisecond(t, _) => *t,
        ScalarValue::TimestampSecond(t, _) => t.map(|t| t * 1000),
        ScalarValue::TimestampMicrosecond(t, _) => t.map(|t| t.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(t, _) => t.map(|t| t.div_euclid(1_000_000)),
        ScalarValue::Date32(d) => d.map(|d| i64::from(d) * DAY_MS),
        other => int(other),
    }
}

/// Days since the epoch of a DATE (or an INT of days).
fn days(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Date32(d) => d.map(i64::from),
        ScalarValue::Date64(d) => d.map(|d| d.div_euclid(DAY_MS)),
        other => int(other),
    }
}

/// Milliseconds since midnight of a TIME.
fn time_millis(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Time32Millisecond(t) => t.map(i64::from),
        ScalarValue::Time32Second(t) => t.map(|t| i64::from(t) * 1000),
        ScalarValue::Time64Microsecond(t) => t.map(|t| t / 1000),
        ScalarValue::Time64Nanosecond(t) => t.map(|t| t / 1_000_000),
        other => int(other),
    }
}

fn instant(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(format!("{ms} is out of range")))
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

fn pattern(v: &ScalarValue) -> Result<JavaFormat> {
    thread_local! {
        static CACHE: std::cell::RefCell<Vec<(String, JavaFormat)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    super::cached(&CACHE, text(v).unwrap_or_default(), |p| {
        JavaFormat::new(p).map_err(bad)
    })
}

fn zone(a: &[ScalarValue], i: usize) -> Result<Zone> {
    match a.get(i).and_then(text) {
        Some(id) => Zone::parse(id).map_err(bad),
        None => Ok(Zone::UTC),
    }
}

/// Milliseconds since the epoch of text in a pattern, in a zone unless the text has one.
fn parse_millis(a: &[ScalarValue]) -> Result<i64> {
    let f = pattern(&a[1])?;
    let (local, offset) = f.parse(text(&a[0]).unwrap_or_default()).map_err(bad)?;
    let zone = match offset {
        Some(o) => Zone::Fixed(o),
        None => zone(a, 2)?,
    };
    Ok(zone.to_utc(&local).map_err(bad)?.timestamp_millis())
}

fn format_millis(a: &[ScalarValue], ms: i64) -> Result<ScalarValue> {
    let f = pattern(&a[1])?;
    Ok(utf8(zone(a, 2)?.format(&f, &instant(ms)?)))
}

/// A time unit of `DATEADD` & co. in milliseconds.
fn unit_millis(unit: &str) -> Result<i64> {
    let u = unit.trim().to_ascii_uppercase();
    let u = u.strip_suffix('S').unwrap_or(&u);
    Ok(match u {
        "MILLISECOND" => 1,
        "SECOND" => 1000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => DAY_MS,
        "MICROSECOND" | "NANOSECOND" => 0,
        _ => {
            return Err(bad(format!(
                "unknown time unit '{unit}' (use MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS)"
            )));
        }
    })
}

/// `interval` `unit`s in milliseconds (sub-millisecond units truncate).
fn interval_millis(a: &[ScalarValue], sign: i64) -> Result<i64> {
    let unit = text(&a[0]).unwrap_or_default();
    let n = int(&a[1]).unwrap_or(0);
    let ms = match unit.trim().to_ascii_uppercase().trim_end_matches('S') {
        "MICROSECOND" => n / 1000,
        "NANOSECOND" => n / 1_000_000,
        _ => n
            .checked_mul(unit_millis(unit)?)
            .ok_or_else(|| bad("interval out of range"))?,
    };
    ms.checked_mul(sign)
        .ok_or_else(|| bad("interval out of range"))
}

fn add_functions() -> Vec<RowFn> {
    let ts = || returns(timestamp_type());
    vec![
        RowFn::new(
            "timestampadd",
            args(3, &[Str, Int, Any], false),
            ts(),
            |a, _| {
                let t = millis(&a[2]).unwrap_or(0);
                Ok(timestamp(
                    t.checked_add(interval_millis(a, 1)?)
                        .ok_or_else(|| bad("timestamp out of range"))?,
                ))
            },
        ),
        RowFn::new(
            "timestampsub",
            args(3, &[Str, Int, Any], false),
            ts(),
            |a, _| {
                let t = millis(&a[2]).unwrap_or(0);
                Ok(timestamp(
                    t.checked_add(interval_millis(a, -1)?)
                        .ok_or_else(|| bad("timestamp out of range"))?,
                ))
            },
        ),
        RowFn::new(
            "dateadd",
            args(3, &[Str, Int, Any], false),
            returns(DataType::Date32),
            |a, _| {
                let d = days(&a[2]).unwrap_or(0);
                let add = interval_millis(a, 1)? / DAY_MS;
                Ok(ScalarValue::Date32(Some(
                    i32::try_from(d + add).map_err(|_| bad("date out of range"))?,
                )))
            },
        ),
        RowFn::new(
            "datesub",
            args(3, &[Str, Int, Any], false),
            returns(DataType::Date32),
            |a, _| {
                let d = days(&a[2]).unwrap_or(0);
                let sub = interval_millis(a, 1)? / DAY_MS;
                Ok(ScalarValue::Date32(Some(
                    i32::try_from(d - sub).map_err(|_| bad("date out of range"))?,
                )))
            },
        ),
        RowFn::new(
            "timeadd",
            args(3, &[Str, Int, Any], false),
            returns(time_type()),
            |a, _| {
                let t = time_millis(&a[2]).unwrap_or(0);
                let r = (interval_millis(a, 1)? % DAY_MS + t).rem_euclid(DAY_MS);
                Ok(ScalarValue::Time32Millisecond(Some(r as i32)))
            },
        ),
        RowFn::new(
            "timesub",
            args(3, &[Str, Int, Any], false),
            returns(time_type()),
            |a, _| {
                let t = time_millis(&a[2]).unwrap_or(0);
                let r = (interval_millis(a, -1)? % DAY_MS + t).rem_euclid(DAY_MS);
                Ok(ScalarValue::Time32Millisecond(Some(r as i32)))
            },
        ),
    ]
}

/// The functions of this family.
pub fn functions() -> Vec<ScalarUDF> {
    let utf8_t = || returns(DataType::Utf8);
    let mut fns = vec![
        RowFn::new(
            "unix_timestamp",
            args(0, &[Any], false),
            returns(DataType::Int64),
            |a, _| {
                Ok(ScalarValue::Int64(Some(match a.first() {
                    Some(v) => millis(v).unwrap_or(0),
                    None => Utc::now().timestamp_millis(),
                })))
            },
        )
        .volatile(),
        RowFn::new(
            "unix_date",
            args(0, &[Any], false),
            returns(DataType::Int32),
            |a, _| {
                let d = match a.first() {
                    Some(v) => days(v).unwrap_or(0),
                    None => Utc::now().timestamp_millis().div_euclid(DAY_MS),
                };
                Ok(ScalarValue::Int32(Some(d as i32)))
            },
        )
        .volatile(),
        RowFn::new(
            "from_unixtime",
            args(1, &[Int], false),
            returns(timestamp_type()),
            |a, _| Ok(timestamp(int(&a[0]).unwrap_or(0))),
        ),
        RowFn::new(
            "from_days",
            args(1, &[Int], false),
            returns(DataType::Date32),
            |a, _| {
                Ok(ScalarValue::Date32(Some(
                    i32::try_from(int(&a[0]).unwrap_or(0)).map_err(|_| bad("out of range"))?,
                )))
            },
        ),
        RowFn::new(
            "timestamptostring",
            args(2, &[Any, Str, Str], false),
            utf8_t(),
            |a, _| format_millis(a, millis(&a[0]).unwrap_or(0)),
        ),
        RowFn::new(
            "format_timestamp",
            args(2, &[Any, Str, Str], false),
            utf8_t(),
            |a, _| format_millis(a, millis(&a[0]).unwrap_or(0)),
        ),
        RowFn::new(
            "stringtotimestamp",
            args(2, &[Str, Str, Str], false),
            returns(DataType::Int64),
            |a, _| Ok(ScalarValue::Int64(Some(parse_millis(a)?))),
        ),
        RowFn::new(
            "parse_timestamp",
            args(2, &[Str, Str, Str], false),
            returns(timestamp_type()),
            |a, _| Ok(timestamp(parse_millis(a)?)),
        ),
        RowFn::new(
            "format_date",
            args(2, &[Any, Str], false),
            utf8_t(),
            |a, _| {
                let d = days(&a[0]).unwrap_or(0);
                let date = epoch() + chrono::Duration::days(d);
                Ok(utf8(
                    pattern(&a[1])?.format_naive(&date.and_time(NaiveTime::MIN)),
                ))
            },
        )
        .alias(&["datetostring"]),
        RowFn::new(
            "parse_date",
            args(2, &[Str, Str], false),
            returns(DataType::Date32),
            |a, _| {
                let d = pattern(&a[1])?
                    .parse_date(text(&a[0]).unwrap_or_default())
                    .map_err(bad)?;
                Ok(ScalarValue::Date32(Some(
                    d.signed_duration_since(epoch()).num_days() as i32,
                )))
            },
        ),
        RowFn::new(
            "stringtodate",
            args(2, &[Str, Str], false),
            returns(DataType::Int32),
            |a, _| {
                let d = pattern(&a[1])?
                    .parse_date(text(&a[0]).unwrap_or_default())
                    .map_err(bad)?;
                Ok(ScalarValue::Int32(Some(
                    d.signed_duration_since(epoch()).num_days() as i32,
                )))
            },
        ),
        RowFn::new(
            "format_time",
            args(2, &[Any, Str], false),
            utf8_t(),
            |a, _| {
                let ms = time_millis(&a[0]).unwrap_or(0).rem_euclid(DAY_MS);
                let t = NaiveTime::from_num_seconds_from_midnight_opt(
                    (ms / 1000) as u32,
                    (ms % 1000) as u32 * 1_000_000,
                )
                .unwrap_or(NaiveTime::MIN);
                Ok(utf8(
                    pattern(&a[1])?.format_naive(&NaiveDateTime::new(epoch(), t)),
                ))
            },
        ),
        RowFn::new(
            "parse_time",
            args(2, &[Str, Str], false),
            returns(time_type()),
            |a, _| {
                let (t, _) = pattern(&a[1])?
                    .parse(text(&a[0]).unwrap_or_default())
                    .map_err(bad)?;
                let t = t.time();
                let ms = t.num_seconds_from_midnight() as i64 * 1000
                    + i64::from(t.nanosecond() / 1_000_000);
                Ok(ScalarValue::Time32Millisecond(Some(ms as i32)))
            },
        ),
        RowFn::new(
            "convert_tz",
            args(3, &[Any, Str, Str], false),
            returns(timestamp_type()),
            |a, _| {
                // The timestamp is a wall-clock time in `from`; the result the same instant's
                // wall-clock time in `to`.
                let t = instant(millis(&a[0]).unwrap_or(0))?;
                let from = zone(a, 1)?;
                let to = zone(a, 2)?;
                let local = t.naive_utc();
                let utc = from.to_utc(&local).map_err(bad)?;
                let shifted = utc.naive_utc() + to.offset_at(&utc);
                Ok(timestamp(shifted.and_utc().timestamp_millis()))
            },
        ),
    ];
    fns.extend(add_functions());
    fns.into_iter().map(RowFn::udf).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ScalarValue {
        utf8(v)
    }

    #[test]
    fn parse_and_format_round_trip_in_zones() {
        let ms =
            parse_millis(&[s("2021-06-30 12:18:39.446"), s("yyyy-MM-dd HH:mm:ss.SSS")]).unwrap();
        assert_eq!(ms, 1_625_055_519_446);
        let la = parse_millis(&[
            s("2021-06-30 05:18:39.446"),
            s("yyyy-MM-dd HH:mm:ss.SSS"),
            s("America/Los_Angeles"),
        ])
        .unwrap();
        assert_eq!(la, ms);
        assert_eq!(
            format_millis(
                &[timestamp(ms), s("yyyy-MM-dd HH:mm"), s("Europe/London")],
                ms
            )
            .unwrap(),
            s("2021-06-30 13:18")
        );
        assert_eq!(
            interval_millis(&[s("HOURS"), ScalarValue::Int64(Some(2))], -1).unwrap(),
            -7_200_000
        );
    }
}
