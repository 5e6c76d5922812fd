//! The relay's lifecycle: [`Relay::bind`] opens the state dir and binds
//! every listener; [`Relay::run`] serves until told to stop, then drains.
//!
//! One cancellation tree and one task tracker per relay:
//!
//! ```text
//! hard ─────────── ends sessions, connections, the watcher (the root)
//!  └─ accepting ── stops the listeners taking new agents and clients
//! ```
//!
//! On shutdown `accepting` fires first, agents are asked to move, and the
//! drain waits for the call tracker (one token per open stream) to empty
//! within the shutdown grace; then `hard` fires and every tracked task is
//! given a moment to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnelgate_proto::{NodeKey, RelayId};

use crate::config::{Config, DirectMode, RegistryConfig};
use crate::front::install::Installer;
use crate::front::{self, ClientConn, Front};
use crate::identity::{Authority, IdentityError};
use crate::listen::{self, HandshakeBudget};
use crate::metrics::{self, Metrics};
use crate::net::{self, BindError, HttpOptions};
use crate::registry::{Member, Registry};
use crate::router::Router;
use crate::sessions::{ControlCommand, NodeView, Sessions};
use crate::state::credentials::NewCredential;
use crate::state::records::Records;
use crate::state::{State, StateError};
use crate::upstream::{Direct, Peers, Tunnel};

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The state dir is unusable.
    #[error("state dir: {0}")]
    State(#[from] StateError),
    /// The CA or the relay's certificate is unusable.
    #[error("state dir: {0}")]
    Identity(#[from] IdentityError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster's registry cannot be reached.
    #[error(transparent)]
    Registry(#[from] crate::registry::etcd::EtcdError),
}

/// A relay with its listeners bound, ready to [`Relay::run`].
pub struct Relay {
    config: Arc<Config>,
    state: Arc<State>,
    authority: Arc<Authority>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// The relay-to-relay endpoint and this relay's connections to its
    /// peers, in a cluster.
    peer_endpoint: Option<(quinn::Endpoint, Arc<Peers>)>,
    endpoint: quinn::Endpoint,
    agent_tcp: TcpListener,
    agent_tls: Arc<rustls::ServerConfig>,
    api: TcpListener,
    api_tls: Option<tokio_rustls::TlsAcceptor>,
    metrics_listener: TcpListener,
    direct: Arc<Direct>,
    install: Arc<Installer>,
}

/// How peers and agents reach a listener bound at `bound`: the first
/// `--advertise` name, else the bound address itself when it is a real
/// one, else the host name.
fn advertised(config: &Config, bound: SocketAddr) -> String {
    let host = match config.advertise.first() {
        Some(name) => name.clone(),
        None if !bound.ip().is_unspecified() => bound.ip().to_string(),
        None => tunnelgate_session::config::hostname(),
    };
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{}", bound.port()),
        Err(_) => format!("{host}:{}", bound.port()),
    }
}

/// The names the relay's server certificate is good for.
fn server_names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    // Unreadable, it is `localhost`, which is there already.
    names.push(tunnelgate_session::config::hostname());
    if !config.agent_listen.ip().is_unspecified() {
        names.push(config.agent_listen.ip().to_string());
    }
    names.extend(config.advertise.iter().cloned());
    // A client that names a node by host name checks the relay's
    // certificate against that name.
    if let Some(domain) = &config.node_domain {
        names.push(format!("*.{}", domain.as_str()));
    }
    names.sort();
    names.dedup();
    names
}

