//! The binary's commands: their arguments, and the admin commands that
//! work on the records (join tokens, API keys, nodes: in the state dir, or
//! in etcd with --registry) and the CA (client certificates); serving
//! relays pick the changes up.

pub mod api;
pub mod connect;
#[cfg(feature = "quickstart")]
pub mod quickstart;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tunnelgate_proto::{NodeId, NodeKey, TenantId};
use tunnelgate_relay::authz::Role;
use tunnelgate_relay::config::RegistryConfig;
use tunnelgate_relay::identity::Authority;
use tunnelgate_relay::scope::Scope;
use tunnelgate_relay::state::credentials::{api_key_text, Credential, Kind, NewCredential};
use tunnelgate_relay::state::records::Records;
use tunnelgate_relay::state::{rfc3339, unix_now, State};
use tunnelgate_relay::ServeArgs;

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
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
    /// How log lines are written: `text` (coloured only on a terminal,
    /// never with NO_COLOR set) or `json` (one object per line, for log
    /// shippers).
    #[arg(
        long,
        global = true,
        env = "TUNNELGATE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: tunnelgate_session::process::LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Manage join tokens, which let new agents enrol.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage API keys, which let control-plane clients call the API.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Make control-plane client certificates (mTLS).
    #[command(subcommand, name = "client-cert")]
    ClientCert(ClientCertCommand),
    /// List, inspect and revoke nodes (`node` or `nodes`).
    #[command(subcommand, visible_alias = "nodes")]
    Node(NodeCommand),
    /// Make the installation CA that a cluster's relays share (--ca-dir).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Exit 0 when the relay's metrics listener answers /healthz with 200
    /// (a container health check; the image has no curl).
    Healthcheck {
        /// The health URL, plain HTTP.
        #[arg(long, default_value = "http://127.0.0.1:9375/healthz")]
        url: String,
    },
    /// Run a relay on loopback and an agent for the local Docker daemon, and
    /// print the DOCKER_HOST to use. Ctrl-C stops both.
    #[cfg(feature = "quickstart")]
    Quickstart(quickstart::QuickstartArgs),
}

/// Where the relay keeps its CA, credentials and node records.
#[derive(clap::Args)]
pub struct StateDir {
    /// The relay's state dir.
    #[arg(long, env = "TUNNELGATE_STATE_DIR", default_value = "tunnelgate-data")]
    state_dir: PathBuf,
    /// Where the CA is, when the relays are started with --ca-dir
    /// [default: the state dir].
    #[arg(long, env = "TUNNELGATE_CA_DIR", value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Where the records are: `memory` (the state dir's files, one relay)
    /// or the cluster's `etcd://HOST:PORT[,HOST:PORT...]`, as the relays
    /// are started with.
    #[arg(long, env = "TUNNELGATE_REGISTRY", default_value = "memory")]
    registry: String,
}

impl StateDir {
    fn context(&self) -> String {
        format!("cannot open the state dir {}", self.state_dir.display())
    }

    /// The CA.
    fn authority(&self) -> anyhow::Result<Authority> {
        Authority::open(&self.state_dir, self.ca_dir.as_deref()).with_context(|| self.context())
    }

