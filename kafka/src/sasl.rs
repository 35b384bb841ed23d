//! SASL authentication: PLAIN and SCRAM-SHA-256 (RFC 5802 / 7677) against the configured
//! users, as a pure exchange per connection (the server answers each client message).
//!
//! Passwords are kept only as SCRAM credentials (salted, 4096 PBKDF2 iterations, Kafka's
//! minimum) and a SHA-256 digest for PLAIN; nothing here logs or returns a password, and a
//! failure says "invalid user name or password" whichever was wrong. An unknown SCRAM user
//! gets a salt like a known one, so the exchange does not reveal which users exist.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// PBKDF2 iterations of the stored SCRAM credentials.
const ITERATIONS: u32 = 4096;

/// The mechanisms offered.
pub(crate) const MECHANISMS: [&str; 2] = ["PLAIN", "SCRAM-SHA-256"];

/// What a failed exchange tells the client.
pub(crate) const FAILED: &str = "Authentication failed: invalid user name or password";

#[derive(Clone)]
struct Credential {
    /// SHA-256 of the password (PLAIN compares digests in constant time).
    plain: [u8; 32],
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

/// The users who may connect, with their credentials.
#[derive(Clone, Default)]
pub struct Users {
    users: BTreeMap<String, Credential>,
    /// The salt and keys an unknown user's SCRAM exchange runs with (it can never succeed).
    decoy: Option<Credential>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: credentials are secrets.
        f.debug_struct("Users")
            .field("names", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref());
    out
}

/// Equal without an early exit on the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    // The system's random source failing leaves zeros: still unique per process start
    // combined with the client's nonce, and it never happens on Linux.
    let _ = SystemRandom::new().fill(&mut out);
    out
}

/// Random bits for ids a client must not be able to guess (member and fetch-session ids).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&random(8));
    u64::from_be_bytes(b)
}

fn credential(password: &str) -> Credential {
    let salt = random(16);
    let mut salted = [0u8; 32];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    Credential {
        plain: sha256(password.as_bytes()),
        salt,
        stored_key: sha256(&hmac256(&salted, b"Client Key")),
        server_key: hmac256(&salted, b"Server Key"),
    }
}

