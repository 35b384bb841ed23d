//! The Elasticsearch / OpenSearch sink against real ES-API servers the harness starts on
//! loopback (scripts/setup.sh installs them): `osmem-server` (OpenSearch 3 API) and
//! `noida-db` (reports Elasticsearch 8.15). A proxy written here stands between the sink and
//! a server where a test needs the network to misbehave (a 429 storm) or to check what the
//! sink sends (credentials, compatibility headers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sluice_connectors::Sink;
use sluice_connectors::elasticsearch::{ElasticsearchSink, ElasticsearchSinkConfig};
use sluice_log::{ConsumerRecord, Log, LogOptions, ProducerConfig, Record, TopicPartition};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// osmem-server: the OpenSearch 3 API.
    Osmem,
    /// noida-db: reports Elasticsearch 8.15, takes its compatibility headers.
    Noida,
}

/// An ES-API server, killed when dropped.
pub(crate) struct EsServer {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl EsServer {
    pub(crate) fn start(kind: Kind) -> EsServer {
        let site = std::fs::read_dir(crate::common::venv().join("lib"))
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("site-packages"))
            .unwrap_or_default();
        let data = tempfile::tempdir().unwrap();
        let port = crate::common::free_port();
        let (bin, args): (PathBuf, Vec<String>) = match kind {
            Kind::Osmem => (
                site.join("osmem_server/bin/osmem-server"),
                vec![
                    "-addr".into(),
                    format!("127.0.0.1:{port}"),
                    "-no-stdin-watch".into(),
                    "-no-ja".into(),
                ],
            ),
            Kind::Noida => (
                site.join("noida_db/noida-db"),
                vec![
                    "start".into(),
                    "--data-dir".into(),
                    data.path().display().to_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--only".into(),
                    "elasticsearch".into(),
                    "--elasticsearch-port".into(),
                    port.to_string(),
                ],
            ),
        };
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh, which installs the Elasticsearch-API servers these tests start",
            bin.display()
        );
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut server = EsServer {
            child,
            port,
            _data: data,
        };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client
                .get(server.url())
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{} exited before answering: {status}", bin.display());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer in 60 s",
                bin.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every document of `index`: id → source (empty when the index does not exist).
    pub(crate) fn docs(&self, index: &str) -> BTreeMap<String, Value> {
        let client = reqwest::blocking::Client::new();
        let _ = client
            .post(format!("{}/{index}/_refresh", self.url()))
            .send();
        let answer: Value = client
            .post(format!("{}/{index}/_search", self.url()))
            .header("content-type", "application/json")
            .body(json!({"size": 10000, "query": {"match_all": {}}}).to_string())
            .send()
            .unwrap()
            .text()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        if answer["status"] == 404 {
            return BTreeMap::new();
        }
        let hits = answer["hits"]["hits"]
            .as_array()
            .unwrap_or_else(|| panic!("search {index}: {answer}"));
        assert!(hits.len() < 10000, "the test reads at most 9999 documents");
        hits.iter()
            .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
            .collect()
    }

    /// `PUT`s a JSON body.
    fn put(&self, path: &str, body: &Value) {
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{path}", self.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "PUT {path}: {}", r.text().unwrap());
    }
}

