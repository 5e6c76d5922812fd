//! `tunnelgate-agent`: connects this host's Docker daemon to a relay.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentArgs, AgentConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tunnelgate_session::process::init_tracing();
    let args = AgentArgs::parse();
    let config = AgentConfig::resolve(args).context("invalid configuration")?;
    tracing::info!(node_id = %config.node_id, relays = ?config.relays, relay_sessions = config.relay_sessions, docker = %config.docker,
                   version = tunnelgate_agent::VERSION, "tunnelgate-agent starting");
    let cancel = CancellationToken::new();
    tokio::spawn(tunnelgate_session::process::stop_on_signals(cancel.clone()));
    tunnelgate_agent::run(config, cancel)
        .await
        .context("agent stopped")?;
    tracing::info!("agent stopped");
    Ok(())
}
