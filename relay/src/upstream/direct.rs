//! The direct path: a call carried over mutual TLS straight to the node's
//! own Docker daemon port, where the node advertised one and this relay's
//! last probe of it held.
//!
//! Reachability differs per relay, so each relay probes each endpoint the
//! nodes it holds advertise, and those that other relays of a cluster
//! share for the nodes they hold (through the registry), on its own
//! schedule: TLS with this relay's direct-path certificate, the server's
//! certificate that node's daemon certificate from the installation CA,
//! `GET /_ping`, then `GET /info` whose daemon ID must equal the one the
//! agent reported, so a different daemon at that address is never used. The router takes an endpoint
//! only while its last probe held; a call whose connection fails before
//! any byte left marks it down and goes through the tunnel instead.
//!
//! Connections carry TCP keep-alive and a user timeout, so a stream whose
//! path is black-holed mid-call ends with an error within
//! [`DEAD_PATH_BOUND`] instead of hanging.
//!
//! This module must not decide routes (the router does) nor know tenants'
//! limits; it connects, probes and remembers what the probes said.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tunnelgate_proto::{NodeId, NodeKey};
use tunnelgate_session::tls;

pub use crate::config::DirectMode;
use crate::error::CallError;
use crate::metrics::Metrics;
use crate::registry::{DirectAd, Registry};
use crate::sessions::Sessions;

/// How long a TCP connect to a daemon may take: the call waits on it
/// before it falls back to the tunnel, so it is short.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the TLS handshake with a daemon may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one probe may take in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);
/// Keep-alive on direct connections: first probe after this idle time,
/// then every [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`] times.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data older than this ends a direct connection.
const USER_TIMEOUT: Duration = Duration::from_secs(10);
/// A direct stream whose path goes dead mid-call ends with an error
/// within this bound: keep-alive notices an idle one after
/// 5 + 3 × 2 = 11 s, the user timeout a busy one after 10 s.
pub const DEAD_PATH_BOUND: Duration = Duration::from_secs(15);
/// After this many probes in a row fail, an endpoint is probed less
/// often (doubling, up to 8× the interval); one that held before is
/// probed every interval until then, so it is back within one interval
/// of its port opening again.
const FAILURES_BEFORE_BACKOFF: u32 = 10;

/// A daemon endpoint a node advertised, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// As advertised, `tcp://HOST:PORT`.
    pub url: String,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `tcp://HOST:PORT` (or `https://`); `None` for anything else.
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url
            .strip_prefix("tcp://")
            .or_else(|| url.strip_prefix("https://"))?;
        let (host, port) = tunnelgate_proto::docker_api::host_port(rest)?;
        Some(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

/// What the last probe of an endpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probed {
    /// Not probed yet.
    Unknown,
    /// TLS, `_ping` and the daemon ID held.
    Up,
    /// Unreachable, or TLS failed: the reason.
    Down(String),
    /// Another daemon answers there: the reason, naming both IDs.
    OtherDaemon(String),
}

impl Probed {
    fn label(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down(_) => "down",
            Self::OtherDaemon(_) => "other_daemon",
        }
    }
}

/// One advertised endpoint of one node, as this relay sees it.
#[derive(Debug, Clone)]
struct Health {
    endpoint: Endpoint,
    /// The daemon ID the agent reported.
    daemon_id: String,
    probed: Probed,
    checked_at: Option<SystemTime>,
    failures: u32,
    next_probe: Instant,
    probing: bool,
}

/// An endpoint's health as `/v1/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// As advertised.
    pub endpoint: String,
    /// `up`, `down`, `other_daemon` or `unknown` (not probed yet).
    pub state: &'static str,
    /// Why it is not up.
    pub error: Option<String>,
    /// When it was last probed, RFC 3339.
    pub checked_at: Option<String>,
}

