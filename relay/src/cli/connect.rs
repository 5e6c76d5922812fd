//! `tunnelgate-relay nodes connect NODE`: a plain local Docker endpoint
//! for one node (or, with `--fleet`, the fleet), for the clients that
//! keep only a host and port or a socket of `DOCKER_HOST` and lose its
//! path (Node's docker-modem, testcontainers, ...).
//!
//! Each local connection gets a connection of its own to the relay's API,
//! authenticated as the other client commands are (`--url`,
//! `--api-key`, `--cert-path`, or none on loopback); each call's path
//! gets the node's prefix (`/nodes/NODE`), and everything else passes as
//! it is: bodies streamed both ways, and a hijacked call (`attach`,
//! `exec`, `run -it`) spliced byte for byte, each direction half-closing
//! on its own. One connection to the relay is kept dialled ahead, so a
//! call does not wait for a handshake; a connection the relay closed (a
//! restart) is dialled again at the next call. Nothing here parses Docker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tunnelgate_proto::NodeId;

use super::api::ApiArgs;

/// What `nodes connect` serves, and where.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The node whose Docker API to serve.
    #[arg(required_unless_present = "fleet", conflicts_with = "fleet")]
    node: Option<String>,
    /// Serve the fleet endpoint (one Docker host over every node) instead
    /// of one node.
    #[arg(long)]
    fleet: bool,
    /// Where to listen: `unix:///PATH.sock` (owner-only) or
    /// `tcp://127.0.0.1:PORT` [default: a socket named after the node in
    /// $XDG_RUNTIME_DIR/tunnelgate, else ./tunnelgate-data].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Where the local endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Listen {
    fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp://") {
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("{addr:?} is not IP:PORT, e.g. tcp://127.0.0.1:2375"))?;
            if !addr.ip().is_loopback() {
                bail!("--listen {text}: a forwarder serves this host alone; use a loopback address such as tcp://127.0.0.1:2375, or a unix socket");
            }
            return Ok(Self::Tcp(addr));
        }
        bail!("--listen {text:?} is not unix:///PATH.sock or tcp://127.0.0.1:PORT")
    }

    /// The socket named after `name` in the user's runtime dir.
    fn default_for(name: &str) -> Self {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("tunnelgate"))
            .unwrap_or_else(|| PathBuf::from("tunnelgate-data"));
        Self::Unix(dir.join(format!("{name}.sock")))
    }

    /// The `DOCKER_HOST` that reaches it.
    fn docker_host(&self) -> String {
        match self {
            Self::Unix(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                format!("unix://{}", path.display())
            }
            Self::Tcp(addr) => format!("tcp://{addr}"),
        }
    }
}

/// The relay, and what a local call's path gets in front.
struct Forwarder {
    api: ApiArgs,
    authority: HeaderValue,
    prefix: String,
    /// A connection dialled ahead for the next local connection.
    warm: Mutex<Option<SendRequest<Body>>>,
}

impl Forwarder {
    /// A connection to the relay: the warm one if it is still open, else
    /// a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Body>> {
        if let Some(sender) = self.warm.lock().await.take() {
            if !sender.is_closed() {
                return Ok(sender);
            }
        }
        self.api.dial().await
    }

    /// Keeps one connection dialled ahead until `stop`.
    async fn keep_warm(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        loop {
            let needed = self
                .warm
                .lock()
                .await
                .as_ref()
                .is_none_or(|s| s.is_closed());
            if needed {
                match self.api.dial::<Body>().await {
                    Ok(sender) => {
                        if failing {
                            info!(relay = %self.api.url(), "the relay answers again");
                        }
                        failing = false;
                        *self.warm.lock().await = Some(sender);
                    }
                    Err(e) if !failing => {
                        warn!(error = %format!("{e:#}"), "cannot reach the relay; calls fail with 502 until it is back, and the forwarder keeps trying");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Carries one local call to the relay on `conn` (the local
    /// connection's relay connection, dialled on first use).
    async fn forward(
        &self,
        conn: &Mutex<Option<SendRequest<Body>>>,
        mut req: Request<Incoming>,
    ) -> anyhow::Result<Response<Body>> {
        let upgrade = is_upgrade(req.headers());
        let local_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = format!("{}{path}", self.prefix).parse()?;
        req.headers_mut()
            .insert(http::header::HOST, self.authority.clone());
        self.api.authorize(req.headers_mut())?;
        let mut slot = conn.lock().await;
        let mut sender = match slot.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connection().await?,
        };
        if sender.ready().await.is_err() {
            // The relay closed it since (a restart): a new one.
            sender = self.connection().await?;
            sender.ready().await?;
        }
        let mut resp = sender.send_request(req.map(|b| b.boxed())).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The relay connection becomes the hijacked stream's.
            let relay_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(local) = local_upgrade {
                tokio::spawn(splice(local, relay_upgrade));
            }
        } else {
            *slot = Some(sender);
        }
        Ok(resp.map(|b| b.boxed()))
    }
}

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    tunnelgate_proto::docker_api::is_upgrade(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        headers.contains_key(http::header::UPGRADE),
    )
}

/// Pipes a hijacked local connection and its relay stream until both
/// directions end, each half-closing on its own.
async fn splice(local: hyper::upgrade::OnUpgrade, relay: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(local, relay) {
        Ok((local, relay)) => {
            let (mut local, mut relay) = (TokioIo::new(local), TokioIo::new(relay));
            if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut relay).await {
                debug!(error = %e, "hijacked stream ended with an error");
            }
        }
        Err(e) => debug!(error = %e, "an upgrade failed"),
    }
}

/// A Docker-style error the docker CLI prints as it is.
fn docker_error(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(tunnelgate_proto::docker_api::error_body(
                message,
            )))
            .map_err(|never| match never {})
            .boxed(),
        )
        .expect("static response parts are valid")
}