    /// Credentials and node records.
    async fn state(&self) -> anyhow::Result<State> {
        let registry = RegistryConfig::parse(&self.registry, Duration::from_secs(5))
            .context("invalid --registry")?;
        let records = match registry {
            RegistryConfig::Memory => Records::Files(self.state_dir.clone()),
            RegistryConfig::Etcd { endpoints, .. } => Records::etcd(&endpoints).await?,
        };
        State::open(&self.state_dir, records)
            .await
            .with_context(|| self.context())
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
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
        /// How many agents may enrol with it [default: unlimited]. An agent
        /// that lost the answer and asks again with the same key within
        /// 10 minutes spends no second use.
        #[arg(long)]
        uses: Option<u32>,
        /// Only this node id may enrol with it.
        #[arg(long, value_name = "NODE")]
        node: Option<NodeId>,
        /// Let it enrol --node though that node is enrolled already (moving
        /// a node to a new host); without it, a token never takes over an
        /// enrolled node.
        #[arg(long, requires = "node")]
        replace: bool,
        /// A label the node it enrols gets, KEY=VALUE (repeatable). A
        /// node enrolled with labels keeps these and ignores its agent's
        /// own --label, so that a key scoped by label sees only the nodes
        /// meant for it.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Print, as the last line, the one command to run on a host to
        /// install the agent from the relay and enrol it with this token.
        #[arg(long)]
        install_command: bool,
        /// The relay's API as hosts reach it, for --install-command
        /// [default: https://HOSTNAME:7375].
        #[arg(long, value_name = "URL", requires = "install_command")]
        url: Option<String>,
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
pub enum ApiKeyCommand {
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
        /// What the key may do: admin (everything, keys and join tokens
        /// included), operator (every Docker call, /fleet writes), viewer
        /// (reads that hand out no files and no shell) or enroller (join
        /// tokens only).
        #[arg(long, default_value = "operator")]
        role: Role,
        /// Which nodes it may see, as a label selector: KEY=VALUE,
        /// KEY!=VALUE, 'KEY in (V1,V2)', 'KEY notin (V1,V2)', KEY, !KEY
        /// (the key `node` is the node id). Repeat it, or join with
        /// commas: every requirement must hold. Outside its scope a node
        /// answers as a missing one [default: the whole tenant].
        #[arg(long, value_name = "SELECTOR", value_parser = parse_scope)]
        scope: Vec<Scope>,
        /// How long the key is valid (e.g. 30d, 12h); without it, until
        /// revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List API keys (never their secrets).
    List {
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke an API key by id; serving relays refuse it within a second.
    Revoke {
        #[command(flatten)]
        dir: StateDir,
        /// The key's id (the part after `tgkey1.`).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ClientCertCommand {
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
        /// What the certificate may do: admin, operator, viewer or
        /// enroller, as for `api-key create --role`.
        #[arg(long, default_value = "operator")]
        role: Role,
        /// Which nodes it may see, as a label selector: KEY=VALUE,
        /// KEY!=VALUE, 'KEY in (V1,V2)', 'KEY notin (V1,V2)', KEY, !KEY
        /// (the key `node` is the node id). Repeat it, or join with
        /// commas: every requirement must hold. Outside its scope a node
        /// answers as a missing one [default: the whole tenant].
        #[arg(long, value_name = "SELECTOR", value_parser = parse_scope)]
        scope: Vec<Scope>,
        /// Where to write the files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// List the client certificates made here (by serial; never keys).
    List {
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke a client certificate by serial; serving relays refuse it
    /// within a second.
    Revoke {
        #[command(flatten)]
        dir: StateDir,
        /// The certificate's serial, as `client-cert list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Write a new installation CA (`ca.pem`, `ca-key.pem`) to a directory,
    /// unless one is there already; give the directory to every relay with
    /// --ca-dir (a Kubernetes secret, a compose volume, a copy).
    Create {
        /// The directory to write to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List every node of your tenant, as a running relay sees them:
    /// status, host, transport, route, relay, RTT, versions.
    Ls {
        #[command(flatten)]
        api: api::ApiArgs,
        /// `table` or `json`.
        #[arg(long, short, value_enum, default_value_t)]
        output: api::Output,
    },
    /// Serve one node's Docker API (or, with --fleet, the fleet's) on a
    /// local socket, for clients that cannot put a path in DOCKER_HOST
    /// (dockerode, testcontainers, ...): every call on it goes to that
    /// node through the relay, streams and `exec`/`attach` included.
    /// Prints the `export DOCKER_HOST=...` to use, keeps a connection to
    /// the relay ready and dials again after the relay restarts.
    Connect(connect::ConnectArgs),
    /// Show one node of your tenant as JSON, as a running relay sees it.
    Inspect {
        #[command(flatten)]
        api: api::ApiArgs,
        /// The node id.
        node: String,
    },
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

/// Writes a control-plane client's certificate files, and lists and
/// revokes them.
pub async fn client_cert(cmd: ClientCertCommand) -> anyhow::Result<()> {
    let (dir, tenant, name, ttl, role, scope, out) = match cmd {
        ClientCertCommand::Create {
            dir,
            tenant,
            name,
            ttl,
            role,
            scope,
            out,
        } => (dir, tenant, name, ttl, role, narrowest(&scope), out),
        ClientCertCommand::List { dir } => return list(&dir, Kind::ClientCert).await,
        ClientCertCommand::Revoke { dir, id } => return revoke(&dir, Kind::ClientCert, &id).await,
    };
    let authority = dir.authority()?;
    let (cert, key) = authority
        .issue_client_cert(&tenant, &name, ttl)
        .context("cannot issue the certificate")?;
    let subject = tunnelgate_session::tls::certs_from_pem(&cert)
        .ok()
        .and_then(|c| c.first().and_then(tunnelgate_session::tls::subject))
        .context("the issued certificate cannot be read back")?;
    dir.state()
        .await?
        .credentials()
        .record_client_cert(
            tenant.clone(),
            subject.serial.clone(),
            name.clone(),
            subject.not_after.max(0) as u64,
            role,
            scope.clone(),
        )
        .await
        .context("cannot record the certificate")?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |file: &str, text: &str, private: bool| {
        let path = out.join(file);
        tunnelgate_session::files::write_atomic(&path, text.as_bytes(), private)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("ca.pem", authority.ca_pem(), false)?;
    write("cert.pem", &cert, false)?;
    write("key.pem", &key, true)?;
    println!(
        "client certificate {name} (serial {}, role {role}, scope {scope}) for tenant {tenant} written to {} (valid {}); use it with:",
        subject.serial,
        out.display(),
        humantime::format_duration(ttl)
    );
    println!(
        "  DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={} DOCKER_HOST=tcp://RELAY:7375/nodes/NODE docker ps",
        out.display()
    );
    Ok(())
}

/// Makes the installation CA.
pub fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    let CaCommand::Create { out } = cmd;
    let made = Authority::create_ca(&out)
        .with_context(|| format!("cannot write the CA to {}", out.display()))?;
    let sha = tunnelgate_relay::front::install::sha256_hex(
        &std::fs::read(out.join("ca.pem")).context("cannot read back ca.pem")?,
    );
    if made {
        println!("installation CA written to {} (ca.pem sha256 {sha}); start each relay with --ca-dir {}; keep ca-key.pem secret", out.display(), out.display());
    } else {
        println!(
            "{} already holds an installation CA (ca.pem sha256 {sha}); left as it is",
            out.display()
        );
    }
    Ok(())
}

/// Manages enrolled nodes.
pub async fn node(cmd: NodeCommand) -> anyhow::Result<()> {
    let (dir, node) = match cmd {
        NodeCommand::Ls { api, output } => return api::ls(&api, output).await,
        NodeCommand::Inspect { api, node } => return api::inspect(&api, &node).await,
        NodeCommand::Connect(args) => return connect::run(args).await,
        NodeCommand::Revoke { dir, node } => (dir, node),
    };
    let revoked = dir.state().await?.revoke_node(&node).await;
    match revoked.context("cannot revoke")? {
        Some(_) => {
            println!("node {node} revoked; a serving relay drops its session within a second");
            Ok(())
        }
        None => anyhow::bail!(
            "no node {node} ever enrolled (records: {})",
            match dir.registry.as_str() {
                "memory" => dir.state_dir.display().to_string(),
                other => other.to_owned(),
            }
        ),
    }
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            dir,
            tenant,
            ttl,
            uses,
            node,
            replace,
            labels,
            install_command,
            url,
        } => {
            let fingerprint = dir.authority()?.ca_fingerprint();
            let new = NewCredential {
                tenant,
                ttl: Some(ttl),
                uses,
                name: None,
                node: node.clone(),
                replace,
                role: None,
                scope: Scope::all(),
                labels: labels.into_iter().collect(),
            };
            let (text, stored) = dir
                .state()
                .await?
                .create_join_token(new, fingerprint)
                .await
                .context("cannot store the token")?;
            println!(
                "join token {} for tenant {} (expires {}, {}); on the host, run:",
                stored.id,
                stored.tenant,
                rfc3339(stored.expires_at.unwrap_or_default()),
                uses.map_or("unlimited uses".into(), |n| format!("{n} use(s)"))
            );
            let node = node.map_or_else(|| "NODE".to_owned(), |n| n.to_string());
            if install_command {
                let ca_sha256 = served_ca_sha256(&dir)?;
                let url = url.unwrap_or_else(|| {
                    format!("https://{}:7375", tunnelgate_session::config::hostname())
                });
                println!("  the command below (it checks the relay's CA by its SHA-256, then installs, enrols and starts the agent; add --node-id {node} to name the node):");
                println!(
                    "{}",
                    tunnelgate_relay::front::install::install_command_line(&url, &ca_sha256, &text)
                );
            } else {
                println!("  tunnelgate-agent --relay RELAY_HOST:7443 --node-id {node} --state-dir /var/lib/tunnelgate-agent --token <token below>");
                println!("{text}");
            }
        }
        TokenCommand::List { dir } => list(&dir, Kind::JoinToken).await?,
        TokenCommand::Revoke { dir, id } => revoke(&dir, Kind::JoinToken, &id).await?,
    }
    Ok(())
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse_all(&[text]).map_err(|e| e.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let labels = tunnelgate_relay::scope::parse_labels(&[text])?;
    Ok(labels.into_iter().next().expect("one label read"))
}

/// One scope of every `--scope`: all must hold.
fn narrowest(scopes: &[Scope]) -> Scope {
    scopes.iter().fold(Scope::all(), |all, s| all.and(s))
}

/// The SHA-256 of the CA file the relay serves at /ca.pem.
fn served_ca_sha256(dir: &StateDir) -> anyhow::Result<String> {
    Ok(tunnelgate_relay::front::install::sha256_hex(
        dir.authority()?.ca_pem().as_bytes(),
    ))
}

pub async fn api_key(cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create {
            dir,
            tenant,
            name,
            role,
            scope,
            ttl,
        } => {
            let (stored, secret) = dir
                .state()
                .await?
                .credentials()
                .create(
                    Kind::ApiKey,
                    NewCredential {
                        tenant,
                        ttl,
                        uses: None,
                        name,
                        node: None,
                        replace: false,
                        role: Some(role),
                        scope: narrowest(&scope),
                        labels: Default::default(),
                    },
                )
                .await
                .context("cannot store the API key")?;
            println!(
                "API key {} for tenant {} (role {role}, scope {}, expires {}); send it as `Authorization: Bearer <key>`, e.g. in the docker CLI's config.json:",
                stored.id, stored.tenant, stored.scope,
                stored.expires_at.map_or("never".into(), rfc3339),
            );
            println!("  {{\"HttpHeaders\": {{\"Authorization\": \"Bearer <key below>\"}}}}");
            println!("{}", api_key_text(&stored.id, &secret));
        }
        ApiKeyCommand::List { dir } => list(&dir, Kind::ApiKey).await?,
        ApiKeyCommand::Revoke { dir, id } => revoke(&dir, Kind::ApiKey, &id).await?,
    }
    Ok(())
}

async fn list(dir: &StateDir, kind: Kind) -> anyhow::Result<()> {
    let state = dir.state().await?;
    let now = unix_now();
    // A join token fixes its node's labels; a key or certificate sees
    // the nodes its scope selects.
    let reach = match kind {
        Kind::JoinToken => "LABELS",
        _ => "SCOPE",
    };
    println!(
        "{:<10} {:<16} {:<9} {:<9} {:<22} {:<22} {:<22} {:<7} {reach:<20} NAME",
        "ID", "TENANT", "STATE", "ROLE", "CREATED", "EXPIRES", "LAST USED", "USES"
    );
    for c in state.credentials().list(kind).await? {
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
        // A join token has no role; a key from before roles acts as one.
        let role = match kind {
            Kind::JoinToken => "-".to_owned(),
            _ => c.role().to_string(),
        };
        let reach = match kind {
            Kind::JoinToken if c.labels.is_empty() => "-".to_owned(),
            Kind::JoinToken => c
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _ => c.scope.to_string(),
        };
        println!(
            "{id:<10} {tenant:<16} {:<9} {role:<9} {:<22} {:<22} {:<22} {:<7} {reach:<20} {}",
            c.state(now),
            rfc3339(*created_at),
            expires_at.map_or("never".into(), rfc3339),
            match kind {
                Kind::JoinToken => "-".to_owned(),
                _ => c.last_used_at.map_or("never".into(), rfc3339),
            },
            max_uses.map_or(format!("{uses}"), |m| format!("{uses}/{m}")),
            name.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

async fn revoke(dir: &StateDir, kind: Kind, id: &str) -> anyhow::Result<()> {
    match dir.state().await?.credentials().revoke(kind, id).await? {
        Some(c) => {
            println!("revoked {id} of tenant {}", c.tenant);
            Ok(())
        }
        None => anyhow::bail!("no such id {id:?}; the list command shows the ids"),
    }
}

/// `GET url` (plain HTTP) within 3 s; fails unless the answer is 200.
pub fn healthcheck(url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("the health URL must be http://HOST:PORT/PATH")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let timeout = Duration::from_secs(3);
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("nothing answers at {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    write!(conn, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{url} answered {status:?}");
    Ok(())
}
