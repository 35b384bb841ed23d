//! Accepting connections, framing requests, the per-connection bounds, and dispatch.
//!
//! Each connection is two tasks: a reader that cuts the byte stream into request frames and
//! a handler that answers them one at a time, in order (Kafka's contract; clients open a
//! separate connection to a coordinator, so a long-polling Fetch holds only its own). The
//! reader runs ahead by at most `max_in_flight` requests and `connection_buffer_bytes` of
//! them, so a client that pipelines produce requests keeps the handler busy without growing
//! memory. A frame that cannot be a request (a bad length, an unknown API or version, a body
//! the codec rejects) closes its connection with one log line and touches nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_log::Log;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::apis;
use crate::config::KafkaConfig;
use crate::versions;

/// What every handler reads: the log and how this node presents itself.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) log: Log,
    pub(crate) node_id: i32,
    /// The host and port told to clients.
    pub(crate) host: String,
    pub(crate) port: i32,
    /// Classic-group requests waiting for a rebalance.
    pub(crate) waiters: parking_lot::Mutex<apis::Waiters>,
}

/// A running Kafka listener; dropping it stops it (open connections are cut).
#[derive(Debug)]
pub struct KafkaServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on.
    #[error("cannot listen for Kafka clients on {addr}: {source} (choose another --kafka-listen)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `advertised` is not `host:port`.
    #[error("--kafka-advertised '{0}' is not host:port")]
    Advertised(String),
    /// The runtime or its thread did not start.
    #[error("cannot start the Kafka listener's {what}: {source}")]
    Start {
        /// "runtime" or "thread".
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds `config.listen` and serves the Kafka protocol over `log` on its own runtime.
pub fn serve(log: &Log, config: KafkaConfig) -> Result<KafkaServer, ServeError> {
    let listen_error = |source| ServeError::Listen {
        addr: config.listen,
        source,
    };
    let std_listener = std::net::TcpListener::bind(config.listen).map_err(listen_error)?;
    std_listener.set_nonblocking(true).map_err(listen_error)?;
    let addr = std_listener.local_addr().map_err(listen_error)?;
    let (host, port) = match &config.advertised {
        None => (addr.ip().to_string(), addr.port()),
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .ok_or_else(|| ServeError::Advertised(a.clone()))?;
            let port = p
                .parse::<u16>()
                .map_err(|_| ServeError::Advertised(a.clone()))?;
            if h.is_empty() {
                return Err(ServeError::Advertised(a.clone()));
            }
            (h.trim_matches(['[', ']']).to_string(), port)
        }
    };
    let broker = Arc::new(Broker {
        log: log.clone(),
        node_id: config.node_id,
        host,
        port: i32::from(port),
        waiters: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-kafka")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Start {
            what: "runtime",
            source,
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sluice-kafka".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "The Kafka listener failed.");
                        return;
                    }
                };
                tokio::select! {
                    () = accept_loop(listener, broker, Arc::new(config)) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .map_err(|source| ServeError::Start {
            what: "thread",
            source,
        })?;
    tracing::info!(%addr, "Listening for Kafka clients.");
    Ok(KafkaServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
) {
    {
        // Classic groups' clock: silent members expire, overdue rebalances end.
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                every.tick().await;
                apis::tick(&broker);
            }
        });
    }
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let refused = AtomicU64::new(0);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "Accepting a Kafka connection failed.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // Logged once per 100 so a flood does not flood the log too.
            if refused.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                tracing::warn!(%peer, max = config.max_connections, "Refused a Kafka connection: at the connection limit (--kafka-max-connections).");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, broker, &config).await {
                tracing::warn!(%peer, "Closed a Kafka connection: {e}.");
            }
            drop(permit);
        });
    }
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a request frame of {0} bytes (the limit is {1}, --kafka-max-request-bytes)")]
    FrameSize(i64, usize),
    #[error("a request frame of {0} bytes is too short for a request header")]
    Short(usize),
    #[error("unknown API key {key} (version {version}, correlation id {correlation})")]
    UnknownApi {
        key: i16,
        version: i16,
        correlation: i32,
    },
    #[error(
        "{api:?} version {version} is not supported (this listener speaks {min}..={max}; correlation id {correlation})"
    )]
    Version {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
        correlation: i32,
    },
    #[error(
        "{api:?} v{version} request (correlation id {correlation}) cannot be decoded: {reason}"
    )]
    Decode {
        api: ApiKey,
        version: i16,
        correlation: i32,
        reason: String,
    },
    #[error("encoding the {api:?} v{version} answer failed: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
}

