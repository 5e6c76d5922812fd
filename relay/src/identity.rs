//! The installation's identity: its CA, the relay's server certificate,
//! node and client certificates, and the node records that say which
//! certificates are still good.
//!
//! Everything lives as files in the state dir, so `token create` or
//! `node revoke` run from a shell are seen by a relay that is serving:
//!
//! ```text
//! state-dir/
//!   ca.pem  ca-key.pem           the installation's CA (key 0600)
//!   server.pem server-key.pem    re-issued at every start, for the names in use
//!   tokens.json api-keys.json    hashed secrets (see `credentials`)
//!   nodes/<tenant>/<node>.json   enrolled nodes: current certificate serials, revocation
//!   revoked.json                 serials of revoked node certificates, watched by the relay
//!   relay-id                     this relay's stable name
//!   state.lock                   taken for every read-modify-write
//! ```
//!
//! Certificates name their holder in the subject: CN is the node id or
//! client name, O the tenant, OU the role (`node` or `client`), so a node
//! certificate never opens the control-plane API and a client certificate
//! never serves as an agent.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use tunnelgate_proto::message::{RefusalCode, Refused};
use tunnelgate_proto::token::{JoinToken, MalformedToken};
use tunnelgate_proto::{NodeId, TenantId};
use tunnelgate_session::tls::{self, Identity, Role};

use crate::credentials::{Credential, Kind, Locked, NewCredential, Refusal, Store};

/// How long the relay's own server certificate is valid (re-issued at
/// every start).
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
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
    /// A revoked node asked for a certificate.
    #[error("the node was revoked")]
    Revoked,
}

/// The installation's CA and everything issued from it.
pub struct Authority {
    dir: PathBuf,
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    relay_id: String,
    store: Store,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a state file readable by its owner only, atomically.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    tunnelgate_session::files::write_atomic(path, contents, true).map_err(io_err(path))
}

