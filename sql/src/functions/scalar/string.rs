//! String and bytes functions: ksqlDB's positions are 1-based and count characters; a
//! negative position counts from the end.

use base64::Engine as _;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::ScalarUDF;
use regex::Regex;

use super::{
    Arg, RowFn, args, bad, bytes, element_type, int, list, map, map_type, returns, text, utf8,
};

use Arg::{Any, Bytes, Int, Str, StrOrBytes};

/// The type of the first argument (string or bytes functions return what they are given).
fn same_as_first() -> super::Returns {
    Box::new(|t| Ok(t.first().cloned().unwrap_or(DataType::Utf8)))
}

fn binary(b: Vec<u8>) -> ScalarValue {
    ScalarValue::Binary(Some(b))
}

/// Text or bytes as a sequence of units: characters or bytes.
enum Units<'a> {
    Chars(Vec<char>),
    Bytes(&'a [u8]),
}

impl<'a> Units<'a> {
    fn of(v: &'a ScalarValue) -> Option<Units<'a>> {
        text(v)
            .map(|s| Units::Chars(s.chars().collect()))
            .or_else(|| bytes(v).map(Units::Bytes))
    }

    fn len(&self) -> usize {
        match self {
            Units::Chars(c) => c.len(),
            Units::Bytes(b) => b.len(),
        }
    }

    fn slice(&self, from: usize, to: usize) -> ScalarValue {
        match self {
            Units::Chars(c) => utf8(c[from..to].iter().collect::<String>()),
            Units::Bytes(b) => binary(b[from..to].to_vec()),
        }
    }
}

/// `SUBSTRING(s, pos [, len])` as ksqlDB: `pos` 1-based, negative from the end, clamped to
/// the string.
fn substring(a: &[ScalarValue], _: &DataType) -> Result<ScalarValue> {
    let Some(u) = Units::of(&a[0]) else {
        return Ok(ScalarValue::Null);
    };
    let n = u.len() as i64;
    let pos = int(&a[1]).unwrap_or(1);
    let start = if pos < 0 {
        (n + pos).max(0)
    } else {
        pos.saturating_sub(1).clamp(0, n)
    };
    let end = match a.get(2) {
        Some(l) => start.saturating_add(int(l).unwrap_or(0)).clamp(start, n),
        None => n,
    };
    Ok(u.slice(start as usize, end as usize))
}

/// `LPAD` / `RPAD`: pad with repeats of the padding to `len`, or truncate to it.
fn pad(a: &[ScalarValue], left: bool) -> Result<ScalarValue> {
    let len = int(&a[1]).unwrap_or(-1);
    let (Some(input), Some(padding)) = (Units::of(&a[0]), Units::of(&a[2])) else {
        return Ok(ScalarValue::Null);
    };
    if len < 0 || padding.len() == 0 {
        return Ok(ScalarValue::Null);
    }
    let len = len as usize;
    let fill = len.saturating_sub(input.len());
    Ok(match (input, padding) {
        (Units::Chars(i), Units::Chars(p)) => {
            let pad: String = p.iter().cycle().take(fill).collect();
            let kept: String = i.iter().take(len).collect();
            utf8(if left { pad + &kept } else { kept + &pad })
        }
        (Units::Bytes(i), Units::Bytes(p)) => {
            let pad: Vec<u8> = p.iter().cycle().take(fill).copied().collect();
            let kept = &i[..i.len().min(len)];
            binary(if left {
                [pad.as_slice(), kept].concat()
            } else {
                [kept, pad.as_slice()].concat()
            })
        }
        _ => return Err(bad("input and padding must both be VARCHAR or both BYTES")),
    })
}

/// `INSTR(s, sub [, position [, occurrence]])`, Oracle's: a negative position searches
/// backwards from that many characters before the end.
fn instr(a: &[ScalarValue]) -> Result<ScalarValue> {
    let (Some(s), Some(sub)) = (text(&a[0]), text(&a[1])) else {
        return Ok(ScalarValue::Int32(Some(0)));
    };
    let s: Vec<char> = s.chars().collect();
    let sub: Vec<char> = sub.chars().collect();
    let position = a.get(2).and_then(int).unwrap_or(1);
    let occurrence = a.get(3).and_then(int).unwrap_or(1);
    if occurrence < 1 || position == 0 {
        return Ok(ScalarValue::Int32(Some(0)));
    }
    let n = s.len() as i64;
    let m = sub.len() as i64;
    let at = |i: i64| i >= 0 && i + m <= n && s[i as usize..(i + m) as usize] == sub[..];
    let mut seen = 0;
    if position > 0 {
        let mut i = position - 1;
        while i + m <= n {
            if at(i) {
                seen += 1;
                if seen == occurrence {
                    return Ok(ScalarValue::Int32(Some((i + 1) as i32)));
                }
            }
            i += 1;
        }
    } else {
        let mut i = n + position;
        while i >= 0 {
            if at(i) {
                seen += 1;
                if seen == occurrence {
                    return Ok(ScalarValue::Int32(Some((i + 1) as i32)));
                }
            }
            i -= 1;
        }
    }
    Ok(ScalarValue::Int32(Some(0)))
}

/// The MASK family: `keep(i, n)` tells which of `n` characters stay as they are; the mask
/// characters (upper, lower, digit, other) follow from argument `from`, a NULL one keeping
/// its class unmasked.
fn mask(a: &[ScalarValue], from: usize, keep: impl Fn(usize, usize) -> bool) -> ScalarValue {
    let Some(s) = text(&a[0]) else {
        return ScalarValue::Null;
    };
    let defaults = ['X', 'x', 'n', '-'];
    let masks: Vec<Option<char>> = (0..4)
        .map(|i| match a.get(from + i) {
            None => Some(defaults[i]),
            Some(v) => text(v).and_then(|t| t.chars().next()),
        })
        .collect();
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let out: String = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if keep(i, n) {
                return c;
            }
            let class = if c.is_uppercase() {
                0
            } else if c.is_lowercase() {
                1
            } else if c.is_ascii_digit() {
                2
            } else {
                3
            };
            masks[class].unwrap_or(c)
        })
        .collect();
    utf8(out)
}

