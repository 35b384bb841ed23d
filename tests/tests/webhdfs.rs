//! The object-store sink on HDFS (`webhdfs://`). No HDFS can be installed on these machines,
//! so the tests run against a WebHDFS server written here from the Hadoop WebHDFS REST
//! documentation: a namenode and a datanode on two ports, the two-step `CREATE` (the
//! namenode names the datanode, with `noredirect=true` in a JSON body, else by a 307), `OPEN`,
//! `MKDIRS`, `RENAME` (false when the destination exists), `DELETE`, `CONCAT`, `LISTSTATUS`,
//! `LISTSTATUS_BATCH`, `GETFILESTATUS`, errors as Hadoop's `RemoteException` JSON, and
//! leases: a file whose write broke stays under construction, and creating it again fails
//! with `AlreadyBeingCreatedException` until its lease expires.
//!
//! With `SLUICE_TEST_WEBHDFS_URL=webhdfs://namenode:9870/some/dir` set, the contract test
//! also runs against that real cluster (user from `SLUICE_TEST_WEBHDFS_USER`, default
//! `hdfs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sluice_connectors::Sink;
use sluice_connectors::objstore::{ObjectStoreSink, ObjectStoreSinkConfig};
use sluice_log::ConsumerRecord;

/// A file or a directory.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    File {
        data: Vec<u8>,
        /// Under construction: its write broke and its lease has not expired.
        leased: bool,
    },
}

#[derive(Default)]
struct Fs {
    nodes: Mutex<BTreeMap<String, Node>>,
    /// Datanode writes still to break (each leaves its file under construction).
    break_writes: AtomicUsize,
    /// Every mutating operation: `(op, path)`.
    log: Mutex<Vec<(String, String)>>,
    datanode: Mutex<String>,
}

struct WebHdfs {
    namenode: u16,
    fs: Arc<Fs>,
    _runtime: tokio::runtime::Runtime,
}

impl WebHdfs {
    fn start() -> WebHdfs {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fs = Arc::new(Fs::default());
        fs.nodes.lock().insert("/".into(), Node::Dir);
        let bind = || {
            runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap()
        };
        let (nn, dn) = (bind(), bind());
        let namenode = nn.local_addr().unwrap().port();
        *fs.datanode.lock() = format!("http://127.0.0.1:{}", dn.local_addr().unwrap().port());
        let nn_app = axum::Router::new()
            .fallback(namenode_op)
            .with_state(fs.clone());
        let dn_app = axum::Router::new()
            .fallback(datanode_op)
            .with_state(fs.clone());
        runtime.spawn(async move { axum::serve(nn, nn_app).await });
        runtime.spawn(async move { axum::serve(dn, dn_app).await });
        WebHdfs {
            namenode,
            fs,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("webhdfs://127.0.0.1:{}{path}", self.namenode)
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.namenode)
    }
}

/// The files under `dir` of the namenode at `http` (`http://host:port`), by path relative
/// to `dir`: their contents, read through the REST API (`LISTSTATUS`, then `OPEN`, which
/// redirects to a datanode).
fn tree(http: &str, dir: &str, user: &str) -> BTreeMap<String, Vec<u8>> {
    let client = reqwest::blocking::Client::new();
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(sub) = todo.pop() {
        let at = format!("{}{sub}", dir.trim_end_matches('/'));
        let answer = client
            .get(format!(
                "{http}/webhdfs/v1{at}?op=LISTSTATUS&user.name={user}"
            ))
            .send()
            .unwrap();
        if answer.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let listing: Value = serde_json::from_str(&answer.text().unwrap()).unwrap();
        for st in listing["FileStatuses"]["FileStatus"].as_array().unwrap() {
            let name = format!("{sub}/{}", st["pathSuffix"].as_str().unwrap());
            if st["type"] == "DIRECTORY" {
                todo.push(name);
            } else {
                let data = client
                    .get(format!(
                        "{http}/webhdfs/v1{}{name}?op=OPEN&user.name={user}",
                        dir.trim_end_matches('/')
                    ))
                    .send()
                    .unwrap()
                    .bytes()
                    .unwrap();
                out.insert(name[1..].to_string(), data.to_vec());
            }
        }
    }
    out
}

