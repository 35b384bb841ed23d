//! Tiered storage against a real S3 server (moto, started here), reached through a TCP proxy
//! the test can take down: uploads wait out an outage without deleting anything local, a
//! process killed between an upload and its manifest loses and repeats nothing, and the
//! command line (`topics describe`, `consume --offset`) reads old offsets from the store.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::remote::RemoteStorage;
use sluice_log::{Log, LogOptions, Record};

use crate::objstore::Moto;

/// A TCP proxy to `target` that can refuse service: while down, new connections are closed
/// at once and open ones are cut.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (Arc::clone(&down), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, down, open }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn storage(proxy: &Proxy) -> RemoteStorage {
    RemoteStorage::new(
        "s3://tiered/log",
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", proxy.port)),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    )
}

/// The storage with credentials as options (used for the run, never saved).
fn with_keys(mut remote: RemoteStorage) -> RemoteStorage {
    for key in ["aws_access_key_id", "aws_secret_access_key"] {
        remote.options.insert(key.into(), "test".into());
    }
    remote
}

fn open(dir: &Path, remote: Option<RemoteStorage>) -> Log {
    Log::open(
        dir,
        LogOptions {
            remote_storage: remote,
            remote_upload_interval: Duration::from_secs(3600),
            housekeeping_interval: Duration::from_secs(3600),
            remote_retry_timeout: Duration::from_secs(2),
            ..LogOptions::default()
        },
    )
    .unwrap()
}

fn fill(log: &Log, n: usize) {
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    log.create_topic(
        "rides",
        1,
        &[
            kv("segment.bytes", "8192"),
            kv("remote.storage.enable", "true"),
            kv("local.retention.bytes", "8192"),
        ],
    )
    .unwrap();
    for i in 0..n {
        log.append_records(
            "rides",
            0,
            &[Record {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!(
                    "{{\"ride\":{i},\"pad\":\"{}\"}}",
                    "x".repeat(200)
                ))),
                headers: Vec::new(),
                timestamp: sluice_log::record::now_ms(),
            }],
        )
        .unwrap();
    }
}

fn local_logs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("topics/rides/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

fn rides(log: &Log) -> Vec<u64> {
    let mut out = Vec::new();
    log.read_all("rides", 0, |_, r| {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        out.push(v["ride"].as_u64().unwrap());
    })
    .unwrap();
    out
}

/// The CLI against the data directory, with the store's credentials from the environment
/// (the data directory remembers only the url and the other options).
fn sluice(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(crate::cli::sluice_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_outage_of_the_store_delays_uploads_and_deletes_nothing_local() {
    let moto = Moto::start();
    moto.bucket("tiered");
    let proxy = Proxy::start(moto.endpoint().rsplit(':').next().unwrap().parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    // Credentials as options here: used for this run, never saved.
    let remote = with_keys(storage(&proxy));
    let log = open(dir.path(), Some(remote));
    fill(&log, 300);
    let before = local_logs(dir.path());
    assert!(before > 5, "{before}");

    proxy.set_down(true);
    let started = Instant::now();
    let err = log.upload_segments().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    log.run_housekeeping().unwrap();
    assert_eq!(local_logs(dir.path()), before, "nothing deleted while down");
    assert_eq!(rides(&log), (0..300).collect::<Vec<_>>());

    proxy.set_down(false);
    assert_eq!(log.upload_segments().unwrap(), before - 1);
    log.run_housekeeping().unwrap();
    assert!(local_logs(dir.path()) <= 2, "{}", local_logs(dir.path()));
    assert_eq!(rides(&log), (0..300).collect::<Vec<_>>());
    let stored = moto.objects("tiered");
    assert_eq!(
        stored.len(),
        3 * (before - 1),
        "segment, index, time index each"
    );
    assert!(
        stored
            .iter()
            .all(|(name, _)| name.starts_with("log/rides-"))
    );

    // Down again: old offsets cannot be read, and the reader is told why, not given a gap.
    proxy.set_down(true);
    let err = log
        .fetch("rides", 0, 0, 1 << 20, sluice_log::Isolation::ReadCommitted)
        .unwrap_err();
    assert!(err.to_string().contains("tiered storage"), "{err}");
    proxy.set_down(false);
    log.close().unwrap();
    drop(log);

    // The command line finds the store in the data directory and reads through it.
    let describe = sluice(dir.path(), &["topics", "describe", "rides"]);
    assert!(describe.contains("REMOTE-START"), "{describe}");
    let consumed = sluice(
        dir.path(),
        &["consume", "rides", "--partition", "0", "--offset", "0"],
    );
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), 300, "{consumed}");
    assert!(lines[0].contains("\"ride\":0,"), "{}", lines[0]);
    assert!(lines[299].contains("\"ride\":299,"), "{}", lines[299]);
    let saved = std::fs::read_to_string(dir.path().join("remote-storage.json")).unwrap();
    assert!(!saved.contains("secret"), "{saved}");

    // A persistent SQL query over the topic reads it from the beginning, out of the store.
    sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "CREATE STREAM rides_in (ride BIGINT, pad VARCHAR) WITH (topic = 'rides');
             CREATE STREAM ride_ids WITH (topic = 'ride_ids') AS SELECT ride FROM rides_in;",
        ],
    );
    // Started again, the query runs until it has read everything before `sql` returns.
    sluice(dir.path(), &["sql", "-e", "SHOW QUERIES;"]);
    let ids = sluice(dir.path(), &["consume", "ride_ids", "--from-beginning"]);
    let ids: Vec<u64> = ids
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["RIDE"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (0..300).collect::<Vec<_>>());
}

#[test]
fn a_kill_between_upload_and_manifest_loses_and_repeats_nothing() {
    let moto = Moto::start();
    moto.bucket("tiered");
    let proxy = Proxy::start(moto.endpoint().rsplit(':').next().unwrap().parse().unwrap());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = open(&data, Some(storage(&proxy)));
    fill(&log, 200);
    log.close().unwrap();
    drop(log);

    // A worker that aborts right after its first upload's objects are written, before the
    // manifest lists them.
    std::fs::create_dir_all(work.path().join("pipelines")).unwrap();
    let status = Command::new(crate::cli::sluice_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
        .arg(work.path().join("pipelines"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SLUICE_FAULT", "remote-after-upload")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the fault stops the worker");
    let first = moto.objects("tiered");
    assert_eq!(first.len(), 3, "one segment's objects: {first:?}");
    assert!(!data.join("topics/rides/0/remote.json").exists());

    // The next run uploads everything; the first segment again, to the same names.
    let remote = with_keys(storage(&proxy));
    let log = open(&data, Some(remote));
    assert!(log.data_loss().is_empty(), "{:?}", log.data_loss());
    let n = log.upload_segments().unwrap();
    log.run_housekeeping().unwrap();
    let all = moto.objects("tiered");
    assert_eq!(all.len(), 3 * n);
    for (name, bytes) in &first {
        let again = all.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(&again.1, bytes, "{name} rewritten with the same bytes");
    }
    assert_eq!(rides(&log), (0..200).collect::<Vec<_>>());
}