impl Users {
    /// Users from (name, password) pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Users {
        let users: BTreeMap<String, Credential> = pairs
            .into_iter()
            .map(|(u, p)| {
                let c = credential(&p);
                (u, c)
            })
            .collect();
        let decoy = (!users.is_empty()).then(|| credential(&B64.encode(random(24))));
        Users { users, decoy }
    }

    /// These users and one more (a cluster's nodes: `name` with `password`).
    pub fn with_user(&self, name: &str, password: &str) -> Users {
        let mut users = self.clone();
        users.users.insert(name.to_string(), credential(password));
        if users.decoy.is_none() {
            users.decoy = Some(credential(&B64.encode(random(24))));
        }
        users
    }

    /// No users: authentication is off.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Parses `user:password` entries, one per line (`#` starts a comment line), and with
    /// `commas` also comma-separated (a password with a comma then needs a file). The user
    /// ends at the first `:`. Errors name the entry by position, never its content.
    pub fn parse(text: &str, source: &str, commas: bool) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for (i, entry) in text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| {
                if commas {
                    l.split(',').collect::<Vec<_>>()
                } else {
                    vec![l]
                }
            })
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            match entry.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                    out.push((u.to_string(), p.to_string()))
                }
                _ => {
                    return Err(format!(
                        "{source}: entry {} is not user:password (both non-empty)",
                        i + 1
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// One connection's authentication exchange.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    mechanism: Option<&'static str>,
    /// SCRAM after the client's first message: what its final message is checked against.
    scram: Option<ScramState>,
}

#[derive(Debug)]
struct ScramState {
    user: String,
    known: bool,
    client_nonce: String,
    nonce: String,
    /// client-first-bare "," server-first: the start of the AuthMessage.
    auth_start: String,
}

/// The answer to one SaslAuthenticate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send these bytes; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated as this user; send these (final) bytes.
    Done(String, Vec<u8>),
    /// Refused: answer SASL_AUTHENTICATION_FAILED and close.
    Failed,
}

impl Exchange {
    /// SaslHandshake: picks a mechanism; false if it is not offered.
    pub(crate) fn handshake(&mut self, mechanism: &str) -> bool {
        self.mechanism = MECHANISMS.iter().copied().find(|m| *m == mechanism);
        self.scram = None;
        self.mechanism.is_some()
    }

    /// SaslAuthenticate: the client's next message.
    pub(crate) fn step(&mut self, users: &Users, message: &[u8]) -> Step {
        match self.mechanism {
            Some("PLAIN") => plain(users, message),
            Some("SCRAM-SHA-256") => match self.scram.take() {
                None => self.scram_first(users, message),
                Some(state) => scram_final(users, &state, message),
            },
            _ => Step::Failed,
        }
    }

    fn scram_first(&mut self, users: &Users, message: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(message) else {
            return Step::Failed;
        };
        // gs2 header: no channel binding ("n,,"), or "y,," (client could but we do not);
        // an authorization id other than the user is not supported.
        let Some(bare) = text
            .strip_prefix("n,,")
            .or_else(|| text.strip_prefix("y,,"))
        else {
            return Step::Failed;
        };
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                user = Some(v.replace("=2C", ",").replace("=3D", "="));
            } else if let Some(v) = attr.strip_prefix("r=") {
                client_nonce = Some(v.to_string());
            } else if attr.starts_with("m=") {
                return Step::Failed;
            }
        }
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return Step::Failed;
        };
        if client_nonce.is_empty() {
            return Step::Failed;
        }
        let (known, salt) = match users.users.get(&user).or(users.decoy.as_ref()) {
            Some(c) => (users.users.contains_key(&user), c.salt.clone()),
            None => return Step::Failed,
        };
        let nonce = format!("{client_nonce}{}", B64.encode(random(18)));
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&salt));
        self.scram = Some(ScramState {
            user,
            known,
            client_nonce,
            nonce,
            auth_start: format!("{bare},{server_first}"),
        });
        Step::Continue(server_first.into_bytes())
    }
}

fn plain(users: &Users, message: &[u8]) -> Step {
    // authzid NUL authcid NUL password
    let mut parts = message.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed;
    };
    let Ok(user) = std::str::from_utf8(user) else {
        return Step::Failed;
    };
    if !authz.is_empty() && authz != user.as_bytes() {
        return Step::Failed;
    }
    if user == sluice_cluster::auth::NODE_USER {
        // The nodes' secret never crosses the wire: SCRAM only.
        return Step::Failed;
    }
    let given = sha256(password);
    match users.users.get(user) {
        Some(c) if same(&c.plain, &given) => Step::Done(user.to_string(), Vec::new()),
        _ => Step::Failed,
    }
}