fn remote(status: StatusCode, exception: &str, message: String) -> Response {
    let class = match exception {
        "FileNotFoundException" => "java.io.FileNotFoundException".to_string(),
        "IllegalArgumentException" => "java.lang.IllegalArgumentException".to_string(),
        other => format!("org.apache.hadoop.hdfs.protocol.{other}"),
    };
    (
        status,
        [("content-type", "application/json")],
        json!({"RemoteException": {"exception": exception, "javaClassName": class, "message": message}})
            .to_string(),
    )
        .into_response()
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `/webhdfs/v1/a/b` → `/a/b`.
fn hdfs_path(uri: &Uri) -> Option<String> {
    let p = uri.path().strip_prefix("/webhdfs/v1")?;
    let p = percent_decode(p);
    let trimmed = p.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_string()
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn parent(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".into(),
        Some((p, _)) => p.to_string(),
    }
}

fn status_of(name: &str, node: &Node) -> Value {
    let (kind, len) = match node {
        Node::Dir => ("DIRECTORY", 0),
        Node::File { data, .. } => ("FILE", data.len()),
    };
    json!({"pathSuffix": name, "type": kind, "length": len, "owner": "hdfs", "group": "supergroup",
        "permission": "755", "accessTime": 0, "modificationTime": 1_700_000_000_000_i64,
        "blockSize": 134_217_728, "replication": 1, "fileId": 1, "childrenNum": 0})
}

fn mkdirs(nodes: &mut BTreeMap<String, Node>, path: &str) {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        nodes.entry(at.clone()).or_insert(Node::Dir);
    }
}

