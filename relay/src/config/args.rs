//! The flags of `tunnelgate-relay serve`, each with its environment
//! variable, as clap reads them: every setting optional, so that
//! [`super::Config::resolve`] can layer them over the file and the
//! defaults. Nothing here validates or defaults a value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tunnelgate_proto::RelayId;

/// Flags (and their environment variables) of `tunnelgate-relay serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "TUNNELGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the CA, tokens and enrolled nodes are kept [default: ./tunnelgate-data].
    #[arg(long, env = "TUNNELGATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the installation CA (`ca.pem`, `ca-key.pem`) is read from,
    /// when not the state dir: a directory or secret mounted into every
    /// relay of a cluster; never written [default: the state dir].
    #[arg(long, env = "TUNNELGATE_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Docker API listener for control-plane clients [default: 127.0.0.1:7375].
    #[arg(long, env = "TUNNELGATE_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Agent listener, QUIC over UDP [default: 0.0.0.0:7443].
    #[arg(long, env = "TUNNELGATE_AGENT_LISTEN", value_name = "ADDR")]
    pub agent_listen: Option<SocketAddr>,
    /// Largest UDP payload, in bytes, that QUIC path-MTU discovery may
    /// reach on agents' sessions, both ways (1200-6500). Where agents
    /// reach the relay over loopback or a jumbo-frame network, 6500 cuts
    /// the CPU per GB of bulk calls by about 40 %, while each agent
    /// handshake then costs the relay two to three times as much (the discovery
    /// probes); on paths of ordinary 1,500-byte MTU it changes nothing.
    /// Relay-to-relay links always discover up to 6500 [default: 1452].
    #[arg(long, env = "TUNNELGATE_AGENT_QUIC_MTU", value_name = "BYTES")]
    pub agent_quic_mtu: Option<u16>,
    /// Listener for /metrics, /healthz and /readyz [default: 127.0.0.1:9375].
    #[arg(long, env = "TUNNELGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Extra DNS names or IPs agents use to reach this relay, put in its
    /// certificate (localhost, loopback and the host name are always there).
    #[arg(
        long = "advertise",
        env = "TUNNELGATE_ADVERTISE",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub advertise: Vec<String>,
    /// Route by host name too: a call to `<node-id>.DOMAIN` goes to that
    /// node with its path as sent (`DOCKER_HOST=tcp://web-1.DOMAIN:7375`,
    /// for clients that keep only host and port), and `fleet.DOMAIN` is
    /// the fleet. The relay's certificate gets `*.DOMAIN`; point a
    /// wildcard DNS record `*.DOMAIN` at the relays [default: off].
    #[arg(long, env = "TUNNELGATE_NODE_DOMAIN", value_name = "DOMAIN")]
    pub node_domain: Option<String>,
    /// `memory`: one relay on its own. `etcd://HOST:PORT[,HOST:PORT...]`:
    /// share nodes with the other relays of that etcd, so any of them
    /// serves a call for any node [default: memory].
    #[arg(long, env = "TUNNELGATE_REGISTRY", value_name = "REGISTRY")]
    pub registry: Option<String>,
    /// This relay's name in the cluster; must differ between relays
    /// [default: the one in the state dir, made on first start].
    #[arg(long, env = "TUNNELGATE_RELAY_ID", value_name = "ID")]
    pub relay_id: Option<RelayId>,
    /// Relay-to-relay listener, QUIC over UDP, used with --registry etcd
    /// [default: 0.0.0.0:7444].
    #[arg(long, env = "TUNNELGATE_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// How long this relay's registry entries outlive it when it dies
    /// without leaving [default: 5s].
    #[arg(long, env = "TUNNELGATE_REGISTRY_LEASE_TTL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub registry_lease_ttl: Option<Duration>,
    /// How often agents send heartbeats [default: 5s].
    #[arg(long, env = "TUNNELGATE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Option<Duration>,
    /// How long in-flight calls may finish after SIGTERM [default: 10s].
    #[arg(long, env = "TUNNELGATE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Option<Duration>,
    /// Serve the Docker API over TLS (always on when --api-listen is not loopback).
    #[arg(long, env = "TUNNELGATE_API_TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub api_tls: Option<bool>,
    /// `required`: every API call needs a client certificate or an API key;
    /// `loopback-open`: calls without credentials act for the `default`
    /// tenant (only allowed on a loopback --api-listen) [default: required
    /// off loopback, loopback-open on it].
    #[arg(long, env = "TUNNELGATE_API_AUTH", value_name = "MODE")]
    pub api_auth: Option<ApiAuth>,
    /// Lifetime of node certificates; agents renew them over their session
    /// after two thirds of it [default: 7d].
    #[arg(long, env = "TUNNELGATE_NODE_CERT_TTL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub node_cert_ttl: Option<Duration>,
    /// `prefer`: carry calls straight to a node's own daemon port over
    /// mutual TLS wherever the node advertises one and this relay's probe
    /// of it holds, else through the tunnel; `never`: always the tunnel,
    /// no probes (in a cluster it still shares what its nodes advertise,
    /// for the other relays to probe) [default: prefer].
    #[arg(long, env = "TUNNELGATE_DIRECT", value_enum, value_name = "MODE")]
    pub direct: Option<DirectMode>,
    /// How often to probe each daemon endpoint that nodes advertise
    /// [default: 30s].
    #[arg(long, env = "TUNNELGATE_DIRECT_PROBE_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub direct_probe_interval: Option<Duration>,
    /// Threads of their own for client connections whose first call goes
    /// over the direct path: such a connection and its daemon connection
    /// then share one thread, which cost the relay 6-20 % less CPU than
    /// its shared pool in benches/README.md; 0 keeps them on the pool
    /// (plain-HTTP API only; with --api-tls they stay on the pool)
    /// [default: one per core].
    #[arg(long, env = "TUNNELGATE_DIRECT_THREADS", value_name = "N")]
    pub direct_threads: Option<usize>,
    /// How the fleet endpoint places a new container among the nodes its
    /// filters leave: spread (the node with the least reserved CPU and
    /// memory, then the fewest containers), binpack (the fullest node it
    /// still fits on), or random [default: spread].
    #[arg(long, env = "TUNNELGATE_FLEET_STRATEGY", value_name = "STRATEGY")]
    pub fleet_strategy: Option<crate::fleet::StrategyName>,
    /// How long a node may stay offline before the fleet creates its
    /// containers that ask for it (`-e reschedule:on-node-failure`) again
    /// on another node; the stale copy goes when the node is back
    /// [default: 60s].
    #[arg(long, env = "TUNNELGATE_FLEET_RESCHEDULE_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub fleet_reschedule_grace: Option<Duration>,
    /// The agent binary served to hosts at /download/ for the one-line
    /// install [default: tunnelgate-agent beside this binary].
    #[arg(long, env = "TUNNELGATE_AGENT_BINARY", value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Lifetime of the daemon server certificates agents get with
    /// `tunnelgate-agent docker-tls` [default: 90d].
    #[arg(long, env = "TUNNELGATE_DAEMON_CERT_TTL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub daemon_cert_ttl: Option<Duration>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Whether the relay may go straight to nodes' daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectMode {
    /// Go direct wherever a probe holds, else through the tunnel.
    Prefer,
    /// Always through the tunnel; no probes. A cluster's other relays
    /// still learn what this relay's nodes advertise.
    Never,
}

