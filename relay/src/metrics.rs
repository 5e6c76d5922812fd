//! Prometheus metrics of the relay, registered on a registry passed in
//! (never the global one), and the metrics listener that serves them with
//! `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// A protection limit, as `tunnelgate_relay_limit_hits_total{limit}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A request head over `max_header_bytes`.
    HeaderSize,
    /// More header fields than `max_headers`.
    HeaderCount,
    /// A request head slower than `header_read_timeout`.
    HeaderReadTimeout,
    /// A stream idle for `idle_stream_timeout`.
    IdleStream,
    /// A control frame over the frame limit.
    FrameSize,
    /// A node's calls in flight at `max_streams_per_node`.
    StreamsPerNode,
    /// A tenant's calls in flight at `max_streams_per_tenant`.
    StreamsPerTenant,
    /// Agent handshakes over `max_agent_handshakes_per_sec`.
    AgentHandshakes,
    /// An events reader more than `max_events_backlog` behind.
    EventsBacklog,
}

impl Limit {
    /// The metric label, which is also the setting's name without `max_`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderSize => "header_size",
            Self::HeaderCount => "header_count",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::IdleStream => "idle_stream",
            Self::FrameSize => "frame_size",
            Self::StreamsPerNode => "streams_per_node",
            Self::StreamsPerTenant => "streams_per_tenant",
            Self::AgentHandshakes => "agent_handshakes",
            Self::EventsBacklog => "events_backlog",
        }
    }
}

/// How a handshake ended, as `tunnelgate_relay_agent_handshakes_total{result}`
/// and `tunnelgate_relay_peer_handshakes_total{result}` name it (a peer's
/// is never `enrolled` or `busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Authenticated and in the session table.
    Accepted,
    /// A new agent got its node certificate.
    Enrolled,
    /// Refused: bad token, revoked or replaced certificate, a peer whose
    /// certificate is not a relay's, ...
    Refused,
    /// Over the handshake budget, told where to go instead.
    Busy,
    /// The TLS or QUIC handshake failed: a certificate or protocol error.
    TlsFailed,
    /// The agent (or a load balancer's health check) closed or reset the
    /// connection before the handshake ended: nothing to fix here.
    Aborted,
    /// Too slow.
    Timeout,
}

impl Handshake {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Enrolled => "enrolled",
            Self::Refused => "refused",
            Self::Busy => "busy",
            Self::TlsFailed => "tls_failed",
            Self::Aborted => "aborted",
            Self::Timeout => "timeout",
        }
    }
}

