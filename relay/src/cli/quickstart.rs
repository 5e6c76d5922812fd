//! `tunnelgate-relay quickstart`: a loopback relay plus an agent for the
//! local Docker daemon, in one process. It wires the relay's and the
//! agent's public APIs together and has no logic of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::{NodeKey, TenantId};
use tunnelgate_relay::state::credentials::NewCredential;
use tunnelgate_relay::{Config, Relay, ServeArgs};

#[derive(clap::Args)]
pub struct QuickstartArgs {
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

/// Wires the relay's and the agent's public APIs together; no logic of its own.
pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
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
    let relay_handle = relay.handle();
    let token = relay_handle
        .create_join_token(NewCredential {
            tenant: TenantId::default_tenant(),
            ttl: Some(Duration::from_secs(600)),
            uses: Some(1),
            name: Some("quickstart".into()),
            node: None,
            // The quickstart owns both the relay's and the agent's state:
            // a fresh agent state beside an old relay state is its own node.
            replace: true,
            role: None,
            scope: tunnelgate_relay::scope::Scope::all(),
            labels: Default::default(),
        })
        .await
        .context("cannot create a join token")?;
    let agent_args = tunnelgate_agent::config::AgentArgs {
        relay: vec![agent_addr.to_string()],
        token: Some(token),
        node_id: args.node_id,
        docker: args.docker,
        state_dir: Some(args.state_dir.join("agent")),
        ..Default::default()
    };
    let agent_config = tunnelgate_agent::AgentConfig::resolve(agent_args)
        .context("invalid agent configuration")?;
    let node_id = agent_config.node_id.clone();
    let key = NodeKey {
        tenant: TenantId::default_tenant(),
        node_id: node_id.clone(),
    };

    let shutdown = CancellationToken::new();
    tunnelgate_session::process::stop_on_signals(shutdown.clone());
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let agent_cancel = shutdown.clone();
    let agent_task = tokio::spawn(tunnelgate_agent::run(agent_config, agent_cancel));

    // Wait for the agent's session, then tell the user what to type.
    let mut announced = false;
    while !shutdown.is_cancelled() && !agent_task.is_finished() {
        if !announced {
            if let Some(view) = relay_handle.node(&key) {
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
