//! Node scopes against a real relay, real agents and the real docker CLI:
//! a key scoped `env=staging` sees the staging node alone everywhere —
//! the node list, a node's own calls, `/fleet` reads and placement, and
//! events — and a prod node answers it exactly as a missing one; a
//! scoped enroller's join tokens enrol only nodes in its scope, with the
//! token's labels in place of the agent's own. All nodes here share one
//! dockerd, so what tells them apart is the node id the relay puts on
//! each answer.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{docker_endpoint, AgentCmd, Docker, Proc, Relay};

/// One HTTP/1.0 call with a bearer key: status and body (a stream that
/// stays open is cut after two seconds).
fn call(addr: SocketAddr, method: &str, path: &str, key: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\n\r\n"
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
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

fn node_ids(body: &str) -> Vec<String> {
    let list: Vec<Value> = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    list.iter()
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_nodes(relay: &Relay, key: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call(relay.api, "GET", "/v1/nodes", key);
        if status == 200 && want.iter().all(|w| node_ids(&body).iter().any(|n| n == w)) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {want:?}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A docker CLI that sends `key` with every call.
fn docker_with_key(
    host: String,
    key: &str,
    dir: &std::path::Path,
) -> impl Fn(&[&str]) -> std::process::Output {
    std::fs::write(
        dir.join("config.json"),
        format!("{{\"HttpHeaders\": {{\"Authorization\": \"Bearer {key}\"}}}}"),
    )
    .unwrap();
    let dir = dir.to_owned();
    move |args: &[&str]| {
        let mut all = vec!["--config", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        Docker::new(host.clone())
            .output_with_stdin(&all, b"")
            .unwrap()
    }
}

struct Fleet {
    relay: Relay,
    _agents: Vec<Proc>,
    _dir: tempfile::TempDir,
    admin: String,
    staging: String,
    enroller: String,
}

/// A relay with `sc-prod` enrolled by an admin's token labelled
/// `env=prod`, and `sc-staging` by a staging enroller's token, whose agent
/// claims `env=prod` for itself.
fn fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("relay"), &["--api-auth", "required"]).unwrap();
    let key = |args: &[&str]| {
        let mut all = vec!["api-key", "create", "--tenant", "default"];
        all.extend_from_slice(args);
        relay.cli_last_line(&all).unwrap()
    };
    let admin = key(&["--role", "admin"]);
    let staging = key(&["--role", "operator", "--scope", "env=staging"]);
    let enroller = key(&["--role", "enroller", "--scope", "env in (staging)"]);
    relay.wait_for_key(&enroller).unwrap();
    let prod_token = relay
        .cli_last_line(&["token", "create", "--label", "env=prod"])
        .unwrap();
    let (status, body) = call(
        relay.api,
        "POST",
        "/v1/tokens?label=env%3Dstaging&label=team=web",
        &enroller,
    );
    assert_eq!(status, 201, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(made["labels"]["env"], "staging", "{body}");
    let staging_token = made["token"].as_str().unwrap().to_owned();
    let agent = |node: &str, token: &str, extra: &[&str]| {
        let mut cmd = AgentCmd::new(
            &relay,
            node,
            &docker_endpoint(),
            &dir.path().join(node),
            Some(token),
        );
        for a in extra {
            cmd = cmd.arg(a);
        }
        cmd.spawn().unwrap()
    };
    let agents = vec![
        agent("sc-prod", &prod_token, &[]),
        agent("sc-staging", &staging_token, &["--label", "env=prod"]),
    ];
    wait_nodes(&relay, &admin, &["sc-prod", "sc-staging"]);
    Fleet {
        relay,
        _agents: agents,
        _dir: dir,
        admin,
        staging,
        enroller,
    }
}

#[test]
fn a_scoped_key_sees_its_nodes_alone_and_others_answer_as_missing() {
    let f = fleet();
    let api = f.relay.api;
    // The node list, connected and whole-fleet.
    for path in ["/v1/nodes", "/v1/nodes?all=1"] {
        let (_, all) = call(api, "GET", path, &f.admin);
        assert_eq!(node_ids(&all), ["sc-prod", "sc-staging"], "{path}");
        let (_, scoped) = call(api, "GET", path, &f.staging);
        assert_eq!(node_ids(&scoped), ["sc-staging"], "{path}");
    }
    // The token's labels stand, not the agent's own.
    let (_, body) = call(api, "GET", "/v1/nodes/sc-staging", &f.staging);
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["labels"]["env"], "staging", "{body}");
    assert_eq!(node["labels"]["team"], "web", "{body}");
    // A prod node is a missing node, word for word.
    for (path, missing) in [
        ("/nodes/sc-prod/_ping", "/nodes/sc-gone/_ping"),
        ("/v1/nodes/sc-prod", "/v1/nodes/sc-gone"),
        (
            "/nodes/sc-prod/containers/json",
            "/nodes/sc-gone/containers/json",
        ),
    ] {
        let (status, prod) = call(api, "GET", path, &f.staging);
        let (gone_status, gone) = call(api, "GET", missing, &f.staging);
        assert_eq!((status, gone_status), (404, 404), "{prod} / {gone}");
        assert_eq!(prod.replace("sc-prod", "X"), gone.replace("sc-gone", "X"));
        assert_eq!(
            call(api, "GET", path, &f.admin).0,
            200,
            "{path} for the admin"
        );
    }
    assert_eq!(
        call(api, "GET", "/nodes/sc-staging/_ping", &f.staging).0,
        200
    );
}

#[test]
fn the_fleet_of_a_scoped_key_lists_places_and_streams_events_of_its_nodes_alone() {
    let f = fleet();
    let config = tempfile::tempdir().unwrap();
    let fleet_host = format!("tcp://{}/fleet", f.relay.api);
    let staging = docker_with_key(fleet_host.clone(), &f.staging, config.path());
    let admin_config = tempfile::tempdir().unwrap();
    let admin = docker_with_key(fleet_host, &f.admin, admin_config.path());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let _ = Docker::direct().output_with_stdin(&["rm", "-f", "sc-placed-1", "sc-placed-2"], b"");
    // Placement: every container of the scoped key lands in its scope,
    // and a constraint naming a node outside it finds no node.
    for name in ["sc-placed-1", "sc-placed-2"] {
        let out = staging(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "busybox",
            "sleep",
            "60",
        ]);
        assert!(out.status.success(), "{}", said(&out));
    }
    let out = staging(&[
        "run",
        "-d",
        "--network",
        "none",
        "-e",
        "constraint:node==sc-prod",
        "busybox",
        "true",
    ]);
    assert!(
        !out.status.success(),
        "placed outside the scope: {}",
        said(&out)
    );
    // `ps`: the admin sees both nodes' containers (one daemon under
    // both), the scoped key its node's alone.
    let names = |out: std::process::Output| -> Vec<String> {
        assert!(out.status.success(), "{}", said(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let mine = names(staging(&["ps", "--format", "{{.Names}}"]));
    let all = names(admin(&["ps", "--format", "{{.Names}}"]));
    assert!(
        mine.iter().any(|n| n == "sc-staging/sc-placed-1"),
        "{mine:?}"
    );
    assert!(
        mine.iter().all(|n| n.starts_with("sc-staging/")),
        "{mine:?}"
    );
    assert!(all.iter().any(|n| n == "sc-prod/sc-placed-1"), "{all:?}");
    let info = String::from_utf8_lossy(
        &staging(&["info", "--format", "{{.Containers}} {{.Name}}"]).stdout,
    )
    .into_owned();
    let admin_info =
        String::from_utf8_lossy(&admin(&["info", "--format", "{{.Containers}} {{.Name}}"]).stdout)
            .into_owned();
    let count = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        count(&admin_info) >= 2 * count(&info) && count(&info) > 0,
        "{info} / {admin_info}"
    );
    // A container of the other node by its listed name: missing.
    let out = staging(&["inspect", "sc-prod/sc-placed-1"]);
    assert!(!out.status.success(), "{}", said(&out));
    // Events: what the scoped key's fan-in carries names its node alone.
    let until = (std::time::SystemTime::now() + Duration::from_secs(1))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (key, want_prod) in [(&f.staging, false), (&f.admin, true)] {
        let (status, body) = call(
            f.relay.api,
            "GET",
            &format!("/v1/events?since={since}&until={until}"),
            key,
        );
        assert_eq!(status, 200, "{body}");
        let nodes: Vec<String> = body
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| e["node"].as_str().map(str::to_owned))
            .collect();
        assert!(nodes.iter().any(|n| n == "sc-staging"), "{body}");
        assert_eq!(nodes.iter().any(|n| n == "sc-prod"), want_prod, "{body}");
    }
    Docker::direct()
        .ok(&["rm", "-f", "sc-placed-1", "sc-placed-2"])
        .unwrap();
}

#[test]
fn scoped_enrollers_and_admins_cannot_reach_past_their_scope() {
    let f = fleet();
    let api = f.relay.api;
    // A scoped enroller's token must fix what its scope needs.
    for query in ["", "?label=env%3Dprod", "?label=team%3Dweb"] {
        let (status, body) = call(api, "POST", &format!("/v1/tokens{query}"), &f.enroller);
        assert_eq!(status, 403, "{query}: {body}");
        assert!(
            body.contains("may see only the nodes env in (staging)"),
            "{body}"
        );
    }
    // Its role still bounds it: no Docker calls, even in scope.
    let (status, _) = call(api, "GET", "/nodes/sc-staging/_ping", &f.enroller);
    assert_eq!(status, 403);
    // A scoped admin's new key is held to its scope too.
    let scoped_admin = f
        .relay
        .cli_last_line(&[
            "api-key",
            "create",
            "--tenant",
            "default",
            "--role",
            "admin",
            "--scope",
            "env=staging",
        ])
        .unwrap();
    f.relay.wait_for_key(&scoped_admin).unwrap();
    let (status, body) = call(api, "POST", "/v1/keys?role=viewer&name=wide", &scoped_admin);
    assert_eq!(status, 201, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(made["scope"], "env=staging", "{body}");
    let wide = made["key"].as_str().unwrap();
    f.relay.wait_for_key(wide).unwrap();
    let (_, seen) = call(api, "GET", "/v1/nodes", wide);
    assert_eq!(node_ids(&seen), ["sc-staging"]);
    // Malformed selectors are refused at creation, with the forms.
    let (status, body) = call(
        api,
        "POST",
        "/v1/keys?role=viewer&scope=region%20in%20eu",
        &f.admin,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("KEY in (V1,V2)"), "{body}");
    let refused = f.relay.cli(&[
        "api-key",
        "create",
        "--tenant",
        "default",
        "--scope",
        "region in eu",
    ]);
    let text = format!("{refused:?}");
    assert!(
        refused.is_err() && text.contains("KEY in (V1,V2)"),
        "{text}"
    );
    // The list shows each key's scope; whoami the caller's.
    let listed = f.relay.cli(&["api-key", "list"]).unwrap();
    assert!(
        listed.contains("env=staging") && listed.contains("SCOPE"),
        "{listed}"
    );
    let (_, me) = call(api, "GET", "/v1/whoami", &f.staging);
    assert!(me.contains("\"scope\":\"env=staging\""), "{me}");
}
