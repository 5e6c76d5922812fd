//! What a host needs to come under management, served without
//! credentials and read-only: `GET /install.sh` (the install script with
//! this relay's addresses filled in), `GET /ca.pem` (the installation CA,
//! which the install command checks by its SHA-256) and
//! `GET /download/tunnelgate-agent-linux-<arch>` with its `.sha256`.
//!
//! The agent binary is `--agent-binary`, else `tunnelgate-agent` beside
//! the relay's own binary, served for the architecture it was built for;
//! it is read once, on the first download. Nothing here writes anything.

use std::path::PathBuf;

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::respond::{docker_error, whole, Body};

/// The install script, with `@...@` placeholders the relay fills in.
const SCRIPT: &str = include_str!("../../../deploy/install.sh");
/// The agent's systemd unit, put into the script.
const AGENT_UNIT: &str = include_str!("../../../deploy/systemd/tunnelgate-agent.service");

/// A public asset's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asset {
    /// `/install.sh`.
    Script,
    /// `/ca.pem`.
    Ca,
    /// `/download/<name>`: the agent binary, or its `.sha256` when `sum`.
    Agent {
        /// The file name asked for.
        name: String,
        /// Whether the checksum file was asked for.
        sum: bool,
    },
}

impl Asset {
    /// The asset `path` names, if any.
    pub fn parse(path: &str) -> Option<Self> {
        match path {
            "/install.sh" => Some(Self::Script),
            "/ca.pem" => Some(Self::Ca),
            _ => {
                let name = path.strip_prefix("/download/")?;
                let (name, sum) = match name.strip_suffix(".sha256") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                Some(Self::Agent {
                    name: name.to_owned(),
                    sum,
                })
            }
        }
    }
}

/// The agent binary this relay serves, read on first use.
struct AgentBuild {
    bytes: Bytes,
    sha256: String,
}

/// Serves the install assets.
pub struct Installer {
    ca_pem: String,
    ca_fingerprint: [u8; 32],
    agent_addr: String,
    tls: bool,
    api_addr: String,
    agent_binary: Option<PathBuf>,
    agent: OnceCell<Result<AgentBuild, String>>,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer")
            .field("agent_binary", &self.agent_binary)
            .finish_non_exhaustive()
    }
}

/// The agent's file name for this relay's own architecture.
pub fn agent_file_name() -> String {
    format!("tunnelgate-agent-linux-{}", std::env::consts::ARCH)
}

/// The one line a host runs: over HTTPS it first fetches the relay's CA
/// and checks it against `ca_sha256`, then fetches the script with that
/// CA; the script checks the CA again and the agent binary's hash.
pub fn install_command_line(url: &str, ca_sha256: &str, token: &str) -> String {
    let url = url.trim_end_matches('/');
    let run = format!("sudo sh -s -- --token {token} --ca-sha256 {ca_sha256}");
    if url.starts_with("https://") {
        format!(
            "ca=$(mktemp) && curl -fsSk {url}/ca.pem -o \"$ca\" && echo \"{ca_sha256}  $ca\" | sha256sum -c --quiet && curl -fsSL --cacert \"$ca\" {url}/install.sh | {run}"
        )
    } else {
        format!("curl -fsSL {url}/install.sh | {run}")
    }
}

/// The SHA-256 of `text`, hex, as `sha256sum` prints it.
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

impl Installer {
    /// Serves `ca_pem`, and the script pointing agents at `agent_addr`
    /// and itself at this API (`api_addr`, over TLS when `tls`); the agent
    /// binary from `agent_binary`, else from beside the relay's binary.
    pub fn new(
        ca_pem: String,
        agent_addr: String,
        api_addr: String,
        tls: bool,
        agent_binary: Option<PathBuf>,
    ) -> Self {
        let agent_binary = agent_binary.or_else(|| {
            let beside = std::env::current_exe()
                .ok()?
                .parent()?
                .join("tunnelgate-agent");
            beside.exists().then_some(beside)
        });
        let ca_fingerprint = tunnelgate_session::tls::certs_from_pem(&ca_pem)
            .ok()
            .and_then(|certs| certs.first().map(tunnelgate_session::tls::fingerprint))
            .unwrap_or_default();
        Self {
            ca_pem,
            ca_fingerprint,
            agent_addr,
            tls,
            api_addr,
            agent_binary,
            agent: OnceCell::new(),
        }
    }

