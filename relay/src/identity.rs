//! The installation's CA: it issues the relay's server certificate, node
//! certificates (from an agent's CSR) and control-plane client
//! certificates, and tells a holder when to renew. Nothing else: which
//! certificates are still good is the state dir's business (node records,
//! revocations), and enrolment is the agent listener's.
//!
//! Certificates name their holder in the subject: CN is the node id or
//! client name, O the tenant, OU the role (`node` or `client`), so a node
//! certificate never opens the control-plane API and a client certificate
//! never serves as an agent.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
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
    /// Opens the state dir, creating the CA (and the dir) on first start.
    pub fn open(dir: &Path) -> Result<Self, IdentityError> {
        fs::create_dir_all(dir).map_err(|e| IdentityError::from(io_err(dir)(e)))?;
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

        Ok(Self {
            dir: dir.to_owned(),
            ca_pem,
            ca_der,
            issuer,
        })
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
        let first = Authority::open(dir.path()).unwrap();
        let auth = Authority::open(dir.path()).unwrap();
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
        let auth = Authority::open(dir.path()).unwrap();
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
}
