//! The agent's configuration: defaults, then a TOML file, then
//! `TUNNELGATE_*` environment variables, then flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tunnelgate_proto::NodeId;
use tunnelgate_session::config::parse_duration;

use crate::docker::DockerEndpoint;
use crate::policy::Policy;

/// Which transport the agent dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC, racing TLS/TCP when QUIC is slow to answer; while on TCP,
    /// re-probe QUIC and move back when it works.
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// TLS over TCP with yamux only (for networks that drop UDP).
    Tcp,
}

/// The `tunnelgate-agent` command line: run the agent, or one of its
/// commands.
#[derive(clap::Parser, Debug)]
#[command(
    name = "tunnelgate-agent",
    version,
    args_conflicts_with_subcommands = true,
    about = "Connects this host's Docker daemon to a tunnelgate relay, dialling out only.",
    long_about = "Connects this host's Docker daemon to a tunnelgate relay, dialling out only: \
no inbound port is opened on this host.\n\n\
First start: pass --token (from `tunnelgate-relay token create`); the agent enrols, stores its \
node certificate in --state-dir and needs no token afterwards. It reconnects by itself after any \
loss, forever, and keeps running while the Docker daemon is down (calls then fail with 502)."
)]
pub struct Cli {
    /// A command instead of running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The agent's settings.
    #[command(flatten)]
    pub run: AgentArgs,
    /// How log lines are written: `text` (coloured only on a terminal,
    /// never with NO_COLOR set) or `json` (one object per line, for log
    /// shippers).
    #[arg(
        long,
        global = true,
        env = "TUNNELGATE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: tunnelgate_session::process::LogFormat,
}

/// The agent's commands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Get a server certificate for this host's Docker daemon from the
    /// relay (the key is made here and never sent) and write dockerd's TLS
    /// files, so relays that can reach the daemon's port go there directly
    /// over mutual TLS; prints the dockerd flags to use.
    DockerTls(DockerTlsArgs),
    /// Say whether the agent running on this host is connected, to which
    /// relays, over which transport, since when, and whether it reaches
    /// the Docker daemon; exits 0 only when it is connected.
    Status(StatusArgs),
    /// Ask the relay to revoke this node, as when the host is removed
    /// (`install.sh --purge` runs it): its certificate is refused
    /// everywhere from then on. The local state dir is left as it is.
    Leave(LeaveArgs),
}

