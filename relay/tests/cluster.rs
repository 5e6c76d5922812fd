//! The cluster with real parts: a real etcd, several real relay
//! processes sharing one CA, real agents holding sessions to one or two of
//! them, the real docker CLI and plain HTTP clients calling through
//! another, against the real dockerd.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{
    docker_endpoint, http_get_full, relay_bin, scenarios, share_ca, AgentCmd, ApiClient, Docker,
    Relay,
};
use tunnelgate_proto::rendezvous::choose;
use tunnelgate_session::tls::{self, Identity, Trust};
use tunnelgate_session::Session;

const ROUTE: &str = "x-tunnelgate-route";

fn cluster_relay(etcd: &Etcd, state: &Path, id: &str) -> Relay {
    cluster_relay_with_lease(etcd, state, id, "2s")
}

fn cluster_relay_with_lease(etcd: &Etcd, state: &Path, id: &str, lease: &str) -> Relay {
    cluster_relay_with(etcd, state, id, lease, &[])
}

fn cluster_relay_with(etcd: &Etcd, state: &Path, id: &str, lease: &str, extra: &[&str]) -> Relay {
    let mut args = etcd.relay_args(id, lease);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::start_with(state, &args).unwrap_or_else(|e| panic!("relay {id} does not start: {e:#}"))
}

