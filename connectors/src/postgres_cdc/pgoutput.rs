//! Decoding of PostgreSQL `pgoutput` logical replication messages (protocol version 1) and
//! conversion of their text-format column values to the JSON a Debezium-style change envelope
//! carries. It is hand-written because the replication stream crate hands over each XLogData
//! payload as raw bytes and leaves the message format to us; it is pure (no IO, no clock) so
//! every byte layout and conversion is tested here, and the input is treated as untrusted:
//! malformed bytes give a [`DecodeError`] naming what and where, never a panic or an
//! allocation sized by a length that the buffer cannot hold.

use bytes::Bytes;
use chrono::{Datelike, NaiveDate, TimeDelta};
use serde_json::Value;

/// A pgoutput message that could not be decoded: which field, at which byte, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}: {problem}")]
pub struct DecodeError {
    /// The field being read ("message tag", "text value length", ...).
    pub what: &'static str,
    /// Its offset in the message.
    pub at: usize,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a field of a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The message ends inside the field: (bytes it takes, bytes left).
    #[error("needs {0} bytes, {1} left")]
    Truncated(usize, usize),
    /// A string runs to the end of the message without its terminating NUL.
    #[error("no terminating NUL")]
    Unterminated,
    /// A name is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A tag byte the protocol does not define at that place.
    #[error("unexpected '{}'", .0.escape_ascii())]
    BadTag(u8),
    /// A negative length or count.
    #[error("negative ({0})")]
    Negative(i64),
    /// A length or count that the rest of the message cannot hold: (declared, bytes left).
    #[error("{0} does not fit in the {1} bytes left")]
    Overrun(u64, usize),
    /// Bytes follow a complete message (a framing bug upstream): how many.
    #[error("{0} unexpected bytes follow")]
    Trailing(usize),
}

fn fail<T>(what: &'static str, at: usize, problem: Problem) -> Result<T, DecodeError> {
    Err(DecodeError { what, at, problem })
}

/// One pgoutput v1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC (see [`pg_epoch_micros_to_unix_ms`]).
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// Unused by PostgreSQL so far; kept as sent.
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The LSN just past the transaction: what to acknowledge once it is durable.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// The transaction was replicated into this server from another origin.
    Origin {
        /// The commit LSN on the origin server.
        commit_lsn: u64,
        /// The origin's name.
        name: String,
    },
    /// A table's shape: sent before the first change to the table in a session, and again
    /// after its definition changes.
    Relation(Relation),
    /// A non-built-in data type used by a relation's column.
    Type {
        /// The type's OID.
        id: u32,
        /// Its schema (`pg_catalog` where the wire says empty).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// The relation's id (see [`Relation::id`]).
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// The relation's id.
        relation: u32,
        /// The old key (only when the update changed it) or the whole old row (REPLICA
        /// IDENTITY FULL).
        old: Option<OldTuple>,
        /// The new row; TOASTed columns that did not change are [`Datum::Unchanged`].
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// The relation's id.
        relation: u32,
        /// Its key, or the whole row under REPLICA IDENTITY FULL.
        old: OldTuple,
    },
    /// Tables were truncated.
    Truncate {
        /// `TRUNCATE ... CASCADE`.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY`.
        restart_identity: bool,
        /// The relations' ids.
        relations: Vec<u32>,
    },
    /// A message written with `pg_logical_emit_message`.
    Message {
        /// Whether it was emitted inside a transaction (else it is delivered at once).
        transactional: bool,
        /// Its LSN.
        lsn: u64,
        /// The prefix it was emitted with.
        prefix: String,
        /// Its content, as emitted.
        content: Bytes,
    },
}

/// A table's description from a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID; changes refer to it.
    pub id: u32,
    /// Its schema (`pg_catalog` where the wire says empty).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What old values deletes and updates carry.
    pub replica_identity: ReplicaIdentity,
    /// The replicated columns (generated columns are not sent), in tuple order.
    pub columns: Vec<Column>,
}

/// A table's `REPLICA IDENTITY` (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (`'d'`).
    Default,
    /// No old values (`'n'`).
    Nothing,
    /// The whole old row (`'f'`).
    Full,
    /// A chosen unique index (`'i'`).
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's OID (see [`datum_to_json`]).
    pub type_oid: u32,
    /// Its type modifier (`atttypmod`, -1 for none).
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub key: bool,
}

/// A row's column values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// One column value. Values share the decoded message's buffer (no copy); text values are
/// the type's output function result in the database encoding, not checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value the change did not touch; its value is not in the stream.
    Unchanged,
    /// The value in the type's text format.
    Text(Bytes),
    /// The value in the type's binary format (only when the subscription asks for it).
    Binary(Bytes),
}

