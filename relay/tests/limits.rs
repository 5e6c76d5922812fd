//! Protection limits of a real relay process with real agents and the real
//! dockerd: concurrent streams per node, the idle stream timeout and the
//! agent handshake budget. Each hit gives the caller a clear error and is
//! counted in `tunnelgate_relay_limit_hits_total`.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{docker_endpoint, http_get, AgentCmd, Docker, Relay};

fn limit_hits(relay: &Relay, limit: &str) -> u64 {
    relay.metric(&format!(
        "tunnelgate_relay_limit_hits_total{{limit=\"{limit}\"}}"
    ))
}

/// Opens `GET /events` on `node` (a stream the daemon keeps open and quiet).
fn open_events(relay: &Relay, node: &str) -> TcpStream {
    let mut s = TcpStream::connect(relay.api).unwrap();
    write!(
        s,
        "GET /nodes/{node}/v1.41/events HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "events did not start");
    s
}

#[test]
fn stream_limits_idle_timeouts_and_the_handshake_budget_hold_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        &dir.path().join("relay"),
        &[
            "--max-streams-per-node",
            "2",
            "--idle-stream-timeout",
            // Long enough that both streams are still open when the third
            // call arrives, even on a loaded machine.
            "5s",
            "--max-agent-handshakes-per-sec",
            "1",
        ],
    )
    .unwrap();
    // Three agents at once against a budget of one handshake a second:
    // some are turned away, all get in by retrying.
    let _agents: Vec<_> = ["l1", "l2", "l3"]
        .iter()
        .map(|node| {
            let token = relay.token().unwrap();
            AgentCmd::new(
                &relay,
                node,
                &docker_endpoint(),
                &dir.path().join(node),
                Some(&token),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for node in ["l1", "l2", "l3"] {
        relay.wait_for_node(node).unwrap();
    }
    assert!(limit_hits(&relay, "agent_handshakes") > 0);

    // Two quiet event streams fill node l1's slots; a third call is told why.
    let first = open_events(&relay, "l1");
    let _second = open_events(&relay, "l1");
    let (status, body) = http_get(relay.api, "/nodes/l1/_ping").unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_streams_per_node"), "{body}");
    assert_eq!(limit_hits(&relay, "streams_per_node"), 1);
    // Other nodes are not affected.
    Docker::new(relay.docker_host("l2")).ok(&["ps"]).unwrap();

    // The quiet streams are cut at the idle timeout, freeing the slots.
    let started = Instant::now();
    let mut first = first;
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the idle stream was never cut"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while limit_hits(&relay, "idle_stream") < 2 {
        assert!(Instant::now() < deadline, "idle streams not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = http_get(relay.api, "/nodes/l1/_ping").unwrap();
    assert_eq!(status, 200);
}