/// `tunnelgate-agent leave`.
#[derive(clap::Args, Debug)]
pub struct LeaveArgs {
    /// How to reach the relay and who this node is (as for running the agent).
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `tunnelgate-agent status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The running agent's state dir.
    #[arg(
        long,
        env = "TUNNELGATE_AGENT_STATE_DIR",
        default_value = "/var/lib/tunnelgate-agent",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Print the status as JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// `tunnelgate-agent docker-tls`.
#[derive(clap::Args, Debug)]
pub struct DockerTlsArgs {
    /// Where to write ca.pem, server-cert.pem and server-key.pem.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A DNS name relays reach the daemon by; repeatable.
    #[arg(long = "name", value_name = "DNS")]
    pub names: Vec<String>,
    /// An IP address relays reach the daemon by; repeatable.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<std::net::IpAddr>,
    /// The port dockerd listens on with TLS.
    #[arg(long, default_value_t = 2376, value_name = "PORT")]
    pub port: u16,
    /// How to reach the relay and who this node is (as for running the agent).
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Flags (and their environment variables) of `tunnelgate-agent`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// A TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "TUNNELGATE_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The relay's agent address, HOST:PORT; in a cluster, any relay (or
    /// several, comma-separated or repeated): the first to answer tells
    /// the agent every member.
    #[arg(
        long,
        env = "TUNNELGATE_RELAY",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub relay: Vec<String>,
    /// How many relays of a cluster to keep a session with at once, so a
    /// relay that dies or restarts costs no call [default: 2, or all
    /// when there are fewer].
    #[arg(long, env = "TUNNELGATE_RELAY_SESSIONS", value_name = "K")]
    pub relay_sessions: Option<usize>,
    /// Join token for the first start (then only the stored certificate is used).
    #[arg(
        long,
        env = "TUNNELGATE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// This node's id, unique per installation [default: the node the
    /// state dir's certificate was issued for, else the host name].
    #[arg(long, env = "TUNNELGATE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// The Docker daemon to serve [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "TUNNELGATE_DOCKER", value_name = "ENDPOINT")]
    pub docker: Option<String>,
    /// Where the node certificate is kept [default: /var/lib/tunnelgate-agent].
    #[arg(long, env = "TUNNELGATE_AGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Transport to dial [default: auto].
    #[arg(long, env = "TUNNELGATE_TRANSPORT", value_enum)]
    pub transport: Option<TransportChoice>,
    /// With `auto`, how often to retry QUIC while on TCP [default: 30s].
    #[arg(long, env = "TUNNELGATE_QUIC_PROBE_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub quic_probe_interval: Option<Duration>,
    /// How often to re-check the Docker daemon's facts (version, reachability)
    /// while connected [default: 5s].
    #[arg(long, env = "TUNNELGATE_DAEMON_PROBE_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub daemon_probe_interval: Option<Duration>,
    /// A label for the node list, KEY=VALUE; repeatable.
    #[arg(
        long = "label",
        env = "TUNNELGATE_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
    /// What the relay may ask of the daemon: `full`, `read-only` (GET and
    /// HEAD only, no attach or exec), or a TOML allow-list file. Enforced
    /// here on the host [default: full].
    #[arg(long, env = "TUNNELGATE_POLICY", value_name = "PROFILE|FILE")]
    pub policy: Option<String>,
    /// Where relays may reach this host's Docker daemon directly over
    /// mutual TLS, tcp://HOST:PORT; repeatable. Relays that can reach it
    /// carry calls there and use the tunnel otherwise. Only with
    /// `--policy full`, since the direct path bypasses the agent
    /// [default: the endpoints `docker-tls` wrote to --daemon-tls, else none].
    #[arg(
        long = "direct-endpoint",
        env = "TUNNELGATE_DIRECT_ENDPOINT",
        value_delimiter = ',',
        value_name = "tcp://HOST:PORT"
    )]
    pub direct_endpoints: Vec<String>,
    /// The directory `tunnelgate-agent docker-tls --out` wrote the daemon's
    /// TLS files to: the agent renews the certificate there before it
    /// expires and tells you when to restart dockerd.
    #[arg(long, env = "TUNNELGATE_DAEMON_TLS", value_name = "DIR")]
    pub daemon_tls: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    relay: Option<OneOrMany>,
    relay_sessions: Option<usize>,
    token: Option<String>,
    node_id: Option<String>,
    docker: Option<String>,
    state_dir: Option<PathBuf>,
    transport: Option<TransportChoice>,
    quic_probe_interval: Option<String>,
    daemon_probe_interval: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    policy: Option<String>,
    direct_endpoints: Option<Vec<String>>,
    daemon_tls: Option<PathBuf>,
}

/// `relay = "host:port"` or `relay = ["a:7443", "b:7443"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The agent's validated configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// Relays' agent addresses, HOST:PORT, to start from: in a cluster
    /// the relays then say who else is a member.
    pub relays: Vec<String>,
    /// How many relays to keep a session with at once.
    pub relay_sessions: usize,
    /// Join token, needed only before the node has a certificate.
    pub token: Option<String>,
    /// This node's id.
    pub node_id: NodeId,
    /// The host name reported to the relay.
    pub hostname: String,
    /// The Docker daemon to serve.
    pub docker: DockerEndpoint,
    /// Where the node certificate is kept.
    pub state_dir: PathBuf,
    /// Transport to dial.
    pub transport: TransportChoice,
    /// With `auto`, how often to retry QUIC while on TCP.
    pub quic_probe_interval: Duration,
    /// How often the daemon is re-probed while connected.
    pub daemon_probe_interval: Duration,
    /// Labels for the node list.
    pub labels: BTreeMap<String, String>,
    /// What the relay may ask of the daemon.
    pub policy: Policy,
    /// Where relays may reach the daemon directly, `tcp://HOST:PORT`, as
    /// given; see [`crate::daemon_tls::advertised`] for what is sent.
    pub direct_endpoints: Vec<String>,
    /// The daemon's TLS files, renewed by the agent.
    pub daemon_tls: Option<PathBuf>,
    /// Where the running agent keeps its status for `tunnelgate-agent
    /// status` (none: not written, as for the load tester's agents).
    pub status_file: Option<PathBuf>,
    /// A QUIC endpoint to dial from, for a process that runs many agents
    /// (the load tester): sessions share its one UDP socket. `None` opens a
    /// socket per dial, as a lone agent wants.
    pub quic_endpoint: Option<quinn::Endpoint>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("relays", &self.relays)
            .field("relay_sessions", &self.relay_sessions)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("node_id", &self.node_id)
            .field("docker", &self.docker)
            .field("state_dir", &self.state_dir)
            .field("transport", &self.transport)
            .field("policy", &self.policy.name)
            .finish_non_exhaustive()
    }
}

