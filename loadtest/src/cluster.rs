//! The cluster scenarios: a real etcd and several real relay processes
//! sharing one CA, with simulated agents and clients.
//!
//! `peer-hop` measures what the relay-to-relay hop costs: one agent on one
//! relay, the same downloads and small calls through that relay and
//! through another, interleaved, with each path's CPU and context
//! switches per call, and a plain TCP forwarder's hop beside them as the
//! floor for any extra process on the path. `cluster` runs a fleet whose
//! agents each hold sessions to two relays, kills one relay while clients
//! call, and times the fleet's return to two sessions each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Percentiles};
use crate::etcd_proc::EtcdProc;
use crate::fleet::{node_name, Fleet};
use crate::forward::ForwardProc;
use crate::progress::{spawn_progress, Counters};
use crate::relay_proc::{RelayProc, Sched, Usage};
use crate::scenarios::{download, usage_json, Setup, FAILURE_SAMPLES, FILL_WINDOW};
use crate::synthetic_docker;

/// Starts `n` relays in one cluster on `etcd`, sharing the first's CA.
fn start_relays(setup: &Setup, etcd: &EtcdProc, n: usize) -> Result<Vec<RelayProc>> {
    let mut relays: Vec<RelayProc> = Vec::new();
    for i in 0..n {
        let mut args = vec![
            "--registry".to_owned(),
            etcd.registry(),
            "--relay-id".to_owned(),
            format!("relay-{}", (b'a' + i as u8) as char),
            "--peer-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        args.extend(setup.relay_args.iter().cloned());
        let relay = RelayProc::start_in_cluster(&setup.relay_bin, &args, relays.first())?;
        relays.push(relay);
    }
    Ok(relays)
}

/// Agent sessions each relay holds now.
async fn sessions(relays: &[RelayProc]) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for r in relays {
        out.push(r.agents_connected().await?);
    }
    Ok(out)
}

