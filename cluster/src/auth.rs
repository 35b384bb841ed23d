//! Node authentication: the nodes of a cluster share a secret ([`Secret`]) and prove it on
//! every connection to each other with SASL SCRAM-SHA-256 (RFC 5802, RFC 7677) as the user
//! [`NODE_USER`], as a Kafka client proves its password; a node's listener then takes the
//! cluster's own requests (Raft, heartbeats, replica fetches, transaction markers) only
//! from connections that did. SCRAM, not PLAIN, because the nodes talk plain TCP: the secret
//! itself never crosses the wire.
//!
//! ```text
//!  client                                   server (the listener's SASL users)
//!  n,,n=sluice-node,r=CNONCE        ──►
//!                                   ◄──     r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
//!  c=biws,r=CNONCE+SNONCE,p=PROOF   ──►     (checks the proof against its credential)
//!                                   ◄──     v=SERVER-SIGNATURE  (checked here)
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// The SASL user a node authenticates as (reserved: no Kafka user may have the name).
pub const NODE_USER: &str = "sluice-node";

/// The shortest secret taken: a guessable one would make the check pointless.
pub const MIN_SECRET_CHARS: usize = 16;

/// The most PBKDF2 iterations a server may ask for (a node asked for more refuses: a
/// malicious listener must not make it spin).
const MAX_ITERATIONS: u32 = 100_000;