/// Reads a JSON state file; `None` if it does not exist yet.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a JSON state file readable by its owner only, atomically.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), IdentityError> {
    let json = serde_json::to_vec_pretty(value).expect("state files serialize");
    write_private(path, &json)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
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
            store: Store::new(dir),
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
        validity(&mut params, SERVER_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain_pem = format!("{}{}", cert.pem(), self.ca_pem);
        let key_pem = key.serialize_pem();
        write_private(&self.dir.join("server.pem"), chain_pem.as_bytes())?;
        write_private(&self.dir.join("server-key.pem"), key_pem.as_bytes())?;
        Ok(Identity::from_pem(&chain_pem, &key_pem)?)
    }

    /// The join tokens and API keys.
    pub fn credentials(&self) -> &Store {
        &self.store
    }

    /// Makes a join token for `new.tenant` and returns its full text, the
    /// only time the secret is ever seen.
    pub fn create_join_token(
        &self,
        new: NewCredential,
    ) -> Result<(String, Credential), IdentityError> {
        let (stored, secret) = self.store.create(Kind::JoinToken, new)?;
        let text = JoinToken {
            ca_fingerprint: self.ca_fingerprint(),
            id: stored.id.clone(),
            secret,
        };
        Ok((text.to_string(), stored))
    }

    /// Checks a join token presented by an agent and consumes one use.
    pub fn use_join_token(&self, text: &str) -> Result<Result<Credential, Refusal>, IdentityError> {
        let token: JoinToken = match text.parse() {
            Ok(t) => t,
            Err(MalformedToken) => {
                return Ok(Err(Refusal::Malformed(
                    "join token",
                    "tunnelgate-relay token create",
                )))
            }
        };
        if token.ca_fingerprint != self.ca_fingerprint() {
            return Ok(Err(Refusal::WrongInstallation));
        }
        self.store.use_token(&token.id, &token.secret)
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        subject: (&TenantId, &str, Role),
        lifetime: Duration,
    ) -> Result<rcgen::Certificate, IdentityError> {
        let (tenant, name, role) = subject;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, tenant.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, lifetime);
        Ok(params.signed_by(public_key, &self.issuer)?)
    }

    fn node_path(&self, tenant: &TenantId, node_id: &NodeId) -> PathBuf {
        self.dir
            .join("nodes")
            .join(tenant.as_str())
            .join(format!("{node_id}.json"))
    }

    /// The record of a node that enrolled, if any.
    pub fn node_record(
        &self,
        tenant: &TenantId,
        node_id: &NodeId,
    ) -> Result<Option<NodeRecord>, IdentityError> {
        read_json(&self.node_path(tenant, node_id))
    }

    fn save_node(&self, record: &NodeRecord) -> Result<(), IdentityError> {
        let path = self.node_path(&record.tenant, &record.node_id);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        write_json(&path, record)
    }

    /// Signs an agent's certificate request for `node_id` of `tenant`. Only
    /// the key is taken from the request; names and usages are ours. On
    /// `renew` the previous certificate stays good (the agent may not have
    /// stored the new one yet); otherwise (a new enrolment) it is replaced.
    pub fn issue_node_cert(
        &self,
        tenant: &TenantId,
        node_id: &NodeId,
        csr_pem: &str,
        lifetime: Duration,
        renew: bool,
    ) -> Result<String, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = self.issue(
            &csr.public_key,
            (tenant, node_id.as_str(), Role::Node),
            lifetime,
        )?;
        let serial = tls::subject(cert.der())
            .map(|s| s.serial)
            .unwrap_or_default();
        let _lock = Locked::take(&self.dir)?;
        let mut record = match self.node_record(tenant, node_id)? {
            Some(r) if renew => r,
            _ => NodeRecord {
                tenant: tenant.clone(),
                node_id: node_id.clone(),
                enrolled_at: unix_now(),
                serials: Vec::new(),
                revoked_at: None,
            },
        };
        if renew && record.revoked_at.is_some() {
            return Err(IdentityError::Revoked);
        }
        record.serials.push(serial);
        let keep = record.serials.len().saturating_sub(2);
        record.serials.drain(..keep);
        self.save_node(&record)?;
        Ok(cert.pem())
    }

    /// Makes a control-plane client certificate and key for `name` of
    /// `tenant`; returns (certificate PEM, key PEM).
    pub fn issue_client_cert(
        &self,
        tenant: &TenantId,
        name: &str,
        lifetime: Duration,
    ) -> Result<(String, String), IdentityError> {
        let key = KeyPair::generate()?;
        let cert = self.issue(&key, (tenant, name, Role::Client), lifetime)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Whether a node certificate presented by an agent may still be used:
    /// its node enrolled, is not revoked, and this is one of its current
    /// certificates. The refusal goes to the agent as it is.
    pub fn check_node_cert(&self, subject: &tls::Subject) -> Result<NodeKey, Refused> {
        let refuse = |code, message: String| Refused { code, message };
        let mismatch = |message: String| refuse(RefusalCode::IdentityMismatch, message);
        let (Some(tenant), Some(Role::Node), Ok(node_id)) = (
            subject.tenant.clone(),
            subject.role,
            NodeId::new(subject.name.clone()),
        ) else {
            return Err(mismatch("this certificate is not a node certificate of this installation; enrol with a join token".into()));
        };
        let record = self.node_record(&tenant, &node_id).map_err(|e| {
            tracing::warn!(error = %e, "cannot read a node record");
            mismatch("the relay cannot read its node records; see the relay's log".into())
        })?;
        let key = NodeKey { tenant, node_id };
        match record {
            Some(NodeRecord {
                revoked_at: Some(at),
                ..
            }) => Err(refuse(
                RefusalCode::Revoked,
                format!(
                    "node {key} was revoked at {}; enrol it again with a new join token",
                    rfc3339(at)
                ),
            )),
            Some(r) if r.serials.contains(&subject.serial) => Ok(key),
            Some(_) => Err(mismatch(format!("this certificate for node {key} was replaced by a newer one; use the newest node.pem, or enrol again with a new join token"))),
            None => Err(mismatch(format!("node {key} is not enrolled here (its record is gone); enrol it again with a new join token"))),
        }
    }

    /// Revokes a node: its certificates are refused from now on, and a
    /// serving relay drops its session (it watches `revoked.json`).
    pub fn revoke_node(&self, key: &NodeKey) -> Result<Option<NodeRecord>, IdentityError> {
        let _lock = Locked::take(&self.dir)?;
        let Some(mut record) = self.node_record(&key.tenant, &key.node_id)? else {
            return Ok(None);
        };
        let now = unix_now();
        record.revoked_at.get_or_insert(now);
        let serials = std::mem::take(&mut record.serials);
        self.save_node(&record)?;
        let mut revoked = self.revoked()?;
        revoked.push(Revocation {
            tenant: key.tenant.clone(),
            node_id: key.node_id.clone(),
            serials,
            at: now,
        });
        write_json(&self.revoked_path(), &revoked)?;
        Ok(Some(record))
    }

    fn revoked_path(&self) -> PathBuf {
        self.dir.join("revoked.json")
    }

    /// Every revocation so far.
    pub fn revoked(&self) -> Result<Vec<Revocation>, IdentityError> {
        Ok(read_json(&self.revoked_path())?.unwrap_or_default())
    }

    /// Modification time of the files a serving relay watches, so it
    /// rereads them only when they changed.
    pub fn watched_stamp(&self) -> Vec<Option<SystemTime>> {
        [
            self.revoked_path(),
            self.dir.join(crate::credentials::Kind::ApiKey.file_name()),
        ]
        .iter()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether `key` ever enrolled here (and was not revoked).
    pub fn is_enrolled(&self, key: &NodeKey) -> bool {
        matches!(self.node_record(&key.tenant, &key.node_id), Ok(Some(r)) if r.revoked_at.is_none())
    }
}

/// How long after its issue a node certificate of `lifetime` is renewed:
/// two thirds of the way, leaving a third for retries and outages.
pub fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(2.0 / 3.0)
}