/// Bytes from text in an encoding of `ENCODE`, `TO_BYTES`.
fn decode(s: &str, encoding: &str) -> Result<Vec<u8>> {
    match encoding.to_ascii_lowercase().as_str() {
        "hex" => {
            let s = s.strip_prefix("0x").or(s.strip_prefix("0X")).unwrap_or(s);
            // Java's hex decoding takes an odd number of digits with a leading zero.
            let padded;
            let s = if s.len() % 2 == 1 {
                padded = format!("0{s}");
                padded.as_str()
            } else {
                s
            };
            hex::decode(s).map_err(|e| bad(format!("'{s}' is not hex: {e}")))
        }
        "utf8" => Ok(s.as_bytes().to_vec()),
        "ascii" => Ok(s
            .chars()
            .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
            .collect()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| bad(format!("'{s}' is not base64: {e}"))),
        other => Err(bad(format!(
            "unknown encoding '{other}' (use hex, utf8, ascii or base64)"
        ))),
    }
}

/// Text in an encoding from bytes, for `ENCODE`, `FROM_BYTES`.
fn encode(b: &[u8], encoding: &str) -> Result<String> {
    match encoding.to_ascii_lowercase().as_str() {
        "hex" => Ok(hex::encode(b)),
        "utf8" => Ok(String::from_utf8_lossy(b).into_owned()),
        "ascii" => Ok(b
            .iter()
            .map(|&c| if c.is_ascii() { c as char } else { '\u{FFFD}' })
            .collect()),
        "base64" => Ok(base64::engine::general_purpose::STANDARD.encode(b)),
        other => Err(bad(format!(
            "unknown encoding '{other}' (use hex, utf8, ascii or base64)"
        ))),
    }
}

