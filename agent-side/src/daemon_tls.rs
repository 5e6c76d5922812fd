//! TLS for the node's own Docker daemon port, so relays that can reach it
//! go straight there (the direct path) instead of through the tunnel.
//!
//! `tunnelgate-agent docker-tls` ([`obtain`]) makes the daemon's key on
//! this host, sends only a certificate request to a relay (over a
//! connection authenticated with the node certificate, enrolling first
//! with the token if need be), and writes:
//!
//! ```text
//! DIR/ca.pem           the CA dockerd verifies clients with: it signs relays'
//!                      direct-path certificates only, so no node, tenant or
//!                      other certificate can call the daemon directly
//! DIR/server-cert.pem  the daemon's certificate (CN node id, OU daemon)
//! DIR/server-key.pem   its key (0600), never sent anywhere
//! DIR/request.toml     the names and port it was made for, for renewal and
//!                      for the endpoints the agent advertises
//! ```
//!
//! A running agent given `--daemon-tls DIR` ([`keep_renewed`]) renews the
//! certificate two thirds into its life and says in its log that dockerd
//! must be restarted to load it (dockerd reads its TLS files at start).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tunnelgate_proto::message::{ControlMessage, SignDaemonCert};
use tunnelgate_session::tls;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::{errand, identity};

/// The file that records what a daemon certificate was made for.
const REQUEST_FILE: &str = "request.toml";
/// How often a renewal that failed is tried again.
const RETRY: Duration = Duration::from_secs(600);

/// What a daemon certificate is for: the names and addresses relays reach
/// the daemon by, and its TLS port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// DNS names.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// IP addresses.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// The port dockerd listens on with TLS.
    pub port: u16,
}

impl Request {
    /// The endpoints relays may dial, `tcp://NAME:PORT`, one per name.
    pub fn endpoints(&self) -> Vec<String> {
        self.dns_names
            .iter()
            .chain(&self.ip_addresses)
            .map(|n| match n.contains(':') {
                true => format!("tcp://[{n}]:{}", self.port),
                false => format!("tcp://{n}:{}", self.port),
            })
            .collect()
    }
}

/// The endpoints a `docker-tls` run recorded in `dir`, or none.
pub fn written_endpoints(dir: &Path) -> Vec<String> {
    read_request(dir).map(|r| r.endpoints()).unwrap_or_default()
}

/// The endpoints the agent offers relays: `--direct-endpoint`, else the
/// ones `docker-tls` recorded in `--daemon-tls`; none when its policy is
/// not `full`, since the direct path would bypass the policy.
pub fn advertised(config: &AgentConfig) -> Vec<String> {
    if !config.policy.is_full() {
        return Vec::new();
    }
    match (&config.direct_endpoints[..], &config.daemon_tls) {
        ([], Some(dir)) => written_endpoints(dir),
        (given, _) => given.to_vec(),
    }
}

fn read_request(dir: &Path) -> Option<Request> {
    let text = std::fs::read_to_string(dir.join(REQUEST_FILE)).ok()?;
    toml::from_str(&text).ok()
}

fn write(path: PathBuf, contents: &str, private: bool) -> Result<(), AgentError> {
    tunnelgate_session::files::write_atomic(&path, contents.as_bytes(), private)
        .map_err(|source| AgentError::WriteState { path, source })
}

/// Gets a daemon certificate for `request` from one of the configured
/// relays and writes the daemon's TLS files to `out`.
pub async fn obtain(config: &AgentConfig, out: &Path, request: &Request) -> Result<(), AgentError> {
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(AgentError::Errand(
            "name at least one --name or --ip that relays reach this host's daemon by".into(),
        ));
    }
    let (key_pem, csr_pem) = identity::renewal_request()?;
    let ask = ControlMessage::SignDaemonCert(SignDaemonCert {
        csr_pem,
        dns_names: request.dns_names.clone(),
        ip_addresses: request.ip_addresses.clone(),
    });
    let signed = match errand::ask_any(config, &ask).await? {
        ControlMessage::DaemonCertSigned(signed) => signed,
        ControlMessage::Refused(r) => return Err(AgentError::ErrandRefused(r.message)),
        _ => {
            return Err(AgentError::Errand(
                "unexpected answer to the daemon certificate request".into(),
            ))
        }
    };
    identity::check_certifies(&signed.cert_pem, &key_pem)?;
    std::fs::create_dir_all(out).map_err(|source| AgentError::WriteState {
        path: out.to_owned(),
        source,
    })?;
    write(out.join("ca.pem"), &signed.client_ca_pem, false)?;
    write(out.join("server-key.pem"), &key_pem, true)?;
    write(out.join("server-cert.pem"), &signed.cert_pem, false)?;
    let toml = toml::to_string(request).expect("a request serializes");
    write(out.join(REQUEST_FILE), &toml, false)
}