impl Relay {
    /// Opens the state dir and binds every listener.
    pub async fn bind(config: Config) -> Result<Self, RelayError> {
        let (dir, ca_dir) = (config.state_dir.clone(), config.ca_dir.clone());
        let authority =
            tokio::task::spawn_blocking(move || Authority::open(&dir, ca_dir.as_deref()))
                .await
                .map_err(StateError::from)??;
        let records = match &config.registry {
            RegistryConfig::Memory => Records::Files(config.state_dir.clone()),
            RegistryConfig::Etcd { endpoints, .. } => Records::etcd(endpoints).await?,
        };
        let state = State::open(&config.state_dir, records)
            .await?
            .with_relay_id(config.relay_id.clone());
        let state = Arc::new(state);
        let keyed = state.clone();
        let reset_key = tokio::task::spawn_blocking(move || keyed.quic_reset_key())
            .await
            .map_err(StateError::from)??;
        let identity = authority.server_identity(state.relay_id(), &server_names(&config))?;
        let api_tls = match config.api_tls {
            true => {
                let tls = tunnelgate_session::tls::api_server_config(
                    identity.clone(),
                    authority.ca_der(),
                )
                .map_err(IdentityError::from)?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
            }
            false => None,
        };
        let tls = tunnelgate_session::tls::server_config(identity, authority.ca_der())
            .map_err(IdentityError::from)?;
        let tls = Arc::new(tls);
        let (endpoint, agent_tcp) = net::bind_agent_listeners(
            config.agent_listen,
            &tls,
            config.heartbeat_interval,
            &reset_key,
            config.agent_quic_mtu,
        )
        .await?;
        let api = net::bind_tcp("api-listen", config.api_listen).await?;
        let metrics_listener = net::bind_tcp("metrics-listen", config.metrics_listen).await?;
        let peer_endpoint = match &config.registry {
            RegistryConfig::Memory => None,
            RegistryConfig::Etcd { .. } => {
                let relay = authority.relay_identity(state.relay_id())?;
                let ca = authority.ca_der();
                let server = tunnelgate_session::tls::peer_server_config(relay.clone(), ca)
                    .map_err(IdentityError::from)?;
                let client = tunnelgate_session::tls::peer_client_config(relay, ca)
                    .map_err(IdentityError::from)?;
                let bind_err = |source| BindError {
                    what: "peer-listen",
                    addr: config.peer_listen,
                    source,
                };
                let endpoint =
                    tunnelgate_session::quic::peer_endpoint(config.peer_listen, server, &reset_key)
                        .map_err(bind_err)?;
                let client =
                    tunnelgate_session::quic::peer_client_config(client).map_err(bind_err)?;
                let peers = Arc::new(Peers::new(endpoint.clone(), client));
                Some((endpoint, peers))
            }
        };
        let bound = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        let me = Member {
            relay_id: state.relay_id().clone(),
            peer_addr: advertised(
                &config,
                peer_endpoint.as_ref().map_or(config.peer_listen, |(e, _)| {
                    e.local_addr().expect("a bound endpoint has an address")
                }),
            ),
            agent_addr: advertised(&config, bound(&agent_tcp)),
            api_addr: advertised(&config, bound(&api)),
            generation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            draining: false,
        };
        let install = Arc::new(Installer::new(
            authority.ca_pem().to_owned(),
            me.agent_addr.clone(),
            me.api_addr.clone(),
            config.api_tls,
            config.agent_binary.clone(),
        ));
        let registry = match &config.registry {
            RegistryConfig::Memory => Registry::memory(me),
            RegistryConfig::Etcd {
                endpoints,
                lease_ttl,
            } => Registry::etcd(endpoints.clone(), me, *lease_ttl).await?,
        };
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new())?);
        let direct_tls = tunnelgate_session::tls::direct_client_config(
            authority.direct_identity(state.relay_id())?,
            authority.ca_der(),
        )
        .map_err(IdentityError::from)?;
        let direct = Arc::new(Direct::new(
            config.direct,
            direct_tls,
            config.direct_probe_interval,
            metrics.clone(),
        ));
        Ok(Self {
            install,
            registry: Arc::new(registry),
            peer_endpoint,
            config: Arc::new(config),
            state,
            authority: Arc::new(authority),
            sessions: Arc::default(),
            metrics,
            direct,
            endpoint,
            agent_tcp,
            agent_tls: tls,
            api,
            api_tls,
            metrics_listener,
        })
    }

    /// The line `serve` prints once it listens.
    pub fn listening(&self) -> ListeningLine {
        let bound = "a bound listener has an address";
        ListeningLine {
            api: self.api.local_addr().expect(bound),
            agent: self.endpoint.local_addr().expect(bound),
            metrics: self.metrics_listener.local_addr().expect(bound),
            peer: self
                .peer_endpoint
                .as_ref()
                .map(|(e, _)| e.local_addr().expect(bound)),
        }
    }

    /// The Docker API listener's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.listening().api
    }

    /// The agent listener's address.
    pub fn agent_addr(&self) -> SocketAddr {
        self.listening().agent
    }

    /// A handle to the running relay's state, for the quickstart, tests
    /// and benches.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            state: self.state.clone(),
            authority: self.authority.clone(),
            sessions: self.sessions.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Serves until `shutdown` fires, then drains: stops accepting, asks
    /// agents to move, gives in-flight calls the shutdown grace, and stops.
    pub async fn run(self, shutdown: CancellationToken) {
        let listening = self.listening();
        let Self {
            config,
            state,
            authority,
            sessions,
            metrics,
            registry,
            peer_endpoint,
            endpoint,
            agent_tcp,
            agent_tls,
            api,
            api_tls,
            metrics_listener,
            direct,
            install,
        } = self;
        let tasks = TaskTracker::new();
        let calls = TaskTracker::new();
        let hard = CancellationToken::new();
        let accepting = hard.child_token();
        let ready = Arc::new(AtomicBool::new(false));
        let wind_down = CancellationToken::new();

        let agents = Arc::new(listen::Context {
            config: config.clone(),
            state: state.clone(),
            authority,
            sessions: sessions.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            budget: HandshakeBudget::new(config.limits.max_agent_handshakes_per_sec),
            busy_replies: HandshakeBudget::new(config.limits.max_agent_handshakes_per_sec),
            tasks: tasks.clone(),
        });
        tasks.spawn(
            direct
                .clone()
                .run(sessions.clone(), registry.clone(), hard.clone()),
        );
        tasks.spawn(flush_uses(state.clone(), hard.clone()));
        tasks.spawn(share_facts(
            sessions.clone(),
            registry.clone(),
            state.relay_id().clone(),
            hard.clone(),
        ));
        tasks.spawn(listen::run_quic(
            endpoint.clone(),
            agents.clone(),
            accepting.clone(),
            hard.clone(),
            tasks.clone(),
        ));
        tasks.spawn(listen::run_tcp(
            agent_tcp,
            agent_tls,
            agents,
            accepting.clone(),
            hard.clone(),
            tasks.clone(),
        ));
        let placement = if config.direct_threads == 0 || config.direct == DirectMode::Never {
            None
        } else {
            match net::FrontThreads::start(config.direct_threads) {
                Ok(threads) => {
                    let direct = direct.clone();
                    Some(net::Placement {
                        threads,
                        wants: Box::new(move |head| front::goes_direct(&direct, head)),
                    })
                }
                Err(e) => {
                    warn!(error = %e, "cannot start the direct path's threads; its connections run on the shared pool");
                    None
                }
            }
        };
        let front = Arc::new(Front {
            config: config.clone(),
            state: state.clone(),
            sessions: sessions.clone(),
            router: Router::new(
                sessions.clone(),
                registry.clone(),
                state.clone(),
                direct.clone(),
            ),
            tunnel: Tunnel::new(
                metrics.clone(),
                config.limits.idle_stream_timeout,
                tasks.clone(),
                calls.clone(),
                peer_endpoint.as_ref().map(|(_, peers)| peers.clone()),
                direct.clone(),
            ),
            direct: direct.clone(),
            install,
            metrics: metrics.clone(),
            slots: Arc::default(),
            fleet: Arc::default(),
            tasks: tasks.clone(),
            wind_down: wind_down.clone(),
        });
        tasks.spawn(net::serve_http(
            api,
            HttpOptions {
                tls: api_tls,
                upgrades: true,
                limits: Some((config.limits.clone(), metrics.clone())),
                placement,
            },
            (accepting.clone(), hard.clone()),
            tasks.clone(),
            move |meta| {
                let (front, conn) = (front.clone(), Arc::new(ClientConn::new(meta)));
                service_fn(move |req| front::handle(front.clone(), conn.clone(), req))
            },
        ));
        let (m, r) = (metrics.clone(), ready.clone());
        tasks.spawn(net::serve_http(
            metrics_listener,
            HttpOptions {
                tls: None,
                upgrades: false,
                limits: None,
                placement: None,
            },
            (hard.clone(), hard.clone()),
            tasks.clone(),
            move |_| {
                let (m, r) = (m.clone(), r.clone());
                service_fn(move |req| metrics::handle(m.clone(), r.clone(), req))
            },
        ));
        if let Some((endpoint, _)) = &peer_endpoint {
            let ctx = Arc::new(listen::peer::PeerContext {
                relay_id: state.relay_id().clone(),
                sessions: sessions.clone(),
                calls: calls.clone(),
                metrics: metrics.clone(),
            });
            tasks.spawn(listen::peer::run_peers(
                endpoint.clone(),
                ctx,
                hard.clone(),
                hard.clone(),
                tasks.clone(),
            ));
        }
        // The registry leaves the cluster last, when `hard` fires: a
        // draining relay still holds, and serves, its sessions.
        tasks.spawn(registry.clone().run(hard.clone()));
        tasks.spawn(announce_members(
            registry.clone(),
            sessions.clone(),
            config.limits.max_agent_handshakes_per_sec,
            hard.clone(),
        ));
        let watched = sessions.clone();
        tasks.spawn(
            state
                .clone()
                .watch(hard.clone(), move |revoked| drop_revoked(&watched, revoked)),
        );
        // Ready once the registry's routes are known: a relay that has not
        // listed them would answer "offline" for nodes its peers hold.
        tokio::select! {
            () = registry.synced() => {}
            () = shutdown.cancelled() => {}
        }
        ready.store(true, Ordering::Release);
        metrics.ready.set(1);
        info!(relay_id = %state.relay_id(), api_addr = %listening.api, agent_addr = %listening.agent,
              metrics_addr = %listening.metrics, "relay serving");
        say_pre_role_credentials(&state);

        tokio::select! {
            () = shutdown.cancelled() => {}
            () = hard.cancelled() => {}
        }
        ready.store(false, Ordering::Release);
        metrics.ready.set(0);
        registry.set_draining();
        accepting.cancel();
        drain(&config, &sessions, &registry, &calls, &wind_down).await;
        if let Err(e) = state.flush_uses().await {
            warn!(error = %e, "cannot record when keys were last used");
        }
        hard.cancel();
        endpoint.close(0u32.into(), b"relay shutting down");
        if let Some((endpoint, peers)) = &peer_endpoint {
            peers.close();
            endpoint.close(0u32.into(), b"relay shutting down");
        }
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            debug!("some tasks did not stop in time");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        info!("relay stopped");
    }
}

