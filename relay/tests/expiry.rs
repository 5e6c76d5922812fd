//! Streams outlive no credential, against a real relay, agent and dockerd
//! with the real docker CLI: when the API key a `logs -f` was opened with
//! expires, or the key of a running `exec` is revoked, new calls are
//! refused and the running stream ends within a bounded time, its last
//! words saying why and what to do.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{docker_endpoint, http_call_with, http_get_with, AgentCmd, Docker, Relay};

/// How long after its credential stops standing a stream may take to end:
/// the relay rereads its records within a second, a stream ends at its
/// next quiet moment or a second later, and the CLI needs a moment.
const BOUND: Duration = Duration::from_secs(8);

/// Runs the docker CLI with `key` against `host`, as a child whose output
/// is read when it ends.
fn spawn_with_key(
    host: &str,
    key: &str,
    config: &std::path::Path,
    args: &[&str],
) -> std::process::Child {
    std::fs::write(
        config.join("config.json"),
        format!("{{\"HttpHeaders\": {{\"Authorization\": \"Bearer {key}\"}}}}"),
    )
    .unwrap();
    Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(["-H", host])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to end within `bound`; its stdout and stderr.
fn ended_within(mut child: std::process::Child, bound: Duration) -> (String, String) {
    let deadline = Instant::now() + bound;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the stream did not end within {bound:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stream_ends_saying_why_when_its_key_expires_or_is_revoked() {
    let node = "expiry-node";
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("relay"), &["--api-auth", "required"]).unwrap();
    let token = relay.token().unwrap();
    let _agent = AgentCmd::new(
        &relay,
        node,
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    let admin = relay
        .cli_last_line(&[
            "api-key", "create", "--tenant", "default", "--role", "admin",
        ])
        .unwrap();
    relay.wait_for_key(&admin).unwrap();
    let bearer = format!("Authorization: Bearer {admin}\r\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get_with(relay.api, &format!("/v1/nodes/{node}"), &bearer)
        .unwrap()
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "the node never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = "expiry-ticker";
    let daemon = Docker::direct();
    let _ = daemon.output_with_stdin(&["rm", "-f", c], b"");
    daemon
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            c,
            "busybox",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.2; done",
        ])
        .unwrap();
    let host = relay.docker_host(node);

    // An expiring key's `logs -f`.
    let short = relay
        .cli_last_line(&[
            "api-key", "create", "--tenant", "default", "--role", "viewer", "--ttl", "6s",
        ])
        .unwrap();
    relay.wait_for_key(&short).unwrap();
    let config = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let logs = spawn_with_key(
        &host,
        &short,
        config.path(),
        &["logs", "-f", "--since", "1s", c],
    );
    let (out, err) = ended_within(logs, Duration::from_secs(6) + BOUND);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "ended before the key expired: {err}"
    );
    assert!(out.contains("tick"), "the stream ran: {out}");
    assert!(
        err.contains("the relay ended this stream: the API key")
            && err.contains("expired at")
            && err.contains("run the command again"),
        "{err}"
    );
    // New calls are refused, saying it expired.
    let ps = spawn_with_key(&host, &short, config.path(), &["ps"]);
    let (_, err) = ended_within(ps, BOUND);
    assert!(err.contains("expired"), "{err}");

    // A revoked key's `exec` (a hijacked stream).
    let (status, _, body) = http_call_with(
        relay.api,
        "POST",
        "/v1/keys?role=operator&name=exec",
        &bearer,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    relay.wait_for_key(key).unwrap();
    let exec = spawn_with_key(
        &host,
        key,
        config.path(),
        &[
            "exec",
            c,
            "sh",
            "-c",
            "while true; do echo exec-tick; sleep 0.2; done",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    let revoked = http_call_with(relay.api, "DELETE", &format!("/v1/keys/{id}"), &bearer).unwrap();
    assert_eq!(revoked.0, 200, "{}", revoked.2);
    let (out, err) = ended_within(exec, BOUND);
    assert!(out.contains("exec-tick"), "the exec ran: {out}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("the relay ended this stream: the API key")
            && said.contains("was revoked at"),
        "{said}"
    );
    daemon.ok(&["rm", "-f", c]).unwrap();
}
