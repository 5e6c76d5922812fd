//! The scenarios. Each starts a fresh relay process, is bounded in count
//! and in time, stops by itself, and returns its results as JSON.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tunnelgate_agent::config::TransportChoice;

use crate::client::{Client, Percentiles};
use crate::fleet::{node_name, Fleet};
use crate::progress::{spawn_progress, Counters};
use crate::relay_proc::{RelayProc, Sched, Usage};
use crate::synthetic_docker;

/// What every scenario needs.
pub struct Setup {
    /// The relay binary to run.
    pub relay_bin: std::path::PathBuf,
    /// The agents' transport.
    pub transport: TransportChoice,
    /// Port of the synthetic Docker responder; 0 for any free one.
    pub responder_port: u16,
    /// A synthetic responder already listening there, to use instead of
    /// starting one (so a caller can point another tunnel at it first).
    pub responder: Option<std::net::SocketAddr>,
    /// More arguments for `tunnelgate-relay serve`.
    pub relay_args: Vec<String>,
}

/// Another tunnel to the synthetic responder, measured beside the relay
/// in the same run (e.g. rathole): plain HTTP in at `addr`, and the pid of
/// its relay-side process when its CPU is to be counted.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The name it is reported under.
    pub name: String,
    /// Where its forwarded port listens.
    pub addr: std::net::SocketAddr,
    /// Its relay-side (server) process.
    pub pid: Option<u32>,
    /// Its agent-side (client) process.
    pub client_pid: Option<u32>,
}

impl std::str::FromStr for Peer {
    type Err = String;

    /// `NAME=ADDR`, `NAME=ADDR,PID` or `NAME=ADDR,PID,CLIENT_PID`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = || {
            format!("--peer {s:?}: expected NAME=ADDR[,SERVER_PID[,CLIENT_PID]], e.g. rathole-tls=127.0.0.1:5202,4242,4243")
        };
        let (name, rest) = s.split_once('=').ok_or_else(usage)?;
        let mut parts = rest.split(',');
        let addr = parts.next().ok_or_else(usage)?;
        let mut pid = || {
            parts
                .next()
                .map(|p| p.parse().map_err(|_| usage()))
                .transpose()
        };
        let (pid, client_pid) = (pid()?, pid()?);
        Ok(Self {
            name: name.to_owned(),
            addr: addr.parse().map_err(|_| usage())?,
            pid,
            client_pid,
        })
    }
}

/// Agents a fleet fill lets connect at once.
pub(crate) const FILL_WINDOW: usize = 1000;

/// A relay, the synthetic daemon and a fleet, with live counters.
pub(crate) struct Rig {
    pub(crate) relay: RelayProc,
    pub(crate) fleet: Fleet,
    docker: std::net::SocketAddr,
    pub(crate) counters: Arc<Counters>,
    stop_progress: CancellationToken,
    progress: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(setup: &Setup, scenario: &'static str, agents: usize) -> Result<Self> {
        let docker = match setup.responder {
            Some(running) => running,
            None => synthetic_docker::spawn(setup.responder_port).await?,
        };
        Self::over(setup, scenario, agents, docker, None)
    }

    /// A rig whose agents' daemon is at `docker`, or with `per_node` at
    /// each agent's own loopback address on that port.
    pub(crate) fn over(
        setup: &Setup,
        scenario: &'static str,
        agents: usize,
        docker: std::net::SocketAddr,
        per_node: Option<u16>,
    ) -> Result<Self> {
        let relay = RelayProc::start(&setup.relay_bin, &setup.relay_args)?;
        let mut fleet = Fleet::new(
            agents,
            relay.agents,
            docker,
            relay.token()?,
            setup.transport,
        )?;
        if let Some(port) = per_node {
            fleet = fleet.with_daemon_per_node(port);
        }
        let counters = Arc::new(Counters::default());
        let stop_progress = CancellationToken::new();
        let progress = spawn_progress(scenario, counters.clone(), stop_progress.clone());
        Ok(Self {
            relay,
            fleet,
            docker,
            counters,
            stop_progress,
            progress,
        })
    }

