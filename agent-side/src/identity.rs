//! The agent's identity: enrolment with a join token, and the stored node
//! certificate with the credentials it makes for dialling the relay.
//!
//! ```text
//! state-dir/node.pem      node certificate (CN = node id, O = tenant) and its
//!                         key, generated here and never sent anywhere (0600);
//!                         one file, so a renewal replaces both at once
//! state-dir/ca.pem        the installation's CA, trusted from enrolment on
//! state-dir/enrol-key.pem the key of an enrolment not yet stored (0600):
//!                         kept until node.pem is written, so an agent whose
//!                         answer was lost asks again with the same key,
//!                         which a single-use token still answers
//! ```
//!
//! Node certificates are short-lived: the relay says when to renew, and
//! the agent trades a new key's request for a new certificate over its
//! session ([`renewal_request`], [`NodeIdentity::store`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tracing::info;
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{ControlMessage, Enroll};
use tunnelgate_proto::token::JoinToken;
use tunnelgate_proto::{NodeId, ProtocolVersion};
use tunnelgate_session::tls::{self, Identity, Trust};

use crate::config::{AgentConfig, NODE_CERT_FILE};
use crate::error::AgentError;
use crate::transport::{self, Credentials};

/// How long the relay may take to answer an enrolment request. Longer
/// than a handshake: the relay answers once it has recorded the node in
/// its state dir, and in an enrolment storm those writes queue (one at a
/// time, each synced to disk). Giving up sooner only sends the agent to
/// enrol again from the start, which costs the relay a second handshake
/// and a second write for nothing: at 10 s, a 6,000-agent enrolment storm
/// took the relay twice the CPU.
const ENROL_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The node certificate, its key and the CA, as stored.
pub struct NodeIdentity {
    identity: Identity,
    ca: CertificateDer<'static>,
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), AgentError> {
    tunnelgate_session::files::write_atomic(path, contents.as_bytes(), private).map_err(|source| {
        AgentError::WriteState {
            path: path.to_owned(),
            source,
        }
    })
}

impl NodeIdentity {
    /// Reads the stored identity, if the agent has enrolled.
    pub fn load(dir: &Path) -> Result<Option<Self>, AgentError> {
        let (cert, ca) = (dir.join(NODE_CERT_FILE), dir.join("ca.pem"));
        if !cert.exists() {
            return Ok(None);
        }
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| AgentError::ReadState {
                path: p.to_owned(),
                source,
            })
        };
        let corrupt = |source| AgentError::CorruptIdentity {
            dir: dir.to_owned(),
            source,
        };
        let cert_pem = read(&cert)?;
        // Releases before renewal kept the key in a file of its own.
        let key_pem = if cert_pem.contains("PRIVATE KEY-----") {
            cert_pem.clone()
        } else {
            read(&dir.join("node-key.pem"))?
        };
        let identity = Identity::from_pem(&cert_pem, &key_pem).map_err(corrupt)?;
        let ca = tls::certs_from_pem(&read(&ca)?).map_err(corrupt)?.remove(0);
        Ok(Some(Self { identity, ca }))
    }

    /// Fails unless the certificate was issued for `node_id`.
    pub fn check_node(&self, node_id: &NodeId) -> Result<(), AgentError> {
        let certified = self.identity.chain.first().and_then(tls::node_id_from_cert);
        if certified.as_ref() == Some(node_id) {
            Ok(())
        } else {
            Err(AgentError::WrongNode {
                certified: certified.map_or_else(|| "<none>".into(), |n| n.to_string()),
                configured: node_id.clone(),
            })
        }
    }

    /// Replaces the stored certificate and key in one atomic write,
    /// after checking that the certificate is for that key (a late answer
    /// to an earlier renewal request must not pair with a newer key).
    pub fn store(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), AgentError> {
        check_certifies(cert_pem, key_pem)?;
        write_file(
            &dir.join(NODE_CERT_FILE),
            &format!("{cert_pem}{key_pem}"),
            true,
        )?;
        let _ = fs::remove_file(dir.join("node-key.pem"));
        Ok(())
    }

    /// Credentials for mutual TLS with this identity.
    pub fn credentials(&self) -> Result<Credentials, AgentError> {
        Credentials::new(Trust::Ca(self.ca.clone()), Some(self.identity.clone()))
    }
}

