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
                v["error"].as_str().unwrap_or(status.as_str())
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

    fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, None)
    }

    /// Runs `cmd` through the API, or says why it needs the data directory itself.
    pub fn run(&self, cmd: Command) -> Result<(), CliError> {
        eprintln!("(via the running worker's API at {})", self.base);
        match cmd {
            Command::Topics(TopicsCommand::List { all }) => {
                super::views::print_topics(&self.get(&format!("/topics?all={all}"))?);
            }
            Command::Topics(TopicsCommand::Describe { name }) => {
                super::views::print_topic(&self.get(&format!("/topics/{name}"))?);
            }
            Command::Topics(TopicsCommand::Create {
                name,
                partitions,
                config,
                if_not_exists,
            }) => {
                let config: serde_json::Map<String, Value> = super::parse_pairs(&config)?
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                let body = json!({ "name": name, "partitions": partitions, "config": config });
                let created = self.call(
                    reqwest::Method::POST,
                    "/topics",
                    Some(("application/json", body.to_string().into_bytes())),
                );
                match created {
                    Err(CliError::Usage(m)) if if_not_exists && m.contains("already exists") => {
                        println!("Topic {name} already exists.");
                    }
                    Err(e) => return Err(e),
                    Ok(_) => println!("Created topic {name} with {partitions} partition(s)."),
                }
            }
            Command::Topics(TopicsCommand::Delete { name }) => {
                self.call(reqwest::Method::DELETE, &format!("/topics/{name}"), None)?;
                println!("Deleted topic {name}.");
            }
            Command::Groups(GroupsCommand::List) => {
                super::views::print_groups(&self.get("/groups")?);
            }
            Command::Groups(GroupsCommand::Describe { group }) => {
                super::views::print_group(&self.get(&format!("/groups/{group}"))?);
            }
            Command::Produce(a) => self.produce(a)?,
            Command::Gen(g) => g.run_remote(self)?,
            Command::Consume(a) => self.consume(a)?,
            Command::Sql(a) if a.execute.is_some() => {
                let sql = a.execute.unwrap_or_default();
                let v = self.call(
                    reqwest::Method::POST,
                    "/sql",
                    Some(("text/plain", sql.into_bytes())),
                )?;
                for r in v["results"].as_array().into_iter().flatten() {
                    match (&r["message"], &r["rows"]) {
                        (Value::String(m), _) => println!("{m}"),
                        (_, Value::Array(rows)) => {
                            for row in rows {
                                println!("{row}");
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "the data directory is owned by a running worker (API at {}); this command needs the directory itself: stop the worker, or use the API",
                    self.base
                )));
            }
        }
        Ok(())
    }

    fn produce(&self, a: produce::ProduceArgs) -> Result<(), CliError> {
        if a.partition.is_some() || a.compression != "none" {
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
            let _ = writeln!(body, "{}", json!({ "key": key, "value": value }));
        }
        let v = self.call(
            reqwest::Method::POST,
            &format!("/topics/{}/records", a.topic),
            Some(("application/x-ndjson", body)),
        )?;
        eprintln!(
            "Produced {} record(s) to {}.",
            v["produced"].as_u64().unwrap_or(0),
            a.topic
        );
        Ok(())
    }

    fn consume(&self, a: consume::ConsumeArgs) -> Result<(), CliError> {
        if a.group.is_some() || a.follow || a.isolation != "read_committed" {
            return Err(CliError::Usage(
                "--group, --follow and --isolation need the data directory; through a running worker's API, consume reads committed records once".into(),
            ));
        }
        let topic = self.get(&format!("/topics/{}", a.topic))?;
        let partitions: Vec<(u32, i64, i64)> = topic["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["partition"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(0),
                    p["log_start_offset"].as_i64().unwrap_or(0),
                    p["last_stable_offset"].as_i64().unwrap_or(0),
                )
            })
            .filter(|(p, _, _)| a.partition.is_none_or(|only| only == *p))
            .collect();
        let mut printed = 0u64;
        let limit = a.max_messages.unwrap_or(u64::MAX);
        let mut out = std::io::stdout().lock();
        for (p, start, end) in partitions {
            let mut offset = match a.offset.as_deref() {
                Some("earliest") | None if a.from_beginning || a.offset.is_some() => start,
                Some("latest") | None => end,
                Some(n) => n
                    .parse()
                    .map_err(|_| CliError::Usage(format!("--offset: '{n}' is not a number")))?,
            };
            while offset < end && printed < limit {
                let v = self.get(&format!(
                    "/topics/{}/records?partition={p}&offset={offset}&limit=1000",
                    a.topic
                ))?;
                let records = v["records"].as_array().cloned().unwrap_or_default();
                if records.is_empty() {
                    break;
                }
                for r in records {
                    if printed >= limit {
                        break;
                    }
                    let line = a.format_line(
                        p,
                        r["offset"].as_i64().unwrap_or_default(),
                        r["timestamp"].as_i64().unwrap_or_default(),
                        r["key"].as_str(),
                        r["value"].as_str(),
                    );
                    writeln!(out, "{line}").map_err(|e| CliError::io("write stdout", e))?;
                    printed += 1;
                }
                offset = v["next_offset"].as_i64().unwrap_or(end);
            }
        }
        Ok(())
    }
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
