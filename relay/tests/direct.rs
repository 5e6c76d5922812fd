//! The direct path against real parts: a node's host in its own network
//! namespace, its real dockerd started with `--tlsverify` and the files
//! `tunnelgate-agent docker-tls` wrote, reached from the relay over a
//! veth pair whose daemon port iptables drops, rejects or opens; the real
//! docker CLI calls through the relay and never notices the route.
//!
//! Needs root (network namespaces, nsenter, iptables), as CI has.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::netns::{Host, NodeDockerd};
use support::{agent_bin, http_get_full, scenarios, AgentCmd, CallLoop, Docker, Proc, Relay};

/// How often the relays in these tests probe daemon endpoints.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A relay whose agent port is on the veth pair, probing every second.
fn relay_for(host: &Host, state: &Path) -> Relay {
    Relay::start_args(
        state,
        "127.0.0.1:0",
        &format!("{}:0", host.relay_ip),
        &["--direct-probe-interval", "1s"],
    )
    .unwrap()
}

/// A relay of the cluster in `etcd`, as [`relay_for`] with `extra` flags.
fn cluster_relay_for(
    host: &Host,
    etcd: &support::etcd::Etcd,
    dir: &Path,
    id: &str,
    extra: &[&str],
) -> Relay {
    let mut args = etcd.relay_args(id, "2s");
    args.extend(["--direct-probe-interval".into(), "1s".into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agents = format!("{}:0", host.relay_ip);
    Relay::start_args(&dir.join(id), "127.0.0.1:0", &agents, &args).unwrap()
}

/// Runs `tunnelgate-agent docker-tls` on the node's host for `node`,
/// enrolling it with `token`; returns what it printed.
fn docker_tls(
    host: &Host,
    relay: &Relay,
    node: &str,
    dir: &Path,
    token: &str,
    port: u16,
) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", host.name))
        .arg(agent_bin())
        .args(["docker-tls", "--out"])
        .arg(dir.join(format!("{node}-tls")))
        .args(["--ip", &host.host_ip, "--port", &port.to_string()])
        .args(["--relay", &relay.agent.to_string(), "--token", token])
        .args(["--node-id", node, "--state-dir"])
        .arg(dir.join(format!("{node}-agent")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-tls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The agent for `node` on the node's host, serving `dockerd`.
fn agent_on(host: &Host, relay: &Relay, node: &str, docker: &str, dir: &Path) -> AgentCmd {
    let mut cmd = AgentCmd::new(
        relay,
        node,
        docker,
        &dir.join(format!("{node}-agent")),
        None,
    );
    cmd.prefix = host.prefix();
    cmd
}

/// The route header of one call through the relay.
fn route_of(relay: &Relay, node: &str) -> String {
    let (status, head, body) = http_get_full(relay.api, &format!("/nodes/{node}/_ping")).unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    head.lines()
        .find_map(|l| l.strip_prefix("x-tunnelgate-route: "))
        .unwrap_or_else(|| panic!("no route header in {head}"))
        .trim()
        .to_owned()
}

/// `tunnelgate_front_routed_calls_total{route}` now.
fn routed(relay: &Relay, route: &str) -> u64 {
    relay.metric(&format!(
        "tunnelgate_front_routed_calls_total{{route=\"{route}\"}}"
    ))
}

/// `tunnelgate_front_connections_total{runs_on}` now.
fn connections_on(relay: &Relay, runs_on: &str) -> u64 {
    relay.metric(&format!(
        "tunnelgate_front_connections_total{{runs_on=\"{runs_on}\"}}"
    ))
}

/// Plain HTTP calls to `node` through the relay, each of which must
/// answer 200, and every fifth a `docker ps`. The docker CLI alone would
/// hide a failed call: it shrugs off a failed `_ping` and goes on with
/// its next request.
fn short_calls(relay: &Relay, node: &str, docker: Docker) -> CallLoop {
    let (api, path) = (relay.api, format!("/nodes/{node}/containers/json?all=1"));
    CallLoop::start(move |i| match i % 5 {
        0 => docker.ok(&["ps", "-a"]).map(drop),
        _ => match http_get_full(api, &path)? {
            (200, _, _) => Ok(()),
            (status, _, body) => Err(anyhow::anyhow!("{status}: {body}")),
        },
    })
}

#[test]
fn the_docker_cli_goes_direct_and_falls_back_to_the_tunnel_without_a_failed_call() {
    let host = Host::new("dir");
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_for(&host, &dir.path().join("relay"));
    let token = relay.token().unwrap();
    let printed = docker_tls(&host, &relay, "edge", dir.path(), &token, 2376);
    assert!(
        printed.contains("--tlsverify") && printed.contains("daemon.json"),
        "docker-tls must say how to start dockerd:\n{printed}"
    );
    let tls = dir.path().join("edge-tls");
    let dockerd = NodeDockerd::start(&host, &dir.path().join("dockerd"), &tls, 2376).unwrap();
    dockerd.load_busybox().unwrap();
    let _agent = agent_on(&host, &relay, "edge", &dockerd.socket(), dir.path())
        .arg("--daemon-tls")
        .arg(tls.to_str().unwrap())
        .spawn()
        .unwrap();
    let node = relay.wait_for("edge", |n| n["route"] == "direct").unwrap();
    assert_eq!(node["direct"][0]["state"], "up", "{node}");
    assert_eq!(
        node["direct"][0]["endpoint"],
        format!("tcp://{}:2376", host.host_ip)
    );
    assert_eq!(route_of(&relay, "edge"), "direct");

    // The whole scenario list, every call of it direct.
    let docker = Docker::new(relay.docker_host("edge"));
    let local_before = routed(&relay, "local");
    let threaded_before = connections_on(&relay, "direct_thread");
    let direct_times = scenarios::run_all(&docker).unwrap_or_else(|e| {
        panic!(
            "scenarios fail on the direct path: {e:#}\nrelay log:\n{}",
            relay.log()
        )
    });
    assert_eq!(
        routed(&relay, "local"),
        local_before,
        "a call of the scenario list went through the tunnel though the direct path held"
    );
    assert!(routed(&relay, "direct") > 100);
    // The docker CLI's connections went direct from their first call:
    // each ran on a thread of its own.
    let threaded = connections_on(&relay, "direct_thread");
    assert!(
        threaded >= threaded_before + 20,
        "only {} of the scenario list's connections ran on the direct path's threads",
        threaded - threaded_before
    );

    // Short calls while the port is black-holed, then reset, then open:
    // none fails, and the route comes back within a probe interval.
    let calls = short_calls(&relay, "edge", docker.clone());
    std::thread::sleep(Duration::from_secs(1));
    host.block_tcp_port(2376, "DROP", true);
    relay.wait_for("edge", |n| n["route"] == "tunnel").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    host.block_tcp_port(2376, "REJECT", true);
    host.block_tcp_port(2376, "DROP", false);
    std::thread::sleep(Duration::from_secs(3));
    let tunnelled = routed(&relay, "local");
    host.block_tcp_port(2376, "REJECT", false);
    let opened = Instant::now();
    relay.wait_for("edge", |n| n["route"] == "direct").unwrap();
    let back = opened.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed) = calls.finish();
    eprintln!(
        "direct path back {back:?} after the port opened; {ok} calls, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "calls failed while the port closed and opened: {failed:?}"
    );
    assert!(ok > 10, "the loop made only {ok} calls");
    assert!(
        tunnelled > local_before,
        "no call went through the tunnel while the port was closed"
    );
    // One probe interval, and a second for the probe itself and this
    // poll on a loaded machine.
    assert!(
        back <= PROBE_INTERVAL + Duration::from_secs(1),
        "the route took {back:?} to come back after the port opened (probe interval {PROBE_INTERVAL:?})"
    );
    assert!(
        relay
            .log()
            .contains("direct path unavailable; calls go through the tunnel"),
        "the relay did not log the fallback"
    );

    // The same list through the tunnel, for the timing table.
    host.block_tcp_port(2376, "REJECT", true);
    relay.wait_for("edge", |n| n["route"] == "tunnel").unwrap();
    let (threaded, pooled) = (
        connections_on(&relay, "direct_thread"),
        connections_on(&relay, "shared_pool"),
    );
    let tunnel_times = scenarios::run_all(&docker)
        .unwrap_or_else(|e| panic!("scenarios fail on the tunnel: {e:#}"));
    assert_eq!(route_of(&relay, "edge"), "local");
    // Through the tunnel they stay on the shared pool, beside the session.
    assert_eq!(connections_on(&relay, "direct_thread"), threaded);
    assert!(connections_on(&relay, "shared_pool") >= pooled + 20);
    eprintln!(
        "{:<34} {:>9} {:>9} {:>6}",
        "scenario", "direct s", "tunnel s", "ratio"
    );
    for ((name, d), (_, t)) in direct_times.iter().zip(&tunnel_times) {
        eprintln!(
            "{name:<34} {:>9.2} {:>9.2} {:>6.2}",
            d.as_secs_f64(),
            t.as_secs_f64(),
            d.as_secs_f64() / t.as_secs_f64()
        );
    }
    host.block_tcp_port(2376, "REJECT", false);
    relay.wait_for("edge", |n| n["route"] == "direct").unwrap();

    // A `logs -f` whose direct path is black-holed ends with an error
    // within the relay's dead-path bound instead of hanging.
    let name = "direct-follow";
    docker
        .ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "echo first; sleep 600",
        ])
        .unwrap();
    let mut follow = docker
        .cmd(["logs", "-f", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = support::LineReader::new(follow.stdout.take().unwrap());
    lines.wait_for("first", Duration::from_secs(30)).unwrap();
    host.block_tcp_port(2376, "DROP", true);
    let cut = Instant::now();
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        if cut.elapsed() > Duration::from_secs(40) {
            let _ = follow.kill();
            panic!(
                "`docker logs -f` still hangs {:?} after its path went dead",
                cut.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ended = cut.elapsed();
    eprintln!("logs -f ended {ended:?} after its direct path was dropped ({status})");
    assert!(
        !status.success(),
        "a cut stream must end with an error, not look complete"
    );
    // The relay's stated bound (keep-alive and user timeout) is 15 s; a
    // few more for the docker CLI and a loaded machine.
    assert!(
        ended < Duration::from_secs(20),
        "ended only after {ended:?}"
    );
    host.block_tcp_port(2376, "DROP", false);
    let _ = Docker::new(dockerd.socket()).ok(&["rm", "-f", name]);
}

/// curl against the daemon's TLS port with a client certificate: whether
/// the daemon answered `OK`.
fn daemon_answers(host: &Host, ca: &Path, cert: Option<(&Path, &Path)>) -> bool {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"]).arg(ca);
    if let Some((cert, key)) = cert {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .arg(format!("https://{}:2376/_ping", host.host_ip))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}); scripts/test installs it"));
    out.status.success() && out.stdout == b"OK"
}

#[test]
fn only_relays_reach_the_daemon_and_only_the_reported_daemon_is_used() {
    let host = Host::new("trs");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let relay = relay_for(&host, &d.join("relay"));
    docker_tls(&host, &relay, "good", d, &relay.token().unwrap(), 2376);
    docker_tls(&host, &relay, "other", d, &relay.token().unwrap(), 2377);
    let first = NodeDockerd::start(&host, &d.join("dockerd-1"), &d.join("good-tls"), 2376).unwrap();
    let second =
        NodeDockerd::start(&host, &d.join("dockerd-2"), &d.join("other-tls"), 2377).unwrap();
    assert_ne!(
        first.id().unwrap(),
        second.id().unwrap(),
        "the two daemons must differ"
    );

    // Only relays' direct-path certificates open the daemon: not the
    // node's own, not a tenant's client certificate, not another
    // installation's, not none.
    let ca = d.join("relay/ca.pem");
    let node_pem = d.join("good-agent/node.pem");
    relay
        .client_cert("default", "ops", &d.join("client"))
        .unwrap();
    let foreign = Command::new(support::relay_bin())
        .args([
            "client-cert",
            "create",
            "--tenant",
            "default",
            "--name",
            "x",
            "--state-dir",
        ])
        .arg(d.join("foreign-relay"))
        .arg("--out")
        .arg(d.join("foreign"))
        .output()
        .unwrap();
    assert!(foreign.status.success());
    let refused = [
        (
            "the node's certificate",
            Some((node_pem.clone(), node_pem.clone())),
        ),
        (
            "a tenant's client certificate",
            Some((d.join("client/cert.pem"), d.join("client/key.pem"))),
        ),
        (
            "another installation's certificate",
            Some((d.join("foreign/cert.pem"), d.join("foreign/key.pem"))),
        ),
        ("no certificate", None),
    ];
    for (what, cert) in &refused {
        let cert = cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        assert!(
            !daemon_answers(&host, &ca, cert),
            "the daemon's TLS port answered a call with {what}"
        );
    }

    // Node `other` says its daemon is the first one but advertises the
    // second's port: its certificate is right, its daemon ID is not.
    let _other = agent_on(&host, &relay, "other", &first.socket(), d)
        .arg("--direct-endpoint")
        .arg(&format!("tcp://{}:2377", host.host_ip))
        .spawn()
        .unwrap();
    let node = relay
        .wait_for("other", |n| n["direct"][0]["state"] == "other_daemon")
        .unwrap();
    assert!(
        node["direct"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&second.id().unwrap()),
        "{node}"
    );
    std::thread::sleep(PROBE_INTERVAL * 4);
    assert_eq!(route_of(&relay, "other"), "local");
    assert_eq!(
        relay.wait_for("other", |_| true).unwrap()["route"],
        "tunnel"
    );
    let warned = relay
        .log()
        .matches("another daemon answers at that address")
        .count();
    assert_eq!(
        warned,
        1,
        "the relay must say why once, not at every probe:\n{}",
        relay.log()
    );

    // A read-only node never goes direct, though its endpoint is good...
    let agent_log = d.join("good-agent.log");
    let mut good: Proc = agent_on(&host, &relay, "good", &first.socket(), d)
        .arg("--daemon-tls")
        .arg(d.join("good-tls").to_str().unwrap())
        .arg("--policy")
        .arg("read-only")
        .spawn_logged(&agent_log)
        .unwrap();
    relay.wait_for_node("good").unwrap();
    std::thread::sleep(PROBE_INTERVAL * 4);
    let node = relay.wait_for("good", |_| true).unwrap();
    assert_eq!(node["route"], "tunnel", "{node}");
    assert_eq!(node["direct"], serde_json::json!([]), "{node}");
    assert_eq!(route_of(&relay, "good"), "local");
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(log.contains("not advertising --direct-endpoint"), "{log}");

    // ...and the same node with the full policy does.
    good.kill();
    let _good = agent_on(&host, &relay, "good", &first.socket(), d)
        .arg("--daemon-tls")
        .arg(d.join("good-tls").to_str().unwrap())
        .spawn()
        .unwrap();
    relay.wait_for("good", |n| n["route"] == "direct").unwrap();
    assert_eq!(route_of(&relay, "good"), "direct");
}

/// Polls `relay` until a call to `node` comes back with route `want`.
fn wait_route_of(relay: &Relay, node: &str, want: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Not routed yet (503 until the node's session is known) counts as
        // no route.
        let route = match http_get_full(relay.api, &format!("/nodes/{node}/_ping")) {
            Ok((200, head, _)) => head
                .lines()
                .find_map(|l| l.strip_prefix("x-tunnelgate-route: "))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            Ok((status, _, body)) => format!("HTTP {status}: {body}"),
            Err(e) => format!("{e:#}"),
        };
        if want(&route) {
            return route;
        }
        assert!(
            Instant::now() < deadline,
            "relay never routed {node} {what}; last route {route}\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn in_a_cluster_a_relay_without_a_session_of_the_node_goes_direct_too() {
    let host = Host::new("tcl");
    let etcd = support::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = cluster_relay_for(&host, &etcd, d, "relay-a", &[]);
    support::share_ca(&d.join("relay-a"), &d.join("relay-b"));
    let b = cluster_relay_for(&host, &etcd, d, "relay-b", &[]);
    docker_tls(&host, &a, "spread", d, &a.token().unwrap(), 2376);
    let dockerd =
        NodeDockerd::start(&host, &d.join("dockerd"), &d.join("spread-tls"), 2376).unwrap();
    // One session, on whichever relay the node's id ranks first.
    let _agent = agent_on(&host, &a, "spread", &dockerd.socket(), d)
        .arg("--relay-sessions")
        .arg("1")
        .arg("--direct-endpoint")
        .arg(&format!("tcp://{}:2376", host.host_ip))
        .spawn()
        .unwrap();
    let is_direct = |r: &str| r == "direct";
    wait_route_of(&a, "spread", is_direct, "direct");
    wait_route_of(&b, "spread", is_direct, "direct");
    // Exactly one of the two holds the session; the other learnt the
    // node's direct path from the registry and probed it itself.
    let held_here = |r: &Relay| {
        http_get_full(r.api, "/v1/nodes/spread")
            .map(|(status, _, _)| status == 200)
            .unwrap_or(false)
    };
    let (holder, other) = if held_here(&a) { (&a, &b) } else { (&b, &a) };
    assert!(
        held_here(holder) && !held_here(other),
        "one holder, one not"
    );
    let fleet_route = |r: &Relay| {
        let (status, _, body) = http_get_full(r.api, "/v1/nodes?all=1").unwrap();
        assert_eq!(status, 200, "{body}");
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == "spread")
            .cloned()
            .unwrap_or_else(|| panic!("spread not in the fleet: {body}"));
        node["route"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(
        fleet_route(other),
        "direct",
        "the fleet view says how calls go"
    );
    let other_direct = routed(other, "direct");
    let ps = Docker::new(other.docker_host("spread")).ok(&["ps", "-a"]);
    ps.unwrap();
    assert!(
        routed(other, "direct") > other_direct,
        "the docker CLI through the relay without a session did not go direct"
    );

    // The daemon's port dropped: the relay without a session falls back
    // to the holder, the holder to its own tunnel.
    host.block_tcp_port(2376, "DROP", true);
    wait_route_of(
        other,
        "spread",
        |r| r.starts_with("peer="),
        "through its peer",
    );
    assert_eq!(fleet_route(other), "peer");
    wait_route_of(holder, "spread", |r| r == "local", "through its tunnel");
    host.block_tcp_port(2376, "DROP", false);
    wait_route_of(other, "spread", is_direct, "direct again");
}

#[test]
fn a_relay_that_never_goes_direct_still_shares_its_nodes_direct_paths() {
    use tunnelgate_proto::rendezvous;

    let host = Host::new("tnv");
    let etcd = support::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let never = cluster_relay_for(&host, &etcd, d, "relay-a", &["--direct", "never"]);
    support::share_ca(&d.join("relay-a"), &d.join("relay-b"));
    let prefer = cluster_relay_for(&host, &etcd, d, "relay-b", &[]);
    // A node whose one session goes to the relay that never goes direct.
    let members = support::members(&["relay-a", "relay-b"]);
    let node = (0..100)
        .map(|i| format!("nv{i}"))
        .find(|n| rendezvous::choose(n, &members, 1)[0].as_str() == "relay-a")
        .unwrap();
    docker_tls(&host, &never, &node, d, &never.token().unwrap(), 2376);
    let dockerd = NodeDockerd::start(
        &host,
        &d.join("dockerd"),
        &d.join(format!("{node}-tls")),
        2376,
    )
    .unwrap();
    let _agent = agent_on(&host, &never, &node, &dockerd.socket(), d)
        .arg("--relay-sessions")
        .arg("1")
        .arg("--direct-endpoint")
        .arg(&format!("tcp://{}:2376", host.host_ip))
        .spawn()
        .unwrap();
    never.wait_for_node(&node).unwrap();
    // The holder shares the node's advertisement though it never probes:
    // the other relay learns it, probes it and goes direct.
    wait_route_of(
        &prefer,
        &node,
        |r| r == "direct",
        "direct from the other relay",
    );
    assert_eq!(route_of(&never, &node), "local", "never means never");
}
