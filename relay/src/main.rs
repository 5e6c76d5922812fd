//! `tunnelgate-relay`: serve, mint join tokens, or run the one-command
//! quickstart (a loopback relay plus an agent for the local daemon).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tunnelgate_relay::identity::{rfc3339, Authority};
use tunnelgate_relay::{Config, Relay, ServeArgs};

#[derive(Parser)]
#[command(
    name = "tunnelgate-relay",
    version,
    about = "Reverse-tunnel relay for the Docker Engine API.",
    long_about = "Reverse-tunnel relay for the Docker Engine API.\n\n\
Agents on firewalled Docker hosts dial out to this relay; control-plane clients use the plain \
Docker API against it, naming the node in the URL:\n\n    \
DOCKER_HOST=tcp://RELAY:7375/nodes/<node-id> docker ps\n\n\
Settings come from defaults, then --config FILE (TOML), then TUNNELGATE_* environment variables, \
then flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a relay on loopback and an agent for the local Docker daemon, and
    /// print the DOCKER_HOST to use. Ctrl-C stops both.
    Quickstart(QuickstartArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new join token (alone on the last line of output).
    Create {
        /// The relay's state dir.
        #[arg(long, env = "TUNNELGATE_STATE_DIR", default_value = "tunnelgate-data")]
        state_dir: PathBuf,
        /// How long the token may be used to enrol new agents.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(clap::Args)]
struct QuickstartArgs {
    /// The relay's state dir; the agent keeps its certificate in `agent/` below it.
    #[arg(long, env = "TUNNELGATE_STATE_DIR", default_value = "tunnelgate-data")]
    state_dir: PathBuf,
    /// Docker API listener.
    #[arg(long, default_value = "127.0.0.1:7375")]
    api_listen: std::net::SocketAddr,
    /// Agent listener (loopback only in quickstart).
    #[arg(long, default_value = "127.0.0.1:7443")]
    agent_listen: std::net::SocketAddr,
    /// Metrics listener.
    #[arg(long, default_value = "127.0.0.1:9375")]
    metrics_listen: std::net::SocketAddr,
    /// The local node's id [default: the host name].
    #[arg(long)]
    node_id: Option<String>,
    /// The local Docker daemon [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long)]
    docker: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tunnelgate_session::process::init_tracing();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = Config::resolve(args).context("invalid configuration")?;
            let relay = Relay::bind(config)
                .await
                .context("cannot start the relay")?;
            // One machine-readable line, so scripts and tests learn the ports
            // when they asked for port 0.
            println!(
                "tunnelgate-relay listening: api={} agent={} metrics={}",
                relay.api_addr(),
                relay.agent_addr(),
                relay.metrics_addr()
            );
            let shutdown = CancellationToken::new();
            tokio::spawn(tunnelgate_session::process::stop_on_signals(
                shutdown.clone(),
            ));
            relay.run(shutdown).await;
        }
        Command::Token(TokenCommand::Create { state_dir, ttl }) => {
            let authority = Authority::open(&state_dir).context("cannot open the state dir")?;
            let (text, stored) = authority
                .create_token(ttl)
                .context("cannot store the token")?;
            println!(
                "join token {} (expires {}); on the host, run:",
                stored.id,
                rfc3339(stored.expires_at)
            );
            println!("  tunnelgate-agent --relay RELAY_HOST:7443 --node-id NODE --state-dir /var/lib/tunnelgate-agent --token <token below>");
            println!("{text}");
        }
        Command::Quickstart(args) => quickstart(args).await?,
    }
    Ok(())
}

/// Wires the relay's and the agent's public APIs together; no logic of its own.
async fn quickstart(args: QuickstartArgs) -> anyhow::Result<()> {
    let serve = ServeArgs {
        state_dir: Some(args.state_dir.clone()),
        api_listen: Some(args.api_listen),
        agent_listen: Some(args.agent_listen),
        metrics_listen: Some(args.metrics_listen),
        ..Default::default()
    };
    let config = Config::resolve(serve).context("invalid configuration")?;
    let relay = Relay::bind(config)
        .await
        .context("cannot start the relay")?;
    let (api, agent_addr) = (relay.api_addr(), relay.agent_addr());
    let shared = relay.shared();
    let (token, _) = shared
        .authority
        .create_token(Duration::from_secs(600))
        .context("cannot create a join token")?;
    let agent_args = tunnelgate_agent::config::AgentArgs {
        relay: Some(agent_addr.to_string()),
        token: Some(token),
        node_id: args.node_id,
        docker: args.docker,
        state_dir: Some(args.state_dir.join("agent")),
        ..Default::default()
    };
    let agent_config = tunnelgate_agent::AgentConfig::resolve(agent_args)
        .context("invalid agent configuration")?;
    let node_id = agent_config.node_id.clone();

    let shutdown = CancellationToken::new();
    tokio::spawn(tunnelgate_session::process::stop_on_signals(
        shutdown.clone(),
    ));
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let agent_cancel = shutdown.clone();
    let agent_task = tokio::spawn(tunnelgate_agent::run(agent_config, agent_cancel));

    // Wait for the agent's session, then tell the user what to type.
    let mut announced = false;
    while !shutdown.is_cancelled() && !agent_task.is_finished() {
        if !announced {
            if let Some(entry) = shared.sessions.get(&node_id) {
                let view = entry.view(shared.authority.relay_id());
                println!(
                    "tunnelgate is up: node {node_id} is connected over {}.",
                    view.transport
                );
                if !view.daemon_reachable {
                    println!("warning: the agent cannot reach the Docker daemon ({}); calls will fail with 502 until it can.",
                             view.daemon_error.unwrap_or_default());
                }
                println!("In another shell, run:\n\n  export DOCKER_HOST=tcp://{api}/nodes/{node_id}\n  docker ps\n\nPress Ctrl-C to stop.");
                announced = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let agent_result = agent_task.await.context("agent task panicked")?;
    relay_task.await.context("relay task panicked")?;
    agent_result.context("the agent stopped")?;
    Ok(())
}
