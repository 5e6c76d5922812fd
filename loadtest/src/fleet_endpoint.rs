//! `fleet`: the relay's `/fleet` endpoint over a simulated fleet. Every
//! node is a real agent session whose daemon is the
//! [`synthetic_fleet`](crate::synthetic_fleet) responder answering as that
//! node, with its own containers. Measured: how long the relay's view of
//! the fleet takes to fill, what it costs in relay memory per node and per
//! container, `docker ps --filter label=…` answered from it (latency,
//! relay CPU, and the node calls made meanwhile, which must be none), and
//! a create placed through `/fleet` against the same create sent to
//! `/nodes/<id>`, in interleaved rounds, in relay CPU per create.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::client::{fetch_text, Client, Percentiles};
use crate::fleet::node_name;
use crate::scenarios::{Rig, Setup};
use crate::synthetic_fleet::{FleetProc, SHARDS, ZONES};

/// Rounds of creates, each kind in turn in every round.
const ROUNDS: usize = 4;

/// The path of `docker ps --filter KEY=VALUE` on the fleet, with `-a`
/// if `all`.
fn ps_path(key: &str, value: &str, all: bool) -> String {
    let filters = json!({ key: [value] }).to_string();
    let filters: String = form_urlencoded::byte_serialize(filters.as_bytes()).collect();
    let all = if all { "all=1&" } else { "" };
    format!("/fleet/containers/json?{all}filters={filters}")
}

/// The path of `docker ps --filter label=shard=s<shard>` on the fleet.
fn shard_path(shard: usize) -> String {
    ps_path("label", &format!("shard=s{shard}"), false)
}

/// How the creates of a round are sent.
#[derive(Clone, Copy)]
enum Create {
    /// To `/nodes/<id>`: no placement.
    Node,
    /// To `/fleet`, no filters but the ones always on.
    Fleet,
    /// To `/fleet` with two constraints (one a regex), a label affinity
    /// and a host port.
    FleetFiltered,
}

impl Create {
    const ALL: [Self; 3] = [Self::Node, Self::Fleet, Self::FleetFiltered];

    fn name(self) -> &'static str {
        match self {
            Self::Node => "nodes",
            Self::Fleet => "fleet",
            Self::FleetFiltered => "fleet_filtered",
        }
    }

    fn request(self, n: usize, nodes: usize) -> (String, Value) {
        let mut body = json!({"Image": "sim", "HostConfig": {"Memory": 32u64 << 20}});
        let path = match self {
            Self::Node => format!("/nodes/{}/containers/create", node_name(n % nodes)),
            Self::Fleet => "/fleet/containers/create".to_owned(),
            Self::FleetFiltered => {
                body["Env"] = json!([
                    format!("constraint:zone==z{}", n % ZONES),
                    "constraint:node!=/lt-0000.*/",
                    "affinity:app==svc1",
                ]);
                body["HostConfig"]["PortBindings"] =
                    json!({"9000/tcp": [{"HostPort": format!("{}", 20_000 + n)}]});
                "/fleet/containers/create".to_owned()
            }
        };
        (path, body)
    }
}

/// Runs the scenario: `nodes` agents with `containers` each, `reads`
/// cached `ps` calls, `creates` creates of each kind per round, and
/// `tries` containers made on nodes directly, each timed until `/fleet`
/// lists it.
pub async fn fleet(
    setup: &Setup,
    nodes: usize,
    containers: usize,
    reads: usize,
    creates: usize,
    tries: usize,
    timeout: Duration,
) -> Result<Value> {
    ensure!(
        nodes > 0 && containers > 0,
        "a fleet needs nodes and containers"
    );
    let responder = FleetProc::start(containers)?;
    let shared = std::net::SocketAddr::from(([127, 0, 0, 1], responder.port));
    let mut rig = Rig::over(setup, "fleet", nodes, shared, Some(responder.port))?;
    let connect = rig.connect_all(timeout).await?;
    // The sessions' own memory settles before the view is counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_view = rig.relay.usage()?;
    let (fill, listing_calls) = fill_view(&rig, &responder, nodes * containers, timeout).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_view = rig.relay.usage()?;
    let view_bytes = after_view.rss_bytes.saturating_sub(before_view.rss_bytes);
    let (settled, settled_after) = settled_rss(&rig, after_view.rss_bytes).await?;
    let settled_bytes = settled.saturating_sub(before_view.rss_bytes);

    let reads = read_from_view(&rig, &responder, nodes, containers, reads).await?;
    let creates = create_rounds(&rig, &responder, nodes, creates).await?;
    let freshness = freshness(&rig, &responder, nodes, tries).await?;
    rig.finish().await;
    Ok(json!({
        "nodes": nodes,
        "containers_per_node": containers,
        "connect_s": connect.as_secs_f64(),
        "view": {
            "fill_s": fill.as_secs_f64(),
            "node_calls_to_fill": listing_calls,
            "relay_rss_before_bytes": before_view.rss_bytes,
            "relay_rss_after_bytes": after_view.rss_bytes,
            "bytes_per_node_with_its_containers": view_bytes as f64 / nodes as f64,
            "bytes_per_container_all_counted": view_bytes as f64 / (nodes * containers) as f64,
            "relay_rss_settled_bytes": settled,
            "rss_settled_s_after_fill": settled_after.as_secs_f64(),
            "settled_bytes_per_node_with_its_containers": settled_bytes as f64 / nodes as f64,
        },
        "ps_filter_label": reads,
        "create": creates,
        "freshness": freshness,
    }))
}