    /// Answers a request for `asset`.
    pub async fn serve(&self, asset: Asset, headers: &HeaderMap) -> Response<Body> {
        match asset {
            Asset::Script => text(
                "text/x-shellscript",
                SCRIPT
                    .replace("@RELAY_URL@", &self.url(headers))
                    .replace("@RELAY_AGENT_ADDR@", &self.agent_addr)
                    .replace("@AGENT_UNIT@", AGENT_UNIT.trim_end()),
            ),
            Asset::Ca => text("application/x-pem-file", self.ca_pem.clone()),
            Asset::Agent { name, sum } => {
                if name != agent_file_name() {
                    return docker_error(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "no agent build {name:?} here: this relay serves {} only",
                            agent_file_name()
                        ),
                    );
                }
                let build = self.agent.get_or_init(|| self.load()).await;
                match (build, sum) {
                    (Err(why), _) => docker_error(StatusCode::NOT_FOUND, why),
                    (Ok(b), true) => text("text/plain", format!("{}  {name}\n", b.sha256)),
                    (Ok(b), false) => {
                        whole(StatusCode::OK, "application/octet-stream", b.bytes.clone())
                    }
                }
            }
        }
    }

    /// The one-line install for a new host that enrols with `token`, for
    /// a request that reached this relay with `headers`.
    pub fn install_command(&self, headers: &HeaderMap, token: &str) -> String {
        install_command_line(
            &self.url(headers),
            &sha256_hex(self.ca_pem.as_bytes()),
            token,
        )
    }

    /// The fingerprint of the installation CA, which join tokens carry.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.ca_fingerprint
    }

    /// The agent's command line for a host that runs it by hand.
    pub fn agent_command(&self, node: &str, token: &str) -> String {
        format!(
            "tunnelgate-agent --relay {} --node-id {node} --state-dir /var/lib/tunnelgate-agent --token {token}",
            self.agent_addr
        )
    }

    /// Where the host reaches this API: as the request named it (the
    /// `Host` header, when it is a plain host[:port]), else the bound
    /// address.
    fn url(&self, headers: &HeaderMap) -> String {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            })
            .unwrap_or(&self.api_addr);
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}")
    }

    async fn load(&self) -> Result<AgentBuild, String> {
        let Some(path) = self.agent_binary.clone() else {
            return Err("this relay has no agent binary to serve; start it with --agent-binary PATH (or put tunnelgate-agent beside tunnelgate-relay)".into());
        };
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path).map(|b| (path, b)))
            .await
            .map_err(|e| e.to_string())?;
        match read {
            Ok((path, bytes)) => {
                tracing::info!(path = %path.display(), bytes = bytes.len(), "serving the agent binary for installs");
                Ok(AgentBuild {
                    sha256: sha256_hex(&bytes),
                    bytes: Bytes::from(bytes),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent binary to serve; installs fail until it is there");
                Err(format!(
                    "this relay cannot read its agent binary ({e}); see its log"
                ))
            }
        }
    }
}

fn text(content_type: &'static str, body: String) -> Response<Body> {
    whole(StatusCode::OK, content_type, Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn assets_parse_and_nothing_else_is_one() {
        assert_eq!(Asset::parse("/install.sh"), Some(Asset::Script));
        assert_eq!(Asset::parse("/ca.pem"), Some(Asset::Ca));
        assert_eq!(
            Asset::parse("/download/tunnelgate-agent-linux-x86_64.sha256"),
            Some(Asset::Agent {
                name: "tunnelgate-agent-linux-x86_64".into(),
                sum: true
            })
        );
        assert_eq!(Asset::parse("/nodes/x/_ping"), None);
        assert_eq!(Asset::parse("/install.sh/x"), None);
    }

    #[tokio::test]
    async fn the_script_names_this_relay_and_a_missing_binary_is_a_clear_404() {
        let installer = Installer::new(
            "CA".into(),
            "relay.example:7443".into(),
            "127.0.0.1:7375".into(),
            true,
            Some("/nonexistent/tunnelgate-agent".into()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "relay.example:7375".parse().unwrap());
        let body = |r: Response<Body>| async move {
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };
        let script = body(installer.serve(Asset::Script, &headers).await).await;
        assert!(
            script.contains("URL=\"https://relay.example:7375\""),
            "{script}"
        );
        assert!(script.contains("RELAY=\"relay.example:7443\""));
        assert!(script.contains("[Service]") && !script.contains("@AGENT_UNIT@"));
        let asset = Asset::Agent {
            name: agent_file_name(),
            sum: false,
        };
        let missing = installer.serve(asset, &headers).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(body(missing).await.contains("cannot read its agent binary"));
        let other = Asset::Agent {
            name: "tunnelgate-agent-linux-sparc".into(),
            sum: false,
        };
        assert_eq!(
            installer.serve(other, &headers).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