impl Drop for EsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sink config with `extra` keys.
fn config(url: &str, index: &str, extra: Value) -> ElasticsearchSinkConfig {
    let mut c = json!({"url": url, "index": index});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn record(partition: u32, offset: i64, key: Option<&str>, value: Option<&str>) -> ConsumerRecord {
    ConsumerRecord {
        topic: "t".into(),
        partition,
        offset,
        timestamp: 1_795_996_770_000 + offset,
        key: key.map(|k| Bytes::from(k.to_string())),
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: Vec::new(),
    }
}

#[test]
fn the_sink_replays_idempotently_on_both_servers() {
    for kind in [Kind::Osmem, Kind::Noida] {
        let es = EsServer::start(kind);
        let url = es.url();
        sluice_connectors::conformance::sink_replays_are_idempotent(
            &|i| {
                let c = config(&url, &format!("conf-{i}"), json!({"batch-records": 4}));
                Box::new(ElasticsearchSink::new(c, Path::new(".")).unwrap())
            },
            &|i| {
                es.docs(&format!("conf-{i}"))
                    .into_iter()
                    .map(|(id, doc)| (id, doc.to_string()))
                    .collect()
            },
        );
    }
}

#[test]
fn refused_documents_are_dead_letters_with_the_reason_and_tombstones_delete() {
    let es = EsServer::start(Kind::Osmem);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("template.json"),
        r#"{"template": {"mappings": {"properties": {"amount": {"type": "long"}}}}}"#,
    )
    .unwrap();
    let c = config(
        &es.url(),
        "pay-{yyyy.MM}",
        json!({"index-template": "template.json", "batch-records": 3}),
    );
    let mut sink = ElasticsearchSink::new(c, dir.path()).unwrap();
    sink.open(None).unwrap();
    let records = vec![
        record(0, 0, Some("a"), Some(r#"{"amount": 1}"#)),
        record(0, 1, Some("b"), Some(r#"{"amount": "lots"}"#)),
        record(0, 2, Some("c"), Some("[1, 2]")),
        record(0, 3, Some("d"), Some(r#"{"amount": 4}"#)),
        // b again, fine this time; then a refused update of d, which keeps its last good one.
        record(0, 4, Some("b"), Some(r#"{"amount": 2}"#)),
        record(0, 5, Some("d"), Some(r#"{"amount": "x"}"#)),
        // A tombstone deletes a; one for a key never written is done too.
        record(0, 6, Some("a"), None),
        record(0, 7, Some("zz"), None),
        record(1, 0, None, Some(r#"{"amount": 9}"#)),
    ];
    let mut rejected = sink.write(&records).unwrap();
    let durable = sink.flush().unwrap();
    rejected.extend(sink.take_refused());
    assert_eq!(durable, BTreeMap::from([(0, 8), (1, 1)]));
    rejected.sort_by_key(|r| r.at);
    let reasons: Vec<(Option<(u32, i64)>, &str)> =
        rejected.iter().map(|r| (r.at, r.reason.as_str())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, Some((0, 1)));
    assert!(
        reasons[0].1.contains("status 400") && reasons[0].1.contains("mapper_parsing_exception"),
        "{}",
        reasons[0].1
    );
    assert_eq!(reasons[1].0, Some((0, 2)));
    assert!(
        reasons[1].1.contains("not a JSON object"),
        "{}",
        reasons[1].1
    );
    assert_eq!(reasons[2].0, Some((0, 5)));
    assert_eq!(rejected[2].raw, br#"{"amount": "x"}"#);
    assert_eq!(rejected[2].origin, "t/0@5");
    let docs = es.docs("pay-2026.11");
    assert_eq!(
        docs,
        BTreeMap::from([
            ("b".to_string(), json!({"amount": 2})),
            ("d".to_string(), json!({"amount": 4})),
            ("t-1-0".to_string(), json!({"amount": 9})),
        ])
    );
    // `ignore` keeps documents a tombstone names.
    let c = config(&es.url(), "keep", json!({"tombstones": "ignore"}));
    let mut sink = ElasticsearchSink::new(c, dir.path()).unwrap();
    sink.open(None).unwrap();
    sink.write(&[
        record(0, 0, Some("a"), Some("{}")),
        record(0, 1, Some("a"), None),
    ])
    .unwrap();
    sink.flush().unwrap();
    assert_eq!(es.docs("keep").len(), 1);
}

/// A proxy in front of a server: checks credentials, records what it was sent, and in a
/// storm answers some `_bulk` requests 429 as a whole and some of their items 429 alone
/// (those items never reach the server).
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    _runtime: tokio::runtime::Runtime,
}

struct ProxyState {
    upstream: String,
    auth: Option<String>,
    storm: bool,
    requests: AtomicU64,
    busy_requests: AtomicU64,
    busy_items: AtomicU64,
    content_types: Mutex<Vec<String>>,
    authorizations: Mutex<Vec<String>>,
    client: reqwest::Client,
}

impl Proxy {
    fn start(upstream: &str, auth: Option<&str>, storm: bool) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_string(),
            auth: auth.map(str::to_string),
            storm,
            requests: AtomicU64::new(0),
            busy_requests: AtomicU64::new(0),
            busy_items: AtomicU64::new(0),
            content_types: Mutex::new(Vec::new()),
            authorizations: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let (port, runtime) = crate::common::serve_local(
            axum::Router::new()
                .fallback(proxied)
                .with_state(state.clone()),
        );
        Proxy {
            port,
            state,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain proxy to `upstream` served over TLS with `server.crt` and `server.key` of
    /// `certs` (see `server_cert`); its URL is `https://`.
    fn start_tls(upstream: &str, certs: &Path) -> Proxy {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.join("server.crt"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let mut proxy = Proxy::start(upstream, None, false);
        let listener = proxy
            ._runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        proxy.port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(proxied)
            .with_state(proxy.state.clone());
        proxy._runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends its handshake here.
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        proxy
    }

    fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

async fn proxied(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, [(&'static str, String); 1], Vec<u8>) {
    use axum::http::StatusCode;
    let json_answer = |status: StatusCode, body: Value| {
        (
            status,
            [("content-type", "application/json".to_string())],
            body.to_string().into_bytes(),
        )
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    state.authorizations.lock().push(header("authorization"));
    if state
        .auth
        .as_ref()
        .is_some_and(|a| header("authorization") != *a)
    {
        return json_answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "security_exception", "reason": "missing or wrong credentials"}, "status": 401}),
        );
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let bulk = uri.path().ends_with("/_bulk");
    let content_type = header("content-type");
    if bulk {
        state.content_types.lock().push(content_type.clone());
    }
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let forward = |body: Vec<u8>| {
        let state = state.clone();
        let method = method.clone();
        let path = path.clone();
        let content_type = content_type.clone();
        let accept = header("accept");
        async move {
            let mut request = state
                .client
                .request(method, format!("{}{path}", state.upstream))
                .body(body);
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            if !accept.is_empty() {
                request = request.header("accept", accept);
            }
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            (status, response.bytes().await.unwrap().to_vec())
        }
    };
    if !(state.storm && bulk) {
        let (status, body) = forward(body.to_vec()).await;
        return (
            status,
            [("content-type", "application/json".to_string())],
            body,
        );
    }
    if n % 4 == 1 {
        state.busy_requests.fetch_add(1, Ordering::SeqCst);
        return json_answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "es_rejected_execution_exception", "reason": "storm"}, "status": 429}),
        );
    }
    // Items: the action line, and the document line for index and create.
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    let mut items: Vec<(Value, String)> = Vec::new();
    while let Some(action) = lines.next() {
        let meta: Value = serde_json::from_str(action).unwrap();
        let mut raw = format!("{action}\n");
        if meta.get("index").is_some() || meta.get("create").is_some() {
            raw.push_str(lines.next().unwrap());
            raw.push('\n');
        }
        items.push((meta, raw));
    }
    let busy = |i: usize| (n.wrapping_mul(31) + i as u64 * 7).is_multiple_of(3);
    let sent: String = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !busy(*i))
        .map(|(_, (_, raw))| raw.as_str())
        .collect();
    let mut upstream_items = Vec::new();
    if !sent.is_empty() {
        let (status, reply) = forward(sent.into_bytes()).await;
        assert!(status.is_success(), "{}", String::from_utf8_lossy(&reply));
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        upstream_items = reply["items"].as_array().unwrap().clone();
    }
    let mut upstream_items = upstream_items.into_iter();
    let answer: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, (meta, _))| {
            if busy(i) {
                state.busy_items.fetch_add(1, Ordering::SeqCst);
                let (op, m) = meta.as_object().unwrap().iter().next().unwrap();
                json!({op: {"_index": m["_index"], "_id": m["_id"], "status": 429,
                    "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution (storm)"}}})
            } else {
                upstream_items.next().unwrap()
            }
        })
        .collect();
    json_answer(
        StatusCode::OK,
        json!({"took": 1, "errors": true, "items": answer}),
    )
}

#[test]
fn a_429_storm_retries_only_the_busy_documents_and_keeps_each_documents_last_version() {
    let es = EsServer::start(Kind::Osmem);
    let proxy = Proxy::start(&es.url(), None, true);
    let c = config(
        &proxy.url(),
        "storm",
        json!({"batch-records": 50, "max-in-flight": 3, "retry-backoff": "5ms"}),
    );
    let mut sink = ElasticsearchSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    // 2000 records over 300 keys: each key is written several times, in several requests.
    let records: Vec<ConsumerRecord> = (0..2000i64)
        .map(|o| {
            let key = format!("k{}", o % 300);
            let value = format!(r#"{{"n": {o}}}"#);
            record(0, o, Some(&key), Some(&value))
        })
        .collect();
    for chunk in records.chunks(400) {
        assert!(sink.write(chunk).unwrap().is_empty());
    }
    sink.flush().unwrap();
    assert!(sink.take_refused().is_empty());
    let docs = es.docs("storm");
    assert_eq!(docs.len(), 300);
    for (id, doc) in &docs {
        let k: i64 = id[1..].parse().unwrap();
        // The last record of key k: the largest offset o < 2000 with o % 300 == k.
        let last = (0..2000i64).filter(|o| o % 300 == k).max().unwrap();
        assert_eq!(doc["n"], last, "document {id} is not its key's last record");
    }
    let (requests, items) = (
        proxy.state.busy_requests.load(Ordering::SeqCst),
        proxy.state.busy_items.load(Ordering::SeqCst),
    );
    assert!(
        requests >= 3 && items >= 100,
        "the storm answered 429 to {requests} requests and {items} items"
    );
}

#[test]
fn tls_with_a_ca_file_and_without_it() {
    let es = EsServer::start(Kind::Osmem);
    let certs = tempfile::tempdir().unwrap();
    crate::postgres_cdc::server_cert(certs.path());
    let proxy = Proxy::start_tls(&es.url(), certs.path());
    let c = config(&proxy.tls_url(), "secure", json!({"tls-ca-file": "ca.crt"}));
    let mut sink = ElasticsearchSink::new(c, certs.path()).unwrap();
    sink.open(None).unwrap();
    sink.write(&[record(0, 0, Some("a"), Some("{\"x\": 1}"))])
        .unwrap();
    sink.flush().unwrap();
    assert_eq!(es.docs("secure").len(), 1);
    // Without the CA the server's certificate is not trusted.
    let c = config(&proxy.tls_url(), "secure", json!({}));
    let e = ElasticsearchSink::new(c, certs.path())
        .unwrap()
        .open(None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    // A CA file that is not PEM is a configuration error naming it.
    std::fs::write(certs.path().join("bad.pem"), "not a certificate").unwrap();
    let c = config(
        &proxy.tls_url(),
        "secure",
        json!({"tls-ca-file": "bad.pem"}),
    );
    let e = ElasticsearchSink::new(c, certs.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.pem"), "{e}");
}

#[test]
fn credentials_compatibility_headers_and_an_unreachable_server() {
    let es = EsServer::start(Kind::Noida);
    let proxy = Proxy::start(&es.url(), Some("Basic dTpzM2NyZXQ="), false);
    // Basic authentication (u:s3cret), and Elasticsearch 8's compatibility headers.
    let c = config(
        &proxy.url(),
        "auth",
        json!({"username": "u", "password": "s3cret"}),
    );
    let mut sink = ElasticsearchSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    sink.write(&[record(0, 0, Some("a"), Some("{\"x\": 1}"))])
        .unwrap();
    sink.flush().unwrap();
    assert_eq!(es.docs("auth").len(), 1);
    assert!(
        proxy
            .state
            .content_types
            .lock()
            .iter()
            .all(|t| t == "application/vnd.elasticsearch+x-ndjson; compatible-with=8"),
        "{:?}",
        proxy.state.content_types.lock()
    );
    // A wrong password: the server's answer, never the password.
    let c = config(
        &proxy.url(),
        "auth",
        json!({"username": "u", "password": "wrong-s3cret"}),
    );
    let mut sink = ElasticsearchSink::new(c, Path::new(".")).unwrap();
    let e = sink.open(None).unwrap_err();
    let text = e.to_string();
    assert!(e.is_retryable());
    assert!(
        text.contains("401") && text.contains("check username and password"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    // An API key goes as `ApiKey <key>`.
    let c = config(&proxy.url(), "auth", json!({"api-key": "a2V5OnNlY3JldA=="}));
    let mut sink = ElasticsearchSink::new(c, Path::new(".")).unwrap();
    assert!(sink.open(None).is_err());
    assert_eq!(
        proxy.state.authorizations.lock().last().unwrap(),
        "ApiKey a2V5OnNlY3JldA=="
    );
    // Nothing listens: a retryable error naming the URL without its password.
    let port = crate::common::free_port();
    let c = config(
        &format!("http://u:s3cret@127.0.0.1:{port}"),
        "x",
        json!({"request-timeout": "2s"}),
    );
    let e = ElasticsearchSink::new(c, Path::new("."))
        .unwrap()
        .open(None)
        .unwrap_err();
    let text = e.to_string();
    assert!(e.is_retryable());
    assert!(
        text.contains(&format!("GET http://u:redacted@127.0.0.1:{port}/")),
        "{text}"
    );
}

/// The records of the kill test: 6000 documents written three times over and half of them
/// a fourth time, 500 deleted, 40 refused by the mapping, in two partitions; then a marker
/// per partition.
fn kill_test_records() -> Vec<(u32, Record)> {
    let rec = |key: String, value: Option<String>, ts: i64| Record {
        key: Some(Bytes::from(key)),
        value: value.map(Bytes::from),
        headers: Vec::new(),
        timestamp: ts,
    };
    let mut out = Vec::new();
    for (v, keys) in [(1, 6000), (2, 6000), (3, 6000), (4, 3000)] {
        for i in 0..keys {
            out.push((
                i % 2,
                rec(
                    format!("k{i}"),
                    Some(format!(r#"{{"amount": {i}, "v": {v}}}"#)),
                    i64::from(i),
                ),
            ));
        }
    }
    for i in 5500..6000 {
        out.push((i % 2, rec(format!("k{i}"), None, i64::from(i))));
    }
    for i in 0..40 {
        out.push((
            i % 2,
            rec(
                format!("bad{i}"),
                Some(r#"{"amount": "lots"}"#.into()),
                i64::from(i),
            ),
        ));
    }
    for p in 0..2 {
        out.push((p, rec(format!("done{p}"), Some("{}".into()), 0)));
    }
    out
}

#[test]
fn a_pipeline_indexes_every_record_once_across_kills() {
    let es = EsServer::start(Kind::Noida);
    es.put(
        "_index_template/pay",
        &json!({"index_patterns": ["pay*"], "template": {"mappings": {"properties": {"amount": {"type": "long"}}}}}),
    );
    let work = tempfile::tempdir().unwrap();
    {
        let log = Log::open(work.path().join("data"), LogOptions::default()).unwrap();
        log.create_topic("pay", 2, &[]).unwrap();
        let mut p = log.producer(ProducerConfig::default()).unwrap();
        for (partition, r) in kill_test_records() {
            p.send_to("pay", partition, r).unwrap();
        }
        p.flush().unwrap();
        drop(p);
        log.close().unwrap();
    }
    let pipelines = work.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::write(
        pipelines.join("es.toml"),
        format!(
            "commit-interval = \"100ms\"\n[[sinks]]\nname = \"search\"\ntopic = \"pay\"\n\
             elasticsearch = {{ url = \"{}\", index = \"pay\", batch-records = 200, max-in-flight = 2 }}\n",
            es.url()
        ),
    )
    .unwrap();
    // SIGKILLs at seeded moments, and once right after a flush (the documents are in the
    // index, the offsets not committed).
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let rounds = 5;
    let mut interrupted = 0;
    for round in 0..rounds {
        let fault = (round == 2).then_some("sink-after-flush");
        let mut child = crate::common::spawn_worker(work.path(), round, fault);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // The faulted worker ends itself at its first flush.
        let wait = if fault.is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(150 + rng % 600)
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().unwrap();
        let docs = es.docs("pay");
        if !(docs.contains_key("done0") && docs.contains_key("done1")) {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of {rounds} workers were killed before they were done"
    );
    let faulted = std::fs::read_to_string(work.path().join("worker-2.log")).unwrap();
    assert!(faulted.contains("Injected fault"), "{faulted}");
    let mut child = crate::common::spawn_worker(work.path(), rounds, None);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let docs = es.docs("pay");
        if docs.contains_key("done0") && docs.contains_key("done1") {
            break;
        }
        if Instant::now() > deadline {
            let last = std::fs::read_to_string(work.path().join(format!("worker-{rounds}.log")))
                .unwrap_or_default();
            panic!("the markers did not reach the index in 90 s; the worker's log:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the last epoch commit, then stop the worker cleanly.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let docs = es.docs("pay");
    let mut want = BTreeMap::new();
    for i in 0..5500 {
        let v = if i < 3000 { 4 } else { 3 };
        want.insert(format!("k{i}"), json!({"amount": i, "v": v}));
    }
    for p in 0..2 {
        want.insert(format!("done{p}"), json!({}));
    }
    assert_eq!(docs.len(), want.len(), "documents in the index");
    assert_eq!(docs, want, "every document holds its key's last record");
    let log = Log::open(work.path().join("data"), LogOptions::default()).unwrap();
    for p in 0..2 {
        let tp = TopicPartition {
            topic: "pay".into(),
            partition: p,
        };
        let end = log.partition("pay", p).unwrap().info().high_watermark;
        assert_eq!(
            log.committed("sluice-sink-es.search", &tp),
            Some(end),
            "the sink committed partition {p} to its end"
        );
    }
    let dead = crate::common::read_committed(&log, "es.dlq");
    let header = |r: &ConsumerRecord, name: &str| {
        let h = r
            .headers
            .iter()
            .find(|h| h.key == name)
            .expect("a dead-letter header");
        String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned()
    };
    let mut origins: Vec<String> = dead.iter().map(|r| header(r, "sluice.source")).collect();
    for r in &dead {
        let reason = header(r, "sluice.error");
        assert!(
            reason.contains("status 400") && reason.contains("amount"),
            "{reason}"
        );
    }
    origins.sort();
    origins.dedup();
    assert_eq!(dead.len(), 40, "dead letters: {origins:?}");
    assert_eq!(
        origins.len(),
        40,
        "each refused record is a dead letter once"
    );
}
