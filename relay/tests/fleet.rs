//! The operator's views over many nodes, with two real daemons: the
//! fleet endpoint (`DOCKER_HOST=tcp://RELAY/fleet`) with the real docker
//! CLI, and the events fan-in (`GET /v1/events`).

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::netns::NodeDockerd;
use support::{docker_endpoint, AgentCmd, Docker, LineReader, Proc, Relay};

/// A relay with two nodes: `node-a` on the suite's dockerd, `node-b` on a
/// dockerd of its own.
struct TwoNodes {
    relay: Relay,
    agent_a: Proc,
    agent_b: Proc,
    daemon_b: NodeDockerd,
    dir: tempfile::TempDir,
}

impl TwoNodes {
    fn start(relay_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start_with(&dir.path().join("relay"), relay_args).unwrap();
        let daemon_b = NodeDockerd::start_local(&dir.path().join("dockerd-b")).unwrap();
        daemon_b.load_busybox().unwrap();
        let token = relay.token().unwrap();
        let agent_a = AgentCmd::new(
            &relay,
            "node-a",
            &docker_endpoint(),
            &dir.path().join("agent-a"),
            Some(&token),
        )
        .spawn()
        .unwrap();
        let agent_b = Self::agent_b(&relay, &daemon_b, dir.path(), Some(&token));
        relay.wait_for_node("node-a").unwrap();
        relay.wait_for_node("node-b").unwrap();
        Self {
            relay,
            agent_a,
            agent_b,
            daemon_b,
            dir,
        }
    }

    fn agent_b(relay: &Relay, daemon: &NodeDockerd, dir: &Path, token: Option<&str>) -> Proc {
        AgentCmd::new(
            relay,
            "node-b",
            &daemon.socket(),
            &dir.join("agent-b"),
            token,
        )
        .spawn()
        .unwrap()
    }

    fn fleet(&self) -> Docker {
        Docker::new(format!("tcp://{}/fleet", self.relay.api))
    }

    fn node(&self, node: &str) -> Docker {
        Docker::new(self.relay.docker_host(node))
    }