/// Asks every agent to move and waits, within the shutdown grace, until
/// the last stream to an agent has closed. In a cluster with somewhere
/// else to go it also waits for the agents to leave: each closes its
/// session here once its new one elsewhere is welcomed, so no node is
/// without a session in between.
async fn drain(
    config: &Config,
    sessions: &Sessions,
    registry: &Registry,
    calls: &TaskTracker,
    wind_down: &CancellationToken,
) {
    let grace = config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let entries = sessions.entries();
    info!(
        agents = entries.len(),
        ?grace,
        "shutting down: draining agents and in-flight calls"
    );
    let spread = reconnect_spread(entries.len(), config.limits.max_agent_handshakes_per_sec);
    let members = registry.agent_view();
    for entry in &entries {
        let members = members.clone();
        let cmd: ControlCommand =
            Box::new(move |m| m.drain("relay shutting down", grace, spread, members));
        let _ = entry.control.try_send(cmd);
    }
    if registry.has_other_live_member() {
        while !sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match sessions.len() {
            0 => info!("every agent moved to another relay"),
            n => warn!(
                agents = n,
                "shutdown grace over before every agent moved (a session with calls in flight stays until they end); closing the rest here"
            ),
        }
    }
    calls.close();
    if tokio::time::timeout_at(deadline, calls.wait())
        .await
        .is_ok()
    {
        return;
    }
    // Long streams (logs -f, attach, exec) would never end by themselves:
    // end each at its next quiet moment, as if the node had ended it.
    info!(
        streams = calls.len(),
        "shutdown grace over; ending long streams at their next quiet moment"
    );
    wind_down.cancel();
    if tokio::time::timeout(WIND_DOWN, calls.wait()).await.is_err() {
        warn!(
            streams = calls.len(),
            "cutting streams that never went quiet"
        );
    }
}