/// The direct path of one relay: its TLS client and what its probes found.
pub struct Direct {
    mode: DirectMode,
    connector: tokio_rustls::TlsConnector,
    interval: Duration,
    health: Mutex<HashMap<NodeKey, Vec<Health>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("mode", &self.mode)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// A direct path that dials with `tls` (this relay's direct-path
    /// certificate, trusting the installation CA) and probes every `interval`.
    pub fn new(
        mode: DirectMode,
        tls: rustls::ClientConfig,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            mode,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            interval,
            health: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeKey, Vec<Health>>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's endpoint whose last probe held, if any.
    pub fn usable(&self, key: &NodeKey) -> Option<Endpoint> {
        if self.mode == DirectMode::Never {
            return None;
        }
        self.lock()
            .get(key)?
            .iter()
            .find(|h| h.probed == Probed::Up)
            .map(|h| h.endpoint.clone())
    }

    /// Whether some tenant's node `node_id` has an endpoint whose last
    /// probe held: a hint for where a client connection runs, before its
    /// tenant is known.
    pub fn reaches(&self, node_id: &NodeId) -> bool {
        self.mode != DirectMode::Never
            && self.lock().iter().any(|(key, list)| {
                key.node_id == *node_id && list.iter().any(|h| h.probed == Probed::Up)
            })
    }

    /// The node's endpoints and their health, for the node list.
    pub fn views(&self, key: &NodeKey) -> Vec<EndpointView> {
        let health = self.lock();
        let Some(list) = health.get(key) else {
            return Vec::new();
        };
        list.iter()
            .map(|h| EndpointView {
                endpoint: h.endpoint.url.clone(),
                state: h.probed.label(),
                error: match &h.probed {
                    Probed::Down(why) | Probed::OtherDaemon(why) => Some(why.clone()),
                    _ => None,
                },
                checked_at: h
                    .checked_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            })
            .collect()
    }

    /// Marks `endpoint` of `key` down after a call failed on it, and has
    /// it probed again at once.
    pub fn mark_down(&self, key: &NodeKey, endpoint: &Endpoint, why: &str) {
        let mut health = self.lock();
        if let Some(h) = health
            .get_mut(key)
            .and_then(|l| l.iter_mut().find(|h| &h.endpoint == endpoint))
        {
            if h.probed == Probed::Up {
                info!(node_id = %key.node_id, endpoint = %endpoint.url, reason = why,
                      "direct path failed; calls go through the tunnel until a probe holds again");
            }
            h.probed = Probed::Down(why.to_owned());
            h.next_probe = Instant::now();
        }
    }

    /// Connects to the daemon at `endpoint`, which must present the
    /// daemon certificate of `key`'s node.
    pub async fn connect(
        &self,
        key: &NodeKey,
        endpoint: &Endpoint,
    ) -> Result<TlsStream<TcpStream>, CallError> {
        self.dial(key, endpoint)
            .await
            .map_err(|reason| CallError::DirectFailed {
                node: key.node_id.clone(),
                endpoint: endpoint.url.clone(),
                reason,
            })
    }

    async fn dial(
        &self,
        key: &NodeKey,
        endpoint: &Endpoint,
    ) -> Result<TlsStream<TcpStream>, String> {
        let addr: SocketAddr = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", endpoint.host))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no TCP answer from {addr} within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        keep_alive(&tcp).map_err(|e| format!("cannot set keep-alive on {addr}: {e}"))?;
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("{} is not a valid TLS server name: {e}", endpoint.host))?;
        let tls = tokio::time::timeout(TLS_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| format!("no TLS handshake with {addr} within {TLS_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS with {addr} failed: {e}"))?;
        let subject = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(tls::subject);
        match subject {
            Some(s)
                if s.role == Some(tls::Role::Daemon)
                    && s.tenant.as_ref() == Some(&key.tenant)
                    && s.name == key.node_id.as_str() =>
            {
                Ok(tls)
            }
            Some(s) => Err(format!(
                "the daemon at {addr} presents a certificate for {} of tenant {}, not node {}'s daemon certificate",
                s.name,
                s.tenant.map_or_else(|| "-".into(), |t| t.to_string()),
                key.node_id
            )),
            None => Err(format!("the daemon at {addr} presents no readable certificate")),
        }
    }

