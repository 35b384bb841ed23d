//! Java `DateTimeFormatter` patterns (`yyyy-MM-dd'T'HH:mm:ss.SSSX`), which ksqlDB's date
//! and time functions take, translated to chrono's format items; and `java.util.TimeZone`
//! ids (`UTC`, `America/Los_Angeles`, `+05:30`, `PST`) as time zones.
//!
//! The one crate that ports Java's formatter (`date_time_formatter`, OpenJDK's code under
//! GPL-2.0 with the Classpath exception, 24 MB of source, two releases) does not fit the
//! project's licence or size, so this is a small translator of the letters people use: years `y`/`u`, months `M`..`MMMM`, days `d` and `D`, weekdays `E`,
//! hours `H`, `h`, `k`, `K`, `m`, `s`, fractions `S`..., `a`, zones `z`, `Z`, `X`, `x`, `VV`,
//! quoted literals (`''` is a quote). Another letter is refused with its name.

use std::str::FromStr;

use chrono::format::{Fixed, Item, Numeric, Pad, Parsed, StrftimeItems};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};

/// A translated pattern.
#[derive(Debug, Clone)]
pub struct JavaFormat {
    items: Vec<Item<'static>>,
}

fn strftime(spec: &'static str) -> Vec<Item<'static>> {
    StrftimeItems::new(spec).collect()
}

impl JavaFormat {
    /// Translates `pattern`, or says which part is not supported.
    pub fn new(pattern: &str) -> Result<JavaFormat, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut items = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                // 'text' is literal; '' is one quote, inside or outside quotes.
                if chars.get(i + 1) == Some(&'\'') {
                    literal.push('\'');
                    i += 2;
                    continue;
                }
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unclosed quote in pattern '{pattern}'")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            literal.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            literal.push(*ch);
                            i += 1;
                        }
                    }
                }
                continue;
            }
            if !c.is_ascii_alphabetic() {
                literal.push(c);
                i += 1;
                continue;
            }
            let mut n = 1;
            while chars.get(i + n) == Some(&c) {
                n += 1;
            }
            i += n;
            if !literal.is_empty() {
                items.push(Item::OwnedLiteral(std::mem::take(&mut literal).into()));
            }
            let num = |what: Numeric, n: usize| {
                Item::Numeric(what, if n >= 2 { Pad::Zero } else { Pad::None })
            };
            match (c, n) {
                ('y' | 'u', 2) => items.push(Item::Numeric(Numeric::YearMod100, Pad::Zero)),
                ('y' | 'u', _) => items.push(Item::Numeric(Numeric::Year, Pad::Zero)),
                ('M' | 'L', 1 | 2) => items.push(num(Numeric::Month, n)),
                ('M' | 'L', 3) => items.extend(strftime("%b")),
                ('M' | 'L', _) => items.extend(strftime("%B")),
                ('d', _) => items.push(num(Numeric::Day, n)),
                ('D', _) => items.push(Item::Numeric(Numeric::Ordinal, Pad::Zero)),
                ('E', 1..=3) => items.extend(strftime("%a")),
                ('E', _) => items.extend(strftime("%A")),
                ('H' | 'k', _) => items.push(num(Numeric::Hour, n)),
                ('h' | 'K', _) => items.push(num(Numeric::Hour12, n)),
                ('m', _) => items.push(num(Numeric::Minute, n)),
                ('s', _) => items.push(num(Numeric::Second, n)),
                ('S', 1..=3) => items.extend(strftime("%3f")),
                ('S', 4..=6) => items.extend(strftime("%6f")),
                ('S', _) => items.extend(strftime("%9f")),
                ('a', _) => items.extend(strftime("%p")),
                ('z', _) | ('V', _) | ('O', _) => items.extend(strftime("%Z")),
                ('Z', 1..=3) | ('x', 1 | 2) | ('X', 2) => items.extend(strftime("%z")),
                // `Z` for UTC, else `+01:00` (Java's single `X` writes `+01`).
                ('X', _) | ('Z', _) => items.push(Item::Fixed(Fixed::TimezoneOffsetZ)),
                ('x', _) => items.extend(strftime("%:z")),
                (other, _) => {
                    return Err(format!(
                        "pattern letter '{other}' in '{pattern}' is not supported"
                    ));
                }
            }
        }
        if !literal.is_empty() {
            items.push(Item::OwnedLiteral(literal.into()));
        }
        Ok(JavaFormat { items })
    }

    /// Formats a date-time of any zone.
    pub fn format<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> String
    where
        Tz::Offset: std::fmt::Display,
    {
        t.format_with_items(self.items.iter()).to_string()
    }

    /// Formats a local date and time (no zone).
    pub fn format_naive(&self, t: &NaiveDateTime) -> String {
        t.format_with_items(self.items.iter()).to_string()
    }

    fn parsed(&self, s: &str) -> Result<Parsed, String> {
        let mut p = Parsed::new();
        chrono::format::parse(&mut p, s, self.items.iter())
            .map_err(|e| format!("'{s}' does not match the pattern: {e}"))?;
        Ok(p)
    }

    /// Parses a local date and time; fields the pattern lacks are those of
    /// 1970-01-01T00:00:00.000, as ksqlDB's parser defaults them. Also returns the offset
    /// the text gave, if any.
    pub fn parse(&self, s: &str) -> Result<(NaiveDateTime, Option<FixedOffset>), String> {
        let mut p = self.parsed(s)?;
        let err = |e: chrono::format::ParseError| format!("'{s}' is not a valid date-time: {e}");
        if p.year().is_none() && p.year_mod_100().is_none() {
            p.set_year(1970).map_err(err)?;
        }
        if p.ordinal().is_none() {
            if p.month().is_none() {
                p.set_month(1).map_err(err)?;
            }
            if p.day().is_none() {
                p.set_day(1).map_err(err)?;
            }
        }
        let date = p.to_naive_date().map_err(err)?;
        let time = if p.hour_mod_12().is_none() {
            NaiveTime::MIN
        } else {
            if p.minute().is_none() {
                p.set_minute(0).map_err(err)?;
            }
            p.to_naive_time().map_err(err)?
        };
        let offset = p.offset().and_then(FixedOffset::east_opt);
        Ok((NaiveDateTime::new(date, time), offset))
    }

    /// Parses a date (the time fields, if any, are ignored).
    pub fn parse_date(&self, s: &str) -> Result<NaiveDate, String> {
        Ok(self.parse(s)?.0.date())
    }
}