/// `peer-hop`: the same downloads and small calls through the relay that
/// holds the agent's session and through another relay that forwards them
/// to it, interleaved round by round, with each path's CPU per GB; the
/// small calls also go through a plain TCP forwarder in front of the
/// holder, and each path's calls are costed per call.
pub async fn peer_hop(
    setup: &Setup,
    bytes: u64,
    rounds: u32,
    calls: u32,
    timeout: Duration,
) -> Result<Value> {
    let etcd = EtcdProc::start().await?;
    let relays = start_relays(setup, &etcd, 2)?;
    let docker = synthetic_docker::spawn(setup.responder_port).await?;
    let mut fleet = Fleet::new(
        1,
        relays[0].agents,
        docker,
        relays[0].token()?,
        setup.transport,
    )?
    .with_relay_sessions(1);
    fleet.start(0)?;
    // One session, on whichever relay the node id hashes to.
    let started = Instant::now();
    let holder = loop {
        let held = sessions(&relays).await?;
        if held.iter().sum::<u64>() == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if sessions(&relays).await? == held {
                break held.iter().position(|n| *n == 1).context("a holder")?;
            }
        }
        if started.elapsed() > timeout {
            bail!("the agent did not settle on one relay within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (local, peer) = (&relays[holder], &relays[1 - holder]);
    let node = node_name(0);
    let prefix = format!("/nodes/{node}/");
    let gb = (bytes * rounds as u64) as f64 / 1e9;
    let gbit = |d: Duration| (bytes * rounds as u64) as f64 * 8.0 / d.as_secs_f64() / 1e9;
    // Warm both paths (the peer connection is dialled on first use).
    download(local.api, &prefix, 1 << 20, 1, "local").await?;
    download(peer.api, &prefix, 1 << 20, 1, "peer").await?;

    let (mut local_time, mut peer_time) = (Duration::ZERO, Duration::ZERO);
    let (mut local_cpu, mut peer_cpu) = (0.0, 0.0);
    // Both relays' CPU, per thread and exact: one small transfer can take
    // less than the 10 ms tick `/proc/PID/stat` counts in.
    let cpu = || -> Result<(Sched, Sched)> { Ok((local.sched()?, peer.sched()?)) };
    let spent = |before: &(Sched, Sched), after: &(Sched, Sched)| {
        (after.0.since(&before.0).0 + after.1.since(&before.1).0) as f64 / 1e9
    };
    for _ in 0..rounds {
        let before = cpu()?;
        local_time += download(local.api, &prefix, bytes, 1, "local").await?;
        let mid = cpu()?;
        peer_time += download(peer.api, &prefix, bytes, 1, "peer hop").await?;
        local_cpu += spent(&before, &mid);
        peer_cpu += spent(&mid, &cpu()?);
    }

    let ping = format!("/nodes/{node}/_ping");
    let forwarder = ForwardProc::start(local.api)?;
    let mut direct_c = Client::new(docker);
    // Small calls through the holder, through the other relay, and
    // through a plain TCP forwarder in front of the holder.
    let mut clients = [
        Client::new(local.api),
        Client::new(peer.api),
        Client::new(forwarder.addr),
    ];
    for _ in 0..calls.min(200) {
        direct_c.get("/_ping").await?;
        for c in &mut clients {
            c.get(&ping).await?;
        }
    }
    // Blocks of calls, one path after another, each call after a direct
    // one: the processes' CPU and context switches over a block belong to
    // its path alone, and the machine's state still alternates quickly.
    let mut direct_s = Vec::new();
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut costs = [PathCost::default(); 3];
    let mut path = 0;
    while samples.iter().any(|s| s.len() < calls as usize) {
        let block = CALL_BLOCK.min(calls - samples[path].len() as u32);
        let before = Reading::now(local, peer, &forwarder)?;
        for _ in 0..block {
            direct_s.push(direct_c.get("/_ping").await?.1);
            samples[path].push(clients[path].get(&ping).await?.1);
        }
        costs[path].add(&Reading::now(local, peer, &forwarder)?, &before);
        path = (path + 1) % samples.len();
    }
    drop(forwarder);
    fleet.stop_all().await;
    let direct = Percentiles::of(&mut direct_s).context("no samples")?;
    let [local_p, peer_p, forwarded_p] = samples.map(|mut s| Percentiles::of(&mut s));
    let (local_p, peer_p, forwarded_p) = (
        local_p.context("no samples")?,
        peer_p.context("no samples")?,
        forwarded_p.context("no samples")?,
    );
    let added = |p: &Percentiles| (p.p50_us - direct.p50_us, p.p99_us - direct.p99_us);
    let (local_added, peer_added) = (added(&local_p), added(&peer_p));
    let forwarded_added = added(&forwarded_p);
    Ok(json!({
        "bytes_per_transfer": bytes,
        "rounds": rounds,
        "local_download_gbit_s": gbit(local_time),
        "peer_download_gbit_s": gbit(peer_time),
        "peer_over_local_throughput": local_time.as_secs_f64() / peer_time.as_secs_f64(),
        "relays_cpu_s_per_gb_local": local_cpu / gb,
        "relays_cpu_s_per_gb_peer": peer_cpu / gb,
        "calls": calls,
        "direct": direct,
        "local": local_p,
        "peer": peer_p,
        "local_added_p50_us": local_added.0,
        "peer_added_p50_us": peer_added.0,
        "local_added_p99_us": local_added.1,
        "peer_added_p99_us": peer_added.1,
        "peer_over_local_added_p50": peer_added.0 / local_added.0,
        "forwarded": forwarded_p,
        "forwarded_added_p50_us": forwarded_added.0,
        "forwarded_over_local_added_p50": forwarded_added.0 / local_added.0,
        "per_local_call": costs[0].per_call(calls),
        "per_peer_call": costs[1].per_call(calls),
        "per_forwarded_call": costs[2].per_call(calls),
    }))
}

/// Small calls per block of `peer-hop`'s alternating paths.
const CALL_BLOCK: u32 = 200;

/// One reading of what small calls cost: the relay holding the session,
/// the other relay and the TCP forwarder (exact CPU and context
/// switches), and UDP datagrams received on the machine (every QUIC
/// packet of every hop, the simulated agent's included). The datagram
/// count is machine-wide, so it reads true only while nothing else on the
/// machine sends UDP: another test or load run beside it adds its packets.
struct Reading {
    holder: Sched,
    other: Sched,
    forwarder: Sched,
    datagrams: u64,
}

impl Reading {
    fn now(holder: &RelayProc, other: &RelayProc, forwarder: &ForwardProc) -> Result<Self> {
        Ok(Self {
            holder: holder.sched()?,
            other: other.sched()?,
            forwarder: forwarder.sched()?,
            datagrams: udp_datagrams_received()?,
        })
    }
}

/// A path's small calls, costed: CPU nanoseconds and context switches
/// of each process, and datagrams, summed over the path's blocks.
#[derive(Debug, Clone, Copy, Default)]
struct PathCost {
    holder: (u64, u64),
    other: (u64, u64),
    forwarder: (u64, u64),
    datagrams: u64,
}

impl PathCost {
    fn add(&mut self, after: &Reading, before: &Reading) {
        let add = |sum: &mut (u64, u64), a: &Sched, b: &Sched| {
            let (cpu, switches) = a.since(b);
            sum.0 += cpu;
            sum.1 += switches;
        };
        add(&mut self.holder, &after.holder, &before.holder);
        add(&mut self.other, &after.other, &before.other);
        add(&mut self.forwarder, &after.forwarder, &before.forwarder);
        self.datagrams += after.datagrams.saturating_sub(before.datagrams);
    }

    fn per_call(&self, calls: u32) -> Value {
        let per = |n: u64| n as f64 / calls.max(1) as f64;
        json!({
            "holder_cpu_us": per(self.holder.0) / 1e3,
            "holder_context_switches": per(self.holder.1),
            "other_relay_cpu_us": per(self.other.0) / 1e3,
            "other_relay_context_switches": per(self.other.1),
            "forwarder_cpu_us": per(self.forwarder.0) / 1e3,
            "forwarder_context_switches": per(self.forwarder.1),
            "udp_datagrams": per(self.datagrams),
        })
    }
}

/// UDP datagrams the machine has received, from `/proc/net/snmp`.
fn udp_datagrams_received() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (names, values) = names
        .zip(values)
        .context("no Udp lines in /proc/net/snmp")?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InDatagrams")
        .context("no InDatagrams in /proc/net/snmp")?
        .1
        .parse()
        .context("odd InDatagrams")
}

/// `cluster`: `relays` relays, `agents` agents with two sessions each;
/// the fleet's spread over the relays and what connecting cost etcd; then
/// one relay killed while `clients` call random nodes through the live
/// relays, and the time until every agent holds two sessions again.
pub async fn cluster(
    setup: &Setup,
    relay_count: usize,
    agents: usize,
    clients: usize,
    timeout: Duration,
) -> Result<Value> {
    anyhow::ensure!(
        relay_count >= 3,
        "a cluster scenario needs 3 relays or more"
    );
    let etcd = EtcdProc::start().await?;
    let mut relays = start_relays(setup, &etcd, relay_count)?;
    let docker = synthetic_docker::spawn(setup.responder_port).await?;
    let mut fleet = Fleet::new(
        agents,
        relays[0].agents,
        docker,
        relays[0].token()?,
        setup.transport,
    )?;
    let counters = Arc::new(Counters::default());
    let stop_progress = CancellationToken::new();
    let progress = spawn_progress("cluster", counters.clone(), stop_progress.clone());
    let want = 2 * agents as u64;

    // Fill: a window of agents still connecting, as the other scenarios.
    let (etcd_writes_0, etcd_events_0) = etcd.counters().await?;
    let started = Instant::now();
    let mut next = 0;
    loop {
        let held: u64 = sessions(&relays).await?.iter().sum();
        counters.connected.store(held / 2, Ordering::Relaxed);
        if next == agents && held >= want {
            break;
        }
        let room = (held as usize / 2 + FILL_WINDOW).saturating_sub(next);
        for i in next..(next + room).min(agents) {
            fleet.start(i)?;
        }
        next = (next + room).min(agents);
        if started.elapsed() > timeout {
            bail!("only {held} of {want} sessions within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_time = started.elapsed();
    // Moves after the fill settle (agents that first met relay a move to
    // their own pair): wait until the registry shows two holders each.
    let settled = wait_two_each(&etcd, agents, timeout).await?;
    let (etcd_writes_1, etcd_events_1) = etcd.counters().await?;
    // A move is make-before-break: the registry can show the new holder
    // while the old relay still counts the session it is closing. Sample
    // the spread once the relays' own counts agree.
    let mut spread = sessions(&relays).await?;
    while spread.iter().sum::<u64>() != want && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spread = sessions(&relays).await?;
    }
    let (min, max) = (
        *spread.iter().min().unwrap_or(&0),
        *spread.iter().max().unwrap_or(&0),
    );

    // Clients call random nodes through the live relays, as a load
    // balancer that drops a dead relay would.
    let live: Arc<Mutex<Vec<SocketAddr>>> =
        Arc::new(Mutex::new(relays.iter().map(|r| r.api).collect()));
    let stop = CancellationToken::new();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, live, failures, counters) = (
                stop.clone(),
                live.clone(),
                failures.clone(),
                counters.clone(),
            );
            tokio::spawn(async move {
                let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
                let mut n = c;
                for _ in 0..2_000_000 {
                    if stop.is_cancelled() {
                        break;
                    }
                    n = (n * 7919 + 13) % agents;
                    let api = {
                        let live = live.lock().unwrap_or_else(|p| p.into_inner());
                        live[n % live.len()]
                    };
                    let path = format!("/nodes/{}/_ping", node_name(n));
                    let client = clients.entry(api).or_insert_with(|| Client::new(api));
                    match client
                        .call_status(
                            http::Method::GET,
                            &path,
                            http_body_util::Empty::new().boxed(),
                        )
                        .await
                    {
                        Ok(reply) if reply.status.is_success() => Counters::bump(&counters.ok),
                        other => {
                            Counters::bump(&counters.failed);
                            let what = match other {
                                Ok(reply) => format!("{path} via {api}: {}", reply.describe()),
                                Err(e) => format!("{path} via {api}: {e:#}"),
                            };
                            let mut seen = failures.lock().unwrap_or_else(|p| p.into_inner());
                            if seen.len() < FAILURE_SAMPLES {
                                seen.push(what);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok_before_kill = counters.ok.load(Ordering::Relaxed);

    // Kill the last relay; the balancer drops it at once.
    let mut victim = relays.pop().context("a relay to kill")?;
    let moving = victim.agents_connected().await?;
    live.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|a| *a != victim.api);
    let cpu_before: Vec<Usage> = relays.iter().map(RelayProc::usage).collect::<Result<_>>()?;
    victim.kill()?;
    let killed = Instant::now();
    let mut back = None;
    while killed.elapsed() < timeout {
        let held: u64 = sessions(&relays).await?.iter().sum();
        counters.connected.store(held / 2, Ordering::Relaxed);
        if held >= want {
            back = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_kill = wait_two_each(&etcd, agents, timeout).await;
    let cpu_after: Vec<Usage> = relays.iter().map(RelayProc::usage).collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for t in tasks {
        t.await?;
    }
    let held_max = etcd
        .holders_per_node()
        .await?
        .values()
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    stop_progress.cancel();
    let _ = progress.await;
    fleet.stop_all().await;
    let survivors_cpu: f64 = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| a.cpu_secs - b.cpu_secs)
        .sum();
    let per_agent = |d: f64| d / agents as f64;
    Ok(json!({
        "relays": relay_count,
        "agents": agents,
        "sessions_per_agent": 2,
        "connect_all_s": connect_time.as_secs_f64(),
        "settled_two_each_s": settled.as_secs_f64(),
        "sessions_per_relay": spread,
        "max_over_min_sessions_per_relay": max as f64 / min.max(1) as f64,
        "etcd_writes_per_agent_connect": per_agent(etcd_writes_1 - etcd_writes_0),
        "etcd_watch_events_per_agent_connect": per_agent(etcd_events_1 - etcd_events_0),
        "killed_relay_sessions": moving,
        "all_back_to_two_sessions_s": back.map(|d| d.as_secs_f64()),
        "registry_shows_two_each_after_kill_s": after_kill.as_ref().ok().map(|d| d.as_secs_f64()),
        "registry_after_kill_error": after_kill.as_ref().err().map(|e| format!("{e:#}")),
        "most_sessions_any_node_holds_at_end": held_max,
        "survivors_cpu_s_per_1000_agents_moving": survivors_cpu / (moving.max(1) as f64 / 1000.0),
        "survivors_during_recovery": usage_json(
            Usage { cpu_secs: cpu_before.iter().map(|u| u.cpu_secs).sum(), rss_bytes: 0 },
            Usage { cpu_secs: cpu_after.iter().map(|u| u.cpu_secs).sum(), rss_bytes: 0 },
            killed.elapsed().as_secs_f64(),
        )["cpu_percent_of_one_core"],
        "calls_ok_before_kill": ok_before_kill,
        "calls_ok": counters.ok.load(Ordering::Relaxed),
        "calls_failed": counters.failed.load(Ordering::Relaxed),
        "first_failures": *failures.lock().unwrap_or_else(|p| p.into_inner()),
    }))
}

/// Waits until the registry lists exactly two holders for each of the
/// `agents` nodes; returns how long that took.
async fn wait_two_each(etcd: &EtcdProc, agents: usize, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let held = etcd.holders_per_node().await?;
        if held.len() == agents && held.values().all(|h| h.len() == 2) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let odd: Vec<String> = held
                .iter()
                .filter(|(_, h)| h.len() != 2)
                .map(|(node, h)| format!("{node}: {h:?}"))
                .collect();
            bail!(
                "{} of {agents} nodes listed, {} without exactly two holders, after {timeout:?}; first few: {:?}",
                held.len(),
                odd.len(),
                &odd[..odd.len().min(FAILURE_SAMPLES)]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