/// How long streams have to end after the wind-down.
const WIND_DOWN: Duration = Duration::from_secs(2);

/// Tells every agent here when the cluster's membership changes, so each
/// can keep its sessions on the relays its hash picks.
async fn announce_members(
    registry: Arc<Registry>,
    sessions: Arc<Sessions>,
    handshakes_per_sec: u32,
    stop: CancellationToken,
) {
    let mut changes = registry.membership();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        // A relay joining writes several keys: tell agents once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        changes.borrow_and_update();
        let members = registry.agent_view();
        let entries = sessions.entries();
        // The agents a change moves are about as many as this relay holds
        // (a dead relay's agents hold a session here too): spread them
        // over what a relay's handshake budget lets in.
        let spread = reconnect_spread(entries.len(), handshakes_per_sec);
        debug!(
            members = members.len(),
            agents = entries.len(),
            ?spread,
            "membership changed; telling agents"
        );
        for entry in entries {
            let members = members.clone();
            let cmd: ControlCommand = Box::new(move |m| m.members_changed(members, spread));
            let _ = entry.control.try_send(cmd);
        }
    }
}

/// Says once, at start, how many API keys and client certificates were
/// made before roles: they act as operator until made again with a role.
fn say_pre_role_credentials(state: &State) {
    let older = |list: &[crate::state::credentials::Credential]| {
        list.iter()
            .filter(|c| c.role.is_none() && c.revoked_at.is_none())
            .count()
    };
    let (keys, certs) = (older(&state.api_keys()), older(&state.client_certs()));
    if keys + certs > 0 {
        warn!(api_keys = keys, client_certs = certs,
              "some API keys and client certificates were made before roles; they act as operator. \
               To give one less (viewer, enroller) or more (admin), make it again with --role and revoke the old one");
    }
}