    /// A rig whose single agent is connected.
    async fn with_one_agent(
        setup: &Setup,
        scenario: &'static str,
        timeout: Duration,
    ) -> Result<Self> {
        let mut rig = Self::start(setup, scenario, 1).await?;
        rig.fleet.start(0)?;
        rig.wait_connected(1, timeout).await?;
        Ok(rig)
    }

    /// How many agent sessions the relay holds.
    async fn connected(&self) -> Result<usize> {
        let n = self.relay.agents_connected().await?;
        self.counters.connected.store(n, Ordering::Relaxed);
        Ok(n as usize)
    }

    /// Starts every agent of the fleet, at most [`FILL_WINDOW`] of them
    /// still connecting at a time, and waits until all are connected.
    ///
    /// The window is for this process, not the relay: every simulated agent
    /// enrols and handshakes on the load tester's own cores, and 50,000 of
    /// them started at once spent those cores on retransmitting handshakes
    /// that then timed out, so none connected at all. (`connect-storm`
    /// starts its agents at once on purpose.)
    pub(crate) async fn connect_all(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let n = self.fleet.len();
        let mut next = 0;
        while next < n {
            let connected = self.connected().await?;
            let room = (connected + FILL_WINDOW).saturating_sub(next);
            for i in next..(next + room).min(n) {
                self.fleet.start(i)?;
            }
            next = (next + room).min(n);
            if started.elapsed() > timeout {
                bail!("only {connected} of {n} agents connected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_connected(n, timeout.saturating_sub(started.elapsed()))
            .await?;
        Ok(started.elapsed())
    }

    /// Polls until `want` nodes are listed or `timeout`; returns the time it took.
    async fn wait_connected(&self, want: usize, timeout: Duration) -> Result<Duration> {
        self.wait_count(|n| n >= want, &format!("{want} agents connected"), timeout)
            .await
    }

    /// Polls the relay's count of agent sessions until `done` holds or
    /// `timeout`; returns the time it took.
    async fn wait_count(
        &self,
        done: impl Fn(usize) -> bool,
        what: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let n = self.connected().await?;
            if done(n) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not {what} within {timeout:?}: the relay holds {n} agent sessions");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn finish(mut self) {
        self.stop_progress.cancel();
        let _ = (&mut self.progress).await;
        self.fleet.stop_all().await;
    }
}

pub(crate) fn usage_json(before: Usage, after: Usage, secs: f64) -> Value {
    json!({
        "cpu_secs": after.cpu_secs - before.cpu_secs,
        "cpu_percent_of_one_core": (after.cpu_secs - before.cpu_secs) / secs.max(1e-9) * 100.0,
        "rss_bytes_before": before.rss_bytes,
        "rss_bytes_after": after.rss_bytes,
    })
}

/// `connect-storm`: `agents` agents connect at once, each enrolling
/// (first contact); then all leave and reconnect at once with the
/// certificates they got (the restart case). Each wave reports the relay's
/// and this process's CPU per connected agent, so a fleet's reconnect
/// storm can be stated in cores.
pub async fn connect_storm(setup: &Setup, agents: usize, timeout: Duration) -> Result<Value> {
    let mut rig = Rig::start(setup, "connect-storm", agents).await?;
    let (_, first) = storm_wave(&mut rig, agents, timeout).await?;
    rig.fleet.stop_all().await;
    rig.wait_count(|n| n == 0, "every agent gone", timeout)
        .await?;
    let (connected, again) = storm_wave(&mut rig, agents, timeout).await?;
    rig.finish().await;
    Ok(json!({
        "agents": agents,
        "connected": connected,
        "failures": agents - connected.min(agents),
        "time_to_all_connected_s": first["time_to_all_connected_s"],
        "handshakes_per_s": first["handshakes_per_s"],
        "relay": first["relay"],
        "first_contact": first,
        "reconnect": again,
        "note": "first_contact: each handshake includes the agent's enrolment (CSR signing); \
                 reconnect: the same agents again with their certificates. CPU per agent \
                 includes the relay's work for agents already connected during the wave",
    }))
}

/// Starts every agent at once and waits for all of them: how many
/// connected, and the report of time, rate and CPU per connected agent,
/// the relay's and this process's (the simulated agents' side of each
/// handshake).
async fn storm_wave(rig: &mut Rig, agents: usize, timeout: Duration) -> Result<(usize, Value)> {
    let relay_before = rig.relay.usage()?;
    let own_before = Usage::of(std::process::id())?;
    let started = Instant::now();
    for i in 0..agents {
        rig.fleet.start(i)?;
    }
    let outcome = rig.wait_connected(agents, timeout).await;
    let elapsed = started.elapsed();
    let connected = rig.connected().await?;
    let relay_after = rig.relay.usage()?;
    let own_after = Usage::of(std::process::id())?;
    let per_agent_ms =
        |a: &Usage, b: &Usage| (b.cpu_secs - a.cpu_secs) * 1e3 / connected.max(1) as f64;
    Ok((
        connected,
        json!({
            "connected": connected,
            "time_to_all_connected_s": outcome.as_ref().ok().map(|d| d.as_secs_f64()),
            "handshakes_per_s": connected as f64 / elapsed.as_secs_f64(),
            "relay": usage_json(relay_before, relay_after, elapsed.as_secs_f64()),
            "relay_cpu_ms_per_agent": per_agent_ms(&relay_before, &relay_after),
            "agents_side_cpu_ms_per_agent": per_agent_ms(&own_before, &own_after),
        }),
    ))
}

/// `idle-hold`: `agents` idle agents held for `hold`; then a burst of
/// concurrent streams, and the relay's memory once they have closed.
pub async fn idle_hold(
    setup: &Setup,
    agents: usize,
    hold: Duration,
    timeout: Duration,
) -> Result<Value> {
    let mut rig = Rig::start(setup, "idle-hold", agents).await?;
    let empty = rig.relay.usage()?;
    rig.connect_all(timeout).await?;
    // Let enrolment and handshake garbage settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rig.relay.usage()?;
    tokio::time::sleep(hold).await;
    let after = rig.relay.usage()?;
    let burst = stream_burst(&rig, agents).await?;
    let settle = settle_after_burst(&rig, after.rss_bytes).await?;
    let connected = rig.connected().await?;
    rig.finish().await;
    let per_agent = (held.rss_bytes.saturating_sub(empty.rss_bytes)) as f64 / agents.max(1) as f64;
    Ok(json!({
        "agents": agents,
        "connected_at_end": connected,
        "hold_s": hold.as_secs_f64(),
        "relay_rss_empty_bytes": empty.rss_bytes,
        "relay_rss_held_bytes": held.rss_bytes,
        "relay_rss_per_agent_bytes": per_agent,
        "relay_cpu_percent_while_idle": (after.cpu_secs - held.cpu_secs) / hold.as_secs_f64() * 100.0,
        "burst": burst,
        "after_burst": settle,
    }))
}

/// How long the relay's memory is watched after a burst, and how close
/// to its idle level counts as returned.
const SETTLE_WATCH: Duration = Duration::from_secs(15);
const SETTLED_OVER_IDLE: f64 = 1.2;

/// Samples the relay's RSS for `SETTLE_WATCH` after a burst: when it first
/// came back within `SETTLED_OVER_IDLE` of `idle_rss`, and where it ended.
/// An allocator may hand freed memory back to the system some seconds
/// after the streams close, so one early sample would overstate what stays.
async fn settle_after_burst(rig: &Rig, idle_rss: u64) -> Result<Value> {
    let over_idle = |rss: u64| rss as f64 / idle_rss.max(1) as f64;
    let started = Instant::now();
    let mut at_2s = None;
    let mut settled_at = None;
    let mut last;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = rig.relay.usage()?.rss_bytes;
        let elapsed = started.elapsed();
        if at_2s.is_none() && elapsed >= Duration::from_secs(2) {
            at_2s = Some(over_idle(last));
        }
        if over_idle(last) <= SETTLED_OVER_IDLE {
            settled_at.get_or_insert(elapsed.as_secs_f64());
        } else {
            settled_at = None;
        }
        if elapsed >= SETTLE_WATCH {
            break;
        }
    }
    Ok(json!({
        "relay_rss_at_2s_over_idle": at_2s,
        "relay_rss_bytes": last,
        "relay_rss_over_idle": over_idle(last),
        "within_20_percent_from_s": settled_at,
        "watched_s": started.elapsed().as_secs_f64(),
    }))
}

/// Streams open at once in the burst, and bytes each one carries.
const BURST_CONCURRENCY: usize = 256;
const BURST_BYTES: u64 = 256 * 1024;

/// A burst of streams: `BURST_CONCURRENCY` clients each download
/// `BURST_BYTES` from node after node, `agents` calls in all (at least
/// `BURST_CONCURRENCY`, at most 4,096);
/// every client connection is closed at the end. Returns the burst's
/// figures, with the relay's peak RSS sampled while it ran.
async fn stream_burst(rig: &Rig, agents: usize) -> Result<Value> {
    let calls = agents.clamp(BURST_CONCURRENCY, 4096);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..BURST_CONCURRENCY)
        .map(|_| {
            let (next, counters, api) = (next.clone(), rig.counters.clone(), rig.relay.api);
            tokio::spawn(async move {
                let mut client = Client::new(api);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        break;
                    }
                    let path = format!("/nodes/{}/bulk?bytes={BURST_BYTES}", node_name(i % agents));
                    match client.get(&path).await {
                        Ok((n, _)) if n == BURST_BYTES => Counters::bump(&counters.ok),
                        _ => Counters::bump(&counters.failed),
                    }
                }
            })
        })
        .collect();
    let (ok_before, failed_before) = (
        rig.counters.ok.load(Ordering::Relaxed),
        rig.counters.failed.load(Ordering::Relaxed),
    );
    let mut peak = rig.relay.usage()?.rss_bytes;
    let all = futures_join(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => { r?; break; }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                peak = peak.max(rig.relay.usage()?.rss_bytes);
            }
        }
    }
    Ok(json!({
        "calls": calls,
        "concurrent_streams": BURST_CONCURRENCY,
        "bytes_per_call": BURST_BYTES,
        "ok": rig.counters.ok.load(Ordering::Relaxed) - ok_before,
        "failed": rig.counters.failed.load(Ordering::Relaxed) - failed_before,
        "took_s": started.elapsed().as_secs_f64(),
        "relay_rss_peak_bytes": peak,
    }))
}

