//! The cluster with real parts: a real etcd, several real relay
//! processes sharing one CA, a real agent on one of them, the real docker
//! CLI calling through another, against the real dockerd.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{docker_endpoint, http_get_full, scenarios, AgentCmd, Docker, Relay};
use tunnelgate_session::tls::{self, Identity, Trust};
use tunnelgate_session::Session;

const ROUTE: &str = "x-tunnelgate-route";

fn cluster_relay(etcd: &Etcd, state: &Path, id: &str) -> Relay {
    Relay::start_with(
        state,
        &[
            "--registry",
            &etcd.registry(),
            "--relay-id",
            id,
            "--peer-listen",
            "127.0.0.1:0",
            "--registry-lease-ttl",
            "2s",
        ],
    )
    .unwrap_or_else(|e| panic!("relay {id} does not start: {e:#}"))
}

/// Gives the relay whose state dir is `to` the installation CA of `from`,
/// as an operator mounts one CA into every relay.
fn share_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// Waits until `relay` answers a call to `node` with route `route`.
fn wait_route(relay: &Relay, node: &str, route: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((status, head, _)) = http_get_full(relay.api, &format!("/nodes/{node}/_ping")) {
            let want = format!("{ROUTE}: {route}");
            if status == 200 && head.lines().any(|l| l.eq_ignore_ascii_case(&want)) {
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
    let a = cluster_relay(&etcd, &dir.path().join("a"), "relay-a");
    for other in ["b", "c"] {
        share_ca(&dir.path().join("a"), &dir.path().join(other));
    }
    let _b = cluster_relay(&etcd, &dir.path().join("b"), "relay-b");
    let c = cluster_relay(&etcd, &dir.path().join("c"), "relay-c");

    let token = a.token().unwrap();
    let _agent = AgentCmd::new(
        &a,
        "far",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    a.wait_for_node("far").unwrap();
    wait_route(&a, "far", "local");
    wait_route(&c, "far", "peer=relay-a");

    // The registry holds the three members and the node's location.
    let keys = etcd.keys("/tunnelgate/v1/").unwrap();
    for key in [
        "/tunnelgate/v1/relays/relay-a",
        "/tunnelgate/v1/relays/relay-b",
        "/tunnelgate/v1/relays/relay-c",
        "/tunnelgate/v1/nodes/default/far",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }

    // The whole docker CLI scenario list, through the holding relay and
    // through the peer hop; the timing table is a report, not a check.
    let local = scenarios::run_all(&Docker::new(a.docker_host("far")))
        .unwrap_or_else(|e| panic!("scenarios fail through relay a: {e:#}"));
    let peer = scenarios::run_all(&Docker::new(c.docker_host("far"))).unwrap_or_else(|e| {
        panic!(
            "scenarios fail through relay c -> a: {e:#}\nrelay c:\n{}",
            c.log()
        )
    });
    let secs = |d: &Duration| d.as_secs_f64();
    eprintln!(
        "{:<34} {:>9} {:>9} {:>6}",
        "scenario", "local s", "c->a s", "ratio"
    );
    for ((name, l), (_, p)) in local.iter().zip(&peer) {
        eprintln!(
            "{name:<34} {:>9.2} {:>9.2} {:>6.2}",
            secs(l),
            secs(p),
            secs(p) / secs(l)
        );
    }

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
    a.cli(&[
        "client-cert",
        "create",
        "--tenant",
        "default",
        "--name",
        "ci",
        "--out",
        client_dir.to_str().unwrap(),
    ])
    .unwrap();
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
    let mut a = cluster_relay(&etcd, &dir.path().join("a"), "relay-a");
    share_ca(&dir.path().join("a"), &dir.path().join("c"));
    let c = cluster_relay(&etcd, &dir.path().join("c"), "relay-c");
    let token = a.token().unwrap();
    let _agent = AgentCmd::new(
        &a,
        "steady",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    a.wait_for_node("steady").unwrap();
    wait_route(&c, "steady", "peer=relay-a");

    // etcd away for 30 s: both relays keep serving, from their sessions
    // and their last-known routes. Bounded in count and time.
    etcd.stop();
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
        "relay a did not say etcd was away"
    );

    // Back: both relays register again by themselves.
    etcd.restart().unwrap();
    let back = Instant::now();
    wait_keys(&etcd, "after etcd came back", |k| {
        [
            "/tunnelgate/v1/relays/relay-a",
            "/tunnelgate/v1/relays/relay-c",
            "/tunnelgate/v1/nodes/default/steady",
        ]
        .iter()
        .all(|want| k.iter().any(|have| have == want))
    });
    // The keys seen at once may be the old ones, whose leases etcd
    // restored; those run out 2 s later. Still there well after that
    // means the relays registered again under new, kept-alive leases.
    std::thread::sleep(Duration::from_secs(5));
    wait_keys(&etcd, "5 s after etcd came back", |k| {
        [
            "/tunnelgate/v1/relays/relay-a",
            "/tunnelgate/v1/relays/relay-c",
            "/tunnelgate/v1/nodes/default/steady",
        ]
        .iter()
        .all(|want| k.iter().any(|have| have == want))
    });
    assert!(a.log().contains("registered in etcd"), "{}", a.log());
    println!(
        "registered again after etcd came back; still there {:?} later",
        back.elapsed()
    );
    wait_route(&c, "steady", "peer=relay-a");

    // Relay a dies without leaving: its entries go with its 2 s lease.
    a.proc.kill();
    let died = Instant::now();
    wait_keys(&etcd, "after relay a died", |k| {
        !k.iter()
            .any(|have| have.ends_with("/relay-a") || have.ends_with("/steady"))
    });
    println!(
        "relay a's entries gone {:?} after it died (lease 2 s)",
        died.elapsed()
    );
    let (status, _, body) = http_get_full(c.api, "/nodes/steady/_ping").unwrap();
    assert_eq!(status, 404, "relay c still routes to a dead relay: {body}");
}
