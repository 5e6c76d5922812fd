//! The fleet's placement over a made-up fleet of 10,000 nodes with 10
//! containers each, against a baseline in the same run: one pass over the
//! same nodes that only reads each node's reserved memory (the least any
//! placement must do). Also prints the memory the fleet's view holds per
//! node and per container, from the process's RSS before and after it is
//! filled, with ps entries of a realistic size.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench placement`

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tunnelgate_proto::NodeId;
use tunnelgate_relay::fleet::cache::TenantView;
use tunnelgate_relay::fleet::expr::Expr;
use tunnelgate_relay::fleet::placement::place_indexed;
use tunnelgate_relay::fleet::strategy::StrategyName;
use tunnelgate_relay::fleet::view::{Container, HostPort, Image, Node};
use tunnelgate_relay::fleet::{place, Ask};

const NODES: usize = 10_000;
const PER_NODE: usize = 10;

/// One node's `docker ps` entry, of the size a real one has (~700 bytes).
fn listing(node: usize, i: usize) -> Arc<str> {
    let entry = json!({
        "Id": format!("{node:032x}{i:032x}"),
        "Names": [format!("/app-{node}-{i}")],
        "Image": "registry.example.com/team/app:1.2.3",
        "ImageID": format!("sha256:{:064x}", node * 31 + i),
        "Command": "/bin/app --serve --port 8080",
        "Created": 1_765_000_000u64 + (node * PER_NODE + i) as u64,
        "Ports": [{"PrivatePort": 8080, "Type": "tcp"}],
        "Labels": {"com.example.team": "payments", "com.example.tier": "web"},
        "State": "running",
        "Status": "Up 3 hours",
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
        "Mounts": [],
    });
    Arc::from(entry.to_string())
}

fn node(n: usize) -> Node {
    node_with(n, PER_NODE)
}

/// Node `n` with `containers` containers.
fn node_with(n: usize, containers: usize) -> Node {
    let mut node = Node::new(NodeId::new(format!("node-{n:05}")).expect("a valid id"));
    node.labels = BTreeMap::from([
        ("region".into(), ["eu", "us", "ap"][n % 3].into()),
        ("env".into(), ["prod", "staging"][n % 2].into()),
    ]);
    node.engine_labels
        .insert("disk".into(), ["ssd", "hdd"][n % 2].into());
    node.facts.ncpu = 8;
    node.facts.mem_total = 32 << 30;
    node.facts.storage_driver = "overlay2".into();
    node.transport = "quic".into();
    node.route = "local".into();
    node.images.push(Image {
        id: format!("sha256:{n:064x}"),
        tags: vec!["registry.example.com/team/app:1.2.3".into()],
        ..Default::default()
    });
    for i in 0..containers {
        node.put_container(Container {
            id: format!("{n:032x}{i:032x}"),
            name: format!("app-{n}-{i}"),
            image: "registry.example.com/team/app:1.2.3".into(),
            image_id: format!("sha256:{:064x}", n * 31 + i),
            labels: [("com.example.tier".to_owned(), "web".to_owned())]
                .into_iter()
                .collect(),
            nano_cpus: 250_000_000,
            memory: (256 << 20) * (1 + (n % 4) as u64),
            host_ports: match i {
                0 => vec![HostPort {
                    ip: String::new(),
                    port: 8080,
                    proto: "tcp".into(),
                }],
                _ => Vec::new(),
            },
            running: true,
            state: "running".into(),
            listing: Some(listing(n, i)),
            respawn: None,
            times: None,
        });
    }
    node
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// RSS grown while `fill` runs, in bytes; what it made is kept alive
/// until the figure is read.
fn grown_by<T>(fill: impl FnOnce() -> T) -> (u64, T) {
    let before = rss_bytes();
    let made = fill();
    (rss_bytes().saturating_sub(before), made)
}

/// Prints what the view holds per node (its facts, labels and images,
/// with no container) and per container (the rest, over the containers),
/// each from the RSS grown while filling a view of its own.
fn memory() -> TenantView {
    let (bare, bare_view) = grown_by(|| {
        let view = TenantView::default();
        for n in 0..NODES {
            view.put(node_with(n, 0));
        }
        view
    });
    // Kept while the full view is filled, so its freed pages are not
    // reused and counted out of the second figure.
    let (full, view) = grown_by(|| {
        let view = TenantView::default();
        for n in 0..NODES {
            view.put(node(n));
        }
        view
    });
    let containers = (NODES * PER_NODE) as u64;
    println!(
        "fleet view of {NODES} nodes x {PER_NODE} containers: RSS grew {:.1} MiB; \
         {} bytes per node on its own (a view of the nodes alone), \
         {} bytes per container (the rest)",
        full as f64 / f64::from(1u32 << 20),
        bare / NODES as u64,
        full.saturating_sub(bare) / containers,
    );
    drop(bare_view);
    view
}

fn placement(c: &mut Criterion) {
    let view = memory();
    let nodes = view.nodes();
    let fleet: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();

    let plain = Ask {
        memory: 512 << 20,
        nano_cpus: 500_000_000,
        ..Ask::default()
    };
    let constrained = Ask {
        constraints: vec![
            Expr::parse("region==eu").expect("parses"),
            Expr::parse("disk==/ss.*/").expect("parses"),
        ],
        affinities: vec![Expr::parse("com.example.tier==web").expect("parses")],
        host_ports: vec![HostPort {
            ip: String::new(),
            port: 9090,
            proto: "tcp".into(),
        }],
        ..plain.clone()
    };
    let mut group = c.benchmark_group("fleet_placement_10k_nodes");
    group.bench_function("baseline_sum_reserved_memory", |b| {
        b.iter(|| std::hint::black_box(fleet.iter().map(|n| n.reserved_memory()).sum::<u64>()))
    });
    group.bench_function("snapshot_of_the_view", |b| {
        b.iter(|| {
            let nodes = view.nodes();
            std::hint::black_box(
                nodes
                    .iter()
                    .map(|n| n.as_ref())
                    .collect::<Vec<&Node>>()
                    .len(),
            )
        })
    });
    for (name, ask) in [
        ("spread_no_filters", &plain),
        ("spread_constraints_affinity_port", &constrained),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let placed =
                    place(&fleet, ask, StrategyName::Spread.strategy(), 7).expect("a node fits");
                std::hint::black_box(placed.ranked.len())
            })
        });
    }
    // The create's own way: the hard constraints pick their nodes from
    // the view's index (gathered on the first round), the filters run
    // over those alone.
    for (name, strategy) in [
        (
            "spread_constraints_affinity_port_indexed",
            StrategyName::Spread,
        ),
        (
            "binpack_constraints_affinity_port_indexed",
            StrategyName::Binpack,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let placed = view.with_nodes(|all, index| {
                    place_indexed(all, index, |_| true, &constrained, strategy.strategy(), 7)
                });
                std::hint::black_box(placed.expect("a node fits").ranked.len())
            })
        });
    }
    group.bench_function("binpack_constraints_affinity_port", |b| {
        b.iter(|| {
            let placed = place(&fleet, &constrained, StrategyName::Binpack.strategy(), 7)
                .expect("a node fits");
            std::hint::black_box(placed.ranked.len())
        })
    });
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
