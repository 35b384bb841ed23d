//! A WebHDFS server in the process, written from the Hadoop WebHDFS REST documentation, for
//! `sluice bench sink --to webhdfs` and the tests (no HDFS can be installed on the machines
//! that run them). A namenode and a datanode on two loopback ports, files in memory:
//!
//! - the two-step `CREATE`: the namenode names a datanode (in a JSON body with
//!   `noredirect=true`, else by a 307), the datanode takes the data; `OPEN` the same way;
//! - `MKDIRS`, `RENAME` (`false`, not an error, when the source is missing, the destination
//!   exists or its folder does not), `DELETE`, `CONCAT` (sources non-empty),
//!   `LISTSTATUS`, `LISTSTATUS_BATCH`, `GETFILESTATUS`;
//! - errors as Hadoop's `RemoteException` JSON with its status codes;
//! - leases: a datanode write that breaks (see [`WebHdfs::break_writes`]) leaves its file
//!   under construction, and creating it again fails with `AlreadyBeingCreatedException`.
//!
//! Not a file system to keep data in: no permissions, replication or block sizes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};

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

#[derive(Debug, Default)]
struct Fs {
    nodes: Mutex<BTreeMap<String, Node>>,
    /// Datanode writes still to break (each leaves its file under construction).
    break_writes: AtomicUsize,
    /// Every mutating operation: `(op, path)`.
    log: Mutex<Vec<(String, String)>>,
    datanode: Mutex<String>,
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct WebHdfs {
    namenode: u16,
    fs: Arc<Fs>,
    _runtime: tokio::runtime::Runtime,
}

impl WebHdfs {
    /// Starts the namenode and the datanode on free loopback ports.
    pub fn start() -> std::io::Result<WebHdfs> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let fs = Arc::new(Fs::default());
        fs.nodes.lock().insert("/".into(), Node::Dir);
        let nn = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let dn = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let namenode = nn.local_addr()?.port();
        *fs.datanode.lock() = format!("http://127.0.0.1:{}", dn.local_addr()?.port());
        let nn_app = axum::Router::new()
            .fallback(namenode_op)
            .with_state(fs.clone());
        // Blocks are whole objects' halves: no 2 MB default limit.
        let dn_app = axum::Router::new()
            .fallback(datanode_op)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(fs.clone());
        runtime.spawn(async move { axum::serve(nn, nn_app).await });
        runtime.spawn(async move { axum::serve(dn, dn_app).await });
        Ok(WebHdfs {
            namenode,
            fs,
            _runtime: runtime,
        })
    }

    /// The sink URL of `path` on this server: `webhdfs://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("webhdfs://127.0.0.1:{}{path}", self.namenode)
    }

    /// The namenode's HTTP address, `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.namenode)
    }

    /// Makes the next `n` datanode writes break half way, leaving their files under
    /// construction (with a lease).
    pub fn break_writes(&self, n: usize) {
        self.fs.break_writes.store(n, Ordering::SeqCst);
    }

    /// Every mutating operation so far, `(op, path)`; a datanode's write is `CREATE-DATA`.
    pub fn operations(&self) -> Vec<(String, String)> {
        self.fs.log.lock().clone()
    }
}

/// The files under `dir` of the namenode at `http` (`http://host:port`), by path relative
/// to `dir`: their contents, read through the REST API (`LISTSTATUS`, then `OPEN`, which
/// redirects to a datanode). Works with a real cluster too.
pub fn tree(http: &str, dir: &str, user: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let client = reqwest::blocking::Client::new();
    let dir = dir.trim_end_matches('/');
    let get = |url: String| {
        client
            .get(&url)
            .send()
            .map_err(|e| format!("GET {url}: {e}"))
    };
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(sub) = todo.pop() {
        let answer = get(format!(
            "{http}/webhdfs/v1{dir}{sub}?op=LISTSTATUS&user.name={user}"
        ))?;
        if answer.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let listing: Value = answer
            .bytes()
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("LISTSTATUS {dir}{sub}: {e}"))?;
        let statuses = listing["FileStatuses"]["FileStatus"]
            .as_array()
            .ok_or_else(|| format!("LISTSTATUS {dir}{sub}: {listing}"))?;
        for st in statuses {
            let name = format!("{sub}/{}", st["pathSuffix"].as_str().unwrap_or_default());
            if st["type"] == "DIRECTORY" {
                todo.push(name);
            } else {
                let data = get(format!(
                    "{http}/webhdfs/v1{dir}{name}?op=OPEN&user.name={user}"
                ))?
                .bytes()
                .map_err(|e| format!("OPEN {dir}{name}: {e}"))?;
                out.insert(name[1..].to_string(), data.to_vec());
            }
        }
    }
    Ok(out)
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
/// The HDFS path and the upper-case `op` of a request, or the answer to a path outside
/// `/webhdfs/v1`.
fn target(uri: &Uri, q: &BTreeMap<String, String>) -> Result<(String, String), Box<Response>> {
    let Some(path) = hdfs_path(uri) else {
        return Err(Box::new(remote(
            StatusCode::NOT_FOUND,
            "FileNotFoundException",
            format!("no such resource {}", uri.path()),
        )));
    };
    let op = q
        .get("op")
        .map_or(String::new(), |o| o.to_ascii_uppercase());
    Ok((path, op))
}

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
    String::from_utf8_lossy(&out).into_owned()
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
    let (path, op) = match target(&uri, &q) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
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
                if let Some(node) = nodes.remove(&path) {
                    nodes.insert(to, node);
                }
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
    let (path, op) = match target(&uri, &q) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
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
