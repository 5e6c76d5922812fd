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

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{docker_endpoint, scenarios, AgentCmd, Docker, Relay};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {args:?} ({e}); install iproute2 and iptables (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "{args:?} failed: {}; this test needs root for network namespaces",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A namespace joined to the root one by a veth pair; removed on drop.
struct Host {
    name: String,
    relay_ip: String,
}

impl Host {
    fn new() -> Self {
        let id = std::process::id() % 10_000;
        let name = format!("tg-agent-{id}");
        let (outside, inside) = (format!("tgh{id}"), format!("tga{id}"));
        // Link-local addresses: never routed anywhere beyond this veth pair.
        let octet = id % 250 + 1;
        let relay_ip = format!("169.254.{octet}.1");
        let agent_ip = format!("169.254.{octet}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let host = Self {
            name: name.clone(),
            relay_ip: relay_ip.clone(),
        };
        sh(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        sh(&["ip", "link", "set", &inside, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{relay_ip}/30"),
            "dev",
            &outside,
        ]);
        sh(&["ip", "link", "set", &outside, "up"]);
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{agent_ip}/30"),
            "dev",
            &inside,
        ]);
        host.exec(&["ip", "link", "set", &inside, "up"]);
        host.exec(&["ip", "link", "set", "lo", "up"]);
        host
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    fn block_udp(&self, block: bool) {
        let op = if block { "-A" } else { "-D" };
        self.exec(&["iptables", op, "OUTPUT", "-p", "udp", "-j", "DROP"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Calls in a loop until told to stop (bounded in count and time),
/// counting successes and failures.
struct CallLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl CallLoop {
    fn start(docker: Docker, args: &'static [&'static str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            move || {
                let started = Instant::now();
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(180)
                    {
                        break;
                    }
                    match docker.ok(args) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            }
        });
        Self {
            stop,
            ok,
            failures,
            thread,
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn blocked_udp_falls_back_to_tcp_and_moves_to_quic_without_failing_a_call() {
    let host = Host::new();
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
    let quick = CallLoop::start(docker.clone(), &["ps"]);
    let slow = CallLoop::start(
        docker.clone(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "sleep 1; echo ok",
        ],
    );
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
