//! Streaming accumulators: the state of one aggregate function for one group, updated row
//! by row (and retracted row by row for table inputs), and its byte encoding in state stores.
//!
//! Values are DataFusion [`ScalarValue`]s. Every accumulator can add a value; those whose
//! result can be corrected (COUNT, SUM, AVG, and MIN/MAX/COUNT_DISTINCT/COLLECT_SET/TOPK/
//! HISTOGRAM, which keep a count per distinct value) can also retract one, which is what an
//! aggregate over a table needs when a row is updated or deleted.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;

use crate::error::{Result, SqlError};

/// Which aggregate function.
#[derive(Debug, Clone, PartialEq)]
pub enum AggKind {
    /// `COUNT(*)` (`star`) or `COUNT(x)`.
    Count {
        /// Counts rows, not non-NULL values.
        star: bool,
    },
    /// `SUM(x)`, accumulating in the result type.
    Sum,
    /// `AVG(x)`.
    Avg,
    /// `MIN(x)`.
    Min,
    /// `MAX(x)`.
    Max,
    /// `COUNT_DISTINCT(x)` or `COUNT(DISTINCT x)`.
    CountDistinct,
    /// `LATEST_BY_OFFSET(x [, n] [, ignoreNulls])`: the value of the last row, or the values
    /// of the last `n` rows (oldest first).
    Latest(ByOffset),
    /// `EARLIEST_BY_OFFSET(x [, n] [, ignoreNulls])`: the value of the first row, or the
    /// values of the first `n` rows.
    Earliest(ByOffset),
    /// `COLLECT_LIST(x)`: every value, in arrival order.
    CollectList,
    /// `COLLECT_SET(x)`: distinct values, in arrival order (as ksqlDB; streams only, it is
    /// refused over a table). A Set state, stored by versions before, stays in value order.
    CollectSet,
    /// `TOPK(x, k)`: the k largest values, largest first.
    TopK(usize),
    /// `HISTOGRAM(x)`: a count per distinct value.
    Histogram,
}

/// How many values `LATEST_BY_OFFSET`/`EARLIEST_BY_OFFSET` keep, and whether NULLs count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByOffset {
    /// `Some(n)`: the n-values form, whose result is an ARRAY; `None`: one value.
    pub n: Option<usize>,
    /// Rows whose value is NULL are skipped (ksqlDB's default, `true`).
    pub ignore_nulls: bool,
}

impl ByOffset {
    /// The arguments after the column: `()`, `(ignoreNulls)`, `(n)` or `(n, ignoreNulls)`,
    /// each a constant.
    fn from_args(name: &str, extra: &[Option<ScalarValue>]) -> Result<ByOffset> {
        let bad = || {
            SqlError::Invalid(format!(
                "{} takes (column), (column, ignoreNulls), (column, n) or (column, n, ignoreNulls), with constant n > 0 and ignoreNulls TRUE or FALSE",
                name.to_uppercase()
            ))
        };
        let count = |v: &Option<ScalarValue>| match v {
            Some(v) if v.data_type().is_integer() => match v.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(n))) if (1..=MAX_COLLECTED as i64).contains(&n) => {
                    Ok(n as usize)
                }
                Ok(ScalarValue::Int64(Some(n))) if n > MAX_COLLECTED as i64 => {
                    Err(SqlError::Invalid(format!(
                        "{}: n is at most {MAX_COLLECTED}, got {n}",
                        name.to_uppercase()
                    )))
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        };
        let flag = |v: &Option<ScalarValue>| match v {
            Some(ScalarValue::Boolean(Some(b))) => Ok(*b),
            _ => Err(bad()),
        };
        Ok(match extra {
            [] => ByOffset {
                n: None,
                ignore_nulls: true,
            },
            [Some(ScalarValue::Boolean(_))] => ByOffset {
                n: None,
                ignore_nulls: flag(&extra[0])?,
            },
            [n] => ByOffset {
                n: Some(count(n)?),
                ignore_nulls: true,
            },
            [n, ignore] => ByOffset {
                n: Some(count(n)?),
                ignore_nulls: flag(ignore)?,
            },
            _ => return Err(bad()),
        })
    }

    /// How many values the state keeps.
    fn capacity(&self) -> usize {
        self.n.unwrap_or(1)
    }
}

/// At most this many values in a `COLLECT_LIST` or `COLLECT_SET` result (later values are
/// ignored) and in `LATEST_BY_OFFSET(x, n)`: ksqlDB's default for
/// `ksql.functions.collect_list.limit` and `collect_set.limit`, and what bounds the state of
/// one group.
pub const MAX_COLLECTED: usize = 1000;

