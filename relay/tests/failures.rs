//! What users see when things go wrong: unknown and offline nodes, a
//! daemon that is down and comes back, an agent killed mid-stream, a relay
//! restarted under its agents. Real processes, real dockerd.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{
    docker_endpoint, http_get, http_get_full, relay_bin, start_agent, AgentCmd, Docker, LineReader,
    Relay, Tunnel,
};

#[test]
fn unknown_node_gets_a_one_line_error_naming_it() {
    let tunnel = Tunnel::start("known-node").unwrap();
    let ghost = Docker::new(tunnel.relay.docker_host("ghost-node"));
    let out = ghost.cmd(["ps"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got {stderr:?}");
    assert!(
        lines[0].contains("ghost-node") && lines[0].contains("no such node"),
        "{stderr}"
    );

    let (status, body) = http_get(tunnel.relay.api, "/nodes/ghost-node/_ping").unwrap();
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["message"].as_str().unwrap().contains("ghost-node"));
}

#[test]
fn node_list_and_metrics_describe_the_session() {
    let tunnel = Tunnel::start("listed-node").unwrap();
    // rtt_ms appears once a heartbeat has gone round (1s interval in tests).
    let node = tunnel
        .relay
        .wait_for("listed-node", |n| n["rtt_ms"].is_number())
        .unwrap();
    assert_eq!(node["node_id"], "listed-node");
    assert_eq!(node["transport"], "quic");
    assert_eq!(node["daemon_reachable"], true);
    assert!(!node["hostname"].as_str().unwrap().is_empty());
    let direct_version = Docker::direct()
        .ok(&["version", "--format", "{{.Server.Version}}"])
        .unwrap();
    assert_eq!(node["docker_version"], direct_version.trim());
    let since = node["connected_since"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(since).is_ok(),
        "{since} is not RFC 3339"
    );

    let (status, body) = http_get(tunnel.relay.api, "/v1/nodes").unwrap();
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["node_id"], "listed-node");

    tunnel.docker().ok(&["ps"]).unwrap();
    let (status, _) = http_get(tunnel.relay.metrics, "/healthz").unwrap();
    assert_eq!(status, 200);
    let (status, _) = http_get(tunnel.relay.metrics, "/readyz").unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = http_get(tunnel.relay.metrics, "/metrics").unwrap();
    assert!(
        metrics.contains("tunnelgate_relay_agents_connected{transport=\"quic\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tunnelgate_front_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tunnelgate_front_bytes_total{direction=\"from_node\"}"));
    assert!(metrics.contains("tunnelgate_front_request_duration_seconds_bucket"));
}

#[test]
fn daemon_down_gives_502_and_the_agent_notices_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    // The agent's socket path is a symlink that does not exist yet: the
    // daemon is "down" until the test creates it.
    let link = dir.path().join("docker.sock");
    let agent_docker = format!("unix://{}", link.display());
    let token = relay.token().unwrap();
    let _agent = start_agent(
        &relay,
        "flaky",
        &agent_docker,
        &dir.path().join("agent"),
        Some(&token),
    )
    .unwrap();
    let node = relay
        .wait_for("flaky", |n| n["daemon_reachable"] == false)
        .unwrap();
    assert!(
        node["daemon_error"]
            .as_str()
            .unwrap()
            .contains("docker.sock"),
        "{node}"
    );

    let docker = Docker::new(relay.docker_host("flaky"));
    let out = docker.cmd(["ps"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flaky") && stderr.contains("unreachable"),
        "{stderr}"
    );
    let (status, _) = http_get(relay.api, "/nodes/flaky/_ping").unwrap();
    assert_eq!(status, 502);

    let target = docker_endpoint();
    let socket = target
        .strip_prefix("unix://")
        .expect("tests use a unix socket");
    std::os::unix::fs::symlink(socket, &link).unwrap();
    relay
        .wait_for("flaky", |n| n["daemon_reachable"] == true)
        .unwrap();
    docker.ok(&["ps"]).unwrap();
}

