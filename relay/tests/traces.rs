//! One call's lines on both sides: the relay's audit line and the agent's
//! line for the call carry the same trace id (the client's `traceparent`,
//! or one the relay made) and request id, which the answer names.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll log files from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use support::{docker_endpoint, http_get_with, AgentCmd, Relay};

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

/// Waits for a line of `log` holding every one of `needles`; returns it.
fn wait_line(what: &str, log: impl Fn() -> String, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = log();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line in the {what}'s log with {needles:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_calls_trace_and_request_id_are_in_the_relays_and_the_agents_lines() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    let agent_log = dir.path().join("agent.log");
    let _agent = AgentCmd::new(
        &relay,
        "traced",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&relay.token().unwrap()),
    )
    .spawn_logged(&agent_log)
    .unwrap();
    relay.wait_for_node("traced").unwrap();
    let agent_lines = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    // The client's trace goes through.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, head, _) = http_get_with(
        relay.api,
        "/nodes/traced/_ping",
        &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n"),
    )
    .unwrap();
    assert_eq!(status, 200, "{head}");
    let request_id = header(&head, "x-tunnelgate-request-id");
    let needles = [
        format!("request_id={request_id}"),
        format!("trace_id={trace}"),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    wait_line("relay", || relay.log(), &needles);
    wait_line("agent", agent_lines, &needles);

    // A call without one gets a trace the relay made, the same on both sides.
    let (status, head, _) = http_get_with(relay.api, "/nodes/traced/_ping", "").unwrap();
    assert_eq!(status, 200, "{head}");
    let request_id = header(&head, "x-tunnelgate-request-id");
    let audit = wait_line(
        "relay",
        || relay.log(),
        &["tunnelgate::audit", &format!("request_id={request_id}")],
    );
    let made = audit
        .split_whitespace()
        .find_map(|w| w.strip_prefix("trace_id="))
        .unwrap();
    assert_eq!(made.len(), 32, "{audit}");
    assert_ne!(made, trace);
    wait_line(
        "agent",
        agent_lines,
        &[
            &format!("request_id={request_id}"),
            &format!("trace_id={made}"),
        ],
    );

    // Errors the relay makes itself name their request id too.
    let (status, head, _) = http_get_with(relay.api, "/nodes/nosuch/_ping", "").unwrap();
    assert_eq!(status, 404);
    assert!(!header(&head, "x-tunnelgate-request-id").is_empty());
}
