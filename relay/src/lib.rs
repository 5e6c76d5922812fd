//! The tunnelgate relay.
//!
//! Agents dial in on the agent listener ([`listen`]) and hold a session in
//! the session table ([`sessions`]); control-plane clients speak the Docker
//! API to the front ([`front`]), which authenticates them ([`auth`]) and
//! carries each call over a stream of the node's session, leaving an audit
//! line ([`audit`]). [`identity`] keeps the installation's CA, node records
//! and revocations, [`credentials`] the join tokens and API keys; a watcher
//! picks up their changes made by the CLI while the relay serves.
//! [`metrics`] serves Prometheus metrics and health checks.
//!
//! This crate must not know how an agent serves a stream: it speaks only
//! the protocol of `tunnelgate-proto` over `tunnelgate-session`.

pub mod audit;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod error;
pub mod front;
pub mod identity;
mod io;
pub mod listen;
pub mod metrics;
mod reply;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use config::{Config, ServeArgs};
use identity::Authority;
use metrics::Metrics;
use sessions::Sessions;

/// What every part of a running relay shares.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// CA, tokens, enrolled nodes.
    pub authority: Authority,
    /// Live agent sessions.
    pub sessions: Sessions,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// API keys, as last read from the state dir.
    pub api_keys: auth::ApiKeys,
    /// Calls in flight per node and tenant.
    pub slots: Arc<front::StreamSlots>,
    /// New agent handshakes allowed now.
    pub handshakes: listen::HandshakeBudget,
}

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The state dir is unusable.
    #[error("state dir: {0}")]
    Identity(#[from] identity::IdentityError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is another relay running there? pick another address with --{what}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A relay with its listeners bound, ready to [`Relay::run`].
pub struct Relay {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    agent_tcp: TcpListener,
    agent_tls: Arc<rustls::ServerConfig>,
    api: TcpListener,
    api_tls: Option<tokio_rustls::TlsAcceptor>,
    metrics_listener: TcpListener,
}

impl Relay {
    /// Opens the state dir and binds every listener.
    pub async fn bind(config: Config) -> Result<Self, RelayError> {
        let authority = Authority::open(&config.state_dir)?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(h.trim().to_owned());
        }
        if !config.agent_listen.ip().is_unspecified() {
            names.push(config.agent_listen.ip().to_string());
        }
        names.extend(config.advertise.iter().cloned());
        names.sort();
        names.dedup();
        let identity = authority.server_identity(&names)?;
        let api_tls = if config.api_tls {
            let tls =
                tunnelgate_session::tls::api_server_config(identity.clone(), authority.ca_der())
                    .map_err(identity::IdentityError::from)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
        } else {
            None
        };
        let tls = tunnelgate_session::tls::server_config(identity, authority.ca_der())
            .map_err(identity::IdentityError::from)?;
        let bind_err = |what, addr| move |source| RelayError::Bind { what, addr, source };
        let tls = Arc::new(tls);
        let (endpoint, agent_tcp) =
            bind_agent_listeners(config.agent_listen, &tls, config.heartbeat_interval).await?;
        let api = TcpListener::bind(config.api_listen)
            .await
            .map_err(bind_err("api-listen", config.api_listen))?;
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(bind_err("metrics-listen", config.metrics_listen))?;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new())?);
        let api_keys = auth::ApiKeys::default();
        api_keys.set(authority.credentials().list(credentials::Kind::ApiKey)?);
        let handshakes = listen::HandshakeBudget::new(config.limits.max_agent_handshakes_per_sec);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                authority,
                sessions: Sessions::default(),
                metrics,
                api_keys,
                slots: Arc::default(),
                handshakes,
            }),
            endpoint,
            agent_tcp,
            agent_tls: tls,
            api,
            api_tls,
            metrics_listener,
        })
    }

    /// The Docker API listener's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The agent listener's address.
    pub fn agent_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The line `serve` prints once it listens.
    pub fn listening(&self) -> ListeningLine {
        ListeningLine {
            api: self.api_addr(),
            agent: self.agent_addr(),
            metrics: self.metrics_addr(),
        }
    }

    /// The state shared by the relay's parts.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` fires, then drains: stops accepting, asks
    /// agents to move, gives in-flight calls the shutdown grace, and stops.
    pub async fn run(self, shutdown: CancellationToken) {
        let (api_addr, agent_addr, metrics_addr) =
            (self.api_addr(), self.agent_addr(), self.metrics_addr());
        let Self {
            shared,
            endpoint,
            agent_tcp,
            agent_tls,
            api,
            api_tls,
            metrics_listener,
        } = self;
        let tracker = TaskTracker::new();
        // `hard` ends sessions and connections; `shutdown` only stops accepting.
        let hard = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));

        tracker.spawn(listen::run_quic(
            endpoint.clone(),
            shared.clone(),
            shutdown.clone(),
            hard.clone(),
            tracker.clone(),
        ));
        tracker.spawn(listen::run_tcp(
            agent_tcp,
            agent_tls,
            shared.clone(),
            shutdown.clone(),
            hard.clone(),
            tracker.clone(),
        ));
        let front_shared = shared.clone();
        tracker.spawn(serve_http(
            api,
            HttpOptions {
                tls: api_tls,
                upgrades: true,
                limits: Some((shared.config.limits.clone(), shared.metrics.clone())),
            },
            (shutdown.clone(), hard.clone()),
            tracker.clone(),
            move |conn, req| front::handle(front_shared.clone(), conn, req),
        ));
        let (m, r) = (shared.metrics.clone(), ready.clone());
        tracker.spawn(serve_http(
            metrics_listener,
            HttpOptions {
                tls: None,
                upgrades: false,
                limits: None,
            },
            (hard.clone(), hard.clone()),
            tracker.clone(),
            move |_, req| metrics::handle(m.clone(), r.clone(), req),
        ));
        tracker.spawn(watch_state_dir(shared.clone(), hard.clone()));
        ready.store(true, Ordering::Release);
        info!(relay_id = shared.authority.relay_id(), %api_addr, %agent_addr, %metrics_addr, "relay serving");

        shutdown.cancelled().await;
        ready.store(false, Ordering::Release);
        let grace = shared.config.shutdown_grace;
        let entries = shared.sessions.entries();
        info!(
            agents = entries.len(),
            ?grace,
            "shutting down: draining agents and in-flight calls"
        );
        let spread = reconnect_spread(
            entries.len(),
            shared.config.limits.max_agent_handshakes_per_sec,
        );
        for entry in &entries {
            let cmd: sessions::ControlCommand =
                Box::new(move |m| m.drain("relay shutting down", grace, spread));
            let _ = entry.control.try_send(cmd);
        }
        let deadline = Instant::now() + grace;
        while shared.metrics.streams_open.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = shared.metrics.streams_open.get();
        if left > 0 {
            warn!(
                streams = left,
                "shutdown grace over; cutting in-flight calls"
            );
        }
        hard.cancel();
        endpoint.close(0u32.into(), b"relay shutting down");
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            debug!("some tasks did not stop in time");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        info!("relay stopped");
    }
}

