//! Simulated agents: real agent sessions (the agent-side library, real QUIC
//! or TLS/TCP), all in this process, each serving the synthetic Docker
//! responder as its "daemon".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentArgs, TransportChoice};
use tunnelgate_agent::AgentConfig;

/// Simulated agents that share one QUIC endpoint (one UDP socket and its
/// receive buffers). One socket per agent would cost thousands of
/// descriptors and megabytes per agent in this process, capping the fleet
/// long before the relay is.
const AGENTS_PER_ENDPOINT: usize = 256;

/// How often a simulated agent re-probes its synthetic daemon. A real
/// agent's 5 s would have a 50,000-agent fleet spend this process's CPU on
/// 10,000 probes a second, none of which reaches the relay.
const DAEMON_PROBE_INTERVAL: Duration = Duration::from_secs(120);

/// The node id of simulated agent `i`.
pub fn node_name(i: usize) -> String {
    format!("lt-{i:05}")
}

struct Sim {
    cancel: CancellationToken,
    task: JoinHandle<Result<(), tunnelgate_agent::AgentError>>,
}

/// A set of simulated agents that can be started and stopped one by one.
pub struct Fleet {
    relay: SocketAddr,
    docker: SocketAddr,
    token: String,
    transport: TransportChoice,
    dir: tempfile::TempDir,
    agents: Vec<Option<Sim>>,
    endpoints: Vec<quinn::Endpoint>,
    relay_sessions: Option<usize>,
    daemon_per_node: Option<u16>,
}

impl Fleet {
    /// A fleet of `n` agent slots for the relay at `relay`.
    pub fn new(
        n: usize,
        relay: SocketAddr,
        docker: SocketAddr,
        token: String,
        transport: TransportChoice,
    ) -> Result<Self> {
        Ok(Self {
            relay,
            docker,
            token,
            transport,
            dir: tempfile::tempdir()?,
            agents: (0..n).map(|_| None).collect(),
            endpoints: Vec::new(),
            relay_sessions: None,
            daemon_per_node: None,
        })
    }

    /// Has each agent keep sessions to `k` relays of a cluster (the
    /// agent's default otherwise).
    pub fn with_relay_sessions(mut self, k: usize) -> Self {
        self.relay_sessions = Some(k);
        self
    }

    /// Has agent `i` dial its daemon at its own loopback address on `port`
    /// ([`crate::synthetic_fleet::node_addr`]) instead of the shared one,
    /// so one responder can answer as a different node to each.
    pub fn with_daemon_per_node(mut self, port: u16) -> Self {
        self.daemon_per_node = Some(port);
        self
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(node_name(i))
    }

    /// Starts agent `i` (it enrols the first time, reuses its certificate after).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let docker = self.daemon_per_node.map_or(self.docker, |port| {
            crate::synthetic_fleet::node_addr(i, port)
        });
        let args = AgentArgs {
            relay: vec![self.relay.to_string()],
            token: Some(self.token.clone()),
            node_id: Some(node_name(i)),
            docker: Some(format!("tcp://{docker}")),
            state_dir: Some(self.state_dir(i)),
            transport: Some(self.transport),
            relay_sessions: self.relay_sessions,
            ..Default::default()
        };
        let mut config = AgentConfig::resolve(args).context("simulated agent config")?;
        config.daemon_probe_interval = DAEMON_PROBE_INTERVAL;
        // Thousands of simulated agents: no status files.
        config.status_file = None;
        if self.transport != TransportChoice::Tcp {
            config.quic_endpoint = Some(self.endpoint(i)?);
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(tunnelgate_agent::run(config, cancel.clone()));
        if let Some(old) = self.agents[i].replace(Sim { cancel, task }) {
            old.cancel.cancel();
        }
        Ok(())
    }

    /// The QUIC endpoint agent `i` dials from.
    fn endpoint(&mut self, i: usize) -> Result<quinn::Endpoint> {
        let k = i / AGENTS_PER_ENDPOINT;
        while self.endpoints.len() <= k {
            let e = tunnelgate_session::quic::client_endpoint(self.relay)
                .context("opening a UDP socket for simulated agents")?;
            self.endpoints.push(e);
        }
        Ok(self.endpoints[k].clone())
    }

    /// Stops agent `i`, closing its session.
    pub async fn stop(&mut self, i: usize) {
        if let Some(sim) = self.agents[i].take() {
            sim.cancel.cancel();
            let _ = sim.task.await;
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether the fleet has no slots.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Stops every agent.
    pub async fn stop_all(&mut self) {
        for i in 0..self.agents.len() {
            self.stop(i).await;
        }
    }
}

impl Drop for Fleet {
    /// A scenario that gives up early drops its fleet with agents still
    /// running: stop them before their state dirs go, or they would find
    /// their certificates gone and enrol again, counted as new nodes.
    fn drop(&mut self) {
        for sim in self.agents.iter_mut().filter_map(Option::take) {
            sim.cancel.cancel();
            sim.task.abort();
        }
    }
}