impl AggKind {
    /// True for the aggregates ksqlDB's reference marks "Applies to: stream, table" (they
    /// can take a row back out); the others (MIN, MAX, COUNT_DISTINCT, LATEST_BY_OFFSET,
    /// EARLIEST_BY_OFFSET, COLLECT_SET, TOPK) apply to streams only.
    pub fn applies_to_tables(&self) -> bool {
        matches!(
            self,
            AggKind::Count { .. }
                | AggKind::Sum
                | AggKind::Avg
                | AggKind::CollectList
                | AggKind::Histogram
        )
    }

    /// The kind for a function name as planned by DataFusion, if we run it; `extra` holds
    /// the arguments after the first, `Some` for constants.
    pub fn from_name(
        name: &str,
        distinct: bool,
        star: bool,
        extra: &[Option<ScalarValue>],
    ) -> Result<AggKind> {
        let takes_extra = matches!(name, "topk" | "latest_by_offset" | "earliest_by_offset");
        if !takes_extra && !extra.is_empty() {
            return Err(SqlError::Invalid(format!(
                "{} takes one argument",
                name.to_uppercase()
            )));
        }
        let k = match extra.first() {
            Some(Some(v)) => v.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                ScalarValue::Int64(Some(k)) if k > 0 => usize::try_from(k).ok(),
                _ => None,
            }),
            _ => None,
        };
        Ok(match (name, distinct) {
            ("count", true) | ("count_distinct", _) => AggKind::CountDistinct,
            ("count", false) => AggKind::Count { star },
            ("sum", false) => AggKind::Sum,
            ("avg", false) | ("mean", false) => AggKind::Avg,
            ("min", _) => AggKind::Min,
            ("max", _) => AggKind::Max,
            ("latest_by_offset", false) => AggKind::Latest(ByOffset::from_args(name, extra)?),
            ("earliest_by_offset", false) => AggKind::Earliest(ByOffset::from_args(name, extra)?),
            ("collect_list", false) => AggKind::CollectList,
            ("collect_set", _) => AggKind::CollectSet,
            ("topk", false) if extra.len() == 1 => AggKind::TopK(k.ok_or_else(|| {
                SqlError::Invalid("TOPK needs a constant k > 0: TOPK(column, 3)".into())
            })?),
            ("topk", false) => {
                return Err(SqlError::Invalid(
                    "TOPK takes two arguments: TOPK(column, k)".into(),
                ));
            }
            ("histogram", false) => AggKind::Histogram,
            (other, true) => {
                return Err(SqlError::Invalid(format!(
                    "DISTINCT is not supported with {}",
                    other.to_uppercase()
                )));
            }
            (other, false) => {
                return Err(SqlError::Invalid(format!(
                    "aggregate function {} is not supported in streaming queries",
                    other.to_uppercase()
                )));
            }
        })
    }
}

/// A value with a total order (`ScalarValue` is only partially ordered): NULLs first, then
/// values of one type by `partial_cmp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrdValue(pub ScalarValue);

impl PartialOrd for OrdValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0.is_null(), other.0.is_null()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => self
                .0
                .partial_cmp(&other.0)
                .unwrap_or_else(|| format!("{:?}", self.0).cmp(&format!("{:?}", other.0))),
        }
    }
}

/// Distinct values with their multiplicity.
pub type Multiset = BTreeMap<OrdValue, i64>;

/// The state of one aggregate for one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Acc {
    /// Rows or non-NULL values.
    Count(i64),
    /// Running sum (NULL until the first value) and how many values it holds.
    Sum(ScalarValue, i64),
    /// Sum and count of non-NULL values.
    Avg(f64, i64),
    /// A single value (MIN/MAX over streams, LATEST/EARLIEST).
    One(ScalarValue),
    /// Values with counts (MIN/MAX over tables, COUNT_DISTINCT, COLLECT_SET, TOPK,
    /// HISTOGRAM).
    Set(Multiset),
    /// Values in arrival order (COLLECT_LIST).
    List(Vec<ScalarValue>),
}

/// One aggregate of a query: its function and the types around it.
#[derive(Debug, Clone)]
pub struct AggSpec {
    /// The function.
    pub kind: AggKind,
    /// Type of the argument (Null for `COUNT(*)`).
    pub input: DataType,
    /// Type of the result.
    pub output: DataType,
    /// The input can retract rows (a table): MIN and MAX keep every value.
    pub retractable: bool,
}

/// At most this many bytes (estimated) of collected values in one group's state: the
/// state and the result each travel as one record (the changelog's, the output's), and a
/// record is at most `max.message.bytes` (1 MiB by default). An update that would pass it
/// is refused for that record (a dead letter), so one large group cannot stop its query.
pub const MAX_COLLECTED_BYTES: usize = 768 * 1024;

impl AggSpec {
    /// Estimated bytes of the values `acc` collects (COLLECT_LIST, COLLECT_SET, the n-value
    /// forms of LATEST/EARLIEST_BY_OFFSET), 0 for the others; at most [`MAX_COLLECTED`]
    /// values are summed.
    pub fn collected_bytes(&self, acc: &Acc) -> usize {
        match (self.collects(), acc) {
            (true, Acc::List(l)) => l.iter().map(ScalarValue::size).sum(),
            (true, Acc::Set(s)) => s.keys().take(MAX_COLLECTED).map(|v| v.0.size()).sum(),
            _ => 0,
        }
    }

