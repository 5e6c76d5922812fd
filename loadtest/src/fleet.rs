//! Simulated agents: real agent sessions (the agent-side library, real QUIC
//! or TLS/TCP), all in this process, each serving the synthetic Docker
//! responder as its "daemon".

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentArgs, TransportChoice};
use tunnelgate_agent::AgentConfig;

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
        })
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(node_name(i))
    }

    /// Starts agent `i` (it enrols the first time, reuses its certificate after).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let args = AgentArgs {
            relay: Some(self.relay.to_string()),
            token: Some(self.token.clone()),
            node_id: Some(node_name(i)),
            docker: Some(format!("tcp://{}", self.docker)),
            state_dir: Some(self.state_dir(i)),
            transport: Some(self.transport),
            ..Default::default()
        };
        let config = AgentConfig::resolve(args).context("simulated agent config")?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(tunnelgate_agent::run(config, cancel.clone()));
        if let Some(old) = self.agents[i].replace(Sim { cancel, task }) {
            old.cancel.cancel();
        }
        Ok(())
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