pub use tunnelgate_session::config::{hostname, ConfigError};

/// The file in the state dir that holds the node's certificate and key.
pub const NODE_CERT_FILE: &str = "node.pem";

/// The node id the certificate in `state_dir` was issued for, if the
/// agent has enrolled there.
pub fn enrolled_node_id(state_dir: &Path) -> Option<NodeId> {
    let pem = std::fs::read_to_string(state_dir.join(NODE_CERT_FILE)).ok()?;
    let certs = tunnelgate_session::tls::certs_from_pem(&pem).ok()?;
    tunnelgate_session::tls::node_id_from_cert(certs.first()?)
}

/// Turns a host name into a valid node id (dots and underscores kept,
/// anything else becomes `-`).
pub fn node_id_from_hostname(host: &str) -> Result<NodeId, tunnelgate_proto::ids::InvalidNodeId> {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(tunnelgate_proto::ids::MAX_NODE_ID_LEN)
        .collect();
    NodeId::new(cleaned.trim_start_matches(['.', '-', '_']).to_owned())
}

impl AgentConfig {
    /// Layers the file under the flags and environment, over the defaults.
    pub fn resolve(args: AgentArgs) -> Result<Self, ConfigError> {
        let file: FileConfig = match &args.config {
            Some(path) => tunnelgate_session::config::read_toml(path)?,
            None => FileConfig::default(),
        };
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        let relays = match (args.relay, file.relay) {
            (flags, _) if !flags.is_empty() => flags,
            (_, Some(OneOrMany::One(r))) => vec![r],
            (_, Some(OneOrMany::Many(rs))) => rs,
            (_, None) => Vec::new(),
        };
        let relays: Vec<String> = relays
            .into_iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        if relays.is_empty() {
            return Err(invalid("relay", "no relay address; pass --relay HOST:PORT (the relay's agent listener, port 7443 by default)".into()));
        }
        if let Some(relay) = relays.iter().find(|r| !r.contains(':')) {
            return Err(invalid(
                "relay",
                format!("{relay:?} has no port; write HOST:PORT, e.g. {relay}:7443"),
            ));
        }
        let relay_sessions = args.relay_sessions.or(file.relay_sessions).unwrap_or(2);
        if !(1..=16).contains(&relay_sessions) {
            return Err(invalid(
                "relay_sessions",
                format!("{relay_sessions} is not between 1 and 16; 2 rides out one relay's loss"),
            ));
        }
        let host = hostname();
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/tunnelgate-agent"));
        // An enrolled agent is the node its certificate names, whatever
        // the host is called now.
        let node_id = match (args.node_id.or(file.node_id), enrolled_node_id(&state_dir)) {
            (Some(id), _) => NodeId::new(id).map_err(|e| invalid("node_id", e.to_string()))?,
            (None, Some(enrolled)) => enrolled,
            (None, None) => node_id_from_hostname(&host).map_err(|e| {
                invalid(
                    "node_id",
                    format!("the host name does not make a node id ({e}); pass --node-id"),
                )
            })?,
        };
        let docker = match args.docker.or(file.docker) {
            Some(d) => d.parse().map_err(|e| invalid("docker", e))?,
            None => DockerEndpoint::from_env(),
        };
        let interval =
            |flag: Option<Duration>, file: Option<String>, key, default| match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(text)) => parse_duration(key, &text),
                (None, None) => Ok(default),
            };
        let quic_probe_interval = interval(
            args.quic_probe_interval,
            file.quic_probe_interval,
            "quic_probe_interval",
            Duration::from_secs(30),
        )?;
        let daemon_probe_interval = interval(
            args.daemon_probe_interval,
            file.daemon_probe_interval,
            "daemon_probe_interval",
            Duration::from_secs(5),
        )?;
        if daemon_probe_interval < Duration::from_millis(100) {
            return Err(invalid(
                "daemon_probe_interval",
                format!("{daemon_probe_interval:?} would flood the daemon; use 100ms or more"),
            ));
        }
        let mut labels = file.labels.unwrap_or_default();
        for l in args.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| invalid("label", format!("{l:?} is not KEY=VALUE")))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let daemon_tls = args.daemon_tls.or(file.daemon_tls);
        let direct_endpoints = match args.direct_endpoints {
            flags if !flags.is_empty() => flags,
            _ => file.direct_endpoints.unwrap_or_default(),
        };
        for e in &direct_endpoints {
            let ok = e
                .strip_prefix("tcp://")
                .and_then(tunnelgate_proto::docker_api::host_port)
                .is_some();
            if !ok {
                return Err(invalid(
                    "direct_endpoint",
                    format!("{e:?} is not tcp://HOST:PORT, e.g. tcp://10.0.0.5:2376"),
                ));
            }
        }
        Ok(Self {
            direct_endpoints,
            daemon_tls,
            relays,
            relay_sessions,
            token: args.token.or(file.token),
            node_id,
            hostname: host,
            docker,
            status_file: Some(state_dir.join(crate::status::FILE)),
            state_dir,
            transport: args
                .transport
                .or(file.transport)
                .unwrap_or(TransportChoice::Auto),
            quic_probe_interval,
            daemon_probe_interval,
            labels,
            policy: match args.policy.or(file.policy) {
                Some(spec) => Policy::load(&spec).map_err(|e| invalid("policy", e))?,
                None => Policy::full(),
            },
            quic_endpoint: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("tg-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, "relay = \"file:1\"\nnode_id = \"from-file\"\ndocker = \"tcp://127.0.0.1:2375\"\n[labels]\nzone = \"a\"\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            node_id: Some("from-flag".into()),
            labels: vec!["rack=7".into()],
            ..Default::default()
        };
        let c = AgentConfig::resolve(args).unwrap();
        assert_eq!(c.relays, ["file:1"]);
        assert_eq!(c.relay_sessions, 2);
        assert_eq!(c.node_id.as_str(), "from-flag");
        assert_eq!(c.docker, DockerEndpoint::Tcp("127.0.0.1:2375".into()));
        assert_eq!(c.labels.len(), 2);
        assert!(!format!("{c:?}").contains("token: Some(\""));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_enrolled_state_dir_names_the_node_unless_a_flag_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web-7");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(
            dir.path().join(NODE_CERT_FILE),
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .unwrap();
        let args = |node_id: Option<&str>| AgentArgs {
            relay: vec!["r:1".into()],
            node_id: node_id.map(str::to_owned),
            state_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args(None)).unwrap();
        assert_eq!(c.node_id.as_str(), "web-7");
        let c = AgentConfig::resolve(args(Some("other"))).unwrap();
        assert_eq!(c.node_id.as_str(), "other");
    }

    #[test]
    fn missing_relay_and_bad_values_name_the_setting() {
        let err = AgentConfig::resolve(AgentArgs::default()).unwrap_err();
        assert!(err.to_string().contains("--relay"), "{err}");
        let err = AgentConfig::resolve(AgentArgs {
            relay: vec!["r:1".into()],
            node_id: Some("a/b".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("node_id"), "{err}");
    }

    #[test]
    fn daemon_probe_interval_defaults_layers_and_refuses_a_flood() {
        let base = || AgentArgs {
            relay: vec!["r:1".into()],
            node_id: Some("n".into()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(base()).unwrap();
        assert_eq!(c.daemon_probe_interval, Duration::from_secs(5));
        let c = AgentConfig::resolve(AgentArgs {
            daemon_probe_interval: Some(Duration::from_secs(90)),
            ..base()
        })
        .unwrap();
        assert_eq!(c.daemon_probe_interval, Duration::from_secs(90));
        let err = AgentConfig::resolve(AgentArgs {
            daemon_probe_interval: Some(Duration::from_millis(10)),
            ..base()
        })
        .unwrap_err();
        assert!(err.to_string().contains("daemon_probe_interval"), "{err}");
    }

    #[test]
    fn several_relays_from_flags_or_the_file_and_a_sane_session_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "relay = [\"a:1\", \"b:1\"]\nrelay_sessions = 3\nnode_id = \"n\"\n",
        )
        .unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.relays.as_slice(), c.relay_sessions),
            (&["a:1".to_owned(), "b:1".to_owned()][..], 3)
        );
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            relay: vec!["c:1".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.relays, ["c:1"], "flags win over the file");
        let err = AgentConfig::resolve(AgentArgs {
            relay: vec!["r:1".into()],
            node_id: Some("n".into()),
            relay_sessions: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("relay_sessions"), "{err}");
        let err = AgentConfig::resolve(AgentArgs {
            relay: vec!["r:1".into(), "noport".into()],
            node_id: Some("n".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("noport"), "{err}");
    }

    #[test]
    fn host_names_become_node_ids() {
        assert_eq!(node_id_from_hostname("web 01").unwrap().as_str(), "web-01");
        assert_eq!(
            node_id_from_hostname("-x.example").unwrap().as_str(),
            "x.example"
        );
    }
}