    /// Probes `endpoint` of `key`: TLS, `_ping`, and the daemon ID.
    async fn probe(&self, key: &NodeKey, endpoint: &Endpoint, daemon_id: &str) -> Probed {
        let run = async {
            let tls = self.dial(key, endpoint).await.map_err(Probed::Down)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                    .await
                    .map_err(|e| Probed::Down(format!("HTTP: {e}")))?;
            tokio::spawn(conn);
            get(&mut sender, "/_ping").await.map_err(Probed::Down)?;
            let info = get(&mut sender, "/info").await.map_err(Probed::Down)?;
            let id = serde_json::from_slice::<serde_json::Value>(&info)
                .ok()
                .and_then(|v| v.get("ID")?.as_str().map(str::to_owned))
                .ok_or_else(|| Probed::Down("GET /info has no daemon ID".into()))?;
            if id != daemon_id {
                return Err(Probed::OtherDaemon(format!(
                    "the daemon at {} has ID {id}, not {daemon_id} as node {}'s agent reports; another daemon answers at that address",
                    endpoint.url, key.node_id
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, run).await {
            Ok(Ok(())) => Probed::Up,
            Ok(Err(p)) => p,
            Err(_) => Probed::Down(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// Brings the probe table in line with what the nodes advertise, when
    /// their policy allows the direct path: those this relay holds (whose
    /// advertisements it shares with the cluster) and those only peers hold.
    fn sync(&self, sessions: &Sessions, registry: &Registry) {
        let own = own_ads(sessions);
        registry.share_direct(&own);
        let peers: Vec<_> = registry
            .peers_direct_ads()
            .into_iter()
            .filter(|(key, _)| !own.contains_key(key))
            .collect();
        let mut wanted: HashMap<NodeKey, Vec<(Endpoint, String)>> = HashMap::new();
        for (key, ad) in own.into_iter().chain(peers) {
            let endpoints: Vec<_> = ad
                .endpoints
                .iter()
                .filter_map(|e| Endpoint::parse(e))
                .map(|e| (e, ad.daemon_id.clone()))
                .collect();
            if !endpoints.is_empty() {
                wanted.insert(key, endpoints);
            }
        }
        let mut health = self.lock();
        health.retain(|key, _| wanted.contains_key(key));
        for (key, endpoints) in wanted {
            let list = health.entry(key).or_default();
            list.retain(|h| {
                endpoints
                    .iter()
                    .any(|(e, id)| e == &h.endpoint && id == &h.daemon_id)
            });
            for (endpoint, daemon_id) in endpoints {
                if !list.iter().any(|h| h.endpoint == endpoint) {
                    list.push(Health {
                        endpoint,
                        daemon_id,
                        probed: Probed::Unknown,
                        checked_at: None,
                        failures: 0,
                        next_probe: Instant::now(),
                        probing: false,
                    });
                }
            }
        }
        let up = health
            .values()
            .flatten()
            .filter(|h| h.probed == Probed::Up)
            .count();
        self.metrics.direct_endpoints_up.set(up as i64);
    }

    /// Takes the endpoints due for a probe, marking them as being probed.
    fn due(&self) -> Vec<(NodeKey, Endpoint, String)> {
        let now = Instant::now();
        let mut health = self.lock();
        let mut due = Vec::new();
        for (key, list) in health.iter_mut() {
            for h in list
                .iter_mut()
                .filter(|h| !h.probing && h.next_probe <= now)
            {
                h.probing = true;
                due.push((key.clone(), h.endpoint.clone(), h.daemon_id.clone()));
            }
        }
        due
    }

    fn record(&self, key: &NodeKey, endpoint: &Endpoint, probed: Probed) {
        self.metrics
            .direct_probes
            .with_label_values(&[probed.label()])
            .inc();
        let mut health = self.lock();
        let Some(h) = health
            .get_mut(key)
            .and_then(|l| l.iter_mut().find(|h| &h.endpoint == endpoint))
        else {
            return;
        };
        h.probing = false;
        h.checked_at = Some(SystemTime::now());
        h.failures = match probed {
            Probed::Up => 0,
            _ => h.failures.saturating_add(1),
        };
        let backoff = 1u32 << h.failures.saturating_sub(FAILURES_BEFORE_BACKOFF).min(3);
        h.next_probe = Instant::now() + self.interval * backoff;
        if h.probed == probed {
            return;
        }
        // Logged when the finding changes, so an endpoint that stays
        // wrong says so once.
        let node_id: &NodeId = &key.node_id;
        match &probed {
            Probed::Up => {
                info!(%node_id, endpoint = %endpoint.url, "direct path to the node's daemon holds; calls go direct")
            }
            Probed::OtherDaemon(why) => {
                warn!(%node_id, endpoint = %endpoint.url, reason = %why,
                      "not using the direct path; calls go through the tunnel. Fix the node's --direct-endpoint")
            }
            Probed::Down(why) => {
                info!(%node_id, endpoint = %endpoint.url, reason = %why,
                      "direct path unavailable; calls go through the tunnel")
            }
            Probed::Unknown => {}
        }
        h.probed = probed;
    }

    /// Probes the advertised endpoints of the nodes this relay holds, and
    /// of those its peers hold, until `cancel`. Cancel-safe: a probe cut
    /// short changes nothing.
    pub async fn run(
        self: Arc<Self>,
        sessions: Arc<Sessions>,
        registry: Arc<Registry>,
        cancel: CancellationToken,
    ) {
        let tick = (self.interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        if self.mode == DirectMode::Never {
            // Never going direct itself, this relay still tells its peers
            // what its nodes advertise: they may reach those daemons.
            loop {
                registry.share_direct(&own_ads(&sessions));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(tick) => {}
                }
            }
        }
        let mut probes = tokio::task::JoinSet::new();
        loop {
            self.sync(&sessions, &registry);
            for (key, endpoint, daemon_id) in self.due() {
                let me = self.clone();
                probes.spawn(async move {
                    let probed = me.probe(&key, &endpoint, &daemon_id).await;
                    debug!(node_id = %key.node_id, endpoint = %endpoint.url, state = probed.label(), "direct probe");
                    me.record(&key, &endpoint, probed);
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            while probes.try_join_next().is_some() {}
        }
    }
}

/// What the nodes this relay holds advertise of their direct paths, for
/// those whose policy allows the direct path and whose daemon ID is known.
fn own_ads(sessions: &Sessions) -> HashMap<NodeKey, DirectAd> {
    let mut own = HashMap::new();
    for entry in sessions.entries() {
        let info = entry.info.lock().unwrap_or_else(|p| p.into_inner());
        if info.hello.direct_endpoints.is_empty() || info.hello.policy != "full" {
            continue;
        }
        let Some(id) = info.docker.id.clone() else {
            continue;
        };
        own.insert(
            entry.key.clone(),
            DirectAd {
                endpoints: info.hello.direct_endpoints.clone(),
                daemon_id: id,
            },
        );
    }
    own
}

/// `GET path` on a daemon connection; the body when the answer is 200.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<Bytes, String> {
    let req = http::Request::get(path)
        .header("host", "docker")
        .body(Empty::new())
        .expect("static request is valid");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {path} answered {status}"));
    }
    Ok(body)
}

/// Keep-alive and a user timeout, so a path that goes dead mid-stream
/// ends the stream within [`DEAD_PATH_BOUND`].
fn keep_alive(tcp: &TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_anything_else_is_refused() {
        let e = Endpoint::parse("tcp://10.0.0.5:2376").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.5", 2376));
        let e = Endpoint::parse("tcp://[fd00::5]:2376").unwrap();
        assert_eq!(e.host, "fd00::5");
        assert_eq!(
            Endpoint::parse("https://node.example:2376/").unwrap().port,
            2376
        );
        for bad in [
            "unix:///var/run/docker.sock",
            "tcp://host",
            "tcp://:2376",
            "tcp://h:x",
        ] {
            assert!(Endpoint::parse(bad).is_none(), "{bad}");
        }
    }
}