    /// Whether the function collects values (COLLECT_LIST, COLLECT_SET, the n-value forms of
    /// LATEST/EARLIEST_BY_OFFSET).
    pub fn collects(&self) -> bool {
        matches!(
            self.kind,
            AggKind::CollectList
                | AggKind::CollectSet
                | AggKind::Latest(ByOffset { n: Some(_), .. })
                | AggKind::Earliest(ByOffset { n: Some(_), .. })
        )
    }

    /// Whether the function goes by offset (LATEST_BY_OFFSET, EARLIEST_BY_OFFSET): the
    /// newest row is the last one seen, whatever its time.
    pub fn by_offset(&self) -> bool {
        matches!(self.kind, AggKind::Latest(_) | AggKind::Earliest(_))
    }

    /// A fresh accumulator.
    pub fn init(&self) -> Result<Acc> {
        Ok(match &self.kind {
            AggKind::Count { .. } => Acc::Count(0),
            AggKind::Sum => Acc::Sum(ScalarValue::try_from(&self.output)?, 0),
            AggKind::Avg => Acc::Avg(0.0, 0),
            AggKind::Min | AggKind::Max if !self.retractable => {
                Acc::One(ScalarValue::try_from(&self.input)?)
            }
            // One value, NULL until set: for EARLIEST only when NULLs are skipped, since
            // a NULL first value must stay.
            AggKind::Latest(ByOffset { n: None, .. })
            | AggKind::Earliest(ByOffset {
                n: None,
                ignore_nulls: true,
            }) => Acc::One(ScalarValue::try_from(&self.input)?),
            AggKind::Latest(_) | AggKind::Earliest(_) | AggKind::CollectList => {
                Acc::List(Vec::new())
            }
            // Distinct values in arrival order (a retracting input would need counts, a Set;
            // COLLECT_SET over a table is refused at CREATE).
            AggKind::CollectSet if !self.retractable => Acc::List(Vec::new()),
            _ => Acc::Set(Multiset::new()),
        })
    }

    /// Adds (`sign` 1) or retracts (`sign` -1) one row's argument.
    pub fn update(&self, acc: &mut Acc, value: &ScalarValue, sign: i64) -> Result<()> {
        let skip_null = match &self.kind {
            AggKind::Count { star: true } => false,
            AggKind::Latest(b) | AggKind::Earliest(b) => b.ignore_nulls,
            // SQL aggregates ignore NULLs.
            _ => true,
        };
        if value.is_null() && skip_null {
            return Ok(());
        }
        match (acc, &self.kind) {
            (Acc::Count(n), _) => *n += sign,
            (Acc::Sum(s, n), _) => {
                let v = value.cast_to(&self.output)?;
                *s = if *n == 0 && sign > 0 {
                    v
                } else if sign > 0 {
                    s.add_checked(&v)?
                } else {
                    s.sub_checked(&v)?
                };
                *n += sign;
                if *n == 0 {
                    *s = ScalarValue::try_from(&self.output)?;
                }
            }
            (Acc::Avg(s, n), _) => {
                let v = match value.cast_to(&DataType::Float64)? {
                    ScalarValue::Float64(Some(v)) => v,
                    _ => return Ok(()),
                };
                *s += v * sign as f64;
                *n += sign;
            }
            (Acc::One(cur), AggKind::Min) => {
                if cur.is_null() || OrdValue(value.clone()) < OrdValue(cur.clone()) {
                    *cur = value.clone();
                }
            }
            (Acc::One(cur), AggKind::Max) => {
                if cur.is_null() || OrdValue(value.clone()) > OrdValue(cur.clone()) {
                    *cur = value.clone();
                }
            }
            (Acc::One(cur), AggKind::Latest(_)) => {
                if sign > 0 {
                    *cur = value.clone();
                }
            }
            (Acc::One(cur), _) => {
                // EARLIEST skipping NULLs: the first value; NULL means none yet.
                if sign > 0 && cur.is_null() {
                    *cur = value.clone();
                }
            }
            (Acc::Set(set), AggKind::CollectSet)
                if sign > 0
                    && set.len() >= MAX_COLLECTED
                    && !set.contains_key(&OrdValue(value.clone())) =>
            {
                // Full: further distinct values are ignored, as ksqlDB ignores them.
            }
            (Acc::Set(set), _) => {
                let e = set.entry(OrdValue(value.clone())).or_insert(0);
                *e += sign;
                if *e <= 0 {
                    set.remove(&OrdValue(value.clone()));
                }
            }
            (Acc::List(list), AggKind::Latest(b)) => {
                if sign > 0 {
                    list.push(value.clone());
                    if list.len() > b.capacity() {
                        list.remove(0);
                    }
                }
            }
            (Acc::List(list), AggKind::Earliest(b)) => {
                if sign > 0 && list.len() < b.capacity() {
                    list.push(value.clone());
                }
            }
            (Acc::List(list), AggKind::CollectSet) => {
                if sign > 0 && list.len() < MAX_COLLECTED && !list.contains(value) {
                    list.push(value.clone());
                }
            }
            (Acc::List(list), _) => {
                if sign > 0 {
                    if list.len() < MAX_COLLECTED {
                        list.push(value.clone());
                    }
                } else if let Some(i) = list.iter().position(|v| v == value) {
                    list.remove(i);
                }
            }
        }
        Ok(())
    }

