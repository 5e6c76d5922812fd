//! The node's Docker daemon as the agent reaches it: a unix socket or a
//! TCP address, and a probe that reads its facts.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tunnelgate_proto::message::DockerFacts;

/// How long connecting to the daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Docker daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:port`
    Tcp(String),
}

impl std::str::FromStr for DockerEndpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("unix:// needs a socket path, e.g. unix:///var/run/docker.sock".into());
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            if !addr.contains(':') {
                return Err(format!(
                    "tcp://{addr} needs a port, e.g. tcp://127.0.0.1:2375"
                ));
            }
            Ok(Self::Tcp(addr.to_owned()))
        } else {
            Err(format!("{s:?} is not a Docker endpoint; use unix:///path/to/docker.sock or tcp://host:port"))
        }
    }
}

impl std::fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A connection to the daemon.
pub trait DaemonIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DaemonIo for T {}

impl DockerEndpoint {
    /// The default: `DOCKER_HOST` if it names a usable endpoint, else the
    /// standard socket.
    pub fn from_env() -> Self {
        std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| Self::Unix(PathBuf::from("/var/run/docker.sock")))
    }

    /// Opens a connection to the daemon.
    pub async fn connect(&self) -> std::io::Result<Pin<Box<dyn DaemonIo>>> {
        let connect = async {
            Ok::<Pin<Box<dyn DaemonIo>>, std::io::Error>(match self {
                Self::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
                Self::Tcp(addr) => {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    Box::pin(tcp)
                }
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out")
            })?
    }

    /// Asks the daemon for its version and ID; the answers must look
    /// like Docker's.
    pub async fn probe(&self) -> DockerFacts {
        match tokio::time::timeout(Duration::from_secs(10), self.facts()).await {
            Ok(Ok((v, info))) => DockerFacts {
                reachable: true,
                version: Some(v.version),
                api_version: Some(v.api_version),
                platform: Some(format!("{}/{}", v.os, v.arch)),
                error: None,
                id: Some(info.id),
            },
            Ok(Err(e)) => DockerFacts {
                reachable: false,
                error: Some(format!("{self}: {e}")),
                ..Default::default()
            },
            Err(_) => DockerFacts {
                reachable: false,
                error: Some(format!("{self}: no answer to GET /version within 10s")),
                ..Default::default()
            },
        }
    }

    async fn facts(&self) -> Result<(Version, Info), String> {
        let io = self.connect().await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let version = get_json(&mut sender, "/version").await?;
        let info = get_json(&mut sender, "/info").await?;
        Ok((version, info))
    }
}

/// `GET path` on a daemon connection, its JSON answer read as `T`.
async fn get_json<T: serde::de::DeserializeOwned>(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<T, String> {
    let req = http::Request::get(path)
        .header("host", "docker")
        .body(Empty::new())
        .expect("static request is valid");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("not a Docker daemon: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "not a Docker daemon: GET {path} answered {}",
            resp.status()
        ));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| format!("not a Docker daemon: {path} is not Docker's: {e}"))
}

/// The part of `GET /info` the agent reports.
#[derive(Deserialize)]
struct Info {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Version {
    version: String,
    api_version: String,
    os: String,
    arch: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_helpful_errors() {
        assert_eq!(
            "unix:///var/run/docker.sock".parse::<DockerEndpoint>(),
            Ok(DockerEndpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            "tcp://10.0.0.1:2375".parse::<DockerEndpoint>(),
            Ok(DockerEndpoint::Tcp("10.0.0.1:2375".into()))
        );
        assert!("tcp://host"
            .parse::<DockerEndpoint>()
            .unwrap_err()
            .contains("port"));
        assert!("http://x"
            .parse::<DockerEndpoint>()
            .unwrap_err()
            .contains("unix://"));
    }

    #[tokio::test]
    async fn a_missing_daemon_is_reported_unreachable() {
        let facts = DockerEndpoint::Unix("/nonexistent/docker.sock".into())
            .probe()
            .await;
        assert!(!facts.reachable);
        assert!(facts.error.unwrap().contains("/nonexistent/docker.sock"));
    }

    #[tokio::test]
    async fn something_that_is_not_docker_is_reported_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"SSH-2.0-OpenSSH_9.2\r\n").await;
        });
        let facts = DockerEndpoint::Tcp(addr.to_string()).probe().await;
        assert!(!facts.reachable);
        assert!(facts.error.unwrap().contains("not a Docker daemon"));
    }
}