/// A regular expression, compiled (Java's syntax is close enough to the `regex` crate's for
/// the usual patterns; look-around and back-references are refused by the crate).
fn regex(pattern: &str) -> Result<Regex> {
    thread_local! {
        static CACHE: std::cell::RefCell<Vec<(String, Regex)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    super::cached(&CACHE, pattern, |p| {
        Regex::new(p).map_err(|e| bad(format!("bad regular expression '{p}': {e}")))
    })
}

/// Java's replacement syntax (`$1`, `${name}`, `\$` for a dollar) in the `regex` crate's.
fn replacement(java: &str) -> String {
    let mut out = String::with_capacity(java.len());
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(n) => out.push(n),
                None => {}
            },
            '$' if chars.peek().is_some_and(|n| n.is_ascii_digit()) => {
                out.push_str("${");
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    out.push(*d);
                    chars.next();
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits keeping empty pieces at the ends and between adjacent separators; an empty
/// separator splits into characters.
fn split_text(s: &str, sep: Option<&Regex>, literal: &str) -> Vec<ScalarValue> {
    if literal.is_empty() && sep.is_none_or(|r| r.as_str().is_empty()) {
        return s.chars().map(|c| utf8(c.to_string())).collect();
    }
    match sep {
        Some(r) => r.split(s).map(utf8).collect(),
        None => s.split(literal).map(utf8).collect(),
    }
}

fn split_bytes(b: &[u8], sep: &[u8]) -> Vec<ScalarValue> {
    if sep.is_empty() {
        return b.iter().map(|&x| binary(vec![x])).collect();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= b.len() {
        if &b[i..i + sep.len()] == sep {
            out.push(binary(b[start..i].to_vec()));
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(binary(b[start..].to_vec()));
    out
}

/// `CHR(75)` or `CHR('\u004b')`.
fn chr(v: &ScalarValue) -> ScalarValue {
    let code = match (int(v), text(v)) {
        (Some(i), _) => u32::try_from(i).ok(),
        (None, Some(s)) => {
            let hex = s.strip_prefix("\\u").or(s.strip_prefix("\\U")).unwrap_or(s);
            u32::from_str_radix(hex, 16).ok()
        }
        _ => None,
    };
    match code.and_then(char::from_u32) {
        Some(c) => utf8(c.to_string()),
        None => ScalarValue::Null,
    }
}

/// Whitespace as Java's `String.trim` sees it: every character up to the space.
fn java_space(c: char) -> bool {
    c <= ' '
}

fn from_bytes_number(a: &[ScalarValue], size: usize) -> Option<[u8; 8]> {
    let b = bytes(&a[0])?;
    if b.len() != size {
        return None;
    }
    let little = match a.get(1).and_then(text) {
        None => false,
        Some(o) if o.eq_ignore_ascii_case("BIG_ENDIAN") => false,
        Some(o) if o.eq_ignore_ascii_case("LITTLE_ENDIAN") => true,
        Some(_) => return None,
    };
    let mut out = [0u8; 8];
    if little {
        for (i, x) in b.iter().rev().enumerate() {
            out[8 - size + i] = *x;
        }
    } else {
        out[8 - size..].copy_from_slice(b);
    }
    Some(out)
}

/// The functions of this family.
pub fn functions() -> Vec<ScalarUDF> {
    let utf8_t = || returns(DataType::Utf8);
    let int_t = || returns(DataType::Int32);
    let str_list = || returns(DataType::new_list(DataType::Utf8, true));
    vec![
        RowFn::new("initcap", args(1, &[Str], false), utf8_t(), |a, _| {
            let s = text(&a[0]).unwrap_or_default();
            let mut out = String::with_capacity(s.len());
            let mut start = true;
            for c in s.chars() {
                if c.is_whitespace() {
                    start = true;
                    out.push(c);
                } else if start {
                    out.extend(c.to_uppercase());
                    start = false;
                } else {
                    out.extend(c.to_lowercase());
                }
            }
            Ok(utf8(out))
        }),
        RowFn::new(
            "concat",
            args(1, &[StrOrBytes], true),
            same_as_first(),
            |a, ret| {
                if ret == &DataType::Binary {
                    let mut out = Vec::new();
                    for v in a {
                        out.extend_from_slice(bytes(v).unwrap_or_default());
                    }
                    return Ok(binary(out));
                }
                Ok(utf8(a.iter().filter_map(text).collect::<String>()))
            },
        )
        .lenient(),
        RowFn::new(
            "concat_ws",
            args(2, &[StrOrBytes], true),
            same_as_first(),
            |a, ret| {
                if a[0].is_null() {
                    return Ok(ScalarValue::Null);
                }
                if ret == &DataType::Binary {
                    let sep = bytes(&a[0]).unwrap_or_default();
                    let parts: Vec<&[u8]> = a[1..].iter().filter_map(bytes).collect();
                    return Ok(binary(parts.join(sep)));
                }
                let sep = text(&a[0]).unwrap_or_default();
                let parts: Vec<&str> = a[1..].iter().filter_map(text).collect();
                Ok(utf8(parts.join(sep)))
            },
        )
        .lenient(),
        RowFn::new(
            "substr",
            args(2, &[StrOrBytes, Int, Int], false),
            same_as_first(),
            substring,
        )
        .alias(&["substring"]),
        RowFn::new("len", args(1, &[StrOrBytes], false), int_t(), |a, _| {
            Ok(ScalarValue::Int32(Some(match Units::of(&a[0]) {
                Some(u) => u.len() as i32,
                None => 0,
            })))
        })
        .alias(&["length", "char_length", "character_length"]),
        RowFn::new("btrim", args(1, &[Str, Str], false), utf8_t(), |a, _| {
            let s = text(&a[0]).unwrap_or_default();
            Ok(utf8(match a.get(1).and_then(text) {
                Some(chars) => s.trim_matches(|c| chars.contains(c)),
                None => s.trim_matches(java_space),
            }))
        })
        .alias(&["trim"]),
        RowFn::new("ltrim", args(1, &[Str, Str], false), utf8_t(), |a, _| {
            let s = text(&a[0]).unwrap_or_default();
            Ok(utf8(match a.get(1).and_then(text) {
                Some(chars) => s.trim_start_matches(|c| chars.contains(c)),
                None => s.trim_start_matches(java_space),
            }))
        }),
        RowFn::new("rtrim", args(1, &[Str, Str], false), utf8_t(), |a, _| {
            let s = text(&a[0]).unwrap_or_default();
            Ok(utf8(match a.get(1).and_then(text) {
                Some(chars) => s.trim_end_matches(|c| chars.contains(c)),
                None => s.trim_end_matches(java_space),
            }))
        }),
        RowFn::new(
            "lpad",
            args(3, &[StrOrBytes, Int, StrOrBytes], false),
            same_as_first(),
            |a, _| pad(a, true),
        ),
        RowFn::new(
            "rpad",
            args(3, &[StrOrBytes, Int, StrOrBytes], false),
            same_as_first(),
            |a, _| pad(a, false),
        ),
        RowFn::new(
            "regexp_extract",
            args(2, &[Str, Str, Int], false),
            utf8_t(),
            |a, _| {
                let r = regex(text(&a[0]).unwrap_or_default())?;
                let group = a.get(2).and_then(int).unwrap_or(0).max(0) as usize;
                Ok(r.captures(text(&a[1]).unwrap_or_default())
                    .and_then(|c| c.get(group))
                    .map_or(ScalarValue::Null, |m| utf8(m.as_str())))
            },
        ),
        RowFn::new(
            "regexp_extract_all",
            args(2, &[Str, Str, Int], false),
            str_list(),
            |a, _| {
                let r = regex(text(&a[0]).unwrap_or_default())?;
                let group = a.get(2).and_then(int).unwrap_or(0).max(0) as usize;
                let found: Vec<ScalarValue> = r
                    .captures_iter(text(&a[1]).unwrap_or_default())
                    .map(|c| c.get(group).map_or(ScalarValue::Null, |m| utf8(m.as_str())))
                    .collect();
                list(&found, &DataType::Utf8)
            },
        ),
        RowFn::new(
            "regexp_replace",
            args(3, &[Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let r = regex(text(&a[1]).unwrap_or_default())?;
                let with = replacement(text(&a[2]).unwrap_or_default());
                Ok(utf8(r.replace_all(
                    text(&a[0]).unwrap_or_default(),
                    with.as_str(),
                )))
            },
        ),
        RowFn::new(
            "regexp_split_to_array",
            args(2, &[Str, Str], false),
            str_list(),
            |a, _| {
                let r = regex(text(&a[1]).unwrap_or_default())?;
                list(
                    &split_text(text(&a[0]).unwrap_or_default(), Some(&r), ""),
                    &DataType::Utf8,
                )
            },
        ),
        RowFn::new(
            "split",
            args(2, &[StrOrBytes, StrOrBytes], false),
            Box::new(|t| {
                Ok(DataType::new_list(
                    t.first().cloned().unwrap_or(DataType::Utf8),
                    true,
                ))
            }),
            |a, ret| {
                let elem = element_type(ret).cloned().unwrap_or(DataType::Utf8);
                let parts = match (text(&a[0]), text(&a[1]), bytes(&a[0]), bytes(&a[1])) {
                    (Some(s), Some(sep), _, _) => split_text(s, None, sep),
                    (_, _, Some(b), Some(sep)) => split_bytes(b, sep),
                    _ => return Err(bad("the input and the delimiter must be the same type")),
                };
                list(&parts, &elem)
            },
        ),
        RowFn::new(
            "split_to_map",
            args(3, &[Str, Str, Str], false),
            returns(map_type(DataType::Utf8)),
            |a, ret| {
                let (Some(s), Some(entry), Some(kv)) = (text(&a[0]), text(&a[1]), text(&a[2]))
                else {
                    return Ok(ScalarValue::Null);
                };
                if entry.is_empty() || kv.is_empty() {
                    return Ok(ScalarValue::Null);
                }
                let pairs = s
                    .split(entry)
                    .filter_map(|e| e.split_once(kv))
                    .map(|(k, v)| (k.to_string(), utf8(v)))
                    .collect();
                map(pairs, ret)
            },
        ),
        RowFn::new(
            "instr",
            args(2, &[Str, Str, Int, Int], false),
            int_t(),
            |a, _| instr(a),
        )
        .lenient(),
        RowFn::new(
            "mask",
            args(1, &[Str, Str, Str, Str, Str], false),
            utf8_t(),
            |a, _| Ok(mask(a, 1, |_, _| false)),
        )
        .lenient(),
        RowFn::new(
            "mask_keep_left",
            args(2, &[Str, Int, Str, Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let k = int(&a[1]).unwrap_or(0).max(0) as usize;
                Ok(mask(a, 2, |i, _| i < k))
            },
        )
        .lenient(),
        RowFn::new(
            "mask_keep_right",
            args(2, &[Str, Int, Str, Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let k = int(&a[1]).unwrap_or(0).max(0) as usize;
                Ok(mask(a, 2, |i, n| i + k >= n))
            },
        )
        .lenient(),
        RowFn::new(
            "mask_left",
            args(2, &[Str, Int, Str, Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let k = int(&a[1]).unwrap_or(0).max(0) as usize;
                Ok(mask(a, 2, |i, _| i >= k))
            },
        )
        .lenient(),
        RowFn::new(
            "mask_right",
            args(2, &[Str, Int, Str, Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let k = int(&a[1]).unwrap_or(0).max(0) as usize;
                Ok(mask(a, 2, |i, n| i + k < n))
            },
        )
        .lenient(),
        RowFn::new(
            "encode",
            args(3, &[Str, Str, Str], false),
            utf8_t(),
            |a, _| {
                let b = decode(
                    text(&a[0]).unwrap_or_default(),
                    text(&a[1]).unwrap_or_default(),
                )?;
                Ok(utf8(encode(&b, text(&a[2]).unwrap_or_default())?))
            },
        ),
        RowFn::new(
            "to_bytes",
            args(2, &[Str, Str], false),
            returns(DataType::Binary),
            |a, _| {
                Ok(binary(decode(
                    text(&a[0]).unwrap_or_default(),
                    text(&a[1]).unwrap_or_default(),
                )?))
            },
        ),
        RowFn::new(
            "from_bytes",
            args(2, &[Bytes, Str], false),
            utf8_t(),
            |a, _| {
                Ok(utf8(encode(
                    bytes(&a[0]).unwrap_or_default(),
                    text(&a[1]).unwrap_or_default(),
                )?))
            },
        ),
        RowFn::new("chr", args(1, &[Any], false), utf8_t(), |a, _| {
            Ok(chr(&a[0]))
        }),
        RowFn::new(
            "int_from_bytes",
            args(1, &[Bytes, Str], false),
            returns(DataType::Int32),
            |a, _| {
                Ok(ScalarValue::Int32(
                    from_bytes_number(a, 4).map(|b| i64::from_be_bytes(b) as i32),
                ))
            },
        ),
        RowFn::new(
            "bigint_from_bytes",
            args(1, &[Bytes, Str], false),
            returns(DataType::Int64),
            |a, _| {
                Ok(ScalarValue::Int64(
                    from_bytes_number(a, 8).map(i64::from_be_bytes),
                ))
            },
        ),
        RowFn::new(
            "double_from_bytes",
            args(1, &[Bytes, Str], false),
            returns(DataType::Float64),
            |a, _| {
                Ok(ScalarValue::Float64(
                    from_bytes_number(a, 8).map(f64::from_be_bytes),
                ))
            },
        ),
        RowFn::new(
            "as_value",
            args(1, &[Any], false),
            same_as_first(),
            |a, _| Ok(a[0].clone()),
        ),
        RowFn::new(
            "url_encode_param",
            args(1, &[Str], false),
            utf8_t(),
            |a, _| Ok(utf8(url_encode(text(&a[0]).unwrap_or_default()))),
        ),
        RowFn::new(
            "url_decode_param",
            args(1, &[Str], false),
            utf8_t(),
            |a, _| Ok(url_decode(text(&a[0]).unwrap_or_default()).map_or(ScalarValue::Null, utf8)),
        ),
    ]
    .into_iter()
    .map(RowFn::udf)
    .chain(url_functions())
    .collect()
}

/// `application/x-www-form-urlencoded`, as Java's `URLEncoder` writes it.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(b as char)
            }
            // The reference writes a space as `%20` (`url%20encoded`).
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The inverse of [`url_encode`]; `None` for a bad escape.
fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The parts of a URL (RFC 3986), `None` when it is not one.
struct Url<'a> {
    scheme: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn parse_url(s: &str) -> Option<Url<'_>> {
    if s.contains(' ') {
        return None;
    }
    let (rest, fragment) = match s.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (s, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (scheme, rest) = match rest.split_once(':') {
        Some((sc, r))
            if !sc.is_empty()
                && sc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            (Some(sc), r)
        }
        _ => (None, rest),
    };
    let (authority, path) = match rest.strip_prefix("//") {
        Some(r) => match r.find('/') {
            Some(i) => (Some(&r[..i]), &r[i..]),
            None => (Some(r), ""),
        },
        None => (None, rest),
    };
    let (host, port) = match authority {
        Some(a) => {
            let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
            match a.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                    (Some(h), (!p.is_empty()).then_some(p))
                }
                _ => (Some(a), None),
            }
        }
        None => (None, None),
    };
    Some(Url {
        scheme,
        host,
        port,
        path,
        query,
        fragment,
    })
}

fn url_functions() -> Vec<ScalarUDF> {
    type Part = fn(&Url<'_>, &[ScalarValue]) -> Option<String>;
    let part = |name: &'static str, n: usize, f: Part| {
        let arg_list: &'static [Arg] = if n == 1 { &[Str] } else { &[Str, Str] };
        RowFn::new(
            name,
            args(n, arg_list, false),
            returns(DataType::Utf8),
            move |a, _| {
                let url = text(&a[0]).unwrap_or_default();
                Ok(parse_url(url)
                    .and_then(|u| f(&u, a))
                    .map_or(ScalarValue::Null, utf8))
            },
        )
        .udf()
    };
    vec![
        part("url_extract_fragment", 1, |u, _| {
            u.fragment
                .map(|f| url_decode(f).unwrap_or_else(|| f.to_string()))
        }),
        part("url_extract_host", 1, |u, _| u.host.map(str::to_string)),
        part("url_extract_path", 1, |u, _| Some(u.path.to_string())),
        part("url_extract_port", 1, |u, _| u.port.map(str::to_string)),
        part("url_extract_protocol", 1, |u, _| {
            u.scheme.map(str::to_string)
        }),
        part("url_extract_query", 1, |u, _| {
            u.query
                .map(|q| url_decode(q).unwrap_or_else(|| q.to_string()))
        }),
        part("url_extract_parameter", 2, |u, a| {
            let name = text(&a[1])?;
            u.query?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (url_decode(k).as_deref() == Some(name)).then(|| url_decode(v))?
            })
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ScalarValue {
        utf8(v)
    }
    fn i(v: i64) -> ScalarValue {
        ScalarValue::Int64(Some(v))
    }

    #[test]
    fn substring_positions_are_ksqldb_s() {
        let sub = |a: &[ScalarValue]| substring(a, &DataType::Utf8).unwrap();
        assert_eq!(sub(&[s("stream"), i(1), i(4)]), s("stre"));
        assert_eq!(sub(&[s("stream"), i(-3)]), s("eam"));
        assert_eq!(sub(&[s("stream"), i(-3), i(2)]), s("ea"));
        assert_eq!(sub(&[s("stream"), i(0), i(2)]), s("st"));
        assert_eq!(sub(&[s("stream"), i(10)]), s(""));
        assert_eq!(sub(&[s("stream"), i(-10), i(2)]), s("st"));
        assert_eq!(sub(&[s("stream"), i(i64::MIN), i(i64::MAX)]), s("stream"));
    }

    #[test]
    fn instr_follows_the_reference_examples() {
        let f = |p: Option<i64>, o: Option<i64>| {
            let mut a = vec![s("CORPORATE FLOOR"), s("OR")];
            a.extend(p.map(i));
            a.extend(o.map(i));
            instr(&a).unwrap()
        };
        let n = |v| ScalarValue::Int32(Some(v));
        assert_eq!(f(None, None), n(2));
        assert_eq!(f(Some(3), None), n(5));
        assert_eq!(f(Some(3), Some(2)), n(14));
        assert_eq!(f(Some(-3), None), n(5));
        assert_eq!(f(Some(-3), Some(2)), n(2));
    }

    #[test]
    fn masks_and_pads() {
        assert_eq!(
            mask(&[s("My Test $123")], 1, |_, _| false),
            s("Xx-Xxxx--nnn")
        );
        assert_eq!(
            mask(
                &[
                    s("My Test $123"),
                    s("*"),
                    ScalarValue::Utf8(None),
                    s("1"),
                    ScalarValue::Utf8(None)
                ],
                1,
                |_, _| false
            ),
            s("*y *est $111")
        );
        assert_eq!(
            pad(&[s("Foo"), i(7), s("Bar")], true).unwrap(),
            s("BarBFoo")
        );
        assert_eq!(pad(&[s("Foo"), i(2), s("Bar")], false).unwrap(), s("Fo"));
        assert_eq!(
            pad(&[s("Foo"), i(2), s("")], false).unwrap(),
            ScalarValue::Null
        );
    }

    #[test]
    fn java_replacements_and_urls() {
        assert_eq!(replacement("<$1>\\$"), "<${1}>$$");
        assert_eq!(url_encode("url encoded"), "url%20encoded");
        assert_eq!(url_decode("url%20encoded").unwrap(), "url encoded");
        let u = parse_url("http://test.com:8080/path/to?a=b#frag").unwrap();
        assert_eq!(u.host, Some("test.com"));
        assert_eq!(u.port, Some("8080"));
        assert_eq!(u.path, "/path/to");
        assert_eq!(u.fragment, Some("frag"));
    }
}