    /// Folds `other` (a later session of the same key) into `acc`.
    pub fn merge(&self, acc: &mut Acc, other: &Acc) -> Result<()> {
        match (acc, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(s, n), Acc::Sum(t, m)) => {
                if *m > 0 {
                    *s = if *n == 0 {
                        t.clone()
                    } else {
                        s.add_checked(t)?
                    };
                    *n += m;
                }
            }
            (Acc::Avg(s, n), Acc::Avg(t, m)) => {
                *s += t;
                *n += m;
            }
            (Acc::One(a), Acc::One(b)) => {
                let replace = match self.kind {
                    AggKind::Min => {
                        !b.is_null() && (a.is_null() || OrdValue(b.clone()) < OrdValue(a.clone()))
                    }
                    AggKind::Max => {
                        !b.is_null() && (a.is_null() || OrdValue(b.clone()) > OrdValue(a.clone()))
                    }
                    AggKind::Earliest(_) => a.is_null(),
                    AggKind::Latest(o) => !(o.ignore_nulls && b.is_null()),
                    _ => true,
                };
                if replace {
                    *a = b.clone();
                }
            }
            (Acc::Set(a), Acc::Set(b)) => {
                for (k, n) in b {
                    if matches!(self.kind, AggKind::CollectSet)
                        && a.len() >= MAX_COLLECTED
                        && !a.contains_key(k)
                    {
                        continue;
                    }
                    *a.entry(k.clone()).or_insert(0) += n;
                }
            }
            (Acc::List(a), Acc::List(b)) if matches!(self.kind, AggKind::CollectSet) => {
                for v in b {
                    if a.len() < MAX_COLLECTED && !a.contains(v) {
                        a.push(v.clone());
                    }
                }
            }
            (Acc::List(a), Acc::List(b)) => {
                a.extend(b.iter().cloned());
                match &self.kind {
                    AggKind::Latest(o) => {
                        let over = a.len().saturating_sub(o.capacity());
                        a.drain(..over);
                    }
                    AggKind::Earliest(o) => a.truncate(o.capacity()),
                    _ => a.truncate(MAX_COLLECTED),
                }
            }
            (a, b) => {
                return Err(SqlError::Plan(format!(
                    "internal error: cannot merge {a:?} with {b:?}"
                )));
            }
        }
        Ok(())
    }

    /// The aggregate's current result.
    pub fn evaluate(&self, acc: &Acc) -> Result<ScalarValue> {
        let v = match (acc, &self.kind) {
            (Acc::Count(n), _) => ScalarValue::Int64(Some(*n)),
            // Over a table, a group whose values were all retracted sums to 0, as ksqlDB's
            // SUM (which starts at 0 and subtracts) reports it.
            (Acc::Sum(_, 0), _) if self.retractable => ScalarValue::new_zero(&self.output)?,
            (Acc::Sum(s, _), _) => s.clone(),
            (Acc::Avg(s, n), _) => {
                if *n == 0 {
                    ScalarValue::Float64(None)
                } else {
                    ScalarValue::Float64(Some(s / *n as f64))
                }
            }
            (Acc::One(v), _) => v.clone(),
            (Acc::Set(set), AggKind::Min) => set
                .keys()
                .next()
                .map_or(ScalarValue::try_from(&self.input)?, |v| v.0.clone()),
            (Acc::Set(set), AggKind::Max) => set
                .keys()
                .next_back()
                .map_or(ScalarValue::try_from(&self.input)?, |v| v.0.clone()),
            (Acc::Set(set), AggKind::CountDistinct) => ScalarValue::Int64(Some(set.len() as i64)),
            (Acc::Set(set), AggKind::CollectSet) => {
                list(set.keys().map(|v| v.0.clone()), &self.input)
            }
            (Acc::Set(set), AggKind::TopK(k)) => {
                let mut out = Vec::with_capacity(*k);
                'outer: for (v, n) in set.iter().rev() {
                    for _ in 0..*n {
                        if out.len() == *k {
                            break 'outer;
                        }
                        out.push(v.0.clone());
                    }
                }
                list(out.into_iter(), &self.input)
            }
            (Acc::Set(set), _) => histogram(set, &self.output)?,
            (Acc::List(l), AggKind::Latest(ByOffset { n: None, .. })) => match l.last() {
                Some(v) => v.clone(),
                None => ScalarValue::try_from(&self.input)?,
            },
            (Acc::List(l), AggKind::Earliest(ByOffset { n: None, .. })) => match l.first() {
                Some(v) => v.clone(),
                None => ScalarValue::try_from(&self.input)?,
            },
            (Acc::List(l), _) => list(l.iter().cloned(), &self.input),
        };
        if v.data_type() == self.output {
            Ok(v)
        } else {
            Ok(v.cast_to(&self.output)?)
        }
    }

    /// Trims a TOPK set to what it can still report (only for inputs that never retract).
    pub fn compact(&self, acc: &mut Acc) {
        if let (AggKind::TopK(k), Acc::Set(set), false) = (&self.kind, acc, self.retractable) {
            let mut kept = 0i64;
            let mut cut = None;
            for (v, n) in set.iter().rev() {
                if kept >= *k as i64 {
                    cut = Some(v.clone());
                    break;
                }
                kept += n;
            }
            if let Some(c) = cut {
                // Everything from `c` down can no longer be among the k largest.
                let mut upper = set.split_off(&c);
                upper.remove(&c);
                *set = upper;
            }
        }
    }
}

