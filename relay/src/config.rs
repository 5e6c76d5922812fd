//! The relay's configuration: defaults, then a TOML file, then
//! `TUNNELGATE_*` environment variables, then flags; validated once into a
//! [`Config`] whose fields are no longer optional.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tunnelgate_proto::RelayId;
use tunnelgate_session::config::parse_duration;

mod args;
mod file;

pub use args::{ApiAuth, DirectMode, LimitArgs, ServeArgs};
use file::FileConfig;

/// The relay's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the CA, tokens and enrolled nodes are kept.
    pub state_dir: PathBuf,
    /// Where the CA is read from, when not the state dir.
    pub ca_dir: Option<PathBuf>,
    /// Docker API listener.
    pub api_listen: SocketAddr,
    /// Agent listener (QUIC).
    pub agent_listen: SocketAddr,
    /// Ceiling of path-MTU discovery on agents' QUIC sessions.
    pub agent_quic_mtu: u16,
    /// Metrics and health listener.
    pub metrics_listen: SocketAddr,
    /// Extra names for the server certificate; the first is how peers and
    /// agents reach this relay.
    pub advertise: Vec<String>,
    /// The domain under which `<node-id>.DOMAIN` names a node.
    pub node_domain: Option<NodeDomain>,
    /// Where the cluster's registry is.
    pub registry: RegistryConfig,
    /// This relay's name, when not the state dir's.
    pub relay_id: Option<RelayId>,
    /// Relay-to-relay listener (cluster mode only).
    pub peer_listen: SocketAddr,
    /// Agents' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Whether the API listener speaks TLS.
    pub api_tls: bool,
    /// Whether API calls need credentials.
    pub api_auth: ApiAuth,
    /// Lifetime of node certificates.
    pub node_cert_ttl: Duration,
    /// Whether calls may go straight to nodes' daemons.
    pub direct: DirectMode,
    /// How often each advertised daemon endpoint is probed.
    pub direct_probe_interval: Duration,
    /// Threads for client connections that go direct (0: none).
    pub direct_threads: usize,
    /// How the fleet endpoint places new containers.
    pub fleet_strategy: crate::fleet::StrategyName,
    /// How long a node is offline before its containers are rescheduled.
    pub fleet_reschedule_grace: Duration,
    /// Lifetime of daemon server certificates.
    pub daemon_cert_ttl: Duration,
    /// The agent binary served for installs, when not beside the relay's.
    pub agent_binary: Option<PathBuf>,
    /// Protection limits.
    pub limits: Limits,
}

/// The domain under which a host name names a node (`web-1.DOMAIN`) or
/// the fleet (`fleet.DOMAIN`); lowercase, without a leading dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDomain(String);

/// What a host name under the node domain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByHost {
    /// A node; `Err` holds a label that is no node id.
    Node(Result<tunnelgate_proto::NodeId, String>),
    /// `fleet.DOMAIN`.
    Fleet,
}

impl NodeDomain {
    /// Reads `relay.example.com` (a leading `*.` or `.` is dropped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let d = text.trim().trim_start_matches("*.").trim_start_matches('.');
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        match !d.is_empty() && d.split('.').all(label_ok) {
            true => Ok(Self(d)),
            false => Err(format!(
                "{text:?} is not a DNS domain (labels of letters, digits and `-`), e.g. nodes.example.com"
            )),
        }
    }

    /// The domain, e.g. `nodes.example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What `host` (a `Host` header or TLS server name, with or without
    /// a port) names: `None` unless it is one label under the domain.
    pub fn names(&self, host: &str) -> Option<ByHost> {
        let host = strip_port(host);
        let cut = host.len().checked_sub(self.0.len() + 1)?;
        let (label, rest) = host.split_at(cut);
        if !rest[1..].eq_ignore_ascii_case(&self.0) || !rest.starts_with('.') || label.contains('.')
        {
            return None;
        }
        Some(match label.to_ascii_lowercase().as_str() {
            "fleet" => ByHost::Fleet,
            "" => return None,
            _ => ByHost::Node(tunnelgate_proto::NodeId::new(label).map_err(|_| label.to_owned())),
        })
    }
}

/// `host` without a trailing `:PORT` (an IPv6 literal keeps its brackets).
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Where the registry of relays and node locations is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConfig {
    /// In memory: one relay on its own.
    Memory,
    /// In etcd, shared by every relay that uses it.
    Etcd {
        /// `http://HOST:PORT` of each etcd member.
        endpoints: Vec<String>,
        /// How long entries outlive a relay that died.
        lease_ttl: Duration,
    },
}

