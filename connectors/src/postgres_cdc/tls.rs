//! TLS to the server, as libpq's `sslmode`: one rustls configuration for the admin and
//! snapshot connections (tokio-postgres) and the same mode for the replication session
//! (pgwire-replication), from the source's `tls` and `tls-ca-file`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgwire_replication::{SslMode as ReplicationSslMode, TlsConfig as ReplicationTls};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};

use crate::ConnectorError;

/// How the source talks TLS to the server (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never.
    Disable,
    /// When the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// Always, without checking the certificate.
    Require,
    /// Always, with a certificate signed by a trusted CA.
    VerifyCa,
    /// Always, with a certificate signed by a trusted CA and naming the host.
    VerifyFull,
}

/// The TLS settings, resolved once.
#[derive(Clone)]
pub struct Tls {
    mode: TlsMode,
    ca_file: Option<PathBuf>,
    /// The rustls configuration (none for `disable`).
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Checks and loads the settings: the CA file is read now, so a wrong path is a
    /// configuration error naming it.
    pub fn new(mode: TlsMode, ca_file: Option<&Path>) -> Result<Tls, ConnectorError> {
        let bad = |m: String| ConnectorError::Config(format!("postgres-cdc: {m}"));
        if ca_file.is_some() && !matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) {
            return Err(bad(
                "tls-ca-file is only used with tls = \"verify-ca\" or \"verify-full\"".into(),
            ));
        }
        // ring, named: the build has more than one provider, so there is no default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("tls: {e}")))?;
        let config = match mode {
            TlsMode::Disable => None,
            TlsMode::Prefer | TlsMode::Require => Some(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth(),
            ),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let roots = Arc::new(roots(ca_file)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| bad(format!("tls-ca-file: {e}")))?;
                let verifier: Arc<dyn ServerCertVerifier> = match mode {
                    TlsMode::VerifyCa => Arc::new(ChainOnly(webpki)),
                    _ => webpki,
                };
                Some(
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth(),
                )
            }
        };
        Ok(Tls {
            mode,
            ca_file: ca_file.map(Path::to_path_buf),
            config: config.map(Arc::new),
        })
    }

    /// Connects a tokio-postgres client with these settings; its connection runs as a task.
    pub async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let Some(config) = &self.config else {
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            return Ok(client);
        };
        let mut pg = pg.clone();
        pg.ssl_mode(match self.mode {
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
        let (client, conn) = pg.connect(tls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The replication session's TLS settings for a server at `host`.
    pub fn replication(&self, host: &str) -> ReplicationTls {
        // The certificate of a server named by its IP address must name that address (as
        // libpq checks it); the replication crate wants that said as the name to verify.
        let sni_hostname = (self.mode == TlsMode::VerifyFull
            && host.parse::<std::net::IpAddr>().is_ok())
        .then(|| host.to_string());
        ReplicationTls {
            sni_hostname,
            mode: match self.mode {
                TlsMode::Disable => ReplicationSslMode::Disable,
                TlsMode::Prefer => ReplicationSslMode::Prefer,
                TlsMode::Require => ReplicationSslMode::Require,
                TlsMode::VerifyCa => ReplicationSslMode::VerifyCa,
                TlsMode::VerifyFull => ReplicationSslMode::VerifyFull,
            },
            ca_pem_path: self.ca_file.clone(),
            ..ReplicationTls::default()
        }
    }
}

/// The CAs to trust: those of `ca_file`, else the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, ConnectorError> {
    let bad = |m: String| ConnectorError::Config(format!("postgres-cdc: {m}"));
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("tls-ca-file {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(format!(
                    "tls-ca-file {}: no certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(bad(
                    "tls: no CA certificates on this system; name them with tls-ca-file".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `require`: any certificate (the connection is encrypted, the server not authenticated);
/// the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