    /// Waits until the relay lists `node` as offline to a fleet view.
    fn wait_offline(&self, node: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = support::http_get(self.relay.api, "/v1/nodes").unwrap();
            if !body.contains(&format!("\"node_id\":\"{node}\"")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never went offline: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[test]
fn the_docker_cli_on_the_fleet_sees_every_node_and_reaches_each_container() {
    let mut nodes = TwoNodes::start(&[]);
    let (name_a, name_b) = (unique("fleet-a"), unique("fleet-b"));
    let run = |docker: &Docker, name: &str, text: &str| {
        docker
            .ok(&[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                name,
                "busybox",
                "sh",
                "-c",
                &format!("echo {text}; sleep 300"),
            ])
            .unwrap()
            .trim()
            .to_owned()
    };
    let _id_a = run(&nodes.node("node-a"), &name_a, "hello-from-a");
    let id_b = run(&nodes.node("node-b"), &name_b, "hello-from-b");
    let _cleanup = Cleanup(vec![
        (Docker::direct(), name_a.clone()),
        (nodes.daemon_b.docker(), name_b.clone()),
    ]);
    let fleet = nodes.fleet();

    let names = fleet.ok(&["ps", "-a", "--format", "{{.Names}}"]).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert!(
        names.contains(&format!("node-a/{name_a}").as_str()),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("node-b/{name_b}").as_str()),
        "{names:?}"
    );
    // Filters go to each node as given.
    let only_b = fleet
        .ok(&[
            "ps",
            "--filter",
            &format!("name={name_b}"),
            "--format",
            "{{.Names}}",
        ])
        .unwrap();
    assert_eq!(only_b.trim(), format!("node-b/{name_b}"));

    // info sums the nodes' containers and lists each node. Other tests
    // change the suite's daemon meanwhile, so node-a's part is read from
    // the same answer; node-b's daemon is this test's alone.
    let answer = fleet
        .ok(&["info", "--format", "{{.Containers}}|{{json .DriverStatus}}"])
        .unwrap();
    let (total, status) = answer.trim().split_once('|').unwrap();
    let status: Vec<(String, String)> = serde_json::from_str(status).unwrap();
    // Each node's line, then its "└ Containers: N (M running)".
    let part = |node: &str| -> u64 {
        let at = status.iter().position(|(k, _)| k.trim() == node).unwrap();
        let (key, line) = &status[at + 2];
        assert_eq!(key.trim(), "└ Containers", "{status:?}");
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    let b_alone: u64 = nodes
        .daemon_b
        .docker()
        .ok(&["info", "--format", "{{.Containers}}"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(part("node-b"), b_alone, "{answer}");
    assert!(part("node-a") >= 1, "{answer}");
    assert_eq!(
        total.parse::<u64>().unwrap(),
        part("node-a") + part("node-b"),
        "{answer}"
    );
    let info = fleet.ok(&["info"]).unwrap();
    assert!(
        info.contains(" node-a: online") && info.contains(" node-b: online"),
        "{info}"
    );
    fleet.ok(&["version"]).unwrap();
    let repos = fleet
        .ok(&["images", "--format", "{{.Repository}}"])
        .unwrap();
    assert!(
        repos.contains("node-a/busybox") && repos.contains("node-b/busybox"),
        "{repos}"
    );

    // One container's reads go to its node.
    let logs = fleet.ok(&["logs", &format!("node-b/{name_b}")]).unwrap();
    assert_eq!(logs.trim(), "hello-from-b");
    let inspected = fleet
        .ok(&[
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("node-b/{name_b}"),
        ])
        .unwrap();
    assert_eq!(inspected.trim(), id_b);

    // Writes reach the container's node, by node/name and by bare name.
    fleet
        .ok(&["stop", "-t", "0", &format!("node-a/{name_a}")])
        .unwrap();
    let state = |name: &str| {
        Docker::direct()
            .ok(&["inspect", "--format", "{{.State.Status}}", name])
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(state(&name_a), "exited");
    fleet.ok(&["start", &name_a]).unwrap();
    assert_eq!(state(&name_a), "running");

    // An offline node is skipped, never failing the call, and info says so.
    nodes.agent_b.kill();
    nodes.wait_offline("node-b");
    let names = fleet.ok(&["ps", "-a", "--format", "{{.Names}}"]).unwrap();
    assert!(names.contains(&format!("node-a/{name_a}")), "{names}");
    assert!(!names.contains("node-b/"), "{names}");
    let info = fleet.output_with_stdin(&["info"], b"").unwrap();
    let (out, warned) = (
        String::from_utf8_lossy(&info.stdout),
        String::from_utf8_lossy(&info.stderr),
    );
    assert!(info.status.success(), "{warned}");
    assert!(out.contains(" node-b: offline"), "{out}");
    assert!(
        warned.contains("node node-b is skipped: offline"),
        "{warned}"
    );
    drop(nodes.agent_a);
}

/// Removes containers when a test ends, however it ends.
struct Cleanup(Vec<(Docker, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (docker, name) in &self.0 {
            let _ = docker.ok(&["rm", "-f", name]);
        }
    }
}

/// `GET /v1/events` as a line stream (curl, so chunked framing is undone).
fn events(relay: &Relay, query: &str) -> (std::process::Child, LineReader) {
    let mut child = Command::new("curl")
        .args(["-sN", &format!("http://{}/v1/events{query}", relay.api)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    (child, lines)
}

#[test]
fn events_of_every_node_arrive_tagged_and_survive_a_node_dropping() {
    let mut nodes = TwoNodes::start(&[]);
    let (mut curl, lines) = events(&nodes.relay, "");
    // Give the fan-in a moment to open each node's stream.
    std::thread::sleep(Duration::from_secs(2));
    let (name_a, name_b, name_c) = (unique("ev-a"), unique("ev-b"), unique("ev-c"));
    let _cleanup = Cleanup(vec![
        (Docker::direct(), name_a.clone()),
        (Docker::direct(), name_c.clone()),
        (nodes.daemon_b.docker(), name_b.clone()),
    ]);
    let create = |docker: &Docker, name: &str| {
        docker
            .ok(&[
                "create",
                "--network",
                "none",
                "--name",
                name,
                "busybox",
                "true",
            ])
            .unwrap();
    };
    create(&nodes.node("node-a"), &name_a);
    create(&nodes.node("node-b"), &name_b);
    let wait = Duration::from_secs(30);
    for (node, name) in [("node-a", &name_a), ("node-b", &name_b)] {
        let line = lines
            .wait_for(&format!("\"name\":\"{name}\""), wait)
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["node"], node, "{line}");
        assert_eq!(event["Actor"]["Attributes"]["node"], node, "{line}");
        assert_eq!(event["Action"], "create", "{line}");
    }

    // A node that drops is announced and the stream goes on.
    nodes.agent_b.kill();
    let line = lines.wait_for("\"Action\":\"disconnected\"", wait).unwrap();
    assert!(line.contains("\"node\":\"node-b\""), "{line}");
    create(&nodes.node("node-a"), &name_c);
    lines
        .wait_for(&format!("\"name\":\"{name_c}\""), wait)
        .unwrap();

    // A node that comes back while the stream is open is followed again.
    nodes.agent_b = TwoNodes::agent_b(&nodes.relay, &nodes.daemon_b, nodes.dir.path(), None);
    let line = lines.wait_for("\"Action\":\"connected\"", wait).unwrap();
    assert!(line.contains("\"node\":\"node-b\""), "{line}");
    std::thread::sleep(Duration::from_secs(2));
    nodes.daemon_b.docker().ok(&["rm", &name_b]).unwrap();
    let line = lines
        .wait_for(&format!("\"name\":\"{name_b}\""), wait)
        .unwrap();
    assert!(line.contains("\"Action\":\"destroy\""), "{line}");
    let _ = curl.kill();
    let _ = curl.wait();
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_reader_that_stops_reading_is_cut_and_the_relay_holds_no_more() {
    let backlog = 8;
    let nodes = TwoNodes::start(&["--max-events-backlog", &backlog.to_string()]);
    // A reader that sends its request and then reads nothing, with a
    // small receive window so the relay's sends back up quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&nodes.relay.api.into()).unwrap();
    let mut stalled: std::net::TcpStream = socket.into();
    write!(stalled, "GET /v1/events HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = rss(nodes.relay.proc.child.id());

    // Events of about 512 KiB each (a container's labels are in its
    // events): 48 create/remove pairs are about 48 MiB of events.
    let label = "x".repeat(32 * 1024);
    let mut args: Vec<String> = vec!["create".into(), "--network".into(), "none".into()];
    for i in 0..16 {
        args.push("--label".into());
        args.push(format!("big{i}={label}"));
    }
    args.extend(["busybox".into(), "true".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let docker = Docker::direct();
    let mut peak = before;
    for _ in 0..48 {
        let id = docker.ok(&args).unwrap();
        docker.ok(&["rm", id.trim()]).unwrap();
        peak = peak.max(rss(nodes.relay.proc.child.id()));
    }
    let grew = peak.saturating_sub(before);
    println!(
        "relay RSS {} MiB before, peak {} MiB while 48 MiB of events passed a stalled reader",
        before >> 20,
        peak >> 20
    );
    assert!(
        grew < 24 << 20,
        "the relay grew {} MiB while a reader stalled",
        grew >> 20
    );
    let cut = nodes
        .relay
        .metric("tunnelgate_relay_limit_hits_total{limit=\"events_backlog\"}");
    assert!(cut >= 1, "the stalled reader was never cut");
    // Now read: what was queued, then the notice, then the end.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut all = Vec::new();
    stalled.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    let json_lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    let last = json_lines.last().unwrap();
    assert!(last.contains("max_events_backlog"), "{last}");
    assert!(
        json_lines.len() <= backlog + 16,
        "{} lines reached the reader: the relay queued more than its backlog",
        json_lines.len()
    );
}