/// A time zone: an IANA region (`Europe/London`) or a fixed offset (`+02:00`, `UTC`).
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    /// A region, with its daylight-saving rules.
    Region(chrono_tz::Tz),
    /// A fixed offset.
    Fixed(FixedOffset),
}

/// Java's three-letter ids (`java.util.TimeZone`'s SHORT_IDS) that people write.
const SHORT_IDS: &[(&str, &str)] = &[
    ("PST", "America/Los_Angeles"),
    ("PDT", "America/Los_Angeles"),
    ("MST", "America/Denver"),
    ("MDT", "America/Denver"),
    ("CST", "America/Chicago"),
    ("CDT", "America/Chicago"),
    ("EST", "America/New_York"),
    ("EDT", "America/New_York"),
    ("AST", "America/Anchorage"),
    ("HST", "Pacific/Honolulu"),
    ("BST", "Asia/Dhaka"),
    ("IST", "Asia/Kolkata"),
    ("JST", "Asia/Tokyo"),
    ("CET", "Europe/Paris"),
    ("ECT", "Europe/Paris"),
    ("EET", "Europe/Istanbul"),
    ("AET", "Australia/Sydney"),
];

impl Zone {
    /// UTC.
    pub const UTC: Zone = Zone::Fixed(match FixedOffset::east_opt(0) {
        Some(z) => z,
        None => unreachable!(),
    });