/// Trades the join token for a node certificate at `relay` and stores it.
pub async fn enrol(config: &AgentConfig, relay: &str) -> Result<NodeIdentity, AgentError> {
    let text = config
        .token
        .as_deref()
        .ok_or_else(|| AgentError::NoToken(config.state_dir.clone()))?;
    let token: JoinToken = text.parse().map_err(|_| AgentError::MalformedToken)?;
    let dir = &config.state_dir;
    fs::create_dir_all(dir).map_err(|source| AgentError::WriteState {
        path: dir.clone(),
        source,
    })?;
    let (key_pem, csr_pem) = enrolment_request(dir)?;

    let creds = Credentials::new(Trust::Fingerprint(token.ca_fingerprint), None)?.for_one_answer();
    let (session, _) = transport::dial(config, relay, &creds).await?;
    let lost = |e: &dyn std::fmt::Display| AgentError::EnrolInterrupted(e.to_string());
    let mut control = session.open_stream().await.map_err(|e| lost(&e))?;
    let request = ControlMessage::Enroll(Enroll {
        version: ProtocolVersion::CURRENT,
        token: text.to_owned(),
        node_id: config.node_id.clone(),
        csr_pem,
    });
    control
        .write_message(&request, DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| lost(&e))?;
    let reply = tokio::time::timeout(
        ENROL_ANSWER_TIMEOUT,
        control.read_message::<ControlMessage>(DEFAULT_MAX_FRAME),
    )
    .await
    .map_err(|_| lost(&"no answer from the relay"))?
    .map_err(|e| lost(&e))?;
    session.close("enrolment done");
    let enrolled = match reply {
        ControlMessage::Enrolled(e) => e,
        ControlMessage::Refused(r) => {
            return Err(AgentError::from_refusal(r, AgentError::EnrolRefused))
        }
        _ => return Err(lost(&"unexpected answer to the enrolment request")),
    };

    let unsaved = |e: AgentError| match e {
        AgentError::WriteState { path, source } => AgentError::EnrolledUnsaved {
            node: config.node_id.clone(),
            path,
            source,
        },
        other => other,
    };
    write_file(&dir.join("ca.pem"), &enrolled.ca_pem, false).map_err(unsaved)?;
    NodeIdentity::store(dir, &enrolled.cert_pem, &key_pem).map_err(unsaved)?;
    let _ = fs::remove_file(dir.join(ENROL_KEY));
    info!(node_id = %config.node_id, dir = %dir.display(), "enrolled; the join token is no longer needed");
    NodeIdentity::load(dir)?.ok_or_else(|| AgentError::ReadState {
        path: dir.join(NODE_CERT_FILE),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// Fails unless the certificate `cert_pem` the relay sent is for the key
/// `key_pem` this host made: an answer to another request (a late one, or
/// a relay's mistake) must never pair with it.
pub fn check_certifies(cert_pem: &str, key_pem: &str) -> Result<(), AgentError> {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    let certified = tls::certs_from_pem(cert_pem)
        .ok()
        .and_then(|c| c.first().and_then(tls::public_key_info));
    match certified.as_deref() == Some(key.subject_public_key_info().as_slice()) {
        true => Ok(()),
        false => Err(AgentError::ForeignCertificate),
    }
}

/// A fresh key (PEM) and a certificate request for it (PEM). The relay
/// takes only the key from the request.
pub fn renewal_request() -> Result<(String, String), AgentError> {
    request_for(rcgen::KeyPair::generate()?)
}

/// The pending enrolment key in `dir`.
const ENROL_KEY: &str = "enrol-key.pem";

/// The key (PEM) and certificate request (PEM) to enrol with: the pending
/// key of an earlier attempt in `dir` if there is one, else a new one,
/// written there before it is used.
fn enrolment_request(dir: &Path) -> Result<(String, String), AgentError> {
    let path = dir.join(ENROL_KEY);
    let key = match fs::read_to_string(&path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate()?;
            write_file(&path, &key.serialize_pem(), true)?;
            key
        }
        Err(source) => return Err(AgentError::ReadState { path, source }),
    };
    request_for(key)
}

fn request_for(key: rcgen::KeyPair) -> Result<(String, String), AgentError> {
    let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|csr| csr.pem())?;
    Ok((key.serialize_pem(), csr_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_stored_only_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key_pem, _) = renewal_request().unwrap();
        let (other_key, _) = renewal_request().unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "n1");
        let cert = params.self_signed(&key).unwrap().pem();
        assert!(NodeIdentity::store(dir.path(), &cert, &other_key).is_err());
        assert!(!dir.path().join("node.pem").exists());
        NodeIdentity::store(dir.path(), &cert, &key_pem).unwrap();
        let stored = fs::read_to_string(dir.path().join("node.pem")).unwrap();
        assert!(stored.contains("CERTIFICATE") && stored.contains("PRIVATE KEY"));
    }
}