/// The one line `tunnelgate-relay serve` prints on stdout once it
/// listens, so scripts, tests and the load tester learn the ports it bound
/// when asked for port 0. Printed and parsed here only, so both ends agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListeningLine {
    /// Docker API listener.
    pub api: SocketAddr,
    /// Agent listener (QUIC and TLS/TCP).
    pub agent: SocketAddr,
    /// Prometheus listener.
    pub metrics: SocketAddr,
}

impl std::fmt::Display for ListeningLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tunnelgate-relay listening: api={} agent={} metrics={}",
            self.api, self.agent, self.metrics
        )
    }
}

impl std::str::FromStr for ListeningLine {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let addr = |key: &str| -> Result<SocketAddr, String> {
            let v = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| format!("relay printed {line:?}, without {key}"))?;
            v.parse()
                .map_err(|e| format!("relay printed {line:?}: {key}{v} is not an address ({e})"))
        };
        Ok(Self {
            api: addr("api=")?,
            agent: addr("agent=")?,
            metrics: addr("metrics=")?,
        })
    }
}

/// The window a drained fleet of `agents` should spread its reconnects
/// over: as long as a relay with this handshake budget takes to let them
/// all in. Arriving faster only gets agents refused, and refused agents
/// retry with exponential backoff, so a whole fleet arriving at once comes
/// back slower than one arriving at the budget's rate.
pub fn reconnect_spread(agents: usize, handshakes_per_sec: u32) -> Duration {
    Duration::from_secs_f64(agents as f64 / f64::from(handshakes_per_sec.max(1)))
}