/// The old row an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the key columns are set; the others are [`Datum::Null`].
    Key(Tuple),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    /// The row's values, whichever kind.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Decodes one pgoutput v1 message (an XLogData payload). The input is `Bytes` so that the
/// values of the result are slices of it rather than copies.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let msg = match r.u8("message tag")? {
        b'B' => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.u64("origin commit LSN")?,
            name: r.cstring("origin name")?,
        },
        b'R' => Message::Relation(relation(&mut r)?),
        b'Y' => Message::Type {
            id: r.u32("type id")?,
            namespace: namespace(r.cstring("type namespace")?),
            name: r.cstring("type name")?,
        },
        b'I' => Message::Insert {
            relation: r.u32("relation id")?,
            new: new_tuple(&mut r)?,
        },
        b'U' => {
            let relation = r.u32("relation id")?;
            let old = match r.peek() {
                Some(b'K' | b'O') => Some(old_tuple(&mut r)?),
                _ => None,
            };
            let new = new_tuple(&mut r)?;
            Message::Update { relation, old, new }
        }
        b'D' => Message::Delete {
            relation: r.u32("relation id")?,
            old: old_tuple(&mut r)?,
        },
        b'T' => {
            let at = r.pos;
            let count = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            let count = r.fits(count.into(), at, 4, "relation count")?;
            let relations = (0..count)
                .map(|_| r.u32("truncated relation id"))
                .collect::<Result<_, _>>()?;
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        b'M' => {
            let transactional = r.u8("message flags")? & 1 != 0;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstring("message prefix")?;
            let at = r.pos;
            let len = r.u32("message content length")?;
            let content = r.bytes(len.into(), at, "message content length")?;
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            }
        }
        tag => return fail("message tag", 0, Problem::BadTag(tag)),
    };
    match r.left() {
        0 => Ok(msg),
        left => fail("end of message", r.pos, Problem::Trailing(left)),
    }
}

