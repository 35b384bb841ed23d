//! What the HTTP connectors share: URLs and errors shown without their secrets, header maps
//! from config, clients that trust an extra CA, and the retry schedule (exponential backoff
//! with jitter, bounded by a deadline).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{ConnectorError, Result};

/// `url` with its password and query values replaced, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            if let Some(query) = u.query() {
                // Names stay, values go; an item without `=` (a bare token) goes whole.
                let shown: Vec<String> = query
                    .split('&')
                    .map(|item| match item.split_once('=') {
                        Some((name, _)) => format!("{name}=redacted"),
                        None => "redacted".to_string(),
                    })
                    .collect();
                u.set_query(Some(&shown.join("&")));
            }
            u.to_string()
        }
        // Not a URL: shown as written (only a URL's parts can be told apart).
        Err(_) => url.to_string(),
    }
}

/// An error and its causes, `a: b: c` (reqwest's own message often hides the cause).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let message = c.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = c.source();
    }
    text
}

/// An http(s) URL from config; the error shows it redacted.
pub(crate) fn http_url(url: &str) -> Result<Url> {
    let bad = |why: String| ConnectorError::Config(format!("url '{}': {why}", redact_url(url)));
    let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme must be http or https, not {}",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

/// Headers from config. Values are marked sensitive (kept out of reqwest's Debug) and never
/// quoted in errors: they usually hold a credential.
pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let key = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
            ConnectorError::Config(format!("headers: '{name}' is not a header name ({e})"))
        })?;
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            ConnectorError::Config(format!(
                "headers.{name}: the value holds characters a header cannot (control characters or non-ASCII)"
            ))
        })?;
        v.set_sensitive(true);
        map.insert(key, v);
    }
    Ok(map)
}

/// Reads a PEM file of CA certificates to trust besides the system's.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|e| ConnectorError::io("read the CA file", path, e))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        ConnectorError::Config(format!(
            "tls-ca-file {}: not PEM certificates ({})",
            path.display(),
            describe(&e)
        ))
    })?;
    if certs.is_empty() {
        return Err(ConnectorError::Config(format!(
            "tls-ca-file {}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// An async client: a request timeout, default headers, and extra trusted CAs.
pub(crate) fn client(
    timeout: Duration,
    headers: HeaderMap,
    cas: &[reqwest::Certificate],
) -> Result<reqwest::Client> {
    // Redirects are not followed: a 301/302/303 would turn a POST into a GET without its
    // body (and headers such as API keys would go to another host), so the sink would count
    // records as written that never were. A 3xx is an error that names the new location.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers);
    for ca in cas {
        builder = builder.add_root_certificate(ca.clone());
    }
    builder.build().map_err(|e| {
        ConnectorError::Config(format!("cannot build the HTTP client: {}", describe(&e)))
    })
}

/// Waits `delay` in steps of at most 50 ms, ending early when `stop` stops.
pub(crate) async fn pause(delay: Duration, stop: Option<&sluice_task::StopToken>) {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.is_some_and(sluice_task::StopToken::is_stopped) {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

/// The batching and retry settings the HTTP sinks share: the first that is not positive,
/// named by its key.
pub(crate) fn check_delivery(
    batch_records: usize,
    batch_bytes: usize,
    max_in_flight: usize,
    request_timeout: Duration,
    retry_timeout: Duration,
    retry_backoff: Duration,
) -> std::result::Result<(), String> {
    let checks = [
        ("batch-records", batch_records > 0),
        ("batch-bytes", batch_bytes > 0),
        ("max-in-flight", max_in_flight > 0),
        ("request-timeout", !request_timeout.is_zero()),
        ("retry-timeout", !retry_timeout.is_zero()),
        ("retry-backoff", !retry_backoff.is_zero()),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((key, _)) => Err(format!("{key} must be positive")),
        None => Ok(()),
    }
}

/// How long retries go on after the task was told to stop: enough to finish a round a
/// server is slowly taking (so the epoch commits), not a `retry-timeout`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The waits between attempts of one piece of work: exponential from `first` up to 30 s,
/// with jitter, until `deadline` (the work's `retry-timeout` after its first failure), or
/// until [`STOP_GRACE`] after the task's stop token stopped.
#[derive(Debug)]
pub(crate) struct Retry {
    delays: backon::ExponentialBackoff,
    timeout: Duration,
    deadline: Instant,
    stop: Option<sluice_task::StopToken>,
    stop_seen: Option<Instant>,
}

impl Retry {
    /// A schedule starting now.
    pub(crate) fn new(
        first: Duration,
        timeout: Duration,
        stop: Option<&sluice_task::StopToken>,
    ) -> Retry {
        Retry {
            delays: backon::ExponentialBuilder::default()
                .with_min_delay(first)
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build(),
            timeout,
            deadline: Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400)),
            stop: stop.cloned(),
            stop_seen: None,
        }
    }

    /// The next wait, or `None` when the deadline has passed (the caller gives up and
    /// reports the last error, see [`Retry::ended`]). A wait never ends past the deadline.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let mut deadline = self.deadline;
        if self
            .stop
            .as_ref()
            .is_some_and(sluice_task::StopToken::is_stopped)
        {
            let seen = *self.stop_seen.get_or_insert_with(Instant::now);
            deadline = deadline.min(seen + STOP_GRACE);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(self.delays.next().unwrap_or(left).min(left))
    }

    /// Why the schedule ended (after [`Retry::next_delay`] said `None`), for the error:
    /// the task stopped, or `retry-timeout` passed.
    pub(crate) fn ended(&self) -> String {
        if self.stop_seen.is_some() {
            "the task stopped".to_string()
        } else {
            format!(
                "retry-timeout {} passed",
                humantime::format_duration(self.timeout)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_and_stop_at_the_deadline() {
        let mut r = Retry::new(Duration::from_millis(10), Duration::from_millis(200), None);
        let first = r.next_delay().unwrap();
        assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(40));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(r.next_delay(), None);
    }

    #[test]
    fn urls_and_headers_are_shown_without_secrets() {
        assert_eq!(redact_url("http://u:s3cret@h/x"), "http://u:redacted@h/x");
        assert_eq!(
            redact_url("http://h/x?token=s3cret"),
            "http://h/x?token=redacted"
        );
        let e = http_url("ftp://u:s3cret@h/").unwrap_err().to_string();
        assert!(e.contains("http or https") && !e.contains("s3cret"), "{e}");
        let headers = BTreeMap::from([("X-Key".to_string(), "a\nb s3cret".to_string())]);
        let e = header_map(&headers).unwrap_err().to_string();
        assert!(e.contains("headers.X-Key") && !e.contains("s3cret"), "{e}");
    }
}
