//! `tunnelgate-agent`: connects this host's Docker daemon to a relay.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentArgs, AgentConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = AgentArgs::parse();
    let config = AgentConfig::resolve(args).context("invalid configuration")?;
    tracing::info!(node_id = %config.node_id, relay = %config.relay, docker = %config.docker,
                   version = tunnelgate_agent::VERSION, "tunnelgate-agent starting");
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signals(cancel.clone()));
    tunnelgate_agent::run(config, cancel)
        .await
        .context("agent stopped")?;
    tracing::info!("agent stopped");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// First SIGTERM or Ctrl-C: stop gracefully. Second: exit at once.
async fn stop_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("stopping; send the signal again to exit at once");
    cancel.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}