/// Converts a commit timestamp (microseconds since PostgreSQL's epoch, 2000-01-01 UTC) to
/// milliseconds since the Unix epoch, rounding down.
pub fn pg_epoch_micros_to_unix_ms(ts: i64) -> i64 {
    // Dividing first leaves room for the offset at both ends of i64.
    ts.div_euclid(1000) + 946_684_800_000
}

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`), so logs and positions can be
/// compared with `pg_replication_slots` by eye.
pub fn lsn_string(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = namespace(r.cstring("relation namespace")?);
    let name = r.cstring("relation name")?;
    let at = r.pos;
    let replica_identity = match r.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        tag => return fail("replica identity", at, Problem::BadTag(tag)),
    };
    let at = r.pos;
    let count = r.i16("column count")?;
    // Each column takes at least 10 bytes: flags, an empty name, type OID and modifier.
    let count = r.fits(count.into(), at, 10, "column count")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            key: r.u8("column flags")? & 1 != 0,
            name: r.cstring("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// The wire leaves `pg_catalog` empty to save bytes; consumers want the real name.
fn namespace(name: String) -> String {
    if name.is_empty() {
        "pg_catalog".to_owned()
    } else {
        name
    }
}

fn new_tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let at = r.pos;
    match r.u8("new tuple tag")? {
        b'N' => tuple(r),
        tag => fail("new tuple tag", at, Problem::BadTag(tag)),
    }
}

fn old_tuple(r: &mut Reader) -> Result<OldTuple, DecodeError> {
    let at = r.pos;
    match r.u8("old tuple tag")? {
        b'K' => Ok(OldTuple::Key(tuple(r)?)),
        b'O' => Ok(OldTuple::Full(tuple(r)?)),
        tag => fail("old tuple tag", at, Problem::BadTag(tag)),
    }
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let at = r.pos;
    let count = r.i16("tuple column count")?;
    let count = r.fits(count.into(), at, 1, "tuple column count")?;
    let mut datums = Vec::with_capacity(count);
    for _ in 0..count {
        let at = r.pos;
        datums.push(match r.u8("column value kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => Datum::Text(r.value("text value length")?),
            b'b' => Datum::Binary(r.value("binary value length")?),
            tag => return fail("column value kind", at, Problem::BadTag(tag)),
        });
    }
    Ok(Tuple(datums))
}

/// A cursor over a message; every read checks the bytes are there first.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let Some(bytes) = self.buf.get(self.pos..self.pos + N) else {
            return fail(what, self.pos, Problem::Truncated(N, self.left()));
        };
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.fixed(what)?))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.fixed(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.fixed(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.fixed(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.fixed(what)?))
    }

    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let at = self.pos;
        let rest = &self.buf[at..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return fail(what, at, Problem::Unterminated);
        };
        let Ok(s) = std::str::from_utf8(&rest[..nul]) else {
            return fail(what, at, Problem::NotUtf8);
        };
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    /// Checks that `count` items of at least `each` bytes fit in what is left, so that the
    /// caller may allocate for them.
    fn fits(
        &self,
        count: i64,
        at: usize,
        each: u64,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let Ok(declared) = u64::try_from(count) else {
            return fail(what, at, Problem::Negative(count));
        };
        let left = self.left();
        match usize::try_from(declared) {
            Ok(n) if declared.saturating_mul(each) <= left as u64 => Ok(n),
            _ => fail(what, at, Problem::Overrun(declared, left)),
        }
    }

    /// Takes `len` bytes as a slice of the message, after checking they are there.
    fn bytes(&mut self, len: i64, at: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.fits(len, at, 1, what)?;
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// A column value: an Int32 length, then that many bytes.
    fn value(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32(what)?;
        self.bytes(len.into(), at, what)
    }
}

/// PostgreSQL's MAXDIM: no array it prints nests deeper, so anything deeper is not one of its
/// literals, and the bound keeps hostile input from exhausting the stack.
const MAX_ARRAY_DEPTH: usize = 6;

/// Converts a column's text-format value to the JSON a Debezium-compatible envelope carries
/// for its type (`decimal.handling.mode=string`, `binary.handling.mode=base64`; `timestamp`
/// and `time` in microseconds at every precision, where Debezium's adaptive mode would switch
/// to milliseconds for precisions 0 to 3). Values that do not parse as their type says, and
/// types without a rule here (enums, domains, `money`, `interval`, ...), become the text as
/// is, so nothing is lost. Dates and times assume the ISO `DateStyle` PostgreSQL defaults to.
/// `type_modifier` is accepted so callers can pass a [`Column`] whole; no rule needs it yet.
pub fn datum_to_json(type_oid: u32, type_modifier: i32, text: &str) -> Value {
    let _ = type_modifier;
    let converted = match type_oid {
        20 | 21 | 23 | 26 => text.parse::<i64>().ok().map(Value::from),
        700 | 701 => match text {
            "NaN" | "Infinity" | "-Infinity" => None,
            _ => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        },
        16 => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        114 | 3802 => serde_json::from_str(text).ok(),
        17 => unhex(text).map(|bytes| Value::String(base64(&bytes))),
        1082 if !text.ends_with(" BC") => parse_date(text).map(|d| Value::from(days_since_unix(d))),
        1114 if !text.ends_with(" BC") => timestamp_micros(text).map(Value::from),
        1184 if !text.ends_with(" BC") => timestamptz_iso(text).map(Value::String),
        1083 => parse_time(text).map(|(micros, _)| Value::from(micros)),
        oid => element_type(oid).and_then(|elem| parse_array(text, elem)),
    };
    converted.unwrap_or_else(|| Value::String(text.to_owned()))
}

/// The element type of the built-in array types [`datum_to_json`] turns into JSON arrays.
pub fn element_type(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1028 => 26,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        1009 => 25,
        1015 => 1043,
        1014 => 1042,
        2951 => 2950,
        199 => 114,
        3807 => 3802,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1001 => 17,
        _ => return None,
    })
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// bytea's default (`bytea_output = hex`) text form: `\x` and two hex digits per byte.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    hex.chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

fn digits(s: &str, min: usize, max: usize) -> Option<u32> {
    let ok = (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten()
}

/// `YYYY-MM-DD` (years past 9999 have more digits).
fn parse_date(text: &str) -> Option<NaiveDate> {
    let (y, rest) = text.split_once('-')?;
    let (m, d) = rest.split_once('-')?;
    let year = i32::try_from(digits(y, 4, 6)?).ok()?;
    NaiveDate::from_ymd_opt(year, digits(m, 2, 2)?, digits(d, 2, 2)?)
}

fn days_since_unix(date: NaiveDate) -> i64 {
    i64::from(date.num_days_from_ce() - 719_163)
}

/// `HH:MM:SS[.ffffff]` as microseconds since midnight, and the fraction's digits as printed.
/// `24:00:00` is a valid `time` (the end of the day).
fn parse_time(text: &str) -> Option<(i64, &str)> {
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    if text.contains('.') && frac.is_empty() {
        return None;
    }
    let frac_micros = if frac.is_empty() {
        0
    } else {
        digits(frac, 1, 6)? * 10u32.pow(6 - frac.len() as u32)
    };
    let mut parts = hms.split(':').map(|p| digits(p, 2, 2));
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let valid = parts.next().is_none()
        && m < 60
        && s < 60
        && (h < 24 || (h == 24 && m + s + frac_micros == 0));
    let secs = i64::from(h * 3600 + m * 60 + s);
    valid.then_some((secs * 1_000_000 + i64::from(frac_micros), frac))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` as (day, microseconds since midnight, fraction digits).
