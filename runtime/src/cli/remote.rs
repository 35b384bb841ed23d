//! CLI commands against a running worker: when `sluice run` owns the data directory (its
//! lock), the log commands ask the worker's REST API instead (the address is in
//! `<data-dir>/worker.json`; the token in `SLUICE_API_TOKEN`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::{CliError, Command, consume, groups::GroupsCommand, produce, topics::TopicsCommand};

/// A client of one worker's API.
#[derive(Debug)]
pub struct Remote {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Remote {
    /// The API's base URL (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The worker that owns `data_dir`, if it left its address there.
    pub fn find(data_dir: &Path) -> Option<Remote> {
        let text = std::fs::read_to_string(data_dir.join(super::run::WORKER_FILE)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some(Remote {
            base: v["api"].as_str()?.trim_end_matches('/').to_string(),
            token: std::env::var("SLUICE_API_TOKEN").ok(),
            http: reqwest::blocking::Client::new(),
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value, CliError> {
        let (url, mut req) = self.request(method, path);
        if let Some((content_type, b)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(b);
        }
        let resp = req.send().map_err(|e| {
            CliError::Usage(format!(
                "the data directory belongs to a worker whose API ({}) does not answer: {e}",
                self.base
            ))
        })?;
        let status = resp.status();
        let v: Value = resp
            .json_value()
            .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(CliError::Usage(format!(
                "worker API {url}: {}",
                error_message(&v).unwrap_or(status.as_str())
            )));
        }
        Ok(v)
    }

    /// A request to `path` with the token, and its URL.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> (String, reqwest::blocking::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        (url, req)
    }

    /// `GET path` as text (e.g. `/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String, CliError> {
        let (url, req) = self.request(reqwest::Method::GET, path);
        let resp = req
            .send()
            .and_then(reqwest::blocking::Response::error_for_status)
            .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
        resp.text()
            .map_err(|e| CliError::Usage(format!("{url}: {e}")))
    }

    /// Appends NDJSON records (`{"key": …, "value": …}` lines) to a topic.
    pub fn post_records(&self, topic: &str, ndjson: Vec<u8>) -> Result<(), CliError> {
        self.call(
            reqwest::Method::POST,
            &format!("/topics/{topic}/records"),
            Some(("application/x-ndjson", ndjson)),
        )
        .map(drop)
    }

    /// A client of the API at `url` (`http://host:port`).
    pub fn at(url: &str) -> Remote {
        Remote {
            base: url.trim_end_matches('/').to_string(),
            token: std::env::var("SLUICE_API_TOKEN").ok(),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, None)
    }

    /// Runs `cmd` through the API, or says why it needs the data directory itself.
    pub fn run(&self, cmd: Command, log: &super::LogArgs) -> Result<(), CliError> {
        eprintln!("(via the running worker's API at {})", self.base);
        match cmd {
            Command::Topics(t) => self.topics(t.command)?,
            Command::Groups(g) => self.groups(g.command)?,
            Command::Produce(a) => self.produce(a, log.auto_create_topics)?,
            Command::Gen(g) => g.command.run_remote(self)?,
            Command::Consume(a) => self.consume(a)?,
            Command::Sql(a) => super::sql::run_remote(a, self)?,
            _ => {
                return Err(CliError::Usage(format!(
                    "the data directory is owned by a running worker (API at {}); this command needs the directory itself: stop the worker, or use the API",
                    self.base
                )));
            }
        }
        Ok(())
    }

    fn topics(&self, cmd: TopicsCommand) -> Result<(), CliError> {
        match cmd {
            TopicsCommand::List { all } => {
                super::views::print_topics(&self.get(&format!("/topics?all={all}"))?);
            }
            TopicsCommand::Describe { name } => {
                super::views::print_topic(&self.get(&format!("/topics/{}", path(&name)))?);
            }
            TopicsCommand::Create {
                name,
                partitions,
                config,
                if_not_exists,
            } => {
                let config: serde_json::Map<String, Value> = super::parse_pairs(&config)?
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                let body = json!({ "name": name, "partitions": partitions, "config": config });
                let created = self.post_json("/topics", &body);
                match created {
                    Err(CliError::Usage(m)) if if_not_exists && m.contains("already exists") => {
                        println!("Topic {name} already exists.");
                    }
                    Err(e) => return Err(e),
                    Ok(_) => println!("Created topic {name} with {partitions} partition(s)."),
                }
            }
            TopicsCommand::Delete { name } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/topics/{}", path(&name)),
                    None,
                )?;
                println!("Deleted topic {name}.");
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "the data directory is owned by a running worker (API at {}); this command needs the directory itself: stop the worker",
                    self.base
                )));
            }
        }
        Ok(())
    }

    fn groups(&self, cmd: GroupsCommand) -> Result<(), CliError> {
        match cmd {
            GroupsCommand::List => super::views::print_groups(&self.get("/groups")?),
            GroupsCommand::Describe { group } => {
                super::views::print_group(&self.get(&format!("/groups/{}", path(&group)))?);
            }
            GroupsCommand::Delete { group } => {
                let v = self.call(
                    reqwest::Method::DELETE,
                    &format!("/groups/{}", path(&group)),
                    None,
                )?;
                println!("{}", v["message"].as_str().unwrap_or_default());
            }
            GroupsCommand::ResetOffsets {
                group,
                topic,
                to_earliest,
                to_latest,
                to_offset,
                to_datetime,
                shift_by,
                execute,
                dry_run: _,
            } => {
                let body = json!({
                    "topic": topic,
                    "to_earliest": to_earliest,
                    "to_latest": to_latest,
                    "to_offset": to_offset,
                    "to_datetime": to_datetime,
                    "shift_by": shift_by,
                    "execute": execute,
                });
                let v =
                    self.post_json(&format!("/groups/{}/reset-offsets", path(&group)), &body)?;
                let plan: Vec<sluice_log::PartitionReset> = v["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| sluice_log::PartitionReset {
                        partition: p["partition"].as_u64().unwrap_or(0) as u32,
                        old: p["old"].as_i64(),
                        new: p["new"].as_i64().unwrap_or(0),
                    })
                    .collect();
                super::groups::print_reset(&group, &topic, &plan, execute);
            }
        }
        Ok(())
    }

    fn produce(&self, a: produce::ProduceArgs, auto_create: bool) -> Result<(), CliError> {
        if auto_create {
            // As the log does for a local producer: one partition, if missing.
            let body = json!({ "name": a.topic, "partitions": 1 });
            match self.post_json("/topics", &body) {
                Err(CliError::Usage(m)) if m.contains("already exists") => {}
                other => {
                    other?;
                }
            }
        }
        if a.partition.is_some() || a.compression != produce::CompressionArg::None {
            return Err(CliError::Usage(
                "--partition and --compression need the data directory; a running worker's API chooses them".into(),
            ));
        }
        let input: Box<dyn BufRead> = match &a.file {
            Some(f) => Box::new(BufReader::new(
                std::fs::File::open(f)
                    .map_err(|e| CliError::io(format!("open {}", f.display()), e))?,
            )),
            None => Box::new(BufReader::new(std::io::stdin())),
        };
        let headers: Vec<Value> = a
            .headers
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let mut body = Vec::new();
        for (i, line) in input.lines().enumerate() {
            let line = line.map_err(|e| CliError::io(format!("read line {}", i + 1), e))?;
            let (key, value) = match &a.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(k.to_string()), v.to_string()),
                    None => {
                        return Err(CliError::Usage(format!(
                            "line {}: no key separator '{sep}'",
                            i + 1
                        )));
                    }
                },
                None => (None, line),
            };
            let _ = writeln!(
                body,
                "{}",
                json!({ "key": key, "value": value, "headers": headers })
            );
        }
        let v = self.call(
            reqwest::Method::POST,
            &format!("/topics/{}/records", path(&a.topic)),
            Some(("application/x-ndjson", body)),
        )?;
        eprintln!(
            "Produced {} record(s) to {}.",
            v["produced"].as_u64().unwrap_or(0),
            a.topic
        );
        Ok(())
    }

    /// Streams `path` as server-sent events, calling `each(event, data)` until the stream
    /// ends, `each` returns false or `stop` is set (Ctrl-C: looked at every 200 ms, also
    /// while the stream is quiet).
    pub fn stream(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        stop: &std::sync::atomic::AtomicBool,
        mut each: impl FnMut(&str, &str) -> Result<bool, CliError>,
    ) -> Result<(), CliError> {
        let (url, mut req) = self.request(method, path);
        // A stream may stay quiet for long (`--follow`): no overall timeout.
        req = req.timeout(std::time::Duration::from_secs(365 * 24 * 3600));
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req
            .send()
            .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let v = resp
                .json_value()
                .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
            return Err(CliError::Usage(format!(
                "worker API {url}: {}",
                error_message(&v).unwrap_or(status.as_str())
            )));
        }
        // The lines are read on a thread of their own, so that a quiet stream does not keep
        // Ctrl-C waiting; on a stop the thread ends at the stream's next line or keep-alive.
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<String>>(256);
        std::thread::Builder::new()
            .name("sluice-sse".into())
            .spawn(move || {
                for line in BufReader::new(resp).lines() {
                    let failed = line.is_err();
                    if tx.send(line).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| CliError::io("start a thread", e))?;
        let mut event = String::new();
        let mut data = String::new();
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let line = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(line) => line.map_err(|e| CliError::io(format!("read {url}"), e))?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            if line.is_empty() {
                if !data.is_empty() || !event.is_empty() {
                    let go_on = each(&event, &data)?;
                    event.clear();
                    data.clear();
                    if !go_on {
                        return Ok(());
                    }
                }
                continue;
            }
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim_start().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
    }

    /// `POST path` with a JSON body.
    fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(
            reqwest::Method::POST,
            path,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    /// `POST /sql` with statements.
    pub fn post_sql(&self, sql: &str) -> Result<Value, CliError> {
        self.post_json("/sql", &json!({ "sql": sql }))
    }

    fn consume(&self, a: consume::ConsumeArgs) -> Result<(), CliError> {
        // The same query the local command opens its consumer with, as URL parameters.
        let mut url =
            reqwest::Url::parse("http://worker/").map_err(|e| CliError::Usage(e.to_string()))?;
        if let Ok(Value::Object(params)) = serde_json::to_value(a.query()) {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in params {
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        pairs.append_pair(&k, &s);
                    }
                    other => {
                        pairs.append_pair(&k, &other.to_string());
                    }
                }
            }
        }
        let query = url.query().unwrap_or_default().to_string();
        let mut out = std::io::stdout().lock();
        let mut count = 0u64;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            // Ctrl-C ends the stream cleanly, after committing what was printed.
            let stop = std::sync::Arc::clone(&stop);
            let _ = ctrlc::set_handler(move || {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // As a group member the command commits what it printed (every 5 s and at the end)
        // through the stream's session: the worker cannot know what reached the screen.
        let max = a.max_messages.unwrap_or(u64::MAX);
        let mut session: Option<u64> = None;
        let mut printed: std::collections::BTreeMap<u32, i64> = Default::default();
        let mut last_commit = std::time::Instant::now();
        let commit_path = |id: u64| format!("/topics/{}/consume/{id}/commit", path(&a.topic));
        let commit = |id: u64, printed: &std::collections::BTreeMap<u32, i64>| {
            if printed.is_empty() {
                return Ok(());
            }
            let offsets: Vec<Value> = printed
                .iter()
                .map(|(p, o)| json!({ "partition": p, "offset": o }))
                .collect();
            let v = self.post_json(&commit_path(id), &json!({ "offsets": offsets }))?;
            if let Some(moved) = v["not_owned"].as_array().filter(|m| !m.is_empty()) {
                eprintln!(
                    "note: partitions {moved:?} moved to another member of the group before their offsets were committed; it reads them again from the group's last commit"
                );
            }
            Ok::<(), CliError>(())
        };
        let streamed = self.stream(
            reqwest::Method::GET,
            &format!("/topics/{}/consume?{query}", path(&a.topic)),
            None,
            &stop,
            |event, data| match event {
                "session" => {
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    session = v["session"].as_u64();
                    Ok(true)
                }
                "record" => {
                    let r: Value = serde_json::from_str(data)
                        .map_err(|e| CliError::Usage(format!("a record event: {e}")))?;
                    let line = a.format_line(&consume::Printed {
                        partition: r["partition"].as_u64().unwrap_or(0) as u32,
                        offset: r["offset"].as_i64().unwrap_or_default(),
                        timestamp: r["timestamp"].as_i64().unwrap_or_default(),
                        key: r["key"].as_str(),
                        value: r["value"].as_str(),
                        headers: r["headers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|h| (h["key"].as_str().unwrap_or_default(), h["value"].as_str()))
                            .collect(),
                    });
                    match writeln!(out, "{line}").and_then(|()| out.flush()) {
                        Ok(()) => {
                            count += 1;
                            printed.insert(
                                r["partition"].as_u64().unwrap_or(0) as u32,
                                r["offset"].as_i64().unwrap_or_default() + 1,
                            );
                            if let Some(id) = session {
                                if last_commit.elapsed() >= std::time::Duration::from_secs(5) {
                                    commit(id, &printed)?;
                                    last_commit = std::time::Instant::now();
                                }
                            }
                            Ok(count < max)
                        }
                        // `| head`: stop reading (what was printed is committed).
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
                        Err(e) => Err(CliError::io("write stdout", e)),
                    }
                }
                "caught_up" => Ok(a.follow),
                "error" => Err(CliError::Usage(format!("worker API: {data}"))),
                _ => Ok(event != "end"),
            },
        );
        let _ = out.flush();
        // Committed even when the stream failed: what was printed was printed.
        if let Some(id) = session {
            commit(id, &printed)?;
        }
        streamed?;
        eprintln!("Consumed {count} record(s).");
        Ok(())
    }
}

/// A path segment or query value with the characters URLs reserve escaped.
pub fn path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The message of an error answer (`message`, or the older `error`).
pub fn error_message(v: &Value) -> Option<&str> {
    v["message"].as_str().or_else(|| v["error"].as_str())
}

/// Reads a response body as JSON (an empty or non-JSON body becomes `{"error": text}`).
trait JsonValue {
    fn json_value(self) -> reqwest::Result<Value>;
}

impl JsonValue for reqwest::blocking::Response {
    fn json_value(self) -> reqwest::Result<Value> {
        let text = self.text()?;
        Ok(serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text })))
    }
}
