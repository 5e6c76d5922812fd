//! The agent on its own network host (a network namespace joined to the
//! relay's by a veth pair), where outbound UDP is dropped: `auto` must
//! find TLS/TCP by itself, everything must work over it, and when UDP is
//! allowed again the session must move to QUIC without failing a call.
//!
//! Needs root (for `ip netns` and iptables), as CI has.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::netns::Host;
use support::{docker_endpoint, scenarios, AgentCmd, CallLoop, Docker, Relay};

#[test]
fn blocked_udp_falls_back_to_tcp_and_moves_to_quic_without_failing_a_call() {
    let host = Host::new("udp");
    host.block_udp(true);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_on(
        &dir.path().join("relay"),
        "127.0.0.1:0",
        &format!("{}:0", host.relay_ip),
    )
    .unwrap();
    let token = relay.token().unwrap();
    let mut cmd = AgentCmd::new(
        &relay,
        "behind-firewall",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .arg("--transport")
    .arg("auto")
    .arg("--quic-probe-interval")
    .arg("1s");
    cmd.prefix = ["ip", "netns", "exec", &host.name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _agent = cmd.spawn().unwrap();

    let node = relay.wait_for_node("behind-firewall").unwrap();
    assert_eq!(
        node["transport"], "tcp",
        "with UDP dropped the agent must fall back to TLS/TCP"
    );
    let docker = Docker::new(relay.docker_host("behind-firewall"));
    scenarios::run_all(&docker)
        .unwrap_or_else(|e| panic!("scenarios fail over the fallback: {e:#}"));

    // Short calls and calls that stay open across the move.
    eprintln!("scenarios passed over the fallback; starting call loops");
    let quick = CallLoop::start({
        let docker = docker.clone();
        move |_| docker.ok(&["ps"]).map(drop)
    });
    let slow = CallLoop::start({
        let docker = docker.clone();
        move |_| {
            docker
                .ok(&[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "busybox",
                    "sh",
                    "-c",
                    "sleep 1; echo ok",
                ])
                .map(drop)
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    host.block_udp(false);
    relay
        .wait_for("behind-firewall", |n| n["transport"] == "quic")
        .unwrap();
    eprintln!("on QUIC; letting the loops run on");
    // Keep calling until the old session has had time to wind down.
    std::thread::sleep(Duration::from_secs(5));
    let (quick_ok, quick_failed) = quick.finish();
    eprintln!("quick loop stopped");
    let (slow_ok, slow_failed) = slow.finish();
    eprintln!("slow loop stopped");
    assert!(
        quick_failed.is_empty() && slow_failed.is_empty(),
        "calls failed during the move: {quick_failed:?} {slow_failed:?}"
    );
    assert!(
        quick_ok > 0 && slow_ok > 0,
        "the loops made no calls ({quick_ok}, {slow_ok})"
    );
    docker.ok(&["ps"]).unwrap();
    let log = relay.log();
    assert!(
        log.contains("new calls go to the node's newer session"),
        "relay did not log the move:\n{log}"
    );
}