/// Whether the API asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiAuth {
    /// Every call needs a client certificate or an API key.
    Required,
    /// Calls without credentials act for the `default` tenant.
    LoopbackOpen,
}

/// Limits that protect the relay from hostile or runaway peers. Each hit
/// counts in `tunnelgate_relay_limit_hits_total{limit=...}`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LimitArgs {
    /// Largest request head (request line and headers) accepted [default: 64KiB, in bytes].
    #[arg(long, env = "TUNNELGATE_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most request headers accepted [default: 100].
    #[arg(long, env = "TUNNELGATE_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<usize>,
    /// How long a client may take to send a request head [default: 10s].
    #[arg(long, env = "TUNNELGATE_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Option<Duration>,
    /// A call with no bytes either way for this long is cut [default: 1h].
    #[arg(long, env = "TUNNELGATE_IDLE_STREAM_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_stream_timeout: Option<Duration>,
    /// Calls in flight to one node, at most 256 [default: 256].
    #[arg(long, env = "TUNNELGATE_MAX_STREAMS_PER_NODE", value_name = "N")]
    pub max_streams_per_node: Option<usize>,
    /// Clients' calls in flight to all nodes of one tenant [default: 4096]
    /// (the fleet view's own streams count only per node).
    #[arg(long, env = "TUNNELGATE_MAX_STREAMS_PER_TENANT", value_name = "N")]
    pub max_streams_per_tenant: Option<usize>,
    /// Events a reader of `/v1/events` (or the fleet's `docker events`) may
    /// fall behind by; a reader further behind is cut with a final line
    /// saying so, so a stalled reader never grows the relay's memory
    /// [default: 1000].
    #[arg(long, env = "TUNNELGATE_MAX_EVENTS_BACKLOG", value_name = "N")]
    pub max_events_backlog: Option<usize>,
    /// New agent handshakes started per second; more wait up to 3 s for
    /// their turn, the rest are refused and retry with backoff, so a
    /// reconnect storm cannot starve live calls. A reconnecting agent
    /// costs the relay under 1 CPU-ms, so the default takes at most one
    /// core and brings 50,000 agents back in under a minute [default: 1000].
    #[arg(
        long,
        env = "TUNNELGATE_MAX_AGENT_HANDSHAKES_PER_SEC",
        value_name = "N"
    )]
    pub max_agent_handshakes_per_sec: Option<u32>,
}
