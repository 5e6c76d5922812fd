//! rustls configurations for both ends of an agent session.
//!
//! The relay presents a server certificate issued by the installation's CA
//! and optionally asks agents for a node certificate from the same CA
//! (agents without one may only enrol). An agent trusts either that CA, or,
//! on first contact, whichever CA the relay presents whose SHA-256 matches
//! the fingerprint in its join token.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tunnelgate_proto::{NodeId, TenantId};

/// TLS material could not be loaded or combined.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A PEM file held no usable certificate or key.
    #[error("{0}")]
    Pem(String),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// End-entity certificate first, then its issuers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses PEM text holding the chain and PEM text holding the key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = certs_from_pem(chain_pem)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("reading private key: {e}")))?
            .ok_or_else(|| TlsError::Pem("no private key in PEM text".into()))?;
        Ok(Self { chain, key })
    }
}

/// Parses every certificate in PEM text; at least one must be there.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in PEM text".into()));
    }
    Ok(certs)
}

/// The crypto provider both sides use: *ring*'s, with AES-128-GCM put
/// before AES-256-GCM. Every QUIC packet and TLS record of a bulk
/// transfer is sealed and opened with the session's suite, and AES-128
/// (10 rounds against 14, SHA-256 against SHA-384 in the handshake) costs
/// the relay less CPU per gigabyte; both are TLS 1.3's standard suites.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let preferred = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    // A stable sort: the other suites (TLS 1.2 ones too) keep their order.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != preferred);
    Arc::new(provider)
}

/// The SHA-256 fingerprint of a certificate, as join tokens carry it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The node id a node certificate was issued for (its subject common name).
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Option<NodeId> {
    NodeId::new(subject(cert)?.name).ok()
}

/// What a certificate issued by the installation's CA is for: the
/// organisational unit of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent's node certificate (`OU=node`).
    Node,
    /// A control-plane client's certificate (`OU=client`).
    Client,
    /// A relay's certificate for the relay-to-relay port (`OU=relay`).
    Relay,
    /// A node's Docker daemon's server certificate (`OU=daemon`).
    Daemon,
    /// A relay's client certificate for the direct path to daemons
    /// (`OU=relay-direct`), issued by the direct-path CA only.
    RelayDirect,
}

impl Role {
    /// The subject OU that marks the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Client => "client",
            Self::Relay => "relay",
            Self::Daemon => "daemon",
            Self::RelayDirect => "relay-direct",
        }
    }
}

/// Who a certificate from the installation's CA names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Node id or client name (the common name).
    pub name: String,
    /// The owning tenant (the organisation).
    pub tenant: Option<TenantId>,
    /// What the certificate may be used for.
    pub role: Option<Role>,
    /// Hex serial number, to tell one issue from the next.
    pub serial: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

/// Reads the subject of a certificate.
pub fn subject(cert: &CertificateDer<'_>) -> Option<Subject> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let tenant = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .and_then(|o| TenantId::new(o).ok());
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|o| o.as_str().ok())
        .and_then(|ou| match ou {
            "node" => Some(Role::Node),
            "client" => Some(Role::Client),
            "relay" => Some(Role::Relay),
            "daemon" => Some(Role::Daemon),
            "relay-direct" => Some(Role::RelayDirect),
            _ => None,
        });
    Some(Subject {
        name,
        tenant,
        role,
        serial: parsed.raw_serial_as_string().replace(':', ""),
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// The DER SubjectPublicKeyInfo a certificate certifies.
pub fn public_key_info(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.public_key().raw.to_vec())
}

/// The relay's TLS configuration for agents: present `identity`; accept
/// agents with a certificate from `ca`, and agents without one (they may
/// only enrol).
pub fn server_config(
    identity: Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_for(identity, ca, crate::ALPN)
}

/// The relay's TLS configuration for the control-plane API: HTTP/1.1,
/// client certificates from `ca` optional (API keys are the other way in).
pub fn api_server_config(
    identity: Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_for(identity, ca, b"http/1.1")
}

fn server_config_for(
    identity: Identity,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The ALPN protocol name relays speak to each other.
pub const PEER_ALPN: &[u8] = b"tunnelgate-peer/1";

/// A relay's TLS configuration for its peer port: present the relay
/// certificate `identity`, and require one from `ca` of the other side.
/// That it is a relay's (not a node's or a client's) is checked by the
/// caller from the subject, since WebPKI knows no roles.
pub fn peer_server_config(
    identity: Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(config)
}

/// A relay's TLS configuration for dialling a peer relay: trust `ca`,
/// present the relay certificate `identity`.
pub fn peer_client_config(
    identity: Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = client_config(Trust::Ca(ca.clone()), Some(identity))?;
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(config)
}

/// A relay's TLS configuration for dialling a node's Docker daemon
/// directly: trust daemon certificates from `ca` (the installation CA),
/// present the direct-path certificate `identity`. TLS 1.2 is allowed,
/// since that is what many daemons are set to. That the server's
/// certificate is that node's daemon's is checked by the caller.
pub fn direct_client_config(
    identity: Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What an agent trusts the relay by.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The installation's CA, once known.
    Ca(CertificateDer<'static>),
    /// First contact: the SHA-256 of the CA the relay must present.
    Fingerprint([u8; 32]),
}

/// The agent's TLS configuration.
pub fn client_config(
    trust: Trust,
    identity: Option<Identity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca)?;
            builder.with_root_certificates(roots)
        }
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa { pin })),
    };
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

/// Accepts a server chain when it carries a CA with the pinned fingerprint
/// and the end-entity certificate verifies against that CA, as WebPKI
/// would against a configured root.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
}

impl PinnedCa {
    fn inner(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the relay's CA does not match the fingerprint in the join token; check the token and the relay address"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner(intermediates)?.verify_server_cert(
            end_entity,
            &[],
            server_name,
            ocsp_response,
            now,
        )
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
            &provider().signature_verification_algorithms,
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
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_no_suite_is_lost() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let default = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(suites.len(), default.len());
        assert!(suites.contains(&rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
    }
}