fn list(values: impl Iterator<Item = ScalarValue>, item: &DataType) -> ScalarValue {
    let values: Vec<ScalarValue> = values.collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, item))
}

/// HISTOGRAM's result: a map from value (as text) to count.
fn histogram(set: &Multiset, output: &DataType) -> Result<ScalarValue> {
    let keys: Vec<ScalarValue> = set
        .keys()
        .map(|k| ScalarValue::Utf8(Some(k.0.to_string())))
        .collect();
    let counts: Vec<ScalarValue> = set.values().map(|n| ScalarValue::Int64(Some(*n))).collect();
    let keys = ScalarValue::iter_to_array(keys)?;
    let counts = ScalarValue::iter_to_array(counts)?;
    let DataType::Map(entries, _) = output else {
        return Err(SqlError::Plan(format!(
            "internal error: HISTOGRAM returns a map, planned {output}"
        )));
    };
    let DataType::Struct(fields) = entries.data_type() else {
        return Err(SqlError::Plan("internal error: map entries".into()));
    };
    let st =
        datafusion::arrow::array::StructArray::try_new(fields.clone(), vec![keys, counts], None)?;
    let offsets = datafusion::arrow::buffer::OffsetBuffer::new(vec![0i32, set.len() as i32].into());
    let map =
        datafusion::arrow::array::MapArray::try_new(entries.clone(), offsets, st, None, false)?;
    Ok(ScalarValue::Map(std::sync::Arc::new(map)))
}

// ---- encoding ---------------------------------------------------------------------------