/// What to tell the operator after `docker-tls` wrote to `out`.
pub fn instructions(out: &Path, request: &Request) -> String {
    let d = out.display();
    let hosts: Vec<String> = std::iter::once(format!("tcp://0.0.0.0:{}", request.port))
        .chain(std::iter::once("unix:///var/run/docker.sock".to_owned()))
        .collect();
    format!(
        "wrote {d}/ca.pem (verifies relays' direct-path certificates and nothing else), \
{d}/server-cert.pem and {d}/server-key.pem (0600)\n\n\
Start dockerd with:\n  dockerd --tlsverify --tlscacert={d}/ca.pem --tlscert={d}/server-cert.pem \
--tlskey={d}/server-key.pem -H {} -H {}\n\n\
or put in /etc/docker/daemon.json (drop -H from the service's command line, e.g. a systemd \
drop-in with an empty ExecStart= and ExecStart=/usr/bin/dockerd):\n  \
{{\"tlsverify\": true, \"tlscacert\": \"{d}/ca.pem\", \"tlscert\": \"{d}/server-cert.pem\", \
\"tlskey\": \"{d}/server-key.pem\", \"hosts\": [\"{}\", \"{}\"]}}\n\n\
Then run the agent with --daemon-tls {d}: it advertises {} to the relays and renews the \
certificate before it expires. Open port {}/tcp to the relays only if you want the direct path; \
where it stays closed, calls go through the tunnel.",
        hosts[0],
        hosts[1],
        hosts[0],
        hosts[1],
        request.endpoints().join(", "),
        request.port,
    )
}

/// When the certificate in `dir` is due for renewal (two thirds into its
/// life), and when it expires.
fn due(dir: &Path) -> Option<(SystemTime, SystemTime)> {
    let pem = std::fs::read_to_string(dir.join("server-cert.pem")).ok()?;
    let subject = tls::certs_from_pem(&pem)
        .ok()?
        .first()
        .and_then(tls::subject)?;
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let (start, end) = (at(subject.not_before), at(subject.not_after));
    let life = end.duration_since(start).unwrap_or_default();
    Some((start + life.mul_f64(2.0 / 3.0), end))
}

/// Renews the daemon certificate in `dir` when due, until `cancel`.
/// Cancel-safe: files are replaced atomically or not at all.
pub async fn keep_renewed(
    config: std::sync::Arc<AgentConfig>,
    dir: PathBuf,
    cancel: CancellationToken,
) {
    let Some(request) = read_request(&dir) else {
        warn!(dir = %dir.display(), "--daemon-tls names no directory written by `tunnelgate-agent docker-tls`; the daemon certificate is not renewed");
        return;
    };
    loop {
        let wait = match due(&dir) {
            Some((renew_at, expires)) => {
                let now = SystemTime::now();
                if now >= renew_at {
                    match obtain(&config, &dir, &request).await {
                        Ok(()) => {
                            warn!(dir = %dir.display(), "daemon certificate renewed; restart dockerd to load it (e.g. `systemctl restart docker`)");
                            continue;
                        }
                        Err(e) => {
                            let left = expires.duration_since(now).unwrap_or_default();
                            warn!(error = %e, expires_in = ?left, "cannot renew the daemon certificate; trying again in 10 minutes. Once it expires, relays use the tunnel");
                            RETRY
                        }
                    }
                } else {
                    // Re-checked hourly, so a clock change or a file
                    // replaced by hand is noticed.
                    renew_at
                        .duration_since(now)
                        .unwrap_or_default()
                        .min(Duration::from_secs(3600))
                }
            }
            None => {
                warn!(dir = %dir.display(), "no readable server-cert.pem; run `tunnelgate-agent docker-tls` again");
                Duration::from_secs(3600)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_names_and_survive_the_request_file() {
        let r = Request {
            dns_names: vec!["node.example".into()],
            ip_addresses: vec!["10.0.0.5".into(), "fd00::5".into()],
            port: 2376,
        };
        assert_eq!(
            r.endpoints(),
            [
                "tcp://node.example:2376",
                "tcp://10.0.0.5:2376",
                "tcp://[fd00::5]:2376"
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(written_endpoints(dir.path()).is_empty());
        std::fs::write(dir.path().join(REQUEST_FILE), toml::to_string(&r).unwrap()).unwrap();
        assert_eq!(written_endpoints(dir.path()), r.endpoints());
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_certificates_life() {
        let dir = tempfile::tempdir().unwrap();
        assert!(due(dir.path()).is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node.example".into()]).unwrap();
        let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(300);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("server-cert.pem"), cert.pem()).unwrap();
        let (renew_at, expires) = due(dir.path()).unwrap();
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(renew_at, at(1_800_000_200));
        assert_eq!(expires, at(1_800_000_300));
    }
}
