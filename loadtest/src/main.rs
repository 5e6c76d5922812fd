//! `tunnelgate-loadtest`: run one scenario, print a summary, write a JSON report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tunnelgate_agent::config::TransportChoice;
use tunnelgate_loadtest::relay_proc::default_relay_bin;
use tunnelgate_loadtest::scenarios::{self, Setup};
use tunnelgate_loadtest::{cluster, fleet_endpoint, forward, synthetic_fleet};

#[derive(Parser)]
#[command(
    name = "tunnelgate-loadtest",
    version,
    about = "Load-tests a real tunnelgate relay process with simulated agents and clients (loopback only).",
    long_about = "Load-tests a real tunnelgate relay process with simulated agents and clients, on loopback only.\n\n\
Each run starts a fresh `tunnelgate-relay serve` (from --relay-bin), simulated agents that are real \
agent sessions in this process serving a synthetic Docker responder, and the scenario's clients. \
A progress line updates every second; a summary and (with --json) a JSON report come at the end. \
Every scenario is bounded in count and time.\n\n\
RUST_LOG (e.g. `tunnelgate_agent=info`) prints the simulated agents' own logs to stderr; \
the relays log warnings there, or what RELAY_LOG asks (a RUST_LOG filter, e.g. `info`).\n\n\
Many agents need a raised file-descriptor limit: `ulimit -n 65536`."
)]
struct Cli {
    /// The relay binary [default: tunnelgate-relay next to this binary].
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// Transport of the simulated agents.
    #[arg(long, global = true, value_enum, default_value = "quic")]
    transport: TransportChoice,
    /// Also write the report as JSON to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Port for the synthetic Docker responder [default: any free port].
    /// Fix it when another tunnel is set up to forward to it (--peer).
    #[arg(long, global = true, default_value_t = 0)]
    responder_port: u16,
    /// Longest wait for agents to connect.
    #[arg(long, global = true, default_value = "120s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// One more argument for `tunnelgate-relay serve`, e.g.
    /// `--relay-arg=--heartbeat-interval=15s`. Repeatable.
    #[arg(
        long = "relay-arg",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    relay_args: Vec<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// A plain TCP forwarder process (started by `peer-hop`, not a scenario).
    #[command(hide = true)]
    TcpForward {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// The synthetic fleet responder process (started by `fleet`, not a scenario).
    #[command(hide = true)]
    SyntheticFleet {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        containers: usize,
    },
    /// The `/fleet` endpoint over N simulated nodes with C containers
    /// each: how long its view takes to fill and what it costs the relay
    /// per node and per container; `docker ps --filter label=…` answered
    /// from the view (latency, relay CPU, node calls meanwhile: none); and
    /// creates placed through `/fleet` against the same creates sent to
    /// `/nodes/<id>`, in relay CPU per create, rounds interleaved.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10)]
        containers: usize,
        /// Cached `ps` calls.
        #[arg(long, default_value_t = 200)]
        reads: usize,
        /// Creates of each kind per round (four rounds).
        #[arg(long, default_value_t = 50)]
        creates: usize,
        /// Containers made on nodes directly, each timed until `/fleet` lists it.
        #[arg(long, default_value_t = 100)]
        tries: usize,
    },
    /// N agents connect at once: time until all are connected, handshakes/s, failures.
    ConnectStorm {
        #[arg(long, default_value_t = 500)]
        agents: usize,
    },
    /// N agents sit idle for a while: relay memory per agent and idle CPU;
    /// then a burst of 256 concurrent streams, and the relay's memory after.
    IdleHold {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// N agents connected, then the relay restarts (SIGTERM, same ports and
    /// state): time until all are back, with calls to random nodes running
    /// throughout (answered, 503 not-back-yet, failed).
    RestartStorm {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Kill the relay (SIGKILL) instead of stopping it (SIGTERM): no
        /// drain, every agent finds out by itself.
        #[arg(long)]
        crash: bool,
    },
    /// Small calls spread over many nodes: throughput and latency percentiles.
    RequestRate {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// One client's small calls in turn, direct and relayed, interleaved:
    /// added latency percentiles on a kept-alive connection and on a new
    /// connection per call.
    Latency {
        #[arg(long, default_value_t = 5_000)]
        calls: u32,
        /// Also call through another tunnel to the synthetic responder, as
        /// for `bulk` (NAME=ADDR[,PID]). Repeatable.
        #[arg(long = "peer", value_name = "NAME=ADDR[,PID]")]
        peers: Vec<scenarios::Peer>,
    },
    /// Large bodies each way through one agent: Gbit/s and relay CPU-s per GB.
    Bulk {
        /// Bytes per transfer.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Also download through another tunnel to the synthetic responder,
        /// in the same run: NAME=ADDR[,PID], where ADDR is the tunnel's
        /// plain-HTTP entry and PID its server process (for CPU per GB).
        /// Repeatable. See benches/peers/ for rathole.
        #[arg(long = "peer", value_name = "NAME=ADDR[,PID]")]
        peers: Vec<scenarios::Peer>,
    },
    /// Two relays in a cluster (with a real etcd; Debian `etcd-server`): the
    /// same downloads and small calls through the relay holding the agent
    /// and through the other, interleaved; small calls also through a plain
    /// TCP forwarder process in front of the holder, the floor for any
    /// extra process on the path.
    PeerHop {
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 3_000)]
        calls: u32,
    },
    /// A cluster (real etcd, N relays) and a fleet holding two sessions per
    /// agent: spread over the relays, etcd writes per connect; then one
    /// relay killed while clients call, and the time until every agent
    /// holds two sessions again.
    Cluster {
        #[arg(long, default_value_t = 3)]
        relays: usize,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// Some agents drop and reconnect over and over while calls run against the others.
    Churn {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 20)]
        churners: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

// jemalloc, as in the relay: with thousands of simulated agents
// reconnecting at once, glibc's malloc took 14 % of the machine's CPU in a
// restart storm, and the load tester, not the relay, set the pace.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The forwarder runs on a runtime of its own, one thread.
    if let Scenario::TcpForward { listen, to } = cli.scenario {
        return forward::serve(listen, to);
    }
    if let Scenario::SyntheticFleet { port, containers } = cli.scenario {
        return synthetic_fleet::serve(port, containers);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Off unless asked: thousands of agents log a line per session.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let setup = Setup {
        relay_bin: cli.relay_bin.unwrap_or_else(default_relay_bin),
        transport: cli.transport,
        responder_port: cli.responder_port,
        responder: None,
        relay_args: cli.relay_args,
    };
    let t = cli.connect_timeout;
    let (name, results) = match cli.scenario {
        Scenario::ConnectStorm { agents } => (
            "connect-storm",
            scenarios::connect_storm(&setup, agents, t).await,
        ),
        Scenario::IdleHold { agents, hold } => (
            "idle-hold",
            scenarios::idle_hold(&setup, agents, hold, t).await,
        ),
        Scenario::RestartStorm {
            agents,
            clients,
            crash,
        } => (
            "restart-storm",
            scenarios::restart_storm(&setup, agents, clients, crash, t).await,
        ),
        Scenario::RequestRate {
            agents,
            clients,
            requests,
            duration,
        } => (
            "request-rate",
            scenarios::request_rate(&setup, agents, clients, requests, duration, t).await,
        ),
        Scenario::Latency { calls, peers } => (
            "latency",
            scenarios::latency(&setup, calls, &peers, t).await,
        ),
        Scenario::Bulk {
            bytes,
            rounds,
            peers,
        } => (
            "bulk",
            scenarios::bulk(&setup, bytes, rounds, &peers, t).await,
        ),
        Scenario::PeerHop {
            bytes,
            rounds,
            calls,
        } => (
            "peer-hop",
            cluster::peer_hop(&setup, bytes, rounds, calls, t).await,
        ),
        Scenario::Cluster {
            relays,
            agents,
            clients,
        } => (
            "cluster",
            cluster::cluster(&setup, relays, agents, clients, t).await,
        ),
        Scenario::Churn {
            agents,
            churners,
            clients,
            duration,
        } => (
            "churn",
            scenarios::churn(&setup, agents, churners, clients, duration, t).await,
        ),
        Scenario::Fleet {
            nodes,
            containers,
            reads,
            creates,
            tries,
        } => (
            "fleet",
            fleet_endpoint::fleet(&setup, nodes, containers, reads, creates, tries, t).await,
        ),
        Scenario::TcpForward { .. } | Scenario::SyntheticFleet { .. } => {
            unreachable!("handled before the runtime starts")
        }
    };
    let results = results.with_context(|| format!("scenario {name} failed"))?;
    let report = serde_json::json!({
        "scenario": name,
        "transport": format!("{:?}", setup.transport).to_lowercase(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "results": results,
    });
    print_summary(&report);
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One line per result, nested keys joined with dots.
fn print_summary(report: &serde_json::Value) {
    fn walk(prefix: &str, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v);
                }
            }
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() != 0.0 => println!("{prefix:<44} {f:.3}"),
                _ => println!("{prefix:<44} {n}"),
            },
            other => println!("{prefix:<44} {other}"),
        }
    }
    walk("", report);
}