impl RegistryConfig {
    /// Reads `memory` or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(text: &str, lease_ttl: Duration) -> Result<Self, ConfigError> {
        if text == "memory" {
            return Ok(Self::Memory);
        }
        let invalid = |reason: String| ConfigError::Invalid {
            key: "registry",
            reason,
        };
        let hosts = text.strip_prefix("etcd://").ok_or_else(|| {
            invalid(format!(
                "{text:?} is neither `memory` nor `etcd://HOST:PORT[,HOST:PORT...]`"
            ))
        })?;
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(format!("http://{h}"))
                }
                _ => Err(invalid(format!(
                    "{h:?} in {text:?} is not HOST:PORT (etcd's client port, usually 2379)"
                ))),
            })
            .collect::<Result<_, _>>()?;
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "registry_lease_ttl",
                reason: "must be at least 1s (etcd leases count whole seconds)".into(),
            });
        }
        Ok(Self::Etcd {
            endpoints,
            lease_ttl,
        })
    }
}

/// The validated limits; see [`LimitArgs`].
#[derive(Debug, Clone)]
#[allow(missing_docs)] // documented on LimitArgs
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub idle_stream_timeout: Duration,
    pub max_streams_per_node: usize,
    pub max_streams_per_tenant: usize,
    pub max_events_backlog: usize,
    pub max_agent_handshakes_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_stream_timeout: Duration::from_secs(3600),
            max_streams_per_node: 256,
            max_streams_per_tenant: 4096,
            max_events_backlog: 1000,
            max_agent_handshakes_per_sec: 1000,
        }
    }
}

pub use tunnelgate_session::config::ConfigError;

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("tunnelgate-data"),
            ca_dir: None,
            api_listen: ([127, 0, 0, 1], 7375).into(),
            agent_listen: ([0, 0, 0, 0], 7443).into(),
            agent_quic_mtu: tunnelgate_session::quic::ETHERNET_MTU,
            metrics_listen: ([127, 0, 0, 1], 9375).into(),
            advertise: Vec::new(),
            node_domain: None,
            registry: RegistryConfig::Memory,
            relay_id: None,
            peer_listen: ([0, 0, 0, 0], 7444).into(),
            heartbeat_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            api_tls: false,
            api_auth: ApiAuth::LoopbackOpen,
            node_cert_ttl: Duration::from_secs(7 * 24 * 3600),
            direct: DirectMode::Prefer,
            direct_probe_interval: Duration::from_secs(30),
            direct_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fleet_strategy: crate::fleet::StrategyName::default(),
            fleet_reschedule_grace: Duration::from_secs(60),
            daemon_cert_ttl: Duration::from_secs(90 * 24 * 3600),
            agent_binary: None,
            limits: Limits::default(),
        }
    }
}

fn file_duration(
    key: &'static str,
    value: Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    value.map(|v| parse_duration(key, &v)).transpose()
}