/// Appends `acc` to `out`.
pub fn encode_acc(acc: &Acc, out: &mut Vec<u8>) -> Result<()> {
    match acc {
        Acc::Count(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Acc::Sum(s, n) => {
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
            encode_scalar(s, out)?;
        }
        Acc::Avg(s, n) => {
            out.push(2);
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        Acc::One(v) => {
            out.push(3);
            encode_scalar(v, out)?;
        }
        Acc::Set(set) => {
            out.push(4);
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for (v, n) in set {
                encode_scalar(&v.0, out)?;
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        Acc::List(l) => {
            out.push(5);
            out.extend_from_slice(&(l.len() as u32).to_le_bytes());
            for v in l {
                encode_scalar(v, out)?;
            }
        }
    }
    Ok(())
}

/// Reads one accumulator of a value of type `ty` from `buf` at `pos`.
pub fn decode_acc(buf: &[u8], pos: &mut usize, ty: &DataType, sum_ty: &DataType) -> Result<Acc> {
    let tag = take(buf, pos, 1)?[0];
    Ok(match tag {
        0 => Acc::Count(i64_at(buf, pos)?),
        1 => {
            let n = i64_at(buf, pos)?;
            Acc::Sum(decode_scalar(buf, pos, sum_ty)?, n)
        }
        2 => {
            let s = f64::from_le_bytes(arr8(take(buf, pos, 8)?));
            Acc::Avg(s, i64_at(buf, pos)?)
        }
        3 => Acc::One(decode_scalar(buf, pos, ty)?),
        4 => {
            let n = u32::from_le_bytes(arr4(take(buf, pos, 4)?));
            let mut set = Multiset::new();
            for _ in 0..n {
                let v = decode_scalar(buf, pos, ty)?;
                set.insert(OrdValue(v), i64_at(buf, pos)?);
            }
            Acc::Set(set)
        }
        5 => {
            let n = u32::from_le_bytes(arr4(take(buf, pos, 4)?));
            let mut l = Vec::with_capacity(n as usize);
            for _ in 0..n {
                l.push(decode_scalar(buf, pos, ty)?);
            }
            Acc::List(l)
        }
        t => return Err(corrupt(format!("accumulator tag {t}"))),
    })
}

fn corrupt(what: String) -> SqlError {
    SqlError::Plan(format!("corrupt aggregate state: {what}"))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8]> {
    let s = buf
        .get(*pos..*pos + n)
        .ok_or_else(|| corrupt(format!("{n} bytes at {pos} past the end")))?;
    *pos += n;
    Ok(s)
}

fn arr8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

fn arr4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

fn i64_at(buf: &[u8], pos: &mut usize) -> Result<i64> {
    Ok(i64::from_le_bytes(arr8(take(buf, pos, 8)?)))
}

/// Whether values of type `t` can be kept in aggregate state ([`encode_scalar`] and
/// [`decode_scalar`] handle exactly these): checked when a query is planned, so a query that
/// could not keep its state is refused at CREATE instead of failing on every record.
/// STRUCT, ARRAY and MAP values are kept as JSON, so their leaves must be types JSON gives
/// back exactly (not BYTES).
pub fn storable(t: &DataType) -> bool {
    match t {
        DataType::Struct(fields) => fields.iter().all(|f| json_storable(f.data_type())),
        DataType::List(f) => json_storable(f.data_type()),
        DataType::Map(entries, _) => json_storable(entries.data_type()),
        other => primitive_storable(other),
    }
}

fn json_storable(t: &DataType) -> bool {
    match t {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => false,
        other => storable(other),
    }
}

fn primitive_storable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Null
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// A STRUCT, ARRAY or MAP value as the JSON of `{"v": value}`, through the format layer
/// that reads and writes records (so what comes back is what a record would give).
fn nested_to_json(v: &ScalarValue) -> Result<Vec<u8>> {
    let array = v.to_array()?;
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("v", array.data_type().clone(), true),
    ]));
    let batch = datafusion::arrow::array::RecordBatch::try_new(schema, vec![array])?;
    sluice_format::json::encode_rows(&batch)
        .map_err(|e| SqlError::Plan(format!("aggregate state: {e}")))?
        .pop()
        .ok_or_else(|| SqlError::Plan("aggregate state: no row encoded".into()))
}

/// The value [`nested_to_json`] wrote, of type `ty`.
fn nested_from_json(json: &[u8], ty: &DataType) -> Result<ScalarValue> {
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("v", ty.clone(), true),
    ]));
    let batch = sluice_format::json::JsonDecoder::new(schema)
        .decode(std::iter::once(json))
        .map_err(|e| corrupt(format!("nested value: {e}")))?;
    Ok(ScalarValue::try_from_array(batch.column(0), 0)?)
}

