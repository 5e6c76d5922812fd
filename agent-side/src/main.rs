//! `tunnelgate-agent`: connects this host's Docker daemon to a relay.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::{AgentConfig, Cli, Command, DockerTlsArgs, LeaveArgs, StatusArgs};
use tunnelgate_agent::{daemon_tls, errand, status};
use tunnelgate_proto::message::{ControlMessage, Leave};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log = tunnelgate_session::process::init_tracing(cli.log_format);
    match cli.command {
        Some(Command::DockerTls(args)) => return docker_tls(args).await,
        Some(Command::Status(args)) => return show_status(args),
        Some(Command::Leave(args)) => return leave(args).await,
        None => {}
    }
    let config = AgentConfig::resolve(cli.run).context("invalid configuration")?;
    tracing::info!(node_id = %config.node_id, relays = ?config.relays, relay_sessions = config.relay_sessions, docker = %config.docker,
                   version = tunnelgate_agent::VERSION, "tunnelgate-agent starting");
    let cancel = CancellationToken::new();
    tunnelgate_session::process::stop_on_signals(cancel.clone());
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

fn show_status(args: StatusArgs) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let connected = match status::read(&args.state_dir) {
        Ok(s) => {
            let (text, connected) = status::report(&s, now, status::alive(&s));
            match args.json {
                true => println!("{}", serde_json::to_string_pretty(&s)?),
                false => print!("{text}"),
            }
            connected
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    };
    std::process::exit(if connected { 0 } else { 1 })
}

async fn leave(args: LeaveArgs) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(args.agent).context("invalid configuration")?;
    let ask = ControlMessage::Leave(Leave {
        reason: format!("removed from host {}", config.hostname),
    });
    match errand::ask_any(&config, &ask).await.context("leave")? {
        ControlMessage::Left(left) => {
            println!("node {} is revoked at the relay", left.node_id);
            Ok(())
        }
        ControlMessage::Refused(r) => anyhow::bail!("the relay refused: {}", r.message),
        _ => anyhow::bail!("unexpected answer from the relay"),
    }
}