#[test]
fn agent_killed_mid_logs_fails_the_client_and_others_keep_working() {
    let mut tunnel = Tunnel::start("doomed").unwrap();
    let token = tunnel.relay.token().unwrap();
    let _survivor = start_agent(
        &tunnel.relay,
        "survivor",
        &docker_endpoint(),
        &tunnel.dir.path().join("agent2"),
        Some(&token),
    )
    .unwrap();
    tunnel.relay.wait_for_node("survivor").unwrap();

    let docker = tunnel.docker();
    let name = format!("tg-doomed-{}", std::process::id());
    docker
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 300",
        ])
        .unwrap();
    let mut follow = docker
        .cmd(["logs", "-f", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(follow.stdout.take().unwrap());
    lines.wait_for("started", Duration::from_secs(30)).unwrap();

    tunnel.agent.kill();
    // The client must end by itself (the relay notices the dead session);
    // the bound only keeps a broken build from hanging the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "docker logs -f still hangs after its agent died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).unwrap();
    // The relay cuts the response short rather than ending it cleanly,
    // so the client knows the log is incomplete; the docker CLI says so.
    assert!(
        !status.success() && stderr.contains("unexpected EOF"),
        "the client was not told its stream was cut: {status} {stderr:?}"
    );

    // The relay keeps serving the other node, and says the dead one is offline.
    Docker::new(tunnel.relay.docker_host("survivor"))
        .ok(&["ps"])
        .unwrap();
    let out = docker.cmd(["ps"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("doomed") && stderr.contains("offline"),
        "{stderr}"
    );
    Docker::direct().ok(&["rm", "-f", &name]).unwrap();
}

#[test]
fn agent_reconnects_by_itself_after_the_relay_restarts() {
    let mut tunnel = Tunnel::start("steadfast").unwrap();
    let docker = tunnel.docker();
    docker.ok(&["ps"]).unwrap();
    let (api, agent, state) = (
        tunnel.relay.api,
        tunnel.relay.agent,
        tunnel.relay.state.clone(),
    );

    // A hard crash first, then a graceful stop: both must be survived.
    tunnel.relay.proc.kill();
    let relay = Relay::start_on(&state, &api.to_string(), &agent.to_string()).unwrap();
    relay.wait_for_node("steadfast").unwrap();
    docker.ok(&["ps"]).unwrap();

    let mut relay = relay;
    relay.proc.terminate();
    let status = relay.proc.child.wait().unwrap();
    assert!(
        status.success(),
        "graceful stop exits cleanly, got {status}"
    );
    assert!(tunnel.agent.is_running(), "the agent outlives its relay");
    let relay = Relay::start_on(&state, &api.to_string(), &agent.to_string()).unwrap();
    relay.wait_for_node("steadfast").unwrap();
    docker.ok(&["ps"]).unwrap();
}

/// A relay killed with SIGKILL and started again on its state dir and
/// ports: a QUIC agent learns it at once from the restarted relay's
/// stateless reset (the key survives the restart), not from missed
/// heartbeats. The time until the node answers again is printed for both
/// transports, measured in the same run; it is not asserted.
#[test]
fn after_a_relay_crash_quic_agents_come_back_by_its_stateless_reset() {
    let mut report = Vec::new();
    for transport in ["quic", "tcp"] {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(&dir.path().join("relay")).unwrap();
        let log = dir.path().join("agent.log");
        let token = relay.token().unwrap();
        let _agent = AgentCmd::new(
            &relay,
            "phoenix",
            &docker_endpoint(),
            &dir.path().join("agent"),
            Some(&token),
        )
        .arg("--transport")
        .arg(transport)
        .spawn_logged(&log)
        .unwrap();
        relay.wait_for_node("phoenix").unwrap();
        let (api, agent, state) = (relay.api, relay.agent, relay.state.clone());
        let mut relay = relay;
        relay.proc.kill();
        let restarted = Instant::now();
        let relay = Relay::start_on(&state, &api.to_string(), &agent.to_string()).unwrap();
        relay.wait_for_node("phoenix").unwrap();
        let back = restarted.elapsed();
        let text = std::fs::read_to_string(&log).unwrap();
        if transport == "quic" {
            assert!(
                text.contains("the relay restarted (its stateless reset was recognised)"),
                "the QUIC agent did not recognise the restarted relay's reset:\n{text}"
            );
            assert!(
                !text.contains("peer silent"),
                "the QUIC agent came back only after a timeout:\n{text}"
            );
        }
        let (status, _) = http_get(relay.api, "/nodes/phoenix/_ping").unwrap();
        assert_eq!(status, 200);
        report.push(format!("{transport} {back:.2?}"));
    }
    println!(
        "node answers again after a relay crash and restart (heartbeat 1 s): {}",
        report.join(", ")
    );
}

#[test]
fn token_create_prints_the_token_alone_on_the_last_line_and_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    let token = relay.token().unwrap();
    assert!(token.starts_with("tgjoin1.") && !token.contains(' '));

    // A forged secret: the agent is refused and exits with a clear reason.
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("0000");
    let mut agent = start_agent(
        &relay,
        "forger",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&forged),
    )
    .unwrap();
    agent.child.stderr.take();
    let status = agent.child.wait().unwrap();
    assert!(
        !status.success(),
        "an agent with a bad token must not keep running"
    );
    let (status, _) = http_get(relay.api, "/v1/nodes/forger").unwrap();
    assert_eq!(status, 404);
}