fn parse_date_time(text: &str) -> Option<(NaiveDate, i64, &str)> {
    let (date, time) = text.split_once(' ')?;
    let (micros, frac) = parse_time(time)?;
    Some((parse_date(date)?, micros, frac))
}

fn micros_since_unix(date: NaiveDate, micros_of_day: i64) -> Option<i64> {
    days_since_unix(date)
        .checked_mul(86_400_000_000)?
        .checked_add(micros_of_day)
}

fn timestamp_micros(text: &str) -> Option<i64> {
    let (date, micros, _) = parse_date_time(text)?;
    micros_since_unix(date, micros)
}

/// A `timestamptz` as printed in the session's time zone (`2024-03-01 18:04:56.789+05:30`)
/// to ISO-8601 in UTC (`2024-03-01T12:34:56.789Z`), keeping the fraction digits printed.
fn timestamptz_iso(text: &str) -> Option<String> {
    // The offset is the only '+' or '-' after the date, and always present.
    let split = text.get(10..)?.rfind(['+', '-'])? + 10;
    let (local, offset) = text.split_at(split);
    let (sign, offset) = offset.split_at(1);
    let mut parts = offset.split(':').map(|p| digits(p, 2, 2));
    let (h, m, s) = (
        parts.next()??,
        parts.next().unwrap_or(Some(0))?,
        parts.next().unwrap_or(Some(0))?,
    );
    if parts.next().is_some() || m >= 60 || s >= 60 {
        return None;
    }
    let offset_micros = i64::from(h * 3600 + m * 60 + s) * 1_000_000;
    let (date, micros, frac) = parse_date_time(local)?;
    let local = micros_since_unix(date, micros)?;
    let utc = if sign == "+" {
        local - offset_micros
    } else {
        local + offset_micros
    };
    let day = NaiveDate::from_ymd_opt(1970, 1, 1)?
        .checked_add_signed(TimeDelta::try_days(utc.div_euclid(86_400_000_000))?)?;
    let secs = utc.rem_euclid(86_400_000_000) / 1_000_000;
    let frac = if frac.bytes().all(|b| b == b'0') {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
        day.year(),
        day.month(),
        day.day(),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

/// Parses an array literal (`{1,2,NULL}`, `{{"a,b",NULL},{"NULL","c\"d"}}`, optionally after
/// a `[0:1]=` bounds decoration) into nested JSON arrays of converted elements.
fn parse_array(text: &str, elem: u32) -> Option<Value> {
    let text = text.trim_start();
    let body = if text.starts_with('[') {
        text.split_once('=')?.1
    } else {
        text
    };
    let mut p = ArrayParser {
        s: body.trim().as_bytes(),
        pos: 0,
        elem,
    };
    let value = p.array(1)?;
    (p.pos == p.s.len()).then_some(value)
}

struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    elem: u32,
}

impl ArrayParser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn array(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_ARRAY_DEPTH || self.s.get(self.pos) != Some(&b'{') {
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.s.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Some(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(match self.s.get(self.pos)? {
                b'{' => self.array(depth + 1)?,
                b'"' => datum_to_json(self.elem, -1, &self.quoted()?),
                _ => self.unquoted()?,
            });
            self.skip_ws();
            let sep = *self.s.get(self.pos)?;
            self.pos += 1;
            match sep {
                b',' => continue,
                b'}' => return Some(Value::Array(items)),
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<String> {
        let mut out = Vec::new();
        self.pos += 1;
        loop {
            let b = *self.s.get(self.pos)?;
            self.pos += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    out.push(*self.s.get(self.pos)?);
                    self.pos += 1;
                }
                _ => out.push(b),
            }
        }
    }

    /// An element without quotes: PostgreSQL quotes anything with a delimiter, brace, quote,
    /// backslash or space, and prints NULL bare.
    fn unquoted(&mut self) -> Option<Value> {
        let start = self.pos;
        while let Some(&b) = self.s.get(self.pos) {
            match b {
                b',' | b'}' => break,
                b'{' | b'"' | b'\\' => return None,
                _ => self.pos += 1,
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.pos])
            .ok()?
            .trim_end();
        match text {
            "" => None,
            _ if text.eq_ignore_ascii_case("NULL") => Some(Value::Null),
            _ => Some(datum_to_json(self.elem, -1, text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Builds a message from the documented layout.
    struct B(Vec<u8>);

    impl B {
        fn new(tag: u8) -> Self {
            B(vec![tag])
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn u8(self, v: u8) -> Self {
            self.raw(&[v])
        }
        fn i16(self, v: i16) -> Self {
            self.raw(&v.to_be_bytes())
        }
        fn i32(self, v: i32) -> Self {
            self.raw(&v.to_be_bytes())
        }
        fn u32(self, v: u32) -> Self {
            self.raw(&v.to_be_bytes())
        }
        fn u64(self, v: u64) -> Self {
            self.raw(&v.to_be_bytes())
        }
        fn s(self, v: &str) -> Self {
            self.raw(v.as_bytes()).u8(0)
        }
        fn tuple(self, datums: &[Datum]) -> Self {
            datums
                .iter()
                .fold(self.i16(datums.len() as i16), |b, d| match d {
                    Datum::Null => b.u8(b'n'),
                    Datum::Unchanged => b.u8(b'u'),
                    Datum::Text(v) => b.u8(b't').i32(v.len() as i32).raw(v),
                    Datum::Binary(v) => b.u8(b'b').i32(v.len() as i32).raw(v),
                })
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A row with every kind of value: text, NULL, an unchanged TOASTed value, binary.
    fn row() -> Tuple {
        let binary = Datum::Binary(Bytes::from_static(&[0, 1, 0xff]));
        Tuple(vec![text("42"), Datum::Null, Datum::Unchanged, binary])
    }

    fn relation_msg() -> Bytes {
        let columns = B::new(b'R')
            .u32(16384)
            .s("public")
            .s("orders")
            .u8(b'f')
            .i16(2);
        let columns = columns.u8(1).s("id").u32(20).i32(-1);
        columns.u8(0).s("note").u32(1043).i32(68).done()
    }

    fn update_msg(old_tag: u8) -> Bytes {
        let old = B::new(b'U')
            .u32(7)
            .u8(old_tag)
            .tuple(&[text("1"), Datum::Null]);
        old.u8(b'N').tuple(&row().0).done()
    }

    #[test]
    fn transaction_messages() {
        let ts = -1_234_567_890_123i64;
        let begin = B::new(b'B')
            .u64(0x16_B374_D848)
            .raw(&ts.to_be_bytes())
            .u32(991);
        let want = Message::Begin {
            final_lsn: 0x16_B374_D848,
            commit_time: ts,
            xid: 991,
        };
        assert_eq!(decode(&begin.done()).unwrap(), want);
        let commit = B::new(b'C').u8(0).u64(10).u64(20).raw(&ts.to_be_bytes());
        let want = Message::Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_time: ts,
        };
        assert_eq!(decode(&commit.done()).unwrap(), want);
        let origin = B::new(b'O').u64(u64::MAX).s("node-a").done();
        let want = Message::Origin {
            commit_lsn: u64::MAX,
            name: "node-a".into(),
        };
        assert_eq!(decode(&origin).unwrap(), want);
    }

    #[test]
    fn relation_and_type() {
        let Message::Relation(rel) = decode(&relation_msg()).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(
            (rel.id, rel.namespace.as_str(), rel.name.as_str()),
            (16384, "public", "orders")
        );
        assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
        let columns: Vec<_> = rel
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.type_modifier, c.key))
            .collect();
        assert_eq!(columns, [("id", 20, -1, true), ("note", 1043, 68, false)]);
        for (byte, identity) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'i', ReplicaIdentity::Index),
        ] {
            let msg = B::new(b'R').u32(1).s("").s("t").u8(byte).i16(0).done();
            let Message::Relation(rel) = decode(&msg).unwrap() else {
                panic!("not a relation")
            };
            assert_eq!(
                (rel.replica_identity, rel.namespace.as_str()),
                (identity, "pg_catalog")
            );
            assert!(rel.columns.is_empty());
        }
        let ty = B::new(b'Y').u32(16390).s("").s("mood").done();
        let want = Message::Type {
            id: 16390,
            namespace: "pg_catalog".into(),
            name: "mood".into(),
        };
        assert_eq!(decode(&ty).unwrap(), want);
    }

    #[test]
    fn row_changes() {
        let old = Tuple(vec![text("1"), Datum::Null]);
        let insert = B::new(b'I').u32(7).u8(b'N').tuple(&row().0).done();
        assert_eq!(
            decode(&insert).unwrap(),
            Message::Insert {
                relation: 7,
                new: row()
            }
        );
        let update = B::new(b'U').u32(7).u8(b'N').tuple(&row().0).done();
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update {
                relation: 7,
                old: None,
                new: row()
            }
        );
        for (tag, want) in [
            (b'K', OldTuple::Key(old.clone())),
            (b'O', OldTuple::Full(old.clone())),
        ] {
            let update = Message::Update {
                relation: 7,
                old: Some(want.clone()),
                new: row(),
            };
            assert_eq!(decode(&update_msg(tag)).unwrap(), update);
            let delete = B::new(b'D').u32(7).u8(tag).tuple(&old.0).done();
            assert_eq!(
                decode(&delete).unwrap(),
                Message::Delete {
                    relation: 7,
                    old: want
                }
            );
        }
        let empty = B::new(b'I').u32(7).u8(b'N').tuple(&[]).done();
        assert_eq!(
            decode(&empty).unwrap(),
            Message::Insert {
                relation: 7,
                new: Tuple(vec![])
            }
        );
        // Values are slices of the message, not copies.
        let Message::Insert { new, .. } = decode(&insert).unwrap() else {
            panic!("not an insert")
        };
        let Datum::Text(v) = &new.0[0] else {
            panic!("not text")
        };
        assert_eq!(v.as_ptr(), insert[13..].as_ptr());
    }

    #[test]
    fn truncate_and_message() {
        let t = B::new(b'T').u32(2).u8(3).u32(10).u32(11).done();
        let want = Message::Truncate {
            cascade: true,
            restart_identity: true,
            relations: vec![10, 11],
        };
        assert_eq!(decode(&t).unwrap(), want);
        let t = B::new(b'T').u32(1).u8(2).u32(10).done();
        let want = Message::Truncate {
            cascade: false,
            restart_identity: true,
            relations: vec![10],
        };
        assert_eq!(decode(&t).unwrap(), want);
        let m = B::new(b'M')
            .u8(1)
            .u64(99)
            .s("sluice")
            .u32(3)
            .raw(b"a\0b")
            .done();
        let content = Bytes::from_static(b"a\0b");
        let want = Message::Message {
            transactional: true,
            lsn: 99,
            prefix: "sluice".into(),
            content,
        };
        assert_eq!(decode(&m).unwrap(), want);
    }

    #[test]
    fn every_truncation_is_an_error_and_corruption_never_panics() {
        let insert = B::new(b'I').u32(7).u8(b'N').tuple(&row().0).done();
        let message = B::new(b'M').u8(0).u64(1).s("p").u32(2).raw(b"xy").done();
        for msg in [
            insert,
            relation_msg(),
            update_msg(b'K'),
            update_msg(b'O'),
            message,
        ] {
            for n in 0..msg.len() {
                assert!(
                    decode(&msg.slice(..n)).is_err(),
                    "prefix {n} of {msg:?} decoded"
                );
            }
            for (i, v) in (0..msg.len())
                .flat_map(|i| [0, 1, 0x7f, 0x80, 0xff, b'n', b'u', b'K', b'N'].map(|v| (i, v)))
            {
                let mut bad = msg.to_vec();
                bad[i] = v;
                let _ = decode(&Bytes::from(bad));
            }
        }
    }

    #[test]
    fn malformed_messages_name_what_and_where() {
        let tuple = |b: B| b.u32(7).u8(b'N');
        let relation = B::new(b'R').u32(1).s("s").s("t");
        let cases = [
            (B::new(b'Z'), "message tag at byte 0: unexpected 'Z'"),
            (
                B::new(b'B').u64(1),
                "commit timestamp at byte 9: needs 8 bytes, 0 left",
            ),
            (
                B::new(b'B').u64(1).u64(2).u32(3).u8(0),
                "end of message at byte 21: 1 unexpected bytes follow",
            ),
            (
                tuple(B::new(b'I'))
                    .i16(1)
                    .u8(b't')
                    .i32(i32::MAX)
                    .raw(b"abc"),
                "text value length at byte 9: 2147483647 does not fit in the 3 bytes left",
            ),
            (
                B::new(b'M').u8(0).u64(1).s("p").u32(u32::MAX).raw(b"xy"),
                "message content length at byte 12: 4294967295 does not fit in the 2 bytes left",
            ),
            (
                tuple(B::new(b'I')).i16(1).u8(b'b').i32(-1),
                "binary value length at byte 9: negative (-1)",
            ),
            (
                tuple(B::new(b'I')).i16(-2),
                "tuple column count at byte 6: negative (-2)",
            ),
            (
                tuple(B::new(b'I')).i16(i16::MAX).u8(b'n'),
                "tuple column count at byte 6: 32767 does not fit in the 1 bytes left",
            ),
            (
                B::new(b'T').u32(u32::MAX).u8(0).u32(1),
                "relation count at byte 1: 4294967295 does not fit in the 4 bytes left",
            ),
            (
                relation.raw(b"d").i16(3).u8(0).s("").u32(1).i32(1),
                "column count at byte 10: 3 does not fit in the 10 bytes left",
            ),
            (
                B::new(b'R').u32(1).s("s").s("t").u8(b'x').i16(0),
                "replica identity at byte 9: unexpected 'x'",
            ),
            (
                tuple(B::new(b'I')).i16(2).u8(b'n').u8(b'x'),
                "column value kind at byte 9: unexpected 'x'",
            ),
            (
                tuple(B::new(b'I')).i16(1).u8(0xff),
                "column value kind at byte 8: unexpected '\\xff'",
            ),
            (
                B::new(b'I').u32(7).u8(b'K').i16(0),
                "new tuple tag at byte 5: unexpected 'K'",
            ),
            (
                B::new(b'U').u32(7).u8(b'X').i16(0),
                "new tuple tag at byte 5: unexpected 'X'",
            ),
            (
                B::new(b'U').u32(7).u8(b'K').i16(0).u8(b'K').i16(0),
                "new tuple tag at byte 8: unexpected 'K'",
            ),
            (
                B::new(b'D').u32(7).u8(b'N').i16(0),
                "old tuple tag at byte 5: unexpected 'N'",
            ),
            (
                B::new(b'R').u32(1).s("public").raw(b"bad\xff\0"),
                "relation name at byte 12: not UTF-8",
            ),
            (
                B::new(b'O').u64(1).raw(b"origin"),
                "origin name at byte 9: no terminating NUL",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(decode(&msg.done()).unwrap_err().to_string(), want);
        }
        let empty = decode(&Bytes::new()).unwrap_err();
        assert_eq!(
            empty,
            DecodeError {
                what: "message tag",
                at: 0,
                problem: Problem::Truncated(1, 0)
            }
        );
    }

    #[test]
    fn timestamps_and_lsns() {
        assert_eq!(pg_epoch_micros_to_unix_ms(0), 946_684_800_000);
        assert_eq!(pg_epoch_micros_to_unix_ms(1_500), 946_684_800_001);
        assert_eq!(pg_epoch_micros_to_unix_ms(-1), 946_684_799_999);
        assert_eq!(pg_epoch_micros_to_unix_ms(-946_684_800_000_000), 0);
        let _ = (
            pg_epoch_micros_to_unix_ms(i64::MAX),
            pg_epoch_micros_to_unix_ms(i64::MIN),
        );
        assert_eq!(lsn_string(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_string(0), "0/0");
        assert_eq!(lsn_string(0x1_0000_000A), "1/A");
        assert_eq!(lsn_string(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }

    /// Checks conversions; a `None` expectation means the text comes back as is.
    fn check(cases: &[(u32, &str, Option<Value>)]) {
        for (oid, text, want) in cases {
            let want = want.clone().unwrap_or_else(|| json!(text));
            assert_eq!(datum_to_json(*oid, -1, text), want, "oid {oid}, {text:?}");
        }
    }

    #[test]
    fn scalar_conversions() {
        let big = "-1234567890123456789012345678901234567890.000000000000000000001";
        check(&[
            (21, "-32768", Some(json!(-32768))),
            (23, "42", Some(json!(42))),
            (26, "4294967295", Some(json!(4294967295u64))),
            (20, "-9223372036854775808", Some(json!(i64::MIN))),
            (20, "12x", None),
            (701, "-1.5e-10", Some(json!(-1.5e-10))),
            (700, "3.25", Some(json!(3.25))),
            (700, "NaN", None),
            (701, "Infinity", None),
            (701, "-Infinity", None),
            (1700, big, None),
            (1700, "NaN", None),
            (16, "t", Some(json!(true))),
            (16, "f", Some(json!(false))),
            (114, r#"{"a": [1, null]}"#, Some(json!({"a": [1, null]}))),
            (3802, "\"s\"", Some(json!("s"))),
            (3802, "{bad", None),
            (3802, &"[".repeat(10_000), None),
            (17, "\\xDEADbeef", Some(json!("3q2+7w=="))),
            (17, "\\x", Some(json!(""))),
            (17, "\\x666f6f626172", Some(json!("Zm9vYmFy"))),
            (17, "\\xZZ", None),
            (17, "\\x123", None),
            (17, "\\000", None),
        ]);
        // text, varchar, bpchar, name, char, uuid, inet, cidr, macaddr, xml, money, bit, varbit,
        // timetz, interval, and an enum's OID.
        for oid in [
            25, 1043, 1042, 19, 18, 2950, 869, 650, 829, 142, 790, 1560, 1562, 1266, 1186, 16_385,
        ] {
            check(&[(oid, "x y,\"z\" 1", None), (oid, "1 day 02:00:00", None)]);
        }
        assert_eq!(
            [base64(b"f"), base64(b"fo"), base64(b"foo")],
            ["Zg==", "Zm8=", "Zm9v"]
        );
        assert_eq!(base64(&[0xff; 4]), "/////w==");
    }

    #[test]
    fn time_conversions() {
        check(&[
            (1082, "2024-03-01", Some(json!(19783))),
            (1082, "1969-12-31", Some(json!(-1))),
            (1082, "1900-01-01", Some(json!(-25567))),
            (1082, "10000-01-01", Some(json!(2932897))),
            (1082, "infinity", None),
            (1082, "-infinity", None),
            (1082, "0044-03-15 BC", None),
            (1082, "2024-02-30", None),
            (
                1114,
                "2024-03-01 12:34:56.789",
                Some(json!(1_709_296_496_789_000i64)),
            ),
            (1114, "1970-01-01 00:00:00", Some(json!(0))),
            (1114, "1969-12-31 23:59:59.5", Some(json!(-500_000))),
            (1114, "infinity", None),
            (1114, "0044-03-15 12:00:00 BC", None),
            (1114, "2024-03-01 12:34:56.1234567", None),
            (1114, "2024-03-01T12:00:00", None),
            (
                1184,
                "2024-03-01 12:34:56.789+00",
                Some(json!("2024-03-01T12:34:56.789Z")),
            ),
            (
                1184,
                "2024-03-01 18:04:56.789+05:30",
                Some(json!("2024-03-01T12:34:56.789Z")),
            ),
            (
                1184,
                "2024-03-01 02:00:00+05:30",
                Some(json!("2024-02-29T20:30:00Z")),
            ),
            (
                1184,
                "2023-12-31 20:00:00.5-08",
                Some(json!("2024-01-01T04:00:00.5Z")),
            ),
            (
                1184,
                "1900-01-01 00:00:00+00:19:32",
                Some(json!("1899-12-31T23:40:28Z")),
            ),
            (
                1184,
                "1969-12-31 23:59:59.000001+00",
                Some(json!("1969-12-31T23:59:59.000001Z")),
            ),
            (1184, "-infinity", None),
            (1184, "2024-03-01 12:00:00+00 BC", None),
            (1184, "2024-03-01 12:00:00+5", None),
            (1184, "2024-03-01 12:00:00", None),
            (1083, "00:00:00", Some(json!(0))),
            (1083, "13:45:30.25", Some(json!(49_530_250_000i64))),
            (1083, "24:00:00", Some(json!(86_400_000_000i64))),
            (1083, "24:00:01", None),
            (1083, "12:60:00", None),
            (1083, "12:00", None),
            (1083, "12:00:00.", None),
        ]);
    }

    #[test]
    fn array_conversions() {
        let deepest = format!(
            "{}1{}",
            "{".repeat(MAX_ARRAY_DEPTH),
            "}".repeat(MAX_ARRAY_DEPTH)
        );
        let too_deep = format!("{{{deepest}}}");
        check(&[
            (1007, "{1,-2,NULL}", Some(json!([1, -2, null]))),
            (
                1009,
                r#"{"a,b","c\"d\\",NULL,"NULL",plain}"#,
                Some(json!(["a,b", "c\"d\\", null, "NULL", "plain"])),
            ),
            (1007, "{{1,2},{3,4}}", Some(json!([[1, 2], [3, 4]]))),
            (1007, "[0:1]={1,2}", Some(json!([1, 2]))),
            (1007, "[0:1][1:1]={{1},{2}}", Some(json!([[1], [2]]))),
            (1009, "{}", Some(json!([]))),
            (1009, "{ \"é\" , x y }", Some(json!(["é", "x y"]))),
            (1000, "{t,f}", Some(json!([true, false]))),
            (
                1022,
                "{1.5,NaN,-Infinity}",
                Some(json!([1.5, "NaN", "-Infinity"])),
            ),
            (1231, "{1.10,NaN}", Some(json!(["1.10", "NaN"]))),
            (
                3807,
                r#"{"{\"a\": 1}","[1, 2]"}"#,
                Some(json!([{"a": 1}, [1, 2]])),
            ),
            (
                1185,
                r#"{"2024-03-01 18:04:56+05:30",NULL}"#,
                Some(json!(["2024-03-01T12:34:56Z", null])),
            ),
            (1182, "{1970-01-02}", Some(json!([1]))),
            (1001, r#"{"\\x0102",NULL}"#, Some(json!(["AQI=", null]))),
            (
                2951,
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                Some(json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])),
            ),
            (1007, &deepest, Some(json!([[[[[[1]]]]]]))),
            (1007, &too_deep, None),
            (1007, &"{".repeat(1_000_000), None),
            (1007, "{1,2", None),
            (1007, "{1,2}x", None),
            (1009, r#"{"abc}"#, None),
            (1009, r#"{"x\"#, None),
            (1007, "{1,,2}", None),
            (1007, "{,}", None),
            (1007, "1,2", None),
            (1009, "{a\"b}", None),
            (1007, "[0:1]{1}", None),
        ]);
        assert_eq!((element_type(1007), element_type(23)), (Some(23), None));
    }
}