async fn namenode_op(
    State(fs): State<Arc<Fs>>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    _headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let Some(path) = hdfs_path(&uri) else {
        return remote(
            StatusCode::NOT_FOUND,
            "FileNotFoundException",
            format!("no such resource {}", uri.path()),
        );
    };
    let op = q
        .get("op")
        .cloned()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let missing = || {
        remote(
            StatusCode::NOT_FOUND,
            "FileNotFoundException",
            format!("File does not exist: {path}"),
        )
    };
    let mut nodes = fs.nodes.lock();
    if method != Method::GET {
        fs.log.lock().push((op.clone(), path.clone()));
    }
    match (method.as_str(), op.as_str()) {
        ("PUT", "CREATE") | ("GET", "OPEN") => {
            if op == "OPEN" && !matches!(nodes.get(&path), Some(Node::File { .. })) {
                return missing();
            }
            // Step one: the namenode names a datanode.
            let location = format!(
                "{}{}?{}",
                fs.datanode.lock(),
                uri.path(),
                uri.query().unwrap_or_default()
            );
            if q.get("noredirect").is_some_and(|v| v == "true") {
                json_ok(json!({"Location": location}))
            } else {
                (StatusCode::TEMPORARY_REDIRECT, [("location", location)], "").into_response()
            }
        }
        ("PUT", "MKDIRS") => {
            if matches!(nodes.get(&path), Some(Node::File { .. })) {
                return remote(
                    StatusCode::FORBIDDEN,
                    "FileAlreadyExistsException",
                    format!("Path is not a directory: {path}"),
                );
            }
            mkdirs(&mut nodes, &path);
            json_ok(json!({"boolean": true}))
        }
        ("PUT", "RENAME") => {
            let to = q.get("destination").cloned().unwrap_or_default();
            // HDFS's rename: false (not an error) when the source is missing or the
            // destination exists.
            let ok = matches!(nodes.get(&path), Some(Node::File { leased: false, .. }))
                && !nodes.contains_key(&to)
                && matches!(nodes.get(&parent(&to)), Some(Node::Dir));
            if ok {
                let node = nodes.remove(&path).unwrap();
                nodes.insert(to, node);
            }
            json_ok(json!({"boolean": ok}))
        }
        ("DELETE", "DELETE") => {
            let recursive = q.get("recursive").is_some_and(|v| v == "true");
            let children = nodes.keys().any(|k| k.starts_with(&format!("{path}/")));
            if children && !recursive {
                return remote(
                    StatusCode::FORBIDDEN,
                    "PathIsNotEmptyDirectoryException",
                    format!("{path} is non empty"),
                );
            }
            let existed = nodes.remove(&path).is_some();
            nodes.retain(|k, _| !k.starts_with(&format!("{path}/")));
            json_ok(json!({"boolean": existed}))
        }
        ("POST", "CONCAT") => {
            let sources: Vec<String> = q
                .get("sources")
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let Some(Node::File { leased: false, .. }) = nodes.get(&path) else {
                return missing();
            };
            let mut appended = Vec::new();
            for s in &sources {
                match nodes.get(s) {
                    Some(Node::File {
                        data,
                        leased: false,
                    }) if !data.is_empty() => appended.extend_from_slice(data),
                    _ => {
                        return remote(
                            StatusCode::BAD_REQUEST,
                            "IllegalArgumentException",
                            format!(
                                "concat: source file {s} is invalid or empty or underConstruction"
                            ),
                        );
                    }
                }
            }
            for s in &sources {
                nodes.remove(s);
            }
            if let Some(Node::File { data, .. }) = nodes.get_mut(&path) {
                data.extend_from_slice(&appended);
            }
            (StatusCode::OK, "").into_response()
        }
        ("GET", "GETFILESTATUS") => match nodes.get(&path) {
            Some(n) => json_ok(json!({"FileStatus": status_of("", n)})),
            None => missing(),
        },
        ("GET", "LISTSTATUS") | ("GET", "LISTSTATUS_BATCH") => {
            match nodes.get(&path) {
                None => return missing(),
                Some(n @ Node::File { .. }) => {
                    let list = json!({"FileStatuses": {"FileStatus": [status_of("", n)]}});
                    return json_ok(list);
                }
                Some(Node::Dir) => {}
            }
            let prefix = if path == "/" {
                "/".to_string()
            } else {
                format!("{path}/")
            };
            let children: Vec<Value> = nodes
                .iter()
                .filter_map(|(k, n)| {
                    let name = k.strip_prefix(&prefix)?;
                    (!name.is_empty() && !name.contains('/')).then(|| status_of(name, n))
                })
                .collect();
            let statuses = json!({"FileStatuses": {"FileStatus": children}});
            if op == "LISTSTATUS" {
                json_ok(statuses)
            } else {
                json_ok(
                    json!({"DirectoryListing": {"partialListing": statuses, "remainingEntries": 0}}),
                )
            }
        }
        _ => remote(
            StatusCode::BAD_REQUEST,
            "IllegalArgumentException",
            format!("Invalid value for webhdfs parameter \"op\": {op} ({method})"),
        ),
    }
}

