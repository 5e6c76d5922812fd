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

/// A relay whose log goes to a pipe, in `format`, with `NO_COLOR` unset:
/// what it logged for one audited call, once it stopped.
fn piped_log(format: &str) -> String {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(support::relay_bin())
        .args(["serve", "--state-dir"])
        .arg(dir.path())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--log-format", format])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let listening: tunnelgate_relay::ListeningLine = line.parse().unwrap();
    let (status, _) = support::http_get(listening.api, "/v1/nodes/nosuch").unwrap();
    assert_eq!(status, 404);
    // SIGTERM: the relay stops gracefully and its pipe ends.
    let stopped = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(stopped.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    log
}

#[test]
fn logs_to_a_pipe_have_no_colour_and_json_lines_carry_the_audit_fields() {
    let text = piped_log("text");
    assert!(text.contains("call"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape bytes in a piped log: {text:?}"
    );

    let json = piped_log("json");
    assert!(!json.contains('\x1b'), "{json:?}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let audit = lines
        .iter()
        .find(|l| l["target"] == "tunnelgate::audit")
        .unwrap_or_else(|| panic!("no audit line: {json}"));
    for field in [
        "request_id",
        "trace_id",
        "tenant",
        "principal",
        "role",
        "scope",
        "path",
    ] {
        assert!(audit[field].is_string(), "{field} in {audit}");
    }
    assert_eq!(audit["status"], 404, "{audit}");
    assert_eq!(audit["principal"], "local", "{audit}");
}