/// Appends a scalar: a null flag, then its bytes (the type is known to the reader).
pub fn encode_scalar(v: &ScalarValue, out: &mut Vec<u8>) -> Result<()> {
    if v.is_null() {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    match v {
        ScalarValue::Boolean(Some(b)) => out.push(u8::from(*b)),
        ScalarValue::Int8(Some(x)) => out.extend_from_slice(&i64::from(*x).to_le_bytes()),
        ScalarValue::Int16(Some(x)) => out.extend_from_slice(&i64::from(*x).to_le_bytes()),
        ScalarValue::Int32(Some(x)) | ScalarValue::Date32(Some(x)) => {
            out.extend_from_slice(&i64::from(*x).to_le_bytes())
        }
        ScalarValue::Int64(Some(x))
        | ScalarValue::Date64(Some(x))
        | ScalarValue::TimestampSecond(Some(x), _)
        | ScalarValue::TimestampMillisecond(Some(x), _)
        | ScalarValue::TimestampMicrosecond(Some(x), _)
        | ScalarValue::TimestampNanosecond(Some(x), _) => out.extend_from_slice(&x.to_le_bytes()),
        ScalarValue::UInt8(Some(x)) => out.extend_from_slice(&u64::from(*x).to_le_bytes()),
        ScalarValue::UInt16(Some(x)) => out.extend_from_slice(&u64::from(*x).to_le_bytes()),
        ScalarValue::UInt32(Some(x)) => out.extend_from_slice(&u64::from(*x).to_le_bytes()),
        ScalarValue::UInt64(Some(x)) => out.extend_from_slice(&x.to_le_bytes()),
        ScalarValue::Float32(Some(x)) => out.extend_from_slice(&f64::from(*x).to_le_bytes()),
        ScalarValue::Float64(Some(x)) => out.extend_from_slice(&x.to_le_bytes()),
        ScalarValue::Decimal128(Some(x), _, _) => out.extend_from_slice(&x.to_le_bytes()),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        ScalarValue::Struct(_) | ScalarValue::List(_) | ScalarValue::Map(_) => {
            let json = nested_to_json(v)?;
            out.extend_from_slice(&(json.len() as u32).to_le_bytes());
            out.extend_from_slice(&json);
        }
        other => {
            return Err(SqlError::Invalid(format!(
                "aggregating values of type {} is not supported",
                crate::types::sql_name(&other.data_type())
            )));
        }
    }
    Ok(())
}

/// Reads a scalar of type `ty`.
pub fn decode_scalar(buf: &[u8], pos: &mut usize, ty: &DataType) -> Result<ScalarValue> {
    if take(buf, pos, 1)?[0] == 0 {
        return Ok(ScalarValue::try_from(ty)?);
    }
    let i = |buf: &[u8], pos: &mut usize| i64_at(buf, pos);
    Ok(match ty {
        DataType::Boolean => ScalarValue::Boolean(Some(take(buf, pos, 1)?[0] != 0)),
        DataType::Int8 => ScalarValue::Int8(Some(i(buf, pos)? as i8)),
        DataType::Int16 => ScalarValue::Int16(Some(i(buf, pos)? as i16)),
        DataType::Int32 => ScalarValue::Int32(Some(i(buf, pos)? as i32)),
        DataType::Date32 => ScalarValue::Date32(Some(i(buf, pos)? as i32)),
        DataType::Int64 => ScalarValue::Int64(Some(i(buf, pos)?)),
        DataType::Date64 => ScalarValue::Date64(Some(i(buf, pos)?)),
        DataType::Timestamp(unit, tz) => {
            let x = Some(i(buf, pos)?);
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(x, tz.clone()),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(x, tz.clone()),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(x, tz.clone()),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(x, tz.clone()),
            }
        }
        DataType::UInt8 => ScalarValue::UInt8(Some(i(buf, pos)? as u8)),
        DataType::UInt16 => ScalarValue::UInt16(Some(i(buf, pos)? as u16)),
        DataType::UInt32 => ScalarValue::UInt32(Some(i(buf, pos)? as u32)),
        DataType::UInt64 => ScalarValue::UInt64(Some(i(buf, pos)? as u64)),
        DataType::Float32 => {
            ScalarValue::Float32(Some(f64::from_le_bytes(arr8(take(buf, pos, 8)?)) as f32))
        }
        DataType::Float64 => {
            ScalarValue::Float64(Some(f64::from_le_bytes(arr8(take(buf, pos, 8)?))))
        }
        DataType::Decimal128(p, s) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(take(buf, pos, 16)?);
            ScalarValue::Decimal128(Some(i128::from_le_bytes(a)), *p, *s)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let n = u32::from_le_bytes(arr4(take(buf, pos, 4)?)) as usize;
            let s = String::from_utf8(take(buf, pos, n)?.to_vec())
                .map_err(|e| corrupt(format!("text: {e}")))?;
            match ty {
                DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(s)),
                DataType::Utf8View => ScalarValue::Utf8View(Some(s)),
                _ => ScalarValue::Utf8(Some(s)),
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let n = u32::from_le_bytes(arr4(take(buf, pos, 4)?)) as usize;
            ScalarValue::Binary(Some(take(buf, pos, n)?.to_vec())).cast_to(ty)?
        }
        DataType::Struct(_) | DataType::List(_) | DataType::Map(..) => {
            let n = u32::from_le_bytes(arr4(take(buf, pos, 4)?)) as usize;
            nested_from_json(take(buf, pos, n)?, ty)?
        }
        other => {
            return Err(SqlError::Invalid(format!(
                "aggregating values of type {} is not supported",
                crate::types::sql_name(other)
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: AggKind, input: DataType, output: DataType, retractable: bool) -> AggSpec {
        AggSpec {
            kind,
            input,
            output,
            retractable,
        }
    }

    fn run(s: &AggSpec, values: &[(i64, i64)]) -> ScalarValue {
        let mut acc = s.init().unwrap();
        for (v, sign) in values {
            s.update(&mut acc, &ScalarValue::Int64(Some(*v)), *sign)
                .unwrap();
            s.compact(&mut acc);
            // Every step survives a round trip through its bytes.
            let mut buf = Vec::new();
            encode_acc(&acc, &mut buf).unwrap();
            let mut pos = 0;
            let back = decode_acc(&buf, &mut pos, &s.input, &s.output).unwrap();
            assert_eq!(back, acc);
            assert_eq!(pos, buf.len());
        }
        s.evaluate(&acc).unwrap()
    }

    #[test]
    fn sums_counts_and_averages_retract() {
        let i = DataType::Int64;
        let sum = spec(AggKind::Sum, i.clone(), i.clone(), true);
        assert_eq!(
            run(&sum, &[(5, 1), (7, 1), (5, -1)]),
            ScalarValue::Int64(Some(7))
        );
        // Over a table, everything retracted sums to 0, as ksqlDB's SUM reports it.
        assert_eq!(run(&sum, &[(5, 1), (5, -1)]), ScalarValue::Int64(Some(0)));
        let avg = spec(AggKind::Avg, i.clone(), DataType::Float64, true);
        assert_eq!(
            run(&avg, &[(2, 1), (4, 1), (9, 1), (9, -1)]),
            ScalarValue::Float64(Some(3.0))
        );
        let count = spec(AggKind::Count { star: false }, i.clone(), i.clone(), true);
        assert_eq!(
            run(&count, &[(1, 1), (1, 1), (1, -1)]),
            ScalarValue::Int64(Some(1))
        );
    }

    #[test]
    fn min_max_over_tables_keep_every_value() {
        let i = DataType::Int64;
        let max = spec(AggKind::Max, i.clone(), i.clone(), true);
        assert_eq!(
            run(&max, &[(3, 1), (9, 1), (9, -1)]),
            ScalarValue::Int64(Some(3))
        );
        let min = spec(AggKind::Min, i.clone(), i.clone(), false);
        assert_eq!(
            run(&min, &[(3, 1), (1, 1), (2, 1)]),
            ScalarValue::Int64(Some(1))
        );
    }

    #[test]
    fn topk_keeps_only_k_for_streams() {
        let i = DataType::Int64;
        let list = DataType::new_list(i.clone(), true);
        let top = spec(AggKind::TopK(2), i.clone(), list, false);
        let mut acc = top.init().unwrap();
        for v in [4, 8, 1, 9, 8] {
            top.update(&mut acc, &ScalarValue::Int64(Some(v)), 1)
                .unwrap();
            top.compact(&mut acc);
        }
        let Acc::Set(set) = &acc else { panic!() };
        assert!(set.len() <= 2, "{set:?}");
        let v = top.evaluate(&acc).unwrap();
        assert_eq!(v.to_string(), "[9, 8]");
    }

    #[test]
    fn nulls_are_ignored_unless_latest_is_told_to_keep_them() {
        let i = DataType::Int64;
        let sum = spec(AggKind::Sum, i.clone(), i.clone(), false);
        let mut acc = sum.init().unwrap();
        sum.update(&mut acc, &ScalarValue::Int64(None), 1).unwrap();
        assert!(sum.evaluate(&acc).unwrap().is_null());
        for (ignore_nulls, last_is_null) in [(true, false), (false, true)] {
            let latest = spec(
                AggKind::Latest(ByOffset {
                    n: None,
                    ignore_nulls,
                }),
                i.clone(),
                i.clone(),
                false,
            );
            let mut acc = latest.init().unwrap();
            latest
                .update(&mut acc, &ScalarValue::Int64(Some(1)), 1)
                .unwrap();
            latest
                .update(&mut acc, &ScalarValue::Int64(None), 1)
                .unwrap();
            assert_eq!(latest.evaluate(&acc).unwrap().is_null(), last_is_null);
        }
    }

    /// COLLECT_LIST and COLLECT_SET stop at ksqlDB's limit, so one group's state is bounded.
    #[test]
    fn collected_values_stop_at_the_limit() {
        let i = DataType::Int64;
        let list = DataType::new_list(i.clone(), true);
        for kind in [AggKind::CollectList, AggKind::CollectSet] {
            let s = spec(kind, i.clone(), list.clone(), false);
            let mut acc = s.init().unwrap();
            for v in 0..(MAX_COLLECTED as i64 + 50) {
                s.update(&mut acc, &ScalarValue::Int64(Some(v)), 1).unwrap();
            }
            let ScalarValue::List(l) = s.evaluate(&acc).unwrap() else {
                panic!()
            };
            assert_eq!(l.value(0).len(), MAX_COLLECTED);
        }
    }

    /// STRUCT, ARRAY and MAP values go to the store and come back equal.
    #[test]
    fn nested_values_round_trip_through_the_state_encoding() {
        use datafusion::arrow::array::{ArrayRef, Int32Array, StringArray, StructArray};
        use datafusion::arrow::datatypes::Field;
        use std::sync::Arc;
        let st = StructArray::from(vec![
            (
                Arc::new(Field::new("NAME", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("tea \"x\"")])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("QTY", DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![None])) as ArrayRef,
            ),
        ]);
        let v = ScalarValue::Struct(Arc::new(st));
        let ty = v.data_type();
        assert!(storable(&ty));
        let list_ty = DataType::new_list(ty.clone(), true);
        let s = spec(AggKind::CollectList, ty.clone(), list_ty.clone(), false);
        let mut acc = s.init().unwrap();
        s.update(&mut acc, &v, 1).unwrap();
        s.update(&mut acc, &ScalarValue::try_from(&ty).unwrap(), 1)
            .unwrap();
        let mut buf = Vec::new();
        encode_acc(&acc, &mut buf).unwrap();
        let back = decode_acc(&buf, &mut 0, &ty, &ty).unwrap();
        assert_eq!(back, acc);
        assert!(!storable(&DataType::new_list(DataType::Binary, true)));
    }
}