/// The cluster's shared secret. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The secret in `text` (surrounding white space dropped); an error says why it is
    /// refused, never what it is.
    pub fn new(text: &str) -> Result<Secret, String> {
        let s = text.trim();
        if s.chars().count() < MIN_SECRET_CHARS {
            return Err(format!(
                "the cluster secret has {} characters; at least {MIN_SECRET_CHARS} are needed",
                s.chars().count()
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("the cluster secret holds a control character (a line break?)".into());
        }
        Ok(Secret(s.into()))
    }

    /// The secret itself, for the SASL users of the listener.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref());
    out
}

/// The client side of one SCRAM-SHA-256 exchange.
pub struct ScramClient {
    password: Secret,
    client_nonce: String,
    first_bare: String,
    /// What the server must answer last, once the proof is sent.
    server_signature: Option<[u8; 32]>,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange as `user` with `password`: the client and its first message.
    pub fn start(user: &str, password: &Secret) -> (ScramClient, Vec<u8>) {
        let mut nonce = [0u8; 18];
        // The system's random source does not fail on Linux; zeros would still work once.
        let _ = SystemRandom::new().fill(&mut nonce);
        let client_nonce = B64.encode(nonce);
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={user},r={client_nonce}");
        let first = format!("n,,{first_bare}").into_bytes();
        (
            ScramClient {
                password: password.clone(),
                client_nonce,
                first_bare,
                server_signature: None,
            },
            first,
        )
    }

    /// The answer to the server's first message: the proof.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "not text".to_string())?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.client_nonce) && n.len() > self.client_nonce.len())
            .ok_or("the server's nonce does not extend ours")?;
        let salt = salt.ok_or("no salt")?;
        let iterations = iterations
            .filter(|i| (4096..=MAX_ITERATIONS).contains(i))
            .and_then(NonZeroU32::new)
            .ok_or("iterations out of range")?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            self.password.expose().as_bytes(),
            &mut salted,
        );
        let client_key = hmac256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let signature = hmac256(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac256(&salted, b"Server Key");
        self.server_signature = Some(hmac256(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's last message: it knew the secret too.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = self.server_signature.ok_or("no proof was sent")?;
        let text = std::str::from_utf8(server_final).map_err(|_| "not text".to_string())?;
        let given = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or("no server signature")?;
        if given.as_slice() != expected.as_slice() {
            return Err("the server does not know the cluster secret".into());
        }
        Ok(())
    }
}

/// Authenticates a fresh connection to a node's listener as `user` (a node: [`NODE_USER`])
/// with Kafka's SaslHandshake (v1) and SaslAuthenticate (v1) requests, framed by hand (this
/// crate does not speak the rest of Kafka's protocol); `correlation` numbers the requests.
pub async fn authenticate<S>(
    conn: &mut S,
    user: &str,
    secret: &Secret,
    client_id: &str,
    correlation: &mut i32,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SASL_HANDSHAKE: i16 = 17;
    const SASL_AUTHENTICATE: i16 = 36;
    let mechanism = "SCRAM-SHA-256";

    async fn call<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        conn: &mut S,
        api: i16,
        correlation: i32,
        client_id: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        let mut frame = Vec::with_capacity(body.len() + 32);
        let len = 2 + 2 + 4 + 2 + client_id.len() + body.len();
        frame.extend_from_slice(&(len as i32).to_be_bytes());
        frame.extend_from_slice(&api.to_be_bytes());
        frame.extend_from_slice(&1i16.to_be_bytes());
        frame.extend_from_slice(&correlation.to_be_bytes());
        frame.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
        frame.extend_from_slice(client_id.as_bytes());
        frame.extend_from_slice(body);
        conn.write_all(&frame).await.map_err(|e| e.to_string())?;
        let len = conn.read_i32().await.map_err(|e| e.to_string())?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=1 << 20).contains(l))
            .ok_or_else(|| format!("an answer of {len} bytes"))?;
        let mut answer = vec![0u8; len];
        conn.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer[..4] != correlation.to_be_bytes() {
            return Err("an answer to another request".into());
        }
        answer.drain(..4);
        Ok(answer)
    }

    fn error_code(body: &[u8]) -> Result<i16, String> {
        body.get(..2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a short answer".to_string())
    }

    /// SaslAuthenticate v1's answer: error code, message, bytes.
    fn auth_bytes(body: &[u8]) -> Result<Vec<u8>, String> {
        let code = error_code(body)?;
        let mut at = 2;
        let message_len = body
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or("a short answer")?;
        at += 2 + usize::try_from(message_len).unwrap_or(0);
        if code != 0 {
            let message = body
                .get(4..at)
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            return Err(format!("refused (error {code}): {message}"));
        }
        let n = body
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("a short answer")?;
        at += 4;
        let n = usize::try_from(n).unwrap_or(0);
        Ok(body.get(at..at + n).ok_or("a short answer")?.to_vec())
    }

    let mut body = Vec::new();
    body.extend_from_slice(&(mechanism.len() as i16).to_be_bytes());
    body.extend_from_slice(mechanism.as_bytes());
    *correlation = correlation.wrapping_add(1);
    let answer = call(conn, SASL_HANDSHAKE, *correlation, client_id, &body).await?;
    match error_code(&answer)? {
        0 => {}
        // The listener has no users: it takes everyone, and cannot check the secret.
        33 => {
            return Err(
                "the node takes no authentication (is it started without --cluster-secret-file?)"
                    .into(),
            );
        }
        code => return Err(format!("SaslHandshake refused (error {code})")),
    }
    let (mut scram, first) = ScramClient::start(user, secret);
    let step = |message: Vec<u8>| {
        let mut body = Vec::with_capacity(message.len() + 4);
        body.extend_from_slice(&(message.len() as i32).to_be_bytes());
        body.extend_from_slice(&message);
        body
    };
    *correlation = correlation.wrapping_add(1);
    let answer = call(
        conn,
        SASL_AUTHENTICATE,
        *correlation,
        client_id,
        &step(first),
    )
    .await?;
    let proof = scram.respond(&auth_bytes(&answer)?)?;
    *correlation = correlation.wrapping_add(1);
    let answer = call(
        conn,
        SASL_AUTHENTICATE,
        *correlation,
        client_id,
        &step(proof),
    )
    .await?;
    scram.finish(&auth_bytes(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_or_multi_line_secret_is_refused_without_being_shown() {
        let short = Secret::new("tiny").unwrap_err();
        assert!(!short.contains("tiny"), "{short}");
        assert!(Secret::new("0123456789abcdef\nmore").is_err());
        let s = Secret::new("  0123456789abcdef \n").unwrap();
        assert_eq!(s.expose(), "0123456789abcdef");
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn a_server_that_does_not_extend_the_nonce_is_refused() {
        let secret = Secret::new("0123456789abcdef").unwrap();
        let (mut c, _) = ScramClient::start(NODE_USER, &secret);
        let err = c.respond(b"r=someone-else,s=c2FsdA==,i=4096").unwrap_err();
        assert!(err.contains("nonce"), "{err}");
    }
}
