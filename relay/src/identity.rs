//! The installation's identity: its CA, the relay's server certificate,
//! join tokens and the node certificates issued against them.
//!
//! Everything lives as files in the state dir, so `token create` run from a
//! shell is seen by a relay that is already serving:
//!
//! ```text
//! state-dir/
//!   ca.pem  ca-key.pem         the installation's CA (key 0600)
//!   server.pem server-key.pem  re-issued at every start, for the names in use
//!   tokens.json                join tokens: id, SHA-256 of the secret, expiry
//!   nodes/<node-id>.json       nodes that enrolled, and when
//!   relay-id                   this relay's stable name
//! ```
//!
//! Join tokens have the format of [`tunnelgate_proto::token`].

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tunnelgate_proto::token::{JoinToken, MalformedToken};
use tunnelgate_proto::NodeId;
use tunnelgate_session::tls::{self, Identity};

/// How long issued node certificates are valid.
const NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are back-dated a little so a host with a slow clock accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Something in the identity store failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file in the state dir could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A certificate could not be made or parsed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A file in the state dir is corrupt.
    #[error("{path} is corrupt ({reason}); restore it from backup or remove it to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why a join token was refused. The messages go back to the agent, so
/// they say what to do and never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the `tgjoin1.…` form.
    #[error(transparent)]
    Malformed(#[from] MalformedToken),
    /// Made for another installation's CA.
    #[error("the join token was made by another relay installation (its CA fingerprint differs)")]
    WrongInstallation,
    /// No such token, or the secret does not match.
    #[error("the join token is not known to this relay; create one with `tunnelgate-relay token create`")]
    Unknown,
    /// Past its expiry.
    #[error(
        "the join token expired at {0}; create a new one with `tunnelgate-relay token create`"
    )]
    Expired(String),
}

/// A stored join token; the secret is kept only as its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredToken {
    /// Public id, safe to log.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// The installation's CA and everything issued from it.
pub struct Authority {
    dir: PathBuf,
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    relay_id: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a state file readable by its owner only, atomically.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    tunnelgate_session::files::write_atomic(path, contents, true).map_err(io_err(path))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats seconds since the epoch as RFC 3339.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
}