/// Binds QUIC (UDP) and TLS/TCP on the same port, so agents need one
/// address. With port 0 the UDP port is picked first and the TCP port of
/// the same number may be taken by someone else: then it tries another.
async fn bind_agent_listeners(
    addr: SocketAddr,
    tls: &Arc<rustls::ServerConfig>,
    heartbeat: Duration,
) -> Result<(quinn::Endpoint, TcpListener), RelayError> {
    let idle = tunnelgate_session::quic::idle_timeout(heartbeat);
    let bind_err = |addr| {
        move |source| RelayError::Bind {
            what: "agent-listen",
            addr,
            source,
        }
    };
    let mut attempts = 0;
    loop {
        let endpoint = tunnelgate_session::quic::server_endpoint(addr, (**tls).clone(), idle)
            .map_err(bind_err(addr))?;
        let quic_addr = endpoint.local_addr().map_err(bind_err(addr))?;
        match TcpListener::bind(quic_addr).await {
            Ok(tcp) => return Ok((endpoint, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 20 =>
            {
                attempts += 1;
                endpoint.close(0u32.into(), b"");
            }
            Err(e) => return Err(bind_err(quic_addr)(e)),
        }
    }
}

/// The next TCP connection, or `None` once `stop` fires. Accept errors
/// (usually EMFILE) are logged and retried after a pause, not spun on.
///
/// Cancel-safe.
pub(crate) async fn accept_tcp(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    warn!(error = %e, addr = ?listener.local_addr().ok(),
                          "accept failed; raise the file-descriptor limit if this repeats");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// How often the relay looks for changes the CLI made in the state dir.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Picks up what `api-key revoke`/`create` and `node revoke` changed while
/// the relay serves: reloads the API keys, and closes at once the session
/// of a node whose certificate was revoked.
async fn watch_state_dir(shared: Arc<Shared>, stop: CancellationToken) {
    let mut seen = shared.authority.watched_stamp();
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        let stamp = shared.authority.watched_stamp();
        if stamp == seen {
            continue;
        }
        seen = stamp;
        match shared
            .authority
            .credentials()
            .list(credentials::Kind::ApiKey)
        {
            Ok(keys) => shared.api_keys.set(keys),
            Err(e) => warn!(error = %e, "cannot reread the API keys; keeping the previous list"),
        }
        let revoked = match shared.authority.revoked() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the revocations");
                continue;
            }
        };
        for entry in shared.sessions.entries() {
            let hit = revoked.iter().any(|r| {
                r.tenant == entry.key.tenant
                    && r.node_id == entry.key.node_id
                    && r.serials.contains(&entry.cert_serial)
            });
            if hit {
                info!(tenant = %entry.key.tenant, node_id = %entry.key.node_id,
                      "node revoked by an operator; closing its session");
                shared.sessions.remove(&entry);
                entry.session.close("node revoked by an operator");
            }
        }
    }
}