/// A request frame and the buffer budget it holds until answered.
struct Frame {
    bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: &KafkaConfig,
) -> Result<(), ConnError> {
    // Kafka shows a member's host as "/ip".
    let peer = Arc::<str>::from(format!("/{}", peer.ip()));
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(config.max_in_flight.max(1));
    let budget_bytes = config.connection_buffer_bytes.max(config.max_request_bytes);
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let max_request = config.max_request_bytes;
    let idle = config.idle_timeout;
    let reader = async move {
        let mut read = BufReader::with_capacity(64 << 10, read);
        loop {
            let len = match tokio::time::timeout(idle, read.read_i32()).await {
                Err(_) => return Err(ConnError::Idle(idle)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
            };
            if len < 0 || len as usize > max_request {
                return Err(ConnError::FrameSize(i64::from(len), max_request));
            }
            let len = len as usize;
            if len < 8 {
                return Err(ConnError::Short(len));
            }
            let permit = Arc::clone(&budget)
                .acquire_many_owned(len as u32)
                .await
                .map_err(|_| std::io::Error::other("connection closing"))?;
            let mut buf = BytesMut::zeroed(len);
            read.read_exact(&mut buf).await?;
            if tx
                .send(Frame {
                    bytes: buf.freeze(),
                    _budget: permit,
                })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let handler = async move {
        while let Some(frame) = rx.recv().await {
            if let Some(answer) = handle(&broker, &peer, frame.bytes).await? {
                write.write_all(&answer).await?;
            }
        }
        Ok::<(), ConnError>(())
    };
    // A bad frame or a write error ends the connection at once. When the client closes its
    // side, the requests already read are still answered (the handler drains the queue the
    // reader closed) before the connection ends.
    tokio::pin!(reader);
    tokio::pin!(handler);
    tokio::select! {
        r = &mut reader => match r {
            Ok(()) => handler.await,
            Err(e) => Err(e),
        },
        r = &mut handler => r,
    }
}

/// Answers one request frame; `None` for a Produce with `acks=0`, which gets no answer.
async fn handle(
    broker: &Arc<Broker>,
    peer: &Arc<str>,
    mut frame: Bytes,
) -> Result<Option<BytesMut>, ConnError> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|()| ConnError::UnknownApi {
        key,
        version,
        correlation,
    })?;
    let Some((min, max)) = versions::range(api) else {
        return Err(ConnError::UnknownApi {
            key,
            version,
            correlation,
        });
    };
    if api == ApiKey::ApiVersions && version > max {
        // KIP-511: answered in v0's layout with our range, so the client retries lower.
        return encode(api, 0, correlation, &versions::api_versions(true)).map(Some);
    }
    if version < min || version > max {
        return Err(ConnError::Version {
            api,
            version,
            min,
            max,
            correlation,
        });
    }
    let decode_error = |e: anyhow::Error| ConnError::Decode {
        api,
        version,
        correlation,
        reason: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(decode_error)?;
    let client = header.client_id.as_deref().unwrap_or("").to_string();
    let ctx = apis::Ctx {
        broker: Arc::clone(broker),
        api,
        version,
        correlation,
        client,
        peer: Arc::clone(peer),
    };
    apis::dispatch(ctx, frame).await
}

/// Encodes an answer: length, response header, body.
pub(crate) fn encode<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &R,
) -> Result<BytesMut, ConnError> {
    let fail = |e: anyhow::Error| ConnError::Encode {
        api,
        version,
        reason: e.to_string(),
    };
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut out, header_version)
        .map_err(fail)?;
    body.encode(&mut out, version).map_err(fail)?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}