impl Config {
    /// Layers the file under the flags and environment, over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => tunnelgate_session::config::read_toml(path)?,
            None => FileConfig::default(),
        };
        let d = Self::default();
        let (l, fl, dl) = (args.limits, &file, Limits::default());
        let limits = Limits {
            max_header_bytes: l
                .max_header_bytes
                .or(fl.max_header_bytes)
                .unwrap_or(dl.max_header_bytes),
            max_headers: l.max_headers.or(fl.max_headers).unwrap_or(dl.max_headers),
            header_read_timeout: l
                .header_read_timeout
                .or(file_duration(
                    "header_read_timeout",
                    fl.header_read_timeout.clone(),
                )?)
                .unwrap_or(dl.header_read_timeout),
            idle_stream_timeout: l
                .idle_stream_timeout
                .or(file_duration(
                    "idle_stream_timeout",
                    fl.idle_stream_timeout.clone(),
                )?)
                .unwrap_or(dl.idle_stream_timeout),
            max_streams_per_node: l
                .max_streams_per_node
                .or(fl.max_streams_per_node)
                .unwrap_or(dl.max_streams_per_node),
            max_streams_per_tenant: l
                .max_streams_per_tenant
                .or(fl.max_streams_per_tenant)
                .unwrap_or(dl.max_streams_per_tenant),
            max_events_backlog: l
                .max_events_backlog
                .or(fl.max_events_backlog)
                .unwrap_or(dl.max_events_backlog)
                .max(1),
            max_agent_handshakes_per_sec: l
                .max_agent_handshakes_per_sec
                .or(fl.max_agent_handshakes_per_sec)
                .unwrap_or(dl.max_agent_handshakes_per_sec),
        };
        let api_listen = args.api_listen.or(file.api_listen).unwrap_or(d.api_listen);
        let loopback = api_listen.ip().is_loopback();
        let api_tls = args.api_tls.or(file.api_tls);
        if !loopback && api_tls == Some(false) {
            return Err(ConfigError::Invalid {
                key: "api_tls",
                reason: format!("{api_listen} is not a loopback address, so the API must speak TLS; remove api_tls = false"),
            });
        }
        let api_auth = args.api_auth.or(file.api_auth);
        if !loopback && api_auth == Some(ApiAuth::LoopbackOpen) {
            return Err(ConfigError::Invalid {
                key: "api_auth",
                reason: format!("{api_listen} is not a loopback address, so API calls must authenticate; use api_auth = \"required\" and give clients a certificate (client-cert create) or an API key (api-key create)"),
            });
        }
        let lease_ttl = args
            .registry_lease_ttl
            .or(file_duration(
                "registry_lease_ttl",
                file.registry_lease_ttl,
            )?)
            .unwrap_or(Duration::from_secs(5));
        let registry = match args.registry.or(file.registry) {
            Some(text) => RegistryConfig::parse(&text, lease_ttl)?,
            None => RegistryConfig::Memory,
        };
        let config = Self {
            registry,
            relay_id: args.relay_id.or(file.relay_id),
            peer_listen: args
                .peer_listen
                .or(file.peer_listen)
                .unwrap_or(d.peer_listen),
            state_dir: args.state_dir.or(file.state_dir).unwrap_or(d.state_dir),
            ca_dir: args.ca_dir.or(file.ca_dir),
            api_listen,
            api_tls: api_tls.unwrap_or(!loopback),
            api_auth: api_auth.unwrap_or(if loopback {
                ApiAuth::LoopbackOpen
            } else {
                ApiAuth::Required
            }),
            node_cert_ttl: args
                .node_cert_ttl
                .or(file_duration("node_cert_ttl", file.node_cert_ttl)?)
                .unwrap_or(d.node_cert_ttl),
            direct: args.direct.or(file.direct).unwrap_or(d.direct),
            agent_binary: args.agent_binary.or(file.agent_binary),
            direct_probe_interval: args
                .direct_probe_interval
                .or(file_duration(
                    "direct_probe_interval",
                    file.direct_probe_interval,
                )?)
                .unwrap_or(d.direct_probe_interval),
            direct_threads: args
                .direct_threads
                .or(file.direct_threads)
                .unwrap_or(d.direct_threads),
            fleet_strategy: args
                .fleet_strategy
                .or(file.fleet_strategy)
                .unwrap_or(d.fleet_strategy),
            fleet_reschedule_grace: args
                .fleet_reschedule_grace
                .or(file_duration(
                    "fleet_reschedule_grace",
                    file.fleet_reschedule_grace,
                )?)
                .unwrap_or(d.fleet_reschedule_grace),
            daemon_cert_ttl: args
                .daemon_cert_ttl
                .or(file_duration("daemon_cert_ttl", file.daemon_cert_ttl)?)
                .unwrap_or(d.daemon_cert_ttl),
            limits,
            agent_listen: args
                .agent_listen
                .or(file.agent_listen)
                .unwrap_or(d.agent_listen),
            agent_quic_mtu: args
                .agent_quic_mtu
                .or(file.agent_quic_mtu)
                .unwrap_or(d.agent_quic_mtu),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(d.metrics_listen),
            node_domain: args
                .node_domain
                .or(file.node_domain)
                .map(|d| {
                    NodeDomain::parse(&d).map_err(|reason| ConfigError::Invalid {
                        key: "node_domain",
                        reason,
                    })
                })
                .transpose()?,
            advertise: if args.advertise.is_empty() {
                file.advertise.unwrap_or_default()
            } else {
                args.advertise
            },
            heartbeat_interval: args
                .heartbeat_interval
                .or(file_duration(
                    "heartbeat_interval",
                    file.heartbeat_interval,
                )?)
                .unwrap_or(d.heartbeat_interval),
            shutdown_grace: args
                .shutdown_grace
                .or(file_duration("shutdown_grace", file.shutdown_grace)?)
                .unwrap_or(d.shutdown_grace),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_cert_ttl < Duration::from_secs(3) {
            return Err(ConfigError::Invalid {
                key: "node_cert_ttl",
                reason: "must be at least 3s".into(),
            });
        }
        let most = tunnelgate_session::quic::MAX_STREAMS_TO_AGENT as usize;
        if self.limits.max_streams_per_node > most {
            return Err(ConfigError::Invalid {
                key: "max_streams_per_node",
                reason: format!(
                    "{} is more than the {most} calls an agent accepts at once over QUIC; use {most} or less",
                    self.limits.max_streams_per_node
                ),
            });
        }
        if self.direct_probe_interval < Duration::from_millis(200) {
            return Err(ConfigError::Invalid {
                key: "direct_probe_interval",
                reason: "must be at least 200ms; each probe is a TLS handshake with the daemon"
                    .into(),
            });
        }
        if self.daemon_cert_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                key: "daemon_cert_ttl",
                reason: "must be at least 60s".into(),
            });
        }
        use tunnelgate_session::quic::{INITIAL_MTU, MTU_CEILING};
        if !(INITIAL_MTU..=MTU_CEILING).contains(&self.agent_quic_mtu) {
            return Err(ConfigError::Invalid {
                key: "agent_quic_mtu",
                reason: format!(
                    "{} is outside {INITIAL_MTU}-{MTU_CEILING}: QUIC needs {INITIAL_MTU}, and above {MTU_CEILING} a full send of ten packets no longer fits one UDP datagram",
                    self.agent_quic_mtu
                ),
            });
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "heartbeat_interval",
                reason: "must be at least 100ms".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_under_the_node_domain_names_a_node_or_the_fleet() {
        let d = NodeDomain::parse("*.Nodes.Example.com").unwrap();
        assert_eq!(d.as_str(), "nodes.example.com");
        let node = |n: &str| Some(ByHost::Node(Ok(tunnelgate_proto::NodeId::new(n).unwrap())));
        assert_eq!(d.names("web-1.nodes.example.com:7375"), node("web-1"));
        assert_eq!(d.names("WEB-1.NODES.example.com"), node("WEB-1"));
        assert_eq!(d.names("fleet.nodes.example.com"), Some(ByHost::Fleet));
        for other in [
            "nodes.example.com",
            "a.b.nodes.example.com",
            "web-1.nodes.example.org",
            "web-1xnodes.example.com",
            "relay:7375",
            "[::1]:7375",
            ".nodes.example.com",
        ] {
            assert_eq!(d.names(other), None, "{other}");
        }
        assert!(NodeDomain::parse("bad_domain").is_err());
        assert!(NodeDomain::parse("").is_err());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "state_dir = \"/from/file\"\napi_listen = \"127.0.0.1:1000\"\nshutdown_grace = \"3s\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            api_listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.api_listen.port(), 2000);
        assert_eq!(c.state_dir, PathBuf::from("/from/file"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.metrics_listen.port(), 9375);
    }

    #[test]
    fn the_registry_is_memory_or_etcd_endpoints() {
        let resolve = |registry: &str| {
            Config::resolve(ServeArgs {
                registry: Some(registry.into()),
                ..Default::default()
            })
        };
        assert_eq!(
            Config::resolve(ServeArgs::default()).unwrap().registry,
            RegistryConfig::Memory
        );
        assert_eq!(
            resolve("etcd://127.0.0.1:2379,etcd-2:2379")
                .unwrap()
                .registry,
            RegistryConfig::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into(), "http://etcd-2:2379".into()],
                lease_ttl: Duration::from_secs(5),
            }
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "zookeeper://h:1",
            "etcd://h:99999",
        ] {
            let err = resolve(bad).unwrap_err().to_string();
            assert!(err.contains("registry"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "api_listn = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("api_listn"), "{err}");

        std::fs::write(&path, "shutdown_grace = \"soon\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("shutdown_grace"), "{err}");

        let mut args = ServeArgs::default();
        args.limits.max_streams_per_node = Some(1000);
        let err = Config::resolve(args).unwrap_err();
        assert!(err.to_string().contains("max_streams_per_node"), "{err}");

        let mtu = |bytes| {
            Config::resolve(ServeArgs {
                agent_quic_mtu: Some(bytes),
                ..Default::default()
            })
        };
        let err = mtu(9000).unwrap_err();
        assert!(err.to_string().contains("agent_quic_mtu"), "{err}");
        assert!(mtu(1000).is_err());
        assert_eq!(mtu(6500).unwrap().agent_quic_mtu, 6500);
        assert_eq!(
            Config::resolve(ServeArgs::default())
                .unwrap()
                .agent_quic_mtu,
            1452
        );
    }

    #[test]
    fn an_api_off_loopback_always_speaks_tls_and_authenticates() {
        let public = || ServeArgs {
            api_listen: Some("0.0.0.0:7375".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(public()).unwrap();
        assert!(c.api_tls);
        assert_eq!(c.api_auth, ApiAuth::Required);

        let err = Config::resolve(ServeArgs {
            api_auth: Some(ApiAuth::LoopbackOpen),
            ..public()
        })
        .unwrap_err();
        assert!(err.to_string().contains("api_auth"), "{err}");
        let err = Config::resolve(ServeArgs {
            api_tls: Some(false),
            ..public()
        })
        .unwrap_err();
        assert!(err.to_string().contains("api_tls"), "{err}");

        let local = Config::resolve(ServeArgs::default()).unwrap();
        assert!(!local.api_tls);
        assert_eq!(local.api_auth, ApiAuth::LoopbackOpen);
    }
}
