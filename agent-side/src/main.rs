//! `tunnelgate-agent`: connects this host's Docker daemon to a relay.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentConfig, Cli, Command, DockerTlsArgs};
use tunnelgate_agent::daemon_tls;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tunnelgate_session::process::init_tracing();
    let cli = Cli::parse();
    if let Some(Command::DockerTls(args)) = cli.command {
        return docker_tls(args).await;
    }
    let config = AgentConfig::resolve(cli.run).context("invalid configuration")?;
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

async fn docker_tls(args: DockerTlsArgs) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(args.agent).context("invalid configuration")?;
    let request = daemon_tls::Request {
        dns_names: args.names,
        ip_addresses: args.ips.iter().map(ToString::to_string).collect(),
        port: args.port,
    };
    daemon_tls::obtain(&config, &args.out, &request)
        .await
        .context("docker-tls")?;
    println!("{}", daemon_tls::instructions(&args.out, &request));
    Ok(())
}