/// How one HTTP listener serves.
struct HttpOptions {
    /// Speak TLS first (client certificates optional).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Let handlers hijack connections (attach, exec).
    upgrades: bool,
    /// Request-head limits, and the metrics counting their hits.
    limits: Option<(config::Limits, Arc<Metrics>)>,
}

/// Accepts HTTP/1.1 connections until `stop_accepting`; open connections
/// are asked to finish gracefully then, and dropped at `hard`.
async fn serve_http<F, Fut, B>(
    listener: TcpListener,
    options: HttpOptions,
    (stop_accepting, hard): (CancellationToken, CancellationToken),
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(Arc<auth::ConnInfo>, hyper::Request<hyper::body::Incoming>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let options = Arc::new(options);
    loop {
        let Some((tcp, peer)) = accept_tcp(&listener, &stop_accepting).await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let options = options.clone();
        let (stop, hard) = (stop_accepting.clone(), hard.clone());
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            let header_timeout = match &options.limits {
                Some((limits, _)) => {
                    builder
                        .header_read_timeout(limits.header_read_timeout)
                        .max_header_size(limits.max_header_bytes)
                        // The front answers too many headers itself with a
                        // clear message; hyper stops only the absurd.
                        .max_headers(limits.max_headers.saturating_mul(4).max(100));
                    limits.header_read_timeout
                }
                None => Duration::from_secs(30),
            };
            let (io, client_cert) = match &options.tls {
                None => (Either::Left(tcp), None),
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(tunnelgate_session::tls::subject);
                            (Either::Right(Box::new(tls)), cert)
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "API TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn_info = Arc::new(auth::ConnInfo::new(peer, client_cert));
            let svc = service_fn(move |req| handler(conn_info.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            let result = if options.upgrades {
                let conn = conn.with_upgrades();
                tokio::pin!(conn);
                drive_conn(conn, &stop, &hard, |c| c.graceful_shutdown()).await
            } else {
                tokio::pin!(conn);
                drive_conn(conn, &stop, &hard, |c| c.graceful_shutdown()).await
            };
            if let Some(Err(e)) = result {
                if let Some((_, metrics)) = &options.limits {
                    if e.is_parse_too_large() {
                        metrics.limit_hit("header_size");
                    } else if e.is_timeout() {
                        metrics.limit_hit("header_read_timeout");
                    }
                }
                debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
}

async fn drive_conn<C, T, E>(
    mut conn: std::pin::Pin<&mut C>,
    stop: &CancellationToken,
    hard: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Option<Result<T, E>>
where
    C: std::future::Future<Output = Result<T, E>>,
{
    tokio::select! {
        r = conn.as_mut() => return Some(r),
        () = stop.cancelled() => graceful(conn.as_mut()),
        () = hard.cancelled() => return None,
    }
    tokio::select! {
        r = conn.as_mut() => Some(r),
        () = hard.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_parses_back_and_names_what_is_missing() {
        let line = ListeningLine {
            api: "127.0.0.1:7375".parse().unwrap(),
            agent: "0.0.0.0:7443".parse().unwrap(),
            metrics: "[::1]:9375".parse().unwrap(),
        };
        assert_eq!(line.to_string().parse::<ListeningLine>(), Ok(line));
        let err = "tunnelgate-relay listening: api=127.0.0.1:1 agent=127.0.0.1:2"
            .parse::<ListeningLine>()
            .unwrap_err();
        assert!(err.contains("metrics="), "{err}");
    }

    #[test]
    fn a_drained_fleet_spreads_its_reconnects_over_what_the_budget_lets_in() {
        assert_eq!(reconnect_spread(50_000, 1000), Duration::from_secs(50));
        assert_eq!(reconnect_spread(10, 500), Duration::from_millis(20));
        assert_eq!(reconnect_spread(0, 500), Duration::ZERO);
        assert_eq!(
            reconnect_spread(3, 0),
            Duration::from_secs(3),
            "a zero budget counts as one a second"
        );
    }
}