async fn datanode_op(
    State(fs): State<Arc<Fs>>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = hdfs_path(&uri).unwrap();
    let op = q
        .get("op")
        .cloned()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut nodes = fs.nodes.lock();
    match (method.as_str(), op.as_str()) {
        ("PUT", "CREATE") => {
            fs.log.lock().push(("CREATE-DATA".into(), path.clone()));
            match nodes.get(&path) {
                Some(Node::File { leased: true, .. }) => {
                    return remote(
                        StatusCode::FORBIDDEN,
                        "AlreadyBeingCreatedException",
                        format!(
                            "Failed to CREATE_FILE {path}: the file is under construction by another client (lease)"
                        ),
                    );
                }
                Some(Node::File { .. }) if q.get("overwrite").is_none_or(|v| v != "true") => {
                    return remote(
                        StatusCode::FORBIDDEN,
                        "FileAlreadyExistsException",
                        format!("{path} already exists"),
                    );
                }
                Some(Node::Dir) => {
                    return remote(
                        StatusCode::FORBIDDEN,
                        "FileAlreadyExistsException",
                        format!("{path} is a directory"),
                    );
                }
                _ => {}
            }
            mkdirs(&mut nodes, &parent(&path));
            // A write that breaks half way leaves its file under construction.
            let broken = fs
                .break_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if broken {
                nodes.insert(
                    path,
                    Node::File {
                        data: body[..body.len() / 2].to_vec(),
                        leased: true,
                    },
                );
                return remote(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "IOException",
                    "Connection reset by peer".into(),
                );
            }
            nodes.insert(
                path.clone(),
                Node::File {
                    data: body.to_vec(),
                    leased: false,
                },
            );
            (
                StatusCode::CREATED,
                [("location", format!("hdfs://127.0.0.1{path}"))],
                "",
            )
                .into_response()
        }
        ("GET", "OPEN") => match nodes.get(&path) {
            Some(Node::File { data, .. }) => {
                let offset: usize = q
                    .get("offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    .min(data.len());
                let length: usize = q
                    .get("length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                let end = offset.saturating_add(length).min(data.len());
                (StatusCode::OK, data[offset..end].to_vec()).into_response()
            }
            _ => remote(
                StatusCode::NOT_FOUND,
                "FileNotFoundException",
                format!("File does not exist: {path}"),
            ),
        },
        _ => remote(
            StatusCode::BAD_REQUEST,
            "IllegalArgumentException",
            format!("datanode: unexpected {method} {op}"),
        ),
    }
}

fn config(url: &str, extra: Value) -> ObjectStoreSinkConfig {
    let mut c = json!({"url": url, "flush-records": 3, "flush-idle": "0s", "retry-timeout": "5s"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn rec(offset: i64, value: &str) -> ConsumerRecord {
    ConsumerRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp: 1_700_000_000_000 + offset,
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
    }
}

/// `(object name, line)` of every object under `dir` but the upload blocks.
fn lines(files: &BTreeMap<String, Vec<u8>>) -> Vec<(String, String)> {
    files
        .iter()
        .filter(|(name, _)| !name.starts_with(".sluice-tmp/"))
        .flat_map(|(name, data)| {
            String::from_utf8(data.clone())
                .unwrap()
                .lines()
                .map(|l| (name.clone(), l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_sink_writes_hdfs_through_webhdfs_and_replays_idempotently() {
    let hdfs = WebHdfs::start();
    sluice_connectors::conformance::sink_replays_are_idempotent(
        &|i| {
            let c = config(&hdfs.url(&format!("/lake/env{i}")), json!({}));
            Box::new(ObjectStoreSink::new(c, Path::new(".")).unwrap())
        },
        &|i| lines(&tree(&hdfs.http(), &format!("/lake/env{i}"), "sluice")),
    );
    let files = tree(&hdfs.http(), "/lake/env0", "sluice");
    assert!(
        files.contains_key("t/0/00000000000000000000.jsonl"),
        "{:?}",
        files.keys()
    );
    // Objects reach their names only by RENAME: no CREATE ever wrote one in place.
    let log = hdfs.fs.log.lock();
    let created: BTreeSet<&String> = log
        .iter()
        .filter(|(op, _)| op == "CREATE-DATA")
        .map(|(_, p)| p)
        .collect();
    assert!(
        created.iter().all(|p| p.contains("/.sluice-tmp/")),
        "{created:?}"
    );
    assert!(
        log.iter()
            .any(|(op, p)| op == "RENAME" && p.contains("/.sluice-tmp/"))
    );
    assert!(log.iter().any(|(op, _)| op == "CONCAT"));
}

#[test]
fn a_write_that_breaks_leaves_no_lease_on_the_object() {
    let hdfs = WebHdfs::start();
    let c = config(&hdfs.url("/lake/broken"), json!({}));
    let records: Vec<ConsumerRecord> = (0..3).map(|o| rec(o, &format!("{{\"n\":{o}}}"))).collect();
    // The first block's write breaks half way: its file stays under construction, with a
    // lease, and the upload fails.
    hdfs.fs.break_writes.store(1, Ordering::SeqCst);
    let mut sink = ObjectStoreSink::new(c.clone(), Path::new(".")).unwrap();
    sink.open(None).unwrap();
    let e = sink.write(&records).and_then(|_| sink.flush());
    assert!(e.is_err(), "the broken write is an error");
    let e = e.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // The error says what the namenode said (Hadoop's RemoteException).
    let text = e.to_string();
    assert!(
        text.contains("AlreadyBeingCreatedException") || text.contains("Connection reset"),
        "{text}"
    );
    // The replay (a new attempt) writes fresh blocks and the object lands whole.
    // Dropped now: a failed attempt's sink is done with (it may hold the upload's other
    // block in flight).
    drop(sink);
    let mut sink = ObjectStoreSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    sink.write(&records).unwrap();
    let durable = sink.flush().unwrap();
    assert_eq!(durable.get(&0), Some(&3));
    let files = tree(&hdfs.http(), "/lake/broken", "sluice");
    assert_eq!(
        String::from_utf8(files["t/0/00000000000000000000.jsonl"].clone()).unwrap(),
        "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
    );
    // The broken block is left in the temporary folder, under its lease (and the other
    // block of its upload, if the abort could not delete it).
    let left = files
        .keys()
        .filter(|k| k.starts_with(".sluice-tmp/"))
        .count();
    assert!((1..=2).contains(&left), "{left} blocks left");
}

#[test]
fn hdfs_urls_and_options_are_checked() {
    let new = |url: &str, extra: Value| {
        ObjectStoreSink::new(config(url, extra), Path::new("."))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert!(
        new("hdfs://nn:8020/x", json!({}))
            .unwrap_err()
            .contains("use the namenode's WebHDFS")
    );
    assert!(
        new("webhdfs:///x", json!({}))
            .unwrap_err()
            .contains("names no namenode")
    );
    assert!(
        new("webhdfs://nn:9870/x", json!({"options": {"region": "x"}}))
            .unwrap_err()
            .contains("options.region is not a WebHDFS setting")
    );
    new(
        "webhdfs://nn:9870/x",
        json!({"options": {"user-name": "etl"}}),
    )
    .unwrap();
}

#[test]
fn a_real_cluster_when_one_is_named() {
    let Ok(url) = std::env::var("SLUICE_TEST_WEBHDFS_URL") else {
        eprintln!(
            "SLUICE_TEST_WEBHDFS_URL is not set: no real HDFS to test against (see the README)"
        );
        return;
    };
    let user = std::env::var("SLUICE_TEST_WEBHDFS_USER").unwrap_or_else(|_| "hdfs".into());
    let run = format!(
        "{}/sluice-test-{}",
        url.trim_end_matches('/'),
        std::process::id()
    );
    let rest = run.strip_prefix("webhdfs://").expect("a webhdfs:// url");
    let (host, dir) = rest.split_once('/').expect("webhdfs://namenode:port/dir");
    let http = format!("http://{host}");
    sluice_connectors::conformance::sink_replays_are_idempotent(
        &|i| {
            let c = config(
                &format!("{run}/env{i}"),
                json!({"options": {"user-name": user}}),
            );
            Box::new(ObjectStoreSink::new(c, Path::new(".")).unwrap())
        },
        &|i| lines(&tree(&http, &format!("/{dir}/env{i}"), &user)),
    );
}