/// How long [`settled_rss`] waits at most for the relay's RSS to stop
/// falling after the fill.
const SETTLE_MAX: Duration = Duration::from_secs(20);

/// The relay's RSS once it stops falling after the fill (its allocator
/// hands the listings' freed memory back over some seconds), and how
/// long after the fill that was; `first` is the reading 2 s after it.
async fn settled_rss(rig: &Rig, first: u64) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut last = first;
    while started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = rig.relay.usage()?.rss_bytes;
        // Within 0.5 % of the reading before: no longer falling.
        let falling = now < last - last / 200;
        last = now;
        if !falling {
            break;
        }
    }
    Ok((last, started.elapsed() + Duration::from_secs(2)))
}

/// Opens the fleet endpoint (its view starts on the first call) and waits
/// until it counts every container; the time and the node calls it took.
async fn fill_view(
    rig: &Rig,
    responder: &FleetProc,
    want: usize,
    timeout: Duration,
) -> Result<(Duration, u64)> {
    let calls_before = responder.calls().await?;
    let started = Instant::now();
    loop {
        let info: Value = serde_json::from_str(&fetch_text(rig.relay.api, "/fleet/info").await?)?;
        let have = info["Containers"].as_u64().unwrap_or(0) as usize;
        if have >= want {
            let calls = responder.calls().await? - calls_before;
            return Ok((started.elapsed(), calls));
        }
        if started.elapsed() > timeout {
            bail!("the fleet view counts {have} of {want} containers after {timeout:?}");
        }
        // `info` over a large fleet is a large answer: not too often.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `reads` label-filtered `ps` calls on one kept-alive connection, each
/// for another shard; checks the first answer whole.
async fn read_from_view(
    rig: &Rig,
    responder: &FleetProc,
    nodes: usize,
    containers: usize,
    reads: usize,
) -> Result<Value> {
    let shards = nodes.min(SHARDS);
    let expect = |shard: usize| containers * (shard..nodes).step_by(SHARDS).count();
    let first: Value = serde_json::from_str(&fetch_text(rig.relay.api, &shard_path(0)).await?)?;
    let got = first.as_array().map_or(0, Vec::len);
    ensure!(
        got == expect(0),
        "ps --filter label=shard=s0 on /fleet listed {got} containers, not {}",
        expect(0)
    );
    let mut client = Client::new(rig.relay.api);
    client.get(&shard_path(1 % shards)).await?;
    let (calls_before, cpu_before) = (responder.calls().await?, rig.relay.sched()?);
    let mut samples = Vec::with_capacity(reads);
    let mut bytes = 0;
    for r in 0..reads {
        let (n, took) = client.get(&shard_path(r % shards)).await?;
        bytes += n;
        samples.push(took);
    }
    let (cpu_ns, switches) = rig.relay.sched()?.since(&cpu_before);
    let node_calls = responder.calls().await? - calls_before;
    let per = |n: u64| n as f64 / reads.max(1) as f64;
    Ok(json!({
        "reads": reads,
        "containers_per_answer": expect(0),
        "bytes_per_answer": per(bytes),
        "latency": Percentiles::of(&mut samples),
        "relay_cpu_us_per_read": per(cpu_ns) / 1e3,
        "relay_switches_per_read": per(switches),
        "node_calls_during_reads": node_calls,
    }))
}

/// `ROUNDS` rounds of `creates` creates of each [`Create`] kind, in turn;
/// the relay's CPU per create of each kind, per round, and the fleet's
/// against the node's.
async fn create_rounds(
    rig: &Rig,
    responder: &FleetProc,
    nodes: usize,
    creates: usize,
) -> Result<Value> {
    let mut client = Client::new(rig.relay.api);
    let mut per_round = Vec::new();
    let mut n = 0;
    for _ in 0..ROUNDS {
        let mut round = serde_json::Map::new();
        // What the relay spends while no call comes (at 10,000 nodes its
        // tenant task and watchers keep busy): a slower create is charged
        // more of it, so each figure is also given without it.
        let idle_before = rig.relay.sched()?;
        tokio::time::sleep(IDLE_SAMPLE).await;
        let (idle_ns, _) = rig.relay.sched()?.since(&idle_before);
        let idle_share = idle_ns as f64 / IDLE_SAMPLE.as_nanos() as f64;
        round.insert("relay_idle_cpu_share".into(), json!(idle_share));
        for kind in Create::ALL {
            let (before, calls_before) = (rig.relay.sched()?, responder.calls().await?);
            let started = Instant::now();
            let mut samples = Vec::with_capacity(creates);
            for _ in 0..creates {
                let (path, body) = kind.request(n, nodes);
                n += 1;
                let body = Full::new(Bytes::from(body.to_string())).boxed();
                let reply = client.call_status(http::Method::POST, &path, body).await?;
                if reply.status != http::StatusCode::CREATED {
                    bail!("create through {path}: {}", reply.describe());
                }
                samples.push(reply.took);
            }
            // The node's event makes the relay fetch the new container
            // (again, unless it did so already): wait for it to count.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (cpu_ns, _) = rig.relay.sched()?.since(&before);
            let idle_ns = idle_share * started.elapsed().as_nanos() as f64;
            let calls = responder.calls().await? - calls_before;
            let per = |n: f64| n / creates.max(1) as f64;
            let less_idle = per((cpu_ns as f64 - idle_ns).max(0.0));
            round.insert(
                kind.name().into(),
                json!({
                    "relay_cpu_us_per_create": per(cpu_ns as f64) / 1e3,
                    "relay_cpu_us_per_create_less_idle": less_idle / 1e3,
                    "node_calls_per_create": per(calls as f64),
                    "latency": Percentiles::of(&mut samples),
                }),
            );
        }
        let mut ratios: Vec<(String, f64)> = Vec::new();
        for (figure, suffix) in [
            ("relay_cpu_us_per_create", ""),
            ("relay_cpu_us_per_create_less_idle", "_less_idle"),
        ] {
            let cpu = |k: Create| round[k.name()][figure].as_f64();
            let node = cpu(Create::Node).context("no node figure")?;
            ratios.extend([Create::Fleet, Create::FleetFiltered].into_iter().map(|k| {
                (
                    format!("{}_over_nodes{suffix}", k.name()),
                    cpu(k).unwrap_or(0.0) / node,
                )
            }));
        }
        for (key, ratio) in ratios {
            round.insert(key, json!(ratio));
        }
        per_round.push(Value::Object(round));
    }
    let median = |key: &str| {
        let mut v: Vec<f64> = per_round.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        match v.len() {
            0 => None,
            n if n % 2 == 0 => Some((v[mid - 1] + v[mid]) / 2.0),
            _ => Some(v[mid]),
        }
    };
    Ok(json!({
        "creates_per_kind_per_round": creates,
        "median_fleet_over_nodes": median("fleet_over_nodes"),
        "median_fleet_filtered_over_nodes": median("fleet_filtered_over_nodes"),
        "median_fleet_over_nodes_less_idle": median("fleet_over_nodes_less_idle"),
        "median_fleet_filtered_over_nodes_less_idle": median("fleet_filtered_over_nodes_less_idle"),
        "rounds": per_round,
    }))
}

/// How long the relay is watched with no call coming, before each round.
const IDLE_SAMPLE: Duration = Duration::from_secs(1);

/// The longest a container made on a node directly may take to show in
/// `/fleet` before the try counts as failed.
const FRESH_WITHIN: Duration = Duration::from_secs(5);

/// `tries` times: a container made on a node's daemon directly (the
/// responder, not through the relay), then `/fleet` `ps` polled every
/// 2 ms until it lists it; the time that took.
async fn freshness(rig: &Rig, responder: &FleetProc, nodes: usize, tries: usize) -> Result<Value> {
    let mut client = Client::new(rig.relay.api);
    let mut samples = Vec::with_capacity(tries);
    let mut late = 0;
    for t in 0..tries {
        let node = crate::synthetic_fleet::node_addr(t * 7919 % nodes, responder.port);
        let name = format!("fresh-{t}");
        let body = Full::new(Bytes::from_static(br#"{"Image":"sim"}"#)).boxed();
        let path = format!("/containers/create?name={name}");
        let made = Client::new(node)
            .call_status(http::Method::POST, &path, body)
            .await?;
        ensure!(
            made.status == http::StatusCode::CREATED,
            "{}",
            made.describe()
        );
        let started = Instant::now();
        let ps = ps_path("name", &name, true);
        loop {
            let (bytes, _) = client.get(&ps).await?;
            // `[]` until it is there.
            if bytes > 2 {
                samples.push(started.elapsed());
                break;
            }
            if started.elapsed() > FRESH_WITHIN {
                late += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(json!({
        "tries": tries,
        "not_listed_within_5s": late,
        "made_on_node_until_listed": Percentiles::of(&mut samples),
    }))
}