/// Waits for every task; the first panic or cancellation is the error.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) -> Result<()> {
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Failed calls whose errors a report quotes, so a failure can be traced.
pub(crate) const FAILURE_SAMPLES: usize = 5;

/// `restart-storm`: `agents` agents connected; the relay restarts
/// (SIGTERM, then the same ports and state); time until every agent is
/// back, while `clients` call random nodes throughout. Calls answered 503
/// (that node's agent not back yet) are counted apart from failures.
pub async fn restart_storm(
    setup: &Setup,
    agents: usize,
    clients: usize,
    crash: bool,
    timeout: Duration,
) -> Result<Value> {
    let mut rig = Rig::start(setup, "restart-storm", agents).await?;
    let first_connect = rig.connect_all(timeout).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rig.relay.usage()?.rss_bytes;
    let away = tokio::task::block_in_place(|| rig.relay.restart(crash))?;
    rig.counters.ok.store(0, Ordering::Relaxed);
    let before = rig.relay.usage()?;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let offline = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, offline, failures) = (stop.clone(), offline.clone(), failures.clone());
            let (counters, api) = (rig.counters.clone(), rig.relay.api);
            tokio::spawn(async move {
                let mut client = Client::new(api);
                let mut samples = Vec::new();
                let mut n = c;
                // Bounded in count as well as by the storm's end.
                for _ in 0..1_000_000 {
                    if stop.is_cancelled() {
                        break;
                    }
                    n = (n * 7919 + 13) % agents;
                    let path = format!("/nodes/{}/_ping", node_name(n));
                    match client
                        .call_status(
                            http::Method::GET,
                            &path,
                            http_body_util::Empty::new().boxed(),
                        )
                        .await
                    {
                        Ok(reply) if reply.status.is_success() => {
                            samples.push(reply.took);
                            Counters::bump(&counters.ok);
                        }
                        Ok(reply) if reply.status == http::StatusCode::SERVICE_UNAVAILABLE => {
                            Counters::bump(&offline);
                        }
                        other => {
                            Counters::bump(&counters.failed);
                            let what = match other {
                                Ok(reply) => format!("{path}: {}", reply.describe()),
                                Err(e) => format!("{path}: {e:#}"),
                            };
                            let mut seen = failures.lock().unwrap_or_else(|p| p.into_inner());
                            if seen.len() < FAILURE_SAMPLES {
                                seen.push(what);
                            }
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let outcome = rig.wait_connected(agents, timeout).await;
    let storm = started.elapsed();
    stop.cancel();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let after = rig.relay.usage()?;
    let connected = rig.connected().await?;
    let failed = rig.counters.failed.load(Ordering::Relaxed);
    rig.finish().await;
    Ok(json!({
        "agents": agents,
        "stopped_by": if crash { "SIGKILL" } else { "SIGTERM" },
        "first_connect_s": first_connect.as_secs_f64(),
        "relay_away_s": away.as_secs_f64(),
        "time_to_all_back_s": outcome.as_ref().ok().map(|d| d.as_secs_f64()),
        "back_at_end": connected,
        "reconnects_per_s": connected as f64 / storm.as_secs_f64(),
        "calls_ok_during_storm": samples.len(),
        "calls_node_not_back_yet_503": offline.load(Ordering::Relaxed),
        "calls_failed_otherwise": failed,
        "first_failures": *failures.lock().unwrap_or_else(|p| p.into_inner()),
        "latency_of_calls_served": Percentiles::of(&mut samples),
        "relay": usage_json(before, after, storm.as_secs_f64()),
        "relay_rss_idle_before_restart_bytes": idle_rss,
        "relay_rss_after_storm_over_before": after.rss_bytes as f64 / idle_rss.max(1) as f64,
    }))
}

/// `request-rate`: small calls spread over `agents` nodes by `clients`
/// concurrent clients, `requests` in all or until `duration`.
pub async fn request_rate(
    setup: &Setup,
    agents: usize,
    clients: usize,
    requests: u64,
    duration: Duration,
    timeout: Duration,
) -> Result<Value> {
    let mut rig = Rig::start(setup, "request-rate", agents).await?;
    rig.connect_all(timeout).await?;
    let before = rig.relay.usage()?;
    let left = Arc::new(AtomicI64::new(requests as i64));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (left, counters, api) = (left.clone(), rig.counters.clone(), rig.relay.api);
            tokio::spawn(async move {
                let mut client = Client::new(api);
                let mut samples = Vec::new();
                let mut n = c;
                while left.fetch_sub(1, Ordering::Relaxed) > 0 && Instant::now() < deadline {
                    n = (n * 7919 + 13) % agents;
                    match client.get(&format!("/nodes/{}/_ping", node_name(n))).await {
                        Ok((_, took)) => {
                            samples.push(took);
                            Counters::bump(&counters.ok);
                        }
                        Err(_) => Counters::bump(&counters.failed),
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = rig.relay.usage()?;
    let failed = rig.counters.failed.load(Ordering::Relaxed);
    rig.finish().await;
    let ok = samples.len();
    Ok(json!({
        "agents": agents,
        "clients": clients,
        "ok": ok,
        "failed": failed,
        "requests_per_s": ok as f64 / elapsed,
        "latency": Percentiles::of(&mut samples),
        "relay": usage_json(before, after, elapsed),
        "relay_cpu_us_per_request": (after.cpu_secs - before.cpu_secs) / ok.max(1) as f64 * 1e6,
    }))
}

/// `latency`: one client's small calls one after another, direct to the
/// synthetic daemon and through the relay, interleaved so both see the
/// same machine state; over a kept-alive connection, and on a new client
/// connection per call (a new Docker API call over the existing agent
/// session).
pub async fn latency(
    setup: &Setup,
    calls: u32,
    peers: &[Peer],
    timeout: Duration,
) -> Result<Value> {
    let rig = Rig::with_one_agent(setup, "latency", timeout).await?;
    let relayed_path = format!("/nodes/{}/_ping", node_name(0));
    let (mut direct, mut relayed) = (Client::new(rig.docker), Client::new(rig.relay.api));
    let mut through_peers: Vec<Client> = peers.iter().map(|p| Client::new(p.addr)).collect();
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let mut peer_samples: Vec<[Vec<Duration>; 2]> =
        peers.iter().map(|_| Default::default()).collect();
    // Warm up every path (connections, the kept stream, caches).
    for _ in 0..calls.min(200) {
        direct.get("/_ping").await?;
        relayed.get(&relayed_path).await?;
        for client in &mut through_peers {
            client.get("/_ping").await?;
        }
    }
    for _ in 0..calls {
        samples[0].push(direct.get("/_ping").await?.1);
        samples[1].push(relayed.get(&relayed_path).await?.1);
        samples[2].push(Client::new(rig.docker).get("/_ping").await?.1);
        samples[3].push(Client::new(rig.relay.api).get(&relayed_path).await?.1);
        for ((client, peer), s) in through_peers.iter_mut().zip(peers).zip(&mut peer_samples) {
            s[0].push(client.get("/_ping").await?.1);
            s[1].push(Client::new(peer.addr).get("/_ping").await?.1);
        }
        Counters::bump(&rig.counters.ok);
    }
    // CPU and context switches per kept-alive call, from a run of each
    // path alone, per thread from `schedstat` and `status` (exact, where
    // `/proc/PID/stat`'s ticks are 10 ms): the relay's, and this
    // process's (client and synthetic daemon on every path, plus the
    // simulated agent on ours: the difference to the direct run is the
    // agent's).
    let own = || Sched::of(std::process::id());
    let per_call = |n: u64| n as f64 / calls.max(1) as f64;
    let own_before = own()?;
    for _ in 0..calls {
        direct.get("/_ping").await?;
    }
    let (own_direct_cpu, own_direct_sw) = own()?.since(&own_before);
    let (before, own_before) = (rig.relay.sched()?, own()?);
    for _ in 0..calls {
        relayed.get(&relayed_path).await?;
    }
    let (relay_cpu, relay_sw) = rig.relay.sched()?.since(&before);
    let (own_cpu, own_sw) = own()?.since(&own_before);
    let (agent_cpu, agent_sw) = (
        own_cpu.saturating_sub(own_direct_cpu),
        own_sw.saturating_sub(own_direct_sw),
    );
    let mut peer_cpu = Vec::new();
    for (client, peer) in through_peers.iter_mut().zip(peers) {
        let sched = |pid: Option<u32>| pid.map(Sched::of).transpose();
        let (server, agent) = (sched(peer.pid)?, sched(peer.client_pid)?);
        for _ in 0..calls {
            client.get("/_ping").await?;
        }
        // CPU µs and switches per call of one of the peer's processes.
        let spent = |before: Option<Sched>, pid| -> Result<Option<(f64, f64)>> {
            Ok(match (before, sched(pid)?) {
                (Some(b), Some(a)) => {
                    let (cpu, sw) = a.since(&b);
                    Some((per_call(cpu) / 1e3, per_call(sw)))
                }
                _ => None,
            })
        };
        peer_cpu.push((spent(server, peer.pid)?, spent(agent, peer.client_pid)?));
    }
    rig.finish().await;
    let [direct_kept, relayed_kept, direct_new, relayed_new] =
        samples.map(|mut s| Percentiles::of(&mut s).context("no samples"));
    let (direct_kept, relayed_kept) = (direct_kept?, relayed_kept?);
    let (direct_new, relayed_new) = (direct_new?, relayed_new?);
    let mut peer_results = serde_json::Map::new();
    for ((peer, [mut kept, mut new]), (server_cpu, client_cpu)) in
        peers.iter().zip(peer_samples).zip(peer_cpu)
    {
        let kept = Percentiles::of(&mut kept).context("no samples")?;
        let new = Percentiles::of(&mut new).context("no samples")?;
        peer_results.insert(
            peer.name.clone(),
            json!({
                "kept_alive": kept,
                "kept_alive_added_p50_us": kept.p50_us - direct_kept.p50_us,
                "kept_alive_added_p99_us": kept.p99_us - direct_kept.p99_us,
                "new_connection": new,
                "new_connection_added_p50_us": new.p50_us - direct_new.p50_us,
                "server_cpu_us_per_kept_alive_call": server_cpu.map(|c| c.0),
                "server_switches_per_kept_alive_call": server_cpu.map(|c| c.1),
                "client_cpu_us_per_kept_alive_call": client_cpu.map(|c| c.0),
                "client_switches_per_kept_alive_call": client_cpu.map(|c| c.1),
            }),
        );
    }
    Ok(json!({
        "peers": peer_results,
        "calls": calls,
        "kept_alive": {
            "direct": direct_kept,
            "relayed": relayed_kept,
            "added_p50_us": relayed_kept.p50_us - direct_kept.p50_us,
            "added_p99_us": relayed_kept.p99_us - direct_kept.p99_us,
            "relayed_p99_over_p50": relayed_kept.p99_us / relayed_kept.p50_us,
        },
        "new_connection": {
            "direct": direct_new,
            "relayed": relayed_new,
            "added_p50_us": relayed_new.p50_us - direct_new.p50_us,
        },
        "relay_cpu_us_per_kept_alive_call": per_call(relay_cpu) / 1e3,
        "relay_switches_per_kept_alive_call": per_call(relay_sw),
        "agent_cpu_us_per_kept_alive_call": per_call(agent_cpu) / 1e3,
        "agent_switches_per_kept_alive_call": per_call(agent_sw),
    }))
}

/// `bulk`: `bytes` each way through one agent, `rounds` times, next to the
/// same download straight from the synthetic daemon as the baseline.
pub async fn bulk(
    setup: &Setup,
    bytes: u64,
    rounds: u32,
    peers: &[Peer],
    timeout: Duration,
) -> Result<Value> {
    let rig = Rig::with_one_agent(setup, "bulk", timeout).await?;
    let node = node_name(0);
    let gbit = |b: u64, d: Duration| b as f64 * 8.0 / d.as_secs_f64() / 1e9;

    let total = bytes * rounds as u64;
    let gb = total as f64 / 1e9;
    let direct_time = download(rig.docker, "/", bytes, rounds, "direct").await?;
    let mut peer_results = serde_json::Map::new();
    for peer in peers {
        let before = peer.pid.map(Usage::of).transpose()?;
        let took = download(peer.addr, "/", bytes, rounds, &peer.name).await?;
        let cpu = match (before, peer.pid) {
            (Some(b), Some(pid)) => json!((Usage::of(pid)?.cpu_secs - b.cpu_secs) / gb),
            _ => Value::Null,
        };
        peer_results.insert(
            peer.name.clone(),
            json!({
                "download_gbit_s": gbit(total, took),
                "ratio_to_direct": direct_time.as_secs_f64() / took.as_secs_f64(),
                "server_cpu_s_per_gb": cpu,
            }),
        );
    }

    let before = rig.relay.usage()?;
    let own_before = Usage::of(std::process::id())?;
    let down_time = download(
        rig.relay.api,
        &format!("/nodes/{node}/"),
        bytes,
        rounds,
        "relayed",
    )
    .await?;
    rig.counters.bytes.fetch_add(total, Ordering::Relaxed);
    let mid = rig.relay.usage()?;
    let own_mid = Usage::of(std::process::id())?;
    let mut relayed = Client::new(rig.relay.api);
    let mut up_time = Duration::ZERO;
    for _ in 0..rounds {
        let body = synthetic_docker::Bulk::new(bytes).boxed();
        let (_, took) = relayed
            .call(http::Method::POST, &format!("/nodes/{node}/upload"), body)
            .await?;
        rig.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        up_time += took;
    }
    let after = rig.relay.usage()?;
    let own_after = Usage::of(std::process::id())?;
    rig.finish().await;
    let relayed_ratio = |peer: &str| {
        peer_results
            .get(peer)
            .and_then(|p| p["download_gbit_s"].as_f64())
            .map(|g| gbit(total, down_time) / g)
    };
    let vs_peers: serde_json::Map<String, Value> = peers
        .iter()
        .map(|p| (p.name.clone(), json!(relayed_ratio(&p.name))))
        .collect();
    Ok(json!({
        "peers": peer_results,
        "relayed_download_ratio_to_peer": vs_peers,
        "bytes_per_transfer": bytes,
        "rounds": rounds,
        "direct_download_gbit_s": gbit(total, direct_time),
        "relayed_download_gbit_s": gbit(total, down_time),
        "relayed_upload_gbit_s": gbit(total, up_time),
        "download_ratio_to_direct": direct_time.as_secs_f64() / down_time.as_secs_f64(),
        "relay_cpu_s_per_gb_download": (mid.cpu_secs - before.cpu_secs) / gb,
        "relay_cpu_s_per_gb_upload": (after.cpu_secs - mid.cpu_secs) / gb,
        // The simulated agent shares this process with the synthetic
        // daemon and the client, whose work per GB does not change with
        // the agent's code: a difference between two builds is the agent's.
        "agent_daemon_client_cpu_s_per_gb_download": (own_mid.cpu_secs - own_before.cpu_secs) / gb,
        "agent_daemon_client_cpu_s_per_gb_upload": (own_after.cpu_secs - own_mid.cpu_secs) / gb,
    }))
}

/// Downloads `bytes` from `{prefix}bulk` `rounds` times over one kept-alive
/// connection to `addr`; returns the total time.
pub(crate) async fn download(
    addr: std::net::SocketAddr,
    prefix: &str,
    bytes: u64,
    rounds: u32,
    what: &str,
) -> Result<Duration> {
    let mut client = Client::new(addr);
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let (n, took) = client.get(&format!("{prefix}bulk?bytes={bytes}")).await?;
        anyhow::ensure!(n == bytes, "{what} download returned {n} of {bytes} bytes");
        total += took;
    }
    Ok(total)
}

/// `churn`: `churners` of `agents` agents drop and reconnect over and over
/// while `clients` call the steady ones, for `duration`.
pub async fn churn(
    setup: &Setup,
    agents: usize,
    churners: usize,
    clients: usize,
    duration: Duration,
    timeout: Duration,
) -> Result<Value> {
    anyhow::ensure!(churners < agents, "--churners must be fewer than --agents");
    let mut rig = Rig::start(setup, "churn", agents).await?;
    rig.connect_all(timeout).await?;
    let steady = agents - churners;
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (counters, api) = (rig.counters.clone(), rig.relay.api);
            tokio::spawn(async move {
                let mut client = Client::new(api);
                let mut n = c;
                // Bounded in count as well as time.
                for _ in 0..1_000_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    n = (n * 7919 + 13) % steady;
                    match client.get(&format!("/nodes/{}/_ping", node_name(n))).await {
                        Ok(_) => Counters::bump(&counters.ok),
                        Err(_) => Counters::bump(&counters.failed),
                    }
                }
            })
        })
        .collect();
    let mut reconnects = 0u64;
    while Instant::now() < deadline {
        for i in steady..agents {
            rig.fleet.stop(i).await;
            rig.fleet.start(i)?;
            reconnects += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await?;
    }
    let (ok, failed) = (
        rig.counters.ok.load(Ordering::Relaxed),
        rig.counters.failed.load(Ordering::Relaxed),
    );
    let final_count = rig.wait_connected(agents, timeout).await.is_ok();
    rig.finish().await;
    Ok(json!({
        "agents": agents,
        "churners": churners,
        "reconnects": reconnects,
        "calls_to_steady_nodes_ok": ok,
        "calls_to_steady_nodes_failed": failed,
        "all_back_at_end": final_count,
    }))
}