/// Writes when keys and certificates were last used, now and then.
async fn flush_uses(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::state::uses::FLUSH_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = state.flush_uses().await {
                    warn!(error = %e, "cannot record when keys were last used; trying again later");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// How often this relay's nodes' facts are compared with what it shares.
const FACTS_EVERY: Duration = Duration::from_millis(500);

/// Keeps the facts of the nodes held here shared in the registry, so a
/// peer's node list and fleet know their hostnames, labels and health.
/// Only what changed is written.
async fn share_facts(
    sessions: Arc<Sessions>,
    registry: Arc<Registry>,
    relay_id: tunnelgate_proto::RelayId,
    stop: CancellationToken,
) {
    if !registry.is_shared() {
        return;
    }
    let mut tick = tokio::time::interval(FACTS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => registry.share_facts(sessions.facts(&relay_id)),
            () = stop.cancelled() => return,
        }
    }
}

/// Closes at once the session of a node whose certificate was revoked.
///
/// The session's control loop then ends and takes it out of the table
/// the way every ended session goes, withdrawing its registry claim;
/// taking it out here first would leave that claim in the cluster's
/// registry until this relay's lease ended.
fn drop_revoked(sessions: &Sessions, revoked: &[crate::state::nodes::Revocation]) {
    for entry in sessions.entries() {
        if revoked
            .iter()
            .any(|r| r.covers(&entry.key, &entry.cert_serial))
        {
            info!(tenant = %entry.key.tenant, node_id = %entry.key.node_id,
                  "node revoked by an operator; closing its session");
            entry.session.close("node revoked by an operator");
        }
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

/// What the quickstart, tests and benches may ask a running relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    state: Arc<State>,
    authority: Arc<Authority>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
}

impl RelayHandle {
    /// This relay's id.
    pub fn relay_id(&self) -> &RelayId {
        self.state.relay_id()
    }

    /// Makes a join token and returns its text.
    pub async fn create_join_token(&self, new: NewCredential) -> Result<String, StateError> {
        let (text, _) = self
            .state
            .create_join_token(new, self.authority.ca_fingerprint())
            .await?;
        Ok(text)
    }

    /// The node as `/v1/nodes` shows it, if its agent is connected here.
    pub fn node(&self, key: &NodeKey) -> Option<NodeView> {
        self.sessions
            .get(key)
            .map(|e| e.view(self.state.relay_id()))
    }

    /// The node's current session, for tests that play a relay towards a
    /// real agent.
    pub fn session(&self, key: &NodeKey) -> Option<tunnelgate_session::Session> {
        self.sessions.get(key).map(|e| e.session.clone())
    }

    /// The installation's CA certificate.
    pub fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.authority.ca_der().clone()
    }

    /// The metrics, as `/metrics` shows them.
    pub fn metrics_text(&self) -> String {
        String::from_utf8(self.metrics.render()).expect("Prometheus text is UTF-8")
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
    /// Relay-to-relay listener, in a cluster.
    pub peer: Option<SocketAddr>,
}

impl std::fmt::Display for ListeningLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tunnelgate-relay listening: api={} agent={} metrics={}",
            self.api, self.agent, self.metrics
        )?;
        match self.peer {
            Some(peer) => write!(f, " peer={peer}"),
            None => Ok(()),
        }
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
            peer: match line.contains(" peer=") {
                true => Some(addr("peer=")?),
                false => None,
            },
        })
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
            peer: None,
        };
        assert_eq!(line.to_string().parse::<ListeningLine>(), Ok(line));
        let cluster = ListeningLine {
            peer: Some("127.0.0.1:7444".parse().unwrap()),
            ..line
        };
        assert_eq!(cluster.to_string().parse::<ListeningLine>(), Ok(cluster));
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
