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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_log::Log;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::apis;
use crate::config::{KafkaConfig, TlsFiles, Users};
use crate::versions;

/// How long a connection stays open after its authentication failed.
const FAILED_AUTH_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a request's bytes may take to arrive once its length did, and an answer to be
/// taken by the client: a client that stalls mid-frame or stops reading loses its
/// connection instead of holding it (and its buffers) forever.
const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// The largest frame before authentication (Kafka's `sasl.server.max.receive.size`).
const MAX_UNAUTHENTICATED_FRAME: usize = 512 << 10;

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
    /// Who may authenticate: the Kafka users, and in a cluster with a secret the nodes
    /// ([`sluice_cluster::auth::NODE_USER`]).
    pub(crate) users: Users,
    /// Whether clients must authenticate (Kafka users are configured); otherwise only the
    /// cluster's own requests need a node's authentication.
    pub(crate) client_auth: bool,
    /// Incremental fetch sessions (KIP-227).
    pub(crate) fetch_sessions: parking_lot::Mutex<apis::FetchSessions>,
    /// The cluster, when this node is in one.
    pub(crate) cluster: Option<sluice_cluster::Cluster>,
    /// Its replicas of the cluster's partitions, when in a cluster.
    pub(crate) replicas: Option<Arc<crate::replica::Replicas>>,
    /// Which consumer groups this node coordinates, when in a cluster.
    pub(crate) coordinators: Arc<crate::coordinators::Coordinators>,
    /// Which transactional ids this node coordinates, when in a cluster.
    pub(crate) transactions: Arc<crate::coordinators::Coordinators>,
}

/// A running Kafka listener; dropping it stops it (open connections are cut).
#[derive(Debug)]
pub struct KafkaServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// In a cluster, where pipelines run.
    pub placement: Option<crate::pipelines::Placement>,
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
    /// The TLS certificate or key does not load.
    #[error("{0}")]
    Tls(String),
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
        Some(a) => crate::config::host_port(a).ok_or_else(|| ServeError::Advertised(a.clone()))?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-kafka")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Start {
            what: "runtime",
            source,
        })?;
    let transactions = Arc::new(crate::coordinators::Coordinators::new(
        crate::coordinators::Kind::Transactions,
    ));
    let groups = Arc::new(crate::coordinators::Coordinators::new(
        crate::coordinators::Kind::Groups,
    ));
    let replicas = config.cluster.clone().map(|c| {
        crate::replica::Replicas::new(
            log.clone(),
            c,
            config.replica_lag_max,
            runtime.handle().clone(),
            Arc::clone(&groups),
            Arc::clone(&transactions),
        )
    });
    if let Some(r) = &replicas {
        log.set_write_gate(Arc::new(crate::replica::WriteGate(Arc::downgrade(r))));
        log.set_remote_markers(Arc::new(crate::replica::MarkerSender(Arc::downgrade(r))));
        log.set_txn_replication(Arc::new(crate::replica::TxnMirror(Arc::downgrade(r))));
    }
    let placement = config
        .cluster
        .clone()
        .map(|c| crate::pipelines::Placement::new(c, log.clone(), Arc::clone(&transactions)));
    let broker = Arc::new(Broker {
        log: log.clone(),
        node_id: config.node_id,
        host,
        port: i32::from(port),
        waiters: Default::default(),
        users: match config.cluster.as_ref().and_then(|c| c.secret()) {
            Some(secret) => config
                .users
                .with_user(sluice_cluster::auth::NODE_USER, secret.expose()),
            None => config.users.clone(),
        },
        client_auth: !config.users.is_empty(),
        fetch_sessions: Default::default(),
        cluster: config.cluster.clone(),
        replicas: replicas.clone(),
        coordinators: groups,
        transactions,
    });
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(tls_acceptor(files)?),
    };
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
                let replication = async move {
                    match replicas {
                        Some(r) => r.run().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = accept_loop(listener, broker, Arc::new(config), tls) => {}
                    () = replication => {}
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
        placement,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
    tls: Option<TlsAcceptor>,
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
            if refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
                tracing::warn!(%peer, max = config.max_connections, "Refused a Kafka connection: at the connection limit (--kafka-max-connections).");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let config = Arc::clone(&config);
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => connection(stream, peer, broker, &config).await,
                // The handshake counts against the idle timeout like a first request.
                Some(tls) => {
                    match tokio::time::timeout(config.idle_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, peer, broker, &config).await,
                        Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
                        Err(_) => Err(ConnError::Idle(config.idle_timeout)),
                    }
                }
            };
            if let Err(e) = result {
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
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("the client stalled {0} for a minute")]
    Stalled(&'static str),
    #[error("{0}")]
    AuthFailed(String),
}

