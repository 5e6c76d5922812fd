//! Who may do what, route by route: API keys of each role against a real
//! relay, a real agent and the real dockerd, through HTTP and the real
//! docker CLI. A refused call must be a 403 naming the role, and must
//! never reach the daemon: the daemon's own events and objects say so.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{docker_endpoint, AgentCmd, Docker, Proc, Relay};

const ROLES: [&str; 4] = ["admin", "operator", "viewer", "enroller"];

/// One HTTP/1.0 call with a bearer key; the status and what of the body
/// came within two seconds (a stream that stays open is cut there).
fn call(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Waits until `node` answers through `relay` for `key`.
fn wait_node(relay: &Relay, node: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(relay.api, "GET", &format!("/v1/nodes/{node}"), key, "").0 != 200 {
        assert!(Instant::now() < deadline, "{node} never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Setup {
    relay: Relay,
    _agent: Proc,
    _dir: tempfile::TempDir,
    /// Each role's key, in [`ROLES`] order.
    keys: Vec<String>,
}

fn setup(node: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("relay"), &["--api-auth", "required"]).unwrap();
    let token = relay.token().unwrap();
    let agent = AgentCmd::new(
        &relay,
        node,
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    let keys: Vec<String> = ROLES
        .iter()
        .map(|role| {
            relay
                .cli_last_line(&[
                    "api-key", "create", "--tenant", "default", "--role", role, "--name", role,
                ])
                .unwrap()
        })
        .collect();
    wait_node(&relay, node, &keys[0]);
    // The relay learns of keys the CLI made at its next look (every
    // 250 ms): the last may not be known yet when the first works.
    relay.wait_for_key(keys.last().unwrap()).unwrap();
    Setup {
        relay,
        _agent: agent,
        _dir: dir,
        keys,
    }
}

/// A container running on the daemon itself, for calls about one.
fn target(name: &str) -> String {
    let daemon = Docker::direct();
    let _ = daemon.output_with_stdin(&["rm", "-f", name], b"");
    daemon
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "busybox",
            "sleep",
            "300",
        ])
        .unwrap()
        .trim()
        .to_owned()
}

/// The daemon's own count of `action` events of container `name` since
/// `since` (unix seconds).
fn daemon_events(name: &str, action: &str, since: u64) -> usize {
    let until = (std::time::SystemTime::now() + Duration::from_secs(1))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Docker::direct()
        .ok(&[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            &format!("container={name}"),
            "--format",
            "{{.Action}}",
        ])
        .unwrap();
    out.lines().filter(|l| l.starts_with(action)).count()
}

#[test]
fn each_role_may_call_exactly_what_its_table_row_says_and_refusals_never_reach_the_daemon() {
    let node = "roles-matrix";
    let s = setup(node);
    let c = "roles-matrix-target";
    target(c);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A key for each role's revocation try.
    let spare: Vec<String> = ROLES
        .iter()
        .map(|_| {
            let (status, body) = call(s.relay.api, "POST", "/v1/keys?role=viewer", &s.keys[0], "");
            assert_eq!(status, 201, "{body}");
            let made: serde_json::Value = serde_json::from_str(&body).unwrap();
            made["id"].as_str().unwrap().to_owned()
        })
        .collect();

    let n = format!("/nodes/{node}");
    // (class, method, path, body, the roles that may), one row per class.
    type Row = (
        &'static str,
        &'static str,
        String,
        String,
        &'static [&'static str],
    );
    let rows = |role: &str, i: usize| -> Vec<Row> {
        let volume = format!("{{\"Name\":\"roles-{role}\"}}");
        let fleet_volume = format!("{{\"Name\":\"roles-fleet-{role}\"}}");
        vec![
            (
                "docker read",
                "GET",
                format!("{n}/containers/json"),
                String::new(),
                &["admin", "operator", "viewer"],
            ),
            (
                "docker write",
                "POST",
                format!("{n}/volumes/create"),
                volume,
                &["admin", "operator"],
            ),
            (
                "exec",
                "POST",
                format!("{n}/containers/{c}/exec"),
                r#"{"Cmd":["true"]}"#.into(),
                &["admin", "operator"],
            ),
            (
                "attach",
                "POST",
                format!("{n}/containers/{c}/attach?stream=0&logs=1&stdout=1"),
                String::new(),
                &["admin", "operator"],
            ),
            (
                "archive",
                "GET",
                format!("{n}/containers/{c}/archive?path=/etc/hostname"),
                String::new(),
                &["admin", "operator"],
            ),
            (
                "archive, spelled with an escape the daemon decodes",
                "GET",
                format!("{n}/containers/{c}/%61rchive?path=/etc/hostname"),
                String::new(),
                &["admin", "operator"],
            ),
            (
                "export",
                "GET",
                format!("{n}/v1.41/containers/{c}/export"),
                String::new(),
                &["admin", "operator"],
            ),
            (
                "fleet read",
                "GET",
                "/fleet/containers/json".into(),
                String::new(),
                &["admin", "operator", "viewer"],
            ),
            (
                "fleet write",
                "POST",
                "/fleet/volumes/create".into(),
                fleet_volume,
                &["admin", "operator"],
            ),
            (
                "fleet exec",
                "POST",
                format!("/fleet/containers/{c}/exec"),
                r#"{"Cmd":["true"]}"#.into(),
                &["admin", "operator"],
            ),
            (
                "node list",
                "GET",
                "/v1/nodes".into(),
                String::new(),
                &["admin", "operator", "viewer"],
            ),
            (
                "events",
                "GET",
                "/v1/events".into(),
                String::new(),
                &["admin", "operator", "viewer"],
            ),
            (
                "join token",
                "POST",
                "/v1/tokens".into(),
                String::new(),
                &["admin", "enroller"],
            ),
            (
                "key list",
                "GET",
                "/v1/keys".into(),
                String::new(),
                &["admin"],
            ),
            (
                "key create",
                "POST",
                "/v1/keys?role=viewer".into(),
                String::new(),
                &["admin"],
            ),
            (
                "revocation",
                "DELETE",
                format!("/v1/keys/{}", spare[i]),
                String::new(),
                &["admin"],
            ),
            (
                "whoami",
                "GET",
                "/v1/whoami".into(),
                String::new(),
                &["admin", "operator", "viewer", "enroller"],
            ),
            (
                "dashboard",
                "GET",
                "/ui/".into(),
                String::new(),
                &["admin", "operator", "viewer", "enroller"],
            ),
        ]
    };
    let mut wrong = Vec::new();
    for (i, role) in ROLES.iter().enumerate() {
        for (class, method, path, body, may) in rows(role, i) {
            let (status, answer) = call(s.relay.api, method, &path, &s.keys[i], &body);
            let allowed = may.contains(role);
            let ok = match allowed {
                true => status < 400,
                false => status == 403 && answer.contains(&format!("has the role {role}")),
            };
            if !ok {
                wrong.push(format!(
                    "{role} {class} ({method} {path}): {status} {}",
                    answer.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The daemon saw the allowed calls only.
    let deadline = Instant::now() + Duration::from_secs(5);
    // exec on the node and on the fleet, by admin and operator.
    while daemon_events(c, "exec_create", since) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(daemon_events(c, "exec_create", since), 4);
    assert_eq!(daemon_events(c, "attach", since), 2);
    assert_eq!(daemon_events(c, "export", since), 2);
    let volumes = Docker::direct()
        .ok(&["volume", "ls", "--format", "{{.Name}}"])
        .unwrap();
    let mut made: Vec<&str> = volumes
        .lines()
        .filter(|v| v.starts_with("roles-"))
        .collect();
    made.sort();
    assert_eq!(
        made,
        [
            "roles-admin",
            "roles-fleet-admin",
            "roles-fleet-operator",
            "roles-operator"
        ]
    );
    for v in made {
        Docker::direct().ok(&["volume", "rm", v]).unwrap();
    }
    Docker::direct().ok(&["rm", "-f", c]).unwrap();

    // Every decision is in the audit line with the role.
    let log = s.relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains("role=viewer") && l.contains("status=403")),
        "no audit line of a refused viewer"
    );
}

/// A docker CLI that sends `key` with every call.
fn cli_with_key(
    host: &str,
    key: &str,
    dir: &std::path::Path,
) -> impl Fn(&[&str]) -> std::process::Output {
    std::fs::write(
        dir.join("config.json"),
        format!("{{\"HttpHeaders\": {{\"Authorization\": \"Bearer {key}\"}}}}"),
    )
    .unwrap();
    let (host, dir) = (host.to_owned(), dir.to_owned());
    move |args: &[&str]| {
        let mut all = vec!["--config", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        Docker::new(host.clone())
            .output_with_stdin(&all, b"")
            .unwrap()
    }
}

#[test]
fn a_viewer_reads_with_the_docker_cli_but_cannot_exec_copy_out_or_run() {
    let node = "roles-viewer";
    let s = setup(node);
    let c = "roles-viewer-target";
    target(c);
    let config = tempfile::tempdir().unwrap();
    let docker = cli_with_key(&s.relay.docker_host(node), &s.keys[2], config.path());
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    for args in [
        vec!["ps"],
        vec!["logs", c],
        vec!["inspect", "--format", "{{.Name}}", c],
    ] {
        let out = docker(&args);
        assert!(out.status.success(), "viewer {args:?}: {}", said(&out));
    }
    let copied = config.path().join("hostname");
    for args in [
        vec!["exec", c, "true"],
        vec![
            "cp",
            &format!("{c}:/etc/hostname"),
            copied.to_str().unwrap(),
        ],
        vec!["run", "--rm", "--network", "none", "busybox", "true"],
    ] {
        let out = docker(&args);
        let text = said(&out);
        assert!(!out.status.success(), "viewer {args:?} worked: {text}");
        assert!(
            text.contains("has the role viewer"),
            "viewer {args:?}: {text}"
        );
    }
    assert!(!copied.exists());
    Docker::direct().ok(&["rm", "-f", c]).unwrap();
}

#[test]
fn an_enroller_makes_join_tokens_and_nothing_else() {
    let s = setup("roles-enroller");
    let enroller = &s.keys[3];
    let (status, body) = call(s.relay.api, "POST", "/v1/tokens?uses=1", enroller, "");
    assert_eq!(status, 201, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = made["token"].as_str().unwrap();
    // The token enrols a node.
    let dir = tempfile::tempdir().unwrap();
    let _agent = AgentCmd::new(
        &s.relay,
        "enrolled-by-enroller",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(token),
    )
    .spawn()
    .unwrap();
    wait_node(&s.relay, "enrolled-by-enroller", &s.keys[0]);
    let (status, body) = call(
        s.relay.api,
        "GET",
        "/nodes/enrolled-by-enroller/containers/json",
        enroller,
        "",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("has the role enroller"), "{body}");
}

#[test]
fn keys_made_before_roles_act_as_operator_and_the_relay_says_so_once() {
    let node = "roles-legacy";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let key = {
        let relay = Relay::start_with(&state, &["--api-auth", "required"]).unwrap();
        relay
            .cli_last_line(&["api-key", "create", "--tenant", "default"])
            .unwrap()
    };
    // The record as the previous release wrote it: no role.
    let path = state.join("api-keys.json");
    let mut keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for k in keys.as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("role");
    }
    std::fs::write(&path, keys.to_string()).unwrap();

    let relay = Relay::start_with(&state, &["--api-auth", "required"]).unwrap();
    relay
        .wait_log("made before roles", Duration::from_secs(10))
        .unwrap();
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
    wait_node(&relay, node, &key);
    let (_, me) = call(relay.api, "GET", "/v1/whoami", &key, "");
    assert!(me.contains("\"role\":\"operator\""), "{me}");
    let c = "roles-legacy-target";
    target(c);
    let exec = format!("/nodes/{node}/containers/{c}/exec");
    let (status, body) = call(relay.api, "POST", &exec, &key, r#"{"Cmd":["true"]}"#);
    assert_eq!(status, 201, "{body}");
    let (status, _) = call(relay.api, "POST", "/v1/tokens", &key, "");
    assert_eq!(status, 403);
    let listed = relay.cli(&["api-key", "list"]).unwrap();
    assert!(listed.contains("operator"), "{listed}");
    Docker::direct().ok(&["rm", "-f", c]).unwrap();

    // When it was last used is written at the latest when the relay stops.
    let mut relay = relay;
    relay.proc.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.proc.is_running() {
        assert!(Instant::now() < deadline, "the relay did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = relay.cli(&["api-key", "list"]).unwrap();
    // ID TENANT STATE ROLE CREATED EXPIRES LAST-USED USES
    let cols: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(cols[5], "never", "it never expires: {listed}");
    assert!(cols[6].starts_with("20"), "it was used: {listed}");
}
