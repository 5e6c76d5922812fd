//! What a TOML config file may hold: the flags' settings under their
//! snake_case names, every one optional; an unknown key is refused.
//! Durations stay text here and are read by [`super::Config::resolve`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tunnelgate_proto::RelayId;

use super::{ApiAuth, DirectMode};

/// The settings a TOML file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) ca_dir: Option<PathBuf>,
    pub(super) api_listen: Option<SocketAddr>,
    pub(super) agent_listen: Option<SocketAddr>,
    pub(super) agent_quic_mtu: Option<u16>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) advertise: Option<Vec<String>>,
    pub(super) node_domain: Option<String>,
    pub(super) registry: Option<String>,
    pub(super) relay_id: Option<RelayId>,
    pub(super) peer_listen: Option<SocketAddr>,
    pub(super) registry_lease_ttl: Option<String>,
    pub(super) heartbeat_interval: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) api_tls: Option<bool>,
    pub(super) api_auth: Option<ApiAuth>,
    pub(super) node_cert_ttl: Option<String>,
    pub(super) direct: Option<DirectMode>,
    pub(super) agent_binary: Option<PathBuf>,
    pub(super) direct_probe_interval: Option<String>,
    pub(super) direct_threads: Option<usize>,
    pub(super) fleet_strategy: Option<crate::fleet::StrategyName>,
    pub(super) fleet_reschedule_grace: Option<String>,
    pub(super) daemon_cert_ttl: Option<String>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_headers: Option<usize>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) idle_stream_timeout: Option<String>,
    pub(super) max_streams_per_node: Option<usize>,
    pub(super) max_streams_per_tenant: Option<usize>,
    pub(super) max_events_backlog: Option<usize>,
    pub(super) max_agent_handshakes_per_sec: Option<u32>,
}