impl Authority {
    /// Opens the state dir, creating the CA (and the dir) on first start.
    pub fn open(dir: &Path) -> Result<Self, IdentityError> {
        fs::create_dir_all(dir.join("nodes")).map_err(io_err(dir))?;
        let ca_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if !ca_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "tunnelgate installation CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, CA_LIFETIME);
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_path, cert.pem().as_bytes())?;
            tracing::info!(dir = %dir.display(), "created a new installation CA");
        }
        let ca_pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let corrupt = |path: &Path, e: &dyn std::fmt::Display| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, &e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| corrupt(&ca_path, &e))?;
        let ca_der = tls::certs_from_pem(&ca_pem)
            .map_err(|e| corrupt(&ca_path, &e))?
            .remove(0);

        let id_path = dir.join("relay-id");
        let relay_id = match fs::read_to_string(&id_path) {
            Ok(id) => id.trim().to_owned(),
            Err(_) => {
                let id = format!("relay-{}", random_hex(4));
                write_private(&id_path, id.as_bytes())?;
                id
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            ca_pem,
            ca_der,
            issuer,
            relay_id,
        })
    }

    /// This relay's stable name.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The CA certificate.
    pub fn ca_der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA's fingerprint as join tokens carry it.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        tls::fingerprint(&self.ca_der)
    }

    /// Issues a fresh server certificate for `names` (DNS names or IPs),
    /// writes it to the state dir and returns it with the CA appended, so
    /// first-contact agents can check the CA against their token.
    pub fn server_identity(&self, names: &[String]) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("tunnelgate relay {}", self.relay_id),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, NODE_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain_pem = format!("{}{}", cert.pem(), self.ca_pem);
        let key_pem = key.serialize_pem();
        write_private(&self.dir.join("server.pem"), chain_pem.as_bytes())?;
        write_private(&self.dir.join("server-key.pem"), key_pem.as_bytes())?;
        Ok(Identity::from_pem(&chain_pem, &key_pem)?)
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    fn load_tokens(&self) -> Result<Vec<StoredToken>, IdentityError> {
        let path = self.tokens_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Makes a join token valid for `ttl` and returns its full text, the
    /// only time the secret is ever seen.
    pub fn create_token(&self, ttl: Duration) -> Result<(String, StoredToken), IdentityError> {
        let mut tokens = self.load_tokens()?;
        let now = unix_now();
        // Expired tokens are useless; drop them while rewriting the file.
        tokens.retain(|t| t.expires_at > now);
        let id = random_hex(4);
        let secret = random_hex(16);
        let stored = StoredToken {
            id: id.clone(),
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            created_at: now,
            expires_at: now + ttl.as_secs(),
        };
        tokens.push(stored.clone());
        let json = serde_json::to_vec_pretty(&tokens).expect("tokens serialize");
        write_private(&self.tokens_path(), &json)?;
        let text = JoinToken {
            ca_fingerprint: self.ca_fingerprint(),
            id,
            secret,
        };
        Ok((text.to_string(), stored))
    }

    /// Checks a join token presented by an agent.
    pub fn check_token(
        &self,
        text: &str,
    ) -> Result<Result<StoredToken, TokenError>, IdentityError> {
        let token: JoinToken = match text.parse() {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.into())),
        };
        if token.ca_fingerprint != self.ca_fingerprint() {
            return Ok(Err(TokenError::WrongInstallation));
        }
        let hash = hex::encode(Sha256::digest(token.secret.as_bytes()));
        let found = self.load_tokens()?.into_iter().find(|t| {
            t.id == token.id && constant_time_eq(t.secret_sha256.as_bytes(), hash.as_bytes())
        });
        Ok(match found {
            None => Err(TokenError::Unknown),
            Some(t) if t.expires_at <= unix_now() => {
                Err(TokenError::Expired(rfc3339(t.expires_at)))
            }
            Some(t) => Ok(t),
        })
    }

    /// Signs an agent's certificate request for `node_id`. Only the key is
    /// taken from the request; names and usages are ours.
    pub fn issue_node_cert(
        &self,
        node_id: &NodeId,
        csr_pem: &str,
    ) -> Result<String, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_id.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, NODE_CERT_LIFETIME);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let record = serde_json::json!({ "node_id": node_id, "enrolled_at": rfc3339(unix_now()) });
        let path = self.dir.join("nodes").join(format!("{node_id}.json"));
        write_private(&path, record.to_string().as_bytes())?;
        Ok(cert.pem())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether `node_id` ever enrolled here.
    pub fn is_enrolled(&self, node_id: &NodeId) -> bool {
        self.dir
            .join("nodes")
            .join(format!("{node_id}.json"))
            .exists()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("valid")
    }

    #[test]
    fn tokens_are_checked_by_secret_installation_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::open(dir.path()).unwrap();
        let (text, _) = auth.create_token(Duration::from_secs(600)).unwrap();
        assert!(auth.check_token(&text).unwrap().is_ok());

        let stored = fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        let secret = text.rsplit('.').next().unwrap();
        assert!(!stored.contains(secret), "the secret is stored only hashed");

        let mut forged = text.clone();
        forged.pop();
        forged.push('x');
        assert_eq!(
            auth.check_token(&forged).unwrap().unwrap_err(),
            TokenError::Unknown
        );
        assert!(matches!(
            auth.check_token("nonsense").unwrap(),
            Err(TokenError::Malformed(_))
        ));

        let (expired, _) = auth.create_token(Duration::ZERO).unwrap();
        assert!(matches!(
            auth.check_token(&expired).unwrap(),
            Err(TokenError::Expired(_))
        ));

        let other = tempfile::tempdir().unwrap();
        let (foreign, _) = Authority::open(other.path())
            .unwrap()
            .create_token(Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            auth.check_token(&foreign).unwrap().unwrap_err(),
            TokenError::WrongInstallation
        );
    }

    #[test]
    fn the_ca_survives_restarts_and_node_certs_name_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::open(dir.path()).unwrap();
        let again = Authority::open(dir.path()).unwrap();
        assert_eq!(first.ca_fingerprint(), again.ca_fingerprint());
        assert_eq!(first.relay_id(), again.relay_id());

        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["evil.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pem = again.issue_node_cert(&node("web-1"), &csr).unwrap();
        let der = tls::certs_from_pem(&pem).unwrap().remove(0);
        assert_eq!(tls::node_id_from_cert(&der), Some(node("web-1")));
        assert!(again.is_enrolled(&node("web-1")));
        assert!(!again.is_enrolled(&node("web-2")));
    }
}