/// A request frame and the buffer budget it holds until answered.
struct Frame {
    bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: &KafkaConfig,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Kafka shows a member's host as "/ip".
    let peer = Arc::<str>::from(format!("/{}", peer.ip()));
    let (read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Frame>(config.max_in_flight.max(1));
    let budget_bytes = config.connection_buffer_bytes.max(config.max_request_bytes);
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let max_request = config.max_request_bytes;
    let idle = config.idle_timeout;
    // Until the connection authenticates (when users are configured), frames stay small.
    let authenticated = Arc::new(AtomicBool::new(!broker.client_auth));
    let unlocked = Arc::clone(&authenticated);
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
            if len > MAX_UNAUTHENTICATED_FRAME && !authenticated.load(Ordering::Acquire) {
                return Err(ConnError::FrameSize(len as i64, MAX_UNAUTHENTICATED_FRAME));
            }
            let permit = Arc::clone(&budget)
                .acquire_many_owned(len as u32)
                .await
                .map_err(|_| std::io::Error::other("connection closing"))?;
            let mut buf = BytesMut::zeroed(len);
            match tokio::time::timeout(FRAME_TIMEOUT, read.read_exact(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnError::Stalled("a request's bytes")),
            };
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
        let mut session = Session::default();
        while let Some(frame) = rx.recv().await {
            let (answer, close) = handle(&broker, &peer, &mut session, frame.bytes).await?;
            if session.auth.user.is_some() {
                unlocked.store(true, Ordering::Release);
            }
            if let Some(answer) = answer {
                match tokio::time::timeout(FRAME_TIMEOUT, write.write_all(&answer)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(ConnError::Stalled("reading its answers")),
                }
            }
            if let Some(reason) = close {
                // As Kafka's `connection.failed.authentication.delay.ms`: the client reads the
                // answer before the close (an abrupt one could reset it unread), and a client
                // retrying in a loop is slowed down.
                let _ = write.flush().await;
                tokio::time::sleep(FAILED_AUTH_DELAY).await;
                let _ = write.shutdown().await;
                return Err(ConnError::AuthFailed(reason));
            }
        }
        write.flush().await?;
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

/// What a request gets: an answer (`None` for a Produce with `acks=0`), and a reason to
/// close the connection after it (authentication failed).
type Handled = (Option<BytesMut>, Option<String>);

/// Answers one request frame.
async fn handle(
    broker: &Arc<Broker>,
    peer: &Arc<str>,
    session: &mut Session,
    mut frame: Bytes,
) -> Result<Handled, ConnError> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if key == sluice_cluster::rpc::API_KEY
        && let Some(cluster) = &broker.cluster
    {
        let refused = !is_node(broker, cluster, session);
        return peer_request(cluster, refused, correlation, version, frame).await;
    }
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
        return encode(api, 0, correlation, &versions::api_versions(true)).map(|a| (Some(a), None));
    }
    let unsupported = version < min || version > max;
    let codec = api.valid_versions();
    if unsupported && (version < codec.min || version > codec.max) {
        // Not even the codec knows this version: there is no answer to give in it.
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
        node: broker
            .cluster
            .as_ref()
            .is_some_and(|c| is_node(broker, c, session)),
    };
    if unsupported {
        // A version the codec speaks but this listener does not serve (topic ids, KIP-890
        // transactions...): UNSUPPORTED_VERSION where the API has an error field, so the
        // client can say why; the connection stays open for a lower version.
        return match apis::refuse(&ctx, frame, ResponseError::UnsupportedVersion.code())? {
            Some(answer) => Ok((Some(answer), None)),
            None => Err(ConnError::Version {
                api,
                version,
                min,
                max,
                correlation,
            }),
        };
    }
    match api {
        ApiKey::SaslHandshake => {
            let req: SaslHandshakeRequest = ctx.decode(&mut frame)?;
            let answer = apis::handshake(&broker.users, &mut session.auth, &req, version);
            return Ok((ctx.answer(&answer)?, None));
        }
        ApiKey::SaslAuthenticate => {
            let req: SaslAuthenticateRequest = ctx.decode(&mut frame)?;
            let (answer, failed) = apis::authenticate(&broker.users, &mut session.auth, &req);
            let close = failed.then(|| {
                format!(
                    "SASL authentication failed (client {})",
                    if ctx.client.is_empty() {
                        "without an id"
                    } else {
                        &ctx.client
                    }
                )
            });
            if let Some(user) = session.auth.user.as_deref().filter(|_| !failed) {
                tracing::debug!(user, client = %ctx.client, "A Kafka client authenticated.");
            }
            return Ok((ctx.answer(&answer)?, close));
        }
        ApiKey::ApiVersions => {}
        _ if broker.client_auth && session.auth.user.is_none() => {
            // Before authenticating, a request gets SASL_AUTHENTICATION_FAILED where its API
            // has room for it, and the connection closes either way.
            let answer = apis::refuse(&ctx, frame, ResponseError::SaslAuthenticationFailed.code())?;
            return Ok((
                answer,
                Some(format!("{api:?} before authenticating (SASL is required)")),
            ));
        }
        _ => {}
    }
    Ok((apis::dispatch(ctx, frame).await?, None))
}