#[test]
fn daemon_redirects_keep_the_client_on_the_relay() {
    let tunnel = Tunnel::start("redirected").unwrap();
    // dockerd answers a path with `//` by redirecting to the cleaned path.
    let (status, head, _) = http_get_full(
        tunnel.relay.api,
        "/nodes/redirected/v1.41//containers/json?all=1",
    )
    .unwrap();
    assert_eq!(status, 301, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_else(|| panic!("no Location in {head}"));
    assert_eq!(location, "/nodes/redirected/v1.41/containers/json?all=1");
    let (status, _) = http_get(tunnel.relay.api, location).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn an_api_off_loopback_speaks_tls_and_requires_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(relay_bin())
        .args([
            "serve",
            "--api-listen",
            "0.0.0.0:0",
            "--api-auth",
            "loopback-open",
        ])
        .args([
            "--agent-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api_auth") && stderr.contains("loopback"),
        "{stderr}"
    );

    let state = dir.path().join("relay");
    let relay = Relay::start_args(&state, "0.0.0.0:0", "127.0.0.1:0", &[]).unwrap();
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], relay.api.port()));
    // Plain HTTP gets nowhere; TLS without credentials gets a 401.
    let plain = support::http_get(api, "/v1/nodes");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP answered: {plain:?}"
    );
    let (status, body) = support::ApiClient::new(api, &state)
        .unwrap()
        .get("/v1/nodes")
        .unwrap();
    assert_eq!(status, 401, "{body}");
}

#[test]
fn a_draining_relay_finishes_calls_in_flight_and_takes_no_new_agents() {
    let mut tunnel = Tunnel::start("draining").unwrap();
    let docker = tunnel.docker();
    let name = format!("tg-drain-{}", std::process::id());
    let in_flight = {
        let (docker, name) = (docker.clone(), name.clone());
        std::thread::spawn(move || {
            docker.ok(&[
                "run",
                "--rm",
                "--name",
                &name,
                "--network",
                "none",
                "busybox",
                "sh",
                "-c",
                "sleep 2; echo finished",
            ])
        })
    };
    // SIGTERM only once the call is under way (the container runs).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Docker::direct()
        .ok(&["ps", "-q", "--filter", &format!("name={name}")])
        .unwrap()
        .contains(char::is_alphanumeric)
    {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    tunnel.relay.proc.terminate();
    let token = tunnel.relay.token().unwrap();
    let _late = start_agent(
        &tunnel.relay,
        "latecomer",
        &docker_endpoint(),
        &tunnel.dir.path().join("late"),
        Some(&token),
    )
    .unwrap();

    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        "finished\n",
        "the call in flight was cut"
    );
    let status = tunnel.relay.proc.child.wait().unwrap();
    assert!(
        status.success(),
        "graceful stop exits cleanly, got {status}"
    );
    let log = tunnel.relay.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.lines().any(|l| l.contains("node_id=latecomer")
            && (l.contains("agent connected") || l.contains("node enrolled"))),
        "a draining relay took a new agent:\n{log}"
    );
}