    /// The zone an id names, or why not.
    pub fn parse(id: &str) -> Result<Zone, String> {
        let id = id.trim();
        if let Ok(tz) = chrono_tz::Tz::from_str(id) {
            return Ok(Zone::Region(tz));
        }
        if let Some((_, region)) = SHORT_IDS.iter().find(|(s, _)| s.eq_ignore_ascii_case(id)) {
            if let Ok(tz) = chrono_tz::Tz::from_str(region) {
                return Ok(Zone::Region(tz));
            }
        }
        let upper = id.to_ascii_uppercase();
        let offset = ["UTC", "GMT", "UT", "Z", ""]
            .iter()
            .find_map(|p| upper.strip_prefix(p))
            .unwrap_or(&upper);
        if offset.is_empty() {
            return Ok(Zone::UTC);
        }
        parse_offset(offset)
            .map(Zone::Fixed)
            .ok_or_else(|| format!("unknown time zone '{id}'"))
    }

    /// The UTC instant of a local date-time in this zone (the earlier one when a clock
    /// change repeats it; a time skipped by a clock change is an error).
    pub fn to_utc(&self, local: &NaiveDateTime) -> Result<DateTime<Utc>, String> {
        let r = match self {
            Zone::Region(tz) => tz.from_local_datetime(local).earliest().map(|t| t.to_utc()),
            Zone::Fixed(o) => o.from_local_datetime(local).earliest().map(|t| t.to_utc()),
        };
        r.ok_or_else(|| format!("{local} does not exist in this time zone"))
    }

    /// The offset this zone has at an instant.
    pub fn offset_at(&self, t: &DateTime<Utc>) -> FixedOffset {
        match self {
            Zone::Region(tz) => tz.offset_from_utc_datetime(&t.naive_utc()).fix(),
            Zone::Fixed(o) => *o,
        }
    }

    /// Formats an instant in this zone.
    pub fn format(&self, f: &JavaFormat, t: &DateTime<Utc>) -> String {
        match self {
            Zone::Region(tz) => f.format(&t.with_timezone(tz)),
            Zone::Fixed(o) => f.format(&t.with_timezone(o)),
        }
    }
}

/// `+05:30`, `-0800`, `+2`.
fn parse_offset(s: &str) -> Option<FixedOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() > 4 {
        return None;
    }
    let (h, m) = if digits.len() <= 2 {
        (digits.parse::<i32>().ok()?, 0)
    } else {
        let split = digits.len() - 2;
        (digits[..split].parse().ok()?, digits[split..].parse().ok()?)
    };
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn formats_like_java() {
        let f = JavaFormat::new("yyyy-MM-dd'T'HH:mm:ss.SSSX").unwrap();
        assert_eq!(
            Zone::UTC.format(&f, &at(1_600_000_000_123)),
            "2020-09-13T12:26:40.123Z"
        );
        let f = JavaFormat::new("dd/MMM/yyyy h:mm a ''zz''").unwrap();
        let la = Zone::parse("America/Los_Angeles").unwrap();
        assert_eq!(
            la.format(&f, &at(1_600_000_000_123)),
            "13/Sep/2020 5:26 AM 'PDT'"
        );
        assert!(JavaFormat::new("yyyy-QQ").unwrap_err().contains("'Q'"));
    }

    #[test]
    fn parses_with_defaults_and_offsets() {
        let f = JavaFormat::new("yyyy-MM-dd HH:mm:ss.SSS").unwrap();
        let (t, o) = f.parse("2021-06-30 12:18:39.446").unwrap();
        assert_eq!(
            Zone::UTC.to_utc(&t).unwrap().timestamp_millis(),
            1_625_055_519_446
        );
        assert!(o.is_none());
        let (t, _) = JavaFormat::new("HH:mm").unwrap().parse("13:25").unwrap();
        assert_eq!(t.to_string(), "1970-01-01 13:25:00");
        let (_, o) = JavaFormat::new("yyyy-MM-dd'T'HH:mm:ssX")
            .unwrap()
            .parse("2021-01-01T00:00:00+02:00")
            .unwrap();
        assert_eq!(o, FixedOffset::east_opt(7200));
        assert!(Zone::parse("Nowhere/Else").is_err());
        assert!(matches!(Zone::parse("+05:30"), Ok(Zone::Fixed(_))));
        assert!(matches!(Zone::parse("PST"), Ok(Zone::Region(_))));
    }
}
