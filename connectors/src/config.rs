//! Config value types shared by connectors: durations written as `"10s"`, `"5m"`, `"1h"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in a config file: a number with a unit (`ms`, `s`, `m`, `h`, `d`), as
/// `"500ms"`, `"10s"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl Interval {
    /// Milliseconds (saturating).
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Interval).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\", \"1h\""
            ))
        })
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The request timeout of the HTTP sinks: 30 s.
pub(crate) fn default_request_timeout() -> Interval {
    Interval(Duration::from_secs(30))
}

/// How long the HTTP sinks retry what a server could not take for now: 5 minutes.
pub(crate) fn default_retry_timeout() -> Interval {
    Interval(Duration::from_secs(5 * 60))
}

/// The first wait before a retry of the HTTP sinks: 100 ms.
pub(crate) fn default_retry_backoff() -> Interval {
    Interval(Duration::from_millis(100))
}

/// How long the HTTP sinks let a batch fill: 1 s.
pub(crate) fn default_linger() -> Interval {
    Interval(Duration::from_secs(1))
}

/// Requests in flight at once in the HTTP sinks: 4.
pub(crate) fn default_max_in_flight() -> usize {
    4
}