fn scram_final(users: &Users, state: &ScramState, message: &[u8]) -> Step {
    let Ok(text) = std::str::from_utf8(message) else {
        return Step::Failed;
    };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return Step::Failed;
    };
    let mut channel = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        if let Some(v) = attr.strip_prefix("c=") {
            channel = Some(v);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v);
        }
    }
    // "biws" is base64("n,,"), "eSws" base64("y,,"): the gs2 header without channel binding.
    if !matches!(channel, Some("biws") | Some("eSws")) {
        return Step::Failed;
    }
    // The nonce must be the server's. librdkafka before 2.6.1 sent its own nonce again in
    // front of it (its PR #4895); Kafka 3.8.1 accepts that, and so do we: the proof covers
    // the message as sent either way.
    let doubled = format!("{}{}", state.client_nonce, state.nonce);
    if nonce != Some(state.nonce.as_str()) && nonce != Some(doubled.as_str()) {
        return Step::Failed;
    }
    let Ok(proof) = B64.decode(proof) else {
        return Step::Failed;
    };
    let Some(c) = users.users.get(&state.user).or(users.decoy.as_ref()) else {
        return Step::Failed;
    };
    let auth_message = format!("{},{without_proof}", state.auth_start);
    let signature = hmac256(&c.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Step::Failed;
    }
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    if !state.known || !same(&sha256(&client_key), &c.stored_key) {
        return Step::Failed;
    }
    let server_signature = hmac256(&c.server_key, auth_message.as_bytes());
    Step::Done(
        state.user.clone(),
        format!("v={}", B64.encode(server_signature)).into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::new([("alice".to_string(), "s3cret".to_string())])
    }

    #[test]
    fn plain_accepts_the_password_and_nothing_else() {
        let u = users();
        let mut x = Exchange::default();
        assert!(x.handshake("PLAIN"));
        assert_eq!(
            x.step(&u, b"\0alice\0s3cret"),
            Step::Done("alice".into(), vec![])
        );
        assert_eq!(
            x.step(&u, b"alice\0alice\0s3cret"),
            Step::Done("alice".into(), vec![])
        );
        assert_eq!(x.step(&u, b"\0alice\0wrong"), Step::Failed);
        assert_eq!(x.step(&u, b"\0bob\0s3cret"), Step::Failed);
        assert_eq!(x.step(&u, b"mallory\0alice\0s3cret"), Step::Failed);
        assert_eq!(x.step(&u, b"garbage"), Step::Failed);
        assert!(!x.handshake("GSSAPI"));
    }

    /// The nodes' SCRAM client ([`sluice_cluster::auth::ScramClient`]) against the server:
    /// how the exchange ends, the server's last message checked by the client.
    fn scram_client(u: &Users, user: &str, password: &str) -> Step {
        use sluice_cluster::auth::{ScramClient, Secret};
        let mut x = Exchange::default();
        assert!(x.handshake("SCRAM-SHA-256"));
        // Secrets are 16 characters or more; the test's short passwords are padded alike.
        let secret = Secret::new(&format!("{password:_<16}")).unwrap();
        let (mut client, first) = ScramClient::start(user, &secret);
        let Step::Continue(server_first) = x.step(u, &first) else {
            return Step::Failed;
        };
        let proof = client.respond(&server_first).unwrap();
        let step = x.step(u, &proof);
        if let Step::Done(_, ref last) = step {
            client.finish(last).expect("the server's signature");
        }
        step
    }

    #[test]
    fn scram_sha_256_proves_both_sides_and_refuses_wrong_passwords_and_unknown_users() {
        // The client pads passwords as a cluster secret must be.
        let u = Users::new([("alice".to_string(), "s3cret__________".to_string())]);
        assert!(
            matches!(scram_client(&u, "alice", "s3cret"), Step::Done(ref n, _) if n == "alice")
        );
        assert_eq!(scram_client(&u, "alice", "wrong"), Step::Failed);
        // An unknown user gets a salt too (no enumeration), and fails at the end.
        assert_eq!(scram_client(&u, "bob", "s3cret"), Step::Failed);
        // A node's user added to the Kafka users.
        let nodes = u.with_user(sluice_cluster::auth::NODE_USER, "s3cret-of-the-cluster");
        assert!(matches!(
            scram_client(
                &nodes,
                sluice_cluster::auth::NODE_USER,
                "s3cret-of-the-cluster"
            ),
            Step::Done(..)
        ));
    }

    #[test]
    fn user_lists_parse_and_errors_show_no_secret() {
        let pairs = Users::parse("# users\nalice:a:b\nbob:pw, carol:x", "f", true).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("alice".into(), "a:b".into()),
                ("bob".into(), "pw".into()),
                ("carol".into(), "x".into())
            ]
        );
        let e = Users::parse("alice:ok,hunter2", "SLUICE_KAFKA_USERS", true).unwrap_err();
        assert!(e.contains("entry 2") && !e.contains("hunter2"), "{e}");
        let file = Users::parse("bob:pa:ss,word\n", "file", false).unwrap();
        assert_eq!(file, vec![("bob".into(), "pa:ss,word".into())]);
        assert!(!format!("{:?}", users()).contains("s3cret"));
    }
}
