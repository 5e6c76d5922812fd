//! The installation's CA: it issues the relay's server certificate, node
//! certificates (from an agent's CSR) and control-plane client
//! certificates, and tells a holder when to renew. Nothing else: which
//! certificates are still good is the state dir's business (node records,
//! revocations), and enrolment is the agent listener's.
//!
//! Certificates name their holder in the subject: CN is the node id or
//! client name, O the tenant, OU the role (`node`, `client`, `relay`,
//! `daemon`), so a node certificate never opens the control-plane API and
//! a client certificate never serves as an agent.
//!
//! The direct path has a CA of its own: a node's daemon is told to trust
//! only it, and it signs nothing but relays' direct-path client
//! certificates, so no node, client or foreign certificate can call a
//! daemon directly. Its key is derived from the installation CA's key
//! (an HMAC under a fixed label) and its certificate is deterministic, so
//! every relay given the same CA files has the very same direct-path CA
//! without another file to copy, and the CA's key cannot be got back from
//! it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use tunnelgate_proto::{NodeId, RelayId, TenantId};
use tunnelgate_session::tls::{self, Identity, Role};

use crate::state::{io_err, write_private, StateError};

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
    #[error(transparent)]
    State(#[from] StateError),
    /// A certificate could not be made or parsed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A daemon certificate was asked for names that cannot be certified.
    #[error("{0}")]
    BadDaemonNames(String),
    /// The CA directory given has no CA in it.
    #[error("{} has no ca.pem and ca-key.pem; copy them from the first relay's state dir, or make them with `tunnelgate-relay ca create --out {}`", .0.display(), .0.display())]
    NoCa(PathBuf),
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

/// The installation's CA and everything issued from it.
pub struct Authority {
    dir: PathBuf,
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    direct_ca_pem: String,
    direct_issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
}

impl Authority {
    /// Makes an installation CA in `dir` unless one is there; says
    /// whether it made one. The first relay (or `ca create`) does this once;
    /// every other relay of the installation is given the same two files.
    pub fn create_ca(dir: &Path) -> Result<bool, IdentityError> {
        fs::create_dir_all(dir).map_err(|e| IdentityError::from(io_err(dir)(e)))?;
        let ca_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if ca_path.exists() {
            return Ok(false);
        }
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
        Ok(true)
    }

    /// Opens the CA: from `ca_dir` when given (a directory or secret
    /// mounted into each relay of a cluster, only ever read), else from the
    /// state dir, creating it (and the dir) on first start. The relay's own
    /// server certificate is written to the state dir either way.
    pub fn open(state_dir: &Path, ca_dir: Option<&Path>) -> Result<Self, IdentityError> {
        fs::create_dir_all(state_dir).map_err(|e| IdentityError::from(io_err(state_dir)(e)))?;
        let dir = match ca_dir {
            Some(dir) => dir,
            None => {
                Self::create_ca(state_dir)?;
                state_dir
            }
        };
        let ca_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if !ca_path.exists() || !key_path.exists() {
            return Err(IdentityError::NoCa(dir.to_owned()));
        }
        let ca_pem =
            fs::read_to_string(&ca_path).map_err(|e| IdentityError::from(io_err(&ca_path)(e)))?;
        let key_pem =
            fs::read_to_string(&key_path).map_err(|e| IdentityError::from(io_err(&key_path)(e)))?;
        let corrupt = |path: &Path, e: &dyn std::fmt::Display| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, &e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| corrupt(&ca_path, &e))?;
        let ca_der = tls::certs_from_pem(&ca_pem)
            .map_err(|e| corrupt(&ca_path, &e))?
            .remove(0);
        let validity = tls::subject(&ca_der)
            .map(|s| (s.not_before, s.not_after))
            .ok_or_else(|| corrupt(&ca_path, &"not a certificate"))?;
        let (direct_ca_pem, direct_issuer) = direct_ca(&key_pem, validity)?;

        Ok(Self {
            dir: state_dir.to_owned(),
            ca_pem,
            ca_der,
            issuer,
            direct_ca_pem,
            direct_issuer,
        })
    }

    /// The direct-path CA certificate, PEM: what a node's daemon is told
    /// to verify clients with.
    pub fn direct_ca_pem(&self) -> &str {
        &self.direct_ca_pem
    }

    /// Issues the client certificate this relay presents to nodes'
    /// daemons on the direct path: CN the relay id, OU `relay-direct`,
    /// from the direct-path CA. Made afresh at every start, kept in
    /// memory only.
    pub fn direct_identity(&self, relay_id: &RelayId) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, relay_id.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, Role::RelayDirect.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, SERVER_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.direct_issuer)?;
        Ok(Identity::from_pem(&cert.pem(), &key.serialize_pem())?)
    }

    /// Signs a server certificate for the Docker daemon of `node_id` of
    /// `tenant`, for the key in the agent's request and the names and
    /// addresses the daemon is reached by; returns it, PEM.
    pub fn issue_daemon_cert(
        &self,
        tenant: &TenantId,
        node_id: &NodeId,
        csr_pem: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<String, IdentityError> {
        if names.is_empty() {
            return Err(IdentityError::BadDaemonNames(
                "a daemon certificate needs at least one DNS name or IP address the relays reach the daemon by; pass --name or --ip".into(),
            ));
        }
        let certifiable = |n: &String| {
            n.parse::<std::net::IpAddr>().is_ok()
                || (!n.is_empty()
                    && n.len() <= 253
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        };
        if let Some(bad) = names.iter().find(|n| !certifiable(n)) {
            return Err(IdentityError::BadDaemonNames(format!(
                "{bad:?} is neither a DNS name nor an IP address"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_id.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, tenant.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, Role::Daemon.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, lifetime);
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
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
    pub fn server_identity(
        &self,
        relay_id: &RelayId,
        names: &[String],
    ) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tunnelgate relay {relay_id}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, SERVER_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain_pem = format!("{}{}", cert.pem(), self.ca_pem);
        let key_pem = key.serialize_pem();
        write_private(&self.dir.join("server.pem"), chain_pem.as_bytes())?;
        write_private(&self.dir.join("server-key.pem"), key_pem.as_bytes())?;
        Ok(Identity::from_pem(&chain_pem, &key_pem)?)
    }

    /// Issues the certificate this relay presents to, and dials, its peer
    /// relays: CN and a DNS name are the relay id (peers dial it by that
    /// name), OU is `relay`, so no node or client certificate can pass
    /// for a relay. Made afresh at every start, kept in memory only.
    pub fn relay_identity(&self, relay_id: &RelayId) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![relay_id.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, relay_id.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, Role::Relay.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, SERVER_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain_pem = format!("{}{}", cert.pem(), self.ca_pem);
        Ok(Identity::from_pem(&chain_pem, &key.serialize_pem())?)
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

    /// Signs an agent's certificate request for `node_id` of `tenant`;
    /// returns the certificate (PEM) and its serial. Only the key is taken
    /// from the request; names and usages are ours.
    pub fn issue_node_cert(
        &self,
        tenant: &TenantId,
        node_id: &NodeId,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<(String, String), IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = self.issue(
            &csr.public_key,
            (tenant, node_id.as_str(), Role::Node),
            lifetime,
        )?;
        let serial = tls::subject(cert.der())
            .map(|s| s.serial)
            .unwrap_or_default();
        Ok((cert.pem(), serial))
    }

    /// Hex SHA-256 of the public key a certificate request asks for: what
    /// an enrolment is known by when the agent asks again.
    pub fn csr_key_sha256(csr_pem: &str) -> Result<String, IdentityError> {
        use rcgen::PublicKeyData;
        use sha2::{Digest, Sha256};
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        Ok(hex::encode(Sha256::digest(
            csr.public_key.subject_public_key_info(),
        )))
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

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// The direct-path CA, derived from the installation CA's key and
/// validity so that it is the same on every relay with the same CA files.
fn direct_ca(
    ca_key_pem: &str,
    (not_before, not_after): (i64, i64),
) -> Result<(String, Issuer<'static, KeyPair>), IdentityError> {
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ca_key_pem.trim().as_bytes()),
        b"tunnelgate direct-path CA v1",
    );
    let seed: [u8; 32] = mac.as_ref()[..32]
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes");
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| IdentityError::Cert(rcgen::Error::RingKeyRejected("ed25519 seed".into())))?;
    // PKCS#8 v2 for Ed25519 (RFC 8410), the shape ring itself writes.
    let mut der = vec![
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    der.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
    der.extend_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
    let key = KeyPair::try_from(der.as_slice())?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tunnelgate direct-path CA");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, Role::RelayDirect.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&seed[..16]));
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| IdentityError::Cert(rcgen::Error::Time))
    };
    params.not_before = at(not_before)?;
    params.not_after = at(not_after)?;
    let cert = params.self_signed(&key)?;
    let issuer = Issuer::new(params, key);
    Ok((cert.pem(), issuer))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn certificates_name_tenant_holder_and_role_and_the_ca_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::open(dir.path(), None).unwrap();
        let auth = Authority::open(dir.path(), None).unwrap();
        assert_eq!(first.ca_fingerprint(), auth.ca_fingerprint());

        let tenant = TenantId::new("acme").unwrap();
        let node = NodeId::new("web-1").unwrap();
        let ttl = Duration::from_secs(600);
        let (pem, serial) = auth.issue_node_cert(&tenant, &node, &csr(), ttl).unwrap();
        let subject = subject_of(&pem);
        assert_eq!(subject.name, "web-1", "the CSR's own names are ignored");
        assert_eq!(subject.tenant, Some(tenant.clone()));
        assert_eq!(subject.role, Some(Role::Node));
        assert_eq!(subject.serial, serial);
        let (_, again) = auth.issue_node_cert(&tenant, &node, &csr(), ttl).unwrap();
        assert_ne!(serial, again, "every certificate has its own serial");

        let (client, _key) = auth
            .issue_client_cert(&tenant, "ci", Duration::from_secs(60))
            .unwrap();
        assert_eq!(subject_of(&client).role, Some(Role::Client));
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_life() {
        assert_eq!(
            renewal_delay(Duration::from_secs(300)),
            Duration::from_secs(200)
        );
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::open(dir.path(), None).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let node = NodeId::new("n").unwrap();
        let (pem, _) = auth
            .issue_node_cert(&tenant, &node, &csr(), Duration::from_secs(300))
            .unwrap();
        let due = renew_in(&subject_of(&pem));
        assert!(
            due <= Duration::from_secs(200) && due > Duration::from_secs(190),
            "{due:?}"
        );
    }

    #[test]
    fn the_direct_path_ca_is_the_same_on_every_relay_and_signs_only_relays() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::open(dir.path(), None).unwrap();
        let b = Authority::open(dir.path(), None).unwrap();
        assert_eq!(
            a.direct_ca_pem(),
            b.direct_ca_pem(),
            "relays with the same CA files must agree on the direct-path CA"
        );
        assert!(!a
            .direct_ca_pem()
            .contains(a.ca_pem().lines().nth(1).unwrap()));
        let other = tempfile::tempdir().unwrap();
        let c = Authority::open(other.path(), None).unwrap();
        assert_ne!(a.direct_ca_pem(), c.direct_ca_pem());

        // As a daemon checks clients: the relay's direct-path certificate
        // verifies against the direct-path CA; a node certificate does
        // not, and the installation CA does not verify the relay's.
        let verifies = |root_pem: &str, leaf: &rustls::pki_types::CertificateDer<'static>| {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(tls::certs_from_pem(root_pem).unwrap().remove(0))
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                tls::provider(),
            )
            .build()
            .unwrap();
            verifier
                .verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now())
                .is_ok()
        };
        let relay = a
            .direct_identity(&RelayId::new("relay-a").unwrap())
            .unwrap();
        let relay_leaf = relay.chain[0].clone();
        assert_eq!(
            tls::subject(&relay_leaf).unwrap().role,
            Some(Role::RelayDirect)
        );
        assert!(verifies(a.direct_ca_pem(), &relay_leaf));
        assert!(verifies(b.direct_ca_pem(), &relay_leaf));
        assert!(!verifies(c.direct_ca_pem(), &relay_leaf));
        assert!(!verifies(a.ca_pem(), &relay_leaf));
        let tenant = TenantId::new("acme").unwrap();
        let (node_pem, _) = a
            .issue_node_cert(
                &tenant,
                &NodeId::new("n").unwrap(),
                &csr(),
                Duration::from_secs(60),
            )
            .unwrap();
        let node_leaf = tls::certs_from_pem(&node_pem).unwrap().remove(0);
        assert!(verifies(a.ca_pem(), &node_leaf));
        assert!(!verifies(a.direct_ca_pem(), &node_leaf));
    }

    #[test]
    fn a_ca_dir_is_read_never_made() {
        let state = tempfile::tempdir().unwrap();
        let ca = tempfile::tempdir().unwrap();
        let err = Authority::open(state.path(), Some(ca.path())).unwrap_err();
        assert!(
            err.to_string().contains("ca create --out"),
            "the error says how to make one: {err}"
        );
        assert!(!ca.path().join("ca.pem").exists());
        assert!(Authority::create_ca(ca.path()).unwrap());
        assert!(!Authority::create_ca(ca.path()).unwrap(), "made only once");
        let auth = Authority::open(state.path(), Some(ca.path())).unwrap();
        assert_eq!(
            auth.ca_pem(),
            std::fs::read_to_string(ca.path().join("ca.pem")).unwrap()
        );
        assert!(!state.path().join("ca-key.pem").exists());
    }

    #[test]
    fn daemon_certificates_name_the_node_and_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::open(dir.path(), None).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let node = NodeId::new("web-1").unwrap();
        let ttl = Duration::from_secs(600);
        let names = vec!["node.example".to_owned(), "10.0.0.5".to_owned()];
        let pem = auth
            .issue_daemon_cert(&tenant, &node, &csr(), &names, ttl)
            .unwrap();
        let subject = subject_of(&pem);
        assert_eq!(subject.name, "web-1");
        assert_eq!(subject.role, Some(Role::Daemon));
        assert_eq!(subject.tenant, Some(tenant.clone()));
        for bad in [
            vec![],
            vec!["evil/../x".to_owned()],
            vec!["*.example".to_owned()],
        ] {
            let err = auth
                .issue_daemon_cert(&tenant, &node, &csr(), &bad, ttl)
                .unwrap_err();
            assert!(
                matches!(err, IdentityError::BadDaemonNames(_)),
                "{bad:?}: {err}"
            );
        }
    }
}