/// When the holder of `cert` (issued here) should renew it, counted from
/// now.
pub fn renew_in(cert: &tls::Subject) -> Duration {
    let issued = cert.not_before + CLOCK_SKEW.as_secs() as i64;
    let lifetime = Duration::from_secs((cert.not_after - issued).max(0) as u64);
    let renew_at = Duration::from_secs(issued.max(0) as u64) + renewal_delay(lifetime);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    renew_at.saturating_sub(now)
}

/// A node as the relay addresses it: node ids are unique within a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeKey {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
}

impl NodeKey {
    /// Parses `tenant/node`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (tenant, node) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not of the form TENANT/NODE"))?;
        Ok(Self {
            tenant: TenantId::new(tenant).map_err(|e| e.to_string())?,
            node_id: NodeId::new(node).map_err(|e| e.to_string())?,
        })
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.node_id)
    }
}

/// What the relay keeps about an enrolled node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
    /// Seconds since the epoch.
    pub enrolled_at: u64,
    /// Serials of the certificates that are good: the newest two.
    pub serials: Vec<String>,
    /// When an operator revoked it.
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

/// One `node revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
    /// The certificates that were good until then.
    pub serials: Vec<String>,
    /// Seconds since the epoch.
    pub at: u64,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, n: &str) -> NodeKey {
        NodeKey::parse(&format!("{t}/{n}")).unwrap()
    }

    fn csr() -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec!["evil.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn subject_of(pem: &str) -> tls::Subject {
        tls::subject(&tls::certs_from_pem(pem).unwrap()[0]).unwrap()
    }

    #[test]
    fn join_tokens_carry_their_tenant_and_installation() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::open(dir.path()).unwrap();
        let new = |tenant: &str| NewCredential {
            tenant: TenantId::new(tenant).unwrap(),
            ttl: Some(Duration::from_secs(60)),
            uses: None,
            name: None,
        };
        let (text, _) = auth.create_join_token(new("acme")).unwrap();
        let used = auth.use_join_token(&text).unwrap().unwrap();
        assert_eq!(used.tenant.as_str(), "acme");
        assert!(matches!(
            auth.use_join_token("nonsense").unwrap(),
            Err(Refusal::Malformed(..))
        ));
        let other = tempfile::tempdir().unwrap();
        let (foreign, _) = Authority::open(other.path())
            .unwrap()
            .create_join_token(new("acme"))
            .unwrap();
        assert_eq!(
            auth.use_join_token(&foreign).unwrap().unwrap_err(),
            Refusal::WrongInstallation
        );
    }

    #[test]
    fn certificates_name_tenant_node_and_role_and_revocation_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::open(dir.path()).unwrap();
        let auth = Authority::open(dir.path()).unwrap();
        assert_eq!(first.ca_fingerprint(), auth.ca_fingerprint());
        assert_eq!(first.relay_id(), auth.relay_id());

        let web = key("acme", "web-1");
        let ttl = Duration::from_secs(600);
        let pem = auth
            .issue_node_cert(&web.tenant, &web.node_id, &csr(), ttl, false)
            .unwrap();
        let subject = subject_of(&pem);
        assert_eq!(subject.name, "web-1");
        assert_eq!(subject.tenant, Some(web.tenant.clone()));
        assert_eq!(subject.role, Some(Role::Node));
        assert_eq!(auth.check_node_cert(&subject), Ok(web.clone()));
        assert!(auth.is_enrolled(&web));
        assert!(!auth.is_enrolled(&key("other", "web-1")));

        // Renewal keeps the previous certificate good, and only that one.
        let renewed = auth
            .issue_node_cert(&web.tenant, &web.node_id, &csr(), ttl, true)
            .unwrap();
        assert!(auth.check_node_cert(&subject).is_ok());
        let third = auth
            .issue_node_cert(&web.tenant, &web.node_id, &csr(), ttl, true)
            .unwrap();
        let err = auth.check_node_cert(&subject).unwrap_err();
        assert!(err.message.contains("replaced"), "{err:?}");
        assert_eq!(err.code, RefusalCode::IdentityMismatch);
        assert!(auth.check_node_cert(&subject_of(&renewed)).is_ok());

        auth.revoke_node(&web).unwrap().unwrap();
        let err = auth.check_node_cert(&subject_of(&third)).unwrap_err();
        assert!(err.message.contains("revoked"), "{err:?}");
        assert_eq!(err.code, RefusalCode::Revoked);
        assert!(!auth.is_enrolled(&web));
        assert!(matches!(
            auth.issue_node_cert(&web.tenant, &web.node_id, &csr(), ttl, true),
            Err(IdentityError::Revoked)
        ));
        let revoked = auth.revoked().unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].serials.len(), 2);

        // A client certificate is not a node certificate.
        let (client, _key) = auth
            .issue_client_cert(&web.tenant, "ci", Duration::from_secs(60))
            .unwrap();
        let client = subject_of(&client);
        assert_eq!(client.role, Some(Role::Client));
        assert!(auth.check_node_cert(&client).is_err());
    }
}