/// Waits until `relay` answers a call to `node` with route `route`
/// (`peer=` for any peer).
fn wait_route(relay: &Relay, node: &str, route: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((status, head, _)) = http_get_full(relay.api, &format!("/nodes/{node}/_ping")) {
            // A route ending in `=` matches any relay: `peer=`.
            let want = format!("{ROUTE}: {route}");
            let matches = |l: &str| match route.ends_with('=') {
                true => l.to_ascii_lowercase().starts_with(&want),
                false => l.eq_ignore_ascii_case(&want),
            };
            if status == 200 && head.lines().any(matches) {
                return;
            }
            last = format!("{status} {head}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no call to {node} went {route} within 20 s; last answer: {last}\nrelay log:\n{}",
        relay.log()
    );
}

#[test]
fn a_call_through_any_relay_reaches_a_node_that_another_relay_holds() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut relays = vec![cluster_relay(&etcd, &dir.path().join("a"), "relay-a")];
    for (other, id) in [("b", "relay-b"), ("c", "relay-c")] {
        share_ca(&dir.path().join("a"), &dir.path().join(other));
        relays.push(cluster_relay(&etcd, &dir.path().join(other), id));
    }

    // One session: the agent starts at relay a and settles on the relay
    // its node id hashes to.
    let token = relays[0].token().unwrap();
    let _agent = AgentCmd::new(
        &relays[0],
        "far",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .arg("--relay-sessions")
    .arg("1")
    .spawn()
    .unwrap();
    let held = settled_holders(&etcd, "far", 1);
    let ids = ["relay-a", "relay-b", "relay-c"];
    let holder = ids.iter().position(|id| *id == held[0]).unwrap();
    let (a, c) = (&relays[holder], &relays[(holder + 1) % 3]);
    a.wait_for_node("far").unwrap();
    wait_route(a, "far", "local");
    wait_route(c, "far", &format!("peer={}", held[0]));

    // The registry holds the three members and the node's location.
    let keys = etcd.keys("/tunnelgate/v1/").unwrap();
    let location = format!("/tunnelgate/v1/nodes/default/far/{}", held[0]);
    for key in [
        "/tunnelgate/v1/relays/relay-a",
        "/tunnelgate/v1/relays/relay-b",
        "/tunnelgate/v1/relays/relay-c",
        &location,
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }

    // The whole docker CLI scenario list, through the holding relay and
    // through the peer hop; the timing table is a report, not a check.
    let local = scenarios::run_all(&Docker::new(a.docker_host("far")))
        .unwrap_or_else(|e| panic!("scenarios fail through relay a: {e:#}"));
    let peer = scenarios::run_all(&Docker::new(c.docker_host("far"))).unwrap_or_else(|e| {
        panic!(
            "scenarios fail through the peer hop: {e:#}\nrelay log:\n{}",
            c.log()
        )
    });
    let secs = |d: &Duration| d.as_secs_f64();
    eprintln!(
        "{:<34} {:>9} {:>9} {:>6}",
        "scenario", "local s", "peer s", "ratio"
    );
    for ((name, l), (_, p)) in local.iter().zip(&peer) {
        eprintln!(
            "{name:<34} {:>9.2} {:>9.2} {:>6.2}",
            secs(l),
            secs(p),
            secs(p) / secs(l)
        );
    }

    // The holder counted the forwarding relay's connection as a peer's.
    let accepted = a.metric("tunnelgate_relay_peer_handshakes_total{result=\"accepted\"}");
    assert!(
        accepted >= 1,
        "the holder counted no accepted peer handshake"
    );

    // A node nobody holds is unknown on every relay, as on one.
    let (status, _, body) = http_get_full(c.api, "/nodes/nowhere/_ping").unwrap();
    assert_eq!(status, 404, "{body}");
}

#[test]
fn the_peer_port_refuses_node_client_and_foreign_certificates() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = cluster_relay(&etcd, &dir.path().join("a"), "relay-a");
    let peer = a.peer.expect("a cluster relay has a peer port");
    let ca = tls::certs_from_pem(&std::fs::read_to_string(dir.path().join("a/ca.pem")).unwrap())
        .unwrap()
        .remove(0);
    let node_pem = {
        let token = a.token().unwrap();
        let _agent = AgentCmd::new(
            &a,
            "nosy",
            &docker_endpoint(),
            &dir.path().join("agent"),
            Some(&token),
        )
        .spawn()
        .unwrap();
        a.wait_for_node("nosy").unwrap();
        std::fs::read_to_string(dir.path().join("agent/node.pem")).unwrap()
    };
    let client_dir = dir.path().join("client");
    a.client_cert("default", "ci", &client_dir).unwrap();
    let client_cert = std::fs::read_to_string(client_dir.join("cert.pem")).unwrap();
    let client_key = std::fs::read_to_string(client_dir.join("key.pem")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let try_peer = |identity: Identity, trust: Trust| {
        rt.block_on(async {
            let mut config = tls::client_config(trust, Some(identity)).unwrap();
            config.alpn_protocols = vec![tls::PEER_ALPN.to_vec()];
            let quic = tunnelgate_session::quic::peer_client_config(config).unwrap();
            let endpoint = tunnelgate_session::quic::client_endpoint(peer).unwrap();
            let conn = tokio::time::timeout(
                Duration::from_secs(10),
                endpoint.connect_with(quic, peer, "relay-a").unwrap(),
            )
            .await
            .expect("the peer port answers");
            match conn {
                // The handshake may complete (the certificate is from the
                // CA); the relay then closes the connection unserved.
                Ok(conn) => {
                    let session = Session::from_quic(conn);
                    let served = async {
                        let mut s = session.open_stream().await?;
                        s.write_message(&tunnelgate_proto::message::StreamReply::Accept, 1024)
                            .await?;
                        let mut buf = [0u8; 1];
                        tokio::io::AsyncReadExt::read(&mut s, &mut buf).await?;
                        anyhow::Ok(buf)
                    };
                    tokio::time::timeout(Duration::from_secs(10), served)
                        .await
                        .expect("the relay neither served nor closed")
                        .is_ok()
                }
                Err(_) => false,
            }
        })
    };
    let ca_trust = || Trust::Ca(ca.clone());
    assert!(
        !try_peer(
            Identity::from_pem(&node_pem, &node_pem).unwrap(),
            ca_trust()
        ),
        "a node certificate was served on the peer port"
    );
    assert!(
        !try_peer(
            Identity::from_pem(&client_cert, &client_key).unwrap(),
            ca_trust()
        ),
        "a client certificate was served on the peer port"
    );
    // Another installation's relay certificate.
    let other = Relay::start(&dir.path().join("foreign")).unwrap();
    drop(other);
    let foreign_ca_dir = dir.path().join("foreign");
    let foreign_client = dir.path().join("foreign-client");
    std::process::Command::new(support::relay_bin())
        .args(["client-cert", "create", "--tenant", "default", "--out"])
        .arg(&foreign_client)
        .arg("--state-dir")
        .arg(&foreign_ca_dir)
        .output()
        .unwrap();
    let fc = std::fs::read_to_string(foreign_client.join("cert.pem")).unwrap();
    let fk = std::fs::read_to_string(foreign_client.join("key.pem")).unwrap();
    assert!(
        !try_peer(Identity::from_pem(&fc, &fk).unwrap(), ca_trust()),
        "another installation's certificate was served on the peer port"
    );
    let log = a
        .wait_log("refused a peer connection", Duration::from_secs(10))
        .unwrap();
    assert!(log.contains("not a relay certificate"), "{log}");
    // The operator sees them apart: two of this CA's certificates in the
    // wrong role, one certificate of another CA.
    let count = |result: &str| {
        a.metric(&format!(
            "tunnelgate_relay_peer_handshakes_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!(
        (count("refused"), count("tls_failed"), count("accepted")),
        (2, 1, 0),
        "peer handshakes counted as (refused, tls_failed, accepted)"
    );
    let log = a.log();
    assert!(
        log.contains("peer handshake failed: a certificate not of this installation's CA"),
        "{log}"
    );
}

/// Waits until the registry's keys under `prefix` satisfy `ok`.
fn wait_keys(etcd: &Etcd, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = etcd.keys("/tunnelgate/v1/").unwrap_or_default();
        if ok(&keys) {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the registry holds {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn routes_outlive_an_etcd_outage_and_a_dead_relays_entries_go_with_its_lease() {
    let mut etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = cluster_relay(&etcd, &dir.path().join("a"), "relay-a");
    share_ca(&dir.path().join("a"), &dir.path().join("c"));
    let second = cluster_relay(&etcd, &dir.path().join("c"), "relay-c");
    let token = first.token().unwrap();
    let _agent = AgentCmd::new(
        &first,
        "steady",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .arg("--relay-sessions")
    .arg("1")
    .spawn()
    .unwrap();
    // `a` holds the node's one session, `c` routes to it.
    let held = settled_holders(&etcd, "steady", 1);
    let (mut a, c) = match held[0].as_str() {
        "relay-a" => (first, second),
        _ => (second, first),
    };
    let holder = held[0].clone();
    a.wait_for_node("steady").unwrap();
    wait_route(&c, "steady", &format!("peer={holder}"));

    // etcd away for 30 s: both relays keep serving, from their sessions
    // and their last-known routes. Bounded in count and time. A host
    // enrolling meanwhile is refused for now and keeps trying.
    let late_token = a.token().unwrap();
    etcd.stop();
    let mut late = AgentCmd::new(
        &a,
        "late",
        &docker_endpoint(),
        &dir.path().join("late"),
        Some(&late_token),
    )
    .arg("--relay-sessions")
    .arg("1")
    .spawn()
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let (mut calls, mut failed) = (0, Vec::new());
    while Instant::now() < until && calls < 10_000 {
        for relay in [&a, &c] {
            match http_get_full(relay.api, "/nodes/steady/_ping") {
                Ok((200, _, _)) => {}
                other => failed.push(format!("{other:?}")),
            }
            calls += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed while etcd was away: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        a.log().contains("etcd unreachable"),
        "the holding relay did not say etcd was away"
    );
    assert!(
        a.log().contains("cannot check or record an enrolment"),
        "the enrolling agent was not refused while etcd was away:\n{}",
        a.log()
    );
    assert!(
        late.is_running(),
        "the agent enrolling while etcd was away gave up"
    );

    // Back: both relays register again by themselves.
    etcd.restart().unwrap();
    let back = Instant::now();
    let location = format!("/tunnelgate/v1/nodes/default/steady/{holder}");
    let registered = |k: &[String]| {
        [
            "/tunnelgate/v1/relays/relay-a",
            "/tunnelgate/v1/relays/relay-c",
            location.as_str(),
        ]
        .iter()
        .all(|want| k.iter().any(|have| have == want))
    };
    wait_keys(&etcd, "after etcd came back", registered);
    // The keys seen at once may be the old ones, whose leases etcd
    // restored; those run out 2 s later. Still there well after that
    // means the relays registered again under new, kept-alive leases.
    std::thread::sleep(Duration::from_secs(5));
    wait_keys(&etcd, "5 s after etcd came back", registered);
    assert!(a.log().contains("registered in etcd"), "{}", a.log());
    println!(
        "registered again after etcd came back; still there {:?} later",
        back.elapsed()
    );
    wait_route(&c, "steady", &format!("peer={holder}"));
    // Enrolled now, on whichever relay its node id hashes to.
    wait_holders(
        &etcd,
        "late",
        "the agent that enrolled while etcd was away",
        |h| h.len() == 1,
    );
    late.terminate();

    // The holder dies without leaving: its entries go with its 2 s lease.
    // The agent then moves to the relay that is left; until it has, the
    // node is offline there, never routed to the dead relay.
    a.proc.kill();
    let died = Instant::now();
    wait_keys(&etcd, "after the holding relay died", |k| {
        !k.iter().any(|have| have.ends_with(&format!("/{holder}")))
    });
    println!(
        "{holder}'s entries gone {:?} after it died (lease 2 s)",
        died.elapsed()
    );
    wait_route(&c, "steady", "local");
    println!(
        "the agent moved to the relay left {:?} after the holder died",
        died.elapsed()
    );
}

/// The relays that hold a session of `node`, as the registry lists them.
fn holders(etcd: &Etcd, node: &str) -> Vec<String> {
    tenant_holders(etcd, "default", node)
}

/// The relays that hold a session of `tenant`'s `node`.
fn tenant_holders(etcd: &Etcd, tenant: &str, node: &str) -> Vec<String> {
    let prefix = format!("/tunnelgate/v1/nodes/{tenant}/{node}/");
    let mut held: Vec<String> = etcd
        .keys(&prefix)
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    held.sort();
    held
}

/// Waits until `node`'s holders satisfy `ok`; returns them.
fn wait_holders(
    etcd: &Etcd,
    node: &str,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let held = holders(etcd, node);
        if ok(&held) {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {node} is held by {held:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `node` has `n` holders and they stayed the same for 3 s:
/// an agent first welcomed by the relay it was given moves on to the
/// relays its node id hashes to within a couple of seconds.
fn settled_holders(etcd: &Etcd, node: &str, n: usize) -> Vec<String> {
    for _ in 0..10 {
        let held = wait_holders(etcd, node, "the agent's sessions", |h| h.len() == n);
        std::thread::sleep(Duration::from_secs(3));
        if holders(etcd, node) == held {
            return held;
        }
    }
    panic!("{node}'s sessions never settled on {n} relays");
}

/// The route header of a call to `node` through `relay`.
fn route_of(relay: &Relay, node: &str) -> String {
    let (status, head, body) = http_get_full(relay.api, &format!("/nodes/{node}/_ping")).unwrap();
    assert_eq!(status, 200, "{body}");
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{ROUTE}: ")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn an_agent_on_two_relays_loses_no_call_when_one_is_killed() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = ["relay-a", "relay-b", "relay-c"];
    let mut relays: Vec<Option<Relay>> = Vec::new();
    for id in ids {
        let state = dir.path().join(id);
        if id != "relay-a" {
            share_ca(&dir.path().join("relay-a"), &state);
        }
        // A lease longer than a peer connection takes to notice a dead
        // relay: for seconds the registry still lists the dead holder,
        // and the calls must go to the live one meanwhile.
        relays.push(Some(cluster_relay_with_lease(&etcd, &state, id, "8s")));
    }
    // A token made through relay a; the agent starts from relay b's
    // address only and learns the others from its welcome.
    let token = relays[0].as_ref().unwrap().token().unwrap();
    let _agent = AgentCmd::new(
        relays[1].as_ref().unwrap(),
        "pair",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn_logged(&dir.path().join("agent.log"))
    .unwrap();
    let held = settled_holders(&etcd, "pair", 2);
    let spare = ids
        .iter()
        .position(|id| !held.iter().any(|h| h == id))
        .unwrap();
    let x = relays[spare].as_ref().unwrap();
    wait_route(x, "pair", "peer=");
    let victim_id = route_of(x, "pair")
        .strip_prefix("peer=")
        .unwrap()
        .to_owned();
    let victim = ids.iter().position(|id| *id == victim_id).unwrap();
    println!(
        "held by {held:?}; calls go through {} to {victim_id}",
        ids[spare]
    );

    // Short calls through the spare relay, one after another, while the
    // relay they go to is killed. Bounded in count and time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = x.api;
    let caller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut calls, mut failed, mut routes) =
                (0u32, Vec::new(), std::collections::BTreeSet::new());
            let until = Instant::now() + Duration::from_secs(90);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < until
                && calls < 20_000
            {
                match http_get_full(api, "/nodes/pair/containers/json") {
                    Ok((200, head, _)) => {
                        if let Some(r) = head
                            .lines()
                            .find_map(|l| l.strip_prefix(&format!("{ROUTE}: ")))
                        {
                            routes.insert(r.trim().to_owned());
                        }
                    }
                    other => failed.push((calls, format!("{other:?}"))),
                }
                calls += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (calls, failed, routes)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    relays[victim].as_mut().unwrap().proc.kill();
    let killed = Instant::now();
    // Its entries go with its lease (8 s).
    wait_keys(&etcd, "after the relay was killed", |k| {
        !k.iter().any(|key| key.ends_with(&format!("/{victim_id}")))
    });
    let gone = killed.elapsed();
    // The agent is back to two sessions, on the relays that live.
    let again = wait_holders(&etcd, "pair", "two sessions again after the kill", |h| {
        h.len() == 2 && !h.contains(&victim_id)
    });
    let back = killed.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed, routes) = caller.join().unwrap();
    println!(
        "{calls} calls, {} failed {:?}; routes {routes:?}; {victim_id}'s entries gone {gone:?} after the kill; two sessions again ({again:?}) after {back:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        failed.len() <= 1,
        "calls failed after the one in flight on the dead relay: {failed:?}\nrelay log:\n{}",
        relays[spare].as_ref().unwrap().log()
    );
    assert!(calls > 50, "the caller made only {calls} calls");
    let agent_log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        holders(&etcd, "pair").len() == 2,
        "the agent does not hold two sessions at the end; its log:\n{agent_log}"
    );
}

/// A relay that authenticates every call, with the CA read from `ca`
/// (as a mounted secret), never from its state dir.
fn secure_cluster_relay(etcd: &Etcd, state: &Path, id: &str, ca: &Path) -> Relay {
    cluster_relay_with(
        etcd,
        state,
        id,
        "2s",
        &[
            "--api-tls",
            "--api-auth",
            "required",
            "--ca-dir",
            ca.to_str().unwrap(),
        ],
    )
}

#[test]
fn tokens_keys_and_tenants_hold_across_relays() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let made = Command::new(relay_bin())
        .args(["ca", "create", "--out"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let ca_files = || ["ca.pem", "ca-key.pem"].map(|f| std::fs::read(ca.join(f)).unwrap());
    let before = ca_files();
    let a = secure_cluster_relay(&etcd, &dir.path().join("a"), "relay-a", &ca);
    let b = secure_cluster_relay(&etcd, &dir.path().join("b"), "relay-b", &ca);
    // The CA is read where it is mounted, never copied or changed: no CA
    // key lands in a relay's state dir.
    for state in [&a.state, &b.state] {
        assert!(!state.join("ca-key.pem").exists());
        assert!(!state.join("ca.pem").exists());
    }
    assert_eq!(ca_files(), before);
    // A token made through relay a enrols an agent at relay b. Its node
    // id ranks relay-b first among the two (rendezvous hashing), so the
    // agent stays where it enrolled; with "web", which ranks relay-a
    // first, it moved to a whenever the membership reached it before
    // the checks below, and they found it held by relay-a.
    let token = a
        .cli_last_line(&["token", "create", "--tenant", "acme"])
        .unwrap();
    let _agent = AgentCmd::new(
        &b,
        "edge",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .arg("--relay-sessions")
    .arg("1")
    .arg("--label")
    .arg("env=edge")
    .spawn_logged(&dir.path().join("agent.log"))
    .unwrap();
    let acme_key = a
        .cli_last_line(&["api-key", "create", "--tenant", "acme"])
        .unwrap();
    let at_a = ApiClient::new(a.api, &ca).unwrap().with_bearer(&acme_key);
    let at_b = ApiClient::new(b.api, &ca).unwrap().with_bearer(&acme_key);
    at_b.wait_for_node("edge").unwrap_or_else(|e| {
        panic!(
            "{e}; agent log:\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        )
    });
    // A key made through a works at b, and the call through a reaches
    // the node b holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match at_a.get("/nodes/edge/_ping") {
            Ok((200, body)) if body == "OK" => break,
            other => assert!(Instant::now() < deadline, "a call through a: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(at_b.get("/nodes/edge/_ping").unwrap().0, 200);

    // Another tenant's caller at a: 404 exactly like a node that does
    // not exist.
    let globex_key = b
        .cli_last_line(&["api-key", "create", "--tenant", "globex"])
        .unwrap();
    let globex_at_a = ApiClient::new(a.api, &ca).unwrap().with_bearer(&globex_key);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        match globex_at_a.get("/nodes/edge/_ping").unwrap() {
            (401, _) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => break other,
        }
    };
    let (missing_status, missing_body) = globex_at_a.get("/nodes/nosuch/_ping").unwrap();
    assert_eq!(
        (status, missing_status),
        (404, 404),
        "{body} / {missing_body}"
    );
    assert_eq!(
        body.replace("edge", "X"),
        missing_body.replace("nosuch", "X")
    );

    // The acme key revoked through b is refused at a.
    let key_id = acme_key.split('.').nth(1).unwrap();
    b.cli(&["api-key", "revoke", key_id]).unwrap();
    let revoked = Instant::now();
    let deadline = revoked + Duration::from_secs(10);
    loop {
        let (status, body) = at_a.get("/nodes/edge/_ping").unwrap();
        if status == 401 {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a still accepts the key revoked through b: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "the key revoked through b was refused at a {:?} later",
        revoked.elapsed()
    );

    // Roles hold at every relay: a viewer key made through a's API reads
    // at b and is refused a write there; revoked through a's API, b
    // refuses it within 2 s.
    let admin_key = a
        .cli_last_line(&["api-key", "create", "--tenant", "acme", "--role", "admin"])
        .unwrap();
    let admin_at_a = ApiClient::new(a.api, &ca).unwrap().with_bearer(&admin_key);
    let deadline = Instant::now() + Duration::from_secs(10);
    let made = loop {
        match admin_at_a
            .call("POST", "/v1/keys?role=viewer&name=help-desk")
            .unwrap()
        {
            (201, body) => break body,
            (401, _) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("POST /v1/keys at a: {other:?}"),
        }
    };
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let viewer_at_b = ApiClient::new(b.api, &ca)
        .unwrap()
        .with_bearer(made["key"].as_str().unwrap());
    let made_at = Instant::now();
    while viewer_at_b.get("/v1/nodes").unwrap().0 != 200 {
        assert!(
            made_at.elapsed() < Duration::from_secs(2),
            "b does not know the new key"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = viewer_at_b.call("POST", "/v1/tokens").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("has the role viewer"), "{body}");
    let id = made["id"].as_str().unwrap();
    let (status, body) = admin_at_a
        .call("DELETE", &format!("/v1/keys/{id}"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let revoked = Instant::now();
    loop {
        let (status, body) = viewer_at_b.get("/v1/nodes").unwrap();
        if status == 401 {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "b still takes the key revoked through a's API: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Scopes hold where the node is not: at a, which knows b's node by
    // the facts b shares, a key scoped to its labels sees it, and one
    // scoped elsewhere finds it missing.
    let scoped = |scope: &str| {
        let key = a
            .cli_last_line(&["api-key", "create", "--tenant", "acme", "--scope", scope])
            .unwrap();
        ApiClient::new(a.api, &ca).unwrap().with_bearer(&key)
    };
    let (edge, core) = (scoped("env=edge"), scoped("env=core"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.get("/nodes/edge/_ping").unwrap().0 != 200 {
        assert!(
            Instant::now() < deadline,
            "a scoped key at a never reached edge"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, listed) = edge.get("/v1/nodes?all=1").unwrap();
    assert!(status == 200 && listed.contains("\"edge\""), "{listed}");
    // Made after edge's key, core's may reach a's cache a moment later.
    while core.get("/v1/whoami").unwrap().0 == 401 {
        assert!(Instant::now() < deadline, "a never knew core's key");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = core.get("/nodes/edge/_ping").unwrap();
    let (_, missing) = core.get("/nodes/nosuch/_ping").unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body.replace("edge", "X"), missing.replace("nosuch", "X"));
    assert_eq!(core.get("/v1/nodes?all=1").unwrap().1, "[]");

    // A node revoked through a loses its session at b, and b withdraws
    // its claim at once rather than when its lease ends. Under load the
    // agent was once found held by both relays here, as a make-before-
    // break move leaves it for a moment: wait for it to settle on b.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tenant_holders(&etcd, "acme", "edge") != ["relay-b"] {
        assert!(
            Instant::now() < deadline,
            "edge is held by {:?}, not relay-b alone; agent log:\n{}",
            tenant_holders(&etcd, "acme", "edge"),
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.cli(&["node", "revoke", "acme/edge"]).unwrap();
    b.wait_log("node revoked by an operator", Duration::from_secs(10))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tenant_holders(&etcd, "acme", "edge").is_empty() {
        assert!(
            Instant::now() < deadline,
            "b still claims the revoked node: {:?}",
            tenant_holders(&etcd, "acme", "edge")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One short call as a load balancer that reads `/readyz` would send it:
/// to the next ready relay, and on to another when the connection is
/// refused or closed before any answer (safe for an LB to retry: the
/// relay took nothing). `Err` is a call that failed.
fn balanced_call(
    relays: &[(SocketAddr, SocketAddr)],
    turn: &mut usize,
    path: &str,
) -> Result<(), String> {
    for _ in 0..relays.len() * 3 {
        *turn = (*turn + 1) % relays.len();
        let (api, metrics) = relays[*turn];
        if !matches!(support::http_get(metrics, "/readyz"), Ok((200, _))) {
            continue;
        }
        match http_get_full(api, path) {
            Ok((200, _, _)) => return Ok(()),
            Ok((status, _, body)) => return Err(format!("{status} from {api}: {body}")),
            // Refused, reset or closed before a status line.
            Err(_) => continue,
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    Err("no relay ready".into())
}

#[test]
fn a_rolling_restart_of_every_relay_fails_no_short_call() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = ["relay-a", "relay-b", "relay-c"];
    let mut relays = Vec::new();
    for id in ids {
        let state = dir.path().join(id);
        if id != "relay-a" {
            share_ca(&dir.path().join("relay-a"), &state);
        }
        relays.push(cluster_relay(&etcd, &state, id));
    }
    let token = relays[0].token().unwrap();
    let _agent = AgentCmd::new(
        &relays[0],
        "roll",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn_logged(&dir.path().join("agent.log"))
    .unwrap();
    settled_holders(&etcd, "roll", 2);

    // Long streams through relay c, the last to restart: `logs -f` of a
    // container that prints a numbered line every 50 ms, and `exec -i cat`.
    let d = Docker::new(relays[2].docker_host("roll"));
    let name = format!("roll-{}", std::process::id());
    d.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done",
    ])
    .unwrap();
    let mut logs = d
        .cmd(["logs", "-f", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs_out = support::LineReader::new(logs.stdout.take().unwrap());
    logs_out.wait_for("line-", Duration::from_secs(20)).unwrap();
    let mut exec = d
        .cmd(["exec", "-i", &name, "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exec_in = exec.stdin.take().unwrap();
    let exec_out = support::LineReader::new(exec.stdout.take().unwrap());
    std::io::Write::write_all(&mut exec_in, b"echo-0\n").unwrap();
    exec_out
        .wait_for("echo-0", Duration::from_secs(20))
        .unwrap();

    // Short calls all along, through whichever relays are ready.
    let addrs: Vec<_> = relays.iter().map(|r| (r.api, r.metrics)).collect();
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(addrs));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut calls, mut failed, mut turn) = (0u32, Vec::new(), 0);
            let until = Instant::now() + Duration::from_secs(180);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < until
                && calls < 50_000
            {
                let now: Vec<_> = addrs.lock().unwrap().clone();
                if let Err(e) = balanced_call(&now, &mut turn, "/nodes/roll/containers/json") {
                    failed.push((calls, e));
                }
                calls += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (calls, failed)
        })
    };

    // Restart each relay in turn: SIGTERM, wait for it to exit, start it
    // again on its ports and state dir, wait until the agent has its two
    // sessions again.
    for i in 0..relays.len() {
        let (api, agent) = (relays[i].api.to_string(), relays[i].agent.to_string());
        let state = relays[i].state.clone();
        let began = Instant::now();
        relays[i].proc.terminate();
        let deadline = Instant::now() + Duration::from_secs(30);
        while relays[i].proc.is_running() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM",
                ids[i]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let drained = began.elapsed();
        let log = relays[i].log();
        relays[i] = Relay::start_args(
            &state,
            &api,
            &agent,
            &[
                "--registry",
                &etcd.registry(),
                "--relay-id",
                ids[i],
                "--peer-listen",
                "127.0.0.1:0",
                "--registry-lease-ttl",
                "2s",
            ],
        )
        .unwrap();
        addrs.lock().unwrap()[i] = (relays[i].api, relays[i].metrics);
        let held = wait_holders(&etcd, "roll", "two sessions after a restart", |h| {
            h.len() == 2
        });
        let how = log
            .lines()
            .filter(|l| {
                l.contains("every agent moved")
                    || l.contains("before every agent moved")
                    || l.contains("ending long streams")
            })
            .map(|l| l.split("tunnelgate_relay").last().unwrap_or(l).trim())
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "{}: drained and exited in {drained:?} ({how}), back; node held by {held:?} {:?} after the SIGTERM",
            ids[i],
            began.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed) = caller.join().unwrap();
    println!(
        "{calls} short calls during the rolling restart, {} failed",
        failed.len()
    );
    if std::env::var_os("TUNNELGATE_TEST_AGENT_LOG").is_some() {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
    }
    assert!(
        failed.is_empty(),
        "short calls failed during the rolling restart: {:?}",
        &failed[..failed.len().min(5)]
    );

    // The long streams through relay c: each carries on or ended
    // cleanly when its relay restarted.
    let logs_ended = logs.try_wait().unwrap();
    match exec.try_wait().unwrap() {
        None => {
            std::io::Write::write_all(&mut exec_in, b"echo-1\n").unwrap();
            exec_out.wait_for("echo-1", Duration::from_secs(5)).unwrap();
            println!("docker exec -i carries on");
        }
        Some(status) => {
            let mut err = String::new();
            std::io::Read::read_to_string(exec.stderr.as_mut().unwrap(), &mut err).unwrap();
            println!("docker exec -i ended when its relay restarted: {status}, stderr {err:?}");
            assert!(
                !err.contains("unexpected EOF") && !err.contains("broken pipe"),
                "docker exec -i was cut: {err}"
            );
        }
    }
    drop(exec_in);
    // Removing the container ends `logs -f`; every line it gave is whole
    // and in order.
    Docker::new(relays[0].docker_host("roll"))
        .ok(&["rm", "-f", &name])
        .unwrap();
    let (mut last, mut lines) = (None, 0);
    while let Some(line) = logs_out.next_within(Duration::from_secs(5)) {
        let n: u64 = line
            .trim()
            .strip_prefix("line-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a truncated or garbled log line: {line:?}"));
        if let Some(prev) = last {
            assert_eq!(n, prev + 1, "log lines out of order or lost");
        }
        last = Some(n);
        lines += 1;
        assert!(lines < 1_000_000, "logs -f does not end");
    }
    let status = logs.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(logs.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        status.success(),
        "docker logs -f ended with {status}: {err}"
    );
    println!(
        "docker logs -f: {lines} whole lines in order after the first; {}",
        match logs_ended {
            Some(_) => "it ended cleanly when its relay restarted",
            None => "it carried on through the rolling restart",
        }
    );
    let _ = exec.kill();
    // The agent settles on two sessions (a move in progress briefly
    // holds three: the new one is made before the old one goes).
    wait_holders(&etcd, "roll", "the agent ends with two sessions", |h| {
        h.len() == 2
    });
    std::thread::sleep(Duration::from_secs(5));
    let held = wait_holders(&etcd, "roll", "two sessions, settled", |h| h.len() == 2);
    println!("settled on {held:?}");
}

/// A relay over its handshake budget completes a few handshakes beyond it
/// only to say which relay to try instead: agents that know only it (a
/// first contact in a reconnect storm) learn the cluster from the reply
/// and settle on the other relay instead of waiting their turn.
#[test]
fn a_busy_relay_sends_the_agents_it_refuses_to_another() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = cluster_relay_with(
        &etcd,
        &dir.path().join("a"),
        "relay-a",
        "2s",
        &["--max-agent-handshakes-per-sec", "1"],
    );
    share_ca(&dir.path().join("a"), &dir.path().join("b"));
    let b = cluster_relay(&etcd, &dir.path().join("b"), "relay-b");
    let token = a.token().unwrap();
    // Nodes whose own ranking puts relay a first: left to themselves they
    // would all wait for a; only the busy reply sends them to b.
    let members = support::members(&["relay-a", "relay-b"]);
    let nodes: Vec<String> = (0..)
        .map(|i| format!("storm-{i}"))
        .filter(|n| choose(n, &members, 1)[0].as_str() == "relay-a")
        .take(8)
        .collect();
    let _agents: Vec<_> = nodes
        .iter()
        .map(|node| {
            AgentCmd::new(
                &a,
                node,
                &docker_endpoint(),
                &dir.path().join(node),
                Some(&token),
            )
            .arg("--relay-sessions")
            .arg("1")
            .spawn_logged(&dir.path().join(format!("{node}.log")))
            .unwrap()
        })
        .collect();
    for node in &nodes {
        wait_holders(&etcd, node, "one session", |h| h.len() == 1);
    }
    let told = a.metric("tunnelgate_relay_agent_handshakes_total{result=\"busy\"}");
    assert!(told >= 1, "relay a never told an agent it was busy");
    let logged = |node: &String, what: &dyn Fn(&str) -> bool| {
        std::fs::read_to_string(dir.path().join(format!("{node}.log")))
            .unwrap_or_default()
            .lines()
            .any(what)
    };
    let moved: Vec<&String> = nodes
        .iter()
        .filter(|n| {
            logged(n, &|l| {
                l.contains("relay busy") && l.contains("elsewhere=true")
            })
        })
        .collect();
    assert!(!moved.is_empty(), "no agent went elsewhere when told");
    // Served there: welcomed by relay b. (Once relay a has room again
    // such an agent may move back to it, its first choice, so where it
    // is at the end says nothing.)
    let served_at_b = moved
        .iter()
        .filter(|n| {
            logged(n, &|l| {
                l.contains("connected to relay") && l.contains("relay_id=relay-b")
            })
        })
        .count();
    assert!(
        served_at_b >= 1,
        "no agent that ranks relay a first was served by relay b"
    );
    println!(
        "relay a told {told} handshakes it was busy; {} agents went elsewhere; {served_at_b} of them were served by relay b",
        moved.len(),
    );
    drop(b);
}

#[test]
fn the_fleet_of_any_relay_places_onto_a_node_another_relay_holds() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = cluster_relay(&etcd, &dir.path().join("a"), "relay-a");
    share_ca(&dir.path().join("a"), &dir.path().join("b"));
    let b = cluster_relay(&etcd, &dir.path().join("b"), "relay-b");
    let token = a.token().unwrap();
    let _agent = AgentCmd::new(
        &a,
        "far",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .arg("--relay-sessions")
    .arg("1")
    .arg("--label")
    .arg("zone=far-east")
    .spawn()
    .unwrap();
    let held = settled_holders(&etcd, "far", 1);
    let (holder, other) = match held[0].as_str() {
        "relay-a" => (&a, &b),
        _ => (&b, &a),
    };
    holder.wait_for_node("far").unwrap();
    wait_route(other, "far", "peer=");

    // The relay that does not hold it lists its facts as its holder
    // shares them through the registry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let far = loop {
        let (_, body) = support::http_get(other.api, "/v1/nodes?all=1").unwrap();
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
        let far = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == "far")
            .cloned()
            .unwrap();
        if far["labels"]["zone"] == "far-east" || Instant::now() > deadline {
            break far;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(far["labels"]["zone"], "far-east", "{far}");
    assert_eq!(far["relay_id"], held[0].as_str(), "{far}");
    assert_eq!(far["status"], "connected", "{far}");
    assert!(
        far["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{far}"
    );
    assert!(far["docker_version"].is_string(), "{far}");

    // Through the relay that does not hold it, the fleet places by name.
    let fleet = Docker::new(format!("tcp://{}/fleet", other.api));
    let name = format!("cluster-fleet-{}", std::process::id());
    let out = fleet
        .output_with_stdin(
            &[
                "create",
                "--network",
                "none",
                "--name",
                &name,
                "-e",
                "constraint:node==far",
                "-e",
                "constraint:zone==far-east",
                "busybox",
                "true",
            ],
            b"",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        other.log()
    );
    let on_daemon = Docker::direct()
        .ok(&["inspect", "--format", "{{.Name}}", &name])
        .unwrap();
    assert_eq!(on_daemon.trim(), format!("/{name}"));
    let listed = fleet
        .ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Names}}",
        ])
        .unwrap();
    assert_eq!(listed.trim(), format!("far/{name}"));
    let info = fleet.ok(&["info"]).unwrap();
    assert!(
        info.contains(" far: online") && info.contains("peer"),
        "{info}"
    );
    fleet.ok(&["rm", &name]).unwrap();
    assert!(Docker::direct()
        .output_with_stdin(&["inspect", &name], b"")
        .map(|o| !o.status.success())
        .unwrap());
}