/// Answers a request of another node of the cluster: its header is Kafka's (v1: key,
/// version, correlation id, client id), its body the cluster's own.
async fn peer_request(
    cluster: &sluice_cluster::Cluster,
    refused: bool,
    correlation: i32,
    version: i16,
    mut frame: Bytes,
) -> Result<Handled, ConnError> {
    let bad = |reason: &str| ConnError::Decode {
        api: ApiKey::ApiVersions,
        version,
        correlation,
        reason: format!("a cluster request: {reason}"),
    };
    if version != 0 {
        return Err(bad("only version 0 exists"));
    }
    let _ = frame.split_to(8);
    if frame.len() < 2 {
        return Err(bad("no client id"));
    }
    let id_len = i16::from_be_bytes([frame[0], frame[1]]).max(0) as usize;
    if frame.len() < 2 + id_len {
        return Err(bad("a truncated client id"));
    }
    let _ = frame.split_to(2 + id_len);
    if refused {
        return Ok((None, Some("a cluster request before authenticating".into())));
    }
    let answer = cluster.serve(correlation, &frame).await;
    Ok((Some(BytesMut::from(&answer[..])), None))
}

/// Whether a connection may make the cluster's own requests: when the nodes share a secret,
/// only one that authenticated as a node.
fn is_node(broker: &Broker, cluster: &sluice_cluster::Cluster, session: &Session) -> bool {
    match cluster.secret() {
        Some(_) => session.auth.user.as_deref() == Some(sluice_cluster::auth::NODE_USER),
        // No secret (a trusted network): at least what a client must be.
        None => !broker.client_auth || session.auth.user.is_some(),
    }
}

/// A connection's state between its requests.
#[derive(Debug, Default)]
struct Session {
    auth: apis::Session,
}

/// The TLS acceptor for `files`.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| fail(&format!("--kafka-tls-cert {}", files.cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&format!("--kafka-tls-cert {}", files.cert.display()), &e))?;
    if chain.is_empty() {
        return Err(ServeError::Tls(format!(
            "--kafka-tls-cert {}: no certificate in the file",
            files.cert.display()
        )));
    }
    // The key's own error may quote it: name the file only.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|_| {
        ServeError::Tls(format!(
            "--kafka-tls-key {}: not a readable PEM private key",
            files.key.display()
        ))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("TLS", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| fail("the certificate and key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
