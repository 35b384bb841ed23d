//! The Kafka listener's settings (`sluice run --kafka-*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::sasl::Users;

/// Kafka's `socket.request.max.bytes`: the largest request frame accepted.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 << 20;
/// Request bytes one connection may hold at once (read ahead and in process).
pub const DEFAULT_CONNECTION_BUFFER_BYTES: usize = 128 << 20;
/// Requests one connection may have read and not yet answered.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Open connections at once; past it new ones are closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Kafka's `connections.max.idle.ms`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How the Kafka listener runs.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Where it listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The `host:port` clients are told to connect to (Metadata, FindCoordinator); the
    /// listening address when unset. Set it when clients reach the worker by another name.
    pub advertised: Option<String>,
    /// This node's broker id.
    pub node_id: i32,
    /// The largest request frame (Kafka's `socket.request.max.bytes`); a larger one closes
    /// its connection.
    pub max_request_bytes: usize,
    /// Request bytes a connection may hold at once; reading waits when it is used up.
    pub connection_buffer_bytes: usize,
    /// Requests a connection may have read ahead of their answers.
    pub max_in_flight: usize,
    /// Open connections at once.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Users who may connect (SASL PLAIN or SCRAM-SHA-256); none: no authentication.
    pub users: Users,
    /// Serve TLS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// The cluster this node belongs to: its peers' requests arrive on this listener.
    pub cluster: Option<sluice_cluster::Cluster>,
    /// In a cluster, how long a follower may fail to catch up before it leaves the ISR
    /// (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_max: Duration,
}

/// A TLS certificate chain and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Splits `host:port` (an IPv6 host in brackets or not) as Kafka's answers name a broker:
/// the host without brackets and the port; `None` when either is missing or the port is not
/// a port.
pub(crate) fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_matches(['[', ']']);
    (!host.is_empty()).then_some(())?;
    Some((host.to_string(), port.parse().ok()?))
}

impl KafkaConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> KafkaConfig {
        KafkaConfig {
            listen,
            advertised: None,
            node_id: 0,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            connection_buffer_bytes: DEFAULT_CONNECTION_BUFFER_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            users: Users::default(),
            tls: None,
            cluster: None,
            replica_lag_max: crate::replica::DEFAULT_REPLICA_LAG_MAX,
        }
    }
}