/// The relay's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Log lines the log writer dropped, brought up to date at each scrape.
    log_lines_dropped: prometheus::IntCounter,
    /// Live agent sessions, by transport.
    pub agents_connected: IntGaugeVec,
    /// Agent handshakes, by result.
    pub agent_handshakes: IntCounterVec,
    /// Handshakes on the peer port, by result.
    pub peer_handshakes: IntCounterVec,
    /// Data streams open to agents.
    pub streams_open: IntGauge,
    /// Data streams opened to agents; against the request count, how
    /// often a client connection's calls reuse their kept stream.
    pub streams_opened: prometheus::IntCounter,
    /// Control-plane requests answered, by status code.
    pub requests: IntCounterVec,
    /// Bytes relayed, by direction (`to_node`, `from_node`).
    pub bytes: IntCounterVec,
    /// Time from a request's arrival to its response headers.
    pub request_duration: Histogram,
    /// Protection limits hit, by limit.
    pub limit_hits: IntCounterVec,
    /// Control-plane calls refused for their credentials, by reason.
    pub auth_failures: IntCounterVec,
    /// Calls carried to a node, by route (`local`, `peer`).
    pub routed: IntCounterVec,
    /// Calls that failed before reaching the daemon and went again on
    /// another route.
    pub route_retries: prometheus::IntCounter,
    /// Client connections of the API, by where they run.
    pub front_connections: IntCounterVec,
    /// Creates the fleet placed, by outcome.
    pub fleet_placements: IntCounterVec,
    /// Probes of nodes' direct daemon endpoints, by result.
    pub direct_probes: IntCounterVec,
    /// Direct daemon endpoints whose last probe held.
    pub direct_endpoints_up: IntGauge,
    /// 1 while `/readyz` says ready.
    pub ready: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let agents_connected = IntGaugeVec::new(
            Opts::new(
                "tunnelgate_relay_agents_connected",
                "Agent sessions currently held by this relay.",
            ),
            &["transport"],
        )?;
        let agent_handshakes = IntCounterVec::new(
            Opts::new(
                "tunnelgate_relay_agent_handshakes_total",
                "Agent handshakes, by result.",
            ),
            &["result"],
        )?;
        let peer_handshakes = IntCounterVec::new(
            Opts::new(
                "tunnelgate_relay_peer_handshakes_total",
                "Handshakes on the relay-to-relay port, by result: refused and tls_failed are something other than this installation's relays knocking.",
            ),
            &["result"],
        )?;
        let streams_open = IntGauge::new(
            "tunnelgate_relay_streams_open",
            "Data streams currently open to agents.",
        )?;
        let streams_opened = prometheus::IntCounter::new(
            "tunnelgate_relay_streams_opened_total",
            "Data streams opened to agents (a client connection's later calls to the same node reuse its stream).",
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "tunnelgate_front_requests_total",
                "Control-plane requests answered, by HTTP status.",
            ),
            &["status"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "tunnelgate_front_bytes_total",
                "Bytes relayed between clients and nodes, by direction.",
            ),
            &["direction"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tunnelgate_front_request_duration_seconds",
                "Time from a request's arrival to its response headers.",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14)?),
        )?;
        let limit_hits = IntCounterVec::new(
            Opts::new(
                "tunnelgate_relay_limit_hits_total",
                "Requests, streams or handshakes stopped by a protection limit, by limit.",
            ),
            &["limit"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tunnelgate_front_auth_failures_total",
                "Control-plane calls refused for missing or bad credentials, by reason.",
            ),
            &["reason"],
        )?;
        let routed = IntCounterVec::new(
            Opts::new(
                "tunnelgate_front_routed_calls_total",
                "Calls carried to a node, by route: straight to its daemon (direct), over this relay's session (local) or through the peer relay holding one (peer).",
            ),
            &["route"],
        )?;
        let route_retries = prometheus::IntCounter::new(
            "tunnelgate_front_route_retries_total",
            "Calls that failed on a route before reaching the daemon and went again on another route.",
        )?;
        let fleet_placements = IntCounterVec::new(
            Opts::new(
                "tunnelgate_fleet_placements_total",
                "Creates through the fleet endpoint, by outcome: created on a node (placed), no node fits the filters (no_node), or every candidate the placement tried refused (refused).",
            ),
            &["result"],
        )?;
        let front_connections = IntCounterVec::new(
            Opts::new(
                "tunnelgate_front_connections_total",
                "API client connections accepted, by where they run: on the relay's shared pool (shared_pool), or on a thread of their own because their first call went direct (direct_thread).",
            ),
            &["runs_on"],
        )?;
        let direct_probes = IntCounterVec::new(
            Opts::new(
                "tunnelgate_direct_probes_total",
                "Probes of nodes' advertised daemon endpoints, by result (up, down, other_daemon).",
            ),
            &["result"],
        )?;
        let direct_endpoints_up = IntGauge::new(
            "tunnelgate_direct_endpoints_up",
            "Nodes' daemon endpoints this relay can reach directly (last probe held).",
        )?;
        let log_lines_dropped = prometheus::IntCounter::new(
            "tunnelgate_log_lines_dropped_total",
            "Log lines (audit lines included) dropped because the log writer fell 65,536 lines behind: a slow disk or a stalled reader of the relay's stderr.",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        let ready = IntGauge::new(
            "tunnelgate_relay_ready",
            "1 while the relay is ready for calls (/readyz); 0 while starting or draining.",
        )?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(direct_probes.clone()))?;
        registry.register(Box::new(front_connections.clone()))?;
        registry.register(Box::new(fleet_placements.clone()))?;
        registry.register(Box::new(direct_endpoints_up.clone()))?;
        registry.register(Box::new(routed.clone()))?;
        registry.register(Box::new(route_retries.clone()))?;
        registry.register(Box::new(limit_hits.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(agents_connected.clone()))?;
        registry.register(Box::new(agent_handshakes.clone()))?;
        registry.register(Box::new(peer_handshakes.clone()))?;
        registry.register(Box::new(streams_open.clone()))?;
        registry.register(Box::new(streams_opened.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        Ok(Self {
            registry,
            log_lines_dropped,
            agents_connected,
            agent_handshakes,
            peer_handshakes,
            streams_open,
            streams_opened,
            requests,
            bytes,
            request_duration,
            limit_hits,
            auth_failures,
            routed,
            route_retries,
            front_connections,
            fleet_placements,
            direct_probes,
            direct_endpoints_up,
            ready,
        })
    }

    /// Counts one call carried over `route` (`direct`, `local` or `peer`).
    pub fn routed(&self, route: &str) {
        self.routed.with_label_values(&[route]).inc();
    }

    /// Counts one call sent again on another route.
    pub fn route_retry(&self) {
        self.route_retries.inc();
    }

    /// Counts one hit of the protection limit `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits.with_label_values(&[limit.as_str()]).inc();
    }

    /// Counts one agent handshake that ended with `result`.
    pub fn handshake(&self, result: Handshake) {
        self.agent_handshakes
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts one handshake on the peer port that ended with `result`.
    pub fn peer_handshake(&self, result: Handshake) {
        self.peer_handshakes
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = tunnelgate_session::process::dropped_log_lines() as u64;
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

/// Answers the metrics listener's requests.
pub async fn handle(
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response is valid")
    };
    Ok(match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render())))
            .expect("static response is valid"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    })
}