/// Serves one local connection until it ends or `stop`.
async fn serve_local<S>(io: S, forwarder: Arc<Forwarder>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn: Arc<Mutex<Option<SendRequest<Body>>>> = Arc::default();
    let service = hyper::service::service_fn(move |req| {
        let (forwarder, conn) = (forwarder.clone(), conn.clone());
        async move {
            Ok::<_, std::convert::Infallible>(match forwarder.forward(&conn, req).await {
                Ok(resp) => resp,
                Err(e) => {
                    let message = format!(
                        "tunnelgate forwarder: cannot carry the call to the relay at {}: {e:#}; it keeps trying, retry in a moment",
                        forwarder.api.url()
                    );
                    warn!("{message}");
                    docker_error(StatusCode::BAD_GATEWAY, &message)
                }
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => if let Err(e) = done {
            debug!(error = %e, "local connection ended with an error");
        },
        () = stop.cancelled() => {}
    }
}

/// Says, once per change, whether the node is there for these
/// credentials: the forwarder's log is where a user looks when calls fail.
async fn watch_node(api: ApiArgs, node: NodeId, stop: CancellationToken) {
    let mut last: Option<String> = None;
    loop {
        let now = match api.get(&format!("/v1/nodes/{node}")).await {
            Ok((200, _)) => "up".to_owned(),
            Ok((status, body)) => format!("{status}: {}", message_of(&body)),
            Err(_) => "unreachable".to_owned(),
        };
        if last.as_ref() != Some(&now) {
            match now.as_str() {
                "up" if last.is_some() => info!(%node, "the node is connected again"),
                "up" => {}
                "unreachable" => {}
                refused if refused.starts_with("401") || refused.starts_with("403") => {
                    warn!(%node, relay = %refused, "the relay refuses these credentials; calls through this forwarder fail until they are fixed")
                }
                gone => {
                    warn!(%node, relay = %gone, "the node went away: calls get the relay's error until its agent connects again")
                }
            }
            last = Some(now);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// A bound local endpoint.
enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Takes one local connection and serves it on a task of its own.
    async fn accept(
        &self,
        forwarder: &Arc<Forwarder>,
        stop: &CancellationToken,
    ) -> std::io::Result<()> {
        let (forwarder, stop) = (forwarder.clone(), stop.clone());
        match self {
            Self::Unix(l) => {
                let (io, _) = l.accept().await?;
                tokio::spawn(serve_local(io, forwarder, stop));
            }
            Self::Tcp(l) => {
                let (io, _) = l.accept().await?;
                let _ = io.set_nodelay(true);
                tokio::spawn(serve_local(io, forwarder, stop));
            }
        }
        Ok(())
    }
}

/// Binds a Unix socket at `path` that only its owner may use, replacing
/// a stale one a forwarder that died left behind.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is served by another forwarder already; stop it, or pass --listen",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    Ok(listener)
}

/// Runs the forwarder until Ctrl-C or SIGTERM.
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let (prefix, name, node) = match (&args.node, args.fleet) {
        (_, true) => ("/fleet".to_owned(), "fleet".to_owned(), None),
        (Some(node), false) => {
            let id = NodeId::new(node.as_str())
                .map_err(|e| anyhow::anyhow!("{node:?} is not a node id: {e}"))?;
            (format!("/nodes/{id}"), id.to_string(), Some(id))
        }
        (None, false) => bail!("name the node to serve, or pass --fleet"),
    };
    // Say now, not at the first call, if the relay or the node is not there.
    let probe = format!("{prefix}/_ping");
    let (status, body) = args.api.get(&probe).await?;
    if status != 200 {
        bail!(
            "the relay answered {status} for {name}: {}; `tunnelgate-relay nodes ls` lists the nodes these credentials reach",
            message_of(&body)
        );
    }
    let listen = match &args.listen {
        Some(text) => Listen::parse(text)?,
        None => Listen::default_for(&name),
    };
    let forwarder = Arc::new(Forwarder {
        authority: HeaderValue::from_str(&args.api.authority()?)?,
        api: args.api.clone(),
        prefix,
        warm: Mutex::new(None),
    });
    let stop = CancellationToken::new();
    tunnelgate_session::process::stop_on_signals(stop.clone());
    tokio::spawn(forwarder.clone().keep_warm(stop.clone()));
    if let Some(node) = node {
        tokio::spawn(watch_node(args.api.clone(), node, stop.clone()));
    }
    // Bound before the line is printed: a script that reads it connects at once.
    let listener = match &listen {
        Listen::Unix(path) => Listener::Unix(bind_unix(path)?),
        Listen::Tcp(addr) => Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
    };
    println!("export DOCKER_HOST={}", listen.docker_host());
    info!(target_endpoint = %name, relay = %args.api.url(), listen = %listen.docker_host(),
          "forwarding; every call on this endpoint goes to {name} (Ctrl-C stops)");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept(&forwarder, &stop) => accepted,
            () = stop.cancelled() => break,
        };
        if let Err(e) = accepted {
            warn!(error = %e, "accept failed");
        }
    }
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    info!("forwarder stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_a_socket_or_loopback_tcp() {
        assert_eq!(
            Listen::parse("unix:///run/x.sock").unwrap(),
            Listen::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Listen::parse("tcp://127.0.0.1:2375").unwrap().docker_host(),
            "tcp://127.0.0.1:2375"
        );
        let wide = Listen::parse("tcp://0.0.0.0:2375").unwrap_err();
        assert!(wide.to_string().contains("loopback"), "{wide}");
        assert!(Listen::parse("2375").is_err());
    }
}
