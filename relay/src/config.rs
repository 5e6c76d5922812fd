//! The relay's configuration: defaults, then a TOML file, then
//! `TUNNELGATE_*` environment variables, then flags; validated once into a
//! [`Config`] whose fields are no longer optional.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tunnelgate_session::config::parse_duration;

/// Flags (and their environment variables) of `tunnelgate-relay serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "TUNNELGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the CA, tokens and enrolled nodes are kept [default: ./tunnelgate-data].
    #[arg(long, env = "TUNNELGATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Docker API listener for control-plane clients [default: 127.0.0.1:7375].
    #[arg(long, env = "TUNNELGATE_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Agent listener, QUIC over UDP [default: 0.0.0.0:7443].
    #[arg(long, env = "TUNNELGATE_AGENT_LISTEN", value_name = "ADDR")]
    pub agent_listen: Option<SocketAddr>,
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
    /// How often agents send heartbeats [default: 5s].
    #[arg(long, env = "TUNNELGATE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Option<Duration>,
    /// How long in-flight calls may finish after SIGTERM [default: 10s].
    #[arg(long, env = "TUNNELGATE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Option<Duration>,
}

/// The settings a TOML file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
    agent_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    advertise: Option<Vec<String>>,
    heartbeat_interval: Option<String>,
    shutdown_grace: Option<String>,
}

/// The relay's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the CA, tokens and enrolled nodes are kept.
    pub state_dir: PathBuf,
    /// Docker API listener.
    pub api_listen: SocketAddr,
    /// Agent listener (QUIC).
    pub agent_listen: SocketAddr,
    /// Metrics and health listener.
    pub metrics_listen: SocketAddr,
    /// Extra names for the server certificate.
    pub advertise: Vec<String>,
    /// Agents' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace: Duration,
}

pub use tunnelgate_session::config::ConfigError;

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("tunnelgate-data"),
            api_listen: ([127, 0, 0, 1], 7375).into(),
            agent_listen: ([0, 0, 0, 0], 7443).into(),
            metrics_listen: ([127, 0, 0, 1], 9375).into(),
            advertise: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
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
        let config = Self {
            state_dir: args.state_dir.or(file.state_dir).unwrap_or(d.state_dir),
            api_listen: args.api_listen.or(file.api_listen).unwrap_or(d.api_listen),
            agent_listen: args
                .agent_listen
                .or(file.agent_listen)
                .unwrap_or(d.agent_listen),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(d.metrics_listen),
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
        if !self.api_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "api_listen",
                reason: format!(
                    "{} is not a loopback address, and this relay has no control-plane authentication yet; \
                     bind it to 127.0.0.1 and put an authenticating proxy in front",
                    self.api_listen
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
    }

    #[test]
    fn unauthenticated_api_refuses_non_loopback_addresses() {
        let args = ServeArgs {
            api_listen: Some("0.0.0.0:7375".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err();
        assert!(
            err.to_string().contains("api_listen") && err.to_string().contains("loopback"),
            "{err}"
        );
    }
}
