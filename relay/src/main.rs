//! `tunnelgate-relay`: serve; manage join tokens, API keys, client
//! certificates and nodes in the state dir (a serving relay picks the
//! changes up); or run the one-command quickstart (a loopback relay plus an
//! agent for the local daemon).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::TenantId;
use tunnelgate_relay::credentials::{api_key_text, Credential, Kind, NewCredential};
use tunnelgate_relay::identity::{rfc3339, Authority, NodeKey};
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
    /// Manage join tokens, which let new agents enrol.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage API keys, which let control-plane clients call the API.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Make control-plane client certificates (mTLS).
    #[command(subcommand, name = "client-cert")]
    ClientCert(ClientCertCommand),
    /// Manage enrolled nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run a relay on loopback and an agent for the local Docker daemon, and
    /// print the DOCKER_HOST to use. Ctrl-C stops both.
    Quickstart(QuickstartArgs),
}

/// Where the relay keeps its CA, credentials and node records.
#[derive(clap::Args)]
struct StateDir {
    /// The relay's state dir.
    #[arg(long, env = "TUNNELGATE_STATE_DIR", default_value = "tunnelgate-data")]
    state_dir: PathBuf,
}

impl StateDir {
    fn open(&self) -> anyhow::Result<Authority> {
        Authority::open(&self.state_dir)
            .with_context(|| format!("cannot open the state dir {}", self.state_dir.display()))
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new join token (alone on the last line of output).
    Create {
        #[command(flatten)]
        dir: StateDir,
        /// The tenant whose nodes enrol with it.
        #[arg(long, default_value = "default")]
        tenant: TenantId,
        /// How long the token may be used to enrol new agents.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many agents may enrol with it [default: unlimited].
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List join tokens (never their secrets).
    List {
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke a join token by id; agents that enrolled with it stay.
    Revoke {
        #[command(flatten)]
        dir: StateDir,
        /// The token's id (the part after the fingerprint).
        id: String,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Print a new API key (alone on the last line of output).
    Create {
        #[command(flatten)]
        dir: StateDir,
        /// The tenant whose nodes the key reaches.
        #[arg(long)]
        tenant: TenantId,
        /// A note on who holds the key.
        #[arg(long)]
        name: Option<String>,
    },
    /// List API keys (never their secrets).
    List {
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke an API key by id; a serving relay refuses it within a second.
    Revoke {
        #[command(flatten)]
        dir: StateDir,
        /// The key's id (the part after `tgkey1.`).
        id: String,
    },
}

#[derive(Subcommand)]
enum ClientCertCommand {
    /// Write ca.pem, cert.pem and key.pem for a control-plane client to DIR,
    /// ready for DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=DIR.
    Create {
        #[command(flatten)]
        dir: StateDir,
        /// The tenant whose nodes the certificate reaches.
        #[arg(long)]
        tenant: TenantId,
        /// The client's name, shown in the audit log.
        #[arg(long, default_value = "client")]
        name: String,
        /// How long the certificate is valid.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Where to write the files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Revoke TENANT/NODE: its certificates are refused from now on and a
    /// serving relay drops its session within a second. It can come back
    /// only by enrolling again with a new join token.
    Revoke {
        #[command(flatten)]
        dir: StateDir,
        /// The node, as TENANT/NODE.
        #[arg(value_parser = NodeKey::parse)]
        node: NodeKey,
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

// jemalloc rather than glibc's malloc: after a burst of streams the relay's
// freed buffers sit in glibc's per-thread arenas and RSS stayed at twice its
// idle level (TLS/TCP, 5,000 agents); jemalloc hands them back within
// seconds, and idle QUIC sessions cost less with it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tunnelgate_session::process::init_tracing();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = Config::resolve(args).context("invalid configuration")?;
            let relay = Relay::bind(config)
                .await
                .context("cannot start the relay")?;
            println!("{}", relay.listening());
            let shutdown = CancellationToken::new();
            tokio::spawn(tunnelgate_session::process::stop_on_signals(
                shutdown.clone(),
            ));
            relay.run(shutdown).await;
        }
        Command::Token(cmd) => token(cmd)?,
        Command::ApiKey(cmd) => api_key(cmd)?,
        Command::ClientCert(ClientCertCommand::Create {
            dir,
            tenant,
            name,
            ttl,
            out,
        }) => {
            let authority = dir.open()?;
            let (cert, key) = authority
                .issue_client_cert(&tenant, &name, ttl)
                .context("cannot issue the certificate")?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let write = |file: &str, text: &str, private: bool| {
                let path = out.join(file);
                tunnelgate_session::files::write_atomic(&path, text.as_bytes(), private)
                    .with_context(|| format!("cannot write {}", path.display()))
            };
            write("ca.pem", authority.ca_pem(), false)?;
            write("cert.pem", &cert, false)?;
            write("key.pem", &key, true)?;
            println!(
                "client certificate {name} for tenant {tenant} written to {} (valid {}); use it with:",
                out.display(),
                humantime::format_duration(ttl)
            );
            println!(
                "  DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={} DOCKER_HOST=tcp://RELAY:7375/nodes/NODE docker ps",
                out.display()
            );
        }
        Command::Node(NodeCommand::Revoke { dir, node }) => {
            let authority = dir.open()?;
            match authority.revoke_node(&node).context("cannot revoke")? {
                Some(_) => println!(
                    "node {node} revoked; a serving relay drops its session within a second"
                ),
                None => anyhow::bail!(
                    "no node {node} ever enrolled in {}",
                    dir.state_dir.display()
                ),
            }
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
        .create_join_token(NewCredential {
            tenant: TenantId::default_tenant(),
            ttl: Some(Duration::from_secs(600)),
            uses: Some(1),
            name: Some("quickstart".into()),
        })
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
            if let Some(entry) = shared
                .sessions
                .get_in(&TenantId::default_tenant(), &node_id)
            {
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

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            dir,
            tenant,
            ttl,
            uses,
        } => {
            let authority = dir.open()?;
            let (text, stored) = authority
                .create_join_token(NewCredential {
                    tenant,
                    ttl: Some(ttl),
                    uses,
                    name: None,
                })
                .context("cannot store the token")?;
            println!(
                "join token {} for tenant {} (expires {}, {}); on the host, run:",
                stored.id,
                stored.tenant,
                rfc3339(stored.expires_at.unwrap_or_default()),
                uses.map_or("unlimited uses".into(), |n| format!("{n} use(s)"))
            );
            println!("  tunnelgate-agent --relay RELAY_HOST:7443 --node-id NODE --state-dir /var/lib/tunnelgate-agent --token <token below>");
            println!("{text}");
        }
        TokenCommand::List { dir } => list(&dir, Kind::JoinToken)?,
        TokenCommand::Revoke { dir, id } => revoke(&dir, Kind::JoinToken, &id)?,
    }
    Ok(())
}

fn api_key(cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create { dir, tenant, name } => {
            let authority = dir.open()?;
            let (stored, secret) = authority
                .credentials()
                .create(
                    Kind::ApiKey,
                    NewCredential {
                        tenant,
                        ttl: None,
                        uses: None,
                        name,
                    },
                )
                .context("cannot store the API key")?;
            println!(
                "API key {} for tenant {}; send it as `Authorization: Bearer <key>`, e.g. in the docker CLI's config.json:",
                stored.id, stored.tenant
            );
            println!("  {{\"HttpHeaders\": {{\"Authorization\": \"Bearer <key below>\"}}}}");
            println!("{}", api_key_text(&stored.id, &secret));
        }
        ApiKeyCommand::List { dir } => list(&dir, Kind::ApiKey)?,
        ApiKeyCommand::Revoke { dir, id } => revoke(&dir, Kind::ApiKey, &id)?,
    }
    Ok(())
}

fn list(dir: &StateDir, kind: Kind) -> anyhow::Result<()> {
    let authority = dir.open()?;
    let now = tunnelgate_relay::identity::unix_now();
    println!(
        "{:<10} {:<16} {:<9} {:<22} {:<22} {:<7} NAME",
        "ID", "TENANT", "STATE", "CREATED", "EXPIRES", "USES"
    );
    for c in authority.credentials().list(kind)? {
        let Credential {
            id,
            tenant,
            name,
            created_at,
            expires_at,
            max_uses,
            uses,
            ..
        } = &c;
        println!(
            "{id:<10} {tenant:<16} {:<9} {:<22} {:<22} {:<7} {}",
            c.state(now),
            rfc3339(*created_at),
            expires_at.map_or("never".into(), rfc3339),
            max_uses.map_or(format!("{uses}"), |m| format!("{uses}/{m}")),
            name.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn revoke(dir: &StateDir, kind: Kind, id: &str) -> anyhow::Result<()> {
    match dir.open()?.credentials().revoke(kind, id)? {
        Some(c) => {
            println!("revoked {id} of tenant {}", c.tenant);
            Ok(())
        }
        None => anyhow::bail!("no such id {id:?}; the list command shows the ids"),
    }
}
